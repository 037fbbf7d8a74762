//! The watchdog (one renewal task per client), on the memory backend with a
//! paused clock: renewals at a third of the TTL, none after release, loss on
//! refusal and on failures that outlast the lease.

use std::sync::Arc;
use std::time::Duration;

use coord_core::memory::MemoryBackend;
use coord_core::testkit::{Fault, FaultyLockBackend, LockOp};
use coord_core::{Error, LockClient, LockGuard};
use tokio::time::Instant;

fn setup() -> (Arc<FaultyLockBackend>, LockClient, LockClient) {
    let store = MemoryBackend::new();
    let backend = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    let holder = LockClient::new(backend.clone());
    let other = LockClient::new(Arc::new(store));
    (backend, holder, other)
}

/// Hangs every renewal of `guard` (a 3 s TTL) until it is lost.
async fn lose_to_a_hung_renewal(backend: &FaultyLockBackend, guard: &LockGuard) {
    backend.inject(LockOp::Renew, Fault::Delay(Duration::from_secs(60)));
    tokio::time::timeout(Duration::from_secs(4), guard.lost())
        .await
        .expect("lost when the lease runs out unconfirmed");
}

fn renewals(b: &FaultyLockBackend) -> usize {
    b.calls(LockOp::Renew)
}

#[tokio::test(start_paused = true)]
async fn renews_at_a_third_of_the_ttl_and_keeps_the_lock() {
    let (backend, holder, other) = setup();
    let guard = holder
        .lock("w")
        .ttl(Duration::from_secs(3))
        .build()
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let n = renewals(&backend);
    assert!((9..=11).contains(&n), "{n} renewals in 10.5 s at ttl 3 s");
    assert!(guard.is_held());
    assert!(
        other
            .lock("w")
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn short_ttls_wake_the_task_early() {
    let (backend, holder, _) = setup();
    // Idle, the task sleeps a second; a 300 ms TTL must renew every 100 ms.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let guard = holder
        .lock("s")
        .ttl(Duration::from_millis(300))
        .build()
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    let n = renewals(&backend);
    assert!(
        (9..=11).contains(&n),
        "{n} renewals in 1.05 s at ttl 300 ms"
    );
    assert!(guard.is_held());
}

#[tokio::test(start_paused = true)]
async fn never_renews_after_release_or_drop() {
    let (backend, holder, _) = setup();
    let lock = holder.lock("r").ttl(Duration::from_secs(3)).build();
    lock.acquire().await.unwrap().release().await.unwrap();
    drop(lock.acquire().await.unwrap());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(renewals(&backend), 0);
    assert_eq!(holder.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn many_guards_are_renewed_by_one_task() {
    let (backend, holder, other) = setup();
    let mut guards = Vec::new();
    for i in 0..100 {
        let ttl = Duration::from_millis(900 + 20 * i);
        guards.push(
            holder
                .lock(format!("m{i}"))
                .ttl(ttl)
                .build()
                .acquire()
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(guards.iter().all(|g| g.is_held()));
    for i in 0..100 {
        assert!(
            other
                .lock(format!("m{i}"))
                .build()
                .try_acquire()
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(renewals(&backend) >= 100 * 6);
}

#[tokio::test(start_paused = true)]
async fn a_refused_renewal_loses_the_lock_at_once() {
    let (backend, holder, _) = setup();
    let guard = holder
        .lock("f")
        .ttl(Duration::from_secs(3))
        .build()
        .acquire()
        .await
        .unwrap();
    assert!(backend.inner().force_release("f").await.unwrap());
    let started = Instant::now();
    let err = guard.lost().await;
    assert!(matches!(err, Error::LockLost(_)), "{err}");
    assert!(
        started.elapsed() <= Duration::from_millis(1_100),
        "{:?}",
        started.elapsed()
    );
    let calls = renewals(&backend);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(renewals(&backend), calls, "renewed after loss");
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_are_retried_until_the_lease_runs_out() {
    let (backend, holder, _) = setup();
    let ttl = Duration::from_secs(3);
    let guard = holder.lock("t").ttl(ttl).build().acquire().await.unwrap();
    let acquired = Instant::now();
    backend.inject(LockOp::Renew, Fault::Unavailable);
    let err = guard.lost().await;
    let after = acquired.elapsed();
    assert!(matches!(err, Error::LockLost(_)), "{err}");
    // Not lost at the first failure (1 s), but by the end of the lease.
    assert!(
        after >= ttl - Duration::from_millis(50) && after <= ttl + Duration::from_millis(50),
        "lost after {after:?}"
    );
    assert!(renewals(&backend) > 2, "failures were retried");
}

/// A hold whose lease runs out unrenewed is reported to the backend
/// (`hold_lost`), exactly once, whether the watchdog or a `lost()` waiter
/// notices first: here the waiter does (on the real clock it wakes at the
/// lease end, before the watchdog's next retry), and the backend must still
/// hear of it, or etcd keeps the lost hold's key on its restored lease.
#[tokio::test]
async fn a_hold_that_runs_out_is_reported_to_the_backend_once() {
    let (backend, holder, _) = setup();
    let guard = holder
        .lock("ran-out")
        .ttl(Duration::from_millis(600))
        .build()
        .acquire()
        .await
        .unwrap();
    backend.inject(LockOp::Renew, Fault::Unavailable);
    let err = tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("lost by the end of the lease");
    assert!(matches!(err, Error::LockLost(_)), "{err}");
    assert_eq!(backend.holds_lost(), 1, "the backend was told once");
    // The watchdog's next retry finds the guard lost and says nothing more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend.holds_lost(), 1, "the backend was told once");
}

/// A renewal that hangs (a server that accepts and never answers, where
/// `request_timeout` may exceed what is left of the lease) puts the hold at
/// risk once less than a third of its TTL is left unconfirmed, well before
/// the loss; an answer clears it.
#[tokio::test(start_paused = true)]
async fn an_unanswered_renewal_signals_at_risk_before_loss() {
    let (backend, holder, _) = setup();
    let ttl = Duration::from_secs(3);
    let guard = holder
        .lock("hung")
        .ttl(ttl)
        .build()
        .acquire()
        .await
        .unwrap();
    let granted = Instant::now();
    backend.inject(LockOp::Renew, Fault::Delay(Duration::from_secs(60)));
    tokio::time::timeout(Duration::from_millis(2500), guard.at_risk())
        .await
        .expect("at risk while the renewal due at 1 s hangs, a third of the TTL before the end");
    let at = granted.elapsed();
    assert!(
        at >= Duration::from_millis(1900) && at <= Duration::from_millis(2100),
        "at risk when a third of the TTL is left: {at:?}"
    );
    assert!(guard.is_held(), "at risk, not lost");
    let err = tokio::time::timeout(Duration::from_secs(2), guard.lost())
        .await
        .expect("lost when the lease runs out unconfirmed");
    assert!(matches!(err, Error::LockLost(_)), "{err}");
}

/// A late renewal that is answered after all clears the risk it raised.
#[tokio::test(start_paused = true)]
async fn a_late_renewal_answered_clears_the_risk() {
    let (backend, holder, _) = setup();
    let ttl = Duration::from_secs(3);
    let guard = holder
        .lock("late")
        .ttl(ttl)
        .build()
        .acquire()
        .await
        .unwrap();
    // The renewal due at 1 s reaches the backend at 2.5 s.
    backend.inject_times(LockOp::Renew, Fault::Delay(Duration::from_millis(1500)), 1);
    tokio::time::timeout(Duration::from_millis(2500), guard.at_risk())
        .await
        .expect("at risk at 2 s");
    let deadline = Instant::now() + Duration::from_secs(1);
    while guard.is_at_risk() {
        assert!(Instant::now() < deadline, "the answer clears the risk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(guard.is_held());
    guard.release().await.unwrap();
}

/// Releasing a guard already lost answers `NotHeld` at once, without
/// waiting on a server that does not answer (the release is still sent, in
/// the background, in case the key outlived the client's view of it).
#[tokio::test(start_paused = true)]
async fn releasing_a_lost_guard_answers_not_held_at_once() {
    let (backend, holder, _) = setup();
    let guard = holder
        .lock("gone")
        .ttl(Duration::from_secs(3))
        .build()
        .acquire()
        .await
        .unwrap();
    backend.inject(LockOp::Release, Fault::Delay(Duration::from_secs(60)));
    lose_to_a_hung_renewal(&backend, &guard).await;
    let released = tokio::time::timeout(Duration::from_millis(10), guard.release())
        .await
        .expect("no wait on the server for a guard known to be lost");
    assert!(matches!(released, Err(Error::NotHeld(_))), "{released:?}");
    let deadline = Instant::now() + Duration::from_secs(1);
    while backend.calls(LockOp::Release) == 0 {
        assert!(
            Instant::now() < deadline,
            "the release is sent in the background"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A lease lock with a fixed owner acquires with the same owner again: the
/// release of a lost guard must not go on behind the caller's back, where it
/// would end the next hold.
#[tokio::test(start_paused = true)]
async fn releasing_a_lost_guard_of_a_fixed_owner_spares_its_next_hold() {
    let (backend, holder, other) = setup();
    let lock = holder
        .lock("fixed")
        .owner("worker-1")
        .ttl(Duration::from_secs(3))
        .build();
    let guard = lock.acquire().await.unwrap();
    lose_to_a_hung_renewal(&backend, &guard).await;
    let _ = guard.release().await;
    backend.clear();
    let again = lock
        .acquire()
        .await
        .expect("the fixed owner acquires again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        other
            .lock("fixed")
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_none(),
        "the new hold is still there"
    );
    again.release().await.unwrap();
}

/// A failed renewal puts the hold at risk (before any loss); a renewal
/// that succeeds again clears it, and the lock was never lost.
#[tokio::test(start_paused = true)]
async fn failed_renewals_signal_at_risk_before_loss() {
    let (backend, holder, _) = setup();
    let guard = holder
        .lock("risk")
        .ttl(Duration::from_secs(3))
        .build()
        .acquire()
        .await
        .unwrap();
    assert!(!guard.is_at_risk());
    backend.inject(LockOp::Renew, Fault::Unavailable);
    tokio::time::timeout(Duration::from_secs(2), guard.at_risk())
        .await
        .expect("at risk after the first failed renewal (due at 1 s)");
    assert!(guard.is_at_risk());
    assert!(guard.is_held(), "at risk, not lost");
    backend.clear();
    let deadline = Instant::now() + Duration::from_secs(2);
    while guard.is_at_risk() {
        assert!(
            Instant::now() < deadline,
            "a successful renewal clears the risk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(guard.is_held());
    guard.release().await.unwrap();
}
