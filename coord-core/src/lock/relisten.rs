//! When a lock waiter whose notifications failed listens again.

use tokio::time::{Duration, Instant};

use crate::lock::handle::RESUBSCRIBE_AFTER;

/// The longest a waiter whose notifications keep failing goes without trying
/// to listen again (see [`Relisten`]).
const RELISTEN_MAX: Duration = Duration::from_secs(30);

/// When a waiter whose notifications failed (a refused subscription, a
/// channel that died at once) and who polls meanwhile listens again:
/// [`RESUBSCRIBE_AFTER`] after the failure, then twice as long after each
/// further one, up to [`RELISTEN_MAX`]. A server that was restarting is
/// heard again about a second after it answers, not only at the end of the
/// wait, and one that keeps failing costs a subscription now and then,
/// never a spin.
#[derive(Debug)]
pub(crate) struct Relisten {
    at: Option<Instant>,
    backoff: Duration,
}

impl Relisten {
    pub(crate) fn new() -> Self {
        Relisten {
            at: None,
            backoff: RESUBSCRIBE_AFTER,
        }
    }

    /// The notifications failed now: listen again after the backoff.
    pub(crate) fn failed(&mut self) {
        self.at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(RELISTEN_MAX);
    }

    /// A channel lived long enough: the next failure waits the least again.
    pub(crate) fn lived(&mut self) {
        self.backoff = RESUBSCRIBE_AFTER;
    }

    /// `wake`, or the time to listen again if that comes first.
    pub(crate) fn wake(&self, wake: Instant) -> Instant {
        self.at.map_or(wake, |at| wake.min(at))
    }

    /// Whether it is time to listen again (once per failure).
    pub(crate) fn due(&mut self) -> bool {
        let due = self.at.is_some_and(|at| Instant::now() >= at);
        if due {
            self.at = None;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn listens_again_after_a_backoff_that_doubles_and_resets() {
        let mut r = Relisten::new();
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(r.wake(far), far, "nothing failed: no wake-up of its own");
        assert!(!r.due());
        for backoff in [1, 2, 4, 8, 16, 30, 30] {
            let failed_at = Instant::now();
            r.failed();
            assert_eq!(r.wake(far), failed_at + Duration::from_secs(backoff));
            tokio::time::sleep_until(r.wake(far)).await;
            assert!(r.due(), "due {backoff} s after the failure");
            assert!(!r.due(), "once per failure");
        }
        r.lived();
        let failed_at = Instant::now();
        r.failed();
        assert_eq!(
            r.wake(far),
            failed_at + RESUBSCRIBE_AFTER,
            "reset by a channel that lived"
        );
    }
}
