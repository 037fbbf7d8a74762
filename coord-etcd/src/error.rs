//! The one place that maps etcd-client errors to [`coord_core::Error`].

use std::future::Future;
use std::time::Duration;

use coord_core::Error;

const BACKEND: &str = "etcd";

// gRPC status codes (stable across every gRPC implementation).
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const INVALID_ARGUMENT: i32 = 3;
const DEADLINE_EXCEEDED: i32 = 4;
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const ABORTED: i32 = 10;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// Maps an etcd-client error, saying what was being done (`what`), keeping
/// the driver's error as the source.
pub(crate) fn map(what: &str, err: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    match &err {
        E::GRpcStatus(status) => {
            let message = format!("{what}: {}", status.message());
            match i32::from(status.code()) {
                UNAVAILABLE => Error::unavailable(
                    format!("{message} (check that etcd is running and reachable)"),
                    boxed(err),
                ),
                DEADLINE_EXCEEDED => Error::Timeout(message),
                // tonic's own request timeout: `request_timeout`.
                CANCELLED if status.message().contains("Timeout expired") => {
                    Error::Timeout(format!(
                        "{what}: etcd did not answer within the request timeout \
                         (request_timeout in coord settings); check that etcd is running \
                         and reachable"
                    ))
                }
                ABORTED | RESOURCE_EXHAUSTED | CANCELLED => {
                    Error::backend(BACKEND, message, true, boxed(err))
                }
                // A reset stream or a leader change while the request was in
                // flight shows up as Unknown with a transport message.
                UNKNOWN if is_transport_message(status.message()) => {
                    Error::unavailable(message, boxed(err))
                }
                UNAUTHENTICATED | PERMISSION_DENIED => Error::backend(
                    BACKEND,
                    format!(
                        "{message} (check the user and password in the etcd URL, and the user's role)"
                    ),
                    false,
                    boxed(err),
                ),
                INVALID_ARGUMENT => Error::invalid(message),
                _ => Error::backend(BACKEND, message, false, boxed(err)),
            }
        }
        E::TransportError(_) | E::IoError(_) => Error::unavailable(
            format!("{what}: {err} (check that etcd is running and reachable)"),
            boxed(err),
        ),
        // The client-side half of a stream closed: the connection went away.
        E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            Error::unavailable(format!("{what}: {err}"), boxed(err))
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::InvalidMetadataValue(_) => {
            Error::invalid(format!("{what}: {err}"))
        }
        _ => Error::backend(BACKEND, format!("{what}: {err}"), false, boxed(err)),
    }
}

/// Whether the connection was refused: nothing listens at the address
/// (an io error of that kind anywhere in the error's sources, or a gRPC
/// status that says so), unlike a cluster that answers `Unavailable` while
/// it elects a leader.
pub(crate) fn is_refused(err: &etcd_client::Error) -> bool {
    // A lazy channel's failed connect is a status whose sources lead to
    // the io error (etcd-client's own error does not expose its source).
    let mut source: Option<&(dyn std::error::Error + 'static)> = match err {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        other => Some(other),
    };
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn is_transport_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "transport",
        "connection",
        "broken pipe",
        "stream",
        "leader changed",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// Whether etcd said a lease is gone (`requested lease not found`).
pub(crate) fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

fn boxed(err: etcd_client::Error) -> Option<coord_core::BoxError> {
    Some(Box::new(err))
}

/// Runs one etcd request with a deadline, mapping its error. The deadline
/// matters: with no endpoint reachable, etcd-client's balanced channel waits
/// for one forever.
pub(crate) async fn call<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> coord_core::Result<T> {
    deadline(what, timeout, fut)
        .await?
        .map_err(|e| map(what, e))
}

/// Like [`call`], but leaves etcd-client's error unmapped for the caller to inspect.
pub(crate) async fn deadline<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> coord_core::Result<Result<T, etcd_client::Error>> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        Error::Timeout(format!(
            "{what}: no answer from etcd within {timeout:?} (request_timeout in coord settings, \
             or connect_timeout while connecting); check that etcd is running and reachable"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_side_errors_are_classified() {
        let e = map("put", etcd_client::Error::InvalidArgs("empty key".into()));
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let e = map(
            "keep-alive",
            etcd_client::Error::LeaseKeepAliveError("channel closed".into()),
        );
        assert!(e.is_retryable(), "{e:?}");
        let e = map(
            "get",
            etcd_client::Error::IoError(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        );
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn the_clients_request_timeout_names_the_setting() {
        let status = etcd_client::Error::GRpcStatus(tonic::Status::cancelled("Timeout expired"));
        let e = map("grant a cache lease", status);
        assert!(matches!(e, Error::Timeout(_)), "{e:?}");
        assert!(e.to_string().contains("request_timeout"), "{e}");
    }

    #[tokio::test]
    async fn a_request_without_answer_times_out() {
        let e = call(
            "get",
            Duration::from_millis(10),
            futures::future::pending::<Result<(), _>>(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e:?}");
        assert!(e.is_retryable());
        assert!(e.to_string().contains("request_timeout"), "{e}");
    }
}
