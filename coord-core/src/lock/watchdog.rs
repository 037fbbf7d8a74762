//! The watchdog: renews a held lock at a third of its TTL until released or lost.

use std::sync::Arc;

use tokio::time::{Duration, Instant};

use crate::error::Error;
use crate::lock::guard::GuardShared;

/// Renews `guard` every `ttl / 3`. A refused renewal loses the lock at once;
/// a failed one is retried until the lease would run out, then loses it.
/// Never renews after loss or release.
pub(crate) async fn run(guard: Arc<GuardShared>) {
    let period = guard.ttl / 3;
    let client = guard.client.clone();
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            biased;
            _ = guard.stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent_at = Instant::now();
        let valid_until = guard.valid_until();
        if sent_at >= valid_until {
            guard.mark_lost("the lease ran out before it could be renewed");
            return;
        }
        let budget = valid_until - sent_at;
        let retry = client.retry.within(budget);
        let renew = retry.run(|| {
            client.call(
                "renew",
                client.backend.renew(&guard.name, &guard.owner, guard.ttl),
            )
        });
        let result = tokio::select! {
            biased;
            _ = guard.stop.cancelled() => return,
            r = tokio::time::timeout(budget, renew) => r,
        };
        let outcome = match result {
            Ok(Ok(())) => {
                guard.extend(sent_at + guard.ttl);
                next = sent_at + period;
                "ok"
            }
            Ok(Err(Error::NotHeld(_))) => {
                guard.mark_lost("renewal refused: the lock is no longer held by this owner");
                "not_held"
            }
            Ok(Err(e)) if Instant::now() < guard.valid_until() => {
                tracing::debug!(lock = %guard.name, error = %e, "renewal failed; retrying while the lease lasts");
                next = Instant::now() + (period / 8).max(Duration::from_millis(5));
                e.kind_label()
            }
            Ok(Err(e)) => {
                guard.mark_lost(&format!("renewal failed until the lease ran out: {e}"));
                e.kind_label()
            }
            Err(_) => {
                guard.mark_lost("renewal did not finish before the lease ran out");
                "timeout"
            }
        };
        if let Some(m) = &client.metrics {
            m.lock_op(client.backend_name, "renew", outcome);
        }
        if guard.is_lost() {
            return;
        }
    }
}
