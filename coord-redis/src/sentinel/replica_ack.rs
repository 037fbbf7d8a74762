//! Lock writes that count only once a replica has them: a script sent with
//! `WAIT 1` in the same round trip (see [`SentinelConfig::replica_ack`]).
//!
//! Behind Sentinel, a master that a partition cuts off from its replicas
//! and sentinels goes on answering the clients that still reach it while
//! the sentinels promote a replica: without this check both masters would
//! grant the same lock, with fencing tokens read from clocks that agree,
//! so two holders could even carry the same token. With it, the cut-off
//! master's grants are refused (the `WAIT` sees no acknowledgement while
//! the master still lists its replica, which it does until
//! `repl-timeout`, 60 s by default), and every grant that counts is on a
//! replica the sentinels may promote.
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
    /// `2 * generation + 1` when the master of that generation (see
    /// `Connection::generation`) listed a replica when last asked. Else
    /// (no replica listed, or a master not asked yet) `WAIT` could block
    /// for its whole timeout, so writes go with `ROLE` instead, which tells
    /// at once whether a replica is there.
    listed: AtomicU64,
}

impl ReplicaAck {
    /// Waits for half the `request_timeout` (at most a second, at least a
    /// millisecond), so that the script and its `WAIT` are answered within
    /// the request's deadline: a replica in sync acknowledges within a
    /// round trip of its own.
    pub(crate) fn within(request_timeout: Duration) -> Self {
        ReplicaAck {
            wait: (request_timeout / 2).clamp(Duration::from_millis(1), Duration::from_secs(1)),
            listed: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether the master of `generation` listed a replica when last asked.
    fn listed(&self, generation: u64) -> bool {
        self.listed.load(Ordering::Relaxed) == generation.wrapping_mul(2) + 1
    }

    fn set_listed(&self, generation: u64, listed: bool) {
        let state = generation.wrapping_mul(2) + u64::from(listed);
        self.listed.store(state, Ordering::Relaxed);
    }

    fn wait_ms(&self) -> u64 {
        u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Runs `cmd` (an `EVALSHA` of `script`) followed by `WAIT 1` in the same
/// round trip, loading the script when the server does not know it. A
/// reply that is not an error counts only when a replica acknowledged the
/// write, or when the master lists no replica (`ROLE`); else the result is
/// a `NOREPLICAS` error, the one Redis gives when `min-replicas-to-write`
/// is not met. While the master lists no replica (and to a master not asked
/// yet), the script goes with `ROLE` instead of `WAIT` (which would block for
/// its whole timeout), and a replica listed gets a `WAIT` of its own.
pub(crate) async fn eval_acked<T: FromRedisValue>(
    conn: &Connection,
    ack: &ReplicaAck,
    script: &Script,
    cmd: &Cmd,
) -> RedisResult<T> {
    let mut conn = conn.clone();
    let generation = conn.generation();
    let waits = ack.listed(generation);
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone());
    if waits {
        pipe.cmd("WAIT").arg(1).arg(ack.wait_ms());
    } else {
        pipe.cmd("ROLE");
    }
    let mut loads = 0;
    loop {
        let replies = conn.req_packed_commands(&pipe, 0, 2).await?;
        let Ok([reply, second]) = <[Value; 2]>::try_from(replies) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "a script with WAIT",
                "not two replies".to_owned(),
            )));
        };
        if loads < 2
            && matches!(&reply, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
        {
            script.load_async(&mut conn).await?;
            loads += 1;
            continue;
        }
        let reply = reply.extract_error()?;
        let acked = if !waits {
            let listed = lists_replicas(&second);
            ack.set_listed(generation, listed);
            if listed {
                let acks: Value = redis::cmd("WAIT")
                    .arg(1)
                    .arg(ack.wait_ms())
                    .query_async(&mut conn)
                    .await?;
                matches!(acks, Value::Int(n) if n >= 1)
            } else {
                true
            }
        } else if matches!(second, Value::Int(n) if n >= 1) {
            true
        } else {
            // (WAIT's own error, from a server that is no master any more,
            // refuses too.)
            let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
            let listed = lists_replicas(&role);
            if !listed {
                ack.set_listed(generation, false);
            }
            !listed
        };
        if !acked {
            return Err(not_acknowledged(ack.wait));
        }
        return Ok(redis::from_redis_value(reply)?);
    }
}

/// Whether a `ROLE` reply lists a replica: a master with none has no one
/// to wait for; a server that is no master counts as listing one (it
/// refuses).
fn lists_replicas(role: &Value) -> bool {
    match role {
        Value::Array(parts) => match parts.as_slice() {
            [Value::BulkString(kind), _, Value::Array(replicas), ..] if kind == b"master" => {
                !replicas.is_empty()
            }
            _ => true,
        },
        _ => true,
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
        let role = |resp: &[u8]| redis::parse_redis_value(resp).expect("RESP");
        assert!(!lists_replicas(&role(
            b"*3\r\n$6\r\nmaster\r\n:10\r\n*0\r\n"
        )));
        assert!(lists_replicas(&role(
            b"*3\r\n$6\r\nmaster\r\n:10\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$2\r\n10\r\n"
        )));
        assert!(lists_replicas(&role(
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:10\r\n"
        )));
        assert!(lists_replicas(&role(b"-ERR unknown\r\n")));
    }

    #[test]
    fn an_unacknowledged_write_is_a_noreplicas_error() {
        let e = not_acknowledged(Duration::from_millis(400));
        assert_eq!(e.code(), Some("NOREPLICAS"));
        assert!(e.to_string().contains("replica_ack=off"), "{e}");
    }
}
