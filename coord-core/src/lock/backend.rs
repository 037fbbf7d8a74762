//! The trait every lock backend implements.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::health::ComponentHealth;
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

    /// One round trip to the backend, timed.
    async fn health(&self) -> ComponentHealth;

    /// Releases what the backend holds for this client (leases, connections).
    async fn close(&self) {}
}

/// A stream of "this lock may be free now" signals from a backend.
pub struct ReleaseEvents {
    inner: Pin<Box<dyn Stream<Item = ()> + Send>>,
}

impl ReleaseEvents {
    /// Wraps a backend's stream of release signals.
    pub fn new(stream: impl Stream<Item = ()> + Send + 'static) -> Self {
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
