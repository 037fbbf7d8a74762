//! The command connection: a multiplexed, auto-reconnecting
//! [`ConnectionManager`] for one server (a [`ResyncedManager`], given up
//! for a new one after a timeout), a [`ClusterConnection`] for a cluster,
//! or a [`SentinelConnection`] (a `ResyncedManager` that follows the
//! sentinels' master), behind one enum so the lock code is written once.

use std::sync::Arc;
use std::time::Duration;

use coord_core::{Result, Settings};
use redis::aio::{ConnectionLike, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::{RedisConfig, RedisMode};
use crate::error::map_err;
use crate::sentinel::{MasterTracker, SentinelConnection};

mod resynced;

pub(crate) use resynced::ResyncedManager;

/// A cheap-to-clone handle on the command connection(s).
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(Arc<ResyncedManager>),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Standalone(_) => "Connection::Standalone",
            Connection::Cluster(_) => "Connection::Cluster",
            Connection::Sentinel(_) => "Connection::Sentinel",
        })
    }
}

impl Connection {
    /// Opens the command connection described by `config`.
    pub(crate) async fn open(config: &RedisConfig, settings: &Settings) -> Result<Connection> {
        let addr = config.addresses();
        #[cfg(feature = "tls")]
        if config.tls {
            install_crypto_provider();
        }
        match config.mode {
            RedisMode::Standalone => {
                let client = standalone_client(config, 0)?;
                ResyncedManager::connect(client, manager_config(settings))
                    .await
                    .map(|m| Connection::Standalone(Arc::new(m)))
                    .map_err(|e| map_err(e, &addr))
            }
            RedisMode::Sentinel => {
                MasterTracker::connect(config, settings, manager_config(settings))
                    .await
                    .map(|tracker| Connection::Sentinel(SentinelConnection::new(tracker)))
            }
            RedisMode::Cluster => {
                let nodes = config
                    .nodes
                    .iter()
                    .map(|n| config.connection_info(n))
                    .collect::<Result<Vec<_>>>()?;
                let mut builder = ClusterClient::builder(nodes)
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.request_timeout);
                if let Some(u) = &config.username {
                    builder = builder.username(u);
                }
                if let Some(p) = &config.password {
                    builder = builder.password(p);
                }
                #[cfg(feature = "tls")]
                if config.tls {
                    builder = builder.tls(redis::TlsMode::Secure);
                }
                let client = builder.build().map_err(|e| map_err(e, &addr))?;
                client
                    .get_async_connection()
                    .await
                    .map(Connection::Cluster)
                    .map_err(|e| map_err(e, &addr))
            }
        }
    }

    /// The master tracker of a `redis+sentinel://` connection.
    pub(crate) fn tracker(&self) -> Option<&std::sync::Arc<MasterTracker>> {
        match self {
            Connection::Sentinel(c) => Some(c.tracker()),
            _ => None,
        }
    }

    /// Which master requests go to now: a number that changes when a
    /// `redis+sentinel://` connection follows a failover (always 0 for
    /// the others).
    pub(crate) fn generation(&self) -> u64 {
        self.tracker().map_or(0, |t| t.current().generation)
    }

    /// The id of the connection requests go to now (0 on a cluster): pass
    /// it to [`timed_out`](Self::timed_out) when a call bounded by a
    /// deadline of its own gave up.
    pub(crate) fn mark(&self) -> u64 {
        match self {
            Connection::Standalone(c) => c.mark(),
            Connection::Sentinel(c) => c.tracker().current().manager.mark(),
            Connection::Cluster(_) => 0,
        }
    }

    /// A call on connection `mark` gave up at its deadline: later requests
    /// go to a new connection (see [`ResyncedManager`]). The cluster
    /// client keeps its connections.
    pub(crate) fn timed_out(&self, mark: u64) {
        match self {
            Connection::Standalone(c) => c.timed_out(mark),
            Connection::Sentinel(c) => c.tracker().current().manager.timed_out(mark),
            Connection::Cluster(_) => {}
        }
    }

    /// A reply said the server refused a write as a replica (`READONLY`
    /// inside a script's reply, which the connection cannot see): for a
    /// `redis+sentinel://` connection, looks the master up and returns
    /// whether requests now go to another master than at generation
    /// `seen`. Always false for the others.
    pub(crate) async fn refused_as_replica(&self, seen: u64) -> bool {
        match self {
            // Boxed: the master lookup's future is large (about 3 KB), and
            // every script call's future would carry it inline.
            Connection::Sentinel(c) => Box::pin(c.refused_as_replica(seen)).await,
            _ => false,
        }
    }
}

/// The options of a [`ConnectionManager`] (standalone, and each master
/// of a `redis+sentinel://` connection).
fn manager_config(settings: &Settings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.request_timeout))
        // Reconnects are retried a few times here; core's retry
        // policy retries the requests themselves.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

/// rustls needs a process-wide crypto provider; install ring's unless the
/// application installed one already.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A plain client of the `index`-th node, for dedicated connections (pub/sub).
pub(crate) fn standalone_client(config: &RedisConfig, index: usize) -> Result<redis::Client> {
    let node = &config.nodes[index % config.nodes.len()];
    redis::Client::open(config.connection_info(node)?).map_err(|e| map_err(e, &node.to_string()))
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => Box::pin(c.send(cmd)),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => Box::pin(c.send_pipeline(cmd, offset, count)),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(c) => c.get_db(),
        }
    }
}
