#![doc = include_str!("../README.md")]

mod connect;
mod coord;

pub use crate::coord::{Coord, CoordBuilder};
pub use coord_core::{
    AcquireOutcome, CacheBackend, CacheBuilder, CacheCodec, CacheStats, Capabilities,
    ComponentHealth, Election, ElectionBuilder, Error, FencedResource, FencedStore, FencingToken,
    HealthStatus, HolderInfo, LeaderInfo, LeaderTerm, Leadership, Lock, LockAdmin, LockBackend,
    LockBuilder, LockClient, LockGrant, LockGuard, LockInfo, LockKind, LockOwner, LockSettings,
    LockStats, MemoryFencedStore, Metrics, MultiLevelCache, MultiLockBuilder, MultiLockGuard,
    Result, RetryPolicy, RetrySettings, Settings, StoredKind, fence,
};

/// URL helpers: [`url::redact`] hides a URL's password for logs.
pub use coord_core::url;

/// Caches: the backend trait, codecs, validation helpers.
pub use coord_core::cache;

/// The config center: versioned configuration, templates, secrets, typed
/// handles, a figment provider.
pub use coord_core::config;

/// Service discovery: instances, registrations, watchers, balancers,
/// circuit breakers, routed service clients.
pub use coord_core::discovery;

/// The in-process backend (`memory://`).
#[cfg(feature = "memory")]
pub use coord_core::memory;

/// The Redis backend (`redis://`, `redis+cluster://`, `redis+sentinel://`),
/// with its test fixtures under `testkit`.
#[cfg(feature = "redis")]
pub use coord_redis as redis;

/// The etcd backend (`etcd://`), with its test fixtures under `testkit`.
#[cfg(feature = "etcd")]
pub use coord_etcd as etcd;

/// The conformance suite and server fixtures, for testing your own backend
/// or your own services against real servers.
#[cfg(feature = "testkit")]
pub use coord_core::testkit;
