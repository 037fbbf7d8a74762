//! The permit of one call, and the error of [`CircuitBreaker::call`].

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::CircuitBreaker;
use crate::error::Error;

/// Permission for one call, from [`CircuitBreaker::try_call`]. Report the
/// outcome with [`success`](Self::success), [`failure`](Self::failure) or
/// [`record`](Self::record); dropping it instead counts the call as
/// cancelled: nothing is recorded and a half-open probe slot is freed.
#[must_use = "report the call's outcome; a dropped permit counts as a cancelled call"]
pub struct BreakerPermit {
    breaker: CircuitBreaker,
    generation: u32,
    probe: bool,
    issued: Instant,
    done: bool,
}

impl BreakerPermit {
    pub(super) fn new(breaker: CircuitBreaker, generation: u32, probe: bool) -> BreakerPermit {
        BreakerPermit {
            breaker,
            generation,
            probe,
            issued: Instant::now(),
            done: false,
        }
    }

    /// Whether this is a half-open breaker's probe call.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Time since the permit was issued, a latency for callers that do not
    /// time the call themselves.
    pub fn elapsed(&self) -> Duration {
        self.issued.elapsed()
    }

    /// The call succeeded after `latency` (slow if at least
    /// `slow_call_duration`).
    pub fn success(self, latency: Duration) {
        self.record(true, latency);
    }

    /// The call failed after `latency`.
    pub fn failure(self, latency: Duration) {
        self.record(false, latency);
    }

    /// The call succeeded (`ok`) or failed after `latency`.
    pub fn record(mut self, ok: bool, latency: Duration) {
        self.done = true;
        self.breaker.record(self.generation, !ok, latency);
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

impl fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("breaker", &self.breaker.name())
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

/// What [`CircuitBreaker::call`] fails with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// The breaker refused the call ([`Error::CircuitOpen`]); it did not run.
    #[error(transparent)]
    Rejected(Error),
    /// The call ran and failed with this error.
    #[error(transparent)]
    Failed(E),
}

impl<E> BreakerError<E> {
    /// Whether the breaker refused the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, BreakerError::Rejected(_))
    }

    /// The call's own error, if it ran.
    pub fn into_failed(self) -> Option<E> {
        match self {
            BreakerError::Failed(e) => Some(e),
            BreakerError::Rejected(_) => None,
        }
    }
}

impl From<BreakerError<Error>> for Error {
    fn from(e: BreakerError<Error>) -> Error {
        match e {
            BreakerError::Rejected(e) | BreakerError::Failed(e) => e,
        }
    }
}
