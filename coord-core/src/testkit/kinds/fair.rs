//! Fair locks: request order, and waiters that leave or die do not block.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::lock::{HoldMode, LockOwner, QueueOutcome};
use crate::testkit::kinds::{client, short_ttl, until_waiting};
use crate::testkit::{LockHarness, unique_name, within};

/// 50 waiters enqueued one after another in a known order are granted in
/// exactly that order.
pub async fn grants_in_request_order(h: &dyn LockHarness) {
    let name = unique_name("fair-order");
    let holder = client(h).await;
    let waiters = client(h).await;
    let first = holder
        .lock(name.clone())
        .fair()
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("holder");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let lock = waiters
            .lock(name.clone())
            .fair()
            .ttl(Duration::from_secs(30))
            .wait_timeout(Duration::from_secs(120))
            .build();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let g = lock.acquire().await.expect("waiter acquires");
            order.lock().unwrap().push((i, g.fencing_token()));
            g.release().await.expect("waiter releases");
        }));
        // The next waiter asks only once this one is in the queue.
        until_waiting(&waiters, i + 1).await;
    }
    first.release().await.expect("holder releases");
    within(Duration::from_secs(120), "all 50 waiters finish", async {
        for t in tasks {
            t.await.expect("waiter task");
        }
    })
    .await;
    let order = order.lock().unwrap().clone();
    let indexes: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, (0..50).collect::<Vec<_>>(), "grant order");
    assert!(
        order.windows(2).all(|w| w[0].1 < w[1].1),
        "tokens increase in grant order: {order:?}"
    );
}

/// A waiter that times out and a waiter whose task is aborted leave the
/// queue at once: the waiter behind them is granted right after the holder
/// releases, long before their leases would have run out.
pub async fn cancelled_waiter_leaves_the_queue(h: &dyn LockHarness) {
    let name = unique_name("fair-cancel");
    let c = client(h).await;
    let long = Duration::from_secs(60);
    let lock = |timeout: Duration| {
        c.lock(name.clone())
            .fair()
            .ttl(long)
            .wait_timeout(timeout)
            .build()
    };
    let holder = lock(long).acquire().await.expect("holder");
    // A waiter that gives up.
    let quitter = lock(Duration::from_millis(300)).acquire().await;
    assert!(matches!(quitter, Err(Error::Timeout(_))), "{quitter:?}");
    let msg = quitter.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("not granted") && !msg.contains("did not answer"),
        "the backend answered every request: {msg}"
    );
    // A waiter that is cancelled while queued.
    let cancelled = {
        let l = lock(long);
        tokio::spawn(async move { l.acquire().await })
    };
    until_waiting(&c, 1).await;
    cancelled.abort();
    let _ = cancelled.await;
    // The waiter behind them.
    let last = {
        let l = lock(long);
        tokio::spawn(async move { l.acquire().await })
    };
    until_waiting(&c, 1).await;
    let released = Instant::now();
    holder.release().await.expect("holder releases");
    let got = within(Duration::from_secs(15), "the last waiter is granted", last)
        .await
        .expect("task")
        .expect("granted");
    assert!(
        released.elapsed() < Duration::from_secs(10),
        "granted {:?} after the release: a departed waiter blocked the queue",
        released.elapsed()
    );
    let info = c.admin().list(&name).await.expect("list");
    let waiters: usize = info.iter().map(|l| l.waiters.len()).sum();
    assert_eq!(waiters, 0, "no departed waiter is left: {info:?}");
    got.release().await.expect("release");
}

/// A waiter whose process died (it joined the queue and never came back) is
/// purged once its lease runs out, and does not block the waiter behind it.
pub async fn dead_waiter_is_purged(h: &dyn LockHarness) {
    let name = unique_name("fair-dead");
    let c = client(h).await;
    let ttl = short_ttl(&c);
    let holder = c
        .lock(name.clone())
        .fair()
        .ttl(Duration::from_secs(60))
        .build()
        .acquire()
        .await
        .expect("holder");
    // The dead waiter: its own connection, one enqueue, then gone.
    let dead = h.new_backend().await;
    let ghost = LockOwner::new("dead-client", "ghost").expect("owner");
    let outcome = dead
        .enqueue(&name, &ghost, HoldMode::Exclusive, ttl)
        .await
        .expect("enqueue");
    assert!(
        matches!(outcome, QueueOutcome::Queued { ahead: 1, .. }),
        "{outcome:?}"
    );
    dead.close().await;
    drop(dead);
    let behind = {
        let l = c
            .lock(name.clone())
            .fair()
            .ttl(Duration::from_secs(60))
            .poll_interval(Duration::from_millis(250))
            .build();
        tokio::spawn(async move { l.acquire().await })
    };
    until_waiting(&c, 1).await;
    let released = Instant::now();
    holder.release().await.expect("holder releases");
    let limit = ttl + Duration::from_secs(3);
    let got = within(
        limit + Duration::from_secs(5),
        "the waiter behind the dead one is granted",
        behind,
    )
    .await
    .expect("task")
    .expect("granted");
    assert!(
        released.elapsed() < limit,
        "granted after {:?}; the dead waiter's lease was {ttl:?}",
        released.elapsed()
    );
    got.release().await.expect("release");
}

/// A worker that waits for the same lock again and again (a lease lock's
/// handle, then a fair lock's) is woken by each release: a handle that
/// waited last time listens before it asks, and must miss no release for
/// that. Polling is pushed out of reach (60 s), so a missed wake-up fails
/// the 10 s bound.
pub async fn a_handle_that_waited_is_woken_again_on_its_next_waits(h: &dyn LockHarness) {
    for kind in [crate::lock::LockKind::Lease, crate::lock::LockKind::Fair] {
        let name = unique_name("fair-again");
        let holder_client = client(h).await;
        let worker_client = client(h).await;
        let build = |c: &crate::lock::LockClient| {
            c.lock(name.clone())
                .kind(kind)
                .ttl(Duration::from_secs(30))
                .poll_interval(Duration::from_secs(60))
                .wait_timeout(Duration::from_secs(60))
                .build()
        };
        let holder = build(&holder_client);
        let worker = build(&worker_client);
        for round in 0..3 {
            let held = holder.acquire().await.expect("holder");
            let waiting = tokio::spawn({
                let worker = worker.clone();
                async move { worker.acquire().await.expect("worker") }
            });
            until_waiting(&worker_client, 1).await;
            let token = held.fencing_token();
            held.release().await.expect("holder releases");
            let guard = within(
                Duration::from_secs(10),
                &format!("{kind} round {round}: the worker is woken by the release"),
                waiting,
            )
            .await
            .expect("worker task");
            assert!(
                guard.fencing_token() > token,
                "{kind} round {round}: {:?} after {token:?}",
                guard.fencing_token()
            );
            guard.release().await.expect("worker releases");
        }
    }
}

/// A queued waiter whose backend fails for a while keeps its entry (asked
/// again: its place, as long as the backend kept the entry), and is
/// granted once the backend answers.
pub async fn waiter_rides_out_a_failing_backend(h: &dyn LockHarness) {
    crate::testkit::outage::waiter_rides_out_a_failing_backend(h, true).await;
}

/// An enqueue whose applied request lost its reply is asked again with the
/// same entry: one hold, and nothing left in the queue after its release.
pub async fn lost_reply_is_asked_again_as_the_same_hold(h: &dyn LockHarness) {
    crate::testkit::outage::lost_reply_is_asked_again_as_the_same_hold(h, true).await;
}

/// A backend that keeps failing ends a queued wait after
/// `retry.max_elapsed`, and leaves no entry behind.
pub async fn waiter_gives_up_on_a_backend_that_keeps_failing(h: &dyn LockHarness) {
    crate::testkit::outage::waiter_gives_up_on_a_backend_that_keeps_failing(h, true).await;
}

/// The wait timeout passes while the backend fails: `Timeout`, on time.
pub async fn wait_timeout_ends_a_ride_out(h: &dyn LockHarness) {
    crate::testkit::outage::wait_timeout_ends_a_ride_out(h, true).await;
}

/// An acquisition cancelled while it rides out a failure gives back what
/// its applied request was granted.
pub async fn cancelled_ride_out_gives_back_its_grant(h: &dyn LockHarness) {
    crate::testkit::outage::cancelled_ride_out_gives_back_its_grant(h, true).await;
}

/// A backend that hangs on a waiting acquisition's request cannot hold the
/// wait past its wait timeout.
pub async fn hung_backend_cannot_hold_the_wait_past_its_timeout(h: &dyn LockHarness) {
    crate::testkit::outage::hung_backend_cannot_hold_the_wait_past_its_timeout(h, true).await;
}
