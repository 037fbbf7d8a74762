//! `MultiLevelCache`: an in-process `moka` L1 over a shared backend (L2),
//! with single-flight loads, negative caching, TTL jitter and invalidation
//! across instances.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use moka::Expiry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::cache::backend::{CacheBackend, CacheEvent, validate_cache_key, validate_cache_ttl};
use crate::cache::builder::{CacheBuilder, CacheOptions};
use crate::cache::envelope::{self, Opened};
use crate::cache::stats::{CacheCounters, CacheSeries, CacheStats, Count};
use crate::error::{Error, Result};
use crate::health::{ComponentHealth, HealthSource, HealthStatus};

/// One L1 entry: the value (`None`: known absent) and how long it may stay.
struct L1Entry<T> {
    value: Option<Arc<T>>,
    ttl: Duration,
    weight: u32,
    /// When the value was read from L2 or written (for `max_stale`).
    stored_at: Instant,
}

impl<T> L1Entry<T> {
    fn new(value: Option<Arc<T>>, ttl: Duration, weight: u32) -> Self {
        L1Entry {
            value,
            ttl,
            weight,
            stored_at: Instant::now(),
        }
    }
}

impl<T> Clone for L1Entry<T> {
    fn clone(&self) -> Self {
        L1Entry {
            value: self.value.clone(),
            ttl: self.ttl,
            weight: self.weight,
            stored_at: self.stored_at,
        }
    }
}

/// The hasher of the L1 maps: foldhash, several times cheaper than the
/// default SipHash on short keys (an L1 lookup and insert each hash the key),
/// and still seeded per process.
type L1Hasher = foldhash::fast::RandomState;

/// An L1 map (L1 itself, or the degraded-mode fallback).
type L1<T> = moka::future::Cache<String, L1Entry<T>, L1Hasher>;

/// Drops `key` from L1 if it may have gone stale since `epoch` was read:
/// at once with [`Recheck::now`], or, if the caller is cancelled before
/// that, from a task spawned on drop.
struct Recheck<'a, T: Send + Sync + 'static> {
    inner: &'a Inner<T>,
    key: &'a str,
    epoch: u64,
    armed: bool,
}

impl<'a, T: Send + Sync + 'static> Recheck<'a, T> {
    fn new(inner: &'a Inner<T>, key: &'a str, epoch: u64) -> Self {
        Recheck {
            inner,
            key,
            epoch,
            armed: true,
        }
    }
}

impl<T> Recheck<'_, T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn now(mut self) {
        self.armed = false;
        if self.inner.stale_since(self.epoch) {
            self.inner.l1.invalidate(self.key).await;
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Recheck<'_, T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let inner = self.inner;
        let stale = !inner.l1_live.load(Ordering::Acquire)
            || inner.epoch.load(Ordering::Acquire) != self.epoch;
        if stale && let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (l1, key) = (inner.l1.clone(), self.key.to_owned());
            rt.spawn(async move { l1.invalidate(&key).await });
        }
    }
}

/// Notices buffered for a slow [`MultiLevelCache::events`] subscriber.
const NOTICE_BUFFER: usize = 1024;

/// Something that happened to one cache instance's copies (see
/// [`MultiLevelCache::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheNotice {
    /// Another instance wrote or deleted this key: the local copy was dropped.
    Invalidated(String),
    /// Every local copy was dropped (invalidations may have been missed).
    Resync,
    /// L1 was full and dropped this key.
    Evicted(String),
    /// The loader of this key failed or panicked.
    LoadFailed(String),
    /// The stored value of this key failed its checks.
    CodecError(String),
}

/// How a load stores its value in L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// Only where the key is absent.
    Fill,
    /// Over whatever is there.
    Overwrite,
}

/// Each L1 entry expires after its own TTL, or sooner when it is not read
/// for the time-to-idle.
struct ByEntry {
    tti: Option<Duration>,
}

impl ByEntry {
    /// How long `value` may stay from now: the rest of its TTL, capped by
    /// the time-to-idle.
    fn left<T>(&self, value: &L1Entry<T>) -> Duration {
        let rest = value.ttl.saturating_sub(value.stored_at.elapsed());
        self.tti.map_or(rest, |tti| rest.min(tti))
    }
}

impl<T> Expiry<String, L1Entry<T>> for ByEntry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &L1Entry<T>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.left(value))
    }

    fn expire_after_read(
        &self,
        _key: &String,
        value: &L1Entry<T>,
        _read_at: Instant,
        duration_until_expiry: Option<Duration>,
        _last_modified_at: Instant,
    ) -> Option<Duration> {
        match self.tti {
            Some(_) => Some(self.left(value)),
            None => duration_until_expiry,
        }
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &L1Entry<T>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.left(value))
    }
}

struct Inner<T> {
    name: Arc<str>,
    backend: Arc<dyn CacheBackend>,
    /// This instance's id in invalidation messages (its own writes do not
    /// evict its own fresh copies).
    origin: String,
    options: CacheOptions,
    l1: L1<T>,
    /// What L1 held when invalidations stopped: served, up to `max_stale`
    /// old, only while L2 is unreachable (degraded mode).
    fallback: L1<T>,
    /// Whether invalidations are flowing: L1 is used only then.
    l1_live: AtomicBool,
    /// Wakes [`MultiLevelCache::ready`] waiters when L1 goes live.
    live_wake: Notify,
    /// Bumped by every invalidation and flush: a value read from L2 before
    /// a bump may be stale and is not kept in L1.
    epoch: AtomicU64,
    counters: Arc<CacheCounters>,
    /// What [`MultiLevelCache::events`] subscribers hear.
    notices: tokio::sync::broadcast::Sender<CacheNotice>,
    listener: Mutex<Option<tokio::task::AbortHandle>>,
    /// The keys known to exist, when a bloom filter is configured.
    bloom: Option<Mutex<bloomfilter::Bloom<str>>>,
    /// Keys being refreshed ahead of expiry (one refresh per key at a time).
    refreshing: Mutex<std::collections::HashSet<String>>,
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        if let Some(h) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

/// A typed cache in two levels: an in-process L1 (`moka`, bounded by
/// entries or bytes, per-entry TTL) over the shared backend (L2). Cheap to
/// clone; clones share both levels.
///
/// * [`get_or_load`](Self::get_or_load) runs the loader once per key however
///   many tasks ask at once (stampede protection), remembers "not found"
///   for a short TTL (penetration protection), and spreads TTLs by a jitter
///   (avalanche protection). A loader that fails or panics fails every
///   waiter of its flight; the failure is not cached.
/// * A write or delete through any instance evicts the key from every other
///   instance's L1. L1 is used only while this instance receives those
///   invalidations: before the first subscription, and from a lost
///   connection until the next, every read goes to L2, and L1 is flushed
///   whenever invalidations may have been missed. Staleness is bounded by
///   the delivery of one invalidation message (and by `l1_ttl` should a
///   message be lost without the connection dropping).
/// * Stored values carry a header with a CRC32: a corrupted or foreign
///   value is an [`Error::Codec`] naming the key from `get`, a miss for
///   `get_or_load` (which then loads and overwrites it), never data.
pub struct MultiLevelCache<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for MultiLevelCache<T> {
    fn clone(&self) -> Self {
        MultiLevelCache {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for MultiLevelCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiLevelCache")
            .field("name", &self.inner.name)
            .field("backend", &self.inner.backend.cache_backend_name())
            .field("l1_entries", &self.inner.l1.entry_count())
            .finish()
    }
}

impl<T> MultiLevelCache<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A builder for cache `name` over `backend`.
    pub fn builder(backend: Arc<dyn CacheBackend>, name: impl Into<String>) -> CacheBuilder {
        CacheBuilder::new(backend, name)
    }

    pub(crate) fn start(
        backend: Arc<dyn CacheBackend>,
        name: String,
        options: CacheOptions,
    ) -> Result<Self> {
        let metrics = options.metrics.clone();
        let backend_name = backend.cache_backend_name();
        let counters = Arc::new(CacheCounters {
            series: metrics.map(|m| CacheSeries::new(&m, backend_name, &name)),
            ..CacheCounters::default()
        });
        let (notices, _) = tokio::sync::broadcast::channel(NOTICE_BUFFER);
        let evicted = (counters.clone(), notices.clone());
        let mut l1 = moka::future::Cache::builder()
            .expire_after(ByEntry {
                tti: options.l1_tti,
            })
            .eviction_listener(move |key: Arc<String>, _value, cause| {
                // Capacity evictions only: expiries and invalidations are
                // the cache working as configured.
                if cause == moka::notification::RemovalCause::Size {
                    evicted.0.add(Count::Eviction, 1);
                    let _ = evicted.1.send(CacheNotice::Evicted((*key).clone()));
                }
            });
        l1 = match options.l1_max_bytes {
            Some(bytes) => l1
                .weigher(|_k: &String, v: &L1Entry<T>| v.weight)
                .max_capacity(bytes),
            None => l1.max_capacity(options.l1_max_entries),
        };
        let bloom = match options.bloom {
            Some((keys, rate)) => Some(Mutex::new(
                bloomfilter::Bloom::new_for_fp_rate(keys, rate)
                    .map_err(|e| Error::invalid(format!("bloom filter: {e}")))?,
            )),
            None => None,
        };
        let fallback = moka::future::Cache::builder()
            .max_capacity(options.l1_max_entries)
            .time_to_live(options.max_stale.max(Duration::from_millis(1)))
            .build_with_hasher(L1Hasher::default());
        let inner = Arc::new(Inner {
            name: name.as_str().into(),
            backend,
            origin: format!("{:016x}", fastrand::u64(..)),
            options,
            l1: l1.build_with_hasher(L1Hasher::default()),
            fallback,
            l1_live: AtomicBool::new(false),
            live_wake: Notify::new(),
            epoch: AtomicU64::new(0),
            counters,
            notices,
            listener: Mutex::new(None),
            refreshing: Mutex::new(std::collections::HashSet::new()),
            bloom,
        });
        if let Some(registry) = &inner.options.health_registry {
            let weak: Weak<dyn HealthSource> = Arc::downgrade(&inner) as Weak<dyn HealthSource>;
            registry.register(weak);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let task = rt.spawn(listen(Arc::downgrade(&inner)));
                *inner.listener.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(task.abort_handle());
            }
            Err(_) => tracing::warn!(
                cache = %inner.name,
                "cache built outside a tokio runtime: no invalidation listener, so L1 stays off"
            ),
        }
        Ok(MultiLevelCache { inner })
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What this instance has seen.
    pub fn stats(&self) -> CacheStats {
        self.inner.counters.snapshot()
    }

    /// Whether the L1 is in use (invalidations are flowing).
    pub fn is_l1_live(&self) -> bool {
        self.inner.l1_live.load(Ordering::Acquire)
    }

    /// Resolves once this instance receives invalidations and so uses its
    /// L1 (shortly after build, and after each reconnect). Reads work
    /// before, from L2.
    pub async fn ready(&self) {
        loop {
            let woken = self.inner.live_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_l1_live() {
                return;
            }
            woken.await;
        }
    }

    /// The value of `key`: from L1, else from L2 (then kept in L1).
    /// `Ok(None)` when neither has it (or it is known absent).
    pub async fn get(&self, key: &str) -> Result<Option<Arc<T>>> {
        validate_cache_key(key)?;
        let inner = &self.inner;
        if let Some(hit) = inner.l1_hit(key).await {
            return Ok(hit);
        }
        let epoch = inner.epoch.load(Ordering::Acquire);
        let stored = match inner.backend.get(&inner.name, key).await {
            Ok(stored) => stored,
            Err(e) => return inner.degraded(key, e).await,
        };
        let Some(bytes) = stored else {
            inner.counters.add(Count::Miss, 1);
            return Ok(None);
        };
        let entry = inner.decode(key, &bytes)?;
        inner.counters.add(Count::L2Hit, 1);
        if entry.value.is_some() {
            inner.learn(key);
        }
        let value = entry.value.clone();
        inner.keep(key, entry, epoch).await;
        Ok(value)
    }

    /// The values of `keys`, in order: L1 first, the rest in one backend
    /// call.
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Arc<T>>>> {
        for key in keys {
            validate_cache_key(key)?;
        }
        let inner = &self.inner;
        let mut out: Vec<Option<Option<Arc<T>>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            let hit = inner.l1_hit(key).await;
            if hit.is_none() {
                missing.push(*key);
            }
            out.push(hit);
        }
        if !missing.is_empty() {
            let epoch = inner.epoch.load(Ordering::Acquire);
            let stored = match inner.backend.get_many(&inner.name, &missing).await {
                Ok(stored) => stored,
                Err(e) => {
                    // Degraded mode: every missing key from its stale copy,
                    // or the error.
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    let mut stale = Vec::with_capacity(missing.len());
                    for key in &missing {
                        match inner.stale(key).await {
                            Some(entry) => stale.push(entry.value),
                            None => return Err(e),
                        }
                    }
                    let mut stale = stale.into_iter();
                    for slot in out.iter_mut().filter(|s| s.is_none()) {
                        *slot = Some(stale.next().flatten());
                    }
                    return Ok(out.into_iter().map(Option::flatten).collect());
                }
            };
            let mut fetched = missing.iter().zip(stored);
            for slot in out.iter_mut().filter(|s| s.is_none()) {
                let Some((key, bytes)) = fetched.next() else {
                    break;
                };
                *slot = Some(match bytes {
                    None => {
                        inner.counters.add(Count::Miss, 1);
                        None
                    }
                    Some(bytes) => {
                        let entry = inner.decode(key, &bytes)?;
                        inner.counters.add(Count::L2Hit, 1);
                        let value = entry.value.clone();
                        inner.keep(key, entry, epoch).await;
                        value
                    }
                });
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }

    /// The value of `key`, loading it with `loader` when neither level has
    /// it. Concurrent calls for one key share one load. `loader` returns
    /// `Ok(None)` for "does not exist", which is remembered for the
    /// negative TTL. A value in L2 that fails its checks is treated as a
    /// miss (and counted). When L2 is unreachable the loader still runs
    /// (its result is not stored).
    pub async fn get_or_load<F, Fut>(&self, key: &str, loader: F) -> Result<Option<Arc<T>>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        validate_cache_key(key)?;
        let inner = &self.inner;
        if !inner.maybe_known(key) {
            inner.counters.add(Count::BloomRejection, 1);
            return Ok(None);
        }
        if let Some(hit) = inner.l1_hit(key).await {
            return Ok(hit);
        }
        let epoch = inner.epoch.load(Ordering::Acquire);
        let init = inner.fetch_or_load(key, loader);
        // The flight's value goes into L1; it stays there only if no
        // invalidation came meanwhile and invalidations are flowing, even
        // if this call is cancelled before it can check.
        let recheck = Recheck::new(inner, key, epoch);
        let result = inner.l1.try_get_with(key.to_owned(), init).await;
        recheck.now().await;
        match result {
            Ok(entry) => {
                if entry.value.is_some() {
                    inner.learn(key);
                }
                Ok(entry.value)
            }
            Err(shared) => Err(Error::from_shared(&shared)),
        }
    }

    /// What happens to this instance's copies, as it happens: keys other
    /// instances invalidated, L1 flushes, capacity evictions, failed loads
    /// and values that failed their checks. A subscriber that falls more
    /// than 1024 notices behind loses the oldest (`RecvError::Lagged`).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<CacheNotice> {
        self.inner.notices.subscribe()
    }

    /// Adds `keys` to the bloom filter of known keys (see
    /// [`CacheBuilder::bloom_filter`]); does nothing without one.
    pub fn bloom_insert<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        if let Some(bloom) = &self.inner.bloom {
            let mut bloom = bloom.lock().unwrap_or_else(|e| e.into_inner());
            for key in keys {
                bloom.set(key);
            }
        }
    }

    /// [`get_or_load`](Self::get_or_load) with refresh-ahead: when L1
    /// serves a value older than the refresh point (see
    /// [`CacheBuilder::refresh_ahead`]), it is returned at once and `loader`
    /// runs in the background (once per key at a time) to store a fresh
    /// value in both levels before the old one expires, so hot keys never
    /// miss. Without a refresh point this is `get_or_load`.
    pub async fn get_or_refresh<F, Fut>(&self, key: &str, loader: F) -> Result<Option<Arc<T>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>>> + Send + 'static,
    {
        validate_cache_key(key)?;
        let inner = &self.inner;
        if let Some(fraction) = inner.options.refresh_ahead
            && inner.l1_live.load(Ordering::Acquire)
            && let Some(entry) = inner.l1.get(key).await
        {
            inner.counters.add(Count::L1Hit, 1);
            let due = entry.stored_at.elapsed() >= entry.ttl.mul_f64(fraction);
            if due && inner.start_refresh(key) {
                let (inner, key) = (self.inner.clone(), key.to_owned());
                tokio::spawn(async move {
                    let epoch = inner.epoch.load(Ordering::Acquire);
                    match inner
                        .load_and_store(&key, loader, true, Store::Overwrite)
                        .await
                    {
                        Ok(fresh) => inner.keep(&key, fresh, epoch).await,
                        Err(e) => {
                            tracing::debug!(cache = %inner.name, key, error = %e, "refresh-ahead failed; the old value stays until it expires")
                        }
                    }
                    inner.end_refresh(&key);
                });
            }
            return Ok(entry.value);
        }
        self.get_or_load(key, loader).await
    }

    /// Stores `value` under `key` with the cache's TTL (jittered).
    pub async fn set(&self, key: &str, value: T) -> Result<()> {
        let ttl = self.inner.options.ttl;
        self.set_with_ttl(key, value, ttl).await
    }

    /// Stores `value` under `key` with `ttl` (jittered).
    pub async fn set_with_ttl(&self, key: &str, value: T, ttl: Duration) -> Result<()> {
        validate_cache_key(key)?;
        validate_cache_ttl(ttl)?;
        let inner = &self.inner;
        let payload = inner.options.codec.encode(&value)?;
        let sealed = envelope::seal(&payload, inner.options.codec, inner.options.compress_above);
        inner.check_size(key, sealed.len())?;
        let weight = weight(sealed.len());
        // A local write is an invalidation too: a read in flight must not
        // keep the older value it fetched, nor a concurrent write's.
        let epoch = inner.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        inner.l1.invalidate(key).await;
        inner
            .backend
            .set(
                &inner.name,
                key,
                sealed,
                inner.options.jittered(ttl),
                &inner.origin,
            )
            .await?;
        inner.counters.add(Count::Write, 1);
        inner.counters.add(Count::InvalidationSent, 1);
        inner.learn(key);
        let entry = L1Entry::new(Some(Arc::new(value)), inner.l1_ttl(ttl), weight);
        inner.keep(key, entry, epoch).await;
        Ok(())
    }

    /// Deletes `key` from both levels (and from every other instance's L1);
    /// whether L2 had it.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        validate_cache_key(key)?;
        let inner = &self.inner;
        inner.epoch.fetch_add(1, Ordering::AcqRel);
        inner.l1.invalidate(key).await;
        let existed = inner
            .backend
            .delete(&inner.name, key, &inner.origin)
            .await?;
        inner.epoch.fetch_add(1, Ordering::AcqRel);
        inner.l1.invalidate(key).await;
        inner.counters.add(Count::Write, 1);
        inner.counters.add(Count::InvalidationSent, 1);
        Ok(existed)
    }

    /// Whether L2 holds a value (or a negative entry) for `key`.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        validate_cache_key(key)?;
        self.inner.backend.exists(&self.inner.name, key).await
    }

    /// Drops this instance's L1 copy of `key` (L2 and other instances keep theirs).
    pub async fn invalidate_local(&self, key: &str) {
        self.inner.l1.invalidate(key).await;
    }

    /// Drops every L1 copy of this instance.
    pub fn clear_local(&self) {
        self.inner.flush();
    }

    /// How many entries this instance's L1 holds (approximate: moka applies
    /// pending evictions lazily).
    pub fn l1_entry_count(&self) -> u64 {
        self.inner.l1.entry_count()
    }

    /// This cache's health: `Healthy` while L2 answers and invalidations
    /// flow; `Degraded` while L2 is unreachable (reads are served from
    /// copies at most `max_stale` old and the loader; writes fail) or while
    /// invalidations are not flowing (L1 is off).
    pub async fn health(&self) -> ComponentHealth {
        HealthSource::health(&*self.inner).await
    }

    /// Loads every key of `keys` that neither level holds, `concurrency`
    /// at a time, through `loader` (single-flight like
    /// [`get_or_load`](Self::get_or_load)), and reports progress to
    /// `progress` at each whole percent (and logs it at each tenth). Keys
    /// that fail (a bad key, a failed load) are counted, not fatal.
    pub async fn warm<I, K, F, Fut>(
        &self,
        keys: I,
        concurrency: usize,
        loader: F,
        mut progress: impl FnMut(&WarmReport),
    ) -> Result<WarmReport>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        if concurrency == 0 {
            return Err(Error::invalid("warm concurrency is zero; give at least 1"));
        }
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let total = keys.len();
        let loads = AtomicU64::new(0);
        let (loader, loads_ref) = (&loader, &loads);
        let mut report = WarmReport {
            keys: total,
            ..WarmReport::default()
        };
        let mut results = futures::stream::iter(keys)
            .map(|key| async move {
                self.get_or_load(&key, || {
                    loads_ref.fetch_add(1, Ordering::Relaxed);
                    loader(key.clone())
                })
                .await
                .map_err(|e| (key, e))
            })
            .buffer_unordered(concurrency);
        let mut last_percent = 0;
        while let Some(result) = results.next().await {
            report.done += 1;
            if let Err((key, e)) = result {
                report.failed += 1;
                tracing::debug!(cache = %self.inner.name, key, error = %e, "warm: a key failed");
            }
            report.loaded = loads.load(Ordering::Relaxed) as usize;
            let percent = report.done * 100 / total.max(1);
            if percent > last_percent || report.done == total {
                last_percent = percent;
                progress(&report);
                if percent.is_multiple_of(10) {
                    tracing::info!(cache = %self.inner.name, done = report.done, total, loaded = report.loaded, failed = report.failed, "warming");
                }
            }
        }
        Ok(report)
    }
}

/// Progress and outcome of [`MultiLevelCache::warm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// Keys asked for.
    pub keys: usize,
    /// Keys finished so far (loaded, already cached, or failed).
    pub done: usize,
    /// Loader calls made.
    pub loaded: usize,
    /// Keys that failed.
    pub failed: usize,
}

#[async_trait::async_trait]
impl<T> HealthSource for Inner<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn health(&self) -> ComponentHealth {
        let mut h = self.backend.cache_health().await;
        h.name = format!("cache {}", self.name);
        match h.status {
            HealthStatus::Healthy if !self.l1_live.load(Ordering::Acquire) => {
                h.status = HealthStatus::Degraded;
                h.detail = Some("invalidations are not flowing yet; L1 is off".into());
            }
            HealthStatus::Unhealthy => {
                h.status = HealthStatus::Degraded;
                h.detail = Some(format!(
                    "L2 unreachable ({}); reads serve copies at most {:?} old and the loader; writes fail",
                    h.detail.as_deref().unwrap_or("no answer"),
                    self.options.max_stale
                ));
            }
            _ => {}
        }
        h
    }
}

impl<T> Inner<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn l1_hit(&self, key: &str) -> Option<Option<Arc<T>>> {
        if !self.l1_live.load(Ordering::Acquire) {
            return None;
        }
        let entry = self.l1.get(key).await?;
        self.counters.add(Count::L1Hit, 1);
        Some(entry.value)
    }

    /// Tells [`MultiLevelCache::events`] subscribers (none: nothing happens).
    fn notify(&self, notice: CacheNotice) {
        let _ = self.notices.send(notice);
    }

    /// Whether `key` may exist: true without a bloom filter.
    fn maybe_known(&self, key: &str) -> bool {
        self.bloom
            .as_ref()
            .is_none_or(|b| b.lock().unwrap_or_else(|e| e.into_inner()).check(key))
    }

    /// Records that `key` exists (in the bloom filter, if any).
    fn learn(&self, key: &str) {
        if let Some(bloom) = &self.bloom {
            bloom.lock().unwrap_or_else(|e| e.into_inner()).set(key);
        }
    }

    /// Marks `key` as being refreshed; false if it already is.
    fn start_refresh(&self, key: &str) -> bool {
        self.refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned())
    }

    fn end_refresh(&self, key: &str) {
        self.refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Puts `entry` in L1 if invalidations are flowing and none came since
    /// `epoch` was read (before the value was fetched or written).
    async fn keep(&self, key: &str, entry: L1Entry<T>, epoch: u64) {
        if !self.l1_live.load(Ordering::Acquire) {
            return;
        }
        let recheck = Recheck::new(self, key, epoch);
        self.l1.insert(key.to_owned(), entry).await;
        recheck.now().await;
    }

    /// Whether an L1 entry put there since `epoch` must go: an
    /// invalidation came meanwhile, or invalidations stopped flowing.
    fn stale_since(&self, epoch: u64) -> bool {
        !self.l1_live.load(Ordering::Acquire) || self.epoch.load(Ordering::Acquire) != epoch
    }

    fn l1_ttl(&self, ttl: Duration) -> Duration {
        self.options.jittered(ttl.min(self.options.l1_ttl))
    }

    fn check_size(&self, key: &str, len: usize) -> Result<()> {
        let max = self.backend.max_value_bytes();
        if len > max {
            return Err(Error::invalid(format!(
                "cache value of key {key:?} is {len} bytes stored; the {} backend takes at most {max}",
                self.backend.cache_backend_name()
            )));
        }
        Ok(())
    }

    /// Decodes a stored value of `key` into an L1 entry; counts failures.
    fn decode(&self, key: &str, bytes: &[u8]) -> Result<L1Entry<T>> {
        let codec = self.options.codec;
        let result = envelope::open(key, bytes, codec).and_then(|opened| match opened {
            Opened::Absent => Ok(L1Entry::new(
                None,
                self.l1_ttl(self.options.negative_ttl),
                weight(bytes.len()),
            )),
            Opened::Payload(p) => codec
                .decode::<T>(&p)
                .map_err(|e| e.context(format!("cache value of key {key:?}")))
                .map(|v| {
                    L1Entry::new(
                        Some(Arc::new(v)),
                        self.l1_ttl(self.options.ttl),
                        weight(bytes.len()),
                    )
                }),
        });
        if let Err(e) = &result {
            self.counters.add(Count::CodecError, 1);
            self.notify(CacheNotice::CodecError(key.to_owned()));
            tracing::warn!(cache = %self.name, key, error = %e, "a stored cache value failed its checks");
        }
        result
    }

    /// One flight of `get_or_load`: L2, else the loader (then L2 is filled).
    async fn fetch_or_load<F, Fut>(&self, key: &str, loader: F) -> Result<L1Entry<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        // A corrupted value is overwritten by the load; an absent one only
        // filled (a write made while the loader runs wins).
        let mut store = Store::Fill;
        let l2_up = match self.backend.get(&self.name, key).await {
            Ok(Some(bytes)) => match self.decode(key, &bytes) {
                Ok(entry) => {
                    self.counters.add(Count::L2Hit, 1);
                    return Ok(entry);
                }
                // Counted and logged; load a good value over it.
                Err(_) => {
                    store = Store::Overwrite;
                    true
                }
            },
            Ok(None) => {
                self.counters.add(Count::Miss, 1);
                true
            }
            Err(e) => {
                if e.is_retryable()
                    && let Some(entry) = self.stale(key).await
                {
                    return Ok(entry);
                }
                tracing::debug!(cache = %self.name, key, error = %e, "L2 unreachable; loading without it");
                false
            }
        };
        // Across processes: one loader per key among every instance that
        // shares the load lock; whoever waited finds the value in L2.
        let load_guard = match (&self.options.load_lock, l2_up) {
            (Some(locks), true) => self.load_lock(locks, key).await,
            _ => None,
        };
        if load_guard.is_some()
            && let Ok(Some(bytes)) = self.backend.get(&self.name, key).await
            && let Ok(entry) = self.decode(key, &bytes)
        {
            self.counters.add(Count::L2Hit, 1);
            release_load_lock(load_guard).await;
            return Ok(entry);
        }
        let result = self.load_and_store(key, loader, l2_up, store).await;
        release_load_lock(load_guard).await;
        result
    }

    /// The lock that makes loads of `key` single-flight across processes,
    /// or `None` (then this instance loads alone) when it cannot be had.
    async fn load_lock(
        &self,
        locks: &crate::lock::LockClient,
        key: &str,
    ) -> Option<crate::lock::LockGuard> {
        let mut name = format!("cache-load/{}/{key}", self.name);
        if name.len() > crate::lock::MAX_LOCK_NAME_LEN {
            // Long keys share locks by hash: at worst unrelated loads wait.
            let hash =
                std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::with_seed(0), key);
            name = format!("cache-load/{}/#{hash:016x}", self.name);
        }
        let lock = locks
            .lock(name)
            .ttl(Duration::from_secs(30))
            .wait_timeout(self.options.load_lock_wait)
            .build();
        match lock.acquire().await {
            Ok(guard) => Some(guard),
            Err(e) => {
                tracing::debug!(cache = %self.name, key, error = %e, "no load lock; loading without it");
                None
            }
        }
    }

    /// Runs the loader and stores its value (or a negative entry) in L2:
    /// only where the key is still absent (`Fill`: a load must not
    /// overwrite a write made while it ran), or over it (`Overwrite`: a
    /// refresh).
    async fn load_and_store<F, Fut>(
        &self,
        key: &str,
        loader: F,
        l2_up: bool,
        store: Store,
    ) -> Result<L1Entry<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        self.counters.add(Count::Load, 1);
        let started = Instant::now();
        // The closure's own body runs inside the guard too.
        let loaded = AssertUnwindSafe(async move { loader().await })
            .catch_unwind()
            .await;
        if let Some(series) = &self.counters.series {
            series.load.observe(started.elapsed().as_secs_f64());
        }
        let loaded = match loaded {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic".into());
                Err(Error::backend(
                    "loader",
                    format!(
                        "the loader of cache {:?} key {key:?} panicked: {what}",
                        self.name
                    ),
                    false,
                    None,
                ))
            }
        };
        let value = match loaded {
            Ok(v) => v,
            Err(e) => {
                self.counters.add(Count::LoadFailure, 1);
                self.notify(CacheNotice::LoadFailed(key.to_owned()));
                return Err(e);
            }
        };
        let codec = self.options.codec;
        let (sealed, ttl) = match &value {
            Some(v) => (
                envelope::seal(&codec.encode(v)?, codec, self.options.compress_above),
                self.options.ttl,
            ),
            None => (envelope::seal_absent(codec), self.options.negative_ttl),
        };
        let weight = weight(sealed.len());
        if l2_up && self.check_size(key, sealed.len()).is_ok() {
            let (name, ttl, origin) = (&self.name, self.options.jittered(ttl), &self.origin);
            let write = match store {
                Store::Fill => self.backend.fill(name, key, sealed, ttl, origin).await,
                Store::Overwrite => self
                    .backend
                    .set(name, key, sealed, ttl, origin)
                    .await
                    .map(|()| true),
            };
            match write {
                // Someone wrote the key while the loader ran: theirs is newer.
                Ok(false) => {
                    if let Ok(Some(bytes)) = self.backend.get(&self.name, key).await
                        && let Ok(newer) = self.decode(key, &bytes)
                    {
                        return Ok(newer);
                    }
                }
                Ok(true) => {}
                Err(e) => {
                    tracing::debug!(cache = %self.name, key, error = %e, "could not store a loaded value in L2");
                }
            }
        }
        Ok(L1Entry::new(value.map(Arc::new), self.l1_ttl(ttl), weight))
    }

    /// Drops every L1 copy (invalidations may have been missed).
    fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.l1.invalidate_all();
    }

    /// Invalidations stopped flowing: L1 off; what it held becomes the
    /// degraded-mode fallback, served only while L2 is unreachable.
    async fn go_dark(&self) {
        self.l1_live.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let max_stale = self.options.max_stale;
        for (key, entry) in self.l1.iter() {
            if entry.stored_at.elapsed() < max_stale {
                self.fallback.insert((*key).clone(), entry).await;
            }
        }
        self.l1.invalidate_all();
        self.counters.add(Count::Resync, 1);
        self.notify(CacheNotice::Resync);
    }

    /// Invalidations flow again: L1 starts empty, the fallback is dropped.
    fn go_live(&self) {
        self.flush();
        self.fallback.invalidate_all();
        self.l1_live.store(true, Ordering::Release);
        self.live_wake.notify_waiters();
    }

    /// The fallback copy of `key` if it is at most `max_stale` old.
    async fn stale(&self, key: &str) -> Option<L1Entry<T>> {
        let entry = self.fallback.get(key).await?;
        if entry.stored_at.elapsed() > self.options.max_stale {
            return None;
        }
        self.counters.add(Count::StaleHit, 1);
        Some(entry)
    }

    /// A read whose L2 call failed with `error`: the fallback copy when L2
    /// is unreachable and one is fresh enough, else the error.
    async fn degraded(&self, key: &str, error: Error) -> Result<Option<Arc<T>>> {
        if error.is_retryable()
            && let Some(entry) = self.stale(key).await
        {
            tracing::debug!(cache = %self.name, key, error = %error, "L2 unreachable; serving a stale copy");
            return Ok(entry.value);
        }
        Err(error)
    }
}

/// Releases a load lock (a failed release expires with the lock's TTL).
async fn release_load_lock(guard: Option<crate::lock::LockGuard>) {
    if let Some(guard) = guard
        && let Err(e) = guard.release().await
    {
        tracing::debug!(error = %e, "could not release a cache load lock; it expires");
    }
}

/// An L1 weight: the stored size, saturated.
fn weight(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX).max(1)
}

/// The invalidation listener of one cache instance: subscribes, turns L1
/// on while events flow, and off (flushed) when they stop, then subscribes
/// again with a backoff. Ends with the cache.
async fn listen<T>(weak: Weak<Inner<T>>)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    const MIN_DELAY: Duration = Duration::from_millis(50);
    const MAX_DELAY: Duration = Duration::from_secs(2);
    let mut delay = MIN_DELAY;
    loop {
        let (backend, name) = match weak.upgrade() {
            Some(inner) => (inner.backend.clone(), inner.name.clone()),
            None => return,
        };
        let subscribed = backend.watch(&name).await;
        let Some(inner) = weak.upgrade() else { return };
        let mut events = match subscribed {
            Ok(events) => events,
            Err(e) => {
                tracing::debug!(cache = %name, error = %e, "cannot watch invalidations; L1 stays off");
                drop(inner);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                continue;
            }
        };
        delay = MIN_DELAY;
        // Whatever L1 held may have missed invalidations before this point.
        inner.go_live();
        drop(inner);
        loop {
            let event = events.next().await;
            let Some(inner) = weak.upgrade() else { return };
            match event {
                Some(CacheEvent::Invalidated { keys, origin }) => {
                    if origin.as_deref() == Some(inner.origin.as_str()) {
                        continue;
                    }
                    inner.epoch.fetch_add(1, Ordering::AcqRel);
                    for key in &keys {
                        inner.l1.invalidate(key).await;
                        // Written elsewhere (or deleted: a harmless false positive).
                        inner.learn(key);
                    }
                    inner
                        .counters
                        .add(Count::InvalidationReceived, keys.len() as u64);
                    for key in keys {
                        inner.notify(CacheNotice::Invalidated(key));
                    }
                }
                Some(CacheEvent::Resync) => {
                    inner.flush();
                    inner.counters.add(Count::Resync, 1);
                    inner.notify(CacheNotice::Resync);
                }
                None => {
                    tracing::debug!(cache = %name, "invalidations stopped; L1 off until they flow again");
                    inner.go_dark().await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheBuilder;
    use crate::memory::MemoryBackend;

    /// An L1 entry not read for the time-to-idle is dropped (the next read
    /// goes to L2); one read often enough stays.
    #[tokio::test]
    async fn idle_l1_entries_expire_and_read_ones_stay() {
        let cache = CacheBuilder::new(Arc::new(MemoryBackend::new()), "tti")
            .l1_time_to_idle(Duration::from_millis(300))
            .build::<u32>()
            .unwrap();
        cache.ready().await;
        cache.set("read", 1).await.unwrap();
        cache.set("idle", 2).await.unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(cache.get("read").await.unwrap().map(|v| *v), Some(1));
        }
        assert_eq!(cache.stats().l2_hits, 0, "the read key stayed in L1");
        assert_eq!(cache.get("idle").await.unwrap().map(|v| *v), Some(2));
        assert_eq!(
            cache.stats().l2_hits,
            1,
            "the idle key left L1 after 300 ms"
        );
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;
    use crate::cache::CacheBuilder;
    use crate::memory::MemoryBackend;

    /// `events()` reports what happens to the instance's copies, and the
    /// counters follow: invalidations from another instance, evictions of
    /// a full L1, failed loads, values that fail their checks.
    #[tokio::test]
    async fn events_and_counters_follow_what_happens() {
        let store = MemoryBackend::new();
        let a = CacheBuilder::new(Arc::new(store.clone()), "ev")
            .l1_max_entries(10)
            .build::<u32>()
            .unwrap();
        let b = CacheBuilder::new(Arc::new(store.clone()), "ev")
            .build::<u32>()
            .unwrap();
        a.ready().await;
        b.ready().await;
        let mut events = a.events();
        b.set("k", 1).await.unwrap();
        assert_eq!(b.stats().invalidations_sent, 1);
        let notice = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a notice")
            .expect("open");
        assert_eq!(notice, CacheNotice::Invalidated("k".into()));

        let failed = a
            .get_or_load("bad", || async { Err(Error::unavailable("db down", None)) })
            .await;
        assert!(failed.is_err());
        let notice = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a notice")
            .expect("open");
        assert_eq!(notice, CacheNotice::LoadFailed("bad".into()));

        for i in 0..200u32 {
            a.set(&format!("fill{i}"), i).await.unwrap();
        }
        a.inner.l1.run_pending_tasks().await;
        assert!(
            a.stats().evictions > 0,
            "a full L1 evicted: {:?}",
            a.stats()
        );
    }
}
