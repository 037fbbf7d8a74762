//! The holds a chaos run saw, and the checks run over them afterwards:
//! overlapping holds, loss signals that came after a newer grant.

use std::time::Duration;

use tokio::time::Instant;

use crate::lock::FencingToken;

/// How a hold ended, from its holder's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The holder released it (or resigned).
    Released,
    /// `lost()` resolved (or a fenced write was refused and `lost()`
    /// followed).
    Lost,
}

/// One grant to one worker: when it was granted and until when its holder
/// believed it held (the earliest of its release, its `lost()` signal and
/// the end of the guard's validity).
#[derive(Debug, Clone)]
pub struct Hold {
    /// The worker that held it.
    pub worker: usize,
    /// Its fencing token.
    pub token: FencingToken,
    /// When `acquire` returned it.
    pub granted_at: Instant,
    /// Until when its holder believed it held.
    pub believed_until: Instant,
    /// When `lost()` resolved, if it did.
    pub lost_at: Option<Instant>,
    /// How it ended.
    pub end: HoldEnd,
}

/// How late a loss signal may come after a newer grant before it counts:
/// the timer that resolves `lost()` at the end of a guard's validity fires
/// up to a few milliseconds late on a busy machine.
pub const LATE_LOSS_TOLERANCE: Duration = Duration::from_millis(25);

/// Holds granted while `capacity` other holds were still believed held
/// (`capacity` 1 for exclusive kinds, the permits for a semaphore): one
/// message per overlap.
pub fn overlaps(holds: &[Hold], capacity: usize, origin: Instant) -> Vec<String> {
    let mut sorted: Vec<&Hold> = holds.iter().collect();
    sorted.sort_by_key(|h| h.granted_at);
    let mut active: Vec<&Hold> = Vec::new();
    let mut found = Vec::new();
    for hold in sorted {
        active.retain(|a| a.believed_until > hold.granted_at);
        let others: Vec<&&Hold> = active.iter().filter(|a| a.worker != hold.worker).collect();
        if others.len() >= capacity {
            let at = |i: Instant| i.saturating_duration_since(origin).as_secs_f64();
            let held: Vec<String> = others
                .iter()
                .map(|a| {
                    format!(
                        "worker {} (token {}, granted at +{:.3}s, believed held until \
                         +{:.3}s, {})",
                        a.worker,
                        a.token,
                        at(a.granted_at),
                        at(a.believed_until),
                        match a.lost_at {
                            Some(l) => format!("lost() at +{:.3}s", at(l)),
                            None => "released".to_owned(),
                        }
                    )
                })
                .collect();
            found.push(format!(
                "overlap: worker {} was granted token {} at +{:.3}s while {} still held",
                hold.worker,
                hold.token,
                at(hold.granted_at),
                held.join(", ")
            ));
        }
        active.push(hold);
    }
    found
}

/// Holds whose `lost()` resolved more than [`LATE_LOSS_TOLERANCE`] after
/// another worker had been granted the lock (exclusive kinds only: with
/// permits, a newer grant does not mean this hold was gone).
pub fn late_losses(holds: &[Hold]) -> Vec<String> {
    let mut found = Vec::new();
    for hold in holds {
        let Some(lost_at) = hold.lost_at else {
            continue;
        };
        let newer = holds
            .iter()
            .filter(|h| h.worker != hold.worker && h.granted_at > hold.granted_at)
            .map(|h| h.granted_at)
            .min();
        if let Some(newer) = newer
            && lost_at > newer + LATE_LOSS_TOLERANCE
        {
            found.push(format!(
                "late loss: worker {} (token {}) was told its hold was lost {:?} after a \
                 newer grant",
                hold.worker,
                hold.token,
                lost_at - newer
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(worker: usize, token: u64, from_ms: u64, to_ms: u64, origin: Instant) -> Hold {
        Hold {
            worker,
            token: FencingToken::new(token),
            granted_at: origin + Duration::from_millis(from_ms),
            believed_until: origin + Duration::from_millis(to_ms),
            lost_at: None,
            end: HoldEnd::Released,
        }
    }

    #[test]
    fn overlapping_holds_are_reported_and_adjacent_ones_are_not() {
        let o = Instant::now();
        let clean = [
            hold(0, 1, 0, 10, o),
            hold(1, 2, 10, 20, o),
            hold(0, 3, 25, 30, o),
        ];
        assert!(overlaps(&clean, 1, o).is_empty());
        let bad = [hold(0, 1, 0, 10, o), hold(1, 2, 5, 20, o)];
        let found = overlaps(&bad, 1, o);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("worker 1"), "{found:?}");
        // Two permits: two at once is fine, a third is not.
        let permits = [
            hold(0, 1, 0, 10, o),
            hold(1, 2, 1, 10, o),
            hold(2, 3, 2, 10, o),
        ];
        assert!(overlaps(&permits[..2], 2, o).is_empty());
        assert_eq!(overlaps(&permits, 2, o).len(), 1);
    }

    #[test]
    fn a_loss_signalled_after_a_newer_grant_is_late() {
        let o = Instant::now();
        let mut first = hold(0, 1, 0, 10, o);
        first.lost_at = Some(o + Duration::from_millis(100));
        first.end = HoldEnd::Lost;
        let second = hold(1, 2, 12, 20, o);
        assert_eq!(late_losses(&[first.clone(), second.clone()]).len(), 1);
        first.lost_at = Some(o + Duration::from_millis(11));
        assert!(late_losses(&[first, second]).is_empty());
    }
}
