//! How a waiting lock acquisition rides out a backend that stopped
//! answering (a restart, a failover, a network blip).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

use crate::error::Error;
use crate::retry::{RetryPolicy, RideOut};

/// The failures of a waiting acquisition's requests, counted from the first
/// one that failed since the last answer.
///
/// A waiting `acquire()` sends its requests one at a time, without a call's
/// own retries, and treats a backend that fails with a retryable error like
/// a lock that is held: it keeps its owner (or its queue entry) and asks
/// again after a pause (the retry policy's backoff: `initial_backoff`,
/// doubling up to `max_backoff`, jittered), until its wait timeout or until
/// the backend has failed for the policy's `max_elapsed` in a row,
/// whichever comes first. It then returns [`Error::Timeout`] (the wait
/// timeout) or the last error (the budget), saying how long the backend
/// failed. Keeping the owner is what makes asking again safe: a request
/// that was applied but whose answer was lost is renewed by the next one,
/// never granted twice.
#[derive(Debug)]
pub(crate) struct Outage {
    policy: RideOut,
    /// The next pause (before jitter).
    pause: Duration,
    /// When the first failure of this outage came back (the budget counts
    /// from there: a server that hangs has a budget after its first request
    /// timed out).
    since: Option<Instant>,
    /// When the first failed request of this outage was sent (what the
    /// errors say the backend failed since).
    first_sent: Option<Instant>,
    /// The wait timeout ended the outage (rather than the budget).
    out_of_time: bool,
    /// This outage was warned of.
    warned: bool,
}

/// The shortest pause between tries, whatever the settings say.
const MIN_PAUSE: Duration = Duration::from_millis(5);

/// How long before its deadline a waiting acquisition sends its last try
/// (which the deadline cuts short if it gets no answer).
const LAST_TRY_BEFORE: Duration = Duration::from_millis(20);

/// How long a request sent at (or just before) a waiting acquisition's
/// deadline may take past it: the last look at the lock, which a backend
/// that works answers in time (a hung one is cut short by then).
pub(crate) const LAST_LOOK: Duration = Duration::from_millis(100);

/// How long the backend fails before a waiting acquisition warns of it (a
/// blip that one retry rides out is not worth a warning).
const WARN_AFTER: Duration = Duration::from_secs(1);

/// When a waiting acquisition last warned of a failing backend (ms since
/// [`WARNED_EPOCH`]), so that a thousand waiters of one outage make a
/// warning a second, not a thousand.
static WARNED_AT: AtomicU64 = AtomicU64::new(0);
static WARNED_EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

impl Outage {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        let policy = policy.ride_out();
        Outage {
            policy,
            pause: policy.first_pause.max(MIN_PAUSE),
            since: None,
            first_sent: None,
            out_of_time: false,
            warned: false,
        }
    }

    /// The backend answered: the next failure starts a new outage.
    pub(crate) fn answered(&mut self) {
        self.first_sent = None;
        if self.since.take().is_some() {
            self.pause = self.policy.first_pause.max(MIN_PAUSE);
            self.warned = false;
        }
    }

    /// A request for `lock` sent at `sent_at` failed with `error`: when to
    /// ask again, or `None` to give up (an error that is not retryable, the
    /// budget spent, or no time left before the `deadline` for another try).
    /// The last try goes out [`LAST_TRY_BEFORE`] the deadline, so that the
    /// wait ends at its deadline, neither a pause early nor late.
    pub(crate) fn failed(
        &mut self,
        error: &Error,
        lock: &str,
        sent_at: Instant,
        deadline: Option<Instant>,
    ) -> Option<Instant> {
        if !error.is_retryable() {
            return None;
        }
        let now = Instant::now();
        self.first_sent.get_or_insert(sent_at);
        let since = *self.since.get_or_insert(now);
        let end = since + self.policy.budget;
        if now >= end {
            return None;
        }
        let pause = self.pause.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.pause = (self.pause * 2).min(self.policy.max_pause.max(MIN_PAUSE));
        let mut next = (now + pause).min(end);
        if let Some(d) = deadline {
            let last_try = d.checked_sub(LAST_TRY_BEFORE).unwrap_or(d);
            if next >= last_try {
                if now >= last_try {
                    self.out_of_time = true;
                    return None;
                }
                next = last_try;
            }
        }
        let failing_for = now - self.first_sent.unwrap_or(since);
        if !self.warned && failing_for >= WARN_AFTER && warn_now() {
            self.warned = true;
            tracing::warn!(lock, error = %error, ?failing_for, "the lock backend fails; waiting acquisitions ask again until it answers (at most one such warning a second)");
        } else {
            tracing::debug!(lock, error = %error, ?failing_for, "the lock backend fails; asking again");
        }
        Some(next)
    }

    /// The error that ends the acquisition of `what` after `error`: a
    /// [`Error::Timeout`] when the wait timeout ended it during an outage,
    /// else `error`, saying how long the backend had failed.
    pub(crate) fn gave_up(&self, error: Error, what: impl std::fmt::Display) -> Error {
        let Some(since) = self.first_sent.or(self.since) else {
            return error;
        };
        if self.out_of_time {
            return Error::Timeout(format!(
                "{what}: not acquired within its wait timeout; the backend has failed for the \
                 last {:?}: {error}",
                since.elapsed()
            ));
        }
        if error.is_retryable() && !self.policy.budget.is_zero() {
            return error.context(format!(
                "{what}: gave up after the backend failed for {:?} in a row (retry.max_elapsed \
                 is {:?})",
                since.elapsed(),
                self.policy.budget
            ));
        }
        error
    }

    /// The error of an acquisition of `what` whose request was still in
    /// flight when its wait timeout passed (`waited` after it started).
    pub(crate) fn unanswered_at_deadline(
        &self,
        what: impl std::fmt::Display,
        waited: Duration,
    ) -> Error {
        match self.first_sent.or(self.since) {
            Some(since) => Error::Timeout(format!(
                "{what}: not acquired within its wait timeout ({waited:?}); the backend has failed \
                 for the last {:?} and did not answer the last request",
                since.elapsed()
            )),
            None => Error::Timeout(format!(
                "{what}: not acquired within its wait timeout ({waited:?}); the backend did not \
                 answer the last request in time"
            )),
        }
    }
}

/// Whether this warning is the first in a second, process-wide.
fn warn_now() -> bool {
    let now_ms = (WARNED_EPOCH.elapsed().as_millis() as u64).max(1);
    let last = WARNED_AT.load(Ordering::Relaxed);
    (last == 0 || now_ms >= last + 1000)
        && WARNED_AT
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::RetrySettings;

    fn policy(budget: Duration, pause: Duration) -> RetryPolicy {
        RetryPolicy::new(&RetrySettings {
            max_elapsed: budget,
            initial_backoff: pause,
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
        while let Some(at) = outage.failed(&down, "x", Instant::now(), None) {
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
    async fn pauses_double_from_the_initial_backoff() {
        let mut outage = Outage::new(&RetryPolicy::new(&RetrySettings {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(60),
            ..RetrySettings::default()
        }));
        let down = Error::unavailable("down", None);
        let mut pauses = Vec::new();
        for _ in 0..10 {
            let at = outage
                .failed(&down, "x", Instant::now(), None)
                .expect("ask again");
            pauses.push(at - Instant::now());
            tokio::time::sleep_until(at).await;
        }
        let ms = |d: Duration| d.as_millis();
        assert!((10..=20).contains(&ms(pauses[0])), "{pauses:?}");
        assert!((20..=40).contains(&ms(pauses[1])), "{pauses:?}");
        assert!(
            pauses[9] >= Duration::from_millis(500),
            "up to max_backoff: {pauses:?}"
        );
        assert!(
            pauses.iter().all(|p| *p <= Duration::from_secs(1)),
            "{pauses:?}"
        );
        outage.answered();
        let at = outage
            .failed(&down, "x", Instant::now(), None)
            .expect("ask again");
        assert!(
            at - Instant::now() <= Duration::from_millis(20),
            "a new outage starts over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_starts_the_count_again() {
        let mut outage = Outage::new(&policy(Duration::from_secs(2), Duration::from_secs(1)));
        let down = Error::unavailable("down", None);
        for _ in 0..5 {
            let at = outage
                .failed(&down, "x", Instant::now(), None)
                .expect("ask again");
            tokio::time::sleep_until(at).await;
            outage.answered();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_timeout_ends_it_with_a_timeout() {
        let mut outage = Outage::new(&policy(Duration::from_secs(60), Duration::from_secs(1)));
        let down = Error::unavailable("down", None);
        let deadline = Instant::now() + Duration::from_millis(2500);
        let mut last = None;
        while let Some(at) = outage.failed(&down, "x", Instant::now(), Some(deadline)) {
            assert!(at < deadline, "no try is sent at the deadline");
            tokio::time::sleep_until(at).await;
            last = Some(at);
        }
        assert_eq!(
            last,
            Some(deadline - LAST_TRY_BEFORE),
            "the last try just before it"
        );
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
        assert!(outage.failed(&refused, "x", Instant::now(), None).is_none());
        assert_eq!(
            outage.gave_up(refused, "x").to_string(),
            Error::invalid("bad name").to_string()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retries_means_no_riding_out() {
        let mut outage = Outage::new(&RetryPolicy::none());
        let down = Error::unavailable("down", None);
        assert!(outage.failed(&down, "x", Instant::now(), None).is_none());
        assert_eq!(
            outage.gave_up(down, "x").to_string(),
            Error::unavailable("down", None).to_string()
        );
    }
}
