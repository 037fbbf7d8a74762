//! Asking the sentinels which node is the master: `SENTINEL MASTER <name>`
//! on every sentinel at once, skipping an answer that flags the master
//! down (`s_down`/`o_down`), the address rewritten by
//! [`Settings::map_address`] (containers, NAT), then `ROLE` on the node
//! named; bounded, with errors that say what to do. (redis-rs's
//! `SentinelClient` does the same, one sentinel after another, but connects
//! to the address a sentinel names, with no way to rewrite it.)

use std::collections::HashMap;
use std::time::Duration;

use coord_core::{Error, Result, Settings};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use redis::{ErrorKind, RedisError, Role};

use crate::config::{RedisConfig, RedisNode};
use crate::error::map_err;

/// What one sentinel said about the master.
enum Answer {
    /// Up, at this (mapped) address.
    Master(RedisNode),
    /// Flagged down, or not monitored by this sentinel.
    NoMaster,
}

/// The master the sentinels name now, checked to answer `ROLE` as master.
pub(super) async fn find_master(
    config: &RedisConfig,
    settings: &Settings,
    name: &str,
    sentinels: &str,
    timeout: Duration,
) -> Result<RedisNode> {
    let lookup = async {
        let mut asks: FuturesUnordered<_> = config
            .nodes
            .iter()
            .map(|sentinel| ask(config, settings, sentinel, name))
            .collect();
        let mut checked: Vec<RedisNode> = Vec::new();
        // An error about a master a sentinel named is the one to report
        // (the caller can act on it); else the last one.
        let (mut master_error, mut last_error) = (None, None);
        while let Some(answer) = asks.next().await {
            let node = match answer {
                Ok(Answer::Master(node)) => node,
                Ok(Answer::NoMaster) => {
                    last_error = Some(RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "no sentinel names a master that is up",
                    )));
                    continue;
                }
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            if checked.contains(&node) {
                continue;
            }
            checked.push(node.clone());
            match role_of(config, &node).await {
                Ok(Role::Primary { .. }) => return Ok(node),
                Ok(_) => {
                    master_error = Some(RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "the node a sentinel named is not a master",
                    )))
                }
                Err(e) => master_error = Some(e),
            }
        }
        Err(master_error.or(last_error).unwrap_or_else(|| {
            RedisError::from((ErrorKind::InvalidClientConfig, "no sentinel given"))
        }))
    };
    match tokio::time::timeout(timeout, lookup).await {
        Ok(Ok(node)) => Ok(node),
        Ok(Err(e)) => Err(lookup_error(e, name, sentinels)),
        Err(_) => Err(Error::Timeout(format!(
            "the sentinels at {sentinels} did not name a master {name:?} that answers \
             within connect_timeout ({timeout:?}); check that redis-sentinel runs there \
             and that the master is up (and, if the sentinels announce addresses this \
             process cannot reach, map them with the address_map setting)"
        ))),
    }
}

/// `SENTINEL MASTER <name>` on `sentinel`.
async fn ask(
    config: &RedisConfig,
    settings: &Settings,
    sentinel: &RedisNode,
    name: &str,
) -> redis::RedisResult<Answer> {
    let info = config.sentinel_connection_info(sentinel).map_err(|e| {
        RedisError::from((ErrorKind::InvalidClientConfig, "address", e.to_string()))
    })?;
    let mut conn = redis::Client::open(info)?
        .get_multiplexed_async_connection()
        .await?;
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(name)
        .query_async(&mut conn)
        .await;
    let flat = match reply {
        Ok(flat) => flat,
        // "ERR No such master with that name"
        Err(e) if e.to_string().contains("No such master") => return Ok(Answer::NoMaster),
        Err(e) if e.to_string().contains("unknown command") => {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "not a sentinel",
                e.to_string(),
            )));
        }
        Err(e) => return Err(e),
    };
    let fields: HashMap<&str, &str> = flat
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.as_str(), v.as_str())),
            _ => None,
        })
        .collect();
    let up = fields.get("flags").is_some_and(|flags| {
        flags.contains("master") && !flags.contains("s_down") && !flags.contains("o_down")
    });
    let (Some(ip), Some(Ok(port))) = (
        fields.get("ip"),
        fields.get("port").map(|p| p.parse::<u16>()),
    ) else {
        return Ok(Answer::NoMaster);
    };
    if !up {
        return Ok(Answer::NoMaster);
    }
    Ok(Answer::Master(mapped(settings, ip, port)))
}

/// The address to reach a node a sentinel named as `host port`.
pub(super) fn mapped(settings: &Settings, host: &str, port: u16) -> RedisNode {
    let (host, port) = settings.map_address(host, port);
    RedisNode { host, port }
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
                 and that the master {name:?} is up; if the sentinels name an address only \
                 their own network reaches (containers, NAT), map it with the address_map \
                 setting"
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
