//! [`RedlockBackend`]: one lease lock over N independent Redis servers
//! (the Redlock algorithm), with fencing tokens and restart quarantine.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use coord_core::lock::{HolderInfo, StoredKind};
use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, Error, FencingToken, HealthStatus, HoldMode,
    LockBackend, LockGrant, LockInfo, LockOwner, ReleaseEvents, Result, Settings,
};
use futures::StreamExt;
use futures::future::join_all;
use redis::{Script, Value};
use tokio::time::Instant;

use crate::backend::RedisBackend;
use crate::config::{RedisConfig, RedisMode};
use crate::lock::{LockKeys, ScriptCall, send_calls, send_one};

/// How often a server's `INFO server` is read when nothing went wrong.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Options of a [`RedlockBackend`]. Start from [`RedlockConfig::default`]
/// and change the fields you need.
///
/// ```
/// use std::time::Duration;
/// use coord_redis::RedlockConfig;
///
/// let mut config = RedlockConfig::default();
/// config.server_timeout = Duration::from_millis(50);
/// config.max_ttl = Duration::from_secs(30);
/// assert_eq!(config.retry_count, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedlockConfig {
    /// How many servers must grant (or renew) a lock. `None` (the default):
    /// a majority, `n / 2 + 1`. A quorum of `n / 2` or less is refused, as
    /// two holders could then each win one.
    pub quorum: Option<usize>,
    /// How long one request to one server may take (acquire, renew, release,
    /// `INFO`). A server that does not answer in time counts as failed, so
    /// keep it well below your TTLs. Default 200 ms.
    pub server_timeout: Duration,
    /// How many times an attempt that won some servers but not a majority (a
    /// split vote between contenders) is tried again before reporting the
    /// lock as held. Default 3.
    pub retry_count: u32,
    /// The bound of the random delay before each such retry: uniform in
    /// `[0, retry_delay)`. Default 200 ms.
    pub retry_delay: Duration,
    /// The longest TTL any client of these servers uses; longer requests are
    /// refused with [`Error::InvalidArgument`]. It bounds how long a lock
    /// granted by a server before it restarted may still be held, so it sets
    /// the quarantine of restarted servers. Default 60 s.
    pub max_ttl: Duration,
    /// How long after its start a server takes no part in grants. `None`
    /// (the default): `max_ttl` plus the clock drift allowance of `max_ttl`,
    /// the safe value. A shorter quarantine is only safe when the servers
    /// are known never to have restarted while a lock was held (tests).
    pub quarantine: Option<Duration>,
}

impl Default for RedlockConfig {
    fn default() -> Self {
        RedlockConfig {
            quorum: None,
            server_timeout: Duration::from_millis(200),
            retry_count: 3,
            retry_delay: Duration::from_millis(200),
            max_ttl: Duration::from_secs(60),
            quarantine: None,
        }
    }
}

/// The clock drift allowance of a lease of `ttl`: 1 % plus 2 ms.
fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// A lease lock over N independent Redis servers (the Redlock algorithm),
/// used through coord-core's [`LockClient`](coord_core::LockClient) like any
/// other lock backend: waiting, the watchdog and `lost()` work unchanged.
///
/// Meant for 3 or 5 servers, each a standalone `redis-server` (or a
/// primary without replicas) with no data shared between them; it survives
/// `(n - 1) / 2` of them being down. It needs no consensus system, but its
/// safety rests on timing assumptions: bounded clock drift (1 % of the TTL
/// plus 2 ms is allowed), and a holder that stops using the lock when its
/// validity ends. Use the fencing token for anything that must be safe
/// regardless.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use coord_core::{LockClient, Settings};
/// use coord_redis::{RedlockBackend, RedlockConfig};
///
/// # async fn run() -> coord_core::Result<()> {
/// let urls = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"];
/// let backend =
///     RedlockBackend::connect(&urls, &Settings::default(), RedlockConfig::default()).await?;
/// let client = LockClient::new(Arc::new(backend));
/// let guard = client.lock("orders/42").ttl(Duration::from_secs(10)).build().acquire().await?;
/// println!("fencing token {}, valid for {:?}", guard.fencing_token(), guard.ttl());
/// guard.release().await?;
/// # Ok(()) }
/// ```
///
/// # Acquiring
///
/// One attempt sends each server's own acquisition (the lease lock's
/// script, with its fencing token) to all servers at once, each bounded by
/// [`RedlockConfig::server_timeout`]. It is granted when at least a quorum
/// granted and the validity `ttl - elapsed - drift` (drift = 1 % of the TTL
/// plus 2 ms) is still positive; the grant's [`LockGrant::ttl`] is that
/// validity, never more, so the guard's [`valid_until`] is conservative.
///
/// A failed attempt releases the lock on every server it reached before
/// returning: those that granted, and those whose reply was lost or was an
/// error (they may have granted). An attempt that won some servers but not a
/// quorum (contenders splitting the vote) is tried again up to
/// [`RedlockConfig::retry_count`] times after a random delay below
/// [`RedlockConfig::retry_delay`]; after that, or at once when no server
/// granted, the answer is [`AcquireOutcome::Held`] with the shortest
/// remaining lease reported, and the client's wait loop takes over.
///
/// TTLs above [`RedlockConfig::max_ttl`] are refused with
/// [`Error::InvalidArgument`] (the quarantine below is sized by it). An
/// attempt whose future is dropped midway (cancelled) cleans nothing up:
/// what it took expires with the TTL.
///
/// It fails closed: when fewer than a quorum of servers answered at all
/// (down, unreachable, too slow), the answer is [`Error::Unavailable`],
/// naming how many answered and how many are needed. A quarantined server
/// counts as an answer that does not grant.
///
/// An attempt by an owner that already holds the lock is a re-grant: each
/// server extends its lease and returns its current token. The token is the
/// same as before while the same servers grant; should a server that missed
/// the first grant join, the token may be higher (still above every earlier
/// holder's). A re-grant that fails releases the lock on the servers it
/// reached, like every failed attempt: the earlier hold is then lost.
///
/// # Fencing tokens
///
/// Each server hands out its own tokens (a hybrid logical clock: a counter
/// raised to the server's clock in microseconds when it falls behind). The Redlock token of a grant is the highest token `T` of
/// the servers that granted it; before the grant is returned, the fence of
/// every granting server below `T` is raised to `T` (one more round trip, in parallel, skipped when all tokens were equal). The
/// grant fails unless a quorum of servers is known to have its fence at `T`
/// or above. Any two quorums share a server, so the next grant's quorum
/// includes a server whose fence is at least `T`, whose token is then above
/// `T`, and so is the next Redlock token: tokens strictly increase per lock
/// name across holders and clients.
///
/// This holds as long as, between two grants, the shared server kept its
/// fence, which is true when at most a minority of servers lose their data
/// (restart without persistence) between two grants. Beyond that, the
/// per-server hybrid logical clock still raises a lost fence above earlier
/// tokens when the servers' clocks agree to within the outage, and the quarantine below makes every outage last longer
/// than `max_ttl`. Tokens are per lock name: tokens of different names are
/// not comparable. A cheaper scheme (no extra round trip) would need each
/// server's acquisition to take a floor for its token, which needs the
/// quorum's tokens before they exist; raising after the vote is the price.
///
/// # Renewing, releasing, listening
///
/// [`renew`](LockBackend::renew) extends the lease on all servers at once
/// (by the TTL plus the drift allowance, so that a server whose clock runs
/// fast still holds it for the TTL); it succeeds when a quorum renewed,
/// returns [`Error::NotHeld`] when a quorum can no longer renew (they said
/// not held), and [`Error::Unavailable`] otherwise.
/// [`release`](LockBackend::release) releases on all servers: `Ok` when any
/// server released, `NotHeld` when every server answered and none held it.
/// [`subscribe`](LockBackend::subscribe) merges the release notifications
/// of every server it reaches (a release on any of them may free the lock);
/// the merged stream ends when one of them ends, so the waiter listens anew.
/// [`force_release`](LockBackend::force_release) removes the lock on all
/// servers. [`inspect`](LockBackend::inspect) and
/// [`list`](LockBackend::list) report the majority view: a holder reported
/// by a quorum of servers, with the highest of their tokens and the time
/// until fewer than a quorum still hold it (they need the servers'
/// `inspect` / `list`). Queued locks are not supported.
///
/// # Restarted servers: quarantine
///
/// A server restarted without persistence has forgotten the locks it
/// granted; were it to grant them again at once, two owners could each hold
/// a quorum. So a server takes no part in grants (it counts as an answer
/// that does not grant, and is not sent acquisitions or renewals) until the
/// quarantine has passed since its process started: by default `max_ttl`
/// plus its drift allowance, after which every lock it granted before has
/// expired. Each server's `run_id` and start (from `INFO server`:
/// `uptime_in_seconds`, rounded so the start is never placed too early) are
/// read when connecting, before the next use of a server after any error
/// from it, and in the background at most once a second otherwise, so an
/// acquisition stays one round trip. A change of `run_id` is logged.
///
/// The server enforces it too, in the same script as each grant: the first check of a server process writes a
/// boot record (`{ns}:redlock:boot`: its `run_id` and start), and an
/// acquisition is refused, with nothing changed, when the record is
/// missing (the process restarted without persistence and nobody checked
/// it since), names another `run_id` than the client checked, or shows the
/// process younger than the quarantine. So every request that reaches a
/// restarted process is refused, whatever happened to the client's
/// connection while it was in flight (the connection manager re-connects
/// transparently). A grant is also not counted when an error from that
/// server came in while it was in flight; such a grant is released.
///
/// **What the quarantine guarantees.** No server takes part in a grant
/// less than `max_ttl` plus 1 % of it plus 2 ms after its process started,
/// so a lock it forgot in a restart had expired (its holder's validity
/// ended) before the server can grant it again, and two owners never both
/// hold a valid Redlock grant. This assumes: every client of these servers
/// uses a TTL no longer than this `max_ttl` (longer ones are refused here,
/// but a client configured with a larger `max_ttl` and a shorter
/// quarantine weakens the others); the servers' wall clocks do not jump
/// while a process is young (its start is read from `uptime_in_seconds`,
/// which is placed one second late to allow for its rounding, and compared
/// with `TIME`); and clocks of clients and servers run at rates within 1 %
/// of each other (the drift allowance). A server restarted **with**
/// persistence keeps its boot record and its locks; the new `run_id` is
/// noticed at the next check (after an error, or within a second) and the
/// server is quarantined from then on, so use AOF with `appendfsync
/// always`, or no persistence, on Redlock servers. A freshly deployed set
/// of servers grants nothing until its quarantine has passed.
///
/// **Servers that are down.** A server that failed is checked again in the
/// background; an attempt does not wait for that check unless fewer than a
/// quorum of servers are usable without it, and a server whose check failed
/// is not probed again for a second. So with a minority of servers down or
/// hung, an attempt takes one round trip of the live servers, not the
/// `server_timeout` of the dead ones.
///
/// [`valid_until`]: coord_core::LockGuard::valid_until
#[derive(Clone)]
pub struct RedlockBackend {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Vec<Server>,
    quorum: usize,
    config: RedlockConfig,
    quarantine: Duration,
    /// The quarantine in whole milliseconds (rounded up), as the acquire
    /// script takes it.
    quarantine_ms: u64,
    caps: Capabilities,
    raise_fence: Script,
    /// `redlock_boot.lua`: `INFO server`, and the server's boot record.
    boot: Script,
}

/// One server and what is known about it.
struct Server {
    addr: String,
    /// How to connect again when it was down at connect time.
    reconnect: Option<(RedisConfig, Settings)>,
    backend: RwLock<Option<RedisBackend>>,
    state: Mutex<ServerState>,
    /// Its boot record's key (`boot_key`), made once.
    boot_key: std::sync::OnceLock<Arc<str>>,
}

#[derive(Default)]
struct ServerState {
    /// Bumped on every error, so a check that began before it is ignored.
    generation: u64,
    /// When the server may grant again; `None` until a check after its last
    /// error (the server may have restarted).
    ready_at: Option<Instant>,
    run_id: Option<Arc<str>>,
    /// When the process of `run_id` leaves quarantine, as first estimated
    /// (kept across errors, unlike `ready_at`).
    ready_estimate: Option<Instant>,
    /// The last successful check.
    checked_at: Option<Instant>,
    /// When the last check failed, if it did (cleared by a successful one):
    /// the server is probed again [`CHECK_EVERY`] later, not on every attempt.
    check_failed_at: Option<Instant>,
    /// Whether a background check runs.
    checking: bool,
}

/// Whether one server may be used now.
enum Gate {
    /// Usable: checked, out of quarantine. Requests carry `run_id` (the
    /// server refuses them if it is another process), and a reply is
    /// trusted only if no error from the server came in since `generation`.
    Ready {
        backend: RedisBackend,
        run_id: Arc<str>,
        generation: u64,
    },
    Quarantined(Instant),
    /// Unknown since an error: check it first.
    CheckFirst,
    /// Unknown, and checked less than a second ago without success.
    Down,
}

/// One server's answer to an acquisition.
enum Vote {
    Granted(FencingToken),
    Refused(Option<Duration>),
    Quarantined(Instant),
    /// The server answered that it is not the process the client checked
    /// (it restarted): an answer that does not grant; it is checked again.
    Unverified,
    /// No answer; `sent` when the request may have reached the server.
    Failed {
        error: Error,
        sent: bool,
    },
}

/// One server's answer to a renewal.
enum RenewVote {
    Renewed,
    NotHeld,
    Failed(Error),
}

impl fmt::Debug for RedlockBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<&str> = self.inner.servers.iter().map(|s| s.addr.as_str()).collect();
        f.debug_struct("RedlockBackend")
            .field("servers", &addrs)
            .field("quorum", &self.inner.quorum)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn lock_state(m: &Mutex<ServerState>) -> MutexGuard<'_, ServerState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedlockBackend {
    /// Connects to the standalone servers at `urls` (`redis://`,
    /// `rediss://`), each with `settings` (namespace, timeouts). Servers
    /// that cannot be reached now are retried later, at most once a second;
    /// at least a quorum must be reachable now.
    ///
    /// Fails with [`Error::InvalidArgument`] for no URL, a malformed or
    /// cluster URL, the same server twice, or a bad `config`, and with
    /// [`Error::Unavailable`] when fewer than a quorum can be reached.
    ///
    /// ```no_run
    /// # async fn run() -> coord_core::Result<()> {
    /// use coord_core::Settings;
    /// use coord_redis::{RedlockBackend, RedlockConfig};
    ///
    /// let urls = ["redis://a:6379", "redis://b:6379", "redis://c:6379"];
    /// let backend =
    ///     RedlockBackend::connect(&urls, &Settings::default(), RedlockConfig::default()).await?;
    /// # drop(backend); Ok(()) }
    /// ```
    pub async fn connect(
        urls: &[&str],
        settings: &Settings,
        config: RedlockConfig,
    ) -> Result<RedlockBackend> {
        let quorum = check_config(urls.len(), &config)?;
        let mut configs = Vec::with_capacity(urls.len());
        for url in urls {
            let c = RedisConfig::from_url(url)?;
            if c.mode != RedisMode::Standalone || c.nodes.len() != 1 {
                return Err(Error::invalid(format!(
                    "Redlock needs standalone servers, one per URL; {:?} is not one",
                    coord_core::url::redact(url)
                )));
            }
            configs.push(c);
        }
        let connects = configs.iter().map(|c| async move {
            let attempt = RedisBackend::connect_with(c.clone(), settings);
            match tokio::time::timeout(settings.connect_timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout(format!(
                    "connecting to redis at {} took longer than {:?}",
                    c.addresses(),
                    settings.connect_timeout
                ))),
            }
        });
        let results = join_all(connects).await;
        let mut servers = Vec::with_capacity(urls.len());
        for (c, r) in configs.into_iter().zip(results) {
            let backend = match r {
                Ok(b) => Some(b),
                // Down now: tried again at the first check, then once a second.
                Err(e @ (Error::Unavailable { .. } | Error::Timeout(_))) => {
                    tracing::warn!(server = %c.addresses(), error = %e, "redis server unreachable; Redlock goes on without it for now");
                    None
                }
                Err(e) => return Err(e),
            };
            servers.push(Server {
                addr: c.addresses(),
                reconnect: Some((c, settings.clone())),
                boot_key: std::sync::OnceLock::new(),
                backend: RwLock::new(backend),
                state: Mutex::new(ServerState::default()),
            });
        }
        Self::build(servers, quorum, config).await
    }

    /// A Redlock over already connected standalone servers, one
    /// [`RedisBackend`] each (they must use the same namespace as every
    /// other client of the lock). Checks each server's `INFO server` now.
    ///
    /// Fails with [`Error::InvalidArgument`] for no backend, the same server
    /// twice, a cluster, or a bad `config`, and with [`Error::Unavailable`]
    /// when fewer than a quorum answer.
    ///
    /// ```no_run
    /// # async fn run() -> coord_core::Result<()> {
    /// use coord_core::Settings;
    /// use coord_redis::{RedisBackend, RedlockBackend, RedlockConfig};
    ///
    /// let s = Settings::default();
    /// let mut servers = Vec::new();
    /// for url in ["redis://a:6379", "redis://b:6379", "redis://c:6379"] {
    ///     servers.push(RedisBackend::connect(url, &s).await?);
    /// }
    /// let backend = RedlockBackend::new(servers, RedlockConfig::default()).await?;
    /// # drop(backend); Ok(()) }
    /// ```
    pub async fn new(servers: Vec<RedisBackend>, config: RedlockConfig) -> Result<RedlockBackend> {
        let quorum = check_config(servers.len(), &config)?;
        let servers = servers
            .into_iter()
            .map(|b| Server {
                addr: b.inner.addr.clone(),
                reconnect: None,
                boot_key: std::sync::OnceLock::new(),
                backend: RwLock::new(Some(b)),
                state: Mutex::new(ServerState::default()),
            })
            .collect();
        Self::build(servers, quorum, config).await
    }

    async fn build(
        servers: Vec<Server>,
        quorum: usize,
        config: RedlockConfig,
    ) -> Result<RedlockBackend> {
        for (i, s) in servers.iter().enumerate() {
            if servers[..i].iter().any(|o| o.addr == s.addr) {
                return Err(Error::invalid(format!(
                    "redis at {} is listed twice; Redlock needs independent servers",
                    s.addr
                )));
            }
        }
        let mut caps = Capabilities::new("redlock");
        caps.linearizable = false;
        caps.fencing = true;
        caps.fair_ordering = false;
        caps.native_ttl = true;
        caps.watch = true;
        caps.min_ttl = Duration::from_millis(10);
        caps.distributed = true;
        let quarantine = config
            .quarantine
            .unwrap_or(config.max_ttl + drift(config.max_ttl));
        let quarantine_ms =
            u64::try_from(quarantine.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let backend = RedlockBackend {
            inner: Arc::new(Inner {
                servers,
                quorum,
                config,
                quarantine,
                quarantine_ms,
                caps,
                raise_fence: Script::new(include_str!("scripts/raise_fence.lua")),
                boot: Script::new(include_str!("scripts/redlock_boot.lua")),
            }),
        };
        let n = backend.inner.servers.len();
        let checks = join_all((0..n).map(|i| backend.inner.check(i))).await;
        let mut failed = Vec::new();
        for (i, r) in checks.into_iter().enumerate() {
            match r {
                Ok(()) => {}
                Err(e @ Error::InvalidArgument(_)) => return Err(e),
                Err(e) => failed.push(format!("{}: {e}", backend.inner.servers[i].addr)),
            }
        }
        if n - failed.len() < quorum {
            return Err(Error::unavailable(
                format!(
                    "{} of {n} redis servers answered; Redlock needs {quorum} ({})",
                    n - failed.len(),
                    failed.join("; ")
                ),
                None,
            ));
        }
        if n.is_multiple_of(2) {
            tracing::warn!(
                servers = n,
                "Redlock over an even number of servers tolerates no more failures than over one fewer; use 3 or 5"
            );
        }
        Ok(backend)
    }

    /// How many servers must agree.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// The servers' addresses, in the order given.
    pub fn servers(&self) -> Vec<&str> {
        self.inner.servers.iter().map(|s| s.addr.as_str()).collect()
    }

    /// Whether server `index` is quarantined now (restarted less than the
    /// quarantine ago), or `None` when its state is unknown (unreachable
    /// since its last error) or `index` is out of range.
    pub fn is_quarantined(&self, index: usize) -> Option<bool> {
        let server = self.inner.servers.get(index)?;
        let ready_at = lock_state(&server.state).ready_at?;
        Some(Instant::now() < ready_at)
    }

    fn check_ttl(&self, ttl: Duration) -> Result<Duration> {
        let ttl = self.inner.caps.effective_ttl(ttl);
        if ttl > self.inner.config.max_ttl {
            return Err(Error::invalid(format!(
                "TTL {ttl:?} is longer than this Redlock's max_ttl {:?} (which sets the \
                 quarantine of restarted servers); raise RedlockConfig::max_ttl",
                self.inner.config.max_ttl
            )));
        }
        Ok(ttl)
    }
}

/// The quorum of `n` servers under `config`, or why `config` is unusable.
fn check_config(n: usize, config: &RedlockConfig) -> Result<usize> {
    if n == 0 {
        return Err(Error::invalid(
            "Redlock needs at least one server (3 or 5 are the intended use)",
        ));
    }
    let quorum = config.quorum.unwrap_or(n / 2 + 1);
    if quorum <= n / 2 || quorum > n {
        return Err(Error::invalid(format!(
            "a Redlock quorum of {quorum} over {n} servers is not a majority; use {} to {n}",
            n / 2 + 1
        )));
    }
    if config.server_timeout.is_zero() {
        return Err(Error::invalid(
            "RedlockConfig::server_timeout must be above zero",
        ));
    }
    if config.max_ttl.is_zero() {
        return Err(Error::invalid("RedlockConfig::max_ttl must be above zero"));
    }
    Ok(quorum)
}

/// `run_id` and `uptime_in_seconds` of an `INFO server` reply, and whether
/// the server is a cluster node.
fn parse_info(info: &str) -> Option<(String, u64, bool)> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let run_id = field("run_id").filter(|r| !r.is_empty())?.to_owned();
    let uptime = field("uptime_in_seconds")?.parse().ok()?;
    let cluster = field("redis_mode") == Some("cluster");
    Some((run_id, uptime, cluster))
}

/// One server's answer to a guarded acquisition (`redlock_acquire.lua`).
pub(crate) enum ServerVote {
    Granted(FencingToken),
    Held(Option<Duration>),
    /// Not the process the client checked (restarted): nothing changed.
    Unchecked,
    /// Younger than the quarantine, for this long more: nothing changed.
    Quarantined(Duration),
}

/// One guarded acquisition, as a batch carries it.
pub(crate) struct RedlockAcquireCall {
    boot: Arc<str>,
    keys: LockKeys,
    fence_end: usize,
    quarantine_ms: u64,
    run_id: Arc<str>,
    owner: LockOwner,
    ttl: Duration,
}

impl ScriptCall for RedlockAcquireCall {
    const KEYS: usize = 3;
    fn script(scripts: &crate::lock::Scripts) -> &Script {
        &scripts.redlock_acquire
    }
    fn keys(&self, cmd: &mut redis::Cmd) {
        cmd.arg(&*self.boot)
            .arg(self.keys.lock())
            .arg(&self.keys.buf[..self.fence_end]);
    }
    fn args(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.quarantine_ms)
            .arg(&*self.run_id)
            .arg(self.owner.as_str())
            .arg(crate::lock::ttl_ms(self.ttl));
    }
}

/// Decodes `redlock_acquire.lua`'s reply for one call.
fn parse_vote(reply: &Value, call: &RedlockAcquireCall, addr: &str) -> Result<ServerVote> {
    if let Value::Array(items) = reply
        && items.first() == Some(&Value::BulkString(b"redlock".to_vec()))
    {
        return match (items.get(1), items.get(2)) {
            (Some(Value::BulkString(s)), _) if s == b"unchecked" => Ok(ServerVote::Unchecked),
            (Some(Value::BulkString(s)), Some(Value::Int(ms))) if s == b"quarantined" => Ok(
                ServerVote::Quarantined(Duration::from_millis(u64::try_from(*ms).unwrap_or(0))),
            ),
            _ => Err(crate::error::unexpected_reply("redlock acquire", reply)),
        };
    }
    let fence = &call.keys.buf[..call.fence_end];
    Ok(
        match crate::lock::parse_acquire(reply, fence, call.ttl, addr)? {
            AcquireOutcome::Granted(g) => ServerVote::Granted(g.token),
            AcquireOutcome::Held { retry_after } => ServerVote::Held(retry_after),
        },
    )
}

impl RedisBackend {
    /// One guarded acquisition on this server for Redlock: granted only
    /// when the server process is `run_id` and older than `quarantine_ms`.
    /// Concurrent calls share one script call, like plain acquisitions.
    ///
    /// Not an `async fn`: its future is the batched call's alone, without
    /// a copy of the arguments beside it (Redlock boxes one per server and
    /// attempt, and keeps it within the allocator's small blocks).
    fn redlock_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
        quarantine_ms: u64,
        run_id: Arc<str>,
        boot: Arc<str>,
    ) -> impl Future<Output = Result<ServerVote>> + Send + '_ {
        let (keys, fence_end) = LockKeys::new(&self.inner.lock_prefix, name).with_fence();
        let call = RedlockAcquireCall {
            boot,
            keys,
            fence_end,
            quarantine_ms,
            run_id,
            owner: owner.clone(),
            ttl,
        };
        let backend = self.clone();
        let batcher = self.inner.batches.as_ref().map(|b| &b.redlock_acquire);
        send_one(batcher, call, "redlock acquire", move |calls| {
            let backend = backend.clone();
            async move {
                let addr = backend.inner.addr.clone();
                send_calls(&backend, &calls, "redlock acquire", |c, v| {
                    parse_vote(v, c, &addr)
                })
                .await
            }
        })
    }
}

/// The key of a server's boot record (`redlock_boot.lua`), in `backend`'s
/// namespace.
fn boot_key(backend: &RedisBackend) -> String {
    format!("{}:redlock:boot", backend.namespace())
}

/// A uniformly random delay in `[0, bound)`.
fn jitter(bound: Duration) -> Duration {
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(if nanos == 0 {
        0
    } else {
        fastrand::u64(..nanos)
    })
}

/// The setting that bounds each server's calls, for messages.
const SERVER_TIMEOUT: &str = "RedlockConfig::server_timeout";

/// Whether an error says nothing about the server's state (a refusal or bad
/// data, not a lost connection): such errors do not trigger a check.
fn is_data_error(e: &Error) -> bool {
    matches!(
        e,
        Error::NotHeld(_) | Error::Codec { .. } | Error::InvalidArgument(_) | Error::Unsupported(_)
    )
}

impl Inner {
    fn backend(&self, i: usize) -> Option<RedisBackend> {
        self.servers[i]
            .backend
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records an error from server `i`: it is not used again before a check.
    fn failed(&self, i: usize, e: &Error) {
        if is_data_error(e) {
            return;
        }
        let mut s = lock_state(&self.servers[i].state);
        s.generation += 1;
        s.ready_at = None;
        tracing::debug!(server = %self.servers[i].addr, error = %e, "redlock server failed; checking it before its next use");
    }

    /// Whether server `i` may be used now. Starts a background check when
    /// the last one is more than [`CHECK_EVERY`] old.
    fn gate(self: &Arc<Self>, i: usize, now: Instant) -> Gate {
        let mut s = lock_state(&self.servers[i].state);
        let Some(ready_at) = s.ready_at else {
            return match s.check_failed_at {
                Some(t) if now < t + CHECK_EVERY => Gate::Down,
                _ => Gate::CheckFirst,
            };
        };
        if s.checked_at.is_none_or(|t| now >= t + CHECK_EVERY) {
            self.spawn_check(i, &mut s);
        }
        if now < ready_at {
            return Gate::Quarantined(ready_at);
        }
        let (Some(run_id), generation) = (s.run_id.clone(), s.generation) else {
            return Gate::CheckFirst;
        };
        drop(s);
        match self.backend(i) {
            Some(backend) => Gate::Ready {
                backend,
                run_id,
                generation,
            },
            None => Gate::CheckFirst,
        }
    }

    /// Starts a check of server `i` in the background unless one runs.
    fn spawn_check(self: &Arc<Self>, i: usize, s: &mut ServerState) {
        if s.checking {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        s.checking = true;
        let inner = self.clone();
        handle.spawn(async move {
            let _ = inner.check(i).await;
            lock_state(&inner.servers[i].state).checking = false;
        });
    }

    /// The gate of every server for one attempt. Servers unknown since an
    /// error are checked in the background while the others are used; the
    /// attempt waits for those checks only when fewer than a quorum of
    /// servers are usable without them. Servers whose last check failed
    /// less than [`CHECK_EVERY`] ago are not probed again, so an attempt
    /// with a minority down costs one round trip of the live servers.
    async fn gates(self: &Arc<Self>) -> Vec<Gate> {
        let now = Instant::now();
        let mut gates: Vec<Gate> = (0..self.servers.len()).map(|i| self.gate(i, now)).collect();
        let unknown: Vec<usize> = (0..gates.len())
            .filter(|&i| matches!(gates[i], Gate::CheckFirst))
            .collect();
        if unknown.is_empty() {
            return gates;
        }
        let ready = gates
            .iter()
            .filter(|g| matches!(g, Gate::Ready { .. }))
            .count();
        if ready >= self.quorum {
            for &i in &unknown {
                self.spawn_check(i, &mut lock_state(&self.servers[i].state));
            }
            return gates;
        }
        join_all(unknown.iter().map(|&i| self.check(i))).await;
        let now = Instant::now();
        for i in unknown {
            gates[i] = self.gate(i, now);
        }
        gates
    }

    /// Whether an error from server `i` came in since `generation`.
    fn failed_since(&self, i: usize, generation: u64) -> bool {
        lock_state(&self.servers[i].state).generation != generation
    }

    fn not_checked(&self, i: usize) -> Error {
        Error::unavailable(
            format!(
                "redis at {} failed and has not answered a check since",
                self.servers[i].addr
            ),
            None,
        )
    }

    /// Reads `INFO server` of server `i` (connecting first if need be),
    /// records its run id and when its quarantine ends, and has the server
    /// keep its boot record (`redlock_boot.lua`). A failure is remembered,
    /// so the server is not probed again for [`CHECK_EVERY`].
    async fn check(&self, i: usize) -> Result<()> {
        let result = self.check_once(i).await;
        let mut s = lock_state(&self.servers[i].state);
        match result {
            Ok(true) => {
                s.check_failed_at = None;
                Ok(())
            }
            // Raced by an error: not the server's failure; checked again soon.
            Ok(false) => Err(self.not_checked(i)),
            Err(e) => {
                s.check_failed_at = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// One check: `Ok(false)` when an error from the server came in while
    /// it ran, so its answer may predate a restart and was dropped.
    async fn check_once(&self, i: usize) -> Result<bool> {
        let server = &self.servers[i];
        let generation = lock_state(&server.state).generation;
        let limit = self.config.server_timeout;
        let backend = match self.backend(i) {
            Some(b) => b,
            None => {
                let Some((config, settings)) = &server.reconnect else {
                    return Err(self.not_checked(i));
                };
                let b = crate::backend::bounded(
                    limit.max(settings.connect_timeout),
                    &server.addr,
                    "a connection",
                    SERVER_TIMEOUT,
                    RedisBackend::connect_with(config.clone(), settings),
                )
                .await?;
                *server.backend.write().unwrap_or_else(|p| p.into_inner()) = Some(b.clone());
                b
            }
        };
        let mut cmd = crate::lock::evalsha(&self.boot, 1);
        cmd.arg(boot_key(&backend));
        let info = backend
            .bounded(
                limit,
                "INFO server",
                SERVER_TIMEOUT,
                true,
                backend.eval::<String>(&self.boot, &cmd),
            )
            .await;
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                self.failed(i, &e);
                return Err(e);
            }
        };
        let Some((run_id, uptime, cluster)) = parse_info(&info) else {
            return Err(Error::backend(
                "redlock",
                format!(
                    "redis at {} answered INFO server without run_id and uptime_in_seconds; \
                     Redlock cannot tell whether it restarted",
                    server.addr
                ),
                false,
                None,
            ));
        };
        if cluster {
            return Err(Error::invalid(format!(
                "redis at {} is a cluster node; Redlock needs standalone servers",
                server.addr
            )));
        }
        let now = Instant::now();
        // `uptime_in_seconds` is the difference of two whole seconds (the
        // server clock now and at its start, each rounded down), so it may
        // overstate the true uptime by up to a second: the start is placed
        // at `now - (uptime - 1)`, never earlier than the true start, so the
        // quarantine never ends early.
        let up = Duration::from_secs(uptime.saturating_sub(1));
        let ready_at = now + self.quarantine.saturating_sub(up);
        let mut s = lock_state(&server.state);
        if s.generation != generation {
            // An error came in meanwhile: this answer may predate a restart.
            return Ok(false);
        }
        if s.run_id.as_deref().is_some_and(|old| old != run_id) {
            tracing::warn!(server = %server.addr, "redis server restarted (new run_id); quarantined until its uptime reaches the quarantine");
        }
        if now < ready_at && s.ready_at.is_none_or(|r| r <= now) {
            tracing::info!(server = %server.addr, uptime_s = uptime, quarantine = ?self.quarantine, "redis server started recently; it takes no part in Redlock grants until the quarantine ends");
        }
        // Each reading places the start no earlier than the true one; the
        // earliest of them (same process) is the closest, and keeps a server
        // that was out of quarantine from flapping back in on rounding.
        let ready_at = match s.ready_estimate {
            Some(earlier) if s.run_id.as_deref() == Some(run_id.as_str()) => earlier.min(ready_at),
            _ => ready_at,
        };
        s.run_id = Some(run_id.into());
        s.ready_estimate = Some(ready_at);
        s.ready_at = Some(ready_at);
        s.checked_at = Some(now);
        Ok(true)
    }

    /// One server's vote on an acquisition, through its `gate`.
    ///
    /// The request runs `redlock_acquire.lua`, which grants only when the
    /// server process is the one the client checked (its run id) and is out
    /// of quarantine, in the same script as the grant. A grant is counted
    /// only if no error from that server came in while it was in flight
    /// (another request may have met a restart and the connection been
    /// re-established meanwhile); otherwise it is cleaned up like a lost reply.
    async fn acquire_on(
        self: &Arc<Self>,
        i: usize,
        gate: Gate,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Vote {
        let (backend, run_id, generation) = match gate {
            Gate::Ready {
                backend,
                run_id,
                generation,
            } => (backend, run_id, generation),
            Gate::Quarantined(until) => return Vote::Quarantined(until),
            Gate::CheckFirst | Gate::Down => {
                return Vote::Failed {
                    error: self.not_checked(i),
                    sent: false,
                };
            }
        };
        let addr = &self.servers[i].addr;
        let boot = self.servers[i]
            .boot_key
            .get_or_init(|| boot_key(&backend).into())
            .clone();
        // Boxed: inline, the batched call would make this future (three of
        // which `try_acquire` allocates together per attempt) about 2.4 KB.
        let attempt =
            Box::pin(backend.redlock_acquire(name, owner, ttl, self.quarantine_ms, run_id, boot));
        let limit = self.config.server_timeout;
        let vote = backend
            .bounded(limit, "an acquisition", SERVER_TIMEOUT, true, attempt)
            .await
            .map(|v| match v {
                ServerVote::Granted(token) => Vote::Granted(token),
                ServerVote::Held(after) => Vote::Refused(after),
                ServerVote::Unchecked => Vote::Unverified,
                ServerVote::Quarantined(left) => Vote::Quarantined(Instant::now() + left),
            });
        match vote {
            Ok(Vote::Granted(_)) if self.failed_since(i, generation) => Vote::Failed {
                error: Error::unavailable(
                    format!(
                        "redis at {addr} failed while a grant from it was in flight; \
                         the grant is not counted"
                    ),
                    None,
                ),
                sent: true,
            },
            Ok(vote @ (Vote::Unverified | Vote::Quarantined(_))) => {
                tracing::info!(server = %addr, "redis server refused a Redlock grant as restarted or quarantined; checking it again");
                // Not a connection error, but the client's view is stale.
                let mut s = lock_state(&self.servers[i].state);
                s.generation += 1;
                s.ready_at = None;
                drop(s);
                vote
            }
            Ok(vote) => vote,
            Err(error) => {
                self.failed(i, &error);
                let sent = !is_data_error(&error);
                Vote::Failed { error, sent }
            }
        }
    }

    /// Releases `owner`'s lock on the servers `touched`, ignoring answers
    /// (a failed attempt's cleanup; a lease left behind expires anyway).
    async fn unlock(&self, touched: &[usize], name: &str, owner: &LockOwner) {
        let releases = touched.iter().map(|&i| async move {
            let Some(b) = self.backend(i) else { return };
            let addr = &self.servers[i].addr;
            let release = b.release(name, owner);
            match b
                .bounded(self.config.server_timeout, "a release", SERVER_TIMEOUT, true, release)
                .await
            {
                Ok(()) | Err(Error::NotHeld(_)) => {}
                Err(e) => {
                    self.failed(i, &e);
                    tracing::debug!(server = %addr, error = %e, "cleanup after a failed Redlock attempt failed; the lease expires with its TTL");
                }
            }
        });
        join_all(releases).await;
    }

    /// Raises the fence of `name` to `token` on the servers `below`.
    /// Returns how many of them now surely have a fence at or above it.
    async fn raise(&self, below: &[usize], name: &str, token: FencingToken) -> usize {
        let raises = below.iter().map(|&i| async move {
            let Some(b) = self.backend(i) else {
                return false;
            };
            let addr = &self.servers[i].addr;
            let key = format!("{}{name}}}:fence", b.inner.lock_prefix);
            let script = &self.raise_fence;
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash())
                .arg(1)
                .arg(&key)
                .arg(token.as_u64());
            let reply = b
                .bounded(
                    self.config.server_timeout,
                    "a fence raise",
                    SERVER_TIMEOUT,
                    true,
                    b.eval::<Value>(script, &cmd),
                )
                .await;
            match reply {
                Ok(Value::Int(fence)) if u64::try_from(fence).is_ok_and(|f| f >= token.as_u64()) => {
                    true
                }
                Ok(other) => {
                    tracing::warn!(server = %addr, fence = %key, reply = ?other, "the fence could not be raised (not a token?)");
                    false
                }
                Err(e) => {
                    self.failed(i, &e);
                    false
                }
            }
        });
        join_all(raises).await.into_iter().filter(|ok| *ok).count()
    }

    /// Whether server `i` is unknown since an error (a check is due or
    /// failed less than [`CHECK_EVERY`] ago): calls skip it, rather than
    /// wait the server timeout of a server that is probably down.
    fn is_unusable(&self, i: usize) -> bool {
        // What `gate` answers `CheckFirst` or `Down` for (or for a server
        // with no connection, which callers find with `backend`), without
        // its clock reading, clones and periodic check: calls that only read
        // or release (twice per server per release) need no more.
        let s = lock_state(&self.servers[i].state);
        s.ready_at.is_none() || s.run_id.is_none()
    }

    /// Runs `op` on every usable connected server at once, each bounded by
    /// the server timeout; an error for a server that is unusable (see
    /// [`is_unusable`](Self::is_unusable)) or has no connection.
    async fn on_all<T, F, Fut>(self: &Arc<Self>, what: &str, op: F) -> Vec<Result<T>>
    where
        F: Fn(RedisBackend) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let calls = (0..self.servers.len()).map(|i| {
            let backend = if self.is_unusable(i) {
                None
            } else {
                self.backend(i)
            };
            let op = &op;
            async move {
                let limit = self.config.server_timeout;
                let r = match backend {
                    Some(b) => {
                        b.bounded(limit, what, SERVER_TIMEOUT, true, op(b.clone()))
                            .await
                    }
                    None => Err(self.not_checked(i)),
                };
                if let Err(e) = &r {
                    self.failed(i, e);
                }
                r
            }
        });
        join_all(calls).await
    }

    fn unavailable(&self, answered: usize, what: &str, errors: &[Error]) -> Error {
        let first = errors
            .iter()
            .find(|e| !is_data_error(e))
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        Error::unavailable(
            format!(
                "{answered} of {} redis servers answered {what}; Redlock needs {}{first}",
                self.servers.len(),
                self.quorum
            ),
            None,
        )
    }
}

/// The majority view of one lease lock from each server's [`LockInfo`]: the
/// holder a quorum reports, with the highest of their tokens and the time
/// until fewer than a quorum still hold it.
fn majority_view(name: &str, infos: &[Option<&LockInfo>], quorum: usize) -> Option<LockInfo> {
    let mut by_owner: BTreeMap<&str, Vec<&HolderInfo>> = BTreeMap::new();
    for info in infos.iter().flatten() {
        if info.kind != StoredKind::Lease {
            continue;
        }
        if let Some(h) = info.holders.first() {
            by_owner.entry(h.owner.as_str()).or_default().push(h);
        }
    }
    let (owner, holders) = by_owner.into_iter().find(|(_, h)| h.len() >= quorum)?;
    let token = holders.iter().filter_map(|h| h.token).max();
    let mut remaining: Vec<Option<Duration>> = holders.iter().map(|h| h.ttl_remaining).collect();
    // Longest first; `None` (unknown) sorts last, so it is used only when
    // fewer than a quorum report a TTL.
    remaining.sort_by(|a, b| b.cmp(a));
    let ttl_remaining = if remaining.iter().all(Option::is_some) {
        remaining.get(quorum - 1).copied().flatten()
    } else {
        None
    };
    Some(LockInfo {
        name: name.to_owned(),
        kind: StoredKind::Lease,
        holders: vec![HolderInfo {
            owner: owner.to_owned(),
            token,
            mode: HoldMode::Exclusive,
            ttl_remaining,
            value: None,
        }],
        waiters: Vec::new(),
    })
}

#[coord_core::async_trait]
impl LockBackend for RedlockBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    async fn try_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<AcquireOutcome> {
        let ttl = self.check_ttl(ttl)?;
        let inner = &self.inner;
        let mut retries = 0;
        loop {
            let start = Instant::now();
            let gates = inner.gates().await;
            let votes = join_all(
                gates
                    .into_iter()
                    .enumerate()
                    .map(|(i, gate)| inner.acquire_on(i, gate, name, owner, ttl)),
            )
            .await;
            let mut granted: Vec<(usize, FencingToken)> = Vec::new();
            let mut touched = Vec::new();
            let mut refused = 0;
            let mut quarantined = 0;
            let mut retry_after: Option<Duration> = None;
            let mut errors = Vec::new();
            let mut hint = |d: Duration| {
                retry_after = Some(retry_after.map_or(d, |r| r.min(d)));
            };
            for (i, vote) in votes.into_iter().enumerate() {
                match vote {
                    Vote::Granted(token) => {
                        granted.push((i, token));
                        touched.push(i);
                    }
                    Vote::Refused(after) => {
                        refused += 1;
                        if let Some(a) = after {
                            hint(a);
                        }
                    }
                    Vote::Quarantined(until) => {
                        quarantined += 1;
                        hint(until.saturating_duration_since(start));
                    }
                    Vote::Unverified => {
                        quarantined += 1;
                        hint(inner.config.server_timeout);
                    }
                    Vote::Failed { error, sent } => {
                        if sent {
                            touched.push(i);
                        }
                        errors.push(error);
                    }
                }
            }
            let answered = granted.len() + refused + quarantined;
            let failure = if granted.len() >= inner.quorum {
                let top = granted
                    .iter()
                    .map(|(_, t)| *t)
                    .max()
                    .unwrap_or(FencingToken::new(0));
                let below: Vec<usize> = granted
                    .iter()
                    .filter(|(_, t)| *t < top)
                    .map(|(i, _)| *i)
                    .collect();
                let at_top = granted.len() - below.len();
                let raised = if below.is_empty() {
                    0
                } else {
                    inner.raise(&below, name, top).await
                };
                let elapsed = start.elapsed();
                let validity = ttl.saturating_sub(elapsed + drift(ttl));
                if at_top + raised < inner.quorum {
                    inner.unavailable(at_top + raised, "a fence raise", &errors)
                } else if validity.is_zero() {
                    Error::Timeout(format!(
                        "a quorum granted lock {name:?} but only after {elapsed:?}, too late \
                         for a TTL of {ttl:?} (minus {:?} for clock drift); use a longer TTL \
                         or a shorter RedlockConfig::server_timeout",
                        drift(ttl)
                    ))
                } else {
                    return Ok(AcquireOutcome::Granted(LockGrant {
                        token: top,
                        ttl: validity,
                    }));
                }
            } else if answered < inner.quorum {
                inner.unlock(&touched, name, owner).await;
                return Err(inner.unavailable(answered, "an acquisition", &errors));
            } else if !granted.is_empty()
                && retries < inner.config.retry_count
                && granted.len() + refused >= inner.quorum
            {
                // A split vote: give everything back, try again a bit later.
                inner.unlock(&touched, name, owner).await;
                retries += 1;
                tokio::time::sleep(jitter(inner.config.retry_delay)).await;
                continue;
            } else {
                inner.unlock(&touched, name, owner).await;
                return Ok(AcquireOutcome::Held { retry_after });
            };
            inner.unlock(&touched, name, owner).await;
            if retries >= inner.config.retry_count {
                return Err(failure);
            }
            retries += 1;
            tokio::time::sleep(jitter(inner.config.retry_delay)).await;
        }
    }

    async fn renew(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let ttl = self.check_ttl(ttl)?;
        // A server whose clock runs fast still holds it for `ttl`.
        let server_ttl = ttl + drift(ttl);
        let inner = &self.inner;
        let gates = inner.gates().await;
        let renewals = gates.into_iter().enumerate().map(|(i, gate)| async move {
            let backend = match gate {
                Gate::Ready { backend, .. } => backend,
                // Restarted: it holds nothing, and must not be made to.
                Gate::Quarantined(_) => return RenewVote::NotHeld,
                Gate::CheckFirst | Gate::Down => return RenewVote::Failed(inner.not_checked(i)),
            };
            let renewal = backend.renew(name, owner, server_ttl);
            let limit = inner.config.server_timeout;
            match backend
                .bounded(limit, "a renewal", SERVER_TIMEOUT, true, renewal)
                .await
            {
                Ok(()) => RenewVote::Renewed,
                Err(Error::NotHeld(_)) => RenewVote::NotHeld,
                Err(e) => {
                    inner.failed(i, &e);
                    RenewVote::Failed(e)
                }
            }
        });
        let votes = join_all(renewals).await;
        let renewed = votes
            .iter()
            .filter(|v| matches!(v, RenewVote::Renewed))
            .count();
        let errors: Vec<Error> = votes
            .into_iter()
            .filter_map(|v| match v {
                RenewVote::Failed(e) => Some(e),
                _ => None,
            })
            .collect();
        if renewed >= inner.quorum {
            Ok(())
        } else if renewed + errors.len() < inner.quorum {
            Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner} on a quorum of redis servers \
                 ({renewed} of {} renewed; {} needed)",
                inner.servers.len(),
                inner.quorum
            )))
        } else {
            let answered = inner.servers.len() - errors.len();
            Err(inner.unavailable(answered, "a renewal", &errors))
        }
    }

    async fn release(&self, name: &str, owner: &LockOwner) -> Result<()> {
        // A server skipped as unusable may still hold the lock (a grant in
        // flight when it failed): it is released there in the background,
        // bounded by the server timeout, so the caller does not wait for it.
        for i in 0..self.inner.servers.len() {
            if self.inner.is_unusable(i)
                && let Some(b) = self.inner.backend(i)
            {
                let (name, owner) = (name.to_owned(), owner.clone());
                let limit = self.inner.config.server_timeout;
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(limit, b.release(&name, &owner)).await;
                });
            }
        }
        let results = self
            .inner
            .on_all("a release", |b| async move { b.release(name, owner).await })
            .await;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        let errors: Vec<Error> = results.into_iter().filter_map(Result::err).collect();
        if errors.iter().all(|e| matches!(e, Error::NotHeld(_))) {
            return Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner} on any redis server"
            )));
        }
        let answered = errors.iter().filter(|e| is_data_error(e)).count();
        Err(self.inner.unavailable(answered, "a release", &errors))
    }

    async fn subscribe(&self, name: &str) -> Result<ReleaseEvents> {
        let results = self
            .inner
            .on_all("a subscription", |b| async move { b.subscribe(name).await })
            .await;
        let mut streams = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(events) => streams.push(
                    futures::stream::unfold(Some(events), |events| async move {
                        let mut events = events?;
                        let alive = events.next().await;
                        Some((alive, alive.then_some(events)))
                    })
                    .boxed(),
                ),
                Err(e) => errors.push(e),
            }
        }
        if streams.is_empty() {
            return Err(self.inner.unavailable(0, "a subscription", &errors));
        }
        // One server's channel ending ends the merged stream: the waiter
        // then listens anew (or polls) rather than miss that server's news.
        let merged = futures::stream::select_all(streams)
            .take_while(|alive| std::future::ready(*alive))
            .map(|_| ());
        Ok(ReleaseEvents::new(merged))
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        let results = self
            .inner
            .on_all("a forced release", |b| async move {
                b.force_release(name).await
            })
            .await;
        if results.iter().any(|r| matches!(r, Ok(true))) {
            return Ok(true);
        }
        let answered = results.iter().filter(|r| r.is_ok()).count();
        if answered >= self.inner.quorum {
            return Ok(false);
        }
        let errors: Vec<Error> = results.into_iter().filter_map(Result::err).collect();
        Err(self
            .inner
            .unavailable(answered, "a forced release", &errors))
    }

    async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        let results = self
            .inner
            .on_all("an inspection", |b| async move { b.inspect(name).await })
            .await;
        let mut infos = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(info) => infos.push(info),
                Err(e @ (Error::Unsupported(_) | Error::Codec { .. })) => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        let view: Vec<Option<&LockInfo>> = infos.iter().map(Option::as_ref).collect();
        if let Some(info) = majority_view(name, &view, self.inner.quorum) {
            return Ok(Some(info));
        }
        if infos.len() < self.inner.quorum {
            return Err(self
                .inner
                .unavailable(infos.len(), "an inspection", &errors));
        }
        Ok(None)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let results = self
            .inner
            .on_all("a listing", |b| async move { b.list(prefix).await })
            .await;
        let mut lists = Vec::new();
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(list) => lists.push(list),
                Err(e @ (Error::Unsupported(_) | Error::Codec { .. })) => return Err(e),
                Err(e) => errors.push(e),
            }
        }
        if lists.len() < self.inner.quorum {
            return Err(self.inner.unavailable(lists.len(), "a listing", &errors));
        }
        let mut names: BTreeMap<&str, Vec<Option<&LockInfo>>> = BTreeMap::new();
        for list in &lists {
            for info in list {
                names
                    .entry(info.name.as_str())
                    .or_default()
                    .push(Some(info));
            }
        }
        Ok(names
            .into_iter()
            .filter_map(|(name, infos)| majority_view(name, &infos, self.inner.quorum))
            .collect())
    }

    async fn health(&self) -> ComponentHealth {
        let inner = &self.inner;
        let n = inner.servers.len();
        let start = Instant::now();
        let pings = (0..n).map(|i| async move {
            let Some(b) = inner.backend(i) else {
                return Err(format!("{}: not connected", inner.servers[i].addr));
            };
            match tokio::time::timeout(inner.config.server_timeout, b.ping()).await {
                Ok(h) if h.is_healthy() => Ok(h.latency.unwrap_or_default()),
                Ok(h) => Err(format!(
                    "{}: {}",
                    inner.servers[i].addr,
                    h.detail.unwrap_or_default()
                )),
                Err(_) => Err(format!("{}: no answer in time", inner.servers[i].addr)),
            }
        });
        let results = join_all(pings).await;
        let latency = start.elapsed();
        let quarantined: Vec<&str> = (0..n)
            .filter(|&i| self.is_quarantined(i) == Some(true))
            .map(|i| inner.servers[i].addr.as_str())
            .collect();
        let problems: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        let usable = n - problems.len() - quarantined.len().min(n - problems.len());
        let mut detail = problems;
        if !quarantined.is_empty() {
            detail.push(format!(
                "quarantined after a restart: {}",
                quarantined.join(", ")
            ));
        }
        let mut health = ComponentHealth::healthy("redlock", latency);
        if !detail.is_empty() {
            health.status = if usable >= inner.quorum {
                HealthStatus::Degraded
            } else {
                HealthStatus::Unhealthy
            };
            health.detail = Some(format!(
                "{usable} of {n} servers usable, {} needed; {}",
                inner.quorum,
                detail.join("; ")
            ));
        }
        health
    }

    async fn close(&self) {
        let backends = (0..self.inner.servers.len()).filter_map(|i| self.inner.backend(i));
        join_all(backends.map(|b| async move { b.close().await })).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::tests::{SMALL_ALLOCATION, future_size};

    #[test]
    fn a_servers_vote_fits_the_allocators_small_blocks() {
        // Each attempt boxes one guarded call per server, and allocates the
        // servers' votes together (join_all).
        let call = future_size(&|b: &'static RedisBackend| {
            b.redlock_acquire(
                "x",
                &OWNER,
                Duration::from_secs(1),
                0,
                "r".into(),
                "b".into(),
            )
        });
        assert!(call <= SMALL_ALLOCATION, "redlock_acquire: {call} bytes");
        let vote = future_size(&|i: &'static Arc<Inner>| {
            i.acquire_on(0, Gate::Down, "x", &OWNER, Duration::from_secs(1))
        });
        // It was 2440 bytes with the call inline, over 7 KB for three servers.
        assert!(vote <= 512, "acquire_on: {vote} bytes");
    }

    static OWNER: std::sync::LazyLock<LockOwner> =
        std::sync::LazyLock::new(|| LockOwner::new("a", "b").expect("owner"));

    #[tokio::test]
    async fn a_refused_url_is_shown_without_its_password() {
        let urls = [
            "redis+cluster://app:s3cret@a:6379,b:6379",
            "redis://b:6379",
            "redis://c:6379",
        ];
        let err = RedlockBackend::connect(&urls, &Settings::default(), RedlockConfig::default())
            .await
            .expect_err("a cluster URL is refused");
        let shown = err.to_string();
        assert!(
            shown.contains("is not one") && shown.contains("app:***@"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn config_needs_a_majority_quorum_and_a_server() {
        let c = RedlockConfig::default();
        assert!(matches!(
            check_config(0, &c),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(check_config(1, &c).unwrap(), 1);
        assert_eq!(check_config(3, &c).unwrap(), 2);
        assert_eq!(check_config(4, &c).unwrap(), 3);
        assert_eq!(check_config(5, &c).unwrap(), 3);
        let mut low = c.clone();
        low.quorum = Some(2);
        assert!(matches!(
            check_config(4, &low),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(check_config(3, &low).unwrap(), 2);
        low.quorum = Some(4);
        assert!(matches!(
            check_config(3, &low),
            Err(Error::InvalidArgument(_))
        ));
        let mut zero = c;
        zero.server_timeout = Duration::ZERO;
        assert!(matches!(
            check_config(3, &zero),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        assert_eq!(drift(Duration::from_secs(10)), Duration::from_millis(102));
        assert_eq!(drift(Duration::ZERO), Duration::from_millis(2));
    }

    #[test]
    fn info_gives_run_id_uptime_and_mode() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
                    run_id:abc123\r\nuptime_in_seconds:42\r\n";
        assert_eq!(parse_info(info), Some(("abc123".to_owned(), 42, false)));
        let cluster = "redis_mode:cluster\r\nrun_id:x\r\nuptime_in_seconds:0\r\n";
        assert_eq!(parse_info(cluster), Some(("x".to_owned(), 0, true)));
        assert_eq!(parse_info("run_id:x\r\n"), None);
        assert_eq!(parse_info("run_id:\r\nuptime_in_seconds:1\r\n"), None);
        assert_eq!(parse_info("run_id:x\r\nuptime_in_seconds:soon\r\n"), None);
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(5)) < Duration::from_millis(5));
        }
    }

    fn info(owner: &str, token: u64, ttl_ms: Option<u64>) -> LockInfo {
        LockInfo {
            name: "n".to_owned(),
            kind: StoredKind::Lease,
            holders: vec![HolderInfo {
                owner: owner.to_owned(),
                token: Some(FencingToken::new(token)),
                mode: HoldMode::Exclusive,
                ttl_remaining: ttl_ms.map(Duration::from_millis),
                value: None,
            }],
            waiters: Vec::new(),
        }
    }

    #[test]
    fn majority_view_needs_a_quorum_of_one_owner() {
        let (a1, a2, b) = (
            info("c:a", 5, Some(900)),
            info("c:a", 7, Some(500)),
            info("c:b", 9, Some(100)),
        );
        let view = majority_view("n", &[Some(&a1), Some(&a2), Some(&b)], 2).unwrap();
        let h = &view.holders[0];
        assert_eq!(h.owner, "c:a");
        assert_eq!(h.token, Some(FencingToken::new(7)));
        // Held by a quorum until the second-longest lease ends.
        assert_eq!(h.ttl_remaining, Some(Duration::from_millis(500)));
        assert!(majority_view("n", &[Some(&a1), None, Some(&b)], 2).is_none());
        assert!(majority_view("n", &[None, None, None], 2).is_none());
    }
}
