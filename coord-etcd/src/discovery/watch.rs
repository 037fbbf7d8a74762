//! Watching a service: an etcd watch of its prefix from the listing's
//! revision + 1, its events mapped to [`RegistryEvent`]s.
//!
//! * PUT: the decoded instance (a value that is not its record reads as
//!   the instance's removal, as a listing skips it); DELETE (a
//!   deregistration or a lease's expiry): the id from the key. Each event
//!   carries its key's mod revision.
//! * A start revision etcd compacted already, a watch etcd cancels later
//!   (a watcher too slow for the compacted history) and any error etcd
//!   answers: one [`RegistryEvent::Gap`], then the end. A lost connection
//!   (etcd restarted, the network broke) ends the stream.
//! * Large revisions (a lease revoked with thousands of keys) come in
//!   fragments (`fragment`), each under etcd-client's 4 MiB decoding limit.

use std::collections::VecDeque;

use coord_core::discovery::{RegistryChange, RegistryEvent, RegistryEvents};
use coord_core::{Error, Result};
use etcd_client::{Event, EventType, WatchOptions, WatchStream};

use super::read::{id_of, instance_of};
use crate::backend::EtcdBackend;
use crate::error::{call, map};

/// One service's open watch.
struct Follow {
    stream: WatchStream,
    service: String,
    prefix: String,
    /// Mapped events of the last response not yielded yet.
    pending: VecDeque<RegistryEvent>,
    /// A gap was yielded: nothing follows.
    ended: bool,
}

impl EtcdBackend {
    pub(super) async fn registry_watch(
        &self,
        service: &str,
        revision: u64,
    ) -> Result<RegistryEvents> {
        let prefix = self.registry_prefix(service);
        let mut options = WatchOptions::new().with_prefix().with_fragment();
        // Revision 0 is no listing's: watch from now, after a gap.
        let from_listing = revision > 0;
        if from_listing {
            let start = i64::try_from(revision.saturating_add(1)).unwrap_or(i64::MAX);
            options = options.with_start_revision(start);
        }
        let open = crate::watch::open_watch(&self.inner.client, prefix.clone(), options);
        let stream = match call("watch a service", self.inner.timeout, open).await? {
            Ok(stream) => stream,
            Err(reason) => {
                tracing::debug!(service, revision, %reason, "etcd refused the watch; the watcher must list again");
                return Ok(RegistryEvents::new(futures::stream::iter([
                    RegistryEvent::Gap,
                ])));
            }
        };
        let follow = Follow {
            stream,
            service: service.to_owned(),
            prefix,
            pending: if from_listing {
                VecDeque::new()
            } else {
                VecDeque::from([RegistryEvent::Gap])
            },
            ended: false,
        };
        Ok(RegistryEvents::new(futures::stream::unfold(follow, next)))
    }
}

/// The next event of a service's watch.
async fn next(mut f: Follow) -> Option<(RegistryEvent, Follow)> {
    loop {
        if let Some(event) = f.pending.pop_front() {
            return Some((event, f));
        }
        if f.ended {
            return None;
        }
        match f.stream.message().await {
            Ok(Some(resp)) if resp.canceled() => {
                tracing::debug!(
                    service = %f.service,
                    reason = resp.cancel_reason(),
                    compact_revision = resp.compact_revision(),
                    "etcd cancelled a service's watch; the watcher must list again"
                );
                return gap(f);
            }
            Ok(Some(resp)) => {
                let events = resp.events().iter().filter_map(|e| event_of(e, &f));
                f.pending = events.collect();
            }
            Ok(None) => return None,
            Err(e) => match map("watch a service", e) {
                // The connection went away: the watcher lists again.
                Error::Unavailable { .. } | Error::Timeout(_) => return None,
                e => {
                    tracing::debug!(service = %f.service, error = %e, "a service's watch failed");
                    return gap(f);
                }
            },
        }
    }
}

fn gap(mut f: Follow) -> Option<(RegistryEvent, Follow)> {
    f.ended = true;
    f.pending.clear();
    Some((RegistryEvent::Gap, f))
}

/// The registry event of one etcd event; `None` for a key that is no
/// instance's.
fn event_of(event: &Event, f: &Follow) -> Option<RegistryEvent> {
    let kv = event.kv()?;
    let id = id_of(kv.key(), &f.prefix)?;
    let revision = u64::try_from(kv.mod_revision()).ok()?;
    let change = match event.event_type() {
        EventType::Put => match instance_of(kv.key(), kv.value(), &f.prefix, &f.service) {
            Some(instance) => RegistryChange::Put(instance),
            None => RegistryChange::Removed { id: id.to_owned() },
        },
        EventType::Delete => RegistryChange::Removed { id: id.to_owned() },
    };
    Some(RegistryEvent::Changed { revision, change })
}
