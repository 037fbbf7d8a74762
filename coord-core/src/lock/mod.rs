//! Distributed locks: the backend trait, the shared client, guards and the watchdog.

mod admin;
mod backend;
mod client;
mod election;
mod guard;
mod handle;
mod kind;
mod leader_selector;
mod multi;
mod outage;
mod queue;
mod queued;
mod reentrant;
mod relisten;
mod renewal;
mod shards;
mod stats;
mod types;

pub use admin::LockAdmin;
pub use backend::{LockBackend, ReleaseEvents, Wake};
pub use client::{LockClient, LockClientBuilder};
pub use election::{ELECTION_PREFIX, Election, ElectionBuilder, LeaderInfo, Leadership};
pub use guard::LockGuard;
pub use handle::{Lock, LockBuilder};
pub use kind::LockKind;
pub use leader_selector::LeaderTerm;
pub use multi::{MultiLockBuilder, MultiLockGuard};
pub use queue::{HoldMode, HolderInfo, LockInfo, QueueOutcome, StoredKind};
pub use stats::{DurationHistogram, LockStats, MAX_TRACKED_LOCKS, OTHER_LOCKS};
pub use types::{
    AcquireOutcome, FencingToken, LockGrant, LockOwner, MAX_LOCK_NAME_LEN, MIN_TTL,
    validate_lock_request,
};

/// The largest block glibc's per-thread cache serves (bytes). A larger one
/// takes an arena lock, which a runtime's worker threads contend on (a
/// future boxed on one thread is often freed on another), so the futures
/// boxed on every lock call stay within it; the backends' tests check them.
#[doc(hidden)]
pub const SMALL_ALLOCATION: usize = 1032;
