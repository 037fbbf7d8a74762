//! How a waiting lock acquisition rides out a backend that stopped
//! answering (a restart, a failover, a network blip).

use tokio::time::{Duration, Instant};

use crate::error::Error;
use crate::retry::RetryPolicy;

/// The failures of a waiting acquisition's requests, counted from the first
/// one that failed since the last answer.
///
/// A waiting `acquire()` treats a backend that fails with a retryable error
/// like a lock that is held: it keeps its owner (or its queue entry) and
/// asks again, until its wait timeout or until the backend has failed for
/// the retry policy's `max_elapsed`, whichever comes first. It then returns
/// the last error, saying how long the backend failed. Keeping the owner is
/// what makes asking again safe: a request that was applied but whose
/// answer was lost is renewed by the next one, never granted twice.
#[derive(Debug)]
pub(crate) struct Outage {
    /// How long the backend may fail before the acquisition gives up.
    budget: Duration,
    /// The pause between tries.
    pause: Duration,
    /// When the first failed request of this outage was sent.
    since: Option<Instant>,
}

impl Outage {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        let (budget, pause) = policy.ride_out();
        Outage {
            budget,
            pause: pause.max(Duration::from_millis(1)),
            since: None,
        }
    }

    /// The backend answered: the next failure starts a new outage.
    pub(crate) fn answered(&mut self) {
        self.since = None;
    }

    /// A request sent at `sent_at` failed with `error`: when to ask again,
    /// or `None` to give up (an error that is not retryable, the budget
    /// spent, or the `deadline` passed).
    pub(crate) fn failed(
        &mut self,
        error: &Error,
        sent_at: Instant,
        deadline: Option<Instant>,
    ) -> Option<Instant> {
        if !error.is_retryable() {
            return None;
        }
        let first = self.since.is_none();
        let since = *self.since.get_or_insert(sent_at);
        let end = since + self.budget;
        let now = Instant::now();
        if now >= end || deadline.is_some_and(|d| now >= d) {
            return None;
        }
        let mut next = (now + self.pause).min(end);
        if let Some(d) = deadline {
            next = next.min(d);
        }
        if first {
            tracing::warn!(error = %error, "the lock backend failed; the waiting acquisition asks again until it answers");
        } else {
            tracing::debug!(error = %error, failing_for = ?(now - since), "the lock backend still fails");
        }
        Some(next)
    }

    /// `error`, saying how long the backend had failed when the
    /// acquisition of `what` gave up on it.
    pub(crate) fn gave_up(&self, error: Error, what: impl std::fmt::Display) -> Error {
        match self.since {
            Some(since) if error.is_retryable() && !self.budget.is_zero() => {
                error.context(format!(
                    "{what}: gave up after the backend failed for {:?} (retry.max_elapsed is {:?})",
                    since.elapsed(),
                    self.budget
                ))
            }
            _ => error,
        }
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
        while let Some(at) = outage.failed(&down, Instant::now(), None) {
            assert!(at > Instant::now(), "a pause between tries");
            tokio::time::sleep_until(at).await;
            tries += 1;
            assert!(tries < 100, "the budget ends the outage");
        }
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(tries, 5);
        let err = outage.gave_up(down, "lock \"x\"");
        assert!(err.to_string().contains("retry.max_elapsed"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_starts_the_count_again() {
        let mut outage = Outage::new(&policy(Duration::from_secs(2), Duration::from_secs(1)));
        let down = Error::unavailable("down", None);
        for _ in 0..5 {
            let at = outage
                .failed(&down, Instant::now(), None)
                .expect("ask again");
            tokio::time::sleep_until(at).await;
            outage.answered();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_and_permanent_errors_end_it_at_once() {
        let mut outage = Outage::new(&policy(Duration::from_secs(60), Duration::from_secs(1)));
        let down = Error::unavailable("down", None);
        let deadline = Instant::now() + Duration::from_millis(1500);
        let at = outage
            .failed(&down, Instant::now(), Some(deadline))
            .unwrap();
        tokio::time::sleep_until(at).await;
        let at = outage
            .failed(&down, Instant::now(), Some(deadline))
            .unwrap();
        assert_eq!(at, deadline, "the last try is at the deadline");
        tokio::time::sleep_until(at).await;
        assert!(
            outage
                .failed(&down, Instant::now(), Some(deadline))
                .is_none()
        );
        let refused = Error::invalid("bad name");
        assert!(outage.failed(&refused, Instant::now(), None).is_none());
        assert_eq!(
            outage.gave_up(refused, "x").to_string(),
            Error::invalid("bad name").to_string()
        );
    }

    #[test]
    fn no_retries_means_no_riding_out() {
        let mut outage = Outage::new(&RetryPolicy::none());
        let down = Error::unavailable("down", None);
        assert!(outage.failed(&down, Instant::now(), None).is_none());
    }
}
