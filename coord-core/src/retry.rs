//! Retries of retryable errors with exponential backoff and jitter.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::error::{Error, Result};
use crate::settings::RetrySettings;

/// How retryable errors are retried: exponential backoff with full jitter,
/// bounded by a number of attempts and a total delay.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    backoff: ExponentialBuilder,
    /// How long a waiting lock acquisition keeps trying while the backend
    /// fails (`max_elapsed`), and its pause between tries (`max_backoff`).
    ride_out: (Duration, Duration),
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
            ride_out: (settings.max_elapsed, settings.max_backoff),
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
            ride_out: (Duration::ZERO, Duration::ZERO),
        }
    }

    /// The same policy whose total delay ends by `budget`.
    pub fn within(&self, budget: Duration) -> Self {
        RetryPolicy {
            backoff: self.backoff.with_total_delay(Some(budget)),
            ride_out: (self.ride_out.0.min(budget), self.ride_out.1),
        }
    }

    /// How long a waiting lock acquisition keeps trying through retryable
    /// errors (the settings' `max_elapsed`; none for [`RetryPolicy::none`]),
    /// and how long it pauses between tries (`max_backoff`).
    pub(crate) fn ride_out(&self) -> (Duration, Duration) {
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
        loop {
            let Some(delay) = delays.next() else {
                return last;
            };
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
