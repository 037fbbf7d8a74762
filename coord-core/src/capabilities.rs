//! What a backend promises, so callers and the conformance suite can see it.

use std::time::Duration;

/// The guarantees of one backend. Returned by every backend trait's
/// `capabilities()`; the conformance suite reads it instead of skipping tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name: `memory`, `redis` or `etcd`.
    pub backend: &'static str,
    /// Whether every read sees every acknowledged write (etcd: yes; Redis with
    /// asynchronous replication: no, a failover can lose an acknowledged lock).
    pub linearizable: bool,
    /// Whether every lock grant carries a fencing token strictly increasing per key.
    pub fencing: bool,
    /// Whether waiters can be granted in request order natively.
    pub fair_ordering: bool,
    /// Whether the server expires keys itself (no client has to clean up).
    pub native_ttl: bool,
    /// Whether the backend pushes change notifications (pub/sub, watch).
    pub watch: bool,
    /// The shortest TTL the backend honours; shorter requests are raised to it.
    /// etcd grants no lease shorter than its minimum (about 2 s).
    pub min_ttl: Duration,
    /// Whether all clients share one store even across processes
    /// (false for the in-process memory backend).
    pub distributed: bool,
}

impl Capabilities {
    /// Capabilities with the given name and the most conservative answers;
    /// each backend sets what it actually offers.
    pub fn new(backend: &'static str) -> Self {
        Capabilities {
            backend,
            linearizable: false,
            fencing: false,
            fair_ordering: false,
            native_ttl: false,
            watch: false,
            min_ttl: Duration::from_millis(1),
            distributed: false,
        }
    }

    /// `ttl` raised to [`Capabilities::min_ttl`] when shorter.
    pub fn effective_ttl(&self, ttl: Duration) -> Duration {
        ttl.max(self.min_ttl)
    }
}
