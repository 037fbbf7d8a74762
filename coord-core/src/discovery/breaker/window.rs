//! The sliding windows a closed breaker computes its rates over: the last
//! `n` calls, or the calls of the last duration in buckets.

use std::collections::VecDeque;
use std::time::Duration;

use super::config::BreakerWindow;

/// What a window holds: calls, and how many of them failed or were slow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) calls: u32,
    pub(super) failures: u32,
    pub(super) slow: u32,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }

    fn sub(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    fn one(failed: bool, slow: bool) -> Totals {
        Totals {
            calls: 1,
            failures: u32::from(failed),
            slow: u32::from(slow),
        }
    }
}

/// A sliding window of call outcomes. Times are nanoseconds since the
/// breaker was created, never decreasing.
#[derive(Debug)]
pub(super) enum Window {
    Count {
        /// Outcomes, oldest first: bit 0 failed, bit 1 slow.
        calls: VecDeque<u8>,
        capacity: usize,
        totals: Totals,
    },
    Time {
        bucket_ns: u64,
        /// Bucket `e % len` holds the calls that ended in bucket-epoch `e`
        /// (time / `bucket_ns`), for the epochs `(epoch - len, epoch]`.
        buckets: Vec<Totals>,
        epoch: u64,
        totals: Totals,
    },
}

/// The bucket width of a time window: 1 s for windows of 10 s to 60 s,
/// a tenth of the window below, a sixtieth above.
fn bucket_width(window: Duration) -> Duration {
    (window / 60).max(Duration::from_secs(1).min(window / 10))
}

impl Window {
    pub(super) fn new(kind: BreakerWindow) -> Window {
        match kind {
            BreakerWindow::Count(n) => Window::Count {
                calls: VecDeque::new(),
                capacity: n.max(1) as usize,
                totals: Totals::default(),
            },
            BreakerWindow::Time(d) => {
                let bucket_ns = (bucket_width(d).as_nanos() as u64).max(1);
                let len = (d.as_nanos() as u64).div_ceil(bucket_ns).max(1);
                Window::Time {
                    bucket_ns,
                    buckets: vec![Totals::default(); len as usize],
                    epoch: 0,
                    totals: Totals::default(),
                }
            }
        }
    }

    /// Records one call that ended at `now_ns`.
    pub(super) fn record(&mut self, now_ns: u64, failed: bool, slow: bool) {
        self.advance(now_ns);
        let call = Totals::one(failed, slow);
        match self {
            Window::Count {
                calls,
                capacity,
                totals,
            } => {
                if calls.len() == *capacity
                    && let Some(old) = calls.pop_front()
                {
                    totals.sub(Totals::one(old & 1 != 0, old & 2 != 0));
                }
                calls.push_back(u8::from(failed) | (u8::from(slow) << 1));
                totals.add(call);
            }
            Window::Time {
                buckets,
                epoch,
                totals,
                ..
            } => {
                let len = buckets.len() as u64;
                buckets[(*epoch % len) as usize].add(call);
                totals.add(call);
            }
        }
    }

    /// The calls in the window at `now_ns`.
    pub(super) fn totals(&mut self, now_ns: u64) -> Totals {
        self.advance(now_ns);
        match self {
            Window::Count { totals, .. } | Window::Time { totals, .. } => *totals,
        }
    }

    /// Forgets every call.
    pub(super) fn clear(&mut self) {
        match self {
            Window::Count { calls, totals, .. } => {
                calls.clear();
                *totals = Totals::default();
            }
            Window::Time {
                buckets, totals, ..
            } => {
                buckets.fill(Totals::default());
                *totals = Totals::default();
            }
        }
    }

    /// Moves a time window to `now_ns`, emptying the buckets it passes.
    fn advance(&mut self, now_ns: u64) {
        let Window::Time {
            bucket_ns,
            buckets,
            epoch,
            totals,
        } = self
        else {
            return;
        };
        let now = now_ns / *bucket_ns;
        if now <= *epoch {
            return;
        }
        let len = buckets.len() as u64;
        if now - *epoch >= len {
            buckets.fill(Totals::default());
            *totals = Totals::default();
        } else {
            for e in *epoch + 1..=now {
                let bucket = &mut buckets[(e % len) as usize];
                totals.sub(*bucket);
                *bucket = Totals::default();
            }
        }
        *epoch = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn bucket_widths() {
        let s = Duration::from_secs;
        assert_eq!(bucket_width(s(5)), Duration::from_millis(500));
        assert_eq!(bucket_width(s(10)), s(1));
        assert_eq!(bucket_width(s(60)), s(1));
        assert_eq!(bucket_width(s(600)), s(10));
    }

    #[test]
    fn a_count_window_keeps_the_last_n_calls() {
        let mut w = Window::new(BreakerWindow::Count(3));
        w.record(0, true, false);
        w.record(0, true, true);
        w.record(0, false, false);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        w.record(0, false, false);
        w.record(0, false, false);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        w.clear();
        assert_eq!(w.totals(0), Totals::default());
    }

    #[test]
    fn a_time_window_forgets_whole_buckets() {
        // 10 s window: ten buckets of 1 s.
        let mut w = Window::new(BreakerWindow::Time(Duration::from_secs(10)));
        w.record(0, true, false);
        w.record(S / 2, true, false);
        w.record(3 * S, false, true);
        assert_eq!(w.totals(9 * S).calls, 3);
        // At 10 s the bucket [0 s, 1 s) has left; the one of 3 s stays.
        let t = w.totals(10 * S);
        assert_eq!((t.calls, t.failures, t.slow), (1, 0, 1));
        assert_eq!(w.totals(13 * S).calls, 0);
        // A jump longer than the window empties it at once.
        w.record(14 * S, true, false);
        assert_eq!(w.totals(100 * S).calls, 0);
    }
}
