//! [`CacheBackend`] for [`EtcdBackend`]: one request per call (multi-key
//! calls in one transaction), TTLs through leases shared per TTL bucket
//! (see [`leases`]), invalidations from a watch of the cache's prefix.
//!
//! Keys of cache `c` under namespace `ns`: `{ns}/cache/{c}/{key}`, each
//! value stored after its writer's origin and a NUL byte.

pub(crate) mod leases;

use std::time::Duration;

use bytes::Bytes;
use coord_core::cache::{CacheBackend, CacheEvent, CacheEvents};
use coord_core::{ComponentHealth, Error, Result, async_trait};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
    WatchOptions, WatchStream,
};

use crate::backend::EtcdBackend;
use crate::error::{call, is_lease_not_found};

/// The largest value: etcd refuses requests over 1.5 MiB by default
/// (`--max-request-bytes`), and a request carries more than the value.
const MAX_VALUE_BYTES: usize = 1 << 20;

/// The most operations one transaction carries (etcd's default
/// `--max-txn-ops`); longer calls go as several transactions.
const MAX_TXN_OPS: usize = 128;

/// The largest batch of values one `set_many` sends in its transaction.
const MAX_REQUEST_BYTES: usize = (3 << 20) / 2 - (64 << 10);

/// The stored form of a value: the writer's origin, a NUL byte, the value
/// (the watch event of a put carries the value, and so its writer, who then
/// keeps its own fresh copy).
fn wrap(origin: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(origin.len() + 1 + value.len());
    out.extend_from_slice(origin.as_bytes());
    out.push(0);
    out.extend_from_slice(value);
    out
}

/// The value of a stored form (a value written by someone else, without
/// the origin, is returned whole: the cache's checks refuse it).
fn unwrap_value(stored: &[u8]) -> Bytes {
    match stored.iter().position(|b| *b == 0) {
        Some(i) => Bytes::copy_from_slice(&stored[i + 1..]),
        None => Bytes::copy_from_slice(stored),
    }
}

/// The writer of a stored form.
fn origin_of(stored: &[u8]) -> Option<String> {
    let i = stored.iter().position(|b| *b == 0)?;
    String::from_utf8(stored[..i].to_vec()).ok()
}

impl EtcdBackend {
    /// Runs the transaction `build` makes for a lease of `ttl`'s bucket. A
    /// lease etcd no longer knows (revoked, or lost with the cluster's
    /// data) is replaced once.
    async fn leased_txn(&self, ttl: Duration, build: impl Fn(i64) -> Txn) -> Result<TxnResponse> {
        let mut kv = self.inner.client.kv_client();
        for attempt in 0..2 {
            let lease = self.inner.cache_leases.for_ttl(ttl).await?;
            let txn = kv.txn(build(lease));
            match crate::error::deadline("write cache values", self.inner.timeout, txn).await? {
                Ok(resp) => return Ok(resp),
                Err(e) if attempt == 0 && is_lease_not_found(&e) => {
                    self.inner.cache_leases.forget(lease);
                }
                Err(e) => return Err(crate::error::map("write cache values", e)),
            }
        }
        Err(Error::unavailable(
            "write cache values: etcd lost the new lease at once",
            None,
        ))
    }

    /// The prefix of every key of cache `cache`: `{namespace}/cache/{cache}/`.
    pub fn cache_prefix(&self, cache: &str) -> String {
        format!("{}cache/{cache}/", self.inner.prefix)
    }
}

#[async_trait]
impl CacheBackend for EtcdBackend {
    fn cache_backend_name(&self) -> &'static str {
        "etcd"
    }

    fn max_value_bytes(&self) -> usize {
        MAX_VALUE_BYTES
    }

    async fn get_many(&self, cache: &str, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        if keys.len() > MAX_TXN_OPS {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(MAX_TXN_OPS) {
                out.extend(self.get_many(cache, chunk).await?);
            }
            return Ok(out);
        }
        let prefix = self.cache_prefix(cache);
        let mut kv = self.inner.client.kv_client();
        if let [key] = keys {
            let resp = call(
                "read a cache value",
                self.inner.timeout,
                kv.get(format!("{prefix}{key}"), None),
            )
            .await?;
            return Ok(vec![resp.kvs().first().map(|kv| unwrap_value(kv.value()))]);
        }
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::get(format!("{prefix}{k}"), None))
            .collect();
        let resp = call(
            "read cache values",
            self.inner.timeout,
            kv.txn(Txn::new().and_then(ops)),
        )
        .await?;
        Ok(resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| unwrap_value(kv.value())),
                _ => None,
            })
            .collect())
    }

    async fn set_many(
        &self,
        cache: &str,
        entries: &[(&str, Bytes)],
        ttl: Duration,
        origin: &str,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > MAX_TXN_OPS {
            // Each transaction of up to MAX_TXN_OPS entries is atomic.
            for chunk in entries.chunks(MAX_TXN_OPS) {
                self.set_many(cache, chunk, ttl, origin).await?;
            }
            return Ok(());
        }
        let prefix = self.cache_prefix(cache);
        let size: usize = entries
            .iter()
            .map(|(k, v)| prefix.len() + k.len() + v.len() + 32)
            .sum();
        if size > MAX_REQUEST_BYTES {
            return Err(Error::invalid(format!(
                "a cache write of {size} bytes is over etcd's request limit \
                 ({MAX_REQUEST_BYTES} bytes with room for the request); write fewer or smaller values per call"
            )));
        }
        self.leased_txn(ttl, |lease| {
            let ops: Vec<TxnOp> = entries
                .iter()
                .map(|(k, v)| {
                    TxnOp::put(
                        format!("{prefix}{k}"),
                        wrap(origin, v),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                })
                .collect();
            Txn::new().and_then(ops)
        })
        .await
        .map(|_| ())
    }

    async fn fill(
        &self,
        cache: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
        origin: &str,
    ) -> Result<bool> {
        let full = format!("{}{key}", self.cache_prefix(cache));
        let resp = self
            .leased_txn(ttl, |lease| {
                Txn::new()
                    .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        full.clone(),
                        wrap(origin, &value),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
            })
            .await?;
        Ok(resp.succeeded())
    }

    async fn delete_many(&self, cache: &str, keys: &[&str], origin: &str) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        if keys.len() > MAX_TXN_OPS {
            let mut deleted = 0;
            for chunk in keys.chunks(MAX_TXN_OPS) {
                deleted += self.delete_many(cache, chunk, origin).await?;
            }
            return Ok(deleted);
        }
        let prefix = self.cache_prefix(cache);
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::delete(format!("{prefix}{k}"), None))
            .collect();
        let mut kv = self.inner.client.kv_client();
        let resp = call(
            "delete cache values",
            self.inner.timeout,
            kv.txn(Txn::new().and_then(ops)),
        )
        .await?;
        Ok(resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Delete(d) => usize::try_from(d.deleted()).unwrap_or(0),
                _ => 0,
            })
            .sum())
    }

    async fn exists(&self, cache: &str, key: &str) -> Result<bool> {
        let mut kv = self.inner.client.kv_client();
        let resp = call(
            "check a cache key",
            self.inner.timeout,
            kv.get(
                format!("{}{key}", self.cache_prefix(cache)),
                Some(GetOptions::new().with_count_only()),
            ),
        )
        .await?;
        Ok(resp.count() > 0)
    }

    async fn watch(&self, cache: &str) -> Result<CacheEvents> {
        let prefix = self.cache_prefix(cache);
        let options = WatchOptions::new().with_prefix();
        let created = crate::watch::open_confirmed(&self.inner.client, prefix.clone(), options);
        let stream = call("watch a cache", self.inner.timeout, created).await?;
        Ok(CacheEvents::new(futures::stream::unfold(
            (stream, prefix),
            next_invalidation,
        )))
    }

    async fn cache_health(&self) -> ComponentHealth {
        self.ping().await
    }
}

/// The keys changed by the next watch response, tagged with their writer
/// when every change in it was a put by one writer (a delete, or a mix,
/// carries no origin and so evicts every instance's copy). The stream ends
/// with the watch (cancelled, compacted, or the connection lost).
async fn next_invalidation(
    (mut stream, prefix): (WatchStream, String),
) -> Option<(CacheEvent, (WatchStream, String))> {
    loop {
        match stream.message().await {
            Ok(Some(resp)) if resp.canceled() => return None,
            Ok(Some(resp)) => {
                let mut keys = Vec::new();
                let mut origins = Vec::new();
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(key) = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.strip_prefix(prefix.as_str()))
                    else {
                        continue;
                    };
                    keys.push(key.to_owned());
                    origins.push(match event.event_type() {
                        EventType::Put => origin_of(kv.value()),
                        EventType::Delete => None,
                    });
                }
                if !keys.is_empty() {
                    let origin = match origins.split_first() {
                        Some((first, rest)) if rest.iter().all(|o| o == first) => first.clone(),
                        _ => None,
                    };
                    let event = CacheEvent::Invalidated { keys, origin };
                    return Some((event, (stream, prefix)));
                }
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_carry_their_writer() {
        let stored = wrap("a1b2", b"\xc0\x01value\0with nul");
        assert_eq!(origin_of(&stored).as_deref(), Some("a1b2"));
        assert_eq!(&unwrap_value(&stored)[..], b"\xc0\x01value\0with nul");
        assert_eq!(&unwrap_value(b"foreign")[..], b"foreign");
        assert_eq!(origin_of(b"foreign"), None);
    }
}
