//! [`RedisBackend`]: connecting, health, and the shared state of its clones.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use coord_core::{Capabilities, ComponentHealth, Result, Settings};
use redis::{Cmd, FromRedisValue, Script, ServerErrorKind};
use tracing::Instrument;

use crate::config::{RedisConfig, RedisMode};
use crate::connection::{Connection, standalone_client};
use crate::error::map_err;
use crate::pubsub::PubSubHub;

/// A Redis backend of coord's primitives (locks so far), on one server or a
/// Redis Cluster. Cheap to clone; clones share the connections.
///
/// Keys of a lock named `name` under namespace `ns` (the `{…}` is a cluster
/// hash tag, so all three live in one slot):
/// `{ns}:lock:{name}` (owner, with the lease as TTL),
/// `{ns}:lock:{name}:fence` (last fencing token) and the pub/sub channel
/// `{ns}:lock:{name}:released`.
///
/// Needs Redis 6.2 or later (the lock scripts use `SET … GET`).
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
    mode: RedisMode,
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
    /// Connects to the server(s) of a `redis://`, `rediss://` or
    /// `redis+cluster://` URL (see [`RedisConfig::from_url`]), using
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
    pub async fn connect_with(config: RedisConfig, settings: &Settings) -> Result<RedisBackend> {
        let addr = config.addresses();
        let span = tracing::info_span!("coord.redis.connect", addr = %addr, mode = ?config.mode);
        async move {
            let conn = Connection::open(&config, settings).await?;
            let clients = (0..config.nodes.len())
                .map(|i| standalone_client(&config, i))
                .collect::<Result<Vec<_>>>()?;
            let pubsub = PubSubHub::new(clients, addr.clone(), settings.connect_timeout);
            tracing::debug!("connected");
            Ok(RedisBackend {
                inner: Arc::new(Inner {
                    conn,
                    caps: capabilities(),
                    lock_prefix: format!("{}:lock:{{", settings.namespace),
                    addr,
                    pubsub: Arc::new(pubsub),
                    scripts: crate::lock::Scripts::new(),
                    mode: config.mode,
                }),
            })
        }
        .instrument(span)
        .await
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

    /// Runs `cmd` (an `EVALSHA` of `script`), loading the script and trying
    /// once more when the server does not know it (`NOSCRIPT`).
    pub(crate) async fn eval<T: FromRedisValue>(&self, script: &Script, cmd: &Cmd) -> Result<T> {
        let mut conn = self.inner.conn.clone();
        match cmd.query_async::<T>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                script
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| map_err(e, &self.inner.addr))?;
                cmd.query_async(&mut conn)
                    .await
                    .map_err(|e| map_err(e, &self.inner.addr))
            }
            other => other.map_err(|e| map_err(e, &self.inner.addr)),
        }
    }
}

fn capabilities() -> Capabilities {
    let mut caps = Capabilities::new("redis");
    // Replication is asynchronous: a failover can lose an acknowledged lock.
    caps.linearizable = false;
    caps.fencing = true;
    caps.fair_ordering = false;
    caps.native_ttl = true;
    caps.watch = true;
    caps.min_ttl = std::time::Duration::from_millis(1);
    caps.distributed = true;
    caps
}
