//! The watchdog: one renewal task per client renews every held lock at a
//! third of its TTL, until the lock is released or lost.
//!
//! Holding a lock costs no task of its own: a guard is registered in the
//! client's map (which the client keeps anyway) and the client's task scans
//! it. The task sleeps until the earliest renewal is due, or one second when
//! nothing is, so a new guard whose first renewal is further away than that
//! (any TTL above 3 s) needs no wake-up at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::error::Error;
use crate::lock::client::ClientShared;
use crate::lock::guard::GuardShared;

/// The longest the renewal task sleeps between scans.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// When the client's renewal task wakes next, and how to wake it earlier.
#[derive(Debug)]
pub(crate) struct RenewalScheduler {
    base: Instant,
    /// Nanoseconds after `base` of the next scan; 0 while a scan runs.
    next_wake: AtomicU64,
    started: AtomicBool,
    wake: Notify,
}

impl RenewalScheduler {
    pub(crate) fn new() -> Self {
        RenewalScheduler {
            base: Instant::now(),
            next_wake: AtomicU64::new(0),
            started: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Makes sure the first renewal of a new in-process grant, `period_nanos`
    /// after its clock base (at `due()`), happens on time, where the grant's
    /// shard was locked before its clock was read and stayed locked until
    /// the guard was tracked in it. A period of [`IDLE_TICK`] or more then
    /// needs nothing once the task runs: it scans again within
    /// [`IDLE_TICK`] of any moment, and a scan that misses the guard passed
    /// its shard before the grant locked it, so started before the guard's
    /// base, and the next scan comes within [`IDLE_TICK`] of that start.
    /// (Any other guard is tracked after its base, a grant whose request
    /// went out earlier: [`RenewalScheduler::schedule`].)
    pub(crate) fn schedule_first(
        client: &Arc<ClientShared>,
        period_nanos: u64,
        due: impl FnOnce() -> Instant,
    ) {
        if period_nanos >= IDLE_TICK.as_nanos() as u64
            && client.renewals.started.load(Ordering::Acquire)
        {
            return;
        }
        Self::schedule(client, due());
    }

    /// Makes sure a renewal due at `due` happens on time: starts the task on
    /// first use, and wakes it when it would sleep past `due`.
    pub(crate) fn schedule(client: &Arc<ClientShared>, due: Instant) {
        let s = &client.renewals;
        // Read first: a swap on every grant would be a needless atomic write.
        if !s.started.load(Ordering::Acquire) && !s.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(run(Arc::downgrade(client), s.clone()));
            return;
        }
        let next = s.next_wake.load(Ordering::SeqCst);
        // 0 means a scan is running and may have missed this guard.
        if next == 0 || s.nanos(due) < next {
            s.wake.notify_one();
        }
    }
}

/// The client's renewal task. Ends when the client is dropped.
async fn run(client: Weak<ClientShared>, scheduler: Arc<RenewalScheduler>) {
    loop {
        let Some(c) = client.upgrade() else { return };
        scheduler.next_wake.store(0, Ordering::SeqCst);
        let now = Instant::now();
        let mut next = now + IDLE_TICK;
        for guard in c.held_guards() {
            if !guard.watchdog || guard.renewing.load(Ordering::SeqCst) {
                continue;
            }
            let due = guard.next_renewal();
            if due <= now {
                guard.renewing.store(true, Ordering::SeqCst);
                tokio::spawn(renew_once(guard));
            } else {
                next = next.min(due);
            }
        }
        scheduler
            .next_wake
            .store(scheduler.nanos(next).max(1), Ordering::SeqCst);
        let woken = scheduler.wake.notified();
        tokio::pin!(woken);
        // Register interest before letting go of the client, so a wake-up
        // sent in between is kept (Notify stores one permit).
        woken.as_mut().enable();
        let weak_sleep = tokio::time::sleep_until(next);
        drop(c);
        tokio::select! {
            _ = weak_sleep => {}
            _ = woken => {}
        }
    }
}

/// One renewal of `guard`. A refused renewal loses the lock at once; a
/// failed one is retried soon while the lease lasts, then loses it; one
/// unanswered (or failing) with a third of the lease left puts the hold at
/// risk. Never renews after loss or release.
async fn renew_once(guard: Arc<GuardShared>) {
    let client = guard.client.clone();
    let period = guard.ttl / 3;
    let sent_at = Instant::now();
    let valid_until = guard.valid_until();
    if guard.stop.is_cancelled() {
        return;
    }
    if sent_at >= valid_until {
        guard.mark_expired("the lease ran out before it could be renewed");
        return;
    }
    let budget = valid_until - sent_at;
    let retry = client.retry.within(budget);
    let renew = retry.run(|| {
        client.call(
            "renew",
            client.renew_hold(&guard.name, &guard.owner, guard.ttl, guard.kind),
        )
    });
    // Unanswered with less than a third of the TTL left (a server that
    // accepts and never answers, while `request_timeout` may exceed what is
    // left of the lease): at risk, before the loss.
    let warn_at = valid_until.checked_sub(period).unwrap_or(sent_at);
    let renewing = tokio::time::timeout(budget, renew);
    tokio::pin!(renewing);
    let mut warned = false;
    let result = loop {
        tokio::select! {
            biased;
            _ = guard.stop.cancelled() => return,
            r = &mut renewing => break r,
            _ = tokio::time::sleep_until(warn_at), if !warned => {
                warned = true;
                guard.renewal_in_trouble(
                    "renewal unanswered with a third of the lease left; still waiting for it",
                );
            }
        }
    };
    let (outcome, next) = match result {
        Ok(Ok(())) => {
            guard.extend(sent_at + guard.ttl);
            guard.renewal_succeeded();
            ("ok", Some(sent_at + period))
        }
        Ok(Err(Error::NotHeld(_))) => {
            guard.mark_lost("renewal refused: the lock is no longer held by this owner");
            ("not_held", None)
        }
        Ok(Err(e)) if Instant::now() < guard.valid_until() => {
            tracing::debug!(lock = %guard.name, error = %e, "renewal failed; retrying while the lease lasts");
            guard.renewal_in_trouble("renewal failed; retrying while the lease lasts");
            let retry_at = Instant::now() + (period / 8).max(Duration::from_millis(5));
            (e.kind_label(), Some(retry_at))
        }
        Ok(Err(e)) => {
            guard.mark_expired(&format!("renewal failed until the lease ran out: {e}"));
            (e.kind_label(), None)
        }
        Err(_) => {
            guard.mark_expired("renewal did not finish before the lease ran out");
            ("timeout", None)
        }
    };
    if let Some(m) = &client.metrics {
        m.lock_op(client.backend_name, "renew", outcome);
    }
    if let Some(next) = next
        && !guard.is_lost()
    {
        guard.set_next_renewal(next);
        guard.renewing.store(false, Ordering::SeqCst);
        RenewalScheduler::schedule(&client, next);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::LockClient;
    use crate::memory::MemoryBackend;

    /// An in-process grant whose first renewal is an idle tick or more away
    /// does not wake the running task ([`RenewalScheduler::schedule_first`]): the
    /// task's next scans must still renew it on time, including a scan that
    /// was due just before the grant.
    ///
    /// [`RenewalScheduler::schedule_first`]: super::RenewalScheduler::schedule_first
    #[tokio::test(start_paused = true)]
    async fn a_guard_due_an_idle_tick_or_more_away_is_renewed_without_a_wake_up() {
        let client = LockClient::new(Arc::new(MemoryBackend::new()));
        // Starts the renewal task, which then sleeps an idle tick at a time.
        let _first = client
            .lock("renewal/first")
            .build()
            .acquire()
            .await
            .expect("acquire");
        for offset_ms in [0, 1, 500, 999] {
            tokio::time::sleep(Duration::from_millis(offset_ms)).await;
            // A period of exactly the idle tick: the tightest case.
            let guard = client
                .lock(format!("renewal/idle/{offset_ms}"))
                .ttl(Duration::from_secs(3))
                .build()
                .acquire()
                .await
                .expect("acquire");
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert!(
                guard.is_held(),
                "a 3 s lease acquired {offset_ms} ms into a tick was not renewed"
            );
            guard.release().await.expect("release");
        }
    }
}
