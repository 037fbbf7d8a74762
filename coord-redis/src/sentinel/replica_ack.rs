//! Lock writes that count only once a replica has them: a script sent with
//! `WAIT 1` and `ROLE` in the same round trip (see
//! [`SentinelConfig::replica_ack`]).
//!
//! Behind Sentinel, a master that a partition cuts off from its replicas
//! and sentinels goes on answering the clients that still reach it while
//! the sentinels promote a replica: without this check both masters would
//! grant the same lock, with fencing tokens read from clocks that agree,
//! so two holders could even carry the same token. With it, the cut-off
//! master's lock writes are refused for as long as it lists its replica
//! (`ROLE` lists the replicas whose link is up; a link that a partition
//! silenced stays up until `repl-timeout`, 60 s by default), so a grant
//! that counts has reached a replica.
//!
//! What is left: a master that lists no replica has no one to wait for,
//! and its writes count. That is the case of a master whose replicas are
//! gone (crashed, or still in their first sync), and of a cut-off master
//! whose replica links closed (a reset reached it, or `repl-timeout`
//! passed) before its clients moved to the new master; Redis's own
//! `min-replicas-to-write 1` (with `min-replicas-max-lag`) on the servers
//! closes that too, at the cost of refusing writes while no replica is in
//! sync. `WAIT` also holds back the other requests on the connection until
//! it returns: about a round trip to the replica, or the whole wait when
//! none acknowledges.
//!
//! [`SentinelConfig::replica_ack`]: crate::SentinelConfig::replica_ack

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult, Script, ServerErrorKind, Value};

use crate::connection::Connection;

/// How long a write waits for a replica's acknowledgement, and whether the
/// current master listed a replica when last asked.
#[derive(Debug)]
pub(crate) struct ReplicaAck {
    wait: Duration,
    /// `4 * generation + LISTED` or `4 * generation + NONE_LISTED`: what
    /// the master of that generation (see `Connection::generation`) said
    /// when last asked; anything else means a master not asked yet.
    state: AtomicU64,
}

const LISTED: u64 = 1;
const NONE_LISTED: u64 = 2;

impl ReplicaAck {
    /// Waits for half the `request_timeout` (at most a second, at least a
    /// millisecond), so that the script and its `WAIT` are answered within
    /// the request's deadline: a replica in sync acknowledges within a
    /// round trip of its own.
    pub(crate) fn within(request_timeout: Duration) -> Self {
        ReplicaAck {
            wait: (request_timeout / 2).clamp(Duration::from_millis(1), Duration::from_secs(1)),
            state: AtomicU64::new(u64::MAX),
        }
    }

    fn wait_ms(&self) -> u64 {
        u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the master of `generation` listed a replica when last asked
    /// (`None`: not asked yet).
    fn listed(&self, generation: u64) -> Option<bool> {
        let state = self.state.load(Ordering::Relaxed);
        if state == u64::MAX || state / 4 != generation {
            return None;
        }
        Some(state % 4 == LISTED)
    }

    fn set_listed(&self, generation: u64, listed: bool) {
        let state = generation.wrapping_mul(4) + if listed { LISTED } else { NONE_LISTED };
        self.state.store(state, Ordering::Relaxed);
    }
}

/// What a `ROLE` reply says.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// A master, listing `replicas` online replicas.
    Master { replicas: usize },
    /// A replica (or anything else): it applied no write.
    Other,
}

fn role_of(reply: &Value) -> Role {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [Value::BulkString(kind), _, Value::Array(replicas), ..] if kind == b"master" => {
                Role::Master {
                    replicas: replicas.len(),
                }
            }
            _ => Role::Other,
        },
        _ => Role::Other,
    }
}

/// Runs `cmd` (an `EVALSHA` of `script`) followed by `WAIT 1` and `ROLE`
/// in the same round trip, on the same connection, loading the script when
/// the server does not know it. A reply that is not an error counts only
/// when a replica acknowledged the write, or when the master, right after,
/// lists no replica; else the result is a `NOREPLICAS` error, the one Redis
/// gives when `min-replicas-to-write` is not met. While the master lists no
/// replica, the script goes with `ROLE` alone (`WAIT` would block for its
/// whole timeout), and a replica listed again refuses that write (the
/// caller's retry waits for it). A master not asked yet (the first write,
/// or the first after a failover) is asked with `ROLE` first. A server
/// that is no master applied nothing: its reply (`READONLY`) is returned
/// as it is, so that the caller follows the failover.
pub(crate) async fn eval_acked<T: FromRedisValue>(
    conn: &Connection,
    ack: &ReplicaAck,
    script: &Script,
    cmd: &Cmd,
) -> RedisResult<T> {
    let mut conn = conn.clone();
    let generation = conn.generation();
    let waits = match ack.listed(generation) {
        Some(listed) => listed,
        None => {
            let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
            let listed = !matches!(role_of(&role), Role::Master { replicas: 0 });
            ack.set_listed(generation, listed);
            listed
        }
    };
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone());
    if waits {
        pipe.cmd("WAIT").arg(1).arg(ack.wait_ms());
    }
    pipe.cmd("ROLE");
    let count = if waits { 3 } else { 2 };
    let mut loads = 0;
    loop {
        let mut replies = conn.req_packed_commands(&pipe, 0, count).await?;
        if replies.len() != count {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a script with WAIT and ROLE",
                format!("{} replies", replies.len()),
            )));
        }
        let role = role_of(&replies[count - 1]);
        let acks = replies.get(1).filter(|_| waits).cloned();
        let reply = replies.swap_remove(0);
        if loads < 2
            && matches!(&reply, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
        {
            script.load_async(&mut conn).await?;
            loads += 1;
            continue;
        }
        let Role::Master { replicas } = role else {
            // A replica: nothing was applied (its READONLY is for the
            // caller, which follows the failover).
            return Ok(redis::from_redis_value(reply.extract_error()?)?);
        };
        let reply = reply.extract_error()?;
        ack.set_listed(generation, replicas > 0);
        let acked = matches!(acks, Some(Value::Int(n)) if n >= 1);
        if !acked && replicas > 0 {
            return Err(not_acknowledged(ack.wait));
        }
        return Ok(redis::from_redis_value(reply)?);
    }
}

/// The `NOREPLICAS` error of a write no replica acknowledged within `wait`.
fn not_acknowledged(wait: Duration) -> redis::RedisError {
    let resp = format!(
        "-NOREPLICAS no replica acknowledged this lock write within {wait:?}: the master may be \
         cut off from its replicas while the sentinels promote one; the write does not count \
         (replica_ack=off in the URL turns this check off)\r\n"
    );
    // Parsed from a reply, as the server's own `NOREPLICAS` would be: the
    // driver makes errors with a server's code only from replies.
    redis::parse_redis_value(resp.as_bytes())
        .and_then(Value::extract_error)
        .err()
        .unwrap_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "NOREPLICAS",
                "no replica acknowledged the write".to_owned(),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_fits_in_the_request_timeout() {
        assert_eq!(
            ReplicaAck::within(Duration::from_secs(5)).wait,
            Duration::from_secs(1)
        );
        assert_eq!(
            ReplicaAck::within(Duration::from_millis(800)).wait,
            Duration::from_millis(400)
        );
        assert_eq!(
            ReplicaAck::within(Duration::from_micros(10)).wait,
            Duration::from_millis(1)
        );
    }

    #[test]
    fn role_replies_tell_whether_a_replica_is_listed() {
        let role = |resp: &[u8]| role_of(&redis::parse_redis_value(resp).expect("RESP"));
        assert_eq!(
            role(b"*3\r\n$6\r\nmaster\r\n:10\r\n*0\r\n"),
            Role::Master { replicas: 0 }
        );
        assert_eq!(
            role(
                b"*3\r\n$6\r\nmaster\r\n:10\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$2\r\n10\r\n"
            ),
            Role::Master { replicas: 1 }
        );
        assert_eq!(
            role(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:10\r\n"),
            Role::Other
        );
        assert_eq!(role(b"-ERR unknown\r\n"), Role::Other);
    }

    #[test]
    fn what_a_master_listed_is_remembered_per_generation() {
        let ack = ReplicaAck::within(Duration::from_secs(1));
        assert_eq!(ack.listed(0), None, "not asked yet");
        ack.set_listed(0, true);
        assert_eq!((ack.listed(0), ack.listed(1)), (Some(true), None));
        ack.set_listed(1, false);
        assert_eq!((ack.listed(0), ack.listed(1)), (None, Some(false)));
    }

    #[test]
    fn an_unacknowledged_write_is_a_noreplicas_error() {
        let e = not_acknowledged(Duration::from_millis(400));
        assert_eq!(e.code(), Some("NOREPLICAS"));
        assert!(e.to_string().contains("replica_ack=off"), "{e}");
    }
}
