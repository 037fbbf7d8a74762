//! Queued locks (fair locks, semaphores, read-write locks) and the
//! administration reads (`inspect`, `list`) of [`RedisBackend`].
//!
//! # Layout
//!
//! A queue named `name` under namespace `ns` lives in one key (the compact
//! form) or four (the full form), plus a fence (all in the `{name}` hash tag of
//! the lease lock of the same name, so one script reaches them on a Redis
//! Cluster; none of them is a key of that lease lock, which is a different
//! lock):
//!
//! * `{ns}:lock:{name}:queue:solo`: the compact form, a queue whose only entry
//!   was granted on arrival (every uncontended hold): a string `owner NUL mode
//!   NUL token` that expires with the entry's lease. Taking, renewing and
//!   releasing it cost about what a lease lock's do; the next entry to arrive
//!   turns it into the full form:
//! * `{ns}:lock:{name}:queue`: ZSET owner → arrival sequence (the queue order);
//! * `{ns}:lock:{name}:queue:lease`: ZSET owner → end of its lease (server ms);
//! * `{ns}:lock:{name}:queue:mode`: HASH owner → [`HoldMode::encode`];
//! * `{ns}:lock:{name}:queue:token`: HASH owner → fencing token, once granted;
//! * `{ns}:lock:{name}:queue:fence`: the last token, kept forever (tokens are a
//!   hybrid logical clock, like the lease lock's: they keep increasing across a
//!   restart of a server without persistence);
//! * the channel `{ns}:lock:{name}:queue:released`, published on when every
//!   waiter is to look again, and one per client,
//!   `{ns}:lock:{name}:queue:released:<client_id>`, on which an entry's leaving
//!   announces the grants of that client's waiters it let in (so a grant
//!   reaches the grantee's connection only, not every waiting client's).
//!
//! The four keys of the full form expire together, at most two seconds after
//! the last lease ends,
//! and are deleted when the queue empties. Each operation is one `EVALSHA` of a Lua
//! script (`scripts/queue_*.lua`, each prefixed with `queue_head.lua`, a fast path
//! on the compact form where the operation has one, and `queue_common.lua`)
//! whose general path first expands the compact form, purges the entries whose
//! lease ended, then applies
//! [`HoldMode::admits`] exactly as coord-core's memory backend does.
//!
//! # Waking
//!
//! A removal that lets waiting entries in grants them in the same script
//! (each gets the next token of the fence) and publishes them, one line
//! `owner NUL token` each, on the queue's channel (the script applies
//! [`HoldMode::admits`] from the head of the queue). Every waiter of the
//! queue listens to the channel, but only those named wake, and they hold
//! the lock without asking again ([`Wake::Granted`](coord_core::Wake)): a
//! hand-over costs the release's script and one message. A waiter takes the
//! announced token only when it is above the fence its last `enqueue` answer
//! reported, so an announcement to an earlier entry of the same owner is
//! never mistaken for a grant; if it misses the message, its next `enqueue`
//! answers with the grant. A fence that does not decode grants nothing and
//! names the owners alone (they ask, and their `enqueue` reports it); an
//! empty message (a mode that does not decode, or more than 128 entries let
//! in at once) wakes every waiter to ask. Behind Sentinel with `replica_ack`
//! (the default), a named waiter asks too: its `enqueue` is acknowledged by a
//! replica, the announcement is not.
//!
//! # Listing
//!
//! [`list`](RedisBackend::list_locks) `SCAN`s the namespace's lock keys on the
//! server, or on every master of a cluster (one slot of each master, as
//! `CLUSTER SLOTS` tells, routes the `SCAN`s). A lock created or moved (slot
//! migration) during the scan may be missed, as `SCAN` guarantees only the keys
//! present throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use coord_core::lock::{HoldMode, HolderInfo, LockInfo, QueueOutcome, StoredKind};
use coord_core::{Error, FencingToken, LockGrant, LockOwner, ReleaseEvents, Result};
use futures::{StreamExt, TryStreamExt};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Script, Value};

use crate::backend::RedisBackend;
use crate::connection::Connection;
use crate::error::{map_err, unexpected_reply};
use crate::lock::{LockKeys, corrupt_fence, evalsha, ttl_ms};

/// One of the queue scripts: `queue_head.lua`, the operation's fast path
/// (`$fast`) when it has one, `queue_common.lua`, then `$file`.
macro_rules! queue_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/queue_head.lua"),
            include_str!("scripts/queue_common.lua"),
            include_str!(concat!("scripts/", $file))
        ))
    };
    ($fast:literal, $file:literal) => {
        Script::new(concat!(
            include_str!("scripts/queue_head.lua"),
            include_str!(concat!("scripts/", $fast)),
            include_str!("scripts/queue_common.lua"),
            include_str!(concat!("scripts/", $file))
        ))
    };
}

/// The scripts of this module, hashed once per process.
struct QueueScripts {
    enqueue: Script,
    renew: Script,
    dequeue: Script,
    force_release: Script,
    info: Script,
    inspect: Script,
}

static SCRIPTS: LazyLock<QueueScripts> = LazyLock::new(|| QueueScripts {
    enqueue: queue_script!("queue_enqueue_fast.lua", "queue_enqueue.lua"),
    renew: queue_script!("queue_renew_fast.lua", "queue_renew.lua"),
    dequeue: queue_script!("queue_dequeue_fast.lua", "queue_dequeue.lua"),
    force_release: queue_script!("queue_force_release.lua"),
    info: queue_script!("queue_info.lua"),
    inspect: Script::new(include_str!("scripts/inspect.lua")),
});

/// How many locks `list` reads at once.
const LIST_CONCURRENCY: usize = 16;
/// The `COUNT` hint of each `SCAN`.
const SCAN_COUNT: usize = 1000;

/// The keys of one queue (see the module documentation), in one buffer:
/// built on every call, so one allocation, not one per key.
struct QueueKeys {
    buf: String,
    /// Where each key of [`SUFFIXES`](Self::SUFFIXES) ends in `buf`.
    ends: [usize; 6],
}

impl QueueKeys {
    /// What follows the name in the entries key, one of the two keys `list`
    /// looks for.
    const SUFFIX: &'static str = "}:queue";
    /// What follows the name in the compact form's key, the other one.
    const SOLO_SUFFIX: &'static str = "}:queue:solo";
    /// What follows the entries key in each key, in script order: Q, E, M,
    /// T, S, F (see `queue_head.lua`).
    const SUFFIXES: [&'static str; 6] = ["", ":lease", ":mode", ":token", ":solo", ":fence"];

    /// `lock_prefix` is `{ns}:lock:{`.
    fn new(lock_prefix: &str, name: &str) -> Self {
        let entries = lock_prefix.len() + name.len() + Self::SUFFIX.len();
        let total = Self::SUFFIXES.iter().map(|s| entries + s.len()).sum();
        let mut buf = String::with_capacity(total);
        let mut ends = [0; 6];
        for (end, suffix) in ends.iter_mut().zip(Self::SUFFIXES) {
            buf.push_str(lock_prefix);
            buf.push_str(name);
            buf.push_str(Self::SUFFIX);
            buf.push_str(suffix);
            *end = buf.len();
        }
        QueueKeys { buf, ends }
    }

    /// The `i`-th key of [`SUFFIXES`](Self::SUFFIXES).
    fn key(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    fn entries(&self) -> &str {
        self.key(0)
    }

    fn modes(&self) -> &str {
        self.key(2)
    }

    fn tokens(&self) -> &str {
        self.key(3)
    }

    fn channel(&self) -> String {
        format!("{}:released", self.entries())
    }

    /// An `EVALSHA` of `script` with the six keys of every queue script
    /// (the five queue keys and the fence); arguments follow.
    fn cmd(&self, script: &Script) -> Cmd {
        let mut cmd = evalsha(script, 6);
        for i in 0..6 {
            cmd.arg(self.key(i));
        }
        cmd
    }
}

fn not_held(name: &str, owner: &LockOwner) -> Error {
    Error::NotHeld(format!("queued lock {name:?} has no entry of {owner}"))
}

/// A reply item as text (bulk or simple string).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Whether a reply item is a script's `nil`/`false`.
fn is_absent(v: &Value) -> bool {
    matches!(v, Value::Nil | Value::Boolean(false))
}

/// The `{'wrongtype', …}` and `{'corrupt', …}` replies every queue script
/// may give (see `queue_head.lua`), as errors.
fn script_failure(reply: &Value, addr: &str) -> Option<Error> {
    let Value::Array(items) = reply else {
        return None;
    };
    let tag = items.first().and_then(text)?;
    let field = |i: usize| items.get(i).and_then(text).unwrap_or_default();
    match tag.as_str() {
        "wrongtype" => Some(Error::backend(
            "redis",
            format!("redis at {addr}: {}", field(1)),
            false,
            None,
        )),
        "corrupt" => Some(corrupt(&field(1), &field(2), &field(3))),
        _ => None,
    }
}

/// The codec error of a stored queue value that does not decode.
fn corrupt(what: &str, location: &str, raw: &str) -> Error {
    let shown: String = raw.chars().take(64).collect();
    let expected = match what {
        "mode" => "a hold mode (x or s<limit>)",
        "token" | "fence" => "a token (an integer from 1 to 2^53 - 1)",
        "lease" => "the end of a lease",
        "entry" => "an entry (owner, mode and token, NUL-separated, with a TTL)",
        _ => "a valid value",
    };
    Error::codec(
        format!(
            "queued lock {what} at {location:?} holds {shown:?}, not {expected}; it was \
             changed outside coord"
        ),
        None,
    )
}

/// Decodes `queue_enqueue.lua`'s reply.
fn parse_enqueue(reply: &Value, ttl: Duration, addr: &str) -> Result<QueueOutcome> {
    if let Some(e) = script_failure(reply, addr) {
        return Err(e);
    }
    let items = match reply {
        // Granted: the token alone (an integer reply costs the server least).
        Value::Int(token @ 1..) => {
            return Ok(QueueOutcome::Granted(LockGrant {
                token: FencingToken::new(token.unsigned_abs()),
                ttl,
            }));
        }
        Value::Array(items) => items,
        other => return Err(unexpected_reply("queue_enqueue", other)),
    };
    let Some((tag, rest)) = items.split_first() else {
        return Err(unexpected_reply("queue_enqueue", reply));
    };
    match (text(tag).as_deref(), rest) {
        (
            Some("queued"),
            [
                Value::Int(ahead @ 0..),
                Value::Int(wait @ 0..),
                Value::Int(fence @ 0..),
            ],
        ) => Ok(QueueOutcome::Queued {
            ahead: u32::try_from(*ahead).unwrap_or(u32::MAX),
            retry_after: Some(Duration::from_millis(wait.unsigned_abs())),
            fence: Some(FencingToken::new(fence.unsigned_abs())),
        }),
        _ => Err(unexpected_reply("queue_enqueue", reply)),
    }
}

/// Decodes the integer reply of the renew, dequeue and force-release scripts.
fn parse_count(reply: &Value, script: &str, addr: &str) -> Result<u64> {
    if let Some(e) = script_failure(reply, addr) {
        return Err(e);
    }
    match reply {
        Value::Int(n @ 0..) => Ok(n.unsigned_abs()),
        other => Err(unexpected_reply(script, other)),
    }
}

/// A stored token: an integer from 1 to 2^53 - 1.
fn parse_token(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<u64>().ok().filter(|t| (1..1 << 53).contains(t))
}

/// A remaining lease in ms; negative (no expiry) is `None`.
fn remaining(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Decodes `queue_info.lua`'s reply; `None` when the queue is empty.
fn parse_info(name: &str, keys: &QueueKeys, reply: &Value, addr: &str) -> Result<Option<LockInfo>> {
    if let Some(e) = script_failure(reply, addr) {
        return Err(e);
    }
    let Value::Array(items) = reply else {
        return Err(unexpected_reply("queue_info", reply));
    };
    if items.len() % 4 != 0 {
        return Err(unexpected_reply("queue_info", reply));
    }
    if items.is_empty() {
        return Ok(None);
    }
    let mut info = LockInfo {
        name: name.to_owned(),
        kind: StoredKind::Queue,
        holders: Vec::new(),
        waiters: Vec::new(),
    };
    for entry in items.chunks(4) {
        let owner = text(&entry[0]).ok_or_else(|| unexpected_reply("queue_info", reply))?;
        let location = |key: &str| format!("{key} {owner}");
        let mode = match text(&entry[1]) {
            Some(raw) => HoldMode::decode(&raw)
                .map_err(|_| corrupt("mode", &location(keys.modes()), &raw))?,
            None => return Err(corrupt("mode", &location(keys.modes()), "")),
        };
        let token = match &entry[2] {
            v if is_absent(v) => None,
            v => {
                let raw = text(v).ok_or_else(|| unexpected_reply("queue_info", reply))?;
                let token = parse_token(&raw)
                    .ok_or_else(|| corrupt("token", &location(keys.tokens()), &raw))?;
                Some(FencingToken::new(token))
            }
        };
        let ttl_remaining = match &entry[3] {
            Value::Int(ms) => remaining(*ms),
            _ => return Err(unexpected_reply("queue_info", reply)),
        };
        let holder = HolderInfo {
            owner,
            token,
            mode,
            ttl_remaining,
            value: None,
        };
        if token.is_some() {
            info.holders.push(holder);
        } else {
            info.waiters.push(holder);
        }
    }
    Ok(Some(info))
}

/// Decodes `inspect.lua`'s reply.
fn parse_inspect(name: &str, fence_key: &str, reply: &Value) -> Result<Option<LockInfo>> {
    let items = match reply {
        v if is_absent(v) => return Ok(None),
        Value::Array(items) if items.len() == 3 || items.len() == 4 => items,
        other => return Err(unexpected_reply("inspect", other)),
    };
    let owner = text(&items[0]).ok_or_else(|| unexpected_reply("inspect", reply))?;
    let token = match &items[1] {
        v if is_absent(v) => None,
        v => {
            let raw = text(v).ok_or_else(|| unexpected_reply("inspect", reply))?;
            let token = parse_token(&raw).ok_or_else(|| corrupt_fence(fence_key, &raw))?;
            Some(FencingToken::new(token))
        }
    };
    let ttl_remaining = match &items[2] {
        Value::Int(ms) => remaining(*ms),
        other => return Err(unexpected_reply("inspect", other)),
    };
    Ok(Some(LockInfo {
        name: name.to_owned(),
        kind: StoredKind::Lease,
        holders: vec![HolderInfo {
            owner,
            token,
            mode: HoldMode::Exclusive,
            ttl_remaining,
            value: items.get(3).and_then(text),
        }],
        waiters: Vec::new(),
    }))
}

/// `s` with Redis' glob characters escaped, for `SCAN … MATCH`.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a key found by `list`'s scan is: the key of a lease lock, or the
/// entries key or compact entry of a queue, with the lock's name; `None` for
/// other keys (fences, the other queue keys).
fn classify<'k>(lock_prefix: &str, key: &'k str) -> Option<(StoredKind, &'k str)> {
    let rest = key.strip_prefix(lock_prefix)?;
    if let Some(name) = rest
        .strip_suffix(QueueKeys::SUFFIX)
        .or_else(|| rest.strip_suffix(QueueKeys::SOLO_SUFFIX))
    {
        Some((StoredKind::Queue, name))
    } else {
        rest.strip_suffix('}').map(|name| (StoredKind::Lease, name))
    }
}

/// One `SCAN` reply: the next cursor and the keys.
fn parse_scan(reply: Value) -> Result<(u64, Vec<Vec<u8>>)> {
    redis::from_redis_value(reply).map_err(|e| {
        Error::backend(
            "redis",
            format!("unexpected reply to SCAN: {e}"),
            false,
            None,
        )
    })
}

/// One slot of each master of a cluster, from a `CLUSTER SLOTS` reply.
fn one_slot_per_master(reply: &Value) -> Result<Vec<u16>> {
    let bad = || unexpected_reply("CLUSTER SLOTS", reply);
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut masters: BTreeMap<(String, i64), u16> = BTreeMap::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Array(master))) = (fields.first(), fields.get(2))
        else {
            return Err(bad());
        };
        let host = master.first().and_then(text).ok_or_else(bad)?;
        let Some(Value::Int(port)) = master.get(1) else {
            return Err(bad());
        };
        let slot = u16::try_from(*start).map_err(|_| bad())?;
        masters.entry((host, *port)).or_insert(slot);
    }
    Ok(masters.into_values().collect())
}

impl RedisBackend {
    /// [`LockBackend::enqueue`](coord_core::LockBackend::enqueue).
    pub(crate) async fn queue_enqueue(
        &self,
        name: &str,
        owner: &LockOwner,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<QueueOutcome> {
        if mode == (HoldMode::Shared { limit: 0 }) {
            return Err(Error::invalid(format!(
                "queued lock {name:?}: a shared hold needs a limit of at least 1"
            )));
        }
        let ttl = self.inner.caps.effective_ttl(ttl);
        let keys = QueueKeys::new(&self.inner.lock_prefix, name);
        let script = &SCRIPTS.enqueue;
        let mut cmd = keys.cmd(script);
        cmd.arg(owner.as_str()).arg(mode.encode()).arg(ttl_ms(ttl));
        let reply = self.eval_acked::<Value>(script, &cmd).await?;
        parse_enqueue(&reply, ttl, &self.inner.addr)
    }

    /// [`LockBackend::renew_queued`](coord_core::LockBackend::renew_queued).
    pub(crate) async fn queue_renew(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<()> {
        let ttl = self.inner.caps.effective_ttl(ttl);
        let keys = QueueKeys::new(&self.inner.lock_prefix, name);
        let script = &SCRIPTS.renew;
        let mut cmd = keys.cmd(script);
        cmd.arg(owner.as_str()).arg(ttl_ms(ttl));
        let reply = self.eval_acked::<Value>(script, &cmd).await?;
        match parse_count(&reply, "queue_renew", &self.inner.addr)? {
            1 => Ok(()),
            _ => Err(not_held(name, owner)),
        }
    }

    /// [`LockBackend::dequeue`](coord_core::LockBackend::dequeue).
    pub(crate) async fn queue_dequeue(&self, name: &str, owner: &LockOwner) -> Result<()> {
        let keys = QueueKeys::new(&self.inner.lock_prefix, name);
        let script = &SCRIPTS.dequeue;
        let mut cmd = keys.cmd(script);
        cmd.arg(owner.as_str());
        let reply = self.eval_acked::<Value>(script, &cmd).await?;
        match parse_count(&reply, "queue_dequeue", &self.inner.addr)? {
            1 => Ok(()),
            _ => Err(not_held(name, owner)),
        }
    }

    /// [`LockBackend::subscribe_queue`](coord_core::LockBackend::subscribe_queue):
    /// a waiter listens to the queue's channel and to its client's, and wakes
    /// only for the messages that name it (see the module documentation).
    pub(crate) async fn queue_subscribe(
        &self,
        name: &str,
        owner: &LockOwner,
    ) -> Result<ReleaseEvents> {
        // The queue's channel (wake-ups of every waiter) and the one of this
        // owner's client (the grants of its waiters), on one connection.
        let channel = QueueKeys::new(&self.inner.lock_prefix, name).channel();
        let own = format!("{channel}:{}", owner.client_id());
        self.inner
            .pubsub
            .subscribe(
                vec![channel, own],
                Some(owner.as_str().to_owned()),
                !self.acks_writes(),
            )
            .await
    }

    /// [`LockBackend::force_release_queued`](coord_core::LockBackend::force_release_queued).
    pub(crate) async fn queue_force_release(&self, name: &str) -> Result<usize> {
        let keys = QueueKeys::new(&self.inner.lock_prefix, name);
        let script = &SCRIPTS.force_release;
        let cmd = keys.cmd(script);
        let reply = self.eval::<Value>(script, &cmd).await?;
        let n = parse_count(&reply, "queue_force_release", &self.inner.addr)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The entries of the queue `name`; `None` when it has none.
    async fn queue_info(&self, name: &str) -> Result<Option<LockInfo>> {
        let keys = QueueKeys::new(&self.inner.lock_prefix, name);
        let script = &SCRIPTS.info;
        let cmd = keys.cmd(script);
        let reply = self.eval::<Value>(script, &cmd).await?;
        parse_info(name, &keys, &reply, &self.inner.addr)
    }

    /// [`LockBackend::inspect`](coord_core::LockBackend::inspect): the holder
    /// of the lease lock `name`, its token (the fence: the last token handed
    /// out is the holder's) and remaining lease.
    pub(crate) async fn inspect_lock(&self, name: &str) -> Result<Option<LockInfo>> {
        let (keys, fence_end) = LockKeys::new(&self.inner.lock_prefix, name).with_fence();
        let fence = &keys.buf[..fence_end];
        let script = &SCRIPTS.inspect;
        // An election's holder may have proclaimed a value.
        let value_key = name
            .starts_with(coord_core::lock::ELECTION_PREFIX)
            .then(|| format!("{}:value", keys.lock()));
        let mut cmd = evalsha(script, if value_key.is_some() { 3 } else { 2 });
        cmd.arg(keys.lock()).arg(fence);
        if let Some(k) = &value_key {
            cmd.arg(k);
        }
        let reply = self.eval::<Value>(script, &cmd).await?;
        parse_inspect(name, fence, &reply)
    }

    /// [`LockBackend::list`](coord_core::LockBackend::list): every lease lock
    /// and queue whose name starts with `prefix`, sorted by name (a lease
    /// lock before a queue of the same name).
    pub(crate) async fn list_locks(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let lock_prefix = &self.inner.lock_prefix;
        let pattern = format!("{}*", escape_glob(&format!("{lock_prefix}{prefix}")));
        let keys = self.scan(&pattern).await?;
        let mut leases = BTreeSet::new();
        let mut queues = BTreeSet::new();
        for key in &keys {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            match classify(lock_prefix, key) {
                Some((StoredKind::Lease, name)) if name.starts_with(prefix) => {
                    leases.insert(name.to_owned());
                }
                Some((StoredKind::Queue, name)) if name.starts_with(prefix) => {
                    queues.insert(name.to_owned());
                }
                _ => {}
            }
        }
        let leases = futures::stream::iter(leases)
            .map(|name| async move { self.inspect_lock(&name).await })
            .buffered(LIST_CONCURRENCY)
            .try_collect::<Vec<_>>();
        let queues = futures::stream::iter(queues)
            .map(|name| async move { self.queue_info(&name).await })
            .buffered(LIST_CONCURRENCY)
            .try_collect::<Vec<_>>();
        let (leases, queues) = futures::try_join!(leases, queues)?;
        let mut out: Vec<LockInfo> = leases.into_iter().chain(queues).flatten().collect();
        // Stable: a lease lock stays before the queue of the same name.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every key matching `pattern`, on the server or every master of the
    /// cluster (possibly with duplicates, as `SCAN` gives them).
    async fn scan(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let addr = &self.inner.addr;
        let scan_cmd = |cursor: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            cmd
        };
        let mut keys = Vec::new();
        match &self.inner.conn {
            Connection::Standalone(_) | Connection::Sentinel(_) => {
                let mut conn = self.inner.conn.clone();
                let mut cursor = 0;
                loop {
                    let reply: Value = scan_cmd(cursor)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| map_err(e, addr))?;
                    let (next, batch) = parse_scan(reply)?;
                    keys.extend(batch);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Connection::Cluster(conn) => {
                let mut conn = conn.clone();
                let slots = conn
                    .route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await
                    .map_err(|e| map_err(e, addr))?;
                for slot in one_slot_per_master(&slots)? {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::new(slot, SlotAddr::Master),
                    ));
                    let mut cursor = 0;
                    loop {
                        let reply = conn
                            .route_command(scan_cmd(cursor), route.clone())
                            .await
                            .map_err(|e| map_err(e, addr))?;
                        let (next, batch) = parse_scan(reply)?;
                        keys.extend(batch);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn queue_keys_share_the_hash_tag_and_never_collide_with_lease_keys() {
        let keys = QueueKeys::new("ns:lock:{", "orders/42");
        let all: Vec<&str> = (0..6).map(|i| keys.key(i)).collect();
        assert_eq!(
            all,
            [
                "ns:lock:{orders/42}:queue",
                "ns:lock:{orders/42}:queue:lease",
                "ns:lock:{orders/42}:queue:mode",
                "ns:lock:{orders/42}:queue:token",
                "ns:lock:{orders/42}:queue:solo",
                "ns:lock:{orders/42}:queue:fence",
            ]
        );
        assert_eq!(keys.buf.capacity(), keys.buf.len(), "one allocation");
        assert_eq!(keys.channel(), "ns:lock:{orders/42}:queue:released");
        // A lease lock's keys end with `}` or `}:fence`, its channel with
        // `}:released`: whatever its name, none is a queue key.
        for lease_name in [
            "orders/42}:queue",
            "orders/42}:queue:lease",
            "orders/42}:queue:solo",
            "x",
        ] {
            let lease = LockKeys::new("ns:lock:{", lease_name);
            let (lease, end) = lease.with_fence();
            for k in (0..6).map(|i| keys.key(i)) {
                assert_ne!(lease.lock(), k);
                assert_ne!(&lease.buf[..end], k);
            }
            assert_ne!(lease.into_channel(), keys.channel());
        }
    }

    #[test]
    fn scanned_keys_are_classified_by_their_ending() {
        let p = "ns:lock:{";
        assert_eq!(classify(p, "ns:lock:{a}"), Some((StoredKind::Lease, "a")));
        assert_eq!(
            classify(p, "ns:lock:{a}b}"),
            Some((StoredKind::Lease, "a}b"))
        );
        assert_eq!(
            classify(p, "ns:lock:{a}:queue"),
            Some((StoredKind::Queue, "a"))
        );
        assert_eq!(
            classify(p, "ns:lock:{a}:queue}:queue"),
            Some((StoredKind::Queue, "a}:queue"))
        );
        assert_eq!(
            classify(p, "ns:lock:{a}:queue:solo"),
            Some((StoredKind::Queue, "a"))
        );
        assert_eq!(
            classify(p, "ns:lock:{a}:queue:solo}"),
            Some((StoredKind::Lease, "a}:queue:solo"))
        );
        for other in [
            "ns:lock:{a}:fence",
            "ns:lock:{a}:queue:lease",
            "ns:lock:{a}:queue:mode",
            "ns:lock:{a}:queue:token",
            "ns:lock:{a}:queue:fence",
            "other:{a}",
        ] {
            assert_eq!(classify(p, other), None, "{other}");
        }
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(escape_glob("ns:lock:{x"), "ns:lock:{x");
    }

    #[test]
    fn enqueue_replies_decode() {
        let ttl = Duration::from_secs(1);
        let granted = Value::Int(9);
        assert_eq!(
            parse_enqueue(&granted, ttl, "t").unwrap(),
            QueueOutcome::Granted(LockGrant {
                token: FencingToken::new(9),
                ttl
            })
        );
        let queued = Value::Array(vec![
            bulk("queued"),
            Value::Int(2),
            Value::Int(250),
            Value::Int(77),
        ]);
        assert_eq!(
            parse_enqueue(&queued, ttl, "t").unwrap(),
            QueueOutcome::Queued {
                ahead: 2,
                retry_after: Some(Duration::from_millis(250)),
                fence: Some(FencingToken::new(77)),
            }
        );
        let corrupt = Value::Array(vec![
            bulk("corrupt"),
            bulk("mode"),
            bulk("k o"),
            bulk("banana"),
        ]);
        let err = parse_enqueue(&corrupt, ttl, "t").unwrap_err();
        assert!(matches!(err, Error::Codec { .. }) && err.to_string().contains("banana"));
        let wrongtype = Value::Array(vec![bulk("wrongtype"), bulk("WRONGTYPE k is a list")]);
        let err = parse_enqueue(&wrongtype, ttl, "t").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Backend {
                    retryable: false,
                    ..
                }
            ) && err.to_string().contains("WRONGTYPE")
        );
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Int(0),
            Value::Int(-3),
            Value::Array(vec![bulk("granted"), Value::Int(9)]),
            Value::Array(vec![bulk("queued"), Value::Int(1)]),
            Value::Array(vec![bulk("queued"), Value::Int(1), Value::Int(5)]),
            Value::Array(vec![
                bulk("queued"),
                Value::Int(1),
                Value::Int(5),
                Value::Int(-1),
            ]),
        ] {
            assert!(
                matches!(parse_enqueue(&bad, ttl, "t"), Err(Error::Backend { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tokens_parse_strictly() {
        assert_eq!(parse_token("1"), Some(1));
        assert_eq!(parse_token("9007199254740991"), Some((1 << 53) - 1));
        for bad in ["", "0", "-1", "+1", "1.5", "9007199254740992", "x"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn cluster_slots_give_one_slot_per_master() {
        let range = |start: i64, end: i64, port: i64| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 100, 7001),
            range(101, 200, 7002),
            range(201, 300, 7001),
        ]);
        assert_eq!(one_slot_per_master(&reply).unwrap(), vec![0, 101]);
        assert!(one_slot_per_master(&Value::Nil).is_err());
    }
}
