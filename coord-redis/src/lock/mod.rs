//! [`LockBackend`] for [`RedisBackend`]: one `EVALSHA` per operation, shared
//! by concurrent acquisitions (and releases) on a standalone server.

pub(crate) mod batch;
pub(crate) mod fenced;
pub(crate) mod queue;
pub(crate) mod redlock;

use std::sync::Arc;
use std::time::Duration;

use coord_core::lock::{HoldMode, LockInfo, QueueOutcome};
use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, Error, FencingToken, LockBackend, LockGrant,
    LockOwner, ReleaseEvents, Result,
};
use redis::{Cmd, Script, Value};

use crate::backend::RedisBackend;
use crate::error::{batch_item_error, map_err, unexpected_reply};
use crate::lock::batch::{Abandoned, Batcher};

/// The lock scripts, hashed once per backend.
pub(crate) struct Scripts {
    acquire: Script,
    /// Redlock's guarded acquisition (see `redlock`).
    pub(crate) redlock_acquire: Script,
    renew: Script,
    release: Script,
    force_release: Script,
    proclaim: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            acquire: Script::new(concat!(
                include_str!("scripts/lease_acquire.lua"),
                include_str!("scripts/acquire.lua")
            )),
            redlock_acquire: Script::new(concat!(
                include_str!("scripts/lease_acquire.lua"),
                include_str!("scripts/redlock_acquire.lua")
            )),
            renew: Script::new(include_str!("scripts/renew.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            force_release: Script::new(include_str!("scripts/force_release.lua")),
            proclaim: Script::new(include_str!("scripts/proclaim.lua")),
        }
    }
}

/// The batch queues of the two hot operations (see [`batch`]).
pub(crate) struct LockBatches {
    acquire: Arc<Batcher<AcquireCall, AcquireOutcome>>,
    release: Arc<Batcher<ReleaseCall, ()>>,
    /// Redlock's guarded acquisitions on this server.
    pub(crate) redlock_acquire:
        Arc<Batcher<crate::lock::redlock::RedlockAcquireCall, crate::lock::redlock::ServerVote>>,
}

impl LockBatches {
    pub(crate) fn new() -> Self {
        LockBatches {
            acquire: Arc::new(Batcher::new(Abandoned::Skip)),
            release: Arc::new(Batcher::new(Abandoned::Send)),
            redlock_acquire: Arc::new(Batcher::new(Abandoned::Skip)),
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
    owner: LockOwner,
}

/// Sends `call` through `batcher` (standalone servers), or alone.
pub(crate) async fn send_one<I, O, S, F>(
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

/// A call a batched script carries: its script, and its keys and arguments
/// (each script loops over groups of `KEYS` keys and as many arguments).
pub(crate) trait ScriptCall {
    /// Keys (and arguments) per call.
    const KEYS: usize;
    fn script(scripts: &Scripts) -> &Script;
    fn keys(&self, cmd: &mut Cmd);
    fn args(&self, cmd: &mut Cmd);
}

impl ScriptCall for AcquireCall {
    const KEYS: usize = 2;
    fn script(scripts: &Scripts) -> &Script {
        &scripts.acquire
    }
    fn keys(&self, cmd: &mut Cmd) {
        cmd.arg(self.keys.lock()).arg(self.fence());
    }
    fn args(&self, cmd: &mut Cmd) {
        cmd.arg(self.owner.as_str()).arg(ttl_ms(self.ttl));
    }
}

impl ScriptCall for ReleaseCall {
    const KEYS: usize = 1;
    fn script(scripts: &Scripts) -> &Script {
        &scripts.release
    }
    fn keys(&self, cmd: &mut Cmd) {
        cmd.arg(self.keys.lock());
    }
    fn args(&self, cmd: &mut Cmd) {
        cmd.arg(self.owner.as_str());
    }
}

/// One `EVALSHA` of `C`'s script over all of `calls`.
async fn script_call<C: ScriptCall>(
    backend: &RedisBackend,
    calls: &[C],
) -> redis::RedisResult<Value> {
    let script = C::script(&backend.inner.scripts);
    let mut cmd = evalsha(script, C::KEYS * calls.len());
    for c in calls {
        c.keys(&mut cmd);
    }
    for c in calls {
        c.args(&mut cmd);
    }
    // Behind Sentinel, grants and releases count once a replica has them.
    backend.eval_acked_raw::<Value>(script, &cmd).await
}

/// Sends `calls` as one script call; one result per call, in order. A
/// batch refused for spanning slots is sent again one call at a time.
pub(crate) async fn send_calls<C: ScriptCall, O>(
    backend: &RedisBackend,
    calls: &[C],
    what: &str,
    parse: impl Fn(&C, &Value) -> Result<O>,
) -> Vec<Result<O>> {
    let addr = &backend.inner.addr;
    let seen = backend.inner.conn.generation();
    let mut reply = script_call(backend, calls).await;
    // A batch's calls fail one by one inside its reply, where the command
    // connection cannot see a demoted master's READONLY: follow the master
    // here, and send the batch again to the new one (nothing was applied).
    if calls.len() > 1
        && refused_as_replica(&reply)
        && backend.inner.conn.refused_as_replica(seen).await
    {
        reply = script_call(backend, calls).await;
    }
    if calls.len() > 1 && is_cross_slot(&reply) {
        let mut results = Vec::with_capacity(calls.len());
        for call in calls.chunks(1) {
            let reply = script_call(backend, call).await;
            results.extend(split_reply(reply, 1, addr, what, |_, v| parse(&call[0], v)));
        }
        return results;
    }
    split_reply(reply, calls.len(), addr, what, |i, v| parse(&calls[i], v))
}

/// Sends `calls` as one `acquire.lua` call; one outcome per call, in order.
async fn send_acquires(
    backend: RedisBackend,
    calls: Vec<AcquireCall>,
) -> Vec<Result<AcquireOutcome>> {
    let addr = &backend.inner.addr;
    send_calls(&backend, &calls, "acquire", |c, v| {
        parse_acquire(v, c.fence(), c.ttl, addr)
    })
    .await
}

/// Sends `calls` as one `release.lua` call; one result per call, in order.
async fn send_releases(backend: RedisBackend, calls: Vec<ReleaseCall>) -> Vec<Result<()>> {
    let addr = &backend.inner.addr;
    send_calls(&backend, &calls, "release", |c, v| match v {
        Value::Int(1) => Ok(()),
        Value::Int(_) => Err(not_held(c.keys.name(), &c.owner)),
        Value::ServerError(e) => Err(map_err(e.clone().into(), addr)),
        other => Err(unexpected_reply("release", other)),
    })
    .await
}

/// Whether a batch's reply has a call refused with `READONLY` (the server
/// is a replica now).
fn refused_as_replica(reply: &redis::RedisResult<Value>) -> bool {
    let Ok(Value::Array(replies)) = reply else {
        return false;
    };
    replies.iter().any(|r| match r {
        Value::Array(pair) if pair.len() == 2 => {
            matches!(&pair[1], Value::BulkString(msg) if msg.starts_with(b"READONLY"))
        }
        _ => false,
    })
}

/// Whether a batch was refused for spanning slots: a "standalone" URL that
/// is really a proxy in front of a cluster. The calls are then sent one by
/// one (each lock's keys share one slot).
fn is_cross_slot(reply: &redis::RedisResult<Value>) -> bool {
    match reply {
        Err(e) if e.code() == Some("CROSSSLOT") => {
            tracing::debug!("the server refused a batch across slots; sending its calls alone");
            true
        }
        _ => false,
    }
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
pub(crate) struct LockKeys {
    pub(crate) buf: String,
    name_start: usize,
    lock_len: usize,
}

impl LockKeys {
    const FENCE: &'static str = ":fence";
    const RELEASED: &'static str = ":released";

    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let mut buf = String::with_capacity(prefix.len() + name.len() + 1 + Self::RELEASED.len());
        buf.push_str(prefix);
        buf.push_str(name);
        buf.push('}');
        let lock_len = buf.len();
        LockKeys {
            buf,
            name_start: prefix.len(),
            lock_len,
        }
    }

    pub(crate) fn lock(&self) -> &str {
        &self.buf[..self.lock_len]
    }

    /// The lock's name, for messages.
    fn name(&self) -> &str {
        &self.buf[self.name_start..self.lock_len - 1]
    }

    pub(crate) fn with_fence(mut self) -> (Self, usize) {
        self.buf.push_str(Self::FENCE);
        let end = self.buf.len();
        (self, end)
    }

    pub(crate) fn into_channel(mut self) -> String {
        self.buf.truncate(self.lock_len);
        self.buf.push_str(Self::RELEASED);
        self.buf
    }
}

/// An `EVALSHA` of `script` with `keys` keys; arguments follow.
pub(crate) fn evalsha(script: &Script, numkeys: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(7, 160);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(numkeys);
    cmd
}

/// A lease in whole milliseconds, rounded up so it never shrinks to 0.
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
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
        match self.eval_acked::<i64>(script, &cmd).await? {
            1 => Ok(()),
            _ => Err(not_held(name, owner)),
        }
    }

    async fn release(&self, name: &str, owner: &LockOwner) -> Result<()> {
        let call = ReleaseCall {
            keys: LockKeys::new(&self.inner.lock_prefix, name),
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
        self.inner.pubsub.subscribe(vec![channel], None, true).await
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        let keys = LockKeys::new(&self.inner.lock_prefix, name);
        let script = &self.inner.scripts.force_release;
        let mut cmd = evalsha(script, 1);
        cmd.arg(keys.lock());
        Ok(self.eval::<i64>(script, &cmd).await? == 1)
    }

    async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        self.inspect_lock(name).await
    }

    async fn proclaim(&self, name: &str, owner: &LockOwner, value: &str) -> Result<()> {
        let keys = LockKeys::new(&self.inner.lock_prefix, name);
        let script = &self.inner.scripts.proclaim;
        let mut cmd = evalsha(script, 2);
        cmd.arg(keys.lock())
            .arg(format!("{}:value", keys.lock()))
            .arg(owner.as_str())
            .arg(value);
        if self.eval_acked::<i64>(script, &cmd).await? == 1 {
            Ok(())
        } else {
            Err(not_held(name, owner))
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        self.list_locks(prefix).await
    }

    async fn enqueue(
        &self,
        name: &str,
        owner: &LockOwner,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<QueueOutcome> {
        self.queue_enqueue(name, owner, mode, ttl).await
    }

    async fn renew_queued(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        self.queue_renew(name, owner, ttl).await
    }

    async fn dequeue(&self, name: &str, owner: &LockOwner) -> Result<()> {
        self.queue_dequeue(name, owner).await
    }

    async fn subscribe_queue(&self, name: &str, owner: &LockOwner) -> Result<ReleaseEvents> {
        self.queue_subscribe(name, owner).await
    }

    async fn force_release_queued(&self, name: &str) -> Result<usize> {
        self.queue_force_release(name).await
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
pub(crate) fn parse_acquire(
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

pub(crate) fn corrupt_fence(fence_key: &str, value: &str) -> Error {
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

    pub(crate) use coord_core::lock::SMALL_ALLOCATION;

    /// The size of the future a function returns.
    pub(crate) fn future_size<A, F>(_: &impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_script_calls_future_fits_the_allocators_small_blocks() {
        // Every lock call boxes one of these. A sentinel master lookup
        // inline once made them about 3 KB.
        let acquires = future_size(&|b: RedisBackend| send_acquires(b, Vec::new()));
        let releases = future_size(&|b: RedisBackend| send_releases(b, Vec::new()));
        assert!(
            acquires <= SMALL_ALLOCATION,
            "send_acquires: {acquires} bytes"
        );
        assert!(
            releases <= SMALL_ALLOCATION,
            "send_releases: {releases} bytes"
        );
    }

    #[test]
    fn a_batch_refused_by_a_replica_is_recognized() {
        let item_error = |msg: &str| {
            Value::Array(vec![
                Value::BulkString(b"error".to_vec()),
                Value::BulkString(msg.as_bytes().to_vec()),
            ])
        };
        let refused = Ok(Value::Array(vec![
            item_error("READONLY You can't write against a read only replica."),
            item_error("READONLY You can't write against a read only replica."),
        ]));
        assert!(refused_as_replica(&refused));
        let other = Ok(Value::Array(vec![Value::Int(7), item_error("WRONGTYPE x")]));
        assert!(!refused_as_replica(&other));
        assert!(!refused_as_replica(&Ok(Value::Int(7))));
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = LockKeys::new("coord:lock:{", "orders/42");
        assert_eq!(keys.lock(), "coord:lock:{orders/42}");
        assert_eq!(keys.name(), "orders/42");
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

/// One batch with every kind of call in it, against a real server.
#[cfg(all(test, feature = "testkit"))]
mod batch_tests {
    use super::*;
    use crate::testkit::RedisHarness;

    fn acquire_call(b: &RedisBackend, name: &str, owner: &LockOwner) -> AcquireCall {
        let (keys, fence_end) = LockKeys::new(&b.inner.lock_prefix, name).with_fence();
        AcquireCall {
            keys,
            fence_end,
            owner: owner.clone(),
            ttl: Duration::from_secs(10),
        }
    }

    fn release_call(b: &RedisBackend, name: &str, owner: &LockOwner) -> ReleaseCall {
        ReleaseCall {
            keys: LockKeys::new(&b.inner.lock_prefix, name),
            owner: owner.clone(),
        }
    }

    #[tokio::test]
    async fn one_batch_isolates_a_bad_lock_and_orders_calls_on_one_lock() {
        let h = RedisHarness::start().await;
        let b = h.connect().await.unwrap();
        let mut raw = redis::Client::open(h.server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let ns = &h.settings().namespace;
        let _: () = redis::cmd("RPUSH")
            .arg(format!("{ns}:lock:{{bad}}:fence"))
            .arg("x")
            .query_async(&mut raw)
            .await
            .unwrap();
        let (a, z) = (
            LockOwner::new("t", "a").unwrap(),
            LockOwner::new("t", "z").unwrap(),
        );
        let outcomes = send_acquires(
            b.clone(),
            vec![
                acquire_call(&b, "one", &a),
                acquire_call(&b, "bad", &a),
                acquire_call(&b, "one", &z),
                acquire_call(&b, "one", &a),
            ],
        )
        .await;
        let token = match &outcomes[0] {
            Ok(AcquireOutcome::Granted(g)) => g.token,
            other => panic!("first call: {other:?}"),
        };
        assert!(
            matches!(&outcomes[1], Err(e) if e.to_string().contains("WRONGTYPE")),
            "{:?}",
            outcomes[1]
        );
        assert!(
            matches!(outcomes[2], Ok(AcquireOutcome::Held { .. })),
            "{:?}",
            outcomes[2]
        );
        // The same owner again, in the same batch: the same grant.
        assert!(
            matches!(&outcomes[3], Ok(AcquireOutcome::Granted(g)) if g.token == token),
            "{:?}",
            outcomes[3]
        );
        let releases = send_releases(
            b.clone(),
            vec![release_call(&b, "one", &z), release_call(&b, "one", &a)],
        )
        .await;
        assert!(
            matches!(releases[0], Err(Error::NotHeld(_))),
            "{releases:?}"
        );
        assert!(releases[1].is_ok(), "{releases:?}");
    }
}
