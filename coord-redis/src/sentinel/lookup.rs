//! Asking the sentinels which node is the master: redis-rs's
//! [`SentinelClient`] (`SENTINEL MASTERS`, skipping a master flagged down,
//! then `ROLE` on the node named), bounded, with errors that say what to do.

use std::time::Duration;

use coord_core::{Error, Result};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ErrorKind, RedisError, Role};

use crate::config::{RedisConfig, RedisNode};
use crate::error::map_err;

/// redis-rs's Sentinel client for `config`: the sentinels with their own
/// credentials, the master with the data nodes' credentials and database.
pub(super) fn sentinel_client(config: &RedisConfig, name: &str) -> Result<SentinelClient> {
    let addrs = config.nodes.iter().map(|n| config.connection_addr(n));
    let bad = |e: RedisError| Error::invalid(format!("sentinel configuration: {e}"));
    let mut builder =
        SentinelClientBuilder::new(addrs, name, SentinelServerType::Master).map_err(bad)?;
    if let Some(sentinel) = &config.sentinel {
        if let Some(u) = &sentinel.username {
            builder = builder.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &sentinel.password {
            builder = builder.set_client_to_sentinel_password(p);
        }
    }
    if let Some(u) = &config.username {
        builder = builder.set_client_to_redis_username(u);
    }
    if let Some(p) = &config.password {
        builder = builder.set_client_to_redis_password(p);
    }
    builder = builder.set_client_to_redis_db(config.db);
    #[cfg(feature = "tls")]
    if config.tls {
        builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
    }
    builder.build().map_err(bad)
}

/// The master the sentinels name now, checked to answer `ROLE` as master.
pub(super) async fn find_master(
    client: &mut SentinelClient,
    name: &str,
    sentinels: &str,
    timeout: Duration,
) -> Result<RedisNode> {
    // Boxed: redis-rs's lookup is a deeply nested future, too deep for the
    // layout of every future that awaits a connect.
    let lookup = Box::pin(client.async_get_client());
    let found = match tokio::time::timeout(timeout, lookup).await {
        Ok(found) => found,
        Err(_) => {
            return Err(Error::Timeout(format!(
                "the sentinels at {sentinels} did not name a master {name:?} that answers \
                 within connect_timeout ({timeout:?}); check that redis-sentinel runs there \
                 and that the master is up"
            )));
        }
    };
    let client = found.map_err(|e| lookup_error(e, name, sentinels))?;
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => Ok(RedisNode {
            host: host.clone(),
            port: *port,
        }),
        other => Err(Error::invalid(format!(
            "the sentinels at {sentinels} named a master at {other}, which is not a TCP address"
        ))),
    }
}

/// Says what a failed lookup means and what to do.
fn lookup_error(e: RedisError, name: &str, sentinels: &str) -> Error {
    if e.kind() == ErrorKind::MasterNameNotFoundBySentinel {
        return Error::unavailable(
            format!(
                "no sentinel at {sentinels} names a master {name:?} that is up: check that \
                 the master name in the URL is the one in the sentinels' `sentinel monitor \
                 <name> …` line, or wait for the failover in progress to finish"
            ),
            Some(Box::new(e) as _),
        );
    }
    if e.kind() == ErrorKind::InvalidClientConfig && e.to_string().contains("sentinel") {
        return Error::invalid(format!(
            "{sentinels} is not a Redis Sentinel ({e}): list the sentinels' addresses (port \
             26379 by default) in a redis+sentinel:// URL, or connect to a server without \
             sentinels with redis://host:port"
        ));
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        return Error::unavailable(
            format!(
                "cannot reach the sentinels at {sentinels}, or the master they name ({e}); \
                 check that redis-sentinel runs at those addresses (port 26379 by default) \
                 and that the master {name:?} is up"
            ),
            Some(Box::new(e) as _),
        );
    }
    let err = map_err(e, &format!("the sentinels at {sentinels}"));
    if err.to_string().contains("credentials") {
        return err.context(
            "the URL's user:password@ is for the master; give the sentinels' own password \
             as ?sentinel_password=…",
        );
    }
    err
}

/// `ROLE` of `node`, on a new connection.
pub(super) async fn role_of(config: &RedisConfig, node: &RedisNode) -> redis::RedisResult<Role> {
    let client = redis::Client::open(config.connection_info(node).map_err(|e| {
        RedisError::from((ErrorKind::InvalidClientConfig, "address", e.to_string()))
    })?)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("ROLE").query_async(&mut conn).await
}
