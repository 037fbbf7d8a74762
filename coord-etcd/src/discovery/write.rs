//! Registering, renewing and deregistering one instance.
//!
//! * register: one put of the record on the bucket's lease (plus a grant or
//!   a keep-alive when one is due). The newest registration of an id wins.
//! * renew: the keep-alive of the bucket's lease (when due) and a read of
//!   the key, at once: `Missing` when the key is gone, on another lease or
//!   its lease is gone; `Replaced` when another owner's record is there.
//! * deregister: a read of the key, then a delete only if it still holds
//!   the caller's record (compared on its mod revision); a lost race reads
//!   the key again in the same transaction.
//! * abandon: the entry moved, by a put guarded by its mod revision, to a
//!   lease of its own that nobody keeps alive (the bucket's lease lives on
//!   for the client's other registrations).

use std::time::Duration;

use coord_core::discovery::{RenewOutcome, ServiceInstance, decode_record, encode_record};
use coord_core::{Error, Result};
use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::leases::needed_until;
use crate::backend::EtcdBackend;
use crate::error::{call, deadline, is_lease_not_found, map};
use crate::lease::{KeepAlive, bucket};

/// How many times deregister compares and deletes before it gives up: each
/// lost race is another owner's write to the same id in between.
const DELETE_TRIES: usize = 5;

/// The owner of a stored record; `None` when it is not a record.
fn owner_of(kv: &KeyValue) -> Option<String> {
    let at = String::from_utf8_lossy(kv.key());
    match decode_record(kv.value(), &at) {
        Ok((owner, _)) => Some(owner),
        Err(e) => {
            tracing::warn!(error = %e, "found a corrupted registry entry");
            None
        }
    }
}

impl EtcdBackend {
    pub(super) async fn registry_put(
        &self,
        instance: &ServiceInstance,
        owner: &str,
        ttl: Duration,
    ) -> Result<()> {
        let key = self.instance_key(&instance.service, &instance.id);
        let value = encode_record(instance, owner)?;
        let pool = &self.inner.registry_leases;
        let mut kv = self.inner.client.kv_client();
        // A lease etcd lost (revoked, expired while we could not reach
        // it, gone with the cluster's data) is replaced once.
        for attempt in 0..2 {
            let lease = self.registry_lease(bucket(ttl)).await?;
            let options = PutOptions::new().with_lease(lease.id);
            let put = kv.put(key.clone(), value.clone(), Some(options));
            match deadline("register an instance", self.inner.timeout, put).await? {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 0 && is_lease_not_found(&e) => pool.discard(&lease),
                Err(e) => return Err(map("register an instance", e)),
            }
        }
        Err(Error::unavailable(
            "register an instance: etcd lost the new lease at once",
            None,
        ))
    }

    pub(super) async fn registry_renew(
        &self,
        service: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<RenewOutcome> {
        let key = self.instance_key(service, id);
        let pool = &self.inner.registry_leases;
        let lease = pool.get(bucket(ttl));
        let keep_alive = async {
            match &lease {
                Some(lease) => pool.keep_alive(lease, needed_until(lease)).await.map(Some),
                None => Ok(None),
            }
        };
        let mut kv = self.inner.client.kv_client();
        let read = call(
            "renew a registration",
            self.inner.timeout,
            kv.get(key.as_str(), None),
        );
        let (alive, stored) = tokio::join!(keep_alive, read);
        if let (Some(lease), Ok(Some(KeepAlive::Gone))) = (&lease, &alive) {
            tracing::debug!(lease = lease.id, "registry lease has expired");
            pool.discard(lease);
        }
        let stored = stored?;
        let Some(entry) = stored.kvs().first() else {
            return Ok(RenewOutcome::Missing);
        };
        match owner_of(entry) {
            // Not a record: no registration holds the id; ours goes back.
            None => return Ok(RenewOutcome::Missing),
            Some(o) if o != owner => return Ok(RenewOutcome::Replaced),
            Some(_) => {}
        }
        match (lease, alive?) {
            (Some(lease), Some(KeepAlive::Alive)) if lease.id == entry.lease() => {
                Ok(RenewOutcome::Renewed)
            }
            // The lease is gone (the key goes with it), or the key sits on
            // a lease this client no longer keeps alive: register it again.
            _ => Ok(RenewOutcome::Missing),
        }
    }

    pub(super) async fn registry_abandon(
        &self,
        service: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<()> {
        const WHAT: &str = "abandon a registration";
        let key = self.instance_key(service, id);
        let timeout = self.inner.timeout;
        let Some(entry) = self.own_entry(WHAT, &key, owner).await? else {
            return Ok(());
        };
        let mut kv = self.inner.client.kv_client();
        let mut leases = self.inner.client.lease_client();
        let secs = i64::try_from(bucket(ttl)).unwrap_or(i64::MAX);
        let lease = call(WHAT, timeout, leases.grant(secs, None)).await?.id();
        let options = PutOptions::new().with_lease(lease);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                entry.mod_revision(),
            )])
            .and_then([TxnOp::put(key.as_str(), entry.value(), Some(options))]);
        let moved = call(WHAT, timeout, kv.txn(txn)).await?.succeeded();
        if !moved {
            // Written anew meanwhile (by its owner or another): not ours to
            // move. The unused lease goes. (After an error it stays: the
            // put may have landed, and the lease expires anyway.)
            if let Err(e) = call(WHAT, timeout, leases.revoke(lease)).await {
                tracing::debug!(lease, error = %e, "could not revoke an unused lease; it expires");
            }
        }
        Ok(())
    }

    /// The stored entry of `key` when it holds `owner`'s record; `None`
    /// when the key is absent or holds another owner's (or no) record.
    async fn own_entry(&self, what: &str, key: &str, owner: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.inner.client.kv_client();
        let stored = call(what, self.inner.timeout, kv.get(key, None))
            .await?
            .take_kvs()
            .into_iter()
            .next();
        Ok(stored.filter(|entry| owner_of(entry).as_deref() == Some(owner)))
    }

    pub(super) async fn registry_delete(
        &self,
        service: &str,
        id: &str,
        owner: &str,
    ) -> Result<bool> {
        const WHAT: &str = "deregister an instance";
        let key = self.instance_key(service, id);
        let mut kv = self.inner.client.kv_client();
        let mut stored = self.own_entry(WHAT, &key, owner).await?;
        for _ in 0..DELETE_TRIES {
            let Some(entry) = stored else {
                return Ok(false);
            };
            if owner_of(&entry).as_deref() != Some(owner) {
                return Ok(false);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    entry.mod_revision(),
                )])
                .and_then([TxnOp::delete(key.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = call(WHAT, self.inner.timeout, kv.txn(txn)).await?;
            if resp.succeeded() {
                return Ok(true);
            }
            stored = match resp.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(mut get)) => get.take_kvs().into_iter().next(),
                _ => None,
            };
        }
        Err(Error::backend(
            "etcd",
            format!(
                "deregister {service}/{id}: the entry changed {DELETE_TRIES} times while \
                 deregistering; try again"
            ),
            true,
            None,
        ))
    }
}
