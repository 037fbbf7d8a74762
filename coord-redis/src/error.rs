//! The one place where `redis` errors become [`coord_core::Error`]s.

use coord_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Maps a driver error of a request to the server(s) at `addr`.
pub(crate) fn map_err(err: RedisError, addr: &str) -> Error {
    if err.is_timeout() {
        return Error::Timeout(format!(
            "redis at {addr} did not answer in time ({err}); the request timeout is \
             `request_timeout` in coord settings"
        ));
    }
    if is_auth_failure(&err) {
        return Error::backend(
            "redis",
            format!(
                "redis at {addr} refused the credentials ({err}); check the username and \
                 password in the URL"
            ),
            false,
            Some(Box::new(err) as _),
        );
    }
    if err.is_connection_refusal() || err.is_connection_dropped() || err.is_io_error() {
        return Error::unavailable(
            format!(
                "cannot reach redis at {addr} ({err}); check that redis-server is running \
                 and reachable at that address"
            ),
            Some(Box::new(err) as _),
        );
    }
    if err.to_string().contains("DB index is out of range") {
        // The `SELECT` of the URL's database, at connect.
        return Error::invalid(format!(
            "redis at {addr} has no such database ({err}): the number after the URL's \
             last `/` must be below the server's `databases` setting (16 by default: 0-15)"
        ));
    }
    if err.code() == Some("NOREPLICAS") {
        // Ours (`replica_ack`), or the server's `min-replicas-to-write`.
        return Error::unavailable(format!("redis at {addr}: {err}"), Some(Box::new(err) as _));
    }
    let retryable = matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ) | ErrorKind::ClusterConnectionNotFound
    );
    Error::backend(
        "redis",
        format!("redis at {addr}: {err}"),
        retryable,
        Some(Box::new(err) as _),
    )
}

fn is_auth_failure(err: &RedisError) -> bool {
    err.kind() == ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH"))
}

/// The error of one call in a batched script call (the scripts reply
/// `{'error', message}` for it, as an error element would fail the batch).
pub(crate) fn batch_item_error(message: &str, addr: &str) -> Error {
    let retryable = [
        "BUSY",
        "LOADING",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "NOREPLICAS",
    ]
    .iter()
    .any(|code| message.starts_with(code));
    Error::backend(
        "redis",
        format!("redis at {addr}: {message}"),
        retryable,
        None,
    )
}

/// A reply that does not have the shape a script documents.
pub(crate) fn unexpected_reply(script: &str, reply: &redis::Value) -> Error {
    Error::backend(
        "redis",
        format!("unexpected reply {reply:?} from the {script} script"),
        false,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn io_errors_are_unavailable_and_name_the_address() {
        let err = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        let mapped = map_err(err, "127.0.0.1:1");
        assert!(matches!(mapped, Error::Unavailable { .. }), "{mapped:?}");
        assert!(mapped.is_retryable());
        let msg = mapped.to_string();
        assert!(
            msg.contains("127.0.0.1:1") && msg.contains("redis-server is running"),
            "{msg}"
        );
    }

    #[test]
    fn timeouts_are_timeouts() {
        let err = RedisError::from(io::Error::from(io::ErrorKind::TimedOut));
        assert!(matches!(map_err(err, "h:1"), Error::Timeout(_)));
    }

    #[test]
    fn auth_failures_are_permanent() {
        let err = RedisError::from((ErrorKind::AuthenticationFailed, "bad password"));
        let mapped = map_err(err, "h:1");
        assert!(!mapped.is_retryable());
        assert!(
            mapped.to_string().contains("username and password"),
            "{mapped}"
        );
    }

    #[test]
    fn a_database_out_of_range_is_invalid_argument() {
        let err = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "DB index is out of range",
        ));
        let mapped = map_err(err, "h:1");
        assert!(matches!(mapped, Error::InvalidArgument(_)), "{mapped:?}");
        assert!(mapped.to_string().contains("databases"), "{mapped}");
    }

    #[test]
    fn busy_loading_is_retryable_and_others_are_not() {
        let busy = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert!(map_err(busy, "h:1").is_retryable());
        let other = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "wrong"));
        let mapped = map_err(other, "h:1");
        assert!(matches!(
            mapped,
            Error::Backend {
                backend: "redis",
                retryable: false,
                ..
            }
        ));
        assert!(std::error::Error::source(&mapped).is_some());
    }
}
