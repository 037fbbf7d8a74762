//! [`CacheBackend`] for [`RedisBackend`]: plain commands, one round trip per
//! call on one server (multi-key calls as one `MGET` or one `MULTI`/`EXEC`
//! pipeline; on a cluster one command per key, all in flight at once),
//! invalidations over the backend's pub/sub connection.
//!
//! Keys of cache `c` under namespace `ns`: `{ns}:cache:{c}:{key}` (a string
//! with `PX` expiry); invalidations of `c` go to the channel
//! `{ns}:cache:{c}:invalidate` as `origin\0key\0key…`.

use std::time::Duration;

use bytes::Bytes;
use coord_core::cache::{
    CacheBackend, CacheEvent, CacheEvents, decode_invalidation, encode_invalidation,
};
use coord_core::{ComponentHealth, Result, async_trait};
use futures::StreamExt;

use crate::backend::RedisBackend;
use crate::error::map_err;
use crate::lock::ttl_ms;

/// Redis caps a string at 512 MiB.
const MAX_VALUE_BYTES: usize = 512 << 20;

impl RedisBackend {
    /// The Redis key of `key` in cache `cache`: `{namespace}:cache:{cache}:{key}`.
    pub fn cache_key(&self, cache: &str, key: &str) -> String {
        format!("{}:cache:{cache}:{key}", self.namespace())
    }

    fn cache_channel(&self, cache: &str) -> String {
        format!("{}:cache:{cache}:invalidate", self.namespace())
    }

    /// Whether the keys of one call may live on several nodes (a cluster):
    /// then each key gets its own command, all sent at once, where one
    /// server takes one `MGET` or one `MULTI`/`EXEC` pipeline.
    fn spread(&self) -> bool {
        self.inner.mode == crate::config::RedisMode::Cluster
    }

    /// Runs `cmds` concurrently (a cluster routes each to its node).
    async fn each<T: redis::FromRedisValue>(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<T>> {
        let calls = cmds.into_iter().map(|cmd| {
            let mut conn = self.inner.conn.clone();
            async move { cmd.query_async::<T>(&mut conn).await }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| map_err(e, &self.inner.addr)))
            .collect()
    }

    async fn publish(&self, cache: &str, origin: &str, keys: &[&str]) -> Result<()> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("PUBLISH")
            .arg(self.cache_channel(cache))
            .arg(encode_invalidation(origin, keys))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))
    }

    /// A connection for one cache call: one of the cache pool's, or the
    /// shared multiplexed connection.
    async fn cache_conn(&self) -> Result<CacheConn> {
        match &self.inner.cache_pool {
            None => Ok(CacheConn::Shared(self.inner.conn.clone())),
            Some(pool) => pool.get().await.map(CacheConn::Pooled).map_err(|e| {
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
        match tokio::time::timeout(self.inner.request_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(coord_core::Error::Timeout(format!(
                "redis at {} did not answer a cache call within {:?}",
                self.inner.addr, self.inner.request_timeout
            ))),
        }
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
            keys if self.spread() => {
                let cmds = keys
                    .iter()
                    .map(|k| {
                        let mut cmd = redis::cmd("GET");
                        cmd.arg(self.cache_key(cache, k));
                        cmd
                    })
                    .collect();
                let values: Vec<Option<Vec<u8>>> = self.each(cmds).await?;
                Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
            }
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
        let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        if self.spread() {
            let cmds = entries
                .iter()
                .map(|(key, value)| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(self.cache_key(cache, key))
                        .arg(value.as_ref())
                        .arg("PX")
                        .arg(ttl_ms(ttl));
                    cmd
                })
                .collect();
            // Invalidate whatever was written, even when some node failed.
            let written = self.each::<()>(cmds).await;
            let published = self.publish(cache, origin, &keys).await;
            return written.and(published);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, value) in entries {
            pipe.cmd("SET")
                .arg(self.cache_key(cache, key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms(ttl))
                .ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(self.cache_channel(cache))
            .arg(encode_invalidation(origin, &keys))
            .ignore();
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
        if self.spread() {
            let cmds = keys
                .iter()
                .map(|k| {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(self.cache_key(cache, k));
                    cmd
                })
                .collect();
            let deleted: Result<Vec<usize>> = self.each(cmds).await;
            let published = self.publish(cache, origin, keys).await;
            let deleted = deleted?;
            published?;
            return Ok(deleted.into_iter().sum());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let del = pipe.cmd("DEL");
        for key in keys {
            del.arg(self.cache_key(cache, key));
        }
        pipe.cmd("PUBLISH")
            .arg(self.cache_channel(cache))
            .arg(encode_invalidation(origin, keys))
            .ignore();
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
