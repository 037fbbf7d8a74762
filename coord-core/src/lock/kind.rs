//! The kinds of lock a [`LockBuilder`](crate::lock::LockBuilder) builds.

use std::fmt;

use crate::error::{Error, Result};
use crate::lock::queue::HoldMode;

/// What a lock is. Every kind hands out fencing tokens, renews with the
/// watchdog and signals loss the same way; they differ in who may hold at
/// once and in what order waiters are granted.
///
/// The kind is part of a lock's identity on the backend: a fair lock and a
/// lease lock of the same name are two different locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LockKind {
    /// One holder; waiters race when it is released (the fastest kind).
    #[default]
    Lease,
    /// A lease lock held by one [`LockOwner`](crate::lock::LockOwner) any
    /// number of times at once; only the last release frees it. The owner is
    /// the one given with [`owner`](crate::lock::LockBuilder::owner), or else
    /// the current tokio task.
    Reentrant,
    /// One holder; waiters are granted strictly in request order.
    Fair,
    /// Up to `n` holders at once (each permit with its own fencing token),
    /// granted in request order.
    Semaphore(u32),
    /// A reader of a read-write lock: many readers at once, no writer.
    Read,
    /// The writer of a read-write lock: alone. Readers that ask after a
    /// waiting writer queue behind it, so a stream of readers cannot starve it.
    Write,
}

impl LockKind {
    /// The queue mode of a queued kind; `None` for lease kinds.
    pub fn hold_mode(self) -> Option<HoldMode> {
        match self {
            LockKind::Lease | LockKind::Reentrant => None,
            LockKind::Fair | LockKind::Write => Some(HoldMode::Exclusive),
            LockKind::Semaphore(n) => Some(HoldMode::Shared { limit: n }),
            LockKind::Read => Some(HoldMode::READ),
        }
    }

    /// Whether the kind is stored as a queue (fair, semaphore, read-write).
    pub fn is_queued(self) -> bool {
        self.hold_mode().is_some()
    }

    /// A short label: `lease`, `reentrant`, `fair`, `semaphore`, `read`, `write`.
    pub fn label(self) -> &'static str {
        match self {
            LockKind::Lease => "lease",
            LockKind::Reentrant => "reentrant",
            LockKind::Fair => "fair",
            LockKind::Semaphore(_) => "semaphore",
            LockKind::Read => "read",
            LockKind::Write => "write",
        }
    }

    pub(crate) fn validate(self) -> Result<()> {
        match self {
            LockKind::Semaphore(0) => {
                Err(Error::invalid("a semaphore needs at least 1 permit; got 0"))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKind::Semaphore(n) => write!(f, "semaphore({n})"),
            other => f.write_str(other.label()),
        }
    }
}
