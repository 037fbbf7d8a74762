//! Values of queued locks: fair locks, semaphores and read-write locks share
//! one backend primitive, a per-name queue of holders and waiters.
//!
//! Every entry of a queue has an owner, a [`HoldMode`] and a lease. Entries
//! are ordered by arrival. An entry is granted when [`HoldMode::admits`]
//! says so for the entries ahead of it; since the rule only gets easier
//! towards the head, the granted entries are always a prefix of the queue,
//! and grants happen in arrival order. An entry gets its fencing token when
//! it is granted, from the queue's own per-name fence (separate from the
//! lease lock of the same name), so tokens increase in grant order. (etcd
//! uses the entry's create revision, which increases in grant order as long
//! as every caller of one semaphore gives the same number of permits.)

use std::time::Duration;

use crate::error::{Error, Result};
use crate::lock::types::{FencingToken, LockGrant};

/// How a queued hold shares its lock with the holds ahead of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldMode {
    /// Alone: a fair lock, or the writer of a read-write lock.
    Exclusive,
    /// Together with other shared holds, at most `limit` in all: a semaphore
    /// permit (`limit` = the number of permits) or a reader
    /// ([`HoldMode::READ`]).
    Shared {
        /// The most holders at once, this one included (at least 1).
        limit: u32,
    },
}

impl HoldMode {
    /// A reader of a read-write lock: shared without limit.
    pub const READ: HoldMode = HoldMode::Shared { limit: u32::MAX };

    /// Whether an entry of this mode is granted, given the modes of all the
    /// entries ahead of it in the queue (granted or waiting), head first.
    pub fn admits<'a>(self, ahead: impl IntoIterator<Item = &'a HoldMode>) -> bool {
        match self {
            HoldMode::Exclusive => ahead.into_iter().next().is_none(),
            HoldMode::Shared { limit } => {
                let mut count: u64 = 0;
                for mode in ahead {
                    if *mode == HoldMode::Exclusive {
                        return false;
                    }
                    count += 1;
                }
                count < u64::from(limit)
            }
        }
    }

    /// The stored form: `x` for exclusive, `s<limit>` for shared.
    pub fn encode(self) -> String {
        match self {
            HoldMode::Exclusive => "x".to_owned(),
            HoldMode::Shared { limit } => format!("s{limit}"),
        }
    }

    /// Parses [`HoldMode::encode`]'s form; a corrupted value is a codec error.
    pub fn decode(stored: &str) -> Result<HoldMode> {
        let bad = || {
            Error::codec(
                format!("stored hold mode {stored:?} is not x or s<limit>"),
                None,
            )
        };
        match stored.as_bytes().first() {
            Some(b'x') if stored.len() == 1 => Ok(HoldMode::Exclusive),
            Some(b's') => match stored[1..].parse::<u32>() {
                Ok(limit) if limit >= 1 && !stored[1..].starts_with('+') => {
                    Ok(HoldMode::Shared { limit })
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// The answer to one [`enqueue`](crate::lock::LockBackend::enqueue) call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOutcome {
    /// The caller's entry is granted: it holds the lock (or a permit) now.
    Granted(LockGrant),
    /// The caller's entry waits in the queue.
    Queued {
        /// How many entries are ahead of it.
        ahead: u32,
        /// When the backend knows: how long until the first lease ahead of
        /// it ends (a waiter retries no later than that, as its holder may
        /// have died).
        retry_after: Option<Duration>,
        /// When the backend announces grants on its release events
        /// ([`Wake::Granted`](crate::lock::Wake::Granted)): the last token
        /// the queue had handed out when it answered (0 before the first).
        /// A grant of this entry made later has a higher token, so an
        /// announcement with a token no higher is of an earlier entry.
        /// `None` for a backend that makes no such announcements. A backend
        /// that reports it also lets a handle that waited listen before its
        /// next first `enqueue` (its events do not need the entry to exist).
        fence: Option<FencingToken>,
    },
}

/// Which primitive a listed lock is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredKind {
    /// A lease lock (plain, reentrant, Redlock, leader election).
    Lease,
    /// A queue (fair lock, semaphore, read-write lock).
    Queue,
}

impl StoredKind {
    /// `lease` or `queue`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredKind::Lease => "lease",
            StoredKind::Queue => "queue",
        }
    }
}

/// One holder (or waiter) of a listed lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderInfo {
    /// The stored owner, `client_id:owner`.
    pub owner: String,
    /// The fencing token of its grant; `None` for a waiter.
    pub token: Option<crate::lock::FencingToken>,
    /// Its mode (always [`HoldMode::Exclusive`] for lease locks).
    pub mode: HoldMode,
    /// How long its lease still runs, when the backend can tell.
    pub ttl_remaining: Option<Duration>,
    /// The value the holder proclaimed after its grant
    /// ([`Leadership::proclaim`](crate::lock::Leadership::proclaim)), if any.
    pub value: Option<String>,
}

/// One lock as [`list`](crate::lock::LockBackend::list) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The lock's name as the user gave it.
    pub name: String,
    /// How it is stored.
    pub kind: StoredKind,
    /// Its holders, oldest grant first (one for a lease lock).
    pub holders: Vec<HolderInfo>,
    /// Entries waiting behind the holders, in queue order (queued kinds; a
    /// lease lock's waiters are not stored and are not listed).
    pub waiters: Vec<HolderInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_needs_an_empty_queue_ahead() {
        assert!(HoldMode::Exclusive.admits(&[]));
        assert!(!HoldMode::Exclusive.admits(&[HoldMode::READ]));
    }

    #[test]
    fn shared_counts_and_stops_at_an_exclusive_entry() {
        let s2 = HoldMode::Shared { limit: 2 };
        assert!(s2.admits(&[]));
        assert!(s2.admits(&[s2]));
        assert!(!s2.admits(&[s2, s2]));
        assert!(HoldMode::READ.admits(&[HoldMode::READ; 100]));
        assert!(!HoldMode::READ.admits(&[HoldMode::READ, HoldMode::Exclusive]));
    }

    #[test]
    fn modes_round_trip_and_reject_corruption() {
        for m in [
            HoldMode::Exclusive,
            HoldMode::READ,
            HoldMode::Shared { limit: 3 },
        ] {
            assert_eq!(HoldMode::decode(&m.encode()).unwrap(), m);
        }
        for bad in ["", "y", "s", "s0", "s-1", "s+3", "xx", "s99999999999"] {
            assert!(
                matches!(HoldMode::decode(bad), Err(Error::Codec { .. })),
                "{bad}"
            );
        }
    }
}
