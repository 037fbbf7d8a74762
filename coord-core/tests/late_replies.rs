//! Replies that come too late, or not at all. A grant whose validity ran
//! out while its reply was in flight (a paused server, a slow network) is
//! not a hold: `acquire()` never returns a guard that is lost on arrival,
//! and every path that stops asking gives such a grant back. A release that
//! gets no answer, even after its retries, goes on in the background: the
//! lock (or the queue entry) is free once it lands, not only when its lease
//! ends, and the owner does not go back to the pool.

use std::sync::Arc;
use std::time::Duration;

use coord_core::memory::MemoryBackend;
use coord_core::testkit::{Fault, FaultyLockBackend, LockOp, within};
use coord_core::{LockBackend, LockClient, RetryPolicy};
use tokio::time::Instant;

const TTL: Duration = Duration::from_millis(200);

fn setup() -> (Arc<FaultyLockBackend>, LockClient, MemoryBackend) {
    let store = MemoryBackend::new();
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    let client = LockClient::builder(faulty.clone())
        .retry(RetryPolicy::none())
        .build()
        .expect("client");
    (faulty, client, store)
}

#[tokio::test(start_paused = true)]
async fn acquire_asks_again_instead_of_returning_a_lost_guard() {
    let (faulty, client, _) = setup();
    // The first attempt's reply comes after the whole TTL.
    faulty.inject_times(LockOp::TryAcquire, Fault::Delay(TTL * 2), 1);
    let lock = client
        .lock("late")
        .ttl(TTL)
        .wait_timeout(Duration::from_secs(5))
        .build();
    let guard = lock.acquire().await.expect("acquire");
    assert!(guard.is_held(), "acquire returned a guard already lost");
    assert!(guard.valid_until() > Instant::now());
    assert_eq!(faulty.calls(LockOp::TryAcquire), 2, "asked again once");
    guard.release().await.expect("release");
}

/// A grant whose reply came late is tracked well after the request its
/// lease counts from: its first renewal, already due, must wake the renewal
/// task (whatever its period), not wait for the task's next scan, which
/// would come after the lease ended.
#[tokio::test(start_paused = true)]
async fn a_late_grant_is_renewed_before_its_lease_ends() {
    let (faulty, client, _) = setup();
    // Starts the renewal task, which then scans once a second.
    let _running = client
        .lock("late/running")
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("acquire");
    // TTL 3 s, renewed 1 s after its request; the reply takes 2.2 s (more
    // than a tenth of the TTL is left: a hold).
    faulty.inject_times(
        LockOp::TryAcquire,
        Fault::Delay(Duration::from_millis(2200)),
        1,
    );
    let lock = client
        .lock("late/renewed")
        .ttl(Duration::from_secs(3))
        .build();
    let sent = Instant::now();
    let guard = lock.acquire().await.expect("acquire");
    tokio::time::sleep_until(sent + Duration::from_millis(2500)).await;
    assert!(
        guard.valid_until() > sent + Duration::from_secs(3),
        "the overdue first renewal of a late grant waited for the next scan"
    );
    assert!(guard.is_held());
    guard.release().await.expect("release");
}

/// A grant whose reply took nearly all of its TTL (less than a tenth left,
/// too little for a renewal to answer in time) is not returned either: the
/// acquisition asks again, and its guard has most of its validity ahead.
#[tokio::test(start_paused = true)]
async fn acquire_asks_again_instead_of_returning_a_nearly_lost_guard() {
    let (faulty, client, _) = setup();
    faulty.inject_times(LockOp::TryAcquire, Fault::Delay(TTL * 95 / 100), 1);
    let lock = client
        .lock("nearly-late")
        .ttl(TTL)
        .wait_timeout(Duration::from_secs(5))
        .build();
    let guard = lock.acquire().await.expect("acquire");
    assert!(
        guard.valid_until() >= Instant::now() + TTL / 2,
        "acquire returned a guard with {:?} of its {TTL:?} left",
        guard.valid_until() - Instant::now()
    );
    assert_eq!(faulty.calls(LockOp::TryAcquire), 2, "asked again once");
    guard.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn try_acquire_gives_a_late_grant_back() {
    let (faulty, client, store) = setup();
    let lock = client
        .lock("late-once")
        .ttl(Duration::from_secs(10))
        .build();
    faulty.inject_times(LockOp::TryAcquire, Fault::Delay(Duration::from_secs(11)), 1);
    assert!(lock.try_acquire().await.expect("attempt").is_none());
    // Given back: the lock is free at once, not only when its lease ends.
    assert!(
        store.inspect("late-once").await.expect("inspect").is_none(),
        "the late grant was left behind"
    );
    assert!(lock.try_acquire().await.expect("attempt").is_some());
}

/// A late grant that arrives after the wait timeout is given back too: the
/// acquisition fails with its timeout, and the lock is free at once rather
/// than held by nobody until its lease ends.
#[tokio::test(start_paused = true)]
async fn acquire_gives_a_late_grant_back_when_its_wait_is_over() {
    let (faulty, client, store) = setup();
    let lock = client
        .lock("late-at-the-deadline")
        .ttl(Duration::from_secs(10))
        .wait_timeout(Duration::from_secs(1))
        .build();
    faulty.inject_times(LockOp::TryAcquire, Fault::Delay(Duration::from_secs(11)), 1);
    let err = lock.acquire().await.expect_err("no hold within the wait");
    assert!(matches!(err, coord_core::Error::Timeout(_)), "{err:?}");
    assert!(
        store
            .inspect("late-at-the-deadline")
            .await
            .expect("inspect")
            .is_none(),
        "the late grant was left behind until its lease ends"
    );
}

/// Starts `lock.acquire()`, shuts `client` down a second later, and checks
/// that the acquisition failed with `Closed`.
async fn acquire_across_shutdown(client: &LockClient, lock: coord_core::Lock, what: &str) {
    let waiting = tokio::spawn(async move { lock.acquire().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.shutdown().await.expect("shutdown");
    let result = waiting.await.expect("the acquisition task");
    assert!(
        matches!(result, Err(coord_core::Error::Closed(_))),
        "{what}: {result:?}"
    );
}

/// A grant that came too late is given back when the client shuts down
/// while the acquisition waits, as at the end of its wait.
#[tokio::test(start_paused = true)]
async fn a_late_grant_is_given_back_when_the_client_shuts_down() {
    let (faulty, client, store) = setup();
    let lock = client
        .lock("late-and-closed")
        .ttl(Duration::from_secs(10))
        .wait_timeout(Duration::from_secs(60))
        .build();
    faulty.inject_times(LockOp::TryAcquire, Fault::Delay(Duration::from_secs(11)), 1);
    acquire_across_shutdown(&client, lock, "late-and-closed").await;
    assert!(
        store
            .inspect("late-and-closed")
            .await
            .expect("inspect")
            .is_none(),
        "the late grant was left behind until its lease ends"
    );
}

/// A late grant whose give-back fails may still be held: its owner is not
/// handed to the next acquisition (which would then "own" that stale hold).
#[tokio::test(start_paused = true)]
async fn a_late_grant_that_could_not_be_given_back_keeps_its_owner_out_of_the_pool() {
    let (faulty, client, store) = setup();
    let lock = client
        .lock("late-stuck")
        .ttl(Duration::from_secs(10))
        .build();
    faulty.inject_times(LockOp::TryAcquire, Fault::Delay(Duration::from_secs(11)), 1);
    faulty.inject_times(LockOp::Release, Fault::Unavailable, 1);
    assert!(lock.try_acquire().await.expect("attempt").is_none());
    let stale = store
        .inspect("late-stuck")
        .await
        .expect("inspect")
        .expect("the late grant is still there: its release failed");
    let stale_owner = stale.holders[0].owner.clone();
    // The background release lands on its first try; the owner still stays
    // out of the pool, as the failed release could land later and end a new
    // hold of the same owner.
    tokio::time::timeout(Duration::from_secs(5), async {
        while store
            .inspect("late-stuck")
            .await
            .expect("inspect")
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("released in the background");
    let other = client
        .lock("other")
        .build()
        .acquire()
        .await
        .expect("acquire");
    assert_ne!(
        other.owner().as_str(),
        stale_owner,
        "the owner of a hold that may still exist was reused"
    );
    other.release().await.expect("release");
}

/// A lease long enough that a lock freed within the tests' bounds was freed
/// by a release, not by its lease's end.
const LONG_TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_queue_entry_whose_leave_got_no_answer_leaves_in_the_background() {
    let (faulty, client, store) = setup();
    let holder = LockClient::new(Arc::new(store.clone()));
    let held = holder
        .lock("busy")
        .fair()
        .ttl(LONG_TTL)
        .build()
        .acquire()
        .await
        .expect("acquire");
    // A busy try_acquire queues, then leaves (a dequeue) at once.
    faulty.inject_times(LockOp::Release, Fault::Unavailable, 1);
    let attempt = client
        .lock("busy")
        .fair()
        .ttl(LONG_TTL)
        .build()
        .try_acquire()
        .await
        .expect("attempt");
    assert!(attempt.is_none(), "held by another");
    held.release().await.expect("release");
    // The departed entry was next in line: the lock goes to a new waiter
    // only once that entry has left.
    let next = LockClient::new(Arc::new(store.clone()));
    let got = within(
        Duration::from_secs(10),
        "the entry leaves in the background, long before its 60 s lease ends",
        next.lock("busy").fair().ttl(LONG_TTL).build().acquire(),
    )
    .await
    .expect("acquire");
    got.release().await.expect("release");
}

/// A grant that arrives after `shutdown()` released the client's holds is
/// not handed out as a guard on the closed client: the acquisition fails
/// with `Closed` and the grant is given back, for leases and queued kinds.
#[tokio::test(start_paused = true)]
async fn a_grant_that_arrives_after_shutdown_is_given_back() {
    for fair in [false, true] {
        let (faulty, client, store) = setup();
        let name = if fair { "closed-fair" } else { "closed-lease" };
        let mut builder = client.lock(name).ttl(LONG_TTL);
        if fair {
            builder = builder.fair();
        }
        let lock = builder.build();
        // The reply (a valid grant) arrives after the shutdown.
        faulty.inject_times(
            LockOp::TryAcquire,
            Fault::DelayReply(Duration::from_secs(2)),
            1,
        );
        acquire_across_shutdown(&client, lock, name).await;
        let other = LockClient::new(Arc::new(store.clone()));
        let mut builder = other.lock(name).ttl(LONG_TTL);
        if fair {
            builder = builder.fair();
        }
        let next = builder.build().try_acquire().await.expect("attempt");
        assert!(next.is_some(), "{name}: the grant was left behind");
    }
}
