//! How a waiting lock acquisition rides out a backend that stopped
//! answering (a restart, a failover, a network blip).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

use crate::error::Error;
use crate::retry::RetryPolicy;

/// The failures of a waiting acquisition's requests, counted from the first
/// one that failed since the last answer.
///
/// A waiting `acquire()` treats a backend that fails with a retryable error
/// like a lock that is held: it keeps its owner (or its queue entry) and
/// asks again, one request at a time (the pauses between them are the
/// retries), until its wait timeout or until the backend has failed for the
/// retry policy's `max_elapsed` in a row, whichever comes first. It then
/// returns [`Error::Timeout`] (the wait timeout) or the last error (the
/// budget), saying how long the backend failed. Keeping the owner is what
/// makes asking again safe: a request that was applied but whose answer was
/// lost is renewed by the next one, never granted twice.
#[derive(Debug)]
pub(crate) struct Outage {
    /// How long the backend may fail before the acquisition gives up.
    budget: Duration,
    /// The pause between tries (jittered down to half of it).
    pause: Duration,
    /// When the first failure of this outage came back.
    since: Option<Instant>,
    /// The wait timeout ended the outage (rather than the budget).
    out_of_time: bool,
}

/// The shortest pause between tries, whatever `max_backoff` says.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// When a waiting acquisition last warned of a failing backend (ms since
/// [`WARNED_EPOCH`]), so that a thousand waiters of one outage make a
/// warning a second, not a thousand.
static WARNED_AT: AtomicU64 = AtomicU64::new(0);
static WARNED_EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

impl Outage {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        let (budget, pause) = policy.ride_out();
        Outage {
            budget,
            pause: pause.max(MIN_PAUSE),
            since: None,
            out_of_time: false,
        }
    }

    /// Whether the backend failed since its last answer: the next request
    /// then goes alone, without a call's own retries (the outage's pauses
    /// are the retries).
    pub(crate) fn riding(&self) -> bool {
        self.since.is_some()
    }

    /// The backend answered: the next failure starts a new outage.
    pub(crate) fn answered(&mut self) {
        self.since = None;
    }

    /// A request for `lock` failed with `error`: when to ask again, or
    /// `None` to give up (an error that is not retryable, the budget spent,
    /// or no time left before the `deadline` for another try).
    pub(crate) fn failed(
        &mut self,
        error: &Error,
        lock: &str,
        deadline: Option<Instant>,
    ) -> Option<Instant> {
        if !error.is_retryable() {
            return None;
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        let end = since + self.budget;
        if now >= end {
            return None;
        }
        let pause = self.pause.mul_f64(0.5 + fastrand::f64() / 2.0);
        let next = (now + pause).min(end);
        if deadline.is_some_and(|d| next >= d) {
            self.out_of_time = true;
            return None;
        }
        let ms = |at: std::time::Instant| at.duration_since(*WARNED_EPOCH).as_millis() as u64;
        let now_ms = ms(std::time::Instant::now()).max(1);
        let last = WARNED_AT.load(Ordering::Relaxed);
        if (last == 0 || now_ms >= last + 1000)
            && WARNED_AT
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(lock, error = %error, "the lock backend failed; waiting acquisitions ask again until it answers (at most one such warning a second)");
        } else {
            tracing::debug!(lock, error = %error, failing_for = ?(now - since), "the lock backend still fails");
        }
        Some(next)
    }

    /// The error that ends the acquisition of `what` after `error`: a
    /// [`Error::Timeout`] when the wait timeout ended it during an outage,
    /// else `error`, saying how long the backend had failed.
    pub(crate) fn gave_up(&self, error: Error, what: impl std::fmt::Display) -> Error {
        let Some(since) = self.since else {
            return error;
        };
        if self.out_of_time {
            return Error::Timeout(format!(
                "{what}: not acquired within its wait timeout; the backend has failed for the \
                 last {:?}: {error}",
                since.elapsed()
            ));
        }
        if error.is_retryable() && !self.budget.is_zero() {
            return error.context(format!(
                "{what}: gave up after the backend failed for {:?} in a row (retry.max_elapsed \
                 is {:?})",
                since.elapsed(),
                self.budget
            ));
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::RetrySettings;

    fn policy(budget: Duration, pause: Duration) -> RetryPolicy {
        RetryPolicy::new(&RetrySettings {
            max_elapsed: budget,
            max_backoff: pause,
            ..RetrySettings::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn asks_again_until_the_budget_is_spent() {
        let mut outage = Outage::new(&policy(Duration::from_secs(5), Duration::from_secs(1)));
        let down = Error::unavailable("down", None);
        let started = Instant::now();
        let mut tries = 0;
        assert!(!outage.riding());
        while let Some(at) = outage.failed(&down, "x", None) {
            assert!(outage.riding());
            let pause = at - Instant::now();
            assert!(
                pause >= Duration::from_millis(500)
                    || Instant::now() + pause == started + Duration::from_secs(5),
                "a jittered pause of half to all of max_backoff: {pause:?}"
            );
            tokio::time::sleep_until(at).await;
            tries += 1;
            assert!(tries < 100, "the budget ends the outage");
        }
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!((5..=10).contains(&tries), "{tries} tries");
        let err = outage.gave_up(down, "lock \"x\"");
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("retry.max_elapsed"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_starts_the_count_again() {
        let mut outage = Outage::new(&policy(Duration::from_secs(2), Duration::from_secs(1)));
        let down = Error::unavailable("down", None);
        for _ in 0..5 {
            let at = outage.failed(&down, "x", None).expect("ask again");
            tokio::time::sleep_until(at).await;
            outage.answered();
            assert!(!outage.riding());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_timeout_ends_it_with_a_timeout() {
        let mut outage = Outage::new(&policy(Duration::from_secs(60), Duration::from_secs(1)));
        let down = Error::unavailable("down", None);
        let deadline = Instant::now() + Duration::from_millis(2500);
        while let Some(at) = outage.failed(&down, "x", Some(deadline)) {
            assert!(at < deadline, "no try is sent at the deadline");
            tokio::time::sleep_until(at).await;
        }
        assert!(Instant::now() < deadline);
        let err = outage.gave_up(down, "lock \"x\"");
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        assert!(err.to_string().contains("wait timeout"), "{err}");
        assert!(err.to_string().contains("down"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_end_it_at_once() {
        let mut outage = Outage::new(&policy(Duration::from_secs(60), Duration::from_secs(1)));
        let refused = Error::invalid("bad name");
        assert!(outage.failed(&refused, "x", None).is_none());
        assert_eq!(
            outage.gave_up(refused, "x").to_string(),
            Error::invalid("bad name").to_string()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retries_means_no_riding_out() {
        let mut outage = Outage::new(&RetryPolicy::none());
        let down = Error::unavailable("down", None);
        assert!(outage.failed(&down, "x", None).is_none());
        assert_eq!(
            outage.gave_up(down, "x").to_string(),
            Error::unavailable("down", None).to_string()
        );
    }
}
