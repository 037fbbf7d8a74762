//! Usage statistics per lock, kept by each [`LockClient`](crate::lock::LockClient)
//! for the locks it takes (and exported as Prometheus metrics when the client
//! has [`Metrics`](crate::Metrics)).

use foldhash::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the histogram buckets, in seconds (the last is +∞).
const BUCKETS: [f64; 14] = [
    0.000_1,
    0.000_5,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
    300.0,
    f64::INFINITY,
];

/// The most distinct lock names a client keeps statistics for; further
/// names are counted under [`OTHER_LOCKS`] (bounded memory and label cardinality).
pub const MAX_TRACKED_LOCKS: usize = 1000;

/// The name statistics of untracked locks are counted under.
pub const OTHER_LOCKS: &str = "_other";

/// A histogram of durations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DurationHistogram {
    /// How many durations were recorded.
    pub count: u64,
    /// Their sum.
    pub sum: Duration,
    /// The longest one.
    pub max: Duration,
    /// `(upper bound in seconds, how many were at most that)`, cumulative,
    /// ending with `+∞`.
    pub buckets: Vec<(f64, u64)>,
}

impl DurationHistogram {
    fn record(&mut self, d: Duration) {
        if self.buckets.is_empty() {
            self.buckets = BUCKETS.iter().map(|b| (*b, 0)).collect();
        }
        self.count += 1;
        self.sum += d;
        self.max = self.max.max(d);
        let secs = d.as_secs_f64();
        for (bound, n) in &mut self.buckets {
            if secs <= *bound {
                *n += 1;
            }
        }
    }

    /// The mean, or zero when empty.
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            let nanos = self.sum.as_nanos() / u128::from(self.count);
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        }
    }
}

/// What one client saw of one lock.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LockStats {
    /// Grants (reentrant re-holds not counted).
    pub acquisitions: u64,
    /// Grants that had to wait for another holder first.
    pub contended: u64,
    /// Holds lost while held (lease ran out, refused renewal, force-release).
    pub lost: u64,
    /// Time from `acquire()` to the grant.
    pub wait: DurationHistogram,
    /// Time from the grant to the release (or loss).
    pub hold: DurationHistogram,
}

/// The statistics of one client, by lock name.
#[derive(Debug, Default)]
pub(crate) struct StatsTable {
    by_lock: Mutex<HashMap<String, LockStats>>,
}

impl StatsTable {
    fn with(&self, name: &str, f: impl FnOnce(&mut LockStats)) {
        let mut by_lock = self.by_lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = if by_lock.contains_key(name) || by_lock.len() < MAX_TRACKED_LOCKS {
            name
        } else {
            OTHER_LOCKS
        };
        f(by_lock.entry(key.to_owned()).or_default());
    }

    pub(crate) fn acquired(&self, name: &str, waited: Duration, contended: bool) {
        self.with(name, |s| {
            s.acquisitions += 1;
            s.contended += u64::from(contended);
            s.wait.record(waited);
        });
    }

    pub(crate) fn released(&self, name: &str, held: Duration) {
        self.with(name, |s| s.hold.record(held));
    }

    pub(crate) fn lost(&self, name: &str) {
        self.with(name, |s| s.lost += 1);
    }

    /// The label a lock's metrics carry (bounded like the table).
    pub(crate) fn label<'a>(&self, name: &'a str) -> &'a str {
        let by_lock = self.by_lock.lock().unwrap_or_else(|e| e.into_inner());
        if by_lock.contains_key(name) || by_lock.len() < MAX_TRACKED_LOCKS {
            name
        } else {
            OTHER_LOCKS
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<LockStats> {
        let by_lock = self.by_lock.lock().unwrap_or_else(|e| e.into_inner());
        by_lock.get(name).cloned()
    }

    pub(crate) fn all(&self) -> Vec<(String, LockStats)> {
        let by_lock = self.by_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = by_lock
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_counts_and_buckets() {
        let t = StatsTable::default();
        t.acquired("a", Duration::from_millis(2), false);
        t.acquired("a", Duration::from_millis(200), true);
        t.released("a", Duration::from_secs(2));
        t.lost("a");
        let s = t.get("a").unwrap();
        assert_eq!((s.acquisitions, s.contended, s.lost), (2, 1, 1));
        assert_eq!(s.wait.count, 2);
        assert_eq!(s.wait.max, Duration::from_millis(200));
        // 2 ms is under the 5 ms bound, 200 ms is not.
        assert_eq!(s.wait.buckets.iter().find(|b| b.0 == 0.005).unwrap().1, 1);
        assert_eq!(s.wait.buckets.last().unwrap().1, 2);
        assert_eq!(s.hold.count, 1);
    }

    #[test]
    fn names_beyond_the_cap_share_one_entry() {
        let t = StatsTable::default();
        for i in 0..MAX_TRACKED_LOCKS + 5 {
            t.acquired(&format!("l{i}"), Duration::ZERO, false);
        }
        assert_eq!(t.all().len(), MAX_TRACKED_LOCKS + 1);
        assert_eq!(t.get(OTHER_LOCKS).unwrap().acquisitions, 5);
        assert_eq!(t.label("l999999"), OTHER_LOCKS);
    }
}
