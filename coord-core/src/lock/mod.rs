//! Distributed locks: the backend trait, the shared client, guards and the watchdog.

mod backend;
mod client;
mod guard;
mod handle;
mod queue;
mod renewal;
mod types;

pub use backend::{LockBackend, ReleaseEvents};
pub use client::{LockClient, LockClientBuilder};
pub use guard::LockGuard;
pub use handle::{Lock, LockBuilder};
pub use queue::{HoldMode, HolderInfo, LockInfo, QueueOutcome, StoredKind};
pub use types::{
    AcquireOutcome, FencingToken, LockGrant, LockOwner, MAX_LOCK_NAME_LEN, validate_lock_request,
};
