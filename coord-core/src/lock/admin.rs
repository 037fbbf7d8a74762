//! Lock administration: what is held under a prefix, force-release, and
//! this client's usage statistics.

use crate::error::Result;
use crate::lock::client::LockClient;
use crate::lock::queue::{LockInfo, StoredKind};
use crate::lock::stats::LockStats;

/// Administration of the locks of one backend; from [`LockClient::admin`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::{LockClient, memory::MemoryBackend};
///
/// let client = LockClient::new(Arc::new(MemoryBackend::new()));
/// let guard = client.lock("orders/42").build().acquire().await?;
/// let admin = client.admin();
/// let locks = admin.list("orders/").await?;
/// assert_eq!(locks[0].holders[0].token, Some(guard.fencing_token()));
/// assert!(admin.force_release("orders/42").await?);
/// assert!(guard.release().await.is_err(), "no longer held");
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct LockAdmin {
    client: LockClient,
}

impl LockAdmin {
    pub(crate) fn new(client: LockClient) -> Self {
        LockAdmin { client }
    }

    /// Every lock whose name starts with `prefix` (all kinds), with its
    /// holders (owner, fencing token, remaining TTL) and, for queued kinds,
    /// its waiters; sorted by name.
    pub async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let mut locks = self.client.backend().list(prefix).await?;
        locks.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(kind_order(a.kind).cmp(&kind_order(b.kind)))
        });
        Ok(locks)
    }

    /// Removes the lease lock `name` (plain, reentrant, election) whoever
    /// holds it. The holder's guard becomes lost at its next renewal, and
    /// the next grant's fencing token is higher, so a fenced resource refuses
    /// the old holder's writes from then on. Returns whether it was held.
    pub async fn force_release(&self, name: &str) -> Result<bool> {
        crate::lock::validate_lock_request(name, std::time::Duration::from_secs(1))?;
        self.client.backend().force_release(name).await
    }

    /// Removes every granted hold of the queued lock `name` (fair lock,
    /// semaphore, read-write lock); its waiters are granted next, with
    /// higher tokens. Returns how many holds were removed.
    pub async fn force_release_queued(&self, name: &str) -> Result<usize> {
        crate::lock::validate_lock_request(name, std::time::Duration::from_secs(1))?;
        self.client.backend().force_release_queued(name).await
    }

    /// This client's statistics of lock `name`.
    pub fn stats(&self, name: &str) -> Option<LockStats> {
        self.client.lock_stats(name)
    }

    /// This client's statistics of every lock it took.
    pub fn all_stats(&self) -> Vec<(String, LockStats)> {
        self.client.all_lock_stats()
    }
}

fn kind_order(kind: StoredKind) -> u8 {
    match kind {
        StoredKind::Lease => 0,
        StoredKind::Queue => 1,
    }
}
