//! # coord-etcd
//!
//! The etcd backend of [coord](https://docs.rs/coord): lease locks built on
//! etcd's transactions, revisions, leases and watches.
//!
//! * A lock is the key `{namespace}/lock/{name}`, created in one transaction
//!   only when absent; its **fencing token** is the key's create revision, so
//!   tokens increase across holders, clients and server restarts.
//! * Locks are attached to **leases shared per client and TTL bucket** (like
//!   a session of etcd's `concurrency` package). The lock watchdog's renewals
//!   keep them alive; a client that stops renewing loses its locks after
//!   their TTL, and etcd deletes them. A grant's TTL (what the guard counts
//!   as valid) is 5/6 of the lease's at most, so it never outlasts the
//!   lease and renewals of several locks can share one keep-alive.
//! * Waiters are woken by a **watch** on the key (releases and expiries).
//!
//! * Cost: an uncontended acquire + release is two round trips, and both
//!   are write transactions (a conditional create, then a delete that checks
//!   the owner). etcd's native `lock()`/`unlock()` needs only one
//!   transaction and one plain delete, because its key is unique per lease.
//!   On etcd 3.4 a write transaction costs the server clearly more than a
//!   plain put or delete, and more the busier the server is (3.4 copies its
//!   backend read buffer for each one; etcd 3.5 added a mode that avoids
//!   the copy and turns it on by default). So with many concurrent lockers
//!   on 3.4, a lock cycle here is slower than a native one, just as slow as
//!   the same two transactions sent by hand. Run one at a time, both take
//!   the same time.
//!
//! Most users reach this through the `coord` facade (`Coord::connect("etcd://…")`).
//! Used directly:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use coord_etcd::{EtcdBackend, LockClient, Settings};
//!
//! # async fn run() -> coord_etcd::Result<()> {
//! let backend = EtcdBackend::connect("etcd://127.0.0.1:2379", &Settings::default()).await?;
//! let client = LockClient::new(Arc::new(backend));
//! let guard = client.lock("orders/42").ttl(Duration::from_secs(10)).build().acquire().await?;
//! println!("fencing token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Features: `tls` (`etcds://` URLs), `testkit` (an [`EtcdServer`](testkit::EtcdServer)
//! fixture and the conformance harness).

mod backend;
mod config;
mod error;
mod lease;
mod lock;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use backend::EtcdBackend;
pub use config::{DEFAULT_PORT, EtcdConfig};
pub use lease::PooledLease;

/// Re-exported so users can run their own requests on [`EtcdBackend::client`]
/// with the same version.
pub use etcd_client;

/// Re-exported core types, so users of this crate alone need not name coord-core.
pub use coord_core::{
    Capabilities, ComponentHealth, Error, FencingToken, LockBackend, LockClient, LockGuard,
    LockOwner, Result, Settings,
};
