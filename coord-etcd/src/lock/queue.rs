//! Queued locks on etcd: fair locks, semaphores and read-write locks.
//!
//! * Every entry of the queue of lock `name` is a key of its own,
//!   `{namespace}/lockq/{name}\0{client_id}:{owner}` (see
//!   [`EtcdBackend::queue_key`]), whose value is the entry's
//!   [`HoldMode::encode`] form. The `lockq/` prefix keeps a queue apart from
//!   the lease lock of the same name (`lock/`): they are different locks.
//! * Entries are ordered by **create revision**. An entry is granted when
//!   [`HoldMode::admits`] it given the modes of the entries with a lower
//!   create revision; its **fencing token** is its create revision. Granted
//!   entries are a prefix of the queue, so grants happen in create-revision
//!   order and tokens increase in grant order (as long as every caller of a
//!   semaphore gives the same limit; mixing limits on one name can grant a
//!   later entry before an earlier one).
//! * Entries are attached to the client's shared lease of their TTL bucket,
//!   like lease locks: a live client keeps them alive (its `enqueue` calls
//!   while waiting, its renewals while holding), and the entries of a dead
//!   client vanish when its lease expires, which unblocks the entries
//!   behind them.
//! * `enqueue` is one transaction: create the entry unless it exists, and
//!   read the queue, sorted by create revision.
//! * Waiters watch only what can grant them, from the revision of the read
//!   that found them waiting (so nothing is missed): an exclusive entry
//!   watches the deletion of its immediate predecessor; a shared entry
//!   blocked by an exclusive one watches the deletion of the last exclusive
//!   entry ahead of it; a shared entry blocked only by the limit (a
//!   semaphore permit) wakes on the deletion of **any** entry ahead of it.
//!   After each wake-up the listener re-reads the queue and watches the new
//!   target, so a release wakes the next waiter, not the whole queue.

use std::collections::HashSet;
use std::time::Duration;

use coord_core::lock::{HoldMode, QueueOutcome};
use coord_core::{Error, FencingToken, LockGrant, LockOwner, ReleaseEvents, Result};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, GetResponse, KeyValue, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchFilterType, WatchOptions, WatchStream,
};
use tokio::time::Instant;

use crate::backend::EtcdBackend;
use crate::error::{call, deadline, is_lease_not_found, map};
use crate::lease::{KeepAlive, Lease, bucket};

/// How many times one call starts over when the queue changes under it.
const MAX_ATTEMPTS: usize = 5;

/// The most operations of one transaction (etcd's default `--max-txn-ops`
/// is 128; a compare and a delete per entry).
const TXN_CHUNK: usize = 64;

/// The keys of one queue. Entry keys are `prefix + owner`; `prefix` ends in
/// NUL, so `[prefix, end)` holds exactly the entries of this queue (lock
/// names never contain NUL, so `a` and `a/b` never see each other's keys).
#[derive(Debug, Clone)]
pub(crate) struct QueueKeys {
    pub(crate) prefix: String,
    pub(crate) end: String,
}

impl QueueKeys {
    pub(crate) fn new(namespace: &str, name: &str) -> QueueKeys {
        debug_assert!(!name.contains('\0'), "lock names are validated by core");
        QueueKeys {
            prefix: format!("{}{name}\0", queue_root(namespace)),
            end: format!("{}{name}\u{1}", queue_root(namespace)),
        }
    }

    /// The key of `owner`'s entry.
    pub(crate) fn entry(&self, owner: &LockOwner) -> String {
        let mut key = String::with_capacity(self.prefix.len() + owner.as_str().len());
        key.push_str(&self.prefix);
        key.push_str(owner.as_str());
        key
    }
}

/// The prefix of every queue key of a namespace.
pub(crate) fn queue_root(namespace: &str) -> String {
    format!("{namespace}lockq/")
}

impl EtcdBackend {
    /// The prefix of the entries of the queued lock `name` (fair lock,
    /// semaphore, read-write lock): `{namespace}/lockq/{name}` and a NUL
    /// byte. Distinct from [`lock_prefix`](Self::lock_prefix): a queued lock
    /// and a lease lock of the same name are different locks.
    pub fn queue_prefix(&self, name: &str) -> String {
        self.queue_keys(name).prefix
    }

    /// The key of `owner`'s entry in the queue of `name`:
    /// [`queue_prefix`](Self::queue_prefix) followed by the owner's stored
    /// form. Its value is the entry's [`HoldMode::encode`] form; its create
    /// revision orders the queue and is the fencing token once granted.
    pub fn queue_key(&self, name: &str, owner: &LockOwner) -> String {
        self.queue_keys(name).entry(owner)
    }

    pub(crate) fn queue_keys(&self, name: &str) -> QueueKeys {
        QueueKeys::new(&self.inner.prefix, name)
    }

    /// [`LockBackend::enqueue`](coord_core::LockBackend::enqueue): one
    /// transaction in steady use.
    pub(crate) async fn queue_enqueue(
        &self,
        name: &str,
        owner: &LockOwner,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<QueueOutcome> {
        let start = Instant::now();
        let keys = self.queue_keys(name);
        let own = keys.entry(owner);
        let bucket = bucket(ttl);
        let value = mode.encode();
        let pool = &self.inner.leases;
        let min_remaining = Duration::from_secs(bucket) * 2 / 3;
        if self
            .held(&own, owner.as_str())
            .is_some_and(|h| h.bucket == bucket)
        {
            // A waiter asking again: its entry exists, on this bucket's
            // lease. A linearizable read answers as the transaction's
            // read-only branch would, without a write through raft (and its
            // WAL sync) on every wake-up of every waiter.
            let lease = pool
                .fresh(bucket, start, min_remaining)
                .await
                .map_err(|e| e.context(format_args!("acquire lock {name:?}")))?;
            let read = self.read_queue(&keys, "enqueue").await?;
            pool.observe(read.header());
            let kvs = read.kvs();
            if let Some(pos) = position(kvs, &own)
                && kvs[pos].lease() == lease.id
            {
                return self.enqueue_answer(kvs, pos, &own, owner, bucket, &lease, start);
            }
            // Gone, or on another lease: the transaction below sorts it out.
        }
        let mut lease_retried = false;
        for _ in 0..MAX_ATTEMPTS {
            let lease = pool
                .fresh(bucket, start, min_remaining)
                .await
                .map_err(|e| e.context(format_args!("acquire lock {name:?}")))?;
            let txn = enqueue_txn(&keys, &own, &value, lease.id);
            let mut kv = self.inner.client.kv_client();
            let resp = match deadline("enqueue", self.inner.timeout, kv.txn(txn)).await? {
                Ok(resp) => {
                    pool.observe(resp.header());
                    resp
                }
                Err(e) if is_lease_not_found(&e) && !lease_retried => {
                    tracing::debug!(lease = lease.id, "etcd lease is gone; granting a new one");
                    pool.discard(&lease);
                    lease_retried = true;
                    continue;
                }
                Err(e) => return Err(map("enqueue", e)),
            };
            let read = last_read(&resp)?;
            let kvs = read.kvs();
            let Some(pos) = position(kvs, &own) else {
                // The transaction created it or found it, then read it.
                return Err(malformed("the queue read misses the caller's entry"));
            };
            let entry = &kvs[pos];
            if entry.lease() != lease.id {
                // Another TTL bucket, or a lease this client no longer
                // keeps alive: move the entry onto the current lease, unless
                // it is gone meanwhile (then start over, at the tail).
                let txn = move_txn(&own, entry.create_revision(), entry.value(), lease.id);
                match deadline("enqueue", self.inner.timeout, kv.txn(txn)).await? {
                    Ok(resp) if resp.succeeded() => {}
                    Ok(_) => continue,
                    Err(e) if is_lease_not_found(&e) && !lease_retried => {
                        pool.discard(&lease);
                        lease_retried = true;
                        continue;
                    }
                    Err(e) => return Err(map("enqueue", e)),
                }
            }
            return self.enqueue_answer(kvs, pos, &own, owner, bucket, &lease, start);
        }
        Err(changing("enqueue"))
    }

    /// The answer to an enqueue whose entry (`own`, at `pos` of the queue
    /// read `kvs`) is on `lease`; records the hold.
    #[allow(clippy::too_many_arguments)] // two call sites, in `queue_enqueue`
    fn enqueue_answer(
        &self,
        kvs: &[KeyValue],
        pos: usize,
        own: &str,
        owner: &LockOwner,
        bucket: u64,
        lease: &Lease,
        start: Instant,
    ) -> Result<QueueOutcome> {
        let granted = is_granted(kvs, pos)?;
        self.hold(own, owner.as_str(), bucket, lease.id);
        if !granted {
            return Ok(QueueOutcome::Queued {
                ahead: u32::try_from(pos).unwrap_or(u32::MAX),
                retry_after: None,
                fence: None,
            });
        }
        // Valid for at most the lease's remaining time, less a sixth of
        // the lease (the margin lease locks leave for shared keep-alives).
        let ttl = lease
            .ttl
            .min(lease.remaining(start))
            .saturating_sub(lease.ttl / 6);
        let token = FencingToken::new(positive(kvs[pos].create_revision())?);
        Ok(QueueOutcome::Granted(LockGrant { token, ttl }))
    }

    /// [`LockBackend::renew_queued`](coord_core::LockBackend::renew_queued):
    /// a read of the queue and (when needed) a keep-alive of the entry's
    /// lease, concurrently.
    pub(crate) async fn queue_renew(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<()> {
        let keys = self.queue_keys(name);
        let own = keys.entry(owner);
        let bucket = self
            .held_bucket(&own, owner.as_str())
            .unwrap_or_else(|| bucket(ttl));
        let not_held = |why: &str| {
            self.forget(&own, Some(owner.as_str()));
            Err(Error::NotHeld(format!(
                "queued lock {name:?} has no granted entry of {owner}: {why}"
            )))
        };
        let pool = &self.inner.leases;
        let Some(lease) = pool.get(bucket) else {
            return not_held("its lease is gone");
        };
        // Same rule as lease locks: the lease must surely live `ttl` from
        // before this call (core counts validity from then).
        let needed_until = Instant::now() + ttl.min(lease.ttl);
        let (alive, read) = tokio::join!(
            pool.keep_alive(&lease, needed_until),
            self.read_queue(&keys, "renew a queued lock")
        );
        match alive {
            Ok(KeepAlive::Gone) => {
                pool.discard(&lease);
                return not_held("its lease has expired");
            }
            Ok(KeepAlive::Alive) => {}
            Err(e) => return Err(e),
        }
        let read = read?;
        pool.observe(read.header());
        let kvs = read.kvs();
        let Some(pos) = position(kvs, &own) else {
            return not_held("it is not in the queue");
        };
        if !is_granted(kvs, pos)? {
            return not_held("it is waiting");
        }
        let entry = &kvs[pos];
        if entry.lease() != lease.id {
            let txn = move_txn(&own, entry.create_revision(), entry.value(), lease.id);
            let mut kv = self.inner.client.kv_client();
            let resp = call("renew a queued lock", self.inner.timeout, kv.txn(txn)).await?;
            if !resp.succeeded() {
                return not_held("its entry is gone");
            }
            self.hold(&own, owner.as_str(), bucket, lease.id);
        }
        Ok(())
    }

    /// [`LockBackend::dequeue`](coord_core::LockBackend::dequeue): a plain
    /// delete (only `owner` writes its entry, so it is owner-checked).
    pub(crate) async fn queue_dequeue(&self, name: &str, owner: &LockOwner) -> Result<()> {
        let own = self.queue_keys(name).entry(owner);
        let mut kv = self.inner.client.kv_client();
        let delete = kv.delete(own.clone(), None);
        let resp = call("dequeue", self.inner.timeout, delete).await?;
        self.forget(&own, Some(owner.as_str()));
        if resp.deleted() > 0 {
            Ok(())
        } else {
            Err(Error::NotHeld(format!(
                "queued lock {name:?} has no entry of {owner}"
            )))
        }
    }

    /// [`LockBackend::force_release_queued`](coord_core::LockBackend::force_release_queued):
    /// one read, then transactions deleting the granted entries, each only
    /// if it is still the same entry (same create revision). An entry once
    /// granted stays granted, so no other entry is ever removed.
    pub(crate) async fn queue_force_release(&self, name: &str) -> Result<usize> {
        let keys = self.queue_keys(name);
        let read = self
            .read_queue(&keys, "force-release a queued lock")
            .await?;
        let kvs = read.kvs();
        let flags = grant_flags(kvs)?;
        let granted: Vec<(&[u8], i64)> = kvs
            .iter()
            .zip(flags)
            .filter(|(_, g)| *g)
            .map(|(kv, _)| (kv.key(), kv.create_revision()))
            .collect();
        let mut removed = 0;
        for chunk in granted.chunks(TXN_CHUNK) {
            let resp = self.delete_entries(chunk).await?;
            if resp.succeeded() {
                removed += deleted(&resp);
                continue;
            }
            // One of them left meanwhile: the others one by one.
            for entry in chunk {
                let resp = self.delete_entries(std::slice::from_ref(entry)).await?;
                removed += deleted(&resp);
            }
        }
        for (key, _) in &granted {
            if let Ok(key) = std::str::from_utf8(key) {
                self.forget(key, None);
            }
        }
        Ok(removed)
    }

    async fn delete_entries(&self, entries: &[(&[u8], i64)]) -> Result<TxnResponse> {
        let txn = Txn::new()
            .when(
                entries
                    .iter()
                    .map(|(key, rev)| Compare::create_revision(*key, CompareOp::Equal, *rev))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                entries
                    .iter()
                    .map(|(key, _)| TxnOp::delete(*key, None))
                    .collect::<Vec<_>>(),
            );
        let mut kv = self.inner.client.kv_client();
        call(
            "force-release a queued lock",
            self.inner.timeout,
            kv.txn(txn),
        )
        .await
    }

    /// [`LockBackend::subscribe_queue`](coord_core::LockBackend::subscribe_queue).
    ///
    /// Reads the queue and watches, from the next revision, only what can
    /// grant `owner`'s entry (see the module docs). When the entry is
    /// already grantable, or not in the queue, the stream yields once at
    /// once and ends. After a signal from the watch, the next poll of the
    /// stream re-reads the queue and watches the new target (or yields
    /// once and ends, as above), so one subscription serves a whole wait.
    /// It ends when the watch dies (the caller subscribes again).
    pub(crate) async fn queue_subscribe(
        &self,
        name: &str,
        owner: &LockOwner,
    ) -> Result<ReleaseEvents> {
        let keys = self.queue_keys(name);
        let own = keys.entry(owner);
        let target = self.queue_target(&keys, &own).await?;
        let listener = Listener {
            backend: self.clone(),
            keys,
            own,
            target: Some(target),
            done: false,
        };
        Ok(ReleaseEvents::new(futures::stream::unfold(
            listener,
            Listener::next,
        )))
    }

    /// One linearizable read of the queue, oldest entry first.
    async fn read_queue(&self, keys: &QueueKeys, what: &str) -> Result<GetResponse> {
        let mut kv = self.inner.client.kv_client();
        let get = kv.get(keys.prefix.clone(), Some(queue_read(keys)));
        call(what, self.inner.timeout, get).await
    }

    /// Opens a watch of the queue's deletions, then reads the queue and
    /// picks which deletions can grant `own`'s entry.
    ///
    /// The watch starts at "now" and is open before the read, so a deletion
    /// after the read is always reported, and one in between shows in the
    /// read. (A watch from the read's revision would do the same with one
    /// key, but etcd serves a watch that starts in the past from its
    /// background sync, every 100 ms: under contention, wake-ups then came
    /// up to 100 ms late.) Deletions of other entries reach the client and
    /// are ignored by the filter; they wake nobody.
    async fn queue_target(&self, keys: &QueueKeys, own: &str) -> Result<Target> {
        let what = "watch a queued lock";
        let options = WatchOptions::new()
            .with_range(keys.end.clone())
            .with_filters([WatchFilterType::NoPut]);
        let opened = call(
            what,
            self.inner.timeout,
            crate::watch::open_watch(&self.inner.client, keys.prefix.as_bytes().to_vec(), options),
        )
        .await?;
        let stream = opened.map_err(|reason| {
            Error::unavailable(format!("{what}: etcd cancelled the watch: {reason}"), None)
        })?;
        let read = self.read_queue(keys, what).await?;
        let kvs = read.kvs();
        let Some(pos) = position(kvs, own) else {
            return Ok(Target::Absent);
        };
        let (filter, needed) = match watch_target(kvs, pos)? {
            None => return Ok(Target::Grantable),
            Some(Watched::Key(key)) => (HashSet::from([key]), 1),
            Some(Watched::Ahead { keys, needed }) => (keys, needed),
        };
        Ok(Target::Watch(Box::new(stream), filter, needed))
    }
}

/// What a waiter listens to.
enum Target {
    /// Its entry is not in the queue: signal once, then end.
    Absent,
    /// Its entry can be granted now: signal.
    Grantable,
    /// A watch of the queue's DELETE events, the keys whose deletion can
    /// grant the entry, and how many of them must go before it is granted.
    Watch(Box<WatchStream>, HashSet<Vec<u8>>, usize),
}

/// What a waiting entry must watch to be woken when it may be granted.
#[derive(Debug, PartialEq, Eq)]
enum Watched {
    /// The deletion of this key.
    Key(Vec<u8>),
    /// The deletion of `needed` of these keys (the entries ahead of a
    /// shared entry blocked only by its limit: only removals ahead admit
    /// it, as later entries join behind it, and it is admitted once fewer
    /// than its limit are left ahead). Counting spares the waiters of a
    /// semaphore a wake-up, a watch and a read on every release ahead of
    /// them that does not admit them.
    Ahead {
        keys: HashSet<Vec<u8>>,
        needed: usize,
    },
}

/// `None` when the entry at `pos` is grantable now; otherwise what to watch.
fn watch_target(kvs: &[KeyValue], pos: usize) -> Result<Option<Watched>> {
    let ahead = kvs[..pos].iter().map(mode_of).collect::<Result<Vec<_>>>()?;
    let mode = mode_of(&kvs[pos])?;
    if mode.admits(&ahead) {
        return Ok(None);
    }
    Ok(Some(match mode {
        // Its immediate predecessor (there is one: it is not admitted).
        HoldMode::Exclusive => Watched::Key(kvs[pos - 1].key().to_vec()),
        HoldMode::Shared { limit } => match ahead.iter().rposition(|m| *m == HoldMode::Exclusive) {
            Some(last) => Watched::Key(kvs[last].key().to_vec()),
            None => Watched::Ahead {
                keys: kvs[..pos].iter().map(|kv| kv.key().to_vec()).collect(),
                // Not admitted: at least `limit` are ahead.
                needed: pos + 1 - usize::try_from(limit).unwrap_or(usize::MAX).min(pos),
            },
        },
    }))
}

/// The state of a [`ReleaseEvents`] stream of a queue waiter.
struct Listener {
    backend: EtcdBackend,
    keys: QueueKeys,
    own: String,
    /// `None` after a signal: the next poll re-reads the queue.
    target: Option<Target>,
    done: bool,
}

impl Listener {
    async fn next(mut self) -> Option<((), Listener)> {
        if self.done {
            return None;
        }
        let target = match self.target.take() {
            Some(t) => t,
            None => match self.backend.queue_target(&self.keys, &self.own).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch the queue again; ending");
                    return None;
                }
            },
        };
        match target {
            // Signal once and end: the caller's next `enqueue` answers, and
            // a caller that keeps listening subscribes again (no spinning).
            Target::Absent | Target::Grantable => {
                self.done = true;
                Some(((), self))
            }
            Target::Watch(mut stream, mut filter, mut needed) => loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => return None,
                    Ok(Some(resp)) => {
                        for e in resp.events() {
                            // Each key counts once: an owner that leaves and
                            // comes back joins behind this entry.
                            if e.event_type() == EventType::Delete
                                && e.kv().is_some_and(|kv| filter.remove(kv.key()))
                            {
                                needed = needed.saturating_sub(1);
                            }
                        }
                        if needed == 0 {
                            return Some(((), self));
                        }
                    }
                    Ok(None) | Err(_) => return None,
                }
            },
        }
    }
}

/// `If(create_revision(own) == 0) Then(Put own, Get queue) Else(Get queue)`.
fn enqueue_txn(keys: &QueueKeys, own: &str, mode: &str, lease: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(own, CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(own, mode, Some(PutOptions::new().with_lease(lease))),
            TxnOp::get(keys.prefix.clone(), Some(queue_read(keys))),
        ])
        .or_else([TxnOp::get(keys.prefix.clone(), Some(queue_read(keys)))])
}

/// `If(create_revision(own) == revision) Then(Put own on lease)`: moves an
/// entry onto another lease, keeping its value and its place, but never
/// recreates it once it is gone.
fn move_txn(own: &str, revision: i64, value: &[u8], lease: i64) -> Txn {
    Txn::new()
        .when([Compare::create_revision(own, CompareOp::Equal, revision)])
        .and_then([TxnOp::put(
            own,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
}

/// Every entry of a queue, oldest first.
fn queue_read(keys: &QueueKeys) -> GetOptions {
    GetOptions::new()
        .with_range(keys.end.clone())
        .with_sort(SortTarget::Create, SortOrder::Ascend)
}

/// The last read of a transaction's answer.
fn last_read(resp: &TxnResponse) -> Result<GetResponse> {
    resp.op_responses()
        .into_iter()
        .rev()
        .find_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        })
        .ok_or_else(|| malformed("no read of the queue"))
}

fn deleted(resp: &TxnResponse) -> usize {
    resp.op_responses()
        .iter()
        .map(|r| match r {
            TxnOpResponse::Delete(d) => usize::try_from(d.deleted()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn position(kvs: &[KeyValue], own: &str) -> Option<usize> {
    kvs.iter().position(|kv| kv.key() == own.as_bytes())
}

/// Whether the entry at `pos` of a queue read is granted.
fn is_granted(kvs: &[KeyValue], pos: usize) -> Result<bool> {
    let ahead = kvs[..pos].iter().map(mode_of).collect::<Result<Vec<_>>>()?;
    Ok(mode_of(&kvs[pos])?.admits(&ahead))
}

/// The stored mode of an entry; a corrupted one is a codec error.
pub(crate) fn mode_of(kv: &KeyValue) -> Result<HoldMode> {
    let key = String::from_utf8_lossy(kv.key()).replace('\0', "\\0");
    let value = std::str::from_utf8(kv.value()).map_err(|e| {
        Error::codec(
            format!("queue entry {key:?}: stored hold mode is not UTF-8"),
            Some(Box::new(e) as coord_core::BoxError),
        )
    })?;
    HoldMode::decode(value).map_err(|e| {
        Error::codec(
            format!("queue entry {key:?}: {e}"),
            Some(Box::new(e) as coord_core::BoxError),
        )
    })
}

/// Which entries of a queue read (oldest first) are granted: the same
/// answers as [`HoldMode::admits`] over the entries ahead of each, in one
/// pass. Entries behind the first exclusive entry past the head are never
/// granted, so their modes are not decoded (a corrupted one cannot fail
/// the others).
pub(crate) fn grant_flags(kvs: &[KeyValue]) -> Result<Vec<bool>> {
    let mut flags = vec![false; kvs.len()];
    for (i, kv) in kvs.iter().enumerate() {
        let mode = mode_of(kv)?;
        flags[i] = granted_at(mode, i, false);
        if mode == HoldMode::Exclusive {
            break;
        }
    }
    Ok(flags)
}

/// [`HoldMode::admits`] for an entry with `ahead` entries before it, given
/// whether one of them is exclusive.
fn granted_at(mode: HoldMode, ahead: usize, exclusive_ahead: bool) -> bool {
    match mode {
        HoldMode::Exclusive => ahead == 0,
        HoldMode::Shared { limit } => {
            !exclusive_ahead && u64::try_from(ahead).unwrap_or(u64::MAX) < u64::from(limit)
        }
    }
}

fn positive(revision: i64) -> Result<u64> {
    u64::try_from(revision)
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| malformed("no positive create revision"))
}

fn malformed(what: &str) -> Error {
    Error::backend(
        "etcd",
        format!("unexpected answer to a queue request: {what}"),
        false,
        None,
    )
}

fn changing(what: &str) -> Error {
    Error::backend(
        "etcd",
        format!("{what}: the queue kept changing; try again"),
        true,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: [HoldMode; 5] = [
        HoldMode::Exclusive,
        HoldMode::Shared { limit: 1 },
        HoldMode::Shared { limit: 2 },
        HoldMode::Shared { limit: 3 },
        HoldMode::READ,
    ];

    /// Every queue of up to `len` entries over [`MODES`].
    fn queues(len: usize) -> Vec<Vec<HoldMode>> {
        let mut all = vec![Vec::new()];
        let mut last = vec![Vec::new()];
        for _ in 0..len {
            let next: Vec<Vec<HoldMode>> = last
                .iter()
                .flat_map(|q| {
                    MODES.iter().map(move |m| {
                        let mut q = q.clone();
                        q.push(*m);
                        q
                    })
                })
                .collect();
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    #[test]
    fn the_one_pass_rule_agrees_with_admits() {
        for q in queues(5) {
            let mut exclusive_ahead = false;
            for (i, mode) in q.iter().enumerate() {
                assert_eq!(
                    granted_at(*mode, i, exclusive_ahead),
                    mode.admits(&q[..i]),
                    "{q:?} at {i}"
                );
                exclusive_ahead |= *mode == HoldMode::Exclusive;
            }
        }
    }

    #[test]
    fn keys_of_a_queue_never_reach_another_lock() {
        let a = QueueKeys::new("ns/", "a");
        let sub = QueueKeys::new("ns/", "a/b");
        let owner = LockOwner::new("c", "o").unwrap();
        let key = sub.entry(&owner);
        assert!(!(key.as_str() >= a.prefix.as_str() && key.as_str() < a.end.as_str()));
        assert!(a.entry(&owner).starts_with("ns/lockq/a\0"));
        assert!(!a.prefix.starts_with("ns/lock/"));
    }
}
