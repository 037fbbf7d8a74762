//! Multi-lock: a set of locks taken all or nothing (Redisson's `MultiLock`,
//! Curator's `InterProcessMultiLock`).
//!
//! The names are taken one after the other in one order (sorted, duplicates
//! dropped), so two multi-locks over overlapping sets never deadlock: both
//! take their common names in the same order. One deadline covers the whole
//! acquisition; when it passes, or any lock fails, the locks already taken
//! are released and nothing stays held.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::lock::client::LockClient;
use crate::lock::guard::LockGuard;
use crate::lock::types::FencingToken;

/// Options of a multi-lock; start from [`LockClient::multi_lock`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MultiLockBuilder {
    client: LockClient,
    names: BTreeSet<String>,
    ttl: Option<Duration>,
    wait_timeout: Option<Duration>,
}

impl MultiLockBuilder {
    pub(crate) fn new(client: LockClient, names: BTreeSet<String>) -> Self {
        let wait_timeout = client.shared.defaults.wait_timeout;
        MultiLockBuilder {
            client,
            names,
            ttl: None,
            wait_timeout,
        }
    }

    /// The lease TTL of every lock of the set (default: the client's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long [`acquire`](Self::acquire) may take in all, for the whole
    /// set; [`Error::Timeout`] after it (default: the client's wait timeout).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// The names, in the order they are taken.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Takes every lock of the set, in name order, waiting while any is
    /// held, within one deadline. All or nothing: on a timeout or an error
    /// the locks taken so far are released before the error is returned;
    /// so they are when one taken early was lost while a later one was
    /// awaited ([`Error::LockLost`]).
    /// An empty set is [`Error::InvalidArgument`].
    pub async fn acquire(&self) -> Result<MultiLockGuard> {
        if self.names.is_empty() {
            return Err(Error::invalid("a multi-lock needs at least one lock name"));
        }
        let started = Instant::now();
        let deadline = self.wait_timeout.map(|t| started + t);
        let mut guards = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let mut lock = self.client.lock(name.clone());
            if let Some(ttl) = self.ttl {
                lock = lock.ttl(ttl);
            }
            lock = match deadline {
                Some(d) => lock.wait_timeout(d.saturating_duration_since(Instant::now())),
                None => lock.wait_forever(),
            };
            match lock.build().acquire().await {
                Ok(guard) => guards.push(guard),
                Err(e) => {
                    release_all(guards).await;
                    return Err(match e {
                        Error::Timeout(m) => Error::Timeout(format!(
                            "multi-lock of {} locks: {m} (after {:?} in all; nothing stays held)",
                            self.names.len(),
                            started.elapsed()
                        )),
                        other => other,
                    });
                }
            }
        }
        // A lock taken early may have been lost while a later one was
        // awaited (its lease ran out, a server restarted): not all of them.
        if let Some(lost) = guards.iter().find(|g| !g.is_held()) {
            let e = Error::LockLost(format!(
                "multi-lock of {} locks: {:?} was lost while the others were being acquired \
                 (after {:?}; nothing stays held)",
                self.names.len(),
                lost.name(),
                started.elapsed()
            ));
            release_all(guards).await;
            return Err(e);
        }
        Ok(MultiLockGuard { guards })
    }

    /// One attempt at every lock of the set, in name order: the guard if all
    /// were free, `None` (with nothing held) if any was taken.
    pub async fn try_acquire(&self) -> Result<Option<MultiLockGuard>> {
        if self.names.is_empty() {
            return Err(Error::invalid("a multi-lock needs at least one lock name"));
        }
        let mut guards = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let mut lock = self.client.lock(name.clone());
            if let Some(ttl) = self.ttl {
                lock = lock.ttl(ttl);
            }
            match lock.build().try_acquire().await {
                Ok(Some(guard)) => guards.push(guard),
                Ok(None) => {
                    release_all(guards).await;
                    return Ok(None);
                }
                Err(e) => {
                    release_all(guards).await;
                    return Err(e);
                }
            }
        }
        Ok(Some(MultiLockGuard { guards }))
    }
}

/// Releases `guards` in the reverse order of their acquisition; a failed
/// release is left to the lease (the guard's drop releases in the background).
async fn release_all(guards: Vec<LockGuard>) {
    for guard in guards.into_iter().rev() {
        if let Err(e) = guard.release().await {
            tracing::debug!(error = %e, "a multi-lock member could not be released; it expires with its lease");
        }
    }
}

/// Every lock of a multi-lock, held. Dropping it releases them all in the
/// background; [`release`](Self::release) does it now.
#[derive(Debug)]
#[must_use = "dropping the guard releases every lock"]
pub struct MultiLockGuard {
    guards: Vec<LockGuard>,
}

impl MultiLockGuard {
    /// Each lock's name and fencing token, in name order.
    pub fn tokens(&self) -> Vec<(&str, FencingToken)> {
        self.guards
            .iter()
            .map(|g| (g.name(), g.fencing_token()))
            .collect()
    }

    /// The fencing token of lock `name`, if it is one of the set.
    pub fn token(&self, name: &str) -> Option<FencingToken> {
        self.guards
            .iter()
            .find(|g| g.name() == name)
            .map(LockGuard::fencing_token)
    }

    /// The guards, in name order.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// Whether every lock is still held.
    pub fn is_held(&self) -> bool {
        self.guards.iter().all(LockGuard::is_held)
    }

    /// Resolves when any lock of the set is lost, with that loss.
    pub async fn lost(&self) -> Error {
        let losses = self.guards.iter().map(|g| Box::pin(g.lost()));
        futures::future::select_all(losses).await.0
    }

    /// Releases every lock, in the reverse order of acquisition. Returns
    /// the first error (each lock is still attempted).
    pub async fn release(self) -> Result<()> {
        let mut first = None;
        for guard in self.guards.into_iter().rev() {
            if let Err(e) = guard.release().await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl LockClient {
    /// A multi-lock over `names`: every lock taken all or nothing, in one
    /// deadlock-free order (sorted by name), with one deadline, and one
    /// guard that releases them all.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use coord_core::{LockClient, memory::MemoryBackend};
    ///
    /// let client = LockClient::new(Arc::new(MemoryBackend::new()));
    /// let transfer = client
    ///     .multi_lock(["account/42", "account/7"])
    ///     .wait_timeout(Duration::from_secs(5))
    ///     .acquire()
    ///     .await?;
    /// for (name, token) in transfer.tokens() {
    ///     println!("{name}: token {token}");
    /// }
    /// transfer.release().await?;
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub fn multi_lock<I, S>(&self, names: I) -> MultiLockBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MultiLockBuilder::new(self.clone(), names.into_iter().map(Into::into).collect())
    }
}
