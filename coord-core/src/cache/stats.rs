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
}

#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
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
}

/// Adds one.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl CacheCounters {
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
        }
    }
}
