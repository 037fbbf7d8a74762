//! Caches in process memory: a map per cache name with expiry times, and a
//! broadcast channel per cache for invalidations.

use foldhash::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::cache::{CacheBackend, CacheEvent, CacheEvents};
use crate::error::Result;
use crate::health::ComponentHealth;
use crate::memory::MemoryBackend;

/// Invalidations a slow listener may fall behind by before it must resync.
const EVENT_BUFFER: usize = 1024;

/// Writes between two sweeps of expired entries of a cache.
const SWEEP_EVERY: u64 = 1024;

/// The caches of one memory store.
#[derive(Debug, Default)]
pub(crate) struct MemoryCaches {
    spaces: Mutex<HashMap<String, Space>>,
}

#[derive(Debug)]
struct Space {
    entries: HashMap<String, (Bytes, Instant)>,
    events: broadcast::Sender<CacheEvent>,
    writes: u64,
}

impl Default for Space {
    fn default() -> Self {
        Space {
            entries: HashMap::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
            writes: 0,
        }
    }
}

impl Space {
    fn live(&self, key: &str, now: Instant) -> Option<&Bytes> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(v, _)| v)
    }

    fn publish(&self, keys: &[&str], origin: &str) {
        // No listener is not an error.
        let _ = self.events.send(CacheEvent::Invalidated {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            origin: Some(origin.to_owned()),
        });
    }

    fn sweep(&mut self, now: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.entries.retain(|_, (_, expires)| *expires > now);
        }
    }
}

impl MemoryCaches {
    fn spaces(&self) -> MutexGuard<'_, HashMap<String, Space>> {
        self.spaces.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    fn cache_backend_name(&self) -> &'static str {
        "memory"
    }

    fn max_value_bytes(&self) -> usize {
        512 << 20
    }

    async fn get_many(&self, cache: &str, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let now = Instant::now();
        let spaces = self.caches().spaces();
        let space = spaces.get(cache);
        Ok(keys
            .iter()
            .map(|k| space.and_then(|s| s.live(k, now)).cloned())
            .collect())
    }

    async fn set_many(
        &self,
        cache: &str,
        entries: &[(&str, Bytes)],
        ttl: Duration,
        origin: &str,
    ) -> Result<()> {
        let now = Instant::now();
        let expires = expiry(now, ttl);
        let mut spaces = self.caches().spaces();
        let space = spaces.entry(cache.to_owned()).or_default();
        for (key, value) in entries {
            space
                .entries
                .insert((*key).to_owned(), (value.clone(), expires));
        }
        space.sweep(now);
        let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        space.publish(&keys, origin);
        Ok(())
    }

    async fn fill(
        &self,
        cache: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
        _origin: &str,
    ) -> Result<bool> {
        let now = Instant::now();
        let mut spaces = self.caches().spaces();
        let space = spaces.entry(cache.to_owned()).or_default();
        if space.live(key, now).is_some() {
            return Ok(false);
        }
        space
            .entries
            .insert(key.to_owned(), (value, expiry(now, ttl)));
        space.sweep(now);
        Ok(true)
    }

    async fn delete_many(&self, cache: &str, keys: &[&str], origin: &str) -> Result<usize> {
        let now = Instant::now();
        let mut spaces = self.caches().spaces();
        let Some(space) = spaces.get_mut(cache) else {
            return Ok(0);
        };
        let mut existed = 0;
        for key in keys {
            if let Some((_, expires)) = space.entries.remove(*key)
                && expires > now
            {
                existed += 1;
            }
        }
        space.publish(keys, origin);
        Ok(existed)
    }

    async fn exists(&self, cache: &str, key: &str) -> Result<bool> {
        let now = Instant::now();
        let spaces = self.caches().spaces();
        Ok(spaces.get(cache).and_then(|s| s.live(key, now)).is_some())
    }

    async fn watch(&self, cache: &str) -> Result<CacheEvents> {
        let rx = self
            .caches()
            .spaces()
            .entry(cache.to_owned())
            .or_default()
            .events
            .subscribe();
        // A listener that fell behind gets a resync in place of what it missed.
        let stream = tokio_stream_of(rx);
        Ok(CacheEvents::new(stream))
    }

    async fn cache_health(&self) -> ComponentHealth {
        let start = std::time::Instant::now();
        drop(self.caches().spaces());
        ComponentHealth::healthy("memory", start.elapsed())
    }
}

/// When an entry written at `now` with `ttl` expires (a TTL past what the
/// clock can represent: in a century).
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The events of a broadcast receiver; a lag becomes [`CacheEvent::Resync`].
fn tokio_stream_of(
    rx: broadcast::Receiver<CacheEvent>,
) -> impl futures::Stream<Item = CacheEvent> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(event) => Some((event, rx)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((CacheEvent::Resync, rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .boxed()
}

/// A shared handle to a store's caches.
pub(crate) type SharedCaches = Arc<MemoryCaches>;
