//! A retry budget: retries may add at most a share of the recent calls (plus
//! a small floor), so that during an outage retries cannot multiply load.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How many buckets the window is split into.
const BUCKETS: usize = 10;

/// Caps retries at `ratio` × the calls of the last `window`, plus
/// `min_per_second` × the window's seconds (so that a quiet client can
/// still retry). Finagle's and tower's retry budgets work the same way.
///
/// ```
/// use std::time::Duration;
/// use coord_core::discovery::RetryBudget;
///
/// let budget = RetryBudget::new(Duration::from_secs(10), 0.2, 0);
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw(), "20 % of 10 calls is 2 retries");
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    window: Duration,
    ratio: f64,
    min_per_second: u32,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    /// Calls and retries per bucket, oldest first after rotation.
    calls: [u64; BUCKETS],
    retries: [u64; BUCKETS],
    /// Start of the current bucket.
    current_start: Instant,
    current: usize,
}

impl RetryBudget {
    /// A budget of `ratio` (0 to 1000) of the calls of the last `window`
    /// (at least 1 s), plus `min_per_second` retries a second.
    pub fn new(window: Duration, ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            window: window.max(Duration::from_secs(1)),
            ratio: if ratio.is_finite() {
                ratio.clamp(0.0, 1000.0)
            } else {
                0.0
            },
            min_per_second,
            state: Mutex::new(Buckets {
                calls: [0; BUCKETS],
                retries: [0; BUCKETS],
                current_start: Instant::now(),
                current: 0,
            }),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut Buckets) -> T) -> T {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = self.window / BUCKETS as u32;
        let now = Instant::now();
        let mut steps = 0;
        while now.duration_since(b.current_start) >= bucket && steps <= BUCKETS {
            b.current = (b.current + 1) % BUCKETS;
            let c = b.current;
            b.calls[c] = 0;
            b.retries[c] = 0;
            b.current_start += bucket;
            steps += 1;
        }
        if steps > BUCKETS {
            b.current_start = now;
        }
        f(&mut b)
    }

    /// Counts a call (its first attempt).
    pub fn deposit(&self) {
        self.with_state(|b| b.calls[b.current] += 1);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        let floor = u64::from(self.min_per_second) * self.window.as_secs().max(1);
        self.with_state(|b| {
            let calls: u64 = b.calls.iter().sum();
            let retries: u64 = b.retries.iter().sum();
            let allowed = floor + (self.ratio * calls as f64) as u64;
            if retries < allowed {
                b.retries[b.current] += 1;
                true
            } else {
                false
            }
        })
    }
}

impl Default for RetryBudget {
    /// 20 % of the last 10 s of calls, plus 1 retry a second.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 0.2, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_old_calls_leave_the_window() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0.5, 0);
        for _ in 0..4 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.withdraw(), "old calls no longer count");
        budget.deposit();
        budget.deposit();
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_a_quiet_client_to_retry() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0.0, 1);
        for _ in 0..10 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
    }
}
