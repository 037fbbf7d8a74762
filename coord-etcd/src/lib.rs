//! # coord-etcd
//!
//! The etcd backend of [coord](https://docs.rs/coord): lease locks built on
//! etcd's transactions, revisions, leases and watches.
//!
//! * The holder of a lock is a key of its own,
//!   `{namespace}/lock/{name}\0{client_id}:{owner}` (the lock's prefix, a
//!   NUL byte, then the owner). Acquiring is one transaction that creates
//!   it only when no key starts with the lock's prefix (a compare over the
//!   key range, etcd ≥ 3.3); lock names never contain NUL, so the locks `a`
//!   and `a/b` never see each other's keys. The **fencing token** is the
//!   key's create revision, so tokens increase across holders, clients and
//!   server restarts. Retrying with the same owner is granted the same token.
//! * Releasing is a **plain delete** of the owner's key: only that owner
//!   ever writes it, so the delete is owner-checked by construction
//!   (nothing deleted means [`Error::NotHeld`]). Renewing checks that the
//!   key still exists.
//! * Locks are attached to **leases shared per client and TTL bucket** (like
//!   a session of etcd's `concurrency` package). The lock watchdog's renewals
//!   keep them alive; a client that stops renewing loses its locks after
//!   their TTL, and etcd deletes them. A grant's TTL (what the guard counts
//!   as valid) is 5/6 of the lease's at most, so it never outlasts the
//!   lease and renewals of several locks can share one keep-alive.
//! * Waiters are woken by a **watch** on the lock's prefix (releases,
//!   force-releases and expiries).
//! * Cost: an uncontended acquire + release is two round trips, one
//!   transaction and one plain delete: the same requests as etcd's native
//!   `lock()`/`unlock()` (whose key is also unique to the holder). On etcd
//!   3.4 a write transaction costs the server clearly more than a plain put
//!   or delete, so a release that needed a transaction (compare the owner,
//!   then delete) would make a lock cycle slower than a native one under
//!   load; this layout avoids that.
//! * The price of the layout: each distinct owner creates its own key, and
//!   etcd keeps deleted keys in its index until the next **compaction**; the
//!   acquire's compare over the lock's key range visits them. `LockClient`
//!   reuses an owner once its hold has surely ended, so a client writes at
//!   most as many keys per lock as it holds or waits for at once, and a hot
//!   lock does not slow down (measured flat over 8,000 cycles). Callers of
//!   the backend directly with a fresh owner per acquisition do pay: about
//!   20 µs of server time per 1,000 acquisitions since the last compaction.
//!   Run etcd with compaction anyway (for instance
//!   `--auto-compaction-mode=periodic --auto-compaction-retention=5m`), as
//!   any etcd that takes writes should.
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
mod cache;
mod config;
mod config_center;
mod discovery;
mod error;
mod lease;
mod lock;
mod members;
mod raft_term;
mod server_version;
#[cfg(feature = "testkit")]
pub mod testkit;
mod watch;

pub use backend::EtcdBackend;
pub use config::{DEFAULT_PORT, EtcdConfig};
pub use lease::PooledLease;
pub use lock::fenced::EtcdFencedStore;
pub use server_version::EtcdVersion;

/// Re-exported so users can run their own requests on [`EtcdBackend::client`]
/// with the same version.
pub use etcd_client;

/// Re-exported core types, so users of this crate alone need not name coord-core.
pub use coord_core::{
    Capabilities, ComponentHealth, Error, FencingToken, LockBackend, LockClient, LockGuard,
    LockOwner, Result, Settings,
};
