//! The registry's leases: one per client and TTL bucket, in a
//! [`LeasePool`](crate::lease::LeasePool) of their own, kept alive by the
//! registrations' renewals.
//!
//! A keep-alive is sent only when the last one is more than a third of the
//! lease's TTL old: registrations renew every third of their TTL, so one of
//! a client's N registrations sends it and the others find it fresh. The
//! lease then never has less than a third of its TTL left at a renewal.
//!
//! Unlike a lock's lease, a registry lease whose guaranteed life ran out
//! (etcd was unreachable for longer than its TTL) is kept if etcd still
//! knows it (a restarted etcd restores leases with a fresh TTL): its
//! instances survived, and revoking it would make them flap.

use std::sync::Arc;

use coord_core::Result;
use tokio::time::Instant;

use crate::backend::EtcdBackend;
use crate::lease::{KeepAlive, Lease};

/// Until when `lease` must surely live for no keep-alive to be due now.
pub(super) fn needed_until(lease: &Lease) -> Instant {
    Instant::now() + lease.ttl * 2 / 3
}

impl EtcdBackend {
    /// The lease of `bucket` to attach a registration to: the pool's, kept
    /// alive first if a keep-alive is due, or a new one when there is none
    /// or etcd no longer knows it.
    pub(super) async fn registry_lease(&self, bucket: u64) -> Result<Arc<Lease>> {
        let pool = &self.inner.registry_leases;
        if let Some(lease) = pool.get(bucket) {
            match pool.keep_alive(&lease, needed_until(&lease)).await? {
                KeepAlive::Alive => return Ok(lease),
                KeepAlive::Gone => {
                    tracing::debug!(
                        lease = lease.id,
                        "registry lease is gone; granting a new one"
                    );
                    pool.discard(&lease);
                }
            }
        }
        pool.grant(bucket).await
    }
}
