//! [`LockBackend`] for [`RedisBackend`]: one `EVALSHA` per operation, shared
//! by concurrent acquisitions (and releases) on a standalone server.

use std::sync::Arc;
use std::time::Duration;

use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, Error, FencingToken, LockBackend, LockGrant,
    LockOwner, ReleaseEvents, Result,
};
use redis::{Cmd, Script, Value};

use crate::backend::RedisBackend;
use crate::batch::Batcher;
use crate::error::{batch_item_error, map_err, unexpected_reply};

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

/// The batch queues of the two hot operations (see [`crate::batch`]).
pub(crate) struct LockBatches {
    acquire: Arc<Batcher<AcquireCall, AcquireOutcome>>,
    release: Arc<Batcher<ReleaseCall, ()>>,
}

impl LockBatches {
    pub(crate) fn new() -> Self {
        LockBatches {
            acquire: Arc::new(Batcher::new()),
            release: Arc::new(Batcher::new()),
        }
    }
}

/// One acquisition attempt, as a batch carries it.
struct AcquireCall {
    keys: LockKeys,
    fence_end: usize,
    owner: LockOwner,
    ttl: Duration,
}

impl AcquireCall {
    fn fence(&self) -> &str {
        &self.keys.buf[..self.fence_end]
    }
}

/// One release, as a batch carries it.
struct ReleaseCall {
    keys: LockKeys,
    name: Box<str>,
    owner: LockOwner,
}

/// Sends `call` through `batcher` (standalone servers), or alone.
async fn send_one<I, O, S, F>(
    batcher: Option<&Arc<Batcher<I, O>>>,
    call: I,
    what: &str,
    send: S,
) -> Result<O>
where
    I: Send + 'static,
    O: Send + 'static,
    S: Fn(Vec<I>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Vec<Result<O>>> + Send + 'static,
{
    match batcher {
        Some(batcher) => batcher.call(call, send).await,
        None => send(vec![call])
            .await
            .pop()
            .unwrap_or_else(|| Err(unexpected_reply(what, &Value::Nil))),
    }
}

/// Sends `calls` as one `acquire.lua` call; one outcome per call, in order.
async fn send_acquires(
    backend: RedisBackend,
    calls: Vec<AcquireCall>,
) -> Vec<Result<AcquireOutcome>> {
    let script = &backend.inner.scripts.acquire;
    let mut cmd = evalsha(script, 2 * calls.len());
    for c in &calls {
        cmd.arg(c.keys.lock()).arg(c.fence());
    }
    for c in &calls {
        cmd.arg(c.owner.as_str()).arg(ttl_ms(c.ttl));
    }
    let addr = &backend.inner.addr;
    let reply = backend.eval_raw::<Value>(script, &cmd).await;
    split_reply(reply, calls.len(), addr, "acquire", |i, v| {
        parse_acquire(v, calls[i].fence(), calls[i].ttl, addr)
    })
}

/// Sends `calls` as one `release.lua` call; one result per call, in order.
async fn send_releases(backend: RedisBackend, calls: Vec<ReleaseCall>) -> Vec<Result<()>> {
    let script = &backend.inner.scripts.release;
    let mut cmd = evalsha(script, calls.len());
    for c in &calls {
        cmd.arg(c.keys.lock());
    }
    for c in &calls {
        cmd.arg(c.owner.as_str());
    }
    let addr = &backend.inner.addr;
    let reply = backend.eval_raw::<Value>(script, &cmd).await;
    split_reply(reply, calls.len(), addr, "release", |i, v| match v {
        Value::Int(1) => Ok(()),
        Value::Int(_) => Err(not_held(&calls[i].name, &calls[i].owner)),
        Value::ServerError(e) => Err(map_err(e.clone().into(), addr)),
        other => Err(unexpected_reply("release", other)),
    })
}

/// The replies of a batch of `n` calls: the reply itself for one call, an
/// array of replies for more; a failed request fails every call alike.
fn split_reply<O>(
    reply: redis::RedisResult<Value>,
    n: usize,
    addr: &str,
    what: &str,
    parse: impl Fn(usize, &Value) -> Result<O>,
) -> Vec<Result<O>> {
    match reply {
        Ok(reply) if n == 1 => vec![parse(0, &reply)],
        Ok(Value::Array(replies)) if replies.len() == n => replies
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Array(pair)
                    if pair.len() == 2 && pair[0] == Value::BulkString(b"error".to_vec()) =>
                {
                    match &pair[1] {
                        Value::BulkString(msg) => {
                            Err(batch_item_error(&String::from_utf8_lossy(msg), addr))
                        }
                        other => Err(unexpected_reply(what, other)),
                    }
                }
                v => parse(i, v),
            })
            .collect(),
        Ok(other) => (0..n)
            .map(|_| Err(unexpected_reply(what, &other)))
            .collect(),
        Err(e) => (0..n).map(|_| Err(map_err(e.clone(), addr))).collect(),
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
        let call = AcquireCall {
            keys,
            fence_end,
            owner: owner.clone(),
            ttl,
        };
        let backend = self.clone();
        let batcher = self.inner.batches.as_ref().map(|b| &b.acquire);
        send_one(batcher, call, "acquire", move |calls| {
            send_acquires(backend.clone(), calls)
        })
        .await
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
        let call = ReleaseCall {
            keys: LockKeys::new(&self.inner.lock_prefix, name),
            name: name.into(),
            owner: owner.clone(),
        };
        let backend = self.clone();
        let batcher = self.inner.batches.as_ref().map(|b| &b.release);
        send_one(batcher, call, "release", move |calls| {
            send_releases(backend.clone(), calls)
        })
        .await
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
fn parse_acquire(
    reply: &Value,
    fence_key: &str,
    ttl: Duration,
    addr: &str,
) -> Result<AcquireOutcome> {
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
        Value::ServerError(e) => Err(map_err(e.clone().into(), addr)),
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
            parse_acquire(&granted, "f", ttl, "test").unwrap(),
            AcquireOutcome::Granted(LockGrant {
                token: FencingToken::new(7),
                ttl
            })
        );
        let held = Value::Int(-252);
        assert_eq!(
            parse_acquire(&held, "f", ttl, "test").unwrap(),
            AcquireOutcome::Held {
                retry_after: Some(Duration::from_millis(250))
            }
        );
        let expiring = Value::Int(-2);
        assert_eq!(
            parse_acquire(&expiring, "f", ttl, "test").unwrap(),
            AcquireOutcome::Held {
                retry_after: Some(Duration::ZERO)
            }
        );
        let no_expiry = Value::Int(-1);
        assert_eq!(
            parse_acquire(&no_expiry, "f", ttl, "test").unwrap(),
            AcquireOutcome::Held { retry_after: None }
        );
        let corrupt = Value::BulkString(b"banana".to_vec());
        let err = parse_acquire(&corrupt, "f", ttl, "test").unwrap_err();
        assert!(matches!(err, Error::Codec { .. }) && err.to_string().contains("banana"));
        assert!(matches!(
            parse_acquire(&Value::Nil, "f", ttl, "test"),
            Err(Error::Backend { .. })
        ));
        assert!(matches!(
            parse_acquire(&Value::Array(vec![]), "f", ttl, "test"),
            Err(Error::Backend { .. })
        ));
    }
}
