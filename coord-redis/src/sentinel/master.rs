//! [`MasterTracker`]: which node is the master now, and a command
//! connection to it, kept current through failovers.
//!
//! * **Lookup** (`lookup.rs`): every sentinel is asked at once
//!   (`SENTINEL MASTER`, skipping a master flagged down); the address is
//!   rewritten by the `address_map` setting, and the node must answer
//!   `ROLE` as master. Every lookup is bounded by `connect_timeout`.
//! * **Events** (`events.rs`): a task keeps a pub/sub connection to one sentinel
//!   (the next one when it drops) subscribed to `+switch-master`, and moves
//!   to the new master as soon as a sentinel announces it. This is what
//!   follows a `SENTINEL FAILOVER`, where the old master keeps answering
//!   as a master until the sentinels demote it several seconds later.
//!   The same task asks that sentinel for the master every `master_check`
//!   (1 s by default), which catches an event that was missed or a move
//!   that failed, and moves on to the next sentinel when one does not
//!   answer within `connect_timeout`.
//! * **Errors** (`connection.rs`): the command connection asks for a new lookup when the
//!   master it talks to refuses a write (`READONLY`: a demoted master) or
//!   cannot be reached ([`MasterTracker::follow`]); this catches a switch
//!   whose event was missed.
//!
//! A move builds a new [`ResyncedManager`] (multiplexed, reconnecting
//! by itself to its one address, and given up for a new one after a
//! timeout) for the new master, swaps it in, and
//! bumps a generation that the pub/sub hub watches, so its streams end and
//! are subscribed again on the new master.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use coord_core::{Error, Result, Settings};
use redis::Role;
use redis::aio::ConnectionManagerConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{RedisConfig, RedisNode};
use crate::connection::ResyncedManager;
use crate::error::map_err;
use crate::sentinel::events::listen;
use crate::sentinel::lookup::{find_master, mapped, role_of};

/// Lookups triggered by failed requests are at most this often: many
/// requests failing at once during a failover ask the sentinels once.
const MIN_LOOKUP_INTERVAL: Duration = Duration::from_millis(100);

/// The master the command connection talks to.
pub(crate) struct Master {
    /// Its address, as the sentinels name it.
    pub(crate) node: RedisNode,
    /// The command connection to it.
    pub(crate) manager: ResyncedManager,
    /// Bumped on every move to another master.
    pub(crate) generation: u64,
}

/// The current master of one Sentinel-monitored set and the connection to
/// it. Shared by the command connection and the pub/sub hub.
pub(crate) struct MasterTracker {
    name: String,
    config: RedisConfig,
    /// For `address_map`.
    settings: Settings,
    manager_config: ConnectionManagerConfig,
    timeout: Duration,
    /// The sentinels, as `host:port,…`, for messages.
    sentinels: String,
    /// When a failed request last made the tracker look the master up;
    /// the lock also makes moves one at a time.
    lookup: tokio::sync::Mutex<Option<Instant>>,
    current: ArcSwap<Master>,
    changes: watch::Sender<u64>,
    listener: Mutex<Option<JoinHandle<()>>>,
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
        let sentinels = config.addresses();
        // Three quarters of connect_timeout, so that a lookup that hangs
        // fails with its own message before the whole connect times out.
        let limit = settings.connect_timeout.mul_f64(0.75);
        let node = find_master(config, settings, &name, &sentinels, limit).await?;
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
            settings: settings.clone(),
            manager_config,
            timeout: settings.connect_timeout,
            sentinels,
            lookup: tokio::sync::Mutex::new(None),
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

    /// The master's name, as the sentinels monitor it.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The bound of one lookup or connection (`connect_timeout`).
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often the event listener asks its sentinel for the master
    /// (the URL's `master_check`), if at all.
    pub(super) fn check_every(&self) -> Option<Duration> {
        self.config.sentinel.as_ref().and_then(|s| s.master_check)
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
        let mut last = self.lookup.lock().await;
        if self.current.load().generation != seen {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < MIN_LOOKUP_INTERVAL) {
            return false;
        }
        let found = find_master(
            &self.config,
            &self.settings,
            &self.name,
            &self.sentinels,
            self.timeout,
        )
        .await;
        *last = Some(Instant::now());
        match found {
            Ok(node) if node != self.current.load().node => self.move_to(node).await,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "no master to move to yet");
                false
            }
        }
    }

    /// Moves to `node` (as `address_map` rewrites it), which a sentinel
    /// announced or named as the master, once it answers `ROLE` as a
    /// master; nothing when it is the master already.
    pub(super) async fn follow_announced(&self, node: RedisNode) {
        let node = mapped(&self.settings, &node.host, node.port);
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

/// A command connection to `node`.
async fn open_manager(
    config: &RedisConfig,
    node: &RedisNode,
    manager_config: &ConnectionManagerConfig,
) -> Result<ResyncedManager> {
    let info = config.connection_info(node)?;
    let addr = node.to_string();
    let client = redis::Client::open(info).map_err(|e| map_err(e, &addr))?;
    ResyncedManager::connect(client, manager_config.clone())
        .await
        .map_err(|e| map_err(e, &addr))
}
