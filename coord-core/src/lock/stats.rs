//! Usage statistics per lock, kept by each [`LockClient`](crate::lock::LockClient)
//! for the locks it takes (and exported as Prometheus metrics when the client
//! has [`Metrics`](crate::Metrics)).

use foldhash::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// A [`DurationHistogram`] updated with atomics: buckets are counted
/// singly and made cumulative when read (their total is the count). A
/// record costs two atomic additions (one for a zero duration), and a third
/// only for a new maximum.
#[derive(Debug, Default)]
struct AtomicHistogram {
    sum_nanos: AtomicU64,
    max_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

impl AtomicHistogram {
    fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // (An in-process grant waits no time: no addition to the sum.)
        if nanos > 0 {
            self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
        if nanos > self.max_nanos.load(Ordering::Relaxed) {
            self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
        let i = BUCKET_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(BUCKETS.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    fn count(&self) -> u64 {
        self.buckets.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    fn snapshot(&self) -> DurationHistogram {
        let mut total = 0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (*bound, total)
            })
            .collect();
        if total == 0 {
            return DurationHistogram::default();
        }
        DurationHistogram {
            count: total,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)),
            max: Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed)),
            buckets,
        }
    }
}

/// The bucket bounds in nanoseconds (the last is `u64::MAX`).
const BUCKET_NANOS: [u64; BUCKETS.len()] = {
    let mut n = [u64::MAX; BUCKETS.len()];
    let mut i = 0;
    while i + 1 < BUCKETS.len() {
        n[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    n
};

/// The statistics of one lock name (or of [`OTHER_LOCKS`]), updated without
/// a lock: a lock handle looks its cell up once and keeps it.
#[derive(Debug)]
pub(crate) struct StatsCell {
    /// The name the statistics and metrics are kept under.
    label: Arc<str>,
    /// Grants are counted by the wait histogram.
    contended: AtomicU64,
    lost: AtomicU64,
    wait: AtomicHistogram,
    hold: AtomicHistogram,
}

impl StatsCell {
    fn new(label: Arc<str>) -> Self {
        StatsCell {
            label,
            contended: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            wait: AtomicHistogram::default(),
            hold: AtomicHistogram::default(),
        }
    }

    /// The label this lock's metrics carry (bounded like the table).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn acquired(&self, waited: Duration, contended: bool) {
        if contended {
            self.contended.fetch_add(1, Ordering::Relaxed);
        }
        self.wait.record(waited);
    }

    pub(crate) fn released(&self, held: Duration) {
        self.hold.record(held);
    }

    pub(crate) fn lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LockStats {
        LockStats {
            acquisitions: self.wait.count(),
            contended: self.contended.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            wait: self.wait.snapshot(),
            hold: self.hold.snapshot(),
        }
    }

    fn is_empty(&self) -> bool {
        self.wait.count() == 0 && self.lost.load(Ordering::Relaxed) == 0 && self.hold.count() == 0
    }
}

/// The statistics of one client, by lock name.
#[derive(Debug, Default)]
pub(crate) struct StatsTable {
    by_lock: Mutex<HashMap<Arc<str>, Arc<StatsCell>>>,
}

impl StatsTable {
    /// The cell of lock `name`: its own while fewer than
    /// [`MAX_TRACKED_LOCKS`] names are tracked, else the shared
    /// [`OTHER_LOCKS`] cell.
    pub(crate) fn cell(&self, name: &Arc<str>) -> Arc<StatsCell> {
        let mut by_lock = self.by_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cell) = by_lock.get(&**name) {
            return cell.clone();
        }
        let label: Arc<str> = if by_lock.len() < MAX_TRACKED_LOCKS {
            name.clone()
        } else {
            Arc::from(OTHER_LOCKS)
        };
        by_lock
            .entry(label.clone())
            .or_insert_with(|| Arc::new(StatsCell::new(label)))
            .clone()
    }

    /// What was seen of lock `name`, if anything.
    pub(crate) fn get(&self, name: &str) -> Option<LockStats> {
        let by_lock = self.by_lock.lock().unwrap_or_else(|e| e.into_inner());
        by_lock
            .get(name)
            .filter(|c| !c.is_empty())
            .map(|c| c.snapshot())
    }

    /// Every lock seen, by name.
    pub(crate) fn all(&self) -> Vec<(String, LockStats)> {
        let by_lock = self.by_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = by_lock
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(k, c)| (k.to_string(), c.snapshot()))
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
        let a = t.cell(&Arc::from("a"));
        a.acquired(Duration::from_millis(2), false);
        a.acquired(Duration::from_millis(200), true);
        a.released(Duration::from_secs(2));
        a.lost();
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
            t.cell(&Arc::from(format!("l{i}")))
                .acquired(Duration::ZERO, false);
        }
        assert_eq!(t.all().len(), MAX_TRACKED_LOCKS + 1);
        assert_eq!(t.get(OTHER_LOCKS).unwrap().acquisitions, 5);
        assert_eq!(t.cell(&Arc::from("l999999")).label(), OTHER_LOCKS);
    }
}
