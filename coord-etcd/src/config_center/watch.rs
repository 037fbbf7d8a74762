//! Watching a prefix: an etcd watch of the latest markers under it, from
//! now, each put of one a [`ConfigNotice::Changed`] with the version the
//! marker starts with (its record, which it holds too, is not used).
//!
//! Markers hold records, so a watcher that fell behind could be sent many
//! of them in one answer, over etcd-client's decoding limit: the watch asks
//! etcd to split large answers (each part is as good as a whole: a notice
//! is one event).
//!
//! A watch etcd cancels (a watcher too slow for the compacted history) or
//! fails with an answer is one [`ConfigNotice::Gap`], then the end; a lost
//! connection (etcd restarted, the network broke) ends the stream. Either
//! way the config center's watcher watches again and compares.

use std::collections::VecDeque;

use coord_core::config::{ConfigNotice, ConfigNotices};
use coord_core::{Error, Result};
use etcd_client::{Event, EventType, WatchFilterType, WatchOptions, WatchStream};

use super::layout::{Layout, split_marker};
use crate::backend::EtcdBackend;
use crate::error::{call, map};

/// One prefix's open watch.
struct Follow {
    stream: WatchStream,
    layout: Layout,
    prefix: String,
    /// Notices of the last response not yielded yet.
    pending: VecDeque<ConfigNotice>,
    /// A gap was yielded: nothing follows.
    ended: bool,
}

impl EtcdBackend {
    pub(super) async fn config_watch_latest(&self, prefix: &str) -> Result<ConfigNotices> {
        let layout = self.config_layout();
        let range = layout.latest_range(prefix);
        // Latest markers are never deleted by the config center.
        let options = WatchOptions::new()
            .with_range(range.end)
            .with_filters([WatchFilterType::NoDelete])
            .with_fragment();
        let open = crate::watch::open_watch(&self.inner.client, range.start, options);
        let stream = match call("watch config", self.inner.timeout, open).await? {
            Ok(stream) => stream,
            Err(reason) => {
                tracing::debug!(prefix, %reason, "etcd refused a config watch");
                return Ok(ConfigNotices::new(futures::stream::iter([
                    ConfigNotice::Gap,
                ])));
            }
        };
        let follow = Follow {
            stream,
            layout,
            prefix: prefix.to_owned(),
            pending: VecDeque::new(),
            ended: false,
        };
        Ok(ConfigNotices::new(futures::stream::unfold(follow, next)))
    }
}

/// The next notice of a prefix's watch.
async fn next(mut f: Follow) -> Option<(ConfigNotice, Follow)> {
    loop {
        if let Some(notice) = f.pending.pop_front() {
            return Some((notice, f));
        }
        if f.ended {
            return None;
        }
        match f.stream.message().await {
            Ok(Some(resp)) if resp.canceled() => {
                tracing::debug!(
                    prefix = %f.prefix,
                    reason = resp.cancel_reason(),
                    "etcd cancelled a config watch"
                );
                return gap(f);
            }
            Ok(Some(resp)) => {
                let notices = resp.events().iter().filter_map(|e| notice_of(e, &f));
                f.pending = notices.collect();
            }
            Ok(None) => return None,
            Err(e) => match map("watch config", e) {
                Error::Unavailable { .. } | Error::Timeout(_) => return None,
                e => {
                    tracing::debug!(prefix = %f.prefix, error = %e, "a config watch failed");
                    return gap(f);
                }
            },
        }
    }
}

fn gap(mut f: Follow) -> Option<(ConfigNotice, Follow)> {
    f.ended = true;
    f.pending.clear();
    Some((ConfigNotice::Gap, f))
}

/// The notice of one etcd event; `None` for anything but a new latest
/// marker of a key under the prefix.
fn notice_of(event: &Event, f: &Follow) -> Option<ConfigNotice> {
    if event.event_type() != EventType::Put {
        return None;
    }
    let kv = event.kv()?;
    let key = f.layout.key_of_latest(kv.key(), &f.prefix)?;
    let Some((version, _)) = split_marker(kv.value()) else {
        tracing::warn!(
            key,
            "ignored a config latest marker that does not start with a number"
        );
        return None;
    };
    Some(ConfigNotice::Changed {
        key: key.to_owned(),
        version,
    })
}
