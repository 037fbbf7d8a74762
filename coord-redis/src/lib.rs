//! # coord-redis
//!
//! The Redis backend of [coord](https://docs.rs/coord): lease locks with
//! fencing tokens on one server (`redis://`, `rediss://`), a Redis Cluster
//! (`redis+cluster://`), or the master behind Redis Sentinel
//! (`redis+sentinel://s1:26379,s2:26379/mymaster`, followed through
//! failovers; see [`sentinel`] for the URL, how a failover is followed and
//! what it does to locks). Every operation is one `EVALSHA` of a Lua script,
//! and on a standalone server concurrent acquisitions and releases share one
//! script call; waiters are woken through a dedicated pub/sub
//! connection. Needs Redis 7.0 or later.
//!
//! Most users reach it through the `coord` facade (`Coord::connect("redis://…")`);
//! use it directly with coord-core's [`LockClient`](coord_core::LockClient):
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use coord_core::{LockClient, Settings};
//! use coord_redis::RedisBackend;
//!
//! # async fn run() -> coord_core::Result<()> {
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379", &Settings::default()).await?;
//! let client = LockClient::new(Arc::new(backend));
//! let lock = client.lock("orders/42").ttl(Duration::from_secs(10)).build();
//! let guard = lock.acquire().await?;
//! println!("fencing token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Features: `tls` (`rediss://` via rustls), `testkit` (the [`RedisServer`]
//! and `RedisSentinel` fixtures and the conformance harness, in `testkit`).
//!
//! [`RedisServer`]: https://docs.rs/coord-redis/latest/coord_redis/testkit/struct.RedisServer.html

mod backend;
mod cache;
mod config;
mod config_center;
mod connection;
mod discovery;
mod error;
mod lock;
mod pubsub;
pub mod sentinel;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::RedisBackend;
pub use config::{DEFAULT_PORT, RedisConfig, RedisMode, RedisNode};
pub use lock::fenced::RedisFencedStore;
pub use lock::redlock::{RedlockBackend, RedlockConfig};
pub use sentinel::{DEFAULT_MASTER_CHECK, DEFAULT_SENTINEL_PORT, SentinelConfig};

/// The `redis` crate this backend is built on, so users name the same version.
pub use redis;
