//! The cache backend trait: byte values under namespaced keys, with TTLs,
//! batched calls and invalidation events.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::health::ComponentHealth;

/// The longest cache key, in bytes.
pub const MAX_CACHE_KEY_LEN: usize = 1024;

/// The longest cache name, in bytes.
pub const MAX_CACHE_NAME_LEN: usize = 256;

/// The longest TTL a cache entry may have.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest TTL a cache entry may have.
pub const MIN_CACHE_TTL: Duration = Duration::from_millis(1);

/// A change that makes local copies of some keys of one cache stale.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// These keys were written or deleted (by `origin`, when the backend
    /// knows it: the writer's own copies are then fresh).
    Invalidated {
        /// The keys, without the cache's namespace.
        keys: Vec<String>,
        /// The [`CacheBackend::set_many`] / [`CacheBackend::delete_many`]
        /// `origin` of the write, when the backend carries it.
        origin: Option<String>,
    },
    /// Changes may have been missed (a gap in the stream): every local copy
    /// of this cache is suspect.
    Resync,
}

/// A stream of [`CacheEvent`]s of one cache. It ends when the backend loses
/// the channel it came from (a dropped connection, a cancelled watch): the
/// listener must then treat every local copy as stale and subscribe again.
pub struct CacheEvents {
    inner: Pin<Box<dyn Stream<Item = CacheEvent> + Send>>,
}

impl CacheEvents {
    /// Wraps a backend's stream of events.
    pub fn new(stream: impl Stream<Item = CacheEvent> + Send + 'static) -> Self {
        CacheEvents {
            inner: Box::pin(stream),
        }
    }

    /// The next event, or `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<CacheEvent> {
        self.inner.next().await
    }
}

impl fmt::Debug for CacheEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheEvents")
    }
}

/// A shared key-value store for caches: byte values under keys namespaced by
/// cache name, each with a TTL. Implemented by the same backend values that
/// serve locks (`MemoryBackend`, `RedisBackend`, `EtcdBackend`).
///
/// Every method takes the cache name first; keys are the caller's, without
/// the namespace. Multi-key calls are one round trip (a pipeline, a
/// transaction) and apply all or nothing as far as the backend allows.
/// Writes and deletes make the backend publish a [`CacheEvent`] to every
/// [`watch`](CacheBackend::watch)er of the cache.
///
/// Backends check nothing the caller checks: [`MultiLevelCache`](crate::cache::MultiLevelCache)
/// validates names, keys, TTLs and sizes (with [`validate_cache_key`] and
/// friends) before calling.
#[async_trait]
pub trait CacheBackend: Send + Sync + fmt::Debug + 'static {
    /// The backend's name (`memory`, `redis`, `etcd`), for health reports and metrics.
    fn cache_backend_name(&self) -> &'static str;

    /// The largest value, in bytes, one call may store (etcd refuses large
    /// requests; Redis caps strings at 512 MiB).
    fn max_value_bytes(&self) -> usize;

    /// The values of `keys`, in order; `None` for a missing or expired key.
    async fn get_many(&self, cache: &str, keys: &[&str]) -> Result<Vec<Option<Bytes>>>;

    /// Stores every entry with `ttl`, replacing what was there, and
    /// publishes an invalidation of their keys tagged with `origin`.
    async fn set_many(
        &self,
        cache: &str,
        entries: &[(&str, Bytes)],
        ttl: Duration,
        origin: &str,
    ) -> Result<()>;

    /// Stores `value` under `key` with `ttl` only if the key holds no live
    /// value, and says whether it did: the fill of a load, which must not
    /// overwrite a value written while the loader ran. Publishes nothing
    /// (no instance holds a copy of an absent key). The default, for
    /// backends without a conditional write, is a plain
    /// [`set`](Self::set).
    async fn fill(
        &self,
        cache: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
        origin: &str,
    ) -> Result<bool> {
        self.set(cache, key, value, ttl, origin)
            .await
            .map(|()| true)
    }

    /// Deletes `keys`, publishes an invalidation of them tagged with
    /// `origin`, and returns how many existed.
    async fn delete_many(&self, cache: &str, keys: &[&str], origin: &str) -> Result<usize>;

    /// Whether `key` holds a live value.
    async fn exists(&self, cache: &str, key: &str) -> Result<bool>;

    /// The invalidation events of `cache`, from now on.
    async fn watch(&self, cache: &str) -> Result<CacheEvents>;

    /// One round trip to the server.
    async fn cache_health(&self) -> ComponentHealth;

    /// The value of `key`.
    async fn get(&self, cache: &str, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_many(cache, &[key]).await?.pop().flatten())
    }

    /// Stores one value.
    async fn set(
        &self,
        cache: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
        origin: &str,
    ) -> Result<()> {
        self.set_many(cache, &[(key, value)], ttl, origin).await
    }

    /// Deletes one key; whether it existed.
    async fn delete(&self, cache: &str, key: &str, origin: &str) -> Result<bool> {
        Ok(self.delete_many(cache, &[key], origin).await? > 0)
    }
}

/// Checks a cache name: non-empty, at most [`MAX_CACHE_NAME_LEN`] bytes,
/// no NUL byte, no `/` (names are path segments on etcd).
pub fn validate_cache_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("cache name is empty"));
    }
    if name.len() > MAX_CACHE_NAME_LEN {
        return Err(Error::invalid(format!(
            "cache name is {} bytes; the limit is {MAX_CACHE_NAME_LEN}",
            name.len()
        )));
    }
    if name.contains('\0') || name.contains('/') {
        return Err(Error::invalid(format!(
            "cache name {name:?} contains a NUL byte or a '/'; use letters, digits, '-', '_', '.' or ':'"
        )));
    }
    Ok(())
}

/// Checks a cache key: non-empty, at most [`MAX_CACHE_KEY_LEN`] bytes, no
/// NUL byte (the backends use it as a separator in invalidation messages).
pub fn validate_cache_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("cache key is empty"));
    }
    if key.len() > MAX_CACHE_KEY_LEN {
        return Err(Error::invalid(format!(
            "cache key is {} bytes; the limit is {MAX_CACHE_KEY_LEN}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(Error::invalid("cache key contains a NUL byte"));
    }
    Ok(())
}

/// Checks a cache TTL: between [`MIN_CACHE_TTL`] and [`MAX_CACHE_TTL`].
pub fn validate_cache_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::invalid(
            "cache TTL is zero; give a positive TTL such as 60s",
        ));
    }
    if ttl < MIN_CACHE_TTL {
        return Err(Error::invalid(format!(
            "cache TTL {ttl:?} is below {MIN_CACHE_TTL:?}; give a TTL such as 60s"
        )));
    }
    if ttl > MAX_CACHE_TTL {
        return Err(Error::invalid(format!(
            "cache TTL {ttl:?} is longer than a year"
        )));
    }
    Ok(())
}

/// Encodes an invalidation message: `origin`, then each key, separated by
/// NUL bytes (neither may contain one).
pub fn encode_invalidation(origin: &str, keys: &[&str]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(origin.len() + keys.iter().map(|k| k.len() + 1).sum::<usize>());
    out.extend_from_slice(origin.as_bytes());
    for key in keys {
        out.push(0);
        out.extend_from_slice(key.as_bytes());
    }
    out
}

/// Decodes a message of [`encode_invalidation`]; `None` when it is not one
/// (then the listener should resync).
pub fn decode_invalidation(message: &[u8]) -> Option<CacheEvent> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.split('\0');
    let origin = parts.next()?.to_owned();
    let keys: Vec<String> = parts.map(str::to_owned).collect();
    if keys.is_empty() {
        return None;
    }
    Some(CacheEvent::Invalidated {
        keys,
        origin: Some(origin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_round_trip() {
        let m = encode_invalidation("me", &["a", "b:c"]);
        assert_eq!(
            decode_invalidation(&m),
            Some(CacheEvent::Invalidated {
                keys: vec!["a".into(), "b:c".into()],
                origin: Some("me".into())
            })
        );
        assert_eq!(decode_invalidation(b"only-origin"), None);
        assert_eq!(decode_invalidation(&[0xff, 0, b'a']), None);
    }

    #[test]
    fn bad_names_keys_and_ttls_are_refused() {
        assert!(validate_cache_name("users").is_ok());
        for bad in ["", "a/b", "a\0b"] {
            assert!(
                matches!(validate_cache_name(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert!(validate_cache_name(&"n".repeat(MAX_CACHE_NAME_LEN + 1)).is_err());
        assert!(validate_cache_key("user:1/a").is_ok());
        assert!(validate_cache_key("").is_err());
        assert!(validate_cache_key("a\0").is_err());
        assert!(validate_cache_key(&"k".repeat(MAX_CACHE_KEY_LEN + 1)).is_err());
        assert!(validate_cache_ttl(Duration::ZERO).is_err());
        assert!(validate_cache_ttl(Duration::from_micros(10)).is_err());
        assert!(validate_cache_ttl(Duration::from_secs(60)).is_ok());
    }
}
