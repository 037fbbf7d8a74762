//! [`RedisBackend`]: connecting, health, and the shared state of its clones.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::{Capabilities, ComponentHealth, Error, Result, Settings};
use redis::{Cmd, FromRedisValue, Script, ServerErrorKind};
use tracing::Instrument;

use crate::config::{RedisConfig, RedisMode, RedisNode};
use crate::connection::{Connection, standalone_client};
use crate::error::map_err;
use crate::pubsub::{Nodes, PubSubHub};
use crate::sentinel::{ReplicaAck, eval_acked};

/// A Redis backend of coord's primitives, on one server, a Redis Cluster,
/// or the master that Redis Sentinels name (followed through failovers; see
/// the [`sentinel`](crate::sentinel) module for how, and what a failover
/// does to locks). Cheap to clone; clones share the connections.
///
/// Keys of a lock named `name` under namespace `ns` (the `{…}` is a cluster
/// hash tag, so all three live in one slot):
/// `{ns}:lock:{name}` (the owner, plus a trailing NUL byte once a waiter was
/// refused; the lease is its TTL),
/// `{ns}:lock:{name}:fence` (last fencing token) and the pub/sub channel
/// `{ns}:lock:{name}:released`.
///
/// Needs Redis 7.0 or later (the lock scripts use `SET … NX GET` and
/// `PEXPIRETIME`); `connect` checks the server's version and refuses an
/// older one.
#[derive(Clone)]
pub struct RedisBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) conn: Connection,
    pub(crate) caps: Capabilities,
    /// `{ns}:lock:{`, the start of every lock key.
    pub(crate) lock_prefix: String,
    /// The configured node(s), for messages.
    pub(crate) addr: String,
    pub(crate) pubsub: Arc<PubSubHub>,
    pub(crate) scripts: crate::lock::Scripts,
    /// Concurrent acquisitions and releases share script calls (standalone
    /// servers only: a cluster script may not span slots).
    pub(crate) batches: Option<crate::lock::LockBatches>,
    pub(crate) mode: RedisMode,
    /// The connections of cache traffic, when it has its own (standalone
    /// servers with `cache.redis_pool_size` > 0).
    pub(crate) cache_pool: Option<deadpool_redis::Pool>,
    /// The deadline of one request.
    pub(crate) request_timeout: std::time::Duration,
    /// Whether (and how long) a lock's writes wait for a replica's
    /// acknowledgement: behind Sentinel, unless `replica_ack=off`.
    pub(crate) replica_ack: Option<ReplicaAck>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("addr", &self.inner.addr)
            .field("mode", &self.inner.mode)
            .field("lock_prefix", &self.inner.lock_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the server(s) of a `redis://`, `rediss://`,
    /// `redis+cluster://` or `redis+sentinel://` URL (see
    /// [`RedisConfig::from_url`]), using
    /// `settings.namespace`, `settings.connect_timeout` and
    /// `settings.request_timeout` (the response timeout of every request).
    ///
    /// Fails with [`Error::InvalidArgument`](coord_core::Error::InvalidArgument)
    /// for a malformed URL and [`Error::Unavailable`](coord_core::Error::Unavailable)
    /// when the server cannot be reached.
    pub async fn connect(url: &str, settings: &Settings) -> Result<RedisBackend> {
        let config = RedisConfig::from_url(url)?;
        Self::connect_with(config, settings).await
    }

    /// Connects with an already parsed configuration.
    ///
    /// The whole connection (TCP, TLS, authentication, the version check)
    /// is bounded by `settings.connect_timeout`. When it fails, the address
    /// is probed once, so that a URL pointed at something else says so
    /// ("this does not look like a Redis server"), and a server that wants
    /// a password while the URL has none says that a password is needed.
    pub async fn connect_with(config: RedisConfig, settings: &Settings) -> Result<RedisBackend> {
        let addr = config.addresses();
        let limit = settings.connect_timeout;
        let until = tokio::time::Instant::now() + limit;
        let attempt = Self::open(&config, settings);
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(backend)) => Ok(backend),
            Ok(Err(e)) => {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                Err(explain_connect_error(e, &config, left).await)
            }
            Err(_) => Err(Error::Timeout(format!(
                "redis at {addr} did not complete a connection within connect_timeout \
                 ({limit:?}): it accepted the connection but did not answer like Redis, or \
                 it is paused or overloaded; check the URL's host and port (Redis listens \
                 on 6379 by default{})",
                if config.mode == RedisMode::Sentinel {
                    ", Sentinel on 26379"
                } else {
                    ""
                }
            ))),
        }
    }

    async fn open(config: &RedisConfig, settings: &Settings) -> Result<RedisBackend> {
        let addr = config.addresses();
        let span = tracing::info_span!("coord.redis.connect", addr = %addr, mode = ?config.mode);
        async move {
            let conn = Connection::open(config, settings).await?;
            let addr = match conn.tracker() {
                Some(tracker) => tracker.describe(),
                None => addr,
            };
            check_server_version(&conn, &addr).await?;
            let nodes = match conn.tracker() {
                Some(tracker) => Nodes::Sentinel(tracker.clone()),
                None => Nodes::Fixed(
                    (0..config.nodes.len())
                        .map(|i| standalone_client(config, i))
                        .collect::<Result<Vec<_>>>()?,
                ),
            };
            let pubsub = PubSubHub::new(nodes, addr.clone(), settings.connect_timeout);
            // The pool is made for one address; behind Sentinel, cache
            // traffic shares the command connection, which follows the master.
            let cache_pool = match (config.mode, settings.cache.redis_pool_size) {
                (RedisMode::Standalone, size) if size > 0 => {
                    Some(cache_pool(config, settings, size)?)
                }
                (RedisMode::Sentinel, size) if size > 0 => {
                    tracing::info!(
                        "cache.redis_pool_size is not used with redis+sentinel://; cache \
                         traffic shares the connection that follows the master"
                    );
                    None
                }
                _ => None,
            };
            tracing::debug!("connected");
            Ok(RedisBackend {
                inner: Arc::new(Inner {
                    conn,
                    caps: capabilities(),
                    lock_prefix: format!("{}:lock:{{", settings.namespace),
                    addr,
                    pubsub: Arc::new(pubsub),
                    scripts: crate::lock::Scripts::new(),
                    batches: (config.mode != RedisMode::Cluster)
                        .then(crate::lock::LockBatches::new),
                    mode: config.mode,
                    cache_pool,
                    request_timeout: settings.request_timeout,
                    replica_ack: config
                        .sentinel
                        .as_ref()
                        .filter(|s| s.replica_ack)
                        .map(|_| ReplicaAck::within(settings.request_timeout)),
                }),
            })
        }
        .instrument(span)
        .await
    }

    /// The namespace of every key (the lock prefix is `{ns}:lock:{`).
    pub(crate) fn namespace(&self) -> &str {
        let prefix = &self.inner.lock_prefix;
        prefix.strip_suffix(":lock:{").unwrap_or(prefix.as_str())
    }

    /// The master requests go to now, for a `redis+sentinel://` backend
    /// (`None` for the others). It changes when the backend follows a
    /// failover.
    pub fn current_master(&self) -> Option<RedisNode> {
        self.inner
            .conn
            .tracker()
            .map(|tracker| tracker.current().node.clone())
    }

    /// One timed `PING`.
    pub async fn ping(&self) -> ComponentHealth {
        let span = tracing::debug_span!("coord.redis.health", addr = %self.inner.addr);
        async {
            let start = Instant::now();
            let mut conn = self.inner.conn.clone();
            match redis::cmd("PING").query_async::<String>(&mut conn).await {
                Ok(_) => ComponentHealth::healthy("redis", start.elapsed()),
                Err(e) => {
                    let err = map_err(e, &self.inner.addr);
                    tracing::debug!(error = %err, "unhealthy");
                    ComponentHealth::unhealthy("redis", err.to_string())
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs `call` within `limit`, failing with [`Error::Timeout`] (`what`
    /// says which call, `setting` what bounds it). When the call sends on
    /// the shared connection (`on_shared`), that connection is given up at
    /// the deadline: a call cut off from outside never reports redis-rs's
    /// own timeout, which would (see `ResyncedManager`).
    pub(crate) async fn bounded<T>(
        &self,
        limit: Duration,
        what: &str,
        setting: &str,
        on_shared: bool,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        // (The timeout inline, not through `bounded`: a Redlock vote's
        // future carries this one, and a nested future would grow it.)
        let mark = on_shared.then(|| self.inner.conn.mark());
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(mark) = mark {
                    self.inner.conn.timed_out(mark);
                }
                Err(no_answer(&self.inner.addr, what, limit, setting))
            }
        }
    }

    /// Runs `cmd` (an `EVALSHA` of `script`), loading the script and trying
    /// again when the server does not know it (`NOSCRIPT`). Twice at most:
    /// behind Sentinel the second try can meet a new master that does not
    /// know the script either (scripts are not replicated).
    pub(crate) async fn eval<T: FromRedisValue>(&self, script: &Script, cmd: &Cmd) -> Result<T> {
        self.eval_raw(script, cmd)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))
    }

    /// [`eval`](Self::eval) for a lock's write (a grant, a renewal): behind
    /// Sentinel it counts only once a replica acknowledged it (see
    /// [`SentinelConfig::replica_ack`](crate::SentinelConfig::replica_ack)).
    pub(crate) async fn eval_acked<T: FromRedisValue>(
        &self,
        script: &Script,
        cmd: &Cmd,
    ) -> Result<T> {
        self.eval_acked_raw(script, cmd)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))
    }

    /// [`eval_acked`](Self::eval_acked) with the driver's error.
    pub(crate) async fn eval_acked_raw<T: FromRedisValue>(
        &self,
        script: &Script,
        cmd: &Cmd,
    ) -> redis::RedisResult<T> {
        match &self.inner.replica_ack {
            // Boxed: only Sentinel backends take this path, and inline its
            // future would grow every script call's (a Redlock vote's too).
            Some(ack) => Box::pin(eval_acked(&self.inner.conn, ack, script, cmd)).await,
            None => self.eval_raw(script, cmd).await,
        }
    }

    /// Whether a lock's writes wait for a replica's acknowledgement.
    pub(crate) fn acks_writes(&self) -> bool {
        self.inner.replica_ack.is_some()
    }

    /// [`eval`](Self::eval) with the driver's error, for a caller that maps
    /// one error to several.
    pub(crate) async fn eval_raw<T: FromRedisValue>(
        &self,
        script: &Script,
        cmd: &Cmd,
    ) -> redis::RedisResult<T> {
        let mut conn = self.inner.conn.clone();
        let mut loads = 0;
        loop {
            match cmd.query_async::<T>(&mut conn).await {
                Err(e)
                    if loads < 2
                        && e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
                {
                    script.load_async(&mut conn).await?;
                    loads += 1;
                }
                other => return other,
            }
        }
    }
}

/// Runs `call` within `limit`, failing with [`Error::Timeout`] that names
/// the server at `addr`, the call (`what`) and the `setting` that bounds it.
/// A call on a backend's connection goes through [`RedisBackend::bounded`],
/// which also retires the connection at the deadline.
pub(crate) async fn bounded<T>(
    limit: Duration,
    addr: &str,
    what: &str,
    setting: &str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(no_answer(addr, what, limit, setting)),
    }
}

/// The [`Error::Timeout`] of a call to `addr` that `setting` bounded.
fn no_answer(addr: &str, what: &str, limit: Duration, setting: &str) -> Error {
    Error::Timeout(format!(
        "redis at {addr} did not answer {what} within {limit:?} ({setting})"
    ))
}

/// A pool of `size` connections to the (first) server of `config`, opened
/// lazily, for cache traffic.
fn cache_pool(
    config: &RedisConfig,
    settings: &Settings,
    size: usize,
) -> Result<deadpool_redis::Pool> {
    let node = &config.nodes[0];
    let info = config.connection_info(node)?;
    deadpool_redis::Config::from_connection_info(info)
        .builder()
        .map_err(|e| Error::invalid(format!("redis cache pool for {node}: {e}")))?
        .max_size(size)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .wait_timeout(Some(settings.request_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.request_timeout))
        .build()
        .map_err(|e| Error::invalid(format!("redis cache pool for {node}: {e}")))
}

/// Makes a failed connection's error say what answers at the address, when
/// that is not Redis (an etcd or HTTP port, a silent listener). Errors
/// about credentials, and servers that answer like Redis, keep their error.
async fn explain_connect_error(e: Error, config: &RedisConfig, left: std::time::Duration) -> Error {
    if config.tls || left.is_zero() || is_credentials_error(&e) {
        return e;
    }
    let Some(node) = config.nodes.first() else {
        return e;
    };
    let addr = node.to_string();
    let peer = coord_core::probe::probe(&addr, left.min(std::time::Duration::from_secs(2))).await;
    // The URL's first host is a sentinel in a redis+sentinel:// URL.
    let (who, what, port) = match config.mode {
        RedisMode::Sentinel => ("sentinel", "a Redis Sentinel", "Sentinel listens on 26379"),
        _ => ("redis", "a Redis server", "Redis listens on 6379"),
    };
    use coord_core::probe::Peer;
    match peer {
        Peer::Redis | Peer::RedisNeedsAuth | Peer::Unreachable(_) => e,
        Peer::Silent => Error::Timeout(format!(
            "{who} at {addr} {}: this does not look like {what}, or it is paused; \
             check the URL's host and port ({port} by default)",
            peer.describe()
        )),
        other => {
            let message = format!(
                "{who} at {addr} {}: this does not look like {what}; check the URL's \
                 host and port ({port} by default, etcd on 2379)",
                other.describe()
            );
            match other {
                // A proxy with no server behind it does this too: it may
                // pass.
                Peer::ClosedSilently => Error::unavailable(message, Some(Box::new(e) as _)),
                // Another server answered: trying again cannot help.
                _ => Error::backend("redis", message, false, Some(Box::new(e) as _)),
            }
        }
    }
}

/// Whether `e` is about credentials (wrong or missing password).
fn is_credentials_error(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("password") || text.contains("credentials")
}

/// The oldest Redis the lock scripts run on: `SET key value NX GET` is 7.0.
const MIN_SERVER_MAJOR: u64 = 7;

/// Refuses a server older than [`MIN_SERVER_MAJOR`]. Asks with `HELLO` (no
/// arguments: the protocol is unchanged, and every ACL user may send it);
/// Redis before 6.2 refuses a bare `HELLO`, so then asks `INFO server`. A
/// server that answers neither with a version (a Redis-compatible server
/// that answers differently) is let through.
async fn check_server_version(conn: &Connection, addr: &str) -> Result<()> {
    let mut conn = conn.clone();
    let version = match redis::cmd("HELLO")
        .query_async::<redis::Value>(&mut conn)
        .await
    {
        Ok(reply) => server_version(&reply),
        Err(e) if e.is_io_error() || e.is_timeout() => {
            return Err(map_err(e, addr));
        }
        Err(e) if e.code() == Some("NOAUTH") => {
            return Err(Error::backend(
                "redis",
                format!(
                    "redis at {addr} needs a password and the URL gives none: put it in the \
                     URL, redis://:PASSWORD@{addr} (or redis://USER:PASSWORD@{addr} for an ACL \
                     user)"
                ),
                false,
                Some(Box::new(e) as _),
            ));
        }
        Err(e) => {
            tracing::debug!(error = %e, "HELLO refused; asking INFO server");
            match redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut conn)
                .await
            {
                Ok(info) => info_version(&info),
                Err(e) => {
                    tracing::debug!(error = %e, "INFO refused; server version not checked");
                    None
                }
            }
        }
    };
    match version {
        Some(version) if major_version(&version).is_some_and(|m| m < MIN_SERVER_MAJOR) => {
            Err(Error::Unsupported(format!(
                "the Redis server at {addr} is version {version}; coord needs Redis \
                 {MIN_SERVER_MAJOR}.0 or later (its lock scripts use `SET … NX GET` and \
                 `PEXPIRETIME`)"
            )))
        }
        _ => Ok(()),
    }
}

/// `redis_version` from an `INFO server` reply.
fn info_version(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

/// The `version` field of a `HELLO` reply (a map in RESP3, a flat
/// key/value array in RESP2).
fn server_version(reply: &redis::Value) -> Option<String> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        Value::Array(items) => items
            .chunks(2)
            .find(|kv| text(&kv[0]).as_deref() == Some("version"))
            .and_then(|kv| kv.get(1).and_then(text)),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some("version"))
            .and_then(|(_, v)| text(v)),
        _ => None,
    }
}

fn major_version(version: &str) -> Option<u64> {
    version.split('.').next()?.parse().ok()
}

fn capabilities() -> Capabilities {
    let mut caps = Capabilities::new("redis");
    // Replication is asynchronous: a failover can lose an acknowledged lock.
    caps.linearizable = false;
    caps.fencing = true;
    // Queued locks grant in arrival order (queue.rs).
    caps.fair_ordering = true;
    caps.native_ttl = true;
    caps.watch = true;
    caps.min_ttl = std::time::Duration::from_millis(1);
    caps.distributed = true;
    caps
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn version_is_read_from_resp2_and_resp3_hello_replies() {
        let resp2 = Value::Array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("version"),
            bulk("6.2.14"),
            bulk("proto"),
            Value::Int(2),
        ]);
        assert_eq!(server_version(&resp2).as_deref(), Some("6.2.14"));
        let resp3 = Value::Map(vec![(bulk("version"), bulk("7.0.15"))]);
        assert_eq!(server_version(&resp3).as_deref(), Some("7.0.15"));
        assert_eq!(server_version(&Value::Nil), None);
        assert_eq!(major_version("6.2.14"), Some(6));
        assert_eq!(major_version("7.0.15"), Some(7));
        assert_eq!(major_version("df-v1"), None);
        let info = "# Server\r\nredis_version:6.0.16\r\nredis_mode:standalone\r\n";
        assert_eq!(info_version(info).as_deref(), Some("6.0.16"));
        assert_eq!(info_version("# Server\r\n"), None);
    }
}
