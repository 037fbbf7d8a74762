//! [`SentinelConnection`]: the command connection of a `redis+sentinel://`
//! backend, a [`ResyncedManager`] (a `ConnectionManager`) to the current
//! master that is swapped for one to the new master when the master
//! changes.
//!
//! `ConnectionManager` is multiplexed and reconnects by itself, but always
//! to the one address it was made for: after a failover it would keep
//! talking to the old master (which answers `READONLY` once demoted, or not
//! at all once dead). So requests go through [`MasterTracker`], and a
//! failed one asks it to look the master up again before the error is
//! returned, so that the caller's retry (coord's retry policy retries
//! retryable errors) goes to the new master:
//!
//! * `READONLY`, `MASTERDOWN` (a replica) and `EXECABORT` (a transaction
//!   the server discarded): the request was not applied, so once the
//!   connection has moved to another master it is sent there once more,
//!   and the caller never sees the failover.
//! * A lost or refused connection: the request may have been applied, so
//!   it is not sent again here; the error (retryable `Unavailable`) is
//!   returned once the lookup is done.
//! * A timeout (a paused or overloaded master): the lookup runs in the
//!   background, so the error is not delayed by it, and later requests go
//!   to a new connection (see [`ResyncedManager`]).
//!
//! [`ResyncedManager`]: crate::connection::ResyncedManager

use std::sync::Arc;

use futures::future::BoxFuture;
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::sentinel::master::{Master, MasterTracker};

/// A cheap-to-clone handle on the master's command connection.
#[derive(Clone, Debug)]
pub(crate) struct SentinelConnection {
    tracker: Arc<MasterTracker>,
}

/// What a failed request says about the master it was sent to.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The server is not (or no longer) a master; nothing was applied.
    NotMaster,
    /// The connection failed; the request may have been applied.
    Connection,
    /// No answer in time.
    Timeout,
    /// Anything else (a script error, a wrong type): not about the master.
    Other,
}

/// The error codes of a server that is not a master (or discarded a
/// transaction): the request was not applied.
fn is_not_master_code(code: &str) -> bool {
    matches!(code, "READONLY" | "MASTERDOWN" | "EXECABORT")
}

/// Whether a reply is such an error. redis-rs returns a server's error
/// reply as a value (`Value::ServerError`), turned into an `Err` only when
/// the caller converts the reply.
fn refused(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if is_not_master_code(e.code()))
}

fn classify(e: &RedisError) -> Failure {
    if e.code().is_some_and(is_not_master_code) {
        Failure::NotMaster
    } else if e.is_timeout() {
        Failure::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        Failure::Connection
    } else {
        Failure::Other
    }
}

impl SentinelConnection {
    /// A connection through `tracker`.
    pub(crate) fn new(tracker: Arc<MasterTracker>) -> Self {
        SentinelConnection { tracker }
    }

    /// The tracker, for the pub/sub hub.
    pub(crate) fn tracker(&self) -> &Arc<MasterTracker> {
        &self.tracker
    }

    /// Called when a script reply says the server refused a write as a
    /// replica (a batch's per-call `READONLY`): looks the master up.
    /// Returns whether the connection moved to another master since the
    /// generation `seen` the request went to.
    pub(crate) async fn refused_as_replica(&self, seen: u64) -> bool {
        self.tracker.follow(seen).await
    }

    /// Sends with `send` to the current master, following a failover as
    /// the module documentation says; `not_master` tells a reply that is a
    /// server's refusal as a replica.
    async fn request<'a, T>(
        &'a self,
        send: impl Fn(Arc<Master>) -> BoxFuture<'a, RedisResult<T>>,
        not_master: impl Fn(&T) -> bool,
    ) -> RedisResult<T> {
        let master = self.tracker.current();
        let result = send(master.clone()).await;
        let failure = match &result {
            Ok(reply) if not_master(reply) => Failure::NotMaster,
            Ok(_) => return result,
            Err(e) => classify(e),
        };
        match failure {
            Failure::NotMaster => {
                if self.tracker.follow(master.generation).await {
                    return send(self.tracker.current()).await;
                }
            }
            Failure::Connection => {
                self.tracker.follow(master.generation).await;
            }
            Failure::Timeout => {
                // (The manager has retired the connection already.)
                let tracker = self.tracker.clone();
                let seen = master.generation;
                tokio::spawn(async move { tracker.follow(seen).await });
            }
            Failure::Other => {}
        }
        result
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let this = &*self;
        Box::pin(this.request(
            move |master| Box::pin(async move { master.manager.send(cmd).await }),
            refused,
        ))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let this = &*self;
        Box::pin(this.request(
            move |master| {
                Box::pin(async move { master.manager.send_pipeline(cmd, offset, count).await })
            },
            |replies: &Vec<Value>| replies.iter().any(refused),
        ))
    }

    fn get_db(&self) -> i64 {
        self.tracker.db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};
    use std::io;

    #[test]
    fn failures_are_classified_by_what_they_say_about_the_master() {
        let readonly = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert_eq!(classify(&readonly), Failure::NotMaster);
        let refused = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), Failure::Connection);
        let timeout = RedisError::from(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(classify(&timeout), Failure::Timeout);
        let other = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        assert_eq!(classify(&other), Failure::Other);
    }

    #[test]
    fn refusals_inside_replies_are_recognized() {
        let reply = |resp: &[u8]| redis::parse_redis_value(resp).expect("RESP");
        assert!(refused(&reply(
            b"-READONLY You can't write against a read only replica. script: x\r\n"
        )));
        assert!(refused(&reply(b"-MASTERDOWN Link with MASTER is down\r\n")));
        assert!(refused(&reply(b"-EXECABORT Transaction discarded\r\n")));
        assert!(!refused(&reply(b"-WRONGTYPE Operation against a key\r\n")));
        assert!(!refused(&reply(b":1\r\n")));
    }
}
