//! One runtime for every testcontainers call of the process.
//!
//! testcontainers shares one Docker client (and its connection pool) across
//! the process, so its futures must all run on one runtime that outlives
//! every test's own runtime. The fixtures' methods are blocking, like the
//! process fixtures', and work inside and outside a runtime: they hand the
//! future to this runtime and wait for its answer on a channel.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, Result};

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("coord-testkit-containers")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::unavailable(format!("cannot start the containers' runtime: {e}"), None))
}

/// Runs `fut` on the containers' runtime and waits for it, at most `limit`.
/// `what` names the operation in errors.
pub(crate) fn block_on<T, F>(what: &str, limit: Duration, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let task = runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            task.abort();
            Err(Error::Timeout(format!("{what} took longer than {limit:?}")))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::unavailable(
            format!("{what} failed: its task panicked"),
            None,
        )),
    }
}
