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

/// Redis caps a string at 512 MiB.
const MAX_VALUE_BYTES: usize = 512 << 20;

impl RedisBackend {
    /// The Redis key of `key` in cache `cache`: `{namespace}:cache:{cache}:{key}`.
    pub fn cache_key(&self, cache: &str, key: &str) -> String {
        format!("{}:cache:{cache}:{key}", self.namespace())
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

    fn cache_channel(&self, cache: &str) -> String {
        format!("{}:cache:{cache}:invalidate", self.namespace())
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
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
        let mut conn = self.inner.conn.clone();
        let addr = &self.inner.addr;
        match keys {
            [] => Ok(Vec::new()),
            [key] => {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(self.cache_key(cache, key))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| map_err(e, addr))?;
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
                let values: Vec<Option<Vec<u8>>> = cmd
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| map_err(e, addr))?;
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
            self.each::<()>(cmds).await?;
            return self.publish(cache, origin, &keys).await;
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
        let mut conn = self.inner.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))
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
            let deleted: Vec<usize> = self.each(cmds).await?;
            self.publish(cache, origin, keys).await?;
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
        let mut conn = self.inner.conn.clone();
        let (deleted,): (usize,) = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))?;
        Ok(deleted)
    }

    async fn exists(&self, cache: &str, key: &str) -> Result<bool> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("EXISTS")
            .arg(self.cache_key(cache, key))
            .query_async::<bool>(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))
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
