//! Counters of one cache instance.

use std::sync::atomic::{AtomicU64, Ordering};

/// What one [`MultiLevelCache`](crate::cache::MultiLevelCache) instance saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered by the in-process L1.
    pub l1_hits: u64,
    /// Reads answered by a stale copy while L2 was unreachable (degraded mode).
    pub stale_hits: u64,
    /// Reads answered by the backend (L2).
    pub l2_hits: u64,
    /// Reads that found nothing in either level.
    pub misses: u64,
    /// Loader calls (one per single-flight, however many waited).
    pub loads: u64,
    /// Loader calls that failed or panicked.
    pub load_failures: u64,
    /// Stored values that failed their checksum or decoding.
    pub codec_errors: u64,
    /// Writes and deletes through this instance.
    pub writes: u64,
    /// Keys other instances invalidated in this instance's L1.
    pub invalidations_received: u64,
    /// Times the L1 was flushed because invalidations may have been missed
    /// (a reconnect, a gap).
    pub resyncs: u64,
    /// `get_or_load` calls the bloom filter answered "absent" without
    /// reaching L2 or the loader.
    pub bloom_rejections: u64,
    /// L1 entries dropped because L1 was full.
    pub evictions: u64,
    /// Invalidations this instance's writes and deletes published.
    pub invalidations_sent: u64,
}

/// What a cache counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    L1Hit,
    L2Hit,
    StaleHit,
    Miss,
    Load,
    LoadFailure,
    CodecError,
    Write,
    InvalidationReceived,
    Resync,
    BloomRejection,
    Eviction,
    InvalidationSent,
}

const COUNTS: [Count; 13] = [
    Count::L1Hit,
    Count::L2Hit,
    Count::StaleHit,
    Count::Miss,
    Count::Load,
    Count::LoadFailure,
    Count::CodecError,
    Count::Write,
    Count::InvalidationReceived,
    Count::Resync,
    Count::BloomRejection,
    Count::Eviction,
    Count::InvalidationSent,
];

impl Count {
    fn label(self) -> &'static str {
        match self {
            Count::L1Hit => "l1_hit",
            Count::L2Hit => "l2_hit",
            Count::StaleHit => "stale_hit",
            Count::Miss => "miss",
            Count::Load => "load",
            Count::LoadFailure => "load_failure",
            Count::CodecError => "codec_error",
            Count::Write => "write",
            Count::InvalidationReceived => "invalidation_received",
            Count::Resync => "resync",
            Count::BloomRejection => "bloom_rejection",
            Count::Eviction => "eviction",
            Count::InvalidationSent => "invalidation_sent",
        }
    }
}

/// The Prometheus series of one cache, resolved once.
#[derive(Debug)]
pub(crate) struct CacheSeries {
    events: Vec<prometheus::IntCounter>,
    pub(crate) load: prometheus::Histogram,
}

impl CacheSeries {
    pub(crate) fn new(metrics: &crate::metrics::Metrics, backend: &str, cache: &str) -> Self {
        CacheSeries {
            events: COUNTS
                .iter()
                .map(|c| metrics.cache_event(backend, cache, c.label()))
                .collect(),
            load: metrics.cache_load(backend, cache),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    pub(crate) series: Option<CacheSeries>,
    pub(crate) l1_hits: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) stale_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_failures: AtomicU64,
    pub(crate) codec_errors: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) bloom_rejections: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) invalidations_sent: AtomicU64,
}

impl CacheCounters {
    /// Adds `n` to `count` (and to its Prometheus series).
    pub(crate) fn add(&self, count: Count, n: u64) {
        let counter = match count {
            Count::L1Hit => &self.l1_hits,
            Count::L2Hit => &self.l2_hits,
            Count::StaleHit => &self.stale_hits,
            Count::Miss => &self.misses,
            Count::Load => &self.loads,
            Count::LoadFailure => &self.load_failures,
            Count::CodecError => &self.codec_errors,
            Count::Write => &self.writes,
            Count::InvalidationReceived => &self.invalidations_received,
            Count::Resync => &self.resyncs,
            Count::BloomRejection => &self.bloom_rejections,
            Count::Eviction => &self.evictions,
            Count::InvalidationSent => &self.invalidations_sent,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        if let Some(series) = &self.series {
            series.events[count as usize].inc_by(n);
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            l1_hits: get(&self.l1_hits),
            l2_hits: get(&self.l2_hits),
            stale_hits: get(&self.stale_hits),
            misses: get(&self.misses),
            loads: get(&self.loads),
            load_failures: get(&self.load_failures),
            codec_errors: get(&self.codec_errors),
            writes: get(&self.writes),
            invalidations_received: get(&self.invalidations_received),
            resyncs: get(&self.resyncs),
            bloom_rejections: get(&self.bloom_rejections),
            evictions: get(&self.evictions),
            invalidations_sent: get(&self.invalidations_sent),
        }
    }
}
