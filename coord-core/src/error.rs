//! The one error type of the SDK.

use std::fmt;

/// A boxed error from a driver or the operating system, kept as [`Error`]'s source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as its error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the SDK returns. Match on the variant to decide what to do;
/// [`Error::is_retryable`] says whether trying the same call again may succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend could not be reached (connection refused or dropped).
    /// Retryable: check that the server is running and reachable.
    #[error("backend unavailable: {message}")]
    Unavailable {
        /// What failed, and what to check.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// An operation did not finish in time (a wait timeout or a request deadline).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The caller does not hold the lock it tried to release or renew.
    #[error("not held: {0}")]
    NotHeld(String),
    /// The lock was held but has been lost (lease expired or removed).
    #[error("lock lost: {0}")]
    LockLost(String),
    /// A compare-and-set found another value than expected.
    #[error("conflict: expected {expected}, found {actual}")]
    Conflict {
        /// What the caller expected.
        expected: String,
        /// What the store holds.
        actual: String,
    },
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller passed something the SDK cannot use (empty key, zero TTL,
    /// malformed URL); the message says what is wrong.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The feature or scheme asked for is not compiled in or not offered by
    /// this backend; the message names the cargo feature to enable.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A circuit breaker refused the call.
    #[error("circuit open: {0}")]
    CircuitOpen(String),
    /// Service discovery found no instance to call.
    #[error("no instances: {0}")]
    NoInstances(String),
    /// The config key or namespace is frozen: it refuses writes until
    /// unfrozen.
    #[error("frozen: {0}")]
    Frozen(String),
    /// A stored value could not be decoded (or a value could not be encoded).
    #[error("codec error: {message}")]
    Codec {
        /// What could not be decoded.
        message: String,
        /// The codec's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The client was shut down ([`LockClient::shutdown`], `Coord::shutdown`)
    /// and takes no new work: make a new one.
    ///
    /// [`LockClient::shutdown`]: crate::LockClient::shutdown
    #[error("closed: {0}")]
    Closed(String),
    /// Any other error reported by a backend.
    #[error("{backend} error: {message}")]
    Backend {
        /// Which backend (`redis`, `etcd`, `memory`).
        backend: &'static str,
        /// What the backend said.
        message: String,
        /// Whether the same call may succeed if tried again.
        retryable: bool,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Whether trying the same call again may succeed (the backend was
    /// unreachable, a request timed out, or the backend said so).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout(_) => true,
            Error::Backend { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// An [`Error::InvalidArgument`] with this message.
    pub fn invalid(message: impl fmt::Display) -> Self {
        Error::InvalidArgument(message.to_string())
    }

    /// An [`Error::Unavailable`] with this message and source.
    pub fn unavailable(message: impl fmt::Display, source: impl Into<Option<BoxError>>) -> Self {
        Error::Unavailable {
            message: message.to_string(),
            source: source.into(),
        }
    }

    /// An [`Error::Codec`] for a stored value that could not be decoded.
    pub fn codec(message: impl fmt::Display, source: impl Into<Option<BoxError>>) -> Self {
        Error::Codec {
            message: message.to_string(),
            source: source.into(),
        }
    }

    /// An [`Error::Backend`].
    pub fn backend(
        backend: &'static str,
        message: impl fmt::Display,
        retryable: bool,
        source: impl Into<Option<BoxError>>,
    ) -> Self {
        Error::Backend {
            backend,
            message: message.to_string(),
            retryable,
            source: source.into(),
        }
    }

    /// This error with `context` before its message (`"{context}: {message}"`),
    /// for a caller that knows where the bad input came from, such as which
    /// URL. [`Error::Conflict`], which has no single message, is unchanged.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        match &mut self {
            Error::Unavailable { message, .. }
            | Error::Codec { message, .. }
            | Error::Backend { message, .. }
            | Error::Timeout(message)
            | Error::NotHeld(message)
            | Error::LockLost(message)
            | Error::NotFound(message)
            | Error::InvalidArgument(message)
            | Error::Unsupported(message)
            | Error::CircuitOpen(message)
            | Error::NoInstances(message)
            | Error::Frozen(message)
            | Error::Closed(message) => *message = format!("{context}: {message}"),
            Error::Conflict { .. } => {}
        }
        self
    }

    /// This error for one of several callers that shared one outcome (the
    /// waiters of one cache load): the same kind and message, the shared
    /// error as its source where the kind has one.
    pub fn from_shared(shared: &std::sync::Arc<Error>) -> Error {
        let source = || -> Option<BoxError> { Some(Box::new(shared.clone())) };
        match &**shared {
            Error::Unavailable { message, .. } => Error::Unavailable {
                message: message.clone(),
                source: source(),
            },
            Error::Codec { message, .. } => Error::Codec {
                message: message.clone(),
                source: source(),
            },
            Error::Backend {
                backend,
                message,
                retryable,
                ..
            } => Error::Backend {
                backend,
                message: message.clone(),
                retryable: *retryable,
                source: source(),
            },
            Error::Timeout(m) => Error::Timeout(m.clone()),
            Error::NotHeld(m) => Error::NotHeld(m.clone()),
            Error::LockLost(m) => Error::LockLost(m.clone()),
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Unsupported(m) => Error::Unsupported(m.clone()),
            Error::CircuitOpen(m) => Error::CircuitOpen(m.clone()),
            Error::NoInstances(m) => Error::NoInstances(m.clone()),
            Error::Frozen(m) => Error::Frozen(m.clone()),
            Error::Closed(m) => Error::Closed(m.clone()),
            Error::Conflict { expected, actual } => Error::Conflict {
                expected: expected.clone(),
                actual: actual.clone(),
            },
        }
    }

    /// A short, stable label for metrics (`timeout`, `not_held`, ...).
    pub fn kind_label(&self) -> &'static str {
        match self {
            Error::Unavailable { .. } => "unavailable",
            Error::Timeout(_) => "timeout",
            Error::NotHeld(_) => "not_held",
            Error::LockLost(_) => "lock_lost",
            Error::Conflict { .. } => "conflict",
            Error::NotFound(_) => "not_found",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Unsupported(_) => "unsupported",
            Error::CircuitOpen(_) => "circuit_open",
            Error::NoInstances(_) => "no_instances",
            Error::Frozen(_) => "frozen",
            Error::Closed(_) => "closed",
            Error::Codec { .. } => "codec",
            Error::Backend { .. } => "backend",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(Error::unavailable("down", None).is_retryable());
        assert!(Error::Timeout("t".into()).is_retryable());
        assert!(Error::backend("redis", "busy", true, None).is_retryable());
        assert!(!Error::backend("redis", "wrongtype", false, None).is_retryable());
        assert!(!Error::NotHeld("k".into()).is_retryable());
        assert!(!Error::invalid("empty key").is_retryable());
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let e = Error::invalid("lock name is empty");
        assert_eq!(e.to_string(), "invalid argument: lock name is empty");
        assert_eq!(e.kind_label(), "invalid_argument");
    }

    #[test]
    fn context_goes_before_the_message() {
        let e = Error::invalid("bad port \"x\"").context("etcd URL \"etcd://h:x\"");
        assert_eq!(
            e.to_string(),
            "invalid argument: etcd URL \"etcd://h:x\": bad port \"x\""
        );
        let e = Error::unavailable("refused", None).context("h1:2379");
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "backend unavailable: h1:2379: refused");
    }
}
