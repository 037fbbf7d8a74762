//! [`RedisFencedStore`]: the fenced-store recipe on Redis, one Lua
//! compare-and-set per write.

use std::fmt;

use coord_core::fence::{FencedStore, stale_token};
use coord_core::{Error, FencingToken, Result};
use redis::{Script, Value};

use crate::backend::RedisBackend;
use crate::error::{map_err, unexpected_reply};

/// A key-value store on Redis whose writes are fenced: a write carrying an
/// older fencing token than the one stored with the key is refused with
/// [`Error::Conflict`], so a holder that lost its lock (a long GC pause, a
/// partition, a server restart that forgot the lock) cannot overwrite the
/// work of the holder after it.
///
/// Each key is a hash `{ns}:fenced:{key}` with the fields `token` (decimal)
/// and `value`, under the namespace of the [`RedisBackend`] it is built
/// from; a write is one `EVALSHA` of `fenced_write.lua`, which compares the
/// tokens and replaces both fields atomically. Equal tokens are accepted
/// (one holder writes many times under one grant). The store shares the
/// backend's connection and works on a Redis Cluster too (one key per call).
///
/// The stored tokens live as long as the keys do: on a server without
/// persistence a restart forgets them along with the locks. The lock
/// tokens of coord's Redis backend still increase across such a restart
/// (they follow the server clock), so a stale holder is refused as soon as
/// a newer holder has written once.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use coord_core::{FencedStore, LockClient, Settings};
/// use coord_redis::{RedisBackend, RedisFencedStore};
///
/// # async fn run() -> coord_core::Result<()> {
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379", &Settings::default()).await?;
/// let store = RedisFencedStore::new(&backend);
/// let client = LockClient::new(Arc::new(backend));
///
/// let guard = client.lock("orders/42").ttl(Duration::from_secs(10)).build().acquire().await?;
/// // Refused with `Error::Conflict` (and nothing written) once a holder with a
/// // newer token has written: this holder then lost the lock and must stop.
/// store.write("orders/42/state", guard.fencing_token(), b"shipped").await?;
/// let (token, value) = store.read("orders/42/state").await?.expect("written");
/// assert!(token >= guard.fencing_token() && !value.is_empty());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisFencedStore {
    backend: RedisBackend,
    /// `{ns}:fenced:`, the start of every key.
    prefix: String,
    script: Script,
}

impl fmt::Debug for RedisFencedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFencedStore")
            .field("backend", &self.backend)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisFencedStore {
    /// A fenced store on `backend`'s connection, with keys under its namespace.
    pub fn new(backend: &RedisBackend) -> Self {
        let namespace = backend.namespace();
        RedisFencedStore {
            backend: backend.clone(),
            prefix: format!("{namespace}:fenced:"),
            script: Script::new(include_str!("scripts/fenced_write.lua")),
        }
    }

    /// The Redis key (a hash with the fields `token` and `value`) that
    /// holds `key`: `{ns}:fenced:{key}`.
    pub fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    fn checked_key(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            return Err(Error::invalid("fenced key is empty"));
        }
        Ok(self.redis_key(key))
    }

    fn addr(&self) -> &str {
        &self.backend.inner.addr
    }
}

#[coord_core::async_trait]
impl FencedStore for RedisFencedStore {
    async fn write(&self, key: &str, token: FencingToken, value: &[u8]) -> Result<()> {
        let redis_key = self.checked_key(key)?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(1)
            .arg(&redis_key)
            .arg(token.as_u64())
            .arg(value);
        let reply = self
            .backend
            .eval_acked_raw::<Value>(&self.script, &cmd)
            .await
            .map_err(|e| map_err(e, self.addr()))?;
        parse_write(&reply, key, &redis_key, token, self.addr())
    }

    async fn read(&self, key: &str) -> Result<Option<(FencingToken, Vec<u8>)>> {
        let redis_key = self.checked_key(key)?;
        let mut conn = self.backend.inner.conn.clone();
        let (token, value): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(&redis_key)
            .arg("token")
            .arg("value")
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, self.addr()))?;
        let Some(raw) = token else {
            return Ok(None);
        };
        let token = parse_token(&raw).ok_or_else(|| corrupt_token(&redis_key, &raw))?;
        let value = value.ok_or_else(|| {
            Error::codec(
                format!(
                    "fenced key {redis_key:?} holds a token but no value; it was changed \
                     outside coord"
                ),
                None,
            )
        })?;
        Ok(Some((token, value)))
    }
}

/// Decodes `fenced_write.lua`'s reply (see the script's header).
fn parse_write(
    reply: &Value,
    key: &str,
    redis_key: &str,
    token: FencingToken,
    addr: &str,
) -> Result<()> {
    match reply {
        Value::Int(1) => Ok(()),
        Value::Array(pair) if pair.len() == 2 => match (&pair[0], &pair[1]) {
            (Value::BulkString(kind), Value::BulkString(raw)) if kind == b"stale" => {
                let newest = parse_token(raw).ok_or_else(|| corrupt_token(redis_key, raw))?;
                Err(stale_token(key, token, newest))
            }
            (Value::BulkString(kind), Value::BulkString(raw)) if kind == b"corrupt" => {
                Err(corrupt_token(redis_key, raw))
            }
            _ => Err(unexpected_reply("fenced_write", reply)),
        },
        Value::ServerError(e) => Err(map_err(e.clone().into(), addr)),
        _ => Err(unexpected_reply("fenced_write", reply)),
    }
}

/// A stored token: a u64 in decimal, without leading zeros (as the script
/// checks it).
fn parse_token(raw: &[u8]) -> Option<FencingToken> {
    let leading_zero = raw.len() > 1 && raw[0] == b'0';
    if raw.is_empty() || leading_zero || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw)
        .ok()?
        .parse()
        .ok()
        .map(FencingToken::new)
}

fn corrupt_token(redis_key: &str, raw: &[u8]) -> Error {
    let shown: String = String::from_utf8_lossy(raw).chars().take(64).collect();
    Error::codec(
        format!(
            "fenced key {redis_key:?} holds the token {shown:?}, not a fencing token (an \
             integer from 0 to 2^64 - 1); it was changed outside coord"
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn write_replies_decode() {
        let t = FencingToken::new(5);
        assert!(parse_write(&Value::Int(1), "k", "ns:fenced:k", t, "h").is_ok());
        let stale = Value::Array(vec![bulk("stale"), bulk("18446744073709551615")]);
        let err = parse_write(&stale, "k", "ns:fenced:k", t, "h").unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
        assert!(err.to_string().contains("18446744073709551615"), "{err}");
        let corrupt = Value::Array(vec![bulk("corrupt"), bulk("banana")]);
        let err = parse_write(&corrupt, "k", "ns:fenced:k", t, "h").unwrap_err();
        assert!(matches!(err, Error::Codec { .. }) && err.to_string().contains("banana"));
        for odd in [Value::Nil, Value::Int(0), Value::Array(vec![bulk("x")])] {
            assert!(matches!(
                parse_write(&odd, "k", "ns:fenced:k", t, "h"),
                Err(Error::Backend { .. })
            ));
        }
    }

    #[test]
    fn tokens_parse_only_as_u64_decimals() {
        assert_eq!(parse_token(b"0"), Some(FencingToken::new(0)));
        assert_eq!(
            parse_token(b"18446744073709551615"),
            Some(FencingToken::new(u64::MAX))
        );
        for bad in [
            &b""[..],
            b"-1",
            b"1.5",
            b"007",
            b" 1",
            b"18446744073709551616",
            b"x",
        ] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
    }
}
