//! [`MasterTracker`]: which node is the master now, and a command
//! connection to it, kept current through failovers.
//!
//! * **Lookup**: redis-rs's [`SentinelClient`] asks the sentinels in the
//!   URL's order (`SENTINEL MASTERS`, skipping a master flagged down) and
//!   checks with `ROLE` that the node it names calls itself master. Every
//!   lookup is bounded by `connect_timeout`.
//! * **Events**: a task keeps a pub/sub connection to one sentinel
//!   (the next one when it drops) subscribed to `+switch-master`, and moves
//!   to the new master as soon as a sentinel announces it. This is what
//!   follows a `SENTINEL FAILOVER`, where the old master keeps answering
//!   as a master until the sentinels demote it several seconds later.
//! * **Errors**: the command connection asks for a new lookup when the
//!   master it talks to refuses a write (`READONLY`: a demoted master) or
//!   cannot be reached ([`MasterTracker::follow`]); this catches a switch
//!   whose event was missed.
//!
//! A move builds a new [`ConnectionManager`] (multiplexed, reconnecting
//! by itself to its one address) for the new master, swaps it in, and
//! bumps a generation that the pub/sub hub watches, so its streams end and
//! are subscribed again on the new master.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use coord_core::{Error, Result, Settings};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ErrorKind, RedisError, Role};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{RedisConfig, RedisNode};
use crate::error::map_err;

/// The channel on which sentinels announce a new master.
const SWITCH_MASTER: &str = "+switch-master";

/// Lookups triggered by failed requests are at most this often: many
/// requests failing at once during a failover ask the sentinels once.
const MIN_LOOKUP_INTERVAL: Duration = Duration::from_millis(100);

/// Backoff of the event listener when no sentinel can be subscribed to.
const MIN_LISTEN_DELAY: Duration = Duration::from_millis(50);
const MAX_LISTEN_DELAY: Duration = Duration::from_secs(2);

/// The master the command connection talks to.
pub(crate) struct Master {
    /// Its address, as the sentinels name it.
    pub(crate) node: RedisNode,
    /// The command connection to it.
    pub(crate) manager: ConnectionManager,
    /// Bumped on every move to another master.
    pub(crate) generation: u64,
}

/// The current master of one Sentinel-monitored set and the connection to
/// it. Shared by the command connection and the pub/sub hub.
pub(crate) struct MasterTracker {
    name: String,
    config: RedisConfig,
    manager_config: ConnectionManagerConfig,
    timeout: Duration,
    /// The sentinels, as `host:port,…`, for messages.
    sentinels: String,
    /// redis-rs's lookup; the lock also makes moves one at a time.
    lookup: tokio::sync::Mutex<Lookup>,
    current: ArcSwap<Master>,
    changes: watch::Sender<u64>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

/// The lookup client and when it last ran because of a failed request.
struct Lookup {
    client: SentinelClient,
    last: Option<Instant>,
}

impl std::fmt::Debug for MasterTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterTracker")
            .field("name", &self.name)
            .field("sentinels", &self.sentinels)
            .field("master", &self.current.load().node)
            .finish_non_exhaustive()
    }
}

impl Drop for MasterTracker {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl MasterTracker {
    /// Finds the master of `config` through its sentinels, connects to it,
    /// and starts listening for `+switch-master` (waiting, within
    /// `settings.connect_timeout`, until subscribed, so that a failover
    /// right after `connect` is not missed).
    pub(crate) async fn connect(
        config: &RedisConfig,
        settings: &Settings,
        manager_config: ConnectionManagerConfig,
    ) -> Result<Arc<MasterTracker>> {
        let name = config
            .sentinel
            .as_ref()
            .map(|s| s.master_name.clone())
            .ok_or_else(|| Error::invalid("not a redis+sentinel:// configuration"))?;
        let until = Instant::now() + settings.connect_timeout;
        let mut lookup = Lookup {
            client: sentinel_client(config, &name)?,
            last: None,
        };
        let sentinels = config.addresses();
        // Three quarters of connect_timeout, so that a lookup that hangs
        // fails with its own message before the whole connect times out.
        let limit = settings.connect_timeout.mul_f64(0.75);
        let node = find_master(&mut lookup.client, &name, &sentinels, limit).await?;
        let manager = open_manager(config, &node, &manager_config).await?;
        let clients = config
            .nodes
            .iter()
            .map(|n| {
                let info = config.sentinel_connection_info(n)?;
                redis::Client::open(info).map_err(|e| map_err(e, &n.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        tracing::debug!(master = %node, %name, "found the master through the sentinels");
        let tracker = Arc::new(MasterTracker {
            name,
            config: config.clone(),
            manager_config,
            timeout: settings.connect_timeout,
            sentinels,
            lookup: tokio::sync::Mutex::new(lookup),
            current: ArcSwap::from_pointee(Master {
                node,
                manager,
                generation: 0,
            }),
            changes: watch::Sender::new(0),
            listener: Mutex::new(None),
        });
        let (ready_tx, ready) = oneshot::channel();
        let task = tokio::spawn(listen(Arc::downgrade(&tracker), clients, ready_tx));
        *tracker.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        // Leave a quarter of connect_timeout to the rest of connect.
        let ready_by = until
            .checked_sub(settings.connect_timeout / 4)
            .unwrap_or(until);
        if tokio::time::timeout_at(ready_by, ready).await.is_err() {
            tracing::warn!(
                sentinels = %tracker.sentinels,
                "could not subscribe to +switch-master on any sentinel in time; a failover \
                 is followed when a request fails, and events once a sentinel answers"
            );
        }
        Ok(tracker)
    }

    /// The master now.
    pub(crate) fn current(&self) -> Arc<Master> {
        self.current.load_full()
    }

    /// The generation, bumped on each move to another master.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The database of every connection.
    pub(crate) fn db(&self) -> i64 {
        self.config.db
    }

    /// The master's name and sentinels, for messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "master {:?} of the sentinels at {}",
            self.name, self.sentinels
        )
    }

    /// A plain client of the current master (for a pub/sub connection).
    pub(crate) fn client_of(&self, node: &RedisNode) -> Result<redis::Client> {
        redis::Client::open(self.config.connection_info(node)?)
            .map_err(|e| map_err(e, &node.to_string()))
    }

    /// Asks the sentinels for the master after a request to generation
    /// `seen` failed, and moves there if it is another node. Returns whether
    /// the connection is now on another master than `seen`'s. Lookups run
    /// one at a time and at most every [`MIN_LOOKUP_INTERVAL`]; a failed
    /// lookup (no master yet: a failover in progress) is logged, not
    /// returned.
    pub(crate) async fn follow(&self, seen: u64) -> bool {
        let mut lookup = self.lookup.lock().await;
        if self.current.load().generation != seen {
            return true;
        }
        if lookup
            .last
            .is_some_and(|t| t.elapsed() < MIN_LOOKUP_INTERVAL)
        {
            return false;
        }
        let found = find_master(
            &mut lookup.client,
            &self.name,
            &self.sentinels,
            self.timeout,
        )
        .await;
        lookup.last = Some(Instant::now());
        match found {
            Ok(node) if node != self.current.load().node => self.move_to(node).await,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "no master to move to yet");
                false
            }
        }
    }

    /// Moves to `node`, which a sentinel announced as the new master, once
    /// it answers `ROLE` as a master.
    async fn follow_announced(&self, node: RedisNode) {
        let _lookup = self.lookup.lock().await;
        if self.current.load().node == node {
            return;
        }
        match tokio::time::timeout(self.timeout, role_of(&self.config, &node)).await {
            Ok(Ok(Role::Primary { .. })) => {
                self.move_to(node).await;
            }
            other => tracing::warn!(
                %node,
                reply = ?other.map(|r| r.map(|role| format!("{role:?}"))),
                "a sentinel announced a master that does not answer as one; staying"
            ),
        }
    }

    /// Connects to `node` and makes it the master of every later request.
    /// The caller holds the lookup lock.
    async fn move_to(&self, node: RedisNode) -> bool {
        let from = self.current.load().node.clone();
        match open_manager(&self.config, &node, &self.manager_config).await {
            Ok(manager) => {
                let generation = self.current.load().generation + 1;
                self.current.store(Arc::new(Master {
                    node: node.clone(),
                    manager,
                    generation,
                }));
                self.changes.send_replace(generation);
                tracing::info!(master = %self.name, %from, to = %node, "following a failover");
                true
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "cannot connect to the new master yet");
                false
            }
        }
    }
}

/// redis-rs's Sentinel client for `config`: the sentinels with their own
/// credentials, the master with the data nodes' credentials and database.
fn sentinel_client(config: &RedisConfig, name: &str) -> Result<SentinelClient> {
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
async fn find_master(
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
async fn role_of(config: &RedisConfig, node: &RedisNode) -> redis::RedisResult<Role> {
    let client = redis::Client::open(config.connection_info(node).map_err(|e| {
        RedisError::from((ErrorKind::InvalidClientConfig, "address", e.to_string()))
    })?)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("ROLE").query_async(&mut conn).await
}

/// A command connection to `node`.
async fn open_manager(
    config: &RedisConfig,
    node: &RedisNode,
    manager_config: &ConnectionManagerConfig,
) -> Result<ConnectionManager> {
    let info = config.connection_info(node)?;
    let addr = node.to_string();
    let client = redis::Client::open(info).map_err(|e| map_err(e, &addr))?;
    ConnectionManager::new_with_config(client, manager_config.clone())
        .await
        .map_err(|e| map_err(e, &addr))
}

/// The new master's address in a `+switch-master` message
/// (`<name> <old-ip> <old-port> <new-ip> <new-port>`), when it is about
/// the master `name`.
fn parse_switch(payload: &[u8], name: &str) -> Option<RedisNode> {
    let text = std::str::from_utf8(payload).ok()?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [n, _, _, host, port] if *n == name => Some(RedisNode {
            host: (*host).to_owned(),
            port: port.parse().ok()?,
        }),
        _ => None,
    }
}

/// Listens for `+switch-master` on one sentinel at a time, moving on to
/// the next when its connection ends. Signals `ready` once first
/// subscribed; after a reconnect, looks the master up (an event may have
/// been missed meanwhile). Ends with the tracker.
async fn listen(
    tracker: Weak<MasterTracker>,
    sentinels: Vec<redis::Client>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut delay = MIN_LISTEN_DELAY;
    let mut next = 0usize;
    let mut failed_in_a_row = 0usize;
    loop {
        let Some((timeout, name)) = tracker.upgrade().map(|t| (t.timeout, t.name.clone())) else {
            return;
        };
        let client = &sentinels[next % sentinels.len()];
        next = next.wrapping_add(1);
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(SWITCH_MASTER).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            other => {
                tracing::debug!(
                    sentinel = ?client.get_connection_info().addr(),
                    error = ?other.map(|r| r.err()),
                    "cannot subscribe to +switch-master; trying the next sentinel"
                );
                failed_in_a_row += 1;
                if failed_in_a_row >= sentinels.len() {
                    failed_in_a_row = 0;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_LISTEN_DELAY);
                }
                continue;
            }
        };
        failed_in_a_row = 0;
        delay = MIN_LISTEN_DELAY;
        match ready.take() {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => {
                let Some(t) = tracker.upgrade() else { return };
                let seen = t.current().generation;
                t.follow(seen).await;
            }
        }
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Some(t) = tracker.upgrade() else { return };
            if let Some(node) = parse_switch(msg.get_payload_bytes(), &name) {
                t.follow_announced(node).await;
            }
        }
        tracing::debug!(
            sentinel = ?client.get_connection_info().addr(),
            "the +switch-master subscription ended; subscribing on the next sentinel"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_messages_parse() {
        let node = parse_switch(b"mymaster 127.0.0.1 7001 127.0.0.1 7002", "mymaster");
        assert_eq!(
            node,
            Some(RedisNode {
                host: "127.0.0.1".into(),
                port: 7002
            })
        );
        assert_eq!(
            parse_switch(b"other 127.0.0.1 7001 127.0.0.1 7002", "mymaster"),
            None
        );
        assert_eq!(parse_switch(b"mymaster 127.0.0.1 7001", "mymaster"), None);
        assert_eq!(parse_switch(b"mymaster h 1 h notaport", "mymaster"), None);
        assert_eq!(parse_switch(b"\xff", "mymaster"), None);
    }
}
