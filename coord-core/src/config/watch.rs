//! A watch of a config prefix: every new version, in version order per key,
//! resuming after a dropped channel without losing the latest value.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backend::{ConfigNotice, ConfigNotices};
use super::center::ConfigCenter;
use super::key::ConfigKey;
use super::value::ConfigValue;
use crate::error::Result;

/// Every change under a prefix, as [`ConfigCenter::watch`] delivers them.
///
/// For each key, versions arrive in order and none is skipped unless
/// compacted away before it could be read. After the backend's channel
/// drops (a reconnect, a missed message) the watch compares the latest
/// versions under its prefix with what it delivered and delivers the rest,
/// so the latest value of every key is always seen.
#[derive(Debug)]
pub struct ConfigWatch {
    rx: mpsc::Receiver<Result<ConfigValue>>,
    stop: CancellationToken,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ConfigWatch {
    pub(crate) async fn start(center: ConfigCenter, prefix: &str) -> Result<ConfigWatch> {
        Self::start_inner(center, prefix, false).await
    }

    /// A watch that also sees the center's own keys (`.coord/…`).
    pub(crate) async fn start_inner(
        center: ConfigCenter,
        prefix: &str,
        reserved: bool,
    ) -> Result<ConfigWatch> {
        // Watch first, then read where every key stands: nothing written in
        // between is missed (a notice at or below the listed version is
        // skipped).
        let notices = center.backend().config_watch(prefix).await?;
        let mut seen = HashMap::new();
        for (key, stored) in center.backend().config_list(prefix).await? {
            seen.insert(key, (stored.version, fingerprint(&stored.record)));
        }
        let (tx, rx) = mpsc::channel(256);
        let stop = CancellationToken::new();
        let follower = Follower {
            center,
            prefix: prefix.to_owned(),
            reserved,
            seen,
            tx,
        };
        tokio::spawn(follower.run(notices, stop.clone()));
        Ok(ConfigWatch { rx, stop })
    }

    /// The next change (a new version, or a deletion: check
    /// [`ConfigValue::is_deleted`]); an error for a version that could not
    /// be read (corrupted, or a secret without its key). `None` once the
    /// center is gone.
    pub async fn next(&mut self) -> Option<Result<ConfigValue>> {
        self.rx.recv().await
    }
}

/// A fingerprint of a stored record (its metadata holds the write's time
/// and checksum, so two writes that got the same version number differ).
fn fingerprint(record: &[u8]) -> u32 {
    crc32fast::hash(record)
}

struct Follower {
    center: ConfigCenter,
    prefix: String,
    reserved: bool,
    /// The last version delivered (or listed) per key, and a fingerprint
    /// of its record, to tell a store that started a key over.
    seen: HashMap<String, (u64, u32)>,
    tx: mpsc::Sender<Result<ConfigValue>>,
}

impl Follower {
    fn wanted(&self, key: &str) -> bool {
        if self.reserved {
            ConfigKey::parse_reserved(key).is_ok()
        } else {
            ConfigKey::parse(key).is_ok()
        }
    }

    /// Delivers the versions of `key` after the last one delivered, up to
    /// `target`; `false` when the receiver is gone.
    async fn deliver(&mut self, key: &str, target: u64) -> bool {
        let from = self.seen.get(key).map_or(0, |(v, _)| *v);
        if target <= from || !self.wanted(key) {
            return true;
        }
        let mut print = 0;
        for version in from + 1..=target {
            let read = match self.center.backend().config_version(key, version).await {
                Ok(Some(stored)) => {
                    print = fingerprint(&stored.record);
                    Some(self.center.decode(key, &stored))
                }
                // Compacted away before it could be read.
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            };
            if let Some(item) = read
                && self.tx.send(item).await.is_err()
            {
                return false;
            }
        }
        self.seen.insert(key.to_owned(), (target, print));
        true
    }

    /// After a gap: watch again, then deliver what changed meanwhile.
    async fn resume(&mut self, stop: &CancellationToken) -> Option<ConfigNotices> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let notices = self.center.backend().config_watch(&self.prefix).await?;
                let latest = self.center.backend().config_list(&self.prefix).await?;
                Ok::<_, crate::Error>((notices, latest))
            };
            let outcome = tokio::select! {
                _ = stop.cancelled() => return None,
                o = attempt => o,
            };
            match outcome {
                Ok((notices, latest)) => {
                    // A store that lost versions (a restart without
                    // persistence, a restore, a failover to a lagging
                    // replica) numbers from lower again: start those keys
                    // over from what it holds now.
                    let listed: std::collections::HashSet<&str> =
                        latest.iter().map(|(k, _)| k.as_str()).collect();
                    self.seen.retain(|k, _| listed.contains(k.as_str()));
                    for (key, stored) in &latest {
                        let restarted = self.seen.get(key).is_some_and(|(v, print)| {
                            *v > stored.version
                                || (*v == stored.version && *print != fingerprint(&stored.record))
                        });
                        if restarted {
                            tracing::warn!(key = %key, version = stored.version, "config store went back in versions; delivering its latest");
                            self.seen
                                .insert(key.clone(), (stored.version.saturating_sub(1), 0));
                        }
                    }
                    for (key, stored) in latest {
                        if !self.deliver(&key, stored.version).await {
                            return None;
                        }
                    }
                    return Some(notices);
                }
                Err(e) => {
                    tracing::debug!(prefix = %self.prefix, error = %e, "config watch could not resume; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn run(mut self, mut notices: ConfigNotices, stop: CancellationToken) {
        loop {
            let notice = tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.tx.closed() => return,
                n = notices.next() => n,
            };
            match notice {
                Some(ConfigNotice::Changed { key, version }) => {
                    if !self.deliver(&key, version).await {
                        return;
                    }
                }
                Some(ConfigNotice::Gap) | None => match self.resume(&stop).await {
                    Some(n) => notices = n,
                    None => return,
                },
            }
        }
    }
}
