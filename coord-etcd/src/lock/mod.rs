//! Lease locks on etcd: the holder of a lock is a key of its own under the
//! lock's prefix, created in one transaction only when the prefix is empty;
//! release is a plain delete of that key. Fencing tokens are create
//! revisions; waiters are woken by watches.

pub(crate) mod fenced;
pub(crate) mod inspect;
pub(crate) mod queue;

use std::time::Duration;

use coord_core::lock::{HoldMode, LockInfo, QueueOutcome};
use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, Error, FencingToken, LockBackend, LockGrant,
    LockOwner, ReleaseEvents, Result, async_trait,
};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchFilterType, WatchOptions, WatchStream,
};
use tokio::time::Instant;

use crate::backend::{EtcdBackend, LockKeys};
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
        let keys = self.lock_keys(name);
        let own = keys.holder(owner);
        let bucket = bucket(ttl);
        let mut retried = false;
        loop {
            let lease = self
                .inner
                .leases
                .fresh(bucket, start, Duration::from_secs(bucket) * 2 / 3)
                .await
                .map_err(|e| e.context(format_args!("acquire lock {name:?}")))?;
            let txn = acquire_txn(&keys, &own, lease.id);
            let mut kv = self.inner.client.kv_client();
            let resp = match deadline("acquire a lock", self.inner.timeout, kv.txn(txn)).await? {
                Ok(resp) => {
                    self.inner.leases.observe(resp.header());
                    resp
                }
                Err(e) if is_lease_not_found(&e) && !retried => {
                    tracing::debug!(lease = lease.id, "etcd lease is gone; granting a new one");
                    self.inner.leases.discard(&lease);
                    retried = true;
                    continue;
                }
                Err(e) => return Err(map("acquire a lock", e)),
            };
            let token = match acquired(&resp, &own)? {
                Acquired::Granted(token) => token,
                Acquired::Held => return Ok(AcquireOutcome::Held { retry_after: None }),
                // `owner` already holds it (a retry after an ambiguous
                // reply, or a reacquire with another TTL).
                Acquired::Ours { token, lease: on } if on == lease.id => token,
                Acquired::Ours { token, .. } => {
                    // Move the key onto the current lease, unless it is gone
                    // meanwhile (then start over: the lock may be free).
                    let txn = regrant_txn(&own, token, lease.id);
                    match deadline("acquire a lock", self.inner.timeout, kv.txn(txn)).await? {
                        Ok(resp) if resp.succeeded() => token,
                        Ok(_) => continue,
                        Err(e) if is_lease_not_found(&e) && !retried => {
                            self.inner.leases.discard(&lease);
                            retried = true;
                            continue;
                        }
                        Err(e) => return Err(map("acquire a lock", e)),
                    }
                }
            };
            self.hold(&keys.prefix, owner.as_str(), bucket, lease.id);
            // Core counts the guard valid until (its instant before this call)
            // + grant.ttl: never past the lease, and with a margin of a sixth
            // of the lease so that renewals within that much of a keep-alive
            // another lock already sent need none of their own.
            let ttl = lease
                .ttl
                .min(lease.remaining(start))
                .saturating_sub(lease.ttl / 6);
            let token = FencingToken::new(token);
            return Ok(AcquireOutcome::Granted(LockGrant { token, ttl }));
        }
    }

    async fn renew(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let keys = self.lock_keys(name);
        let bucket = self
            .held_bucket(&keys.prefix, owner.as_str())
            .unwrap_or_else(|| bucket(ttl));
        let not_held = |why: &str| {
            self.forget(&keys.prefix, Some(owner.as_str()));
            Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}: {why}"
            )))
        };
        let Some(lease) = self.inner.leases.get(bucket) else {
            return not_held("its lease is gone");
        };
        if self
            .held(&keys.prefix, owner.as_str())
            .is_some_and(|held| held.lease != lease.id)
        {
            // Its lease ran out and was replaced for newer holds: keeping the
            // new one alive would not keep this key.
            return not_held("its lease ran out and was replaced");
        }
        let pool = &self.inner.leases;
        // Core counts the guard valid until (its instant before this call) + ttl:
        // the lease must surely live that long. A keep-alive sent for another
        // lock in the last sixth of the lease guarantees it (grants leave that
        // margin); then none is sent.
        let needed_until = Instant::now() + ttl.min(lease.ttl);
        let own = keys.holder(owner);
        let (alive, owned) = tokio::join!(pool.keep_alive(&lease, needed_until), self.exists(&own));
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
        // Only `owner` ever writes its key, so a plain delete is owner-checked.
        let keys = self.lock_keys(name);
        let mut kv = self.inner.client.kv_client();
        let delete = kv.delete(keys.holder(owner), None);
        let resp = call("release a lock", self.inner.timeout, delete).await?;
        self.forget(&keys.prefix, Some(owner.as_str()));
        if resp.deleted() > 0 {
            Ok(())
        } else {
            Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}"
            )))
        }
    }

    async fn subscribe(&self, name: &str) -> Result<ReleaseEvents> {
        self.watch_lock(name, false).await
    }

    /// Puts the value on the holder's key, keeping its lease and create
    /// revision (one txn: only while the key exists).
    async fn proclaim(&self, name: &str, owner: &LockOwner, value: &str) -> Result<()> {
        let key = self.lock_key(name, owner);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_ignore_lease()),
            )]);
        let mut kv = self.inner.client.kv_client();
        let resp = call("proclaim", self.inner.timeout, kv.txn(txn)).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}"
            )))
        }
    }

    /// A watch of every holder key of the lock: grants (PUT) as well as
    /// releases and expiries (DELETE).
    async fn subscribe_changes(&self, name: &str) -> Result<ReleaseEvents> {
        self.watch_lock(name, true).await
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        let keys = self.lock_keys(name);
        let mut kv = self.inner.client.kv_client();
        let options = DeleteOptions::new().with_range(keys.end.clone());
        let delete = kv.delete(keys.prefix.clone(), Some(options));
        let resp = call("force-release a lock", self.inner.timeout, delete).await?;
        self.forget(&keys.prefix, None);
        Ok(resp.deleted() > 0)
    }

    async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        self.lock_inspect(name).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        self.lock_list(prefix).await
    }

    async fn enqueue(
        &self,
        name: &str,
        owner: &LockOwner,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<QueueOutcome> {
        self.queue_enqueue(name, owner, mode, ttl).await
    }

    async fn renew_queued(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        self.queue_renew(name, owner, ttl).await
    }

    async fn dequeue(&self, name: &str, owner: &LockOwner) -> Result<()> {
        self.queue_dequeue(name, owner).await
    }

    async fn subscribe_queue(&self, name: &str, owner: &LockOwner) -> Result<ReleaseEvents> {
        self.queue_subscribe(name, owner).await
    }

    async fn force_release_queued(&self, name: &str) -> Result<usize> {
        self.queue_force_release(name).await
    }

    async fn health(&self) -> ComponentHealth {
        self.ping().await
    }

    async fn close(&self) {
        self.forget_all();
        self.inner.leases.revoke_all().await;
        // The client is done: its registrations go too (their keys with their leases).
        self.inner.registry_leases.revoke_all().await;
    }

    /// The hold's lease ran out unrenewed, and with it every hold on that
    /// shared lease: the lease is dropped from the pool and revoked in the
    /// background, so that etcd, if it restored the lease after a restart,
    /// does not keep the lost holds' keys alive (the next acquisition
    /// would wait on them).
    fn hold_lost(&self, name: &str, owner: &LockOwner) {
        let lease_key = self.lock_keys(name).prefix;
        let queue_key = self.queue_keys(name).entry(owner);
        for key in [lease_key, queue_key] {
            if let Some(held) = self.held(&key, owner.as_str()) {
                self.forget(&key, Some(owner.as_str()));
                // The hold's own lease: a newer lease of the bucket (granted
                // since, for other holds) lives on.
                tracing::debug!(
                    lock = name,
                    lease = held.lease,
                    "a hold on this lease was lost; revoking it"
                );
                if let Some(lease) = self.inner.leases.get(held.bucket)
                    && lease.id == held.lease
                {
                    self.inner.leases.discard(&lease);
                }
                self.inner.leases.revoke_in_background(held.lease);
            }
        }
    }
}

impl EtcdBackend {
    /// A watch of lock `name`'s holder keys: deletes only, or every change.
    async fn watch_lock(&self, name: &str, changes: bool) -> Result<ReleaseEvents> {
        let LockKeys { prefix, end } = self.lock_keys(name);

        // Every holder key of the lock: DELETE events only (releases,
        // force-releases and lease expiries), or every change.
        let mut options = WatchOptions::new().with_range(end);
        if !changes {
            options = options.with_filters([WatchFilterType::NoPut]);
        }
        let created = crate::watch::open_confirmed(&self.inner.client, prefix, options);
        let stream = call("watch a lock", self.inner.timeout, created).await?;
        Ok(if changes {
            ReleaseEvents::new(futures::stream::unfold(stream, next_change))
        } else {
            ReleaseEvents::new(futures::stream::unfold(stream, next_delete))
        })
    }

    /// Whether `key` exists (a linearizable count-only read).
    async fn exists(&self, key: &str) -> Result<bool> {
        let mut kv = self.inner.client.kv_client();
        let get = kv.get(key, Some(GetOptions::new().with_count_only()));
        let resp = call("check a lock's owner", self.inner.timeout, get).await?;
        Ok(resp.count() > 0)
    }
}

/// `If(no key in [prefix, end)) Then(Put own key) Else(Get the oldest key in [prefix, end))`.
///
/// The compare covers the whole range: etcd (≥ 3.3) compares an empty range
/// as one absent key (create revision 0), a non-empty one as "every key
/// matches". So a holder key is created only when nobody holds the lock,
/// and there is at most one key under the prefix, ever.
fn acquire_txn(keys: &LockKeys, own: &str, lease: i64) -> Txn {
    let holder = GetOptions::new()
        .with_range(keys.end.clone())
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
        .with_keys_only();
    Txn::new()
        .when([
            Compare::create_revision(keys.prefix.clone(), CompareOp::Equal, 0)
                .with_range(keys.end.clone()),
        ])
        .and_then([TxnOp::put(
            own,
            "",
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(keys.prefix.clone(), Some(holder))])
}

/// `If(create_revision(own) == token) Then(Put own key on lease)`: moves a
/// lock the owner holds onto another lease, but never recreates its key
/// once it is gone (released, expired, force-released).
fn regrant_txn(own: &str, token: u64, lease: i64) -> Txn {
    let token = i64::try_from(token).unwrap_or(i64::MAX);
    Txn::new()
        .when([Compare::create_revision(own, CompareOp::Equal, token)])
        .and_then([TxnOp::put(
            own,
            "",
            Some(PutOptions::new().with_lease(lease)),
        )])
}

/// What [`acquire_txn`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acquired {
    /// It created the owner's key: the token is its create revision.
    Granted(u64),
    /// The owner's key was there already, with this create revision, on this lease.
    Ours { token: u64, lease: i64 },
    /// Another owner's key is there.
    Held,
}

fn acquired(resp: &TxnResponse, own: &str) -> Result<Acquired> {
    if resp.succeeded() {
        // The put created the key: its create revision is this revision.
        let revision = resp.header().map(|h| h.revision());
        return positive(revision).map(Acquired::Granted);
    }
    let Some(TxnOpResponse::Get(get)) = resp.op_responses().into_iter().next() else {
        return Err(malformed("no read of the held lock"));
    };
    match get.kvs().first() {
        Some(kv) if kv.key() == own.as_bytes() => Ok(Acquired::Ours {
            token: positive(Some(kv.create_revision()))?,
            lease: kv.lease(),
        }),
        Some(_) => Ok(Acquired::Held),
        // Cannot happen: the compare failed because the range was not empty.
        None => Err(malformed("the lock is held, but no key was read")),
    }
}

fn positive(revision: Option<i64>) -> Result<u64> {
    revision
        .and_then(|r| u64::try_from(r).ok())
        .filter(|r| *r > 0)
        .ok_or_else(|| malformed("no positive create revision"))
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
/// The next change of any kind on a watch.
async fn next_change(mut stream: WatchStream) -> Option<((), WatchStream)> {
    loop {
        match stream.message().await {
            Ok(Some(resp)) if resp.canceled() => return None,
            Ok(Some(resp)) if !resp.events().is_empty() => return Some(((), stream)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

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
