//! Retries of retryable errors with exponential backoff and jitter.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::error::{Error, Result};
use crate::settings::RetrySettings;

/// How a waiting lock acquisition keeps trying through retryable errors,
/// one request at a time: for `budget` of failures in a row (the settings'
/// `max_elapsed`; none for [`RetryPolicy::none`]), pausing `first_pause`
/// (`initial_backoff`) after the first, twice as long after each next one,
/// up to `max_pause` (`max_backoff`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RideOut {
    pub(crate) budget: Duration,
    pub(crate) first_pause: Duration,
    pub(crate) max_pause: Duration,
}

/// How retryable errors are retried: exponential backoff with full jitter,
/// bounded by a number of attempts, a total delay, and a total time for
/// the retries (their calls included) of `max_elapsed`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    backoff: ExponentialBuilder,
    /// How a waiting lock acquisition keeps trying while the backend
    /// fails: see [`RideOut`].
    ride_out: RideOut,
}

impl RetryPolicy {
    /// A policy from settings.
    pub fn new(settings: &RetrySettings) -> Self {
        RetryPolicy {
            backoff: ExponentialBuilder::default()
                .with_min_delay(settings.initial_backoff)
                .with_max_delay(settings.max_backoff)
                .with_max_times(settings.max_retries)
                .with_total_delay(Some(settings.max_elapsed))
                .with_jitter(),
            ride_out: RideOut {
                budget: settings.max_elapsed,
                first_pause: settings.initial_backoff,
                max_pause: settings.max_backoff,
            },
        }
    }

    /// [`RetryPolicy::none`], shared.
    pub(crate) fn no_retries() -> &'static RetryPolicy {
        static NONE: std::sync::LazyLock<RetryPolicy> = std::sync::LazyLock::new(RetryPolicy::none);
        &NONE
    }

    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            backoff: ExponentialBuilder::default().with_max_times(0),
            ride_out: RideOut {
                budget: Duration::ZERO,
                first_pause: Duration::ZERO,
                max_pause: Duration::ZERO,
            },
        }
    }

    /// The same policy whose total delay ends by `budget`.
    pub fn within(&self, budget: Duration) -> Self {
        RetryPolicy {
            backoff: self.backoff.with_total_delay(Some(budget)),
            ride_out: RideOut {
                budget: self.ride_out.budget.min(budget),
                ..self.ride_out
            },
        }
    }

    /// How a waiting lock acquisition keeps trying through retryable errors.
    pub(crate) fn ride_out(&self) -> RideOut {
        self.ride_out
    }

    /// Runs `op` until it succeeds, fails with an error that is not
    /// retryable, or the policy is exhausted; returns the last result.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // The first attempt costs nothing more than the call: the backoff
        // is built only once a retryable error came back, and the retries'
        // state (a timer, the backoff, another call) is boxed apart, so
        // that a caller's future holds only what the first attempt needs.
        let first = op().await;
        if !first.as_ref().is_err_and(Error::is_retryable) {
            return first;
        }
        Box::pin(self.retry(op, first)).await
    }

    /// The retries after a first attempt that failed with `last`.
    async fn retry<T, F, Fut>(&self, mut op: F, mut last: Result<T>) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut delays = self.backoff.build();
        // The calls count too, not only the sleeps: a server that never
        // answers costs each call a request timeout, and the retries of
        // those must not take six of them.
        let started = tokio::time::Instant::now();
        loop {
            let Some(delay) = delays.next() else {
                return last;
            };
            if started.elapsed() + delay > self.ride_out.budget {
                return last;
            }
            if let Err(err) = &last {
                tracing::debug!(error = %err, ?delay, "retrying after a retryable error");
            }
            tokio::time::sleep(delay).await;
            last = op().await;
            if !last.as_ref().is_err_and(Error::is_retryable) {
                return last;
            }
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new(&RetrySettings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_first_attempt_holds_no_retry_state() {
        let policy = RetryPolicy::default();
        let op = || async { Ok::<u64, Error>(1) };
        // The retries (a timer, the backoff, another call) are boxed apart:
        // a caller that is answered at once carries none of their state.
        let call = std::mem::size_of_val(&op());
        let run = std::mem::size_of_val(&policy.run(op));
        assert!(
            run <= call + 128,
            "run: {run} bytes, for a call of {call} bytes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_retryable_errors_then_succeeds() {
        let calls = AtomicUsize::new(0);
        let policy = RetryPolicy::default();
        let out = policy
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::unavailable("down", None))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_permanent_errors() {
        let calls = AtomicUsize::new(0);
        let out: Result<()> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::NotHeld("k".into()))
            })
            .await;
        assert!(matches!(out, Err(Error::NotHeld(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_failures_end_the_retries_by_max_elapsed() {
        let calls = AtomicUsize::new(0);
        let out: Result<()> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                // A server that never answers: each call takes a request
                // timeout.
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err(Error::Timeout("no answer".into()))
            })
            .await;
        assert!(matches!(out, Err(Error::Timeout(_))));
        // Not 1 + 5 retries of 5 s each: the retries end once 5 s passed.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries() {
        let calls = AtomicUsize::new(0);
        let out: Result<()> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Timeout("slow".into()))
            })
            .await;
        assert!(matches!(out, Err(Error::Timeout(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }
}
