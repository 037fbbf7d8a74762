//! # coord-core
//!
//! The traits, shared algorithms and in-process backend of
//! [coord](https://docs.rs/coord), a distributed coordination SDK with Redis,
//! etcd and memory backends that all pass one conformance suite.
//!
//! Most users depend on the `coord` facade crate instead. Backend authors
//! implement [`LockBackend`]; everything backend-agnostic (waiting, the
//! watchdog, retries, metrics, validation) lives once in [`LockClient`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use coord_core::{LockClient, memory::MemoryBackend};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let client = LockClient::new(Arc::new(MemoryBackend::new()));
//! let lock = client.lock("orders/42").ttl(Duration::from_secs(10)).build();
//! let guard = lock.acquire().await?;
//! assert!(lock.try_acquire().await?.is_none(), "held until released");
//! let token = guard.fencing_token();
//! guard.release().await?;
//! let again = lock.acquire().await?;
//! assert!(again.fencing_token() > token);
//! # again.release().await?;
//! # Ok::<_, coord_core::Error>(()) }).unwrap();
//! ```

pub mod cache;
mod capabilities;
pub mod config;
pub mod discovery;
mod error;
pub mod fence;
mod health;
pub mod lock;
pub mod memory;
mod metrics;
pub mod probe;
mod retry;
mod settings;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod url;

pub use cache::{CacheBackend, CacheBuilder, CacheCodec, CacheStats, MultiLevelCache};
pub use capabilities::Capabilities;
pub use error::{BoxError, Error, Result};
pub use fence::{FencedResource, FencedStore, MemoryFencedStore};
pub use health::{ComponentHealth, HealthRegistry, HealthReport, HealthSource, HealthStatus};
pub use lock::{
    AcquireOutcome, Election, ElectionBuilder, FencingToken, HoldMode, HolderInfo, LeaderInfo,
    LeaderTerm, Leadership, Lock, LockAdmin, LockBackend, LockBuilder, LockClient,
    LockClientBuilder, LockGrant, LockGuard, LockInfo, LockKind, LockOwner, LockStats,
    MultiLockBuilder, MultiLockGuard, QueueOutcome, ReleaseEvents, StoredKind, Wake,
};
pub use metrics::Metrics;
pub use retry::RetryPolicy;
pub use settings::{
    CacheSettings, DiscoverySettings, LockSettings, RetrySettings, SETTINGS_KEYS, Settings,
};

/// Re-exported so backend crates and users implement traits with the same version.
pub use async_trait::async_trait;
