//! [`CacheBackend`] for [`RedisBackend`]: plain commands, one round trip per
//! call, invalidations over the backend's pub/sub connection.
//!
//! On one server a multi-key call is one `MGET`, or one `MULTI`/`EXEC`
//! pipeline of the writes (or the `DEL`) and the invalidation's `PUBLISH`.
//! On a cluster the keys are grouped by hash slot and each slot gets the
//! same: one `MGET`, or one `MULTI`/`EXEC` of its writes (or its `DEL`) and
//! a `PUBLISH` of its keys, sent to the slot's master; all slots' commands
//! are in flight at once, so the call still costs one round trip of wall
//! time. Each slot's writes and their invalidation are atomic together
//! (written and announced, or neither); the call as a whole is not: when
//! one slot's node fails, the other slots' writes stand.
//!
//! Keys of cache `c` under namespace `ns`: `ns:cache:c:key` (a string with
//! `PX` expiry), carrying no hash tag of their own, so a cache's keys spread
//! over the slots (unless the namespace, the cache name or the key contains
//! a `{tag}`: Redis hashes the first one, and then all keys sharing it share
//! a slot). Invalidations of `c` go to the channel `ns:cache:c:invalidate`
//! as `origin\0key\0key…`.

mod slots;

use std::time::Duration;

use bytes::Bytes;
use coord_core::cache::{
    CacheBackend, CacheEvent, CacheEvents, decode_invalidation, encode_invalidation,
};
use coord_core::{ComponentHealth, Error, Result, async_trait};
use futures::StreamExt;

use crate::backend::RedisBackend;
use crate::error::map_err;
use crate::lock::ttl_ms;

/// Redis caps a string at 512 MiB.
const MAX_VALUE_BYTES: usize = 512 << 20;

impl RedisBackend {
    /// The Redis key of `key` in cache `cache`: `<namespace>:cache:<cache>:<key>`.
    /// It adds no hash tag: on a cluster a cache's keys spread over the
    /// slots, unless a `{tag}` in the namespace, cache name or key pins them.
    pub fn cache_key(&self, cache: &str, key: &str) -> String {
        format!("{}:cache:{cache}:{key}", self.namespace())
    }

    fn cache_channel(&self, cache: &str) -> String {
        format!("{}:cache:{cache}:invalidate", self.namespace())
    }

    /// The cluster connection when the backend talks to a Redis Cluster,
    /// whose multi-key calls go slot by slot (one server takes one `MGET`
    /// or one `MULTI`/`EXEC` pipeline for all keys).
    fn cluster(&self) -> Option<&redis::cluster_async::ClusterConnection> {
        match &self.inner.conn {
            crate::connection::Connection::Cluster(c) => Some(c),
            crate::connection::Connection::Standalone(_)
            | crate::connection::Connection::Sentinel(_) => None,
        }
    }

    /// `get_many` on a cluster: one `MGET` per hash slot, all in flight at
    /// once, the values put back in the order of `keys`.
    async fn get_by_slot(&self, cache: &str, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.cache_key(cache, k)).collect();
        let groups = slots::group_by_slot(&redis_keys);
        let calls = groups.iter().map(|(_, positions)| {
            let mut cmd = redis::cmd("MGET");
            for &i in positions {
                cmd.arg(&redis_keys[i]);
            }
            let mut conn = self.inner.conn.clone();
            async move { cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn).await }
        });
        let answers = self
            .in_time(async {
                futures::future::try_join_all(calls)
                    .await
                    .map_err(|e| map_err(e, &self.inner.addr))
            })
            .await?;
        let mut values = vec![None; keys.len()];
        for ((_, positions), answer) in groups.iter().zip(answers) {
            if answer.len() != positions.len() {
                return Err(Error::backend(
                    "redis",
                    format!(
                        "redis at {} answered an MGET of {} keys with {} values",
                        self.inner.addr,
                        positions.len(),
                        answer.len()
                    ),
                    false,
                    None,
                ));
            }
            for (&i, value) in positions.iter().zip(answer) {
                values[i] = value.map(Bytes::from);
            }
        }
        Ok(values)
    }

    /// Runs one atomic pipeline per `(slot, pipeline)` on `cluster`, each
    /// on the master of its slot, all in flight at once; their answers in
    /// order, or the first error once every pipeline has finished (the
    /// others' writes stand: each is atomic on its own).
    async fn per_slot<T: redis::FromRedisValue>(
        &self,
        cluster: &redis::cluster_async::ClusterConnection,
        pipes: Vec<(redis::cluster_routing::Slot, redis::Pipeline)>,
    ) -> Result<Vec<T>> {
        let calls = pipes.into_iter().map(|(slot, pipe)| {
            let mut conn = slots::SlotConn::new(cluster.clone(), slot);
            async move { pipe.query_async::<T>(&mut conn).await }
        });
        self.in_time(async {
            futures::future::join_all(calls)
                .await
                .into_iter()
                .map(|r| r.map_err(|e| map_err(e, &self.inner.addr)))
                .collect()
        })
        .await
    }

    /// The invalidation of `keys` in `cache`, as the last command of `pipe`.
    fn publish_in(&self, pipe: &mut redis::Pipeline, cache: &str, origin: &str, keys: &[&str]) {
        pipe.cmd("PUBLISH")
            .arg(self.cache_channel(cache))
            .arg(encode_invalidation(origin, keys))
            .ignore();
    }

    /// A connection for one cache call: one of the cache pool's, or the
    /// shared multiplexed connection.
    async fn cache_conn(&self) -> Result<CacheConn> {
        match &self.inner.cache_pool {
            None => Ok(CacheConn::Shared(self.inner.conn.clone())),
            // Boxed, like the cluster paths below: a pool's checkout is a
            // large future, which every call's state would otherwise carry
            // (and copy) even on the shared connection.
            Some(pool) => Box::pin(pool.get())
                .await
                .map(CacheConn::Pooled)
                .map_err(|e| {
                    coord_core::Error::unavailable(
                        format!("redis at {}: no cache connection: {e}", self.inner.addr),
                        None,
                    )
                }),
        }
    }

    /// Runs `cmd` on a cache connection; taking the connection and the
    /// call together within the request timeout.
    async fn cache_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.in_time(async {
            let mut conn = self.cache_conn().await?;
            cmd.query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, &self.inner.addr))
        })
        .await
    }

    /// Runs `pipe` on a cache connection, like [`cache_query`](Self::cache_query).
    async fn cache_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        self.in_time(async {
            let mut conn = self.cache_conn().await?;
            pipe.query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, &self.inner.addr))
        })
        .await
    }

    async fn in_time<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let on_shared = self.inner.cache_pool.is_none();
        let limit = self.inner.request_timeout;
        self.bounded(limit, "a cache call", "request_timeout", on_shared, call)
            .await
    }
}

#[async_trait]
impl CacheBackend for RedisBackend {
    fn cache_backend_name(&self) -> &'static str {
        "redis"
    }

    fn max_value_bytes(&self) -> usize {
        MAX_VALUE_BYTES
    }

    async fn get_many(&self, cache: &str, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        match keys {
            [] => Ok(Vec::new()),
            [key] => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.cache_key(cache, key));
                let v: Option<Vec<u8>> = self.cache_query(&cmd).await?;
                Ok(vec![v.map(Bytes::from)])
            }
            keys if self.cluster().is_some() => Box::pin(self.get_by_slot(cache, keys)).await,
            keys => {
                let mut cmd = redis::cmd("MGET");
                for key in keys {
                    cmd.arg(self.cache_key(cache, key));
                }
                let values: Vec<Option<Vec<u8>>> = self.cache_query(&cmd).await?;
                Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
            }
        }
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
        let write = |pipe: &mut redis::Pipeline, redis_key: &str, value: &Bytes| {
            pipe.cmd("SET")
                .arg(redis_key)
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms(ttl))
                .ignore();
        };
        if let Some(cluster) = self.cluster() {
            // Per slot: its SETs and the invalidation of its keys, atomic
            // together, so whatever a slot wrote is announced.
            let redis_keys: Vec<String> = entries
                .iter()
                .map(|(k, _)| self.cache_key(cache, k))
                .collect();
            let pipes = slots::group_by_slot(&redis_keys)
                .into_iter()
                .map(|(slot, positions)| {
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    for &i in &positions {
                        write(&mut pipe, &redis_keys[i], &entries[i].1);
                    }
                    let keys: Vec<&str> = positions.iter().map(|&i| entries[i].0).collect();
                    self.publish_in(&mut pipe, cache, origin, &keys);
                    (slot, pipe)
                })
                .collect();
            return Box::pin(self.per_slot::<()>(cluster, pipes))
                .await
                .map(drop);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, value) in entries {
            write(&mut pipe, &self.cache_key(cache, key), value);
        }
        let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        self.publish_in(&mut pipe, cache, origin, &keys);
        self.cache_pipe::<()>(&pipe).await
    }

    async fn fill(
        &self,
        cache: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
        _origin: &str,
    ) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.cache_key(cache, key))
            .arg(value.as_ref())
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl));
        let stored: Option<String> = self.cache_query(&cmd).await?;
        Ok(stored.is_some())
    }

    async fn delete_many(&self, cache: &str, keys: &[&str], origin: &str) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        if let Some(cluster) = self.cluster() {
            // Per slot: one DEL of its keys and their invalidation, atomic
            // together; the counts add up.
            let redis_keys: Vec<String> = keys.iter().map(|k| self.cache_key(cache, k)).collect();
            let pipes = slots::group_by_slot(&redis_keys)
                .into_iter()
                .map(|(slot, positions)| {
                    let mut pipe = redis::pipe();
                    pipe.atomic();
                    let del = pipe.cmd("DEL");
                    for &i in &positions {
                        del.arg(&redis_keys[i]);
                    }
                    let group: Vec<&str> = positions.iter().map(|&i| keys[i]).collect();
                    self.publish_in(&mut pipe, cache, origin, &group);
                    (slot, pipe)
                })
                .collect();
            let deleted: Vec<(usize,)> = Box::pin(self.per_slot(cluster, pipes)).await?;
            return Ok(deleted.into_iter().map(|(n,)| n).sum());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let del = pipe.cmd("DEL");
        for key in keys {
            del.arg(self.cache_key(cache, key));
        }
        self.publish_in(&mut pipe, cache, origin, keys);
        let (deleted,): (usize,) = self.cache_pipe(&pipe).await?;
        Ok(deleted)
    }

    async fn exists(&self, cache: &str, key: &str) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.cache_key(cache, key));
        self.cache_query::<bool>(&cmd).await
    }

    async fn watch(&self, cache: &str) -> Result<CacheEvents> {
        let messages = self
            .inner
            .pubsub
            .messages(self.cache_channel(cache))
            .await?;
        Ok(CacheEvents::new(messages.map(|m| {
            m.and_then(|payload| decode_invalidation(&payload))
                .unwrap_or(CacheEvent::Resync)
        })))
    }

    async fn cache_health(&self) -> ComponentHealth {
        self.ping().await
    }
}

/// The connection of one cache call.
enum CacheConn {
    Shared(crate::connection::Connection),
    Pooled(deadpool_redis::Connection),
}

impl redis::aio::ConnectionLike for CacheConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            CacheConn::Shared(c) => c.req_packed_command(cmd),
            CacheConn::Pooled(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            CacheConn::Shared(c) => c.req_packed_commands(cmd, offset, count),
            CacheConn::Pooled(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            CacheConn::Shared(c) => c.get_db(),
            CacheConn::Pooled(c) => c.get_db(),
        }
    }
}
