//! The lock conformance suite: every case runs unchanged on every backend.
//!
//! Each case takes a [`LockHarness`] and panics with a message on failure.
//! [`lock_conformance_tests!`](crate::lock_conformance_tests) expands them
//! into one named test per case.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::lock::{AcquireOutcome, LockClient, LockGuard, LockKind, LockOwner};
use crate::testkit::{
    ExclusionChecker, Fault, FaultyLockBackend, LockHarness, LockOp, unique_name, within,
};

/// Every case's name, in the order the macro expands them.
pub const CASES: &[&str] = &[
    "mutual_exclusion",
    "mutual_exclusion_within_one_client",
    "fencing_tokens_strictly_increase",
    "non_owner_release_and_renew_refused",
    "renew_after_expiry_refused",
    "lost_fires_when_lock_removed",
    "wait_timeout_returns_timeout",
    "waiter_woken_by_release",
    "waiter_listens_again_when_notifications_end",
    "dropped_guard_is_released",
    "bad_input_is_invalid_argument",
    "try_acquire_reports_busy",
    "reacquire_by_same_owner_is_idempotent",
    "shutdown_releases_held_locks",
    "unanswered_release_goes_on_in_the_background",
    "background_release_is_sent_again_until_answered",
    "acquisition_dropped_in_flight_gives_its_grant_back",
    "grant_after_shutdown_is_given_back",
    "waiter_rides_out_a_failing_backend",
    "lost_reply_is_asked_again_as_the_same_hold",
    "waiter_gives_up_on_a_backend_that_keeps_failing",
    "wait_timeout_ends_a_ride_out",
    "cancelled_ride_out_gives_back_its_grant",
    "hung_backend_cannot_hold_the_wait_past_its_timeout",
    "health_reports_healthy",
];

async fn client(h: &dyn LockHarness) -> LockClient {
    LockClient::new(h.new_backend().await)
}

/// A fresh lock name and two independent clients of the backend.
async fn two_clients(h: &dyn LockHarness, case: &str) -> (String, LockClient, LockClient) {
    (unique_name(case), client(h).await, client(h).await)
}

/// `c` takes `name` with a 30 s lease, which no test waits out.
async fn hold(c: &LockClient, name: &str) -> LockGuard {
    c.lock(name)
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("acquire")
}

/// A TTL short enough to wait out in a test, long enough for the backend.
fn short_ttl(c: &LockClient) -> Duration {
    c.capabilities().effective_ttl(Duration::from_millis(600))
}

/// 16 contenders, each with its own client, take one lock 200 times each;
/// a shared checker fails on any overlap or any token not greater than the last.
pub async fn mutual_exclusion(h: &dyn LockHarness) {
    mutual_exclusion_with(h, 16, 200).await;
}

/// [`mutual_exclusion`] with a chosen number of contenders and rounds.
pub async fn mutual_exclusion_with(h: &dyn LockHarness, contenders: usize, rounds: usize) {
    let name = unique_name("mutex");
    let checker = Arc::new(ExclusionChecker::new());
    let mut tasks = Vec::new();
    for _ in 0..contenders {
        let lock = client(h)
            .await
            .lock(name.clone())
            .ttl(Duration::from_secs(30))
            .wait_timeout(Duration::from_secs(120))
            .poll_interval(Duration::from_secs(1))
            .build();
        let checker = checker.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let guard = lock.acquire().await.expect("acquire");
                checker.enter(guard.fencing_token());
                tokio::task::yield_now().await;
                checker.exit(guard.fencing_token());
                guard.release().await.expect("release by the holder");
            }
        }));
    }
    within(Duration::from_secs(600), "all contenders finish", async {
        for t in tasks {
            t.await.expect("contender panicked");
        }
    })
    .await;
    assert_eq!(checker.violations(), Vec::<String>::new());
    assert_eq!(checker.entries(), (contenders * rounds) as u64);
}

/// 8 tasks sharing one client take one lock 100 times each: owners reused
/// inside a client must never let two live acquisitions share a hold.
pub async fn mutual_exclusion_within_one_client(h: &dyn LockHarness) {
    let name = unique_name("mutex-one-client");
    let checker = Arc::new(ExclusionChecker::new());
    let lock = client(h)
        .await
        .lock(name)
        .ttl(Duration::from_secs(30))
        .wait_timeout(Duration::from_secs(120))
        .poll_interval(Duration::from_secs(1))
        .build();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let lock = lock.clone();
            let checker = checker.clone();
            tokio::spawn(async move {
                for round in 0..100 {
                    let guard = lock.acquire().await.expect("acquire");
                    checker.enter(guard.fencing_token());
                    tokio::task::yield_now().await;
                    checker.exit(guard.fencing_token());
                    if round % 3 == 0 {
                        drop(guard);
                    } else {
                        guard.release().await.expect("release by the holder");
                    }
                }
            })
        })
        .collect();
    within(Duration::from_secs(600), "all tasks finish", async {
        for t in tasks {
            t.await.expect("task panicked");
        }
    })
    .await;
    assert_eq!(checker.violations(), Vec::<String>::new());
    assert_eq!(checker.entries(), 800);
}

/// Tokens grow strictly across holders, clients and force-releases.
pub async fn fencing_tokens_strictly_increase(h: &dyn LockHarness) {
    let (name, a, b) = two_clients(h, "fence").await;
    let mut last = None;
    for round in 0..20 {
        let c = if round % 2 == 0 { &a } else { &b };
        let guard = c
            .lock(name.clone())
            .build()
            .acquire()
            .await
            .expect("acquire");
        let token = guard.fencing_token();
        if let Some(prev) = last {
            assert!(token > prev, "token {token} after {prev}");
        }
        last = Some(token);
        if round % 5 == 4 {
            assert!(
                a.backend()
                    .force_release(&name)
                    .await
                    .expect("force release")
            );
            drop(guard);
        } else {
            guard.release().await.expect("release");
        }
    }
}

/// Release and renew by someone who does not hold the lock are refused with
/// `NotHeld` and leave the holder's lock in place; a second release is `NotHeld`.
pub async fn non_owner_release_and_renew_refused(h: &dyn LockHarness) {
    let (name, a, b) = two_clients(h, "owner").await;
    let guard = a
        .lock(name.clone())
        .build()
        .acquire()
        .await
        .expect("acquire");
    let intruder = LockOwner::unique(b.client_id());
    let ttl = Duration::from_secs(30);
    assert!(matches!(
        b.backend().release(&name, &intruder).await,
        Err(Error::NotHeld(_))
    ));
    assert!(matches!(
        b.backend().renew(&name, &intruder, ttl).await,
        Err(Error::NotHeld(_))
    ));
    assert!(
        b.lock(name.clone())
            .build()
            .try_acquire()
            .await
            .expect("try")
            .is_none(),
        "the holder's lock must survive a non-owner's release"
    );
    let owner = guard.owner().clone();
    guard.release().await.expect("release by the owner");
    assert!(matches!(
        a.backend().release(&name, &owner).await,
        Err(Error::NotHeld(_))
    ));
    assert!(matches!(
        a.backend().renew(&name, &owner, ttl).await,
        Err(Error::NotHeld(_))
    ));
}

/// A holder that does not renew loses the lock after its TTL: another
/// client gets it, and the old holder's renew is refused with `NotHeld`.
pub async fn renew_after_expiry_refused(h: &dyn LockHarness) {
    let (name, a, b) = two_clients(h, "expiry").await;
    let ttl = short_ttl(&a);
    let guard = a
        .lock(name.clone())
        .ttl(ttl)
        .watchdog(false)
        .build()
        .acquire()
        .await
        .expect("acquire");
    let started = Instant::now();
    let taken = b
        .lock(name.clone())
        .ttl(Duration::from_secs(30))
        .wait_timeout(ttl + Duration::from_secs(5))
        .poll_interval(Duration::from_millis(100))
        .build()
        .acquire()
        .await
        .expect("another client acquires after the TTL");
    assert!(
        started.elapsed() + Duration::from_millis(50) >= ttl.min(guard.ttl()),
        "acquired after {:?}, before the TTL {ttl:?} ran out",
        started.elapsed()
    );
    assert!(taken.fencing_token() > guard.fencing_token());
    assert!(!guard.is_held());
    assert!(matches!(
        guard.renew().await,
        Err(Error::NotHeld(_) | Error::LockLost(_))
    ));
    let lost = within(Duration::from_secs(1), "lost() after expiry", guard.lost()).await;
    assert!(matches!(lost, Error::LockLost(_)));
    taken.release().await.expect("release");
}

/// When the lock is removed behind the holder's back, the watchdog's next
/// renewal is refused and `lost()` resolves.
pub async fn lost_fires_when_lock_removed(h: &dyn LockHarness) {
    let name = unique_name("lost");
    let a = client(h).await;
    let admin = client(h).await;
    let ttl = short_ttl(&a).max(Duration::from_secs(1));
    let guard = a
        .lock(name.clone())
        .ttl(ttl)
        .build()
        .acquire()
        .await
        .expect("acquire");
    assert!(
        admin
            .backend()
            .force_release(&name)
            .await
            .expect("force release")
    );
    let err = within(ttl + Duration::from_secs(2), "lost() fires", guard.lost()).await;
    assert!(matches!(err, Error::LockLost(_)), "{err}");
    assert!(!guard.is_held());
    assert!(matches!(guard.release().await, Err(Error::NotHeld(_))));
}

/// `acquire()` gives up with `Timeout` when the wait timeout passes.
pub async fn wait_timeout_returns_timeout(h: &dyn LockHarness) {
    let (name, a, b) = two_clients(h, "timeout").await;
    let guard = a
        .lock(name.clone())
        .build()
        .acquire()
        .await
        .expect("acquire");
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let result = b
        .lock(name.clone())
        .wait_timeout(wait)
        .build()
        .acquire()
        .await;
    let waited = started.elapsed();
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(waited >= wait, "gave up after {waited:?}");
    assert!(waited < wait + Duration::from_secs(3), "took {waited:?}");
    // The backend answered every request: the error says the lock is held,
    // not that the backend failed (the last look at the deadline is
    // answered too).
    let msg = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("held by another owner") && !msg.contains("did not answer"),
        "{msg}"
    );
    guard.release().await.expect("release");
}

/// A waiter is woken by the release notification long before its 30 s poll.
pub async fn waiter_woken_by_release(h: &dyn LockHarness) {
    let (name, a, b) = two_clients(h, "wake").await;
    let guard = hold(&a, &name).await;
    let lock = b
        .lock(name.clone())
        .poll_interval(Duration::from_secs(30))
        .wait_timeout(Duration::from_secs(60))
        .build();
    let waiter = tokio::spawn(async move {
        let g = lock.acquire().await;
        (g, Instant::now())
    });
    within(
        Duration::from_secs(10),
        "the waiter starts waiting",
        async {
            while b.waiting() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
    let released = Instant::now();
    guard.release().await.expect("release");
    let (got, at) = within(Duration::from_secs(10), "the waiter acquires", waiter)
        .await
        .expect("waiter task");
    let got = got.expect("the waiter acquires");
    let woke = at - released;
    assert!(woke < Duration::from_secs(2), "woken after {woke:?}");
    got.release().await.expect("release");
}

/// A waiter whose release notifications end (as when a pub/sub connection
/// drops or a watch is cancelled; injected here after 1.5 s) subscribes to
/// the backend again, and is still woken by the release long before its
/// 30 s poll.
pub async fn waiter_listens_again_when_notifications_end(h: &dyn LockHarness) {
    let name = unique_name("relisten");
    let a = client(h).await;
    let faulty = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    faulty.inject_times(
        LockOp::Subscribe,
        Fault::EndStreamAfter(Duration::from_millis(1500)),
        1,
    );
    let b = LockClient::new(faulty.clone());
    let guard = hold(&a, &name).await;
    let lock = b
        .lock(name.clone())
        .poll_interval(Duration::from_secs(30))
        .wait_timeout(Duration::from_secs(60))
        .build();
    let waiter = tokio::spawn(async move {
        let g = lock.acquire().await;
        (g, Instant::now())
    });
    within(
        Duration::from_secs(10),
        "the waiter subscribes a second time",
        async {
            while faulty.calls(LockOp::Subscribe) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
    // Attempts: the first, the one after subscribing, the one when the
    // channel ended, and the one after subscribing again. After the fourth
    // the waiter can only be woken through its new subscription.
    within(Duration::from_secs(10), "the waiter retries", async {
        while faulty.calls(LockOp::TryAcquire) < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let released = Instant::now();
    guard.release().await.expect("release");
    let (got, at) = within(Duration::from_secs(10), "the waiter acquires", waiter)
        .await
        .expect("waiter task");
    let got = got.expect("the waiter acquires");
    let woke = at - released;
    assert!(woke < Duration::from_secs(2), "woken after {woke:?}");
    got.release().await.expect("release");
}

/// Dropping a guard releases the lock in the background.
pub async fn dropped_guard_is_released(h: &dyn LockHarness) {
    let (name, a, b) = two_clients(h, "drop").await;
    let guard = hold(&a, &name).await;
    drop(guard);
    let started = Instant::now();
    let got = b
        .lock(name.clone())
        .poll_interval(Duration::from_secs(30))
        .wait_timeout(Duration::from_secs(10))
        .build()
        .acquire()
        .await
        .expect("acquire after the drop");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(a.held(), 0);
    got.release().await.expect("release");
}

/// Empty and oversized names, a zero TTL and one below 1 ms are
/// `InvalidArgument`, for locks of every kind and for elections alike.
pub async fn bad_input_is_invalid_argument(h: &dyn LockHarness) {
    let c = client(h).await;
    let huge = "k".repeat(crate::lock::MAX_LOCK_NAME_LEN + 1);
    for (name, ttl) in [
        ("", Duration::from_secs(1)),
        (huge.as_str(), Duration::from_secs(1)),
        ("ok", Duration::ZERO),
        ("ok", Duration::from_micros(500)),
    ] {
        for kind in [
            LockKind::Lease,
            LockKind::Reentrant,
            LockKind::Fair,
            LockKind::Semaphore(2),
        ] {
            let lock = c.lock(name).ttl(ttl).kind(kind).build();
            assert!(
                matches!(lock.acquire().await, Err(Error::InvalidArgument(_))),
                "{kind:?} {name:.8}/{ttl:?}"
            );
            assert!(matches!(
                lock.try_acquire().await,
                Err(Error::InvalidArgument(_))
            ));
        }
        let election = c.election(name).ttl(ttl).build();
        assert!(
            matches!(election.campaign("v").await, Err(Error::InvalidArgument(_))),
            "election {name:.8}/{ttl:?}"
        );
        assert!(matches!(
            election.try_campaign("v").await,
            Err(Error::InvalidArgument(_))
        ));
    }
    assert_eq!(c.held(), 0);
}

/// `try_acquire()` returns `None` while held and the guard once free.
pub async fn try_acquire_reports_busy(h: &dyn LockHarness) {
    let (name, a, b) = two_clients(h, "try").await;
    let guard = a
        .lock(name.clone())
        .build()
        .try_acquire()
        .await
        .expect("try")
        .expect("free");
    let other = b.lock(name.clone()).build();
    assert!(other.try_acquire().await.expect("try").is_none());
    guard.release().await.expect("release");
    let got = other
        .try_acquire()
        .await
        .expect("try")
        .expect("free after release");
    got.release().await.expect("release");
}

/// The backend contract: a second attempt by the same owner is the same
/// grant (same token), so a retry after a lost reply is safe.
pub async fn reacquire_by_same_owner_is_idempotent(h: &dyn LockHarness) {
    let name = unique_name("idem");
    let backend = h.new_backend().await;
    let owner = LockOwner::new("conformance", "same-owner").expect("owner");
    let ttl = Duration::from_secs(10);
    let first = backend
        .try_acquire(&name, &owner, ttl)
        .await
        .expect("first");
    let second = backend
        .try_acquire(&name, &owner, ttl)
        .await
        .expect("second");
    match (first, second) {
        (AcquireOutcome::Granted(a), AcquireOutcome::Granted(b)) => assert_eq!(a.token, b.token),
        other => panic!("expected two grants, got {other:?}"),
    }
    let stranger = LockOwner::new("conformance", "other").expect("owner");
    assert!(matches!(
        backend
            .try_acquire(&name, &stranger, ttl)
            .await
            .expect("third"),
        AcquireOutcome::Held { .. }
    ));
    backend.release(&name, &owner).await.expect("release");
}

/// `shutdown()` releases every lock the client holds; from then on the
/// client takes no lock: new acquisitions fail with [`Error::Closed`], and
/// so do its waiters (lease and fair) at their next attempt.
pub async fn shutdown_releases_held_locks(h: &dyn LockHarness) {
    let a = client(h).await;
    let b = client(h).await;
    let names = [unique_name("shut"), unique_name("shut")];
    let mut guards = Vec::new();
    for n in &names {
        guards.push(a.lock(n.clone()).build().acquire().await.expect("acquire"));
    }
    assert_eq!(a.held(), 2);
    // `a`'s acquisitions wait for locks `b` holds: a lease lock's, and a
    // fair lock's where the backend has queued locks (Redlock has not).
    let busy = unique_name("shut-busy");
    let _held = hold(&b, &busy).await;
    let mut waiting_for = vec![a.lock(busy.clone())];
    let busy_fair = unique_name("shut-busy");
    let held_fair = b
        .lock(busy_fair.clone())
        .fair()
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await;
    match &held_fair {
        Ok(_) => waiting_for.push(a.lock(busy_fair).fair()),
        Err(Error::Unsupported(_)) => {}
        Err(e) => panic!("acquire the fair lock: {e}"),
    }
    let poll = Duration::from_millis(100);
    let waiters: Vec<_> = waiting_for
        .into_iter()
        .map(|builder| {
            let lock = builder.poll_interval(poll).build();
            tokio::spawn(async move { lock.acquire().await.map(drop) })
        })
        .collect();
    let count = waiters.len();
    within(Duration::from_secs(10), "a's waiters wait", async {
        while a.waiting() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    a.shutdown().await.expect("shutdown");
    for (n, g) in names.iter().zip(&guards) {
        assert!(!g.is_held());
        let got = b.lock(n.clone()).build().try_acquire().await.expect("try");
        got.expect("free after shutdown")
            .release()
            .await
            .expect("release");
    }
    let again = a.lock(names[0].clone()).build().acquire().await;
    assert!(matches!(again, Err(Error::Closed(_))), "{again:?}");
    let tried = a.lock(unique_name("shut")).build().try_acquire().await;
    assert!(matches!(tried, Err(Error::Closed(_))), "{tried:?}");
    for waiter in waiters {
        let waited = within(
            Duration::from_secs(5),
            "a waiter of the shut-down client gives up",
            waiter,
        )
        .await
        .expect("the waiter's task");
        assert!(matches!(waited, Err(Error::Closed(_))), "{waited:?}");
    }
}

/// `health()` is healthy and measures a latency.
pub async fn health_reports_healthy(h: &dyn LockHarness) {
    let c = client(h).await;
    let health = c.health().await;
    assert!(health.is_healthy(), "{health:?}");
    assert!(health.latency.is_some());
}

/// A client whose backend is `h`'s behind a [`FaultyLockBackend`], with no
/// retries, so that one injected fault is what the caller sees.
async fn faulty_client(h: &dyn LockHarness) -> (Arc<FaultyLockBackend>, LockClient) {
    let faulty = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    let c = LockClient::builder(faulty.clone())
        .retry(crate::retry::RetryPolicy::none())
        .build()
        .expect("lock client");
    (faulty, c)
}

/// A lease long enough that a lock another client gets within the cases'
/// bounds was freed by a release, not by its lease's end.
const LONG_TTL: Duration = Duration::from_secs(30);

/// Waits (at most 5 s, far below [`LONG_TTL`]) until another client takes
/// `name`: whatever the faulty client was granted has been given back.
async fn freed_for_another(h: &dyn LockHarness, name: &str, what: &str) {
    let other = client(h).await;
    let started = Instant::now();
    let got = other
        .lock(name.to_owned())
        .ttl(LONG_TTL)
        .wait_timeout(Duration::from_secs(10))
        .build()
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("{what}: another client cannot take the lock: {e}"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{what}: the lock was free only after {:?}, as if left to its lease",
        started.elapsed()
    );
    got.release().await.expect("release");
}

/// A release that gets no answer returns its error, and goes on in the
/// background: the lock is free long before its lease ends.
pub async fn unanswered_release_goes_on_in_the_background(h: &dyn LockHarness) {
    let name = unique_name("unanswered-release");
    let (faulty, c) = faulty_client(h).await;
    let guard = c
        .lock(name.clone())
        .ttl(LONG_TTL)
        .build()
        .acquire()
        .await
        .expect("acquire");
    faulty.inject_times(LockOp::Release, Fault::Unavailable, 1);
    let err = guard
        .release()
        .await
        .expect_err("the release got no answer");
    assert!(err.is_retryable(), "{err:?}");
    freed_for_another(h, &name, "an unanswered release").await;
}

/// A background release that gets no answer (a dropped guard during an
/// outage longer than the call's retries) is sent again until the backend
/// answers: the lock is free soon after, not only when its lease ends (on
/// etcd, never while the client's other locks keep their shared lease).
pub async fn background_release_is_sent_again_until_answered(h: &dyn LockHarness) {
    let name = unique_name("background-release-again");
    let (faulty, c) = faulty_client(h).await;
    let guard = c
        .lock(name.clone())
        .ttl(LONG_TTL)
        .build()
        .acquire()
        .await
        .expect("acquire");
    faulty.inject_times(LockOp::Release, Fault::Unavailable, 2);
    drop(guard);
    freed_for_another(h, &name, "a background release that failed twice").await;
    assert!(faulty.calls(LockOp::Release) >= 3, "sent again");
}

/// An acquisition dropped while its request is in flight (a timeout
/// around `acquire()`, a cancelled campaign) gives back what the request
/// was granted.
pub async fn acquisition_dropped_in_flight_gives_its_grant_back(h: &dyn LockHarness) {
    let name = unique_name("dropped-in-flight");
    let (faulty, c) = faulty_client(h).await;
    faulty.inject_times(
        LockOp::TryAcquire,
        Fault::DelayReply(Duration::from_secs(3)),
        1,
    );
    let lock = c.lock(name.clone()).ttl(LONG_TTL).build();
    let given_up = tokio::time::timeout(Duration::from_millis(500), lock.acquire()).await;
    assert!(given_up.is_err(), "the reply was still on its way");
    freed_for_another(h, &name, "a dropped acquisition").await;
}

/// A grant that arrives after `shutdown()` is not a guard on the closed
/// client: the acquisition fails with `Closed` and gives the grant back.
pub async fn grant_after_shutdown_is_given_back(h: &dyn LockHarness) {
    let name = unique_name("granted-after-shutdown");
    let (faulty, c) = faulty_client(h).await;
    faulty.inject_times(
        LockOp::TryAcquire,
        Fault::DelayReply(Duration::from_secs(1)),
        1,
    );
    let lock = c.lock(name.clone()).ttl(LONG_TTL).build();
    let waiting = tokio::spawn(async move { lock.acquire().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.shutdown().await.expect("shutdown");
    let result = within(Duration::from_secs(10), "the acquisition ends", waiting)
        .await
        .expect("the acquisition task");
    assert!(matches!(result, Err(Error::Closed(_))), "{result:?}");
    freed_for_another(h, &name, "a grant after shutdown").await;
}

/// A waiter whose backend fails for a while (a restart, a failover) keeps
/// waiting, and gets the lock once the backend answers again.
pub async fn waiter_rides_out_a_failing_backend(h: &dyn LockHarness) {
    crate::testkit::outage::waiter_rides_out_a_failing_backend(h, false).await;
}

/// An acquisition whose applied request lost its reply asks again with the
/// same owner: one hold, and nothing left held after its release.
pub async fn lost_reply_is_asked_again_as_the_same_hold(h: &dyn LockHarness) {
    crate::testkit::outage::lost_reply_is_asked_again_as_the_same_hold(h, false).await;
}

/// A backend that keeps failing ends the wait after `retry.max_elapsed`.
pub async fn waiter_gives_up_on_a_backend_that_keeps_failing(h: &dyn LockHarness) {
    crate::testkit::outage::waiter_gives_up_on_a_backend_that_keeps_failing(h, false).await;
}

/// The wait timeout passes while the backend fails: `Timeout`, on time.
pub async fn wait_timeout_ends_a_ride_out(h: &dyn LockHarness) {
    crate::testkit::outage::wait_timeout_ends_a_ride_out(h, false).await;
}

/// An acquisition cancelled while it rides out a failure gives back what
/// its applied request was granted.
pub async fn cancelled_ride_out_gives_back_its_grant(h: &dyn LockHarness) {
    crate::testkit::outage::cancelled_ride_out_gives_back_its_grant(h, false).await;
}

/// A backend that hangs on a waiting acquisition's request cannot hold the
/// wait past its wait timeout.
pub async fn hung_backend_cannot_hold_the_wait_past_its_timeout(h: &dyn LockHarness) {
    crate::testkit::outage::hung_backend_cannot_hold_the_wait_past_its_timeout(h, false).await;
}
