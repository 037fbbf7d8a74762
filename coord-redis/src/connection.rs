//! The command connection: a multiplexed, auto-reconnecting
//! [`ConnectionManager`] for one server or a [`ClusterConnection`] for a
//! cluster, behind one enum so the lock code is written once.

use std::time::Duration;

use coord_core::{Result, Settings};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::{RedisConfig, RedisMode};
use crate::error::map_err;

/// A cheap-to-clone handle on the command connection(s).
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Standalone(_) => "Connection::Standalone",
            Connection::Cluster(_) => "Connection::Cluster",
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
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(Some(settings.request_timeout))
                    // Reconnects are retried a few times here; core's retry
                    // policy retries the requests themselves.
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_with_config(client, manager_config)
                    .await
                    .map(Connection::Standalone)
                    .map_err(|e| map_err(e, &addr))
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
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}
