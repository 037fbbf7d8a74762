//! [`ResyncedManager`]: a [`ConnectionManager`] that is given up for a new
//! one after a request on it timed out.
//!
//! A multiplexed connection pairs each reply with a request by their order.
//! A link that loses bytes inside a live connection (a proxy that drops
//! what it reads during a partition; TCP itself resends) leaves requests
//! whose replies never come, and redis-rs keeps them in line: each later
//! reply goes to an earlier, abandoned request, so every call times out
//! and, with calls in flight together, a call can be handed another's
//! reply. A timeout is the only sign of this, so after one no new request
//! goes to that connection: the next opens a new one, and the old one
//! closes when the requests still on it end. A server that was only slow
//! costs one reconnect.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisResult, Value};

/// Ids of connections, unique in the process (so a mark taken before a
/// call never names a later connection, even behind a failover that swapped
/// the whole manager).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One connection and its id.
struct Current {
    manager: ConnectionManager,
    id: u64,
}

/// A [`ConnectionManager`] to one server, replaced by a new one after a
/// request on it timed out (see the module documentation).
pub(crate) struct ResyncedManager {
    current: ArcSwap<Current>,
    /// Held while a replacement is made, so one timeout replaces once.
    replacing: Mutex<()>,
    client: redis::Client,
    /// The managers' options, without a response timeout: `in_time` bounds
    /// every request (and the wait for its connection) itself, with one
    /// timer where the manager would add a second.
    config: ConnectionManagerConfig,
    /// The bound of each request: the config's response timeout.
    request_timeout: Option<Duration>,
}

impl std::fmt::Debug for ResyncedManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResyncedManager")
            .field("connection", &self.current.load().id)
            .finish_non_exhaustive()
    }
}

impl ResyncedManager {
    /// Connects to `client`'s server (within the config's connection
    /// timeout and retries, as [`ConnectionManager::new_with_config`]);
    /// the config's response timeout bounds each request.
    pub(crate) async fn connect(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> RedisResult<ResyncedManager> {
        let request_timeout = config.response_timeout();
        let config = config.set_response_timeout(None);
        let manager = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(ResyncedManager {
            current: ArcSwap::from_pointee(Current {
                manager,
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            }),
            replacing: Mutex::new(()),
            client,
            config,
            request_timeout,
        })
    }

    /// The id of the connection requests go to now: pass it to
    /// [`timed_out`](Self::timed_out) when a call bounded from outside
    /// (its future dropped at a deadline) gave up.
    pub(crate) fn mark(&self) -> u64 {
        self.current.load().id
    }

    /// A request on connection `id` went unanswered in time: unless it is
    /// replaced already, later requests go to a new connection, opened by
    /// the first of them.
    pub(crate) fn timed_out(&self, id: u64) {
        let _replacing = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
        if self.current.load().id != id {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => {
                self.current.store(Arc::new(Current {
                    manager,
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                }));
                tracing::debug!(
                    "a request timed out; later requests go to a new connection, as the old \
                     one's replies may no longer match its requests"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot make a new connection after a timeout"),
        }
    }

    /// The connection requests go to now, and its id.
    fn connection(&self) -> (ConnectionManager, u64) {
        let current = self.current.load();
        (current.manager.clone(), current.id)
    }

    /// The database of the connection.
    pub(crate) fn db(&self) -> i64 {
        self.current.load().manager.get_db()
    }

    /// Sends `cmd` within the response timeout (which then also bounds
    /// the wait for a connection being opened); a timeout gives the
    /// connection up.
    pub(crate) async fn send(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (mut conn, id) = self.connection();
        self.in_time(id, conn.send_packed_command(cmd)).await
    }

    /// Sends `count` of `pipe`'s replies from `offset`; a timeout gives the
    /// connection up.
    pub(crate) async fn send_pipeline(
        &self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (mut conn, id) = self.connection();
        self.in_time(id, conn.send_packed_commands(pipe, offset, count))
            .await
    }

    /// Runs `request` on connection `id` within the response timeout; a
    /// timeout gives the connection up.
    async fn in_time<T>(
        &self,
        id: u64,
        request: impl Future<Output = RedisResult<T>>,
    ) -> RedisResult<T> {
        let result = match self.request_timeout {
            Some(limit) => match tokio::time::timeout(limit, request).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within the response timeout of {limit:?}"),
                )
                .into()),
            },
            None => request.await,
        };
        if result.as_ref().is_err_and(redis::RedisError::is_timeout) {
            self.timed_out(id);
        }
        result
    }
}
