//! `CacheBuilder`: the options of one typed, two-level cache.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::backend::{CacheBackend, validate_cache_name, validate_cache_ttl};
use crate::cache::codec::CacheCodec;
use crate::cache::multi_level::MultiLevelCache;
use crate::error::{Error, Result};

/// The options of a [`MultiLevelCache`]; every one has a default.
#[derive(Debug, Clone)]
pub(crate) struct CacheOptions {
    pub(crate) ttl: Duration,
    pub(crate) l1_ttl: Duration,
    pub(crate) l1_max_entries: u64,
    pub(crate) l1_tti: Option<Duration>,
    pub(crate) l1_max_bytes: Option<u64>,
    pub(crate) negative_ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) codec: CacheCodec,
    pub(crate) compress_above: usize,
    pub(crate) max_stale: Duration,
    /// Makes loads single-flight across processes.
    pub(crate) load_lock: Option<crate::lock::LockClient>,
    pub(crate) load_lock_wait: Duration,
    /// The fraction of an L1 entry's TTL after which `get_or_refresh`
    /// reloads it in the background.
    pub(crate) refresh_ahead: Option<f64>,
    /// The bloom filter of known keys: (expected keys, false-positive rate).
    pub(crate) bloom: Option<(usize, f64)>,
    /// Where the cache's counters are exported.
    pub(crate) metrics: Option<crate::metrics::Metrics>,
    /// Where the built cache reports its health.
    pub(crate) health_registry: Option<Arc<crate::health::HealthRegistry>>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            ttl: Duration::from_secs(300),
            l1_ttl: Duration::from_secs(60),
            l1_max_entries: 10_000,
            l1_tti: None,
            l1_max_bytes: None,
            negative_ttl: Duration::from_secs(30),
            jitter: 0.1,
            codec: CacheCodec::Json,
            compress_above: 4096,
            max_stale: Duration::from_secs(30),
            load_lock: None,
            load_lock_wait: Duration::from_secs(30),
            health_registry: None,
            metrics: None,
            refresh_ahead: None,
            bloom: None,
        }
    }
}

impl CacheOptions {
    /// `ttl` spread by up to ± the jitter fraction, so keys written together
    /// do not all expire together (avalanche protection).
    pub(crate) fn jittered(&self, ttl: Duration) -> Duration {
        if self.jitter <= 0.0 {
            return ttl;
        }
        let factor = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        ttl.mul_f64(factor)
            .max(crate::cache::backend::MIN_CACHE_TTL)
    }
}

/// Builds a [`MultiLevelCache`]: `coord.cache("users").ttl(..).build::<User>()`.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use coord_core::cache::CacheBuilder;
/// use coord_core::memory::MemoryBackend;
///
/// let backend = Arc::new(MemoryBackend::new());
/// let users = CacheBuilder::new(backend, "users")
///     .ttl(Duration::from_secs(600))
///     .l1_max_entries(50_000)
///     .build::<String>()?;
/// let name = users.get_or_load("42", || async { Ok(Some("Ada".to_string())) }).await?;
/// assert_eq!(name.as_deref().map(String::as_str), Some("Ada"));
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder {
    backend: Arc<dyn CacheBackend>,
    name: String,
    options: CacheOptions,
}

impl CacheBuilder {
    /// A cache named `name` (its keys' namespace on the backend) over `backend`.
    pub fn new(backend: Arc<dyn CacheBackend>, name: impl Into<String>) -> Self {
        CacheBuilder {
            backend,
            name: name.into(),
            options: CacheOptions::default(),
        }
    }

    /// How long a value lives in the backend (L2). Default 5 minutes.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = ttl;
        self
    }

    /// The longest a value stays in the in-process L1 (never longer than its
    /// L2 TTL). Invalidations keep L1 current; this bounds staleness if one
    /// is ever lost without a reconnect. Default 60 s.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.options.l1_ttl = ttl;
        self
    }

    /// Drops an L1 entry not read for this long (time-to-idle), within its
    /// TTL. Default none.
    pub fn l1_time_to_idle(mut self, idle: Duration) -> Self {
        self.options.l1_tti = Some(idle);
        self
    }

    /// The most entries the L1 keeps. Default 10 000.
    pub fn l1_max_entries(mut self, entries: u64) -> Self {
        self.options.l1_max_entries = entries;
        self
    }

    /// Bounds the L1 by the encoded size of its values instead of their
    /// number.
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.options.l1_max_bytes = Some(bytes);
        self
    }

    /// How long a "not found" from the loader is remembered, in both levels
    /// (penetration protection). Default 30 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.options.negative_ttl = ttl;
        self
    }

    /// The TTL spread, a fraction between 0 and 0.5: each write's TTL is
    /// drawn from `ttl × (1 ± jitter)`. Default 0.1.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.options.jitter = fraction;
        self
    }

    /// The value codec. Default [`CacheCodec::Json`].
    pub fn codec(mut self, codec: CacheCodec) -> Self {
        self.options.codec = codec;
        self
    }

    /// Values whose encoding is longer than this are stored lz4-compressed.
    /// Default 4 KiB.
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.options.compress_above = bytes;
        self
    }

    /// Degraded mode: while L2 is unreachable, reads serve what this
    /// instance's L1 held when invalidations stopped, if it is at most this
    /// old (then `get_or_load` runs its loader). Zero turns it off.
    /// Default 30 s.
    pub fn max_stale(mut self, age: Duration) -> Self {
        self.options.max_stale = age;
        self
    }

    /// Makes `get_or_load` single-flight across processes: a miss takes the
    /// lock `cache-load/{name}/{key}` through `locks` (waiting up to `wait`
    /// for another process's load), reads L2 again, and loads only if the
    /// value is still missing. Without it, each process loads once.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # use std::time::Duration;
    /// let coord = coord_core::LockClient::new(std::sync::Arc::new(coord_core::memory::MemoryBackend::new()));
    /// # let backend = std::sync::Arc::new(coord_core::memory::MemoryBackend::new());
    /// let cache = coord_core::CacheBuilder::new(backend, "reports")
    ///     .load_lock(coord, Duration::from_secs(30))
    ///     .build::<String>()?;
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub fn load_lock(mut self, locks: crate::lock::LockClient, wait: Duration) -> Self {
        self.options.load_lock = Some(locks);
        self.options.load_lock_wait = wait;
        self
    }

    /// Reports the built cache's health to `registry` (`Coord` does this,
    /// so that `coord.health()` covers its caches).
    pub fn health_registry(mut self, registry: Arc<crate::health::HealthRegistry>) -> Self {
        self.options.health_registry = Some(registry);
        self
    }

    /// Refresh-ahead for [`MultiLevelCache::get_or_refresh`]: a value L1
    /// has held for more than `fraction` (between 0.1 and 0.95) of its L1
    /// TTL is served and reloaded in the background. Default off.
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.options.refresh_ahead = Some(fraction);
        self
    }

    /// A bloom filter of the keys known to exist (penetration protection):
    /// `get_or_load` of a key it does not know returns `Ok(None)` without
    /// reaching L2 or the loader. Keys become known by
    /// [`MultiLevelCache::bloom_insert`] (seed it with every existing key,
    /// e.g. all ids at startup), by writes and loads through this instance,
    /// by L2 hits, and by the invalidations of other instances' writes.
    /// Sized for `expected_keys` at `false_positive_rate`. Default off.
    pub fn bloom_filter(mut self, expected_keys: usize, false_positive_rate: f64) -> Self {
        self.options.bloom = Some((expected_keys, false_positive_rate));
        self
    }

    /// Exports the cache's counters as `coord_cache_events_total` and its
    /// loader times as `coord_cache_load_duration_seconds` (`Coord` does
    /// this when built with a registry).
    pub fn metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.options.metrics = Some(metrics);
        self
    }

    /// The cache, for values of type `T`. Fails with
    /// [`Error::InvalidArgument`] on a bad name or option. Starts the
    /// invalidation listener, so call it inside a tokio runtime.
    pub fn build<T>(self) -> Result<MultiLevelCache<T>>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        validate_cache_name(&self.name)?;
        let o = &self.options;
        validate_cache_ttl(o.ttl)?;
        validate_cache_ttl(o.l1_ttl).map_err(|e| e.context("l1_ttl"))?;
        validate_cache_ttl(o.negative_ttl).map_err(|e| e.context("negative_ttl"))?;
        if let Some(idle) = o.l1_tti {
            validate_cache_ttl(idle).map_err(|e| e.context("l1_time_to_idle"))?;
        }
        if !(0.0..=0.5).contains(&o.jitter) {
            return Err(Error::invalid(format!(
                "cache jitter {} is outside 0..=0.5",
                o.jitter
            )));
        }
        if let Some((keys, rate)) = o.bloom
            && (keys == 0 || !(rate > 0.0 && rate < 1.0))
        {
            return Err(Error::invalid(format!(
                "bloom filter for {keys} keys at false-positive rate {rate}: \
                 give at least one key and a rate between 0 and 1, such as 0.01"
            )));
        }
        if o.max_stale > crate::cache::backend::MAX_CACHE_TTL {
            return Err(Error::invalid(format!(
                "max_stale {:?} is longer than a year",
                o.max_stale
            )));
        }
        if let Some(f) = o.refresh_ahead
            && !(0.1..=0.95).contains(&f)
        {
            return Err(Error::invalid(format!(
                "refresh_ahead {f} is outside 0.1..=0.95 (a fraction of the L1 TTL)"
            )));
        }
        if o.l1_max_entries == 0 || o.l1_max_bytes == Some(0) {
            return Err(Error::invalid(
                "the L1 bound is zero; give at least one entry (or byte)",
            ));
        }
        MultiLevelCache::start(self.backend, self.name, self.options)
    }
}
