//! [`CacheBackend`] for [`RedisBackend`]: plain commands, one round trip per
//! call (multi-key calls as one `MULTI`/`EXEC` pipeline), invalidations over
//! the backend's pub/sub connection.
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
    fn cache_key(&self, cache: &str, key: &str) -> String {
        format!("{}:cache:{cache}:{key}", self.namespace())
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
        let keys: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
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
