//! The config center's store in process memory: every version of every key,
//! frozen scopes, and a broadcast channel of new versions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::config::{
    ConfigBackend, ConfigNotice, ConfigNotices, ConfigWrite, StoredVersion, frozen_error,
    key_under, namespace_of, version_conflict,
};
use crate::error::{Error, Result};
use crate::health::ComponentHealth;
use crate::memory::MemoryBackend;

/// Notices a slow watcher may fall behind by before it must compare.
const EVENT_BUFFER: usize = 4096;

/// The config store of one memory store.
#[derive(Debug)]
pub(crate) struct MemoryConfig {
    state: Mutex<State>,
    events: broadcast::Sender<(String, u64)>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            state: Mutex::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    keys: BTreeMap<String, History>,
    frozen: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct History {
    latest: u64,
    versions: BTreeMap<u64, bytes::Bytes>,
}

impl MemoryConfig {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ConfigBackend for MemoryBackend {
    fn config_backend_name(&self) -> &'static str {
        "memory"
    }

    fn max_record_bytes(&self) -> usize {
        64 << 20
    }

    async fn config_append(&self, namespace: &str, writes: &[ConfigWrite]) -> Result<Vec<u64>> {
        let config = self.config();
        let mut state = config.state();
        for w in writes {
            if namespace_of(&w.key) != Some(namespace) {
                return Err(Error::invalid(format!(
                    "config key {} is not in namespace {namespace}",
                    w.key
                )));
            }
            if let Some(e) = frozen_error(&w.key, namespace, |s| state.frozen.contains(s)) {
                return Err(e);
            }
            let actual = state.keys.get(&w.key).map_or(0, |h| h.latest);
            if let Some(expected) = w.expected
                && expected != actual
            {
                return Err(version_conflict(&w.key, expected, actual));
            }
        }
        let mut versions = Vec::with_capacity(writes.len());
        for w in writes {
            let history = state.keys.entry(w.key.clone()).or_default();
            history.latest += 1;
            history.versions.insert(history.latest, w.record.clone());
            versions.push(history.latest);
        }
        drop(state);
        for (w, v) in writes.iter().zip(&versions) {
            let _ = config.events.send((w.key.clone(), *v));
        }
        Ok(versions)
    }

    async fn config_latest(&self, key: &str) -> Result<Option<StoredVersion>> {
        let state = self.config().state();
        Ok(state.keys.get(key).and_then(|h| {
            h.versions.get(&h.latest).map(|r| StoredVersion {
                version: h.latest,
                record: r.clone(),
            })
        }))
    }

    async fn config_version(&self, key: &str, version: u64) -> Result<Option<StoredVersion>> {
        let state = self.config().state();
        Ok(state
            .keys
            .get(key)
            .and_then(|h| h.versions.get(&version))
            .map(|r| StoredVersion {
                version,
                record: r.clone(),
            }))
    }

    async fn config_history(&self, key: &str, limit: usize) -> Result<Vec<StoredVersion>> {
        let state = self.config().state();
        Ok(state.keys.get(key).map_or_else(Vec::new, |h| {
            h.versions
                .iter()
                .rev()
                .take(limit)
                .map(|(v, r)| StoredVersion {
                    version: *v,
                    record: r.clone(),
                })
                .collect()
        }))
    }

    async fn config_list(&self, prefix: &str) -> Result<Vec<(String, StoredVersion)>> {
        let state = self.config().state();
        Ok(state
            .keys
            .range(prefix.trim_end_matches('/').to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix.trim_end_matches('/')))
            .filter(|(k, _)| key_under(k, prefix))
            .filter_map(|(k, h)| {
                h.versions.get(&h.latest).map(|r| {
                    (
                        k.clone(),
                        StoredVersion {
                            version: h.latest,
                            record: r.clone(),
                        },
                    )
                })
            })
            .collect())
    }

    async fn config_compact(&self, key: &str, keep_last: usize) -> Result<u64> {
        let mut state = self.config().state();
        let Some(h) = state.keys.get_mut(key) else {
            return Ok(0);
        };
        let keep = keep_last.max(1);
        let drop_count = h.versions.len().saturating_sub(keep);
        let doomed: Vec<u64> = h.versions.keys().take(drop_count).copied().collect();
        for v in &doomed {
            h.versions.remove(v);
        }
        Ok(doomed.len() as u64)
    }

    async fn config_set_frozen(&self, scope: &str, frozen: bool) -> Result<()> {
        let mut state = self.config().state();
        if frozen {
            state.frozen.insert(scope.to_owned());
        } else {
            state.frozen.remove(scope);
        }
        Ok(())
    }

    async fn config_frozen(&self, namespace: &str) -> Result<Vec<String>> {
        let state = self.config().state();
        Ok(state
            .frozen
            .iter()
            .filter(|s| key_under(s, namespace))
            .cloned()
            .collect())
    }

    async fn config_watch(&self, prefix: &str) -> Result<ConfigNotices> {
        let rx = self.config().events.subscribe();
        let prefix = prefix.to_owned();
        let stream = futures::stream::unfold((rx, prefix), |(mut rx, prefix)| async move {
            loop {
                match rx.recv().await {
                    Ok((key, version)) => {
                        if key_under(&key, &prefix) {
                            return Some((ConfigNotice::Changed { key, version }, (rx, prefix)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((ConfigNotice::Gap, (rx, prefix)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(ConfigNotices::new(stream))
    }

    async fn config_health(&self) -> ComponentHealth {
        let start = std::time::Instant::now();
        drop(self.config().state());
        ComponentHealth::healthy("memory", start.elapsed())
    }
}
