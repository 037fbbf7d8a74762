//! [`LockBackend`] for [`RedisBackend`]: one `EVALSHA` per operation.

use std::time::Duration;

use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, Error, FencingToken, LockBackend, LockGrant,
    LockOwner, ReleaseEvents, Result,
};
use redis::{Cmd, Script, Value};

use crate::backend::RedisBackend;
use crate::error::unexpected_reply;

/// The lock scripts, hashed once per backend.
pub(crate) struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    force_release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            acquire: Script::new(include_str!("scripts/acquire.lua")),
            renew: Script::new(include_str!("scripts/renew.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            force_release: Script::new(include_str!("scripts/force_release.lua")),
        }
    }
}

/// The keys of one lock in one buffer: `{ns}:lock:{name}:fence`, of which
/// the lock key is a prefix. One allocation per operation.
struct LockKeys {
    buf: String,
    lock_len: usize,
}

impl LockKeys {
    const FENCE: &'static str = ":fence";
    const RELEASED: &'static str = ":released";

    fn new(prefix: &str, name: &str) -> Self {
        let mut buf = String::with_capacity(prefix.len() + name.len() + 1 + Self::RELEASED.len());
        buf.push_str(prefix);
        buf.push_str(name);
        buf.push('}');
        let lock_len = buf.len();
        LockKeys { buf, lock_len }
    }

    fn lock(&self) -> &str {
        &self.buf[..self.lock_len]
    }

    fn with_fence(mut self) -> (Self, usize) {
        self.buf.push_str(Self::FENCE);
        let end = self.buf.len();
        (self, end)
    }

    fn into_channel(mut self) -> String {
        self.buf.truncate(self.lock_len);
        self.buf.push_str(Self::RELEASED);
        self.buf
    }
}

/// An `EVALSHA` of `script` with `keys` keys; arguments follow.
fn evalsha(script: &Script, numkeys: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(7, 160);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(numkeys);
    cmd
}

/// A lease in whole milliseconds, rounded up so it never shrinks to 0.
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

fn not_held(name: &str, owner: &LockOwner) -> Error {
    Error::NotHeld(format!("lock {name:?} is not held by {owner}"))
}

#[coord_core::async_trait]
impl LockBackend for RedisBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    async fn try_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<AcquireOutcome> {
        let ttl = self.inner.caps.effective_ttl(ttl);
        let (keys, fence_end) = LockKeys::new(&self.inner.lock_prefix, name).with_fence();
        let script = &self.inner.scripts.acquire;
        let mut cmd = evalsha(script, 2);
        cmd.arg(keys.lock())
            .arg(&keys.buf[..fence_end])
            .arg(owner.as_str())
            .arg(ttl_ms(ttl));
        let reply: Value = self.eval(script, &cmd).await?;
        parse_acquire(&reply, &keys.buf[..fence_end], ttl)
    }

    async fn renew(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let ttl = self.inner.caps.effective_ttl(ttl);
        let keys = LockKeys::new(&self.inner.lock_prefix, name);
        let script = &self.inner.scripts.renew;
        let mut cmd = evalsha(script, 1);
        cmd.arg(keys.lock()).arg(owner.as_str()).arg(ttl_ms(ttl));
        match self.eval::<i64>(script, &cmd).await? {
            1 => Ok(()),
            _ => Err(not_held(name, owner)),
        }
    }

    async fn release(&self, name: &str, owner: &LockOwner) -> Result<()> {
        let keys = LockKeys::new(&self.inner.lock_prefix, name);
        let script = &self.inner.scripts.release;
        let mut cmd = evalsha(script, 1);
        cmd.arg(keys.lock()).arg(owner.as_str());
        match self.eval::<i64>(script, &cmd).await? {
            1 => Ok(()),
            _ => Err(not_held(name, owner)),
        }
    }

    async fn subscribe(&self, name: &str) -> Result<ReleaseEvents> {
        let channel = LockKeys::new(&self.inner.lock_prefix, name).into_channel();
        self.inner.pubsub.subscribe(channel).await
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        let keys = LockKeys::new(&self.inner.lock_prefix, name);
        let script = &self.inner.scripts.force_release;
        let mut cmd = evalsha(script, 1);
        cmd.arg(keys.lock());
        Ok(self.eval::<i64>(script, &cmd).await? == 1)
    }

    async fn health(&self) -> ComponentHealth {
        self.ping().await
    }

    async fn close(&self) {
        self.inner.pubsub.close().await;
    }
}

/// Decodes `acquire.lua`'s reply: a token (>= 0), `-2 - pttl` (< 0) when
/// held by someone else, or the corrupted fence value (a string).
fn parse_acquire(reply: &Value, fence_key: &str, ttl: Duration) -> Result<AcquireOutcome> {
    match reply {
        Value::Int(token @ 0..) => Ok(AcquireOutcome::Granted(LockGrant {
            token: FencingToken::new(token.unsigned_abs()),
            ttl,
        })),
        Value::Int(held) => Ok(AcquireOutcome::Held {
            // -1 (no expiry) and anything odd become "no hint".
            retry_after: u64::try_from(-2 - held).ok().map(Duration::from_millis),
        }),
        Value::BulkString(raw) => Err(corrupt_fence(fence_key, &String::from_utf8_lossy(raw))),
        _ => Err(unexpected_reply("acquire", reply)),
    }
}

fn corrupt_fence(fence_key: &str, value: &str) -> Error {
    let shown: String = value.chars().take(64).collect();
    Error::codec(
        format!(
            "fencing key {fence_key:?} holds {shown:?}, not a token (an integer from 1 to 2^53 - 1); \
             it was changed outside coord — delete it only if no holder relies on its tokens"
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = LockKeys::new("coord:lock:{", "orders/42");
        assert_eq!(keys.lock(), "coord:lock:{orders/42}");
        let (keys, end) = keys.with_fence();
        assert_eq!(&keys.buf[..end], "coord:lock:{orders/42}:fence");
        assert_eq!(keys.into_channel(), "coord:lock:{orders/42}:released");
    }

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_micros(1)), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::from_secs(10)), 10_000);
    }

    #[test]
    fn acquire_replies_decode() {
        let ttl = Duration::from_secs(1);
        let granted = Value::Int(7);
        assert_eq!(
            parse_acquire(&granted, "f", ttl).unwrap(),
            AcquireOutcome::Granted(LockGrant {
                token: FencingToken::new(7),
                ttl
            })
        );
        let held = Value::Int(-252);
        assert_eq!(
            parse_acquire(&held, "f", ttl).unwrap(),
            AcquireOutcome::Held {
                retry_after: Some(Duration::from_millis(250))
            }
        );
        let expiring = Value::Int(-2);
        assert_eq!(
            parse_acquire(&expiring, "f", ttl).unwrap(),
            AcquireOutcome::Held {
                retry_after: Some(Duration::ZERO)
            }
        );
        let no_expiry = Value::Int(-1);
        assert_eq!(
            parse_acquire(&no_expiry, "f", ttl).unwrap(),
            AcquireOutcome::Held { retry_after: None }
        );
        let corrupt = Value::BulkString(b"banana".to_vec());
        let err = parse_acquire(&corrupt, "f", ttl).unwrap_err();
        assert!(matches!(err, Error::Codec { .. }) && err.to_string().contains("banana"));
        assert!(matches!(
            parse_acquire(&Value::Nil, "f", ttl),
            Err(Error::Backend { .. })
        ));
        assert!(matches!(
            parse_acquire(&Value::Array(vec![]), "f", ttl),
            Err(Error::Backend { .. })
        ));
    }
}
