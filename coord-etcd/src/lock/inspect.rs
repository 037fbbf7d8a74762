//! Administration reads: the holder of a lease lock, and every lock (lease
//! and queued) under a name prefix.
//!
//! Remaining TTLs come from the lease of each key: for this client's own
//! leases from what it knows locally (a lower bound, no request); for other
//! clients' leases `list` asks etcd, concurrently, for at most
//! [`MAX_TTL_QUERIES`] distinct leases (there are few: leases are shared per
//! client and TTL bucket), and `inspect` does not (`None`), to stay one
//! round trip.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use coord_core::lock::{HoldMode, HolderInfo, LockInfo, StoredKind};
use coord_core::{Error, FencingToken, LockOwner, Result};
use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse};
use tokio::time::Instant;

use crate::backend::EtcdBackend;
use crate::error::call;
use crate::lock::queue::{grant_flags, mode_of, queue_root};

/// The most leases of other clients whose TTL one `list` asks etcd for.
pub(crate) const MAX_TTL_QUERIES: usize = 16;

impl EtcdBackend {
    /// [`LockBackend::inspect`](coord_core::LockBackend::inspect): one read
    /// of the lock's key range.
    pub(crate) async fn lock_inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        let keys = self.lock_keys(name);
        let options = GetOptions::new()
            .with_range(keys.end.clone())
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let mut kv = self.inner.client.kv_client();
        let get = kv.get(keys.prefix.clone(), Some(options));
        let resp = call("inspect a lock", self.inner.timeout, get).await?;
        let Some(holder) = resp.kvs().first() else {
            return Ok(None);
        };
        let owner = stored_owner(holder.key(), keys.prefix.len())?;
        let ttl_remaining = self.own_lease_remaining(&keys.prefix, &owner, holder.lease());
        Ok(Some(LockInfo {
            name: name.to_owned(),
            kind: StoredKind::Lease,
            holders: vec![HolderInfo {
                token: Some(token(holder)?),
                owner,
                mode: HoldMode::Exclusive,
                ttl_remaining,
                value: proclaimed(holder),
            }],
            waiters: Vec::new(),
        }))
    }

    /// [`LockBackend::list`](coord_core::LockBackend::list): one
    /// transaction reading the lease locks and the queues whose names start
    /// with `prefix` (at one revision), then the TTLs of other clients'
    /// leases (see the module docs).
    pub(crate) async fn lock_list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let lock_root = format!("{}lock/", self.inner.prefix);
        let queue_root = queue_root(&self.inner.prefix);
        let queue_order = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let txn = Txn::new().and_then([
            TxnOp::get(
                format!("{lock_root}{prefix}"),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(format!("{queue_root}{prefix}"), Some(queue_order)),
        ]);
        let mut kv = self.inner.client.kv_client();
        let resp = call("list locks", self.inner.timeout, kv.txn(txn)).await?;
        let mut reads = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        let (Some(locks), Some(queues)) = (reads.next(), reads.next()) else {
            return Err(Error::backend(
                "etcd",
                "unexpected answer to the list transaction: missing reads",
                false,
                None,
            ));
        };
        let ttls = self
            .lease_ttls(locks.kvs().iter().chain(queues.kvs()))
            .await;

        let mut out = Vec::new();
        for kv in locks.kvs() {
            let (name, owner) = split_key(kv.key(), lock_root.len())?;
            out.push(LockInfo {
                name: name.to_owned(),
                kind: StoredKind::Lease,
                holders: vec![HolderInfo {
                    owner: owner.to_owned(),
                    token: Some(token(kv)?),
                    mode: HoldMode::Exclusive,
                    ttl_remaining: ttls.get(&kv.lease()).copied(),
                    value: proclaimed(kv),
                }],
                waiters: Vec::new(),
            });
        }
        // Entries grouped by queue, each group still oldest first.
        let mut by_name: BTreeMap<&str, Vec<(&KeyValue, &str)>> = BTreeMap::new();
        for kv in queues.kvs() {
            let (name, owner) = split_key(kv.key(), queue_root.len())?;
            by_name.entry(name).or_default().push((kv, owner));
        }
        for (name, entries) in by_name {
            let kvs: Vec<KeyValue> = entries.iter().map(|(kv, _)| (*kv).clone()).collect();
            let flags = grant_flags(&kvs)?;
            let mut info = LockInfo {
                name: name.to_owned(),
                kind: StoredKind::Queue,
                holders: Vec::new(),
                waiters: Vec::new(),
            };
            for ((kv, owner), granted) in entries.into_iter().zip(flags) {
                let holder = HolderInfo {
                    owner: owner.to_owned(),
                    token: if granted { Some(token(kv)?) } else { None },
                    mode: mode_of(kv)?,
                    ttl_remaining: ttls.get(&kv.lease()).copied(),
                    value: None,
                };
                if granted {
                    info.holders.push(holder);
                } else {
                    info.waiters.push(holder);
                }
            }
            out.push(info);
        }
        // Stable: a lease lock comes before the queue of the same name.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The remaining TTL of `owner`'s key when it is on this client's lease
    /// (no request).
    fn own_lease_remaining(&self, key: &str, owner: &str, lease: i64) -> Option<Duration> {
        let bucket = self.held_bucket(key, owner)?;
        let pooled = self.inner.leases.get(bucket)?;
        (pooled.id == lease).then(|| pooled.remaining(Instant::now()))
    }

    /// The remaining TTLs of the leases of `kvs`: this client's from what it
    /// knows, the others' from etcd (at most [`MAX_TTL_QUERIES`], concurrently;
    /// a failed query leaves the TTL unknown).
    async fn lease_ttls(&self, kvs: impl Iterator<Item = &KeyValue>) -> HashMap<i64, Duration> {
        let now = Instant::now();
        let mut ttls = HashMap::new();
        for pooled in self.leases() {
            if let Some(lease) = self.inner.leases.get(crate::lease::bucket(pooled.ttl))
                && lease.id == pooled.id
            {
                ttls.insert(lease.id, lease.remaining(now));
            }
        }
        let mut foreign: Vec<i64> = kvs
            .map(KeyValue::lease)
            .filter(|l| *l != 0 && !ttls.contains_key(l))
            .collect();
        foreign.sort_unstable();
        foreign.dedup();
        foreign.truncate(MAX_TTL_QUERIES);
        let queries = foreign.into_iter().map(|id| async move {
            let mut client = self.inner.client.lease_client();
            let ask = client.time_to_live(id, None);
            let resp = call("read a lease's TTL", self.inner.timeout, ask).await;
            (id, resp.ok().and_then(|r| u64::try_from(r.ttl()).ok()))
        });
        for (id, secs) in futures::future::join_all(queries).await {
            if let Some(secs) = secs {
                ttls.insert(id, Duration::from_secs(secs));
            }
        }
        ttls
    }
}

/// The token of a holder key: its create revision.
fn token(kv: &KeyValue) -> Result<FencingToken> {
    u64::try_from(kv.create_revision())
        .ok()
        .filter(|r| *r > 0)
        .map(FencingToken::new)
        .ok_or_else(|| {
            Error::backend(
                "etcd",
                "a stored lock key has no positive create revision",
                false,
                None,
            )
        })
}

/// `root + name + NUL + owner` → `(name, owner)`; anything else under the
/// root is a codec error.
fn split_key(key: &[u8], root: usize) -> Result<(&str, &str)> {
    let bad = |why: &str| {
        Error::codec(
            format!(
                "stored lock key {:?} {why}",
                String::from_utf8_lossy(key).replace('\0', "\\0")
            ),
            None,
        )
    };
    let rest = key.get(root..).ok_or_else(|| bad("is too short"))?;
    let rest = std::str::from_utf8(rest).map_err(|_| bad("is not UTF-8"))?;
    let (name, owner) = rest
        .split_once('\0')
        .ok_or_else(|| bad("has no NUL byte between name and owner"))?;
    LockOwner::parse(owner).map_err(|_| bad("has no valid owner"))?;
    Ok((name, owner))
}

/// The owner part of a holder key.
fn stored_owner(key: &[u8], prefix: usize) -> Result<String> {
    let owner = key
        .get(prefix..)
        .and_then(|o| std::str::from_utf8(o).ok())
        .filter(|o| LockOwner::parse(o).is_ok())
        .ok_or_else(|| {
            Error::codec(
                format!(
                    "stored lock key {:?} has no valid owner",
                    String::from_utf8_lossy(key).replace('\0', "\\0")
                ),
                None,
            )
        })?;
    Ok(owner.to_owned())
}

/// The value a lease lock's holder proclaimed: its key's value (empty
/// until a proclaim).
fn proclaimed(kv: &KeyValue) -> Option<String> {
    (!kv.value().is_empty()).then(|| String::from_utf8_lossy(kv.value()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_name_and_owner() {
        assert_eq!(split_key(b"ns/lock/a/b\0c:o", 8).unwrap(), ("a/b", "c:o"));
        for bad in [
            &b"ns/lock/a"[..],
            b"ns/lock/a\0nocolon",
            b"ns/lock/\xff\0c:o",
            b"ns",
        ] {
            assert!(
                matches!(split_key(bad, 8), Err(Error::Codec { .. })),
                "{bad:?}"
            );
        }
    }
}
