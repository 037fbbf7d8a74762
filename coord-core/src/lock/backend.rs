//! The trait every lock backend implements.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

use crate::capabilities::Capabilities;
use crate::error::Error;
use crate::error::Result;
use crate::health::ComponentHealth;
use crate::lock::queue::{HoldMode, LockInfo, QueueOutcome};
use crate::lock::types::FencingToken;
use crate::lock::types::{AcquireOutcome, LockOwner};

/// The primitive operations of a lease lock on one backend. Each is one
/// round trip where the backend allows it. Waiting, the watchdog, retries,
/// metrics and validation are done once, in [`LockClient`](crate::lock::LockClient).
///
/// `name` is the lock's name as the user gave it (already validated); each
/// backend maps it to its own key layout under its namespace.
#[async_trait]
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// What this backend promises.
    fn capabilities(&self) -> &Capabilities;

    /// One acquisition attempt. Must be idempotent for the same `owner`: when
    /// `owner` already holds `name`, return `Granted` with the same token and
    /// extend the lease, so a retry after an ambiguous reply is safe.
    async fn try_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<AcquireOutcome>;

    /// Extends the lease of a lock `owner` holds to `ttl` from now.
    /// Returns [`Error::NotHeld`](crate::Error::NotHeld) when `owner` does not hold it.
    async fn renew(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()>;

    /// Releases a lock `owner` holds and wakes waiters.
    /// Returns [`Error::NotHeld`](crate::Error::NotHeld) when `owner` does not hold it.
    async fn release(&self, name: &str, owner: &LockOwner) -> Result<()>;

    /// [`try_acquire`](Self::try_acquire) answered at once, without a future,
    /// by a backend that never waits (in-process, like the memory backend).
    /// `None`, the default, means "await `try_acquire`". The client's hot
    /// path calls this first, so an in-process lock pays no boxed future,
    /// retry wrapper or timer. An answer here must be the one `try_acquire`
    /// would give. A [`LockClient`](crate::LockClient) that once gets `None`
    /// stops asking: a backend answers here always or never.
    ///
    /// `now` is the caller's reading of the clock, taken just before the
    /// call: the lease counts from it (the client counts the guard's
    /// validity from the same instant), so the backend reads no clock of
    /// its own.
    fn try_acquire_now(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
        now: Instant,
    ) -> Option<Result<AcquireOutcome>> {
        let _ = (name, owner, ttl, now);
        None
    }

    /// [`release`](Self::release) answered at once, like
    /// [`try_acquire_now`](Self::try_acquire_now), at the caller's `now`;
    /// `None` by default.
    fn release_now(&self, name: &str, owner: &LockOwner, now: Instant) -> Option<Result<()>> {
        let _ = (name, owner, now);
        None
    }

    /// Starts listening for releases (and expiries, where the backend sees
    /// them) of `name`. Called by a waiter after a failed attempt, before it
    /// retries, so no release between the two is missed.
    ///
    /// A backend may signal only the releases of holds during which some
    /// `try_acquire` was refused (Redis does, to spare a `PUBLISH` on every
    /// uncontended release); the subscribe-then-retry order above makes that
    /// enough for every waiter.
    async fn subscribe(&self, name: &str) -> Result<ReleaseEvents>;

    /// Removes the lock whoever holds it (administration, tests). Returns
    /// whether a lock was removed. The next grant's token is still higher.
    async fn force_release(&self, name: &str) -> Result<bool>;

    /// The current holder of the lease lock `name`, if any: owner, token
    /// and remaining TTL (leader election reads the leader through it).
    async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        let _ = name;
        Err(unsupported(self.capabilities().backend, "inspect"))
    }

    /// Every lock (lease and queued) whose name starts with `prefix`, with
    /// holders, tokens, remaining TTLs and (queued kinds) waiters.
    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let _ = prefix;
        Err(unsupported(self.capabilities().backend, "list"))
    }

    // ----- Queued locks (fair locks, semaphores, read-write locks) -----
    // See [`crate::lock::queue`] for the queue model and the grant rule.

    /// One step of a queued acquisition. Adds `owner` at the tail of the
    /// queue of `name` with `mode` and a lease of `ttl`, or, when `owner` is
    /// already queued, refreshes its entry's lease to `ttl` from now (so a
    /// retry after an ambiguous reply is safe, and a live waiter keeps its
    /// place by calling again within `ttl`). Entries whose lease ran out are
    /// purged first, so a dead waiter never blocks the ones behind it.
    /// Returns `Granted` (with the token given at grant time, the same one on
    /// every later call) when [`HoldMode::admits`] the entry.
    async fn enqueue(
        &self,
        name: &str,
        owner: &LockOwner,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<QueueOutcome> {
        let _ = (name, owner, mode, ttl);
        Err(unsupported(self.capabilities().backend, "queued locks"))
    }

    /// Extends the lease of `owner`'s granted entry to `ttl` from now.
    /// [`Error::NotHeld`] when the entry is gone or not granted.
    async fn renew_queued(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let _ = (name, owner, ttl);
        Err(unsupported(self.capabilities().backend, "queued locks"))
    }

    /// Removes `owner`'s entry, granted (a release) or waiting (a waiter
    /// giving up), and wakes the entries behind it. [`Error::NotHeld`] when
    /// there is no such entry.
    async fn dequeue(&self, name: &str, owner: &LockOwner) -> Result<()> {
        let _ = (name, owner);
        Err(unsupported(self.capabilities().backend, "queued locks"))
    }

    /// Starts listening for changes that may grant `owner`'s waiting entry
    /// (an entry ahead of it leaving). Called after a `Queued` answer, before
    /// the next `enqueue`, so nothing between the two is missed (or, on a
    /// backend whose `Queued` answers report a fence, before the first
    /// `enqueue`, by a handle that had to wait last time). A
    /// backend should wake only the waiters a removal may grant (etcd: the
    /// entry's predecessor only). A backend whose removal grants the entries
    /// it lets in may announce each grant ([`Wake::Granted`], with
    /// [`ReleaseEvents::with_grants`]); it then reports its fence in every
    /// `Queued` answer ([`QueueOutcome::Queued`]'s `fence`), and the waiter
    /// holds without asking again.
    async fn subscribe_queue(&self, name: &str, owner: &LockOwner) -> Result<ReleaseEvents> {
        let _ = (name, owner);
        Err(unsupported(self.capabilities().backend, "queued locks"))
    }

    /// Removes every granted entry of the queue `name` (administration);
    /// waiters stay and are granted next, with higher tokens. Returns how
    /// many entries were removed.
    async fn force_release_queued(&self, name: &str) -> Result<usize> {
        let _ = name;
        Err(unsupported(self.capabilities().backend, "queued locks"))
    }

    /// One round trip to the backend, timed.
    async fn health(&self) -> ComponentHealth;

    /// Releases what the backend holds for this client (leases, connections).
    async fn close(&self) {}

    /// Sets the value `owner`, the holder of lease lock `name`, proclaims
    /// (shown as [`HolderInfo::value`](crate::lock::HolderInfo::value) by
    /// [`inspect`](Self::inspect)), without a new grant: same token, same
    /// lease; observers of changes are signalled. [`Error::NotHeld`] when
    /// `owner` does not hold it. Default: unsupported.
    async fn proclaim(&self, name: &str, owner: &LockOwner, value: &str) -> Result<()> {
        let _ = (name, owner, value);
        Err(unsupported(self.capabilities().backend, "proclaim"))
    }

    /// Like [`subscribe`](Self::subscribe), but signals every change of
    /// holder of the lease lock `name`: grants as well as releases and
    /// expiries. [`Election::observe`](crate::lock::Election::observe)
    /// listens with it, so that a new leader is seen at once, however short
    /// its term. Backends must signal grants at least for names that start
    /// with [`ELECTION_PREFIX`](crate::lock::ELECTION_PREFIX). Default:
    /// `subscribe` (releases only; observers then see a new leader at the
    /// next poll).
    async fn subscribe_changes(&self, name: &str) -> Result<ReleaseEvents> {
        self.subscribe(name).await
    }

    /// Tells the backend that the client signalled `owner`'s hold of `name`
    /// lost because its lease ran out unrenewed (renewals failed, or could
    /// not be sent in time), so that nothing keeps that hold alive: a
    /// backend that shares a lease among holds (etcd) drops and revokes it
    /// rather than renew it again when the server comes back, as the other
    /// holds on it ran out too. Not called for a refused renewal, a release
    /// or a shutdown; must not block. Default: nothing.
    fn hold_lost(&self, name: &str, owner: &LockOwner) {
        let _ = (name, owner);
    }
}

fn unsupported(backend: &str, what: &str) -> Error {
    Error::Unsupported(format!("the {backend} backend does not implement {what}"))
}

/// What woke a waiter listening to a lock's [`ReleaseEvents`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wake {
    /// The lock may be free now (or the backend cannot say who goes next):
    /// ask again.
    Changed,
    /// The release that let this waiter's queue entry in also granted it,
    /// with this token (a backend that hands the lock over in the same
    /// step, sparing the waiter a round trip). The waiter takes it only when
    /// the token is higher than the [`QueueOutcome::Queued::fence`] of its
    /// last answer, which proves the grant is of its current entry, not an
    /// earlier one of the same owner.
    ///
    /// [`QueueOutcome::Queued::fence`]: crate::lock::QueueOutcome::Queued
    Granted(FencingToken),
}

/// A stream of "this lock may be free now" signals from a backend.
pub struct ReleaseEvents {
    inner: Pin<Box<dyn Stream<Item = Wake> + Send>>,
}

impl ReleaseEvents {
    /// Wraps a backend's stream of release signals.
    pub fn new(stream: impl Stream<Item = ()> + Send + 'static) -> Self {
        ReleaseEvents::with_grants(stream.map(|()| Wake::Changed))
    }

    /// Wraps a backend's stream of wake-ups that may carry grants
    /// ([`Wake::Granted`]).
    pub fn with_grants(stream: impl Stream<Item = Wake> + Send + 'static) -> Self {
        ReleaseEvents {
            inner: Box::pin(stream),
        }
    }

    /// A stream that never yields: waiters fall back to polling.
    pub fn never() -> Self {
        ReleaseEvents::new(futures::stream::pending())
    }

    /// Waits for the next signal. Returns `false` when the source has ended
    /// (connection lost); the waiter then subscribes again, or polls when
    /// the channel keeps ending at once.
    pub async fn next(&mut self) -> bool {
        self.inner.next().await.is_some()
    }

    /// Waits for the next signal, with the grant it carries; `None` when the
    /// source has ended (as [`next`](Self::next) returning `false`).
    pub async fn next_wake(&mut self) -> Option<Wake> {
        self.inner.next().await
    }
}

impl fmt::Debug for ReleaseEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReleaseEvents")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn _object_safe(_: Arc<dyn LockBackend>) {}
}
