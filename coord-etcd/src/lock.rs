//! Lease locks on etcd: one transaction per operation, fencing tokens from
//! create revisions, waiters woken by watches.

use std::time::Duration;

use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, Error, FencingToken, LockBackend, LockGrant,
    LockOwner, ReleaseEvents, Result, async_trait,
};
use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
    WatchFilterType, WatchOptions, WatchStream,
};
use tokio::time::Instant;

use crate::backend::EtcdBackend;
use crate::error::{call, deadline, is_lease_not_found, map};
use crate::lease::{KeepAlive, bucket};

#[async_trait]
impl LockBackend for EtcdBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    async fn try_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<AcquireOutcome> {
        let start = Instant::now();
        let key = self.lock_key(name);
        let bucket = bucket(ttl);
        let mut retried = false;
        loop {
            let lease = self
                .inner
                .leases
                .fresh(bucket, start, Duration::from_secs(bucket) * 2 / 3)
                .await?;
            let txn = acquire_txn(&key, owner.as_str(), lease.id);
            let mut kv = self.inner.client.kv_client();
            let resp = match deadline("acquire a lock", self.inner.timeout, kv.txn(txn)).await? {
                Ok(resp) => resp,
                Err(e) if is_lease_not_found(&e) && !retried => {
                    tracing::debug!(lease = lease.id, "etcd lease is gone; granting a new one");
                    self.inner.leases.discard(&lease);
                    retried = true;
                    continue;
                }
                Err(e) => return Err(map("acquire a lock", e)),
            };
            let Some(token) = granted_token(&resp)? else {
                return Ok(AcquireOutcome::Held { retry_after: None });
            };
            self.hold(&key, owner.as_str(), bucket);
            // Core counts the guard valid until (its instant before this call)
            // + grant.ttl: never past the lease, and with a margin of a sixth
            // of the lease so that renewals within that much of a keep-alive
            // another lock already sent need none of their own.
            let ttl = lease
                .ttl
                .min(lease.remaining(start))
                .saturating_sub(lease.ttl / 6);
            return Ok(AcquireOutcome::Granted(LockGrant { token, ttl }));
        }
    }

    async fn renew(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let key = self.lock_key(name);
        let bucket = self
            .held_bucket(&key, owner.as_str())
            .unwrap_or_else(|| bucket(ttl));
        let not_held = |why: &str| {
            self.forget(&key, Some(owner.as_str()));
            Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}: {why}"
            )))
        };
        let Some(lease) = self.inner.leases.get(bucket) else {
            return not_held("its lease is gone");
        };
        let pool = &self.inner.leases;
        // Core counts the guard valid until (its instant before this call) + ttl:
        // the lease must surely live that long. A keep-alive sent for another
        // lock in the last sixth of the lease guarantees it (grants leave that
        // margin); then none is sent.
        let needed_until = Instant::now() + ttl.min(lease.ttl);
        let (alive, owned) = tokio::join!(
            pool.keep_alive(&lease, needed_until),
            self.owned(&key, owner)
        );
        match (alive, owned) {
            (Ok(KeepAlive::Gone), _) => {
                pool.discard(&lease);
                not_held("its lease has expired")
            }
            (_, Ok(false)) => not_held("another owner holds it, or nobody"),
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(KeepAlive::Alive), Ok(true)) => Ok(()),
        }
    }

    async fn release(&self, name: &str, owner: &LockOwner) -> Result<()> {
        let key = self.lock_key(name);
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                owner.as_str(),
            )])
            .and_then([TxnOp::delete(key.clone(), None)]);
        let mut kv = self.inner.client.kv_client();
        let resp = call("release a lock", self.inner.timeout, kv.txn(txn)).await?;
        self.forget(&key, Some(owner.as_str()));
        if resp.succeeded() {
            Ok(())
        } else {
            Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}"
            )))
        }
    }

    async fn subscribe(&self, name: &str) -> Result<ReleaseEvents> {
        let key = self.lock_key(name);
        let mut watch = self.inner.client.watch_client();
        let created = async {
            let options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
            let mut stream = watch.watch(key, Some(options)).await?;
            // etcd-client returns before etcd confirms the watch: wait for
            // that, or a release right after this call could be missed.
            loop {
                match stream.message().await? {
                    Some(resp) if resp.canceled() => {
                        return Err(etcd_client::Error::WatchError(format!(
                            "etcd cancelled the watch: {}",
                            resp.cancel_reason()
                        )));
                    }
                    Some(resp) if resp.created() => return Ok(stream),
                    Some(_) => {}
                    None => {
                        return Err(etcd_client::Error::WatchError(
                            "the watch stream closed before etcd created the watch".into(),
                        ));
                    }
                }
            }
        };
        let stream = call("watch a lock", self.inner.timeout, created).await?;
        Ok(ReleaseEvents::new(futures::stream::unfold(
            stream,
            next_delete,
        )))
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        let key = self.lock_key(name);
        let mut kv = self.inner.client.kv_client();
        let resp = call(
            "force-release a lock",
            self.inner.timeout,
            kv.delete(key.clone(), None),
        )
        .await?;
        self.forget(&key, None);
        Ok(resp.deleted() > 0)
    }

    async fn health(&self) -> ComponentHealth {
        self.ping().await
    }

    async fn close(&self) {
        self.forget_all();
        self.inner.leases.revoke_all().await;
    }
}

impl EtcdBackend {
    /// Whether `owner` holds `key` (a read-only transaction, so linearizable).
    async fn owned(&self, key: &str, owner: &LockOwner) -> Result<bool> {
        let txn = Txn::new().when([Compare::value(key, CompareOp::Equal, owner.as_str())]);
        let mut kv = self.inner.client.kv_client();
        let resp = call("check a lock's owner", self.inner.timeout, kv.txn(txn)).await?;
        Ok(resp.succeeded())
    }
}

/// `If(create_revision == 0) Then(Put) Else(If(value == owner) Then(Put, Get) Else(Get))`:
/// a free lock is taken; a lock the owner already holds is moved onto its
/// current lease (a retry after an ambiguous reply); another's is left alone.
fn acquire_txn(key: &str, owner: &str, lease: i64) -> Txn {
    let put = || TxnOp::put(key, owner, Some(PutOptions::new().with_lease(lease)));
    let regrant = Txn::new()
        .when([Compare::value(key, CompareOp::Equal, owner)])
        .and_then([put(), TxnOp::get(key, None)])
        .or_else([TxnOp::get(key, None)]);
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::txn(regrant)])
}

/// The fencing token when [`acquire_txn`] granted the lock, `None` when held by another.
fn granted_token(resp: &TxnResponse) -> Result<Option<FencingToken>> {
    let revision = if resp.succeeded() {
        // The put created the key: its create revision is this revision.
        resp.header().map(|h| h.revision())
    } else {
        let ops = resp.op_responses();
        let Some(TxnOpResponse::Txn(inner)) = ops.first() else {
            return Err(malformed("no nested transaction result"));
        };
        if !inner.succeeded() {
            return Ok(None);
        }
        match inner.op_responses().get(1) {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.create_revision()),
            _ => return Err(malformed("no read of the held lock")),
        }
    };
    match revision
        .and_then(|r| u64::try_from(r).ok())
        .filter(|r| *r > 0)
    {
        Some(r) => Ok(Some(FencingToken::new(r))),
        None => Err(malformed("no positive create revision")),
    }
}

fn malformed(what: &str) -> Error {
    Error::backend(
        "etcd",
        format!("unexpected answer to the lock transaction: {what}"),
        false,
        None,
    )
}

/// The next "released" signal of a lock's watch: a DELETE event (a release,
/// a force-release or a lease expiry). Ends when the watch ends.
async fn next_delete(mut stream: WatchStream) -> Option<((), WatchStream)> {
    loop {
        match stream.message().await {
            Ok(Some(resp)) if resp.canceled() => return None,
            Ok(Some(resp)) => {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return Some(((), stream));
                }
            }
            Ok(None) | Err(_) => return None,
        }
    }
}
