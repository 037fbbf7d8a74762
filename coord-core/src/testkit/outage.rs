//! Conformance cases shared by the lease and fair lock suites: a waiting
//! acquisition rides out a backend that fails for a while (a restart, a
//! failover), within its wait timeout and the retry policy's `max_elapsed`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::lock::{Lock, LockClient, LockGuard};
use crate::retry::RetryPolicy;
use crate::settings::RetrySettings;
use crate::testkit::kinds::until_waiting;
use crate::testkit::{Fault, FaultyLockBackend, LockHarness, LockOp, unique_name, within};

/// A lease long enough that nothing in these cases ends by expiry.
const LONG_TTL: Duration = Duration::from_secs(60);

/// A client behind a [`FaultyLockBackend`] whose calls are not retried one
/// by one (a failure is what the waiting loop sees), and whose waiting
/// acquisitions ride out `budget` of failures, asking every 100 ms.
async fn riding_client(
    h: &dyn LockHarness,
    budget: Duration,
) -> (Arc<FaultyLockBackend>, LockClient) {
    let faulty = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    let retry = RetryPolicy::new(&RetrySettings {
        max_retries: 0,
        max_backoff: Duration::from_millis(100),
        max_elapsed: budget,
        ..RetrySettings::default()
    });
    let c = LockClient::builder(faulty.clone())
        .retry(retry)
        .build()
        .expect("lock client");
    (faulty, c)
}

fn lock(c: &LockClient, name: &str, fair: bool) -> Lock {
    let b = c
        .lock(name.to_owned())
        .ttl(LONG_TTL)
        .wait_timeout(Duration::from_secs(60));
    if fair { b.fair() } else { b }.build()
}

/// `name` held by a client of its own (returned, to keep it alive).
async fn hold(h: &dyn LockHarness, name: &str, fair: bool) -> (LockClient, LockGuard) {
    let holder = LockClient::new(h.new_backend().await);
    let held = lock(&holder, name, fair).acquire().await.expect("holder");
    (holder, held)
}

/// Waits (at most 10 s) until `faulty` has seen `n` acquisition requests.
async fn until_asked(faulty: &FaultyLockBackend, n: usize) {
    within(
        Duration::from_secs(10),
        &format!("{n} acquisition requests"),
        async {
            while faulty.calls(LockOp::TryAcquire) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
}

/// Checks that another client takes `name` within 5 s (a cleanup may go on
/// in the background), far below [`LONG_TTL`]: nothing was left held.
async fn free_for_another(h: &dyn LockHarness, name: &str, fair: bool, what: &str) {
    let other = LockClient::new(h.new_backend().await);
    let lock = lock(&other, name, fair);
    let got = within(
        Duration::from_secs(5),
        &format!("{what}: the lock is free for another client"),
        async {
            loop {
                match lock.try_acquire().await {
                    Ok(Some(g)) => return g,
                    Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => panic!("{what}: {e}"),
                }
            }
        },
    )
    .await;
    got.release().await.expect("release");
}

/// A waiter whose backend fails for a while (longer than one call's
/// retries) keeps waiting, and gets the lock once the backend answers and
/// the holder has released it: no error reaches the caller.
pub(crate) async fn waiter_rides_out_a_failing_backend(h: &dyn LockHarness, fair: bool) {
    let name = unique_name("rides-out");
    let (_holder_client, held) = hold(h, &name, fair).await;
    let (faulty, c) = riding_client(h, Duration::from_secs(30)).await;
    faulty.inject(LockOp::TryAcquire, Fault::Unavailable);
    let waiter = lock(&c, &name, fair);
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    // Ten failed requests, about a second of failures: still waiting.
    until_asked(&faulty, 10).await;
    assert!(
        !waiting.is_finished(),
        "the waiter gave up on a backend that failed for about a second: {:?}",
        waiting.await
    );
    faulty.clear();
    let token = held.fencing_token();
    held.release().await.expect("holder releases");
    let got = within(Duration::from_secs(20), "the waiter gets the lock", waiting)
        .await
        .expect("waiter task")
        .expect("the waiter rode out the failures");
    assert!(got.fencing_token() > token, "a grant after the holder's");
    got.release().await.expect("release");
    free_for_another(h, &name, fair, "after the ridden-out wait").await;
}

/// A request that was applied but whose reply was lost is asked again with
/// the same owner: the caller gets one hold, and its release frees the lock
/// (nothing is left held by the first request).
pub(crate) async fn lost_reply_is_asked_again_as_the_same_hold(h: &dyn LockHarness, fair: bool) {
    let name = unique_name("lost-reply-again");
    let (faulty, c) = riding_client(h, Duration::from_secs(30)).await;
    faulty.inject_times(LockOp::TryAcquire, Fault::LoseReply, 1);
    let got: LockGuard = within(
        Duration::from_secs(20),
        "the acquisition asks again",
        lock(&c, &name, fair).acquire(),
    )
    .await
    .expect("the acquisition asked again after the lost reply");
    assert!(faulty.calls(LockOp::TryAcquire) >= 2);
    got.release().await.expect("release");
    free_for_another(h, &name, fair, "after a hold whose first reply was lost").await;
}

/// A backend that keeps failing ends the wait after the policy's
/// `max_elapsed`, long before the wait timeout, with the backend's error,
/// which says how long it failed. The first request was applied (its reply
/// lost): what it was granted is given back.
pub(crate) async fn waiter_gives_up_on_a_backend_that_keeps_failing(
    h: &dyn LockHarness,
    fair: bool,
) {
    let name = unique_name("gives-up");
    let (faulty, c) = riding_client(h, Duration::from_secs(1)).await;
    faulty.inject_times(LockOp::TryAcquire, Fault::LoseReply, 1);
    faulty.inject(LockOp::TryAcquire, Fault::Unavailable);
    let started = Instant::now();
    let result = within(
        Duration::from_secs(20),
        "the acquisition gives up",
        lock(&c, &name, fair).acquire(),
    )
    .await;
    let Err(err) = result else {
        panic!("the backend never answered, yet the acquisition succeeded");
    };
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("retry.max_elapsed"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "asked again for about the budget: {:?}",
        started.elapsed()
    );
    assert!(
        faulty.calls(LockOp::TryAcquire) >= 3,
        "asked again meanwhile"
    );
    faulty.clear();
    free_for_another(h, &name, fair, "after giving up").await;
}

/// The wait timeout passes while the backend fails: the acquisition ends
/// with `Timeout` (naming the backend's error) by its wait timeout, not
/// after the outage budget or a request sent at the deadline.
pub(crate) async fn wait_timeout_ends_a_ride_out(h: &dyn LockHarness, fair: bool) {
    let name = unique_name("ride-out-timeout");
    let (faulty, c) = riding_client(h, Duration::from_secs(30)).await;
    faulty.inject(LockOp::TryAcquire, Fault::Unavailable);
    let wait = Duration::from_millis(1500);
    let l = c.lock(name.clone()).ttl(LONG_TTL).wait_timeout(wait);
    let l = if fair { l.fair() } else { l }.build();
    let started = Instant::now();
    let result = within(Duration::from_secs(20), "the acquisition ends", l.acquire()).await;
    let elapsed = started.elapsed();
    let Err(err) = result else {
        panic!("the backend never answered, yet the acquisition succeeded");
    };
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(
        err.to_string().contains("injected fault"),
        "names the backend's error: {err}"
    );
    assert!(
        elapsed >= wait - Duration::from_millis(100) && elapsed < wait + Duration::from_millis(500),
        "ended by the {wait:?} wait timeout, neither a pause early nor late: {elapsed:?}"
    );
    faulty.clear();
}

/// A backend that hangs on a waiting acquisition's request (a paused
/// server: a call's own retries of its timeouts would take half a minute)
/// cannot hold the wait past its wait timeout: `Timeout`, on time. The
/// request that hangs: a lease waiter's, woken by the holder's release; a
/// queued waiter's refresh of its entry (every third of its TTL; woken by
/// a release, it may be handed the lock without asking).
pub(crate) async fn hung_backend_cannot_hold_the_wait_past_its_timeout(
    h: &dyn LockHarness,
    fair: bool,
) {
    let name = unique_name("hung-backend");
    let (_holder_client, held) = hold(h, &name, fair).await;
    // The default retries: each hung request would be retried.
    let faulty = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    let c = LockClient::new(faulty.clone());
    let wait = Duration::from_secs(4);
    let ttl = if fair {
        c.capabilities().effective_ttl(Duration::from_secs(3))
    } else {
        LONG_TTL
    };
    let l = c.lock(name.clone()).ttl(ttl).wait_timeout(wait);
    let l = if fair { l.fair() } else { l }.build();
    let started = Instant::now();
    let waiting = tokio::spawn(async move { l.acquire().await.map(|_| ()) });
    until_waiting(&c, 1).await;
    faulty.inject(LockOp::TryAcquire, Fault::Delay(Duration::from_secs(30)));
    let held = if fair {
        Some(held)
    } else {
        held.release().await.expect("release");
        None
    };
    let result = within(Duration::from_secs(20), "the acquisition ends", waiting)
        .await
        .expect("waiter task");
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(
        elapsed < wait + Duration::from_secs(1),
        "ended by its {wait:?} wait timeout, not by the hung request: {elapsed:?}"
    );
    assert!(
        faulty.calls(LockOp::TryAcquire) >= 2,
        "a request was sent (and hung) while the waiter waited"
    );
    faulty.clear();
    if let Some(held) = held {
        held.release().await.expect("release");
    }
}

/// An acquisition cancelled while it rides out a failure (a timeout around
/// `acquire()`, an aborted task) gives back what its applied request (whose
/// reply was lost) was granted: the lock is free long before its lease ends.
pub(crate) async fn cancelled_ride_out_gives_back_its_grant(h: &dyn LockHarness, fair: bool) {
    let name = unique_name("ride-out-cancelled");
    let (faulty, c) = riding_client(h, Duration::from_secs(30)).await;
    faulty.inject_times(LockOp::TryAcquire, Fault::LoseReply, 1);
    faulty.inject(LockOp::TryAcquire, Fault::Unavailable);
    let l = lock(&c, &name, fair);
    let acquiring = tokio::spawn(async move { l.acquire().await.map(|_| ()) });
    until_asked(&faulty, 3).await;
    assert!(!acquiring.is_finished(), "riding out the failures");
    acquiring.abort();
    let _ = acquiring.await;
    faulty.clear();
    free_for_another(h, &name, fair, "after a cancelled ride-out").await;
}

/// A real outage, for the backend crates' fault tests: a lease and a fair
/// lock are held by `holder`; `waiters` (a client of the same server, with
/// the default retry settings) waits for each with two acquisitions; and
/// `outage` makes the server stop answering for longer than one call's
/// retries (1–2 s), then come back. Every waiter must get its lock, with no
/// error: the first once the holder has released it (or the restart lost
/// it), the second within a second of the first's release, woken by a
/// notification it listens to again after the outage (its poll is 20 s
/// away).
pub async fn waiters_ride_out_a_server_outage(
    holder: LockClient,
    waiters: LockClient,
    outage: impl std::future::Future<Output = ()>,
) {
    let names = [
        (unique_name("outage-lease"), false),
        (unique_name("outage-fair"), true),
    ];
    let mut held = Vec::new();
    let mut waiting = Vec::new();
    for (name, fair) in &names {
        let guard = lock(&holder, name, *fair).acquire().await;
        held.push(guard.unwrap_or_else(|e| panic!("hold {name:?}: {e}")));
        let pair: Vec<_> = (0..2)
            .map(|_| {
                let l = lock(&waiters, name, *fair);
                tokio::spawn(async move { l.acquire().await })
            })
            .collect();
        waiting.push(pair);
    }
    until_waiting(&waiters, 4).await;
    outage.await;
    // Not a synchronisation: the scenario. The waiters are answered again
    // (each asks within `retry.max_backoff`, 1 s) and find the locks held
    // (or one of them takes a lock the restart lost); what follows needs
    // them to have listened again by themselves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for guard in held {
        // A restart without persistence lost it: then `NotHeld`.
        let _ = within(
            Duration::from_secs(20),
            "the holder releases",
            guard.release(),
        )
        .await;
    }
    for (pair, (name, _)) in waiting.into_iter().zip(&names) {
        let got = |r: std::result::Result<crate::Result<LockGuard>, tokio::task::JoinError>| {
            r.expect("waiter task").unwrap_or_else(|e| {
                panic!("a waiter for {name:?} failed instead of riding out the outage: {e}")
            })
        };
        let [a, b]: [_; 2] = pair.try_into().expect("two waiters");
        let (first, second) = match within(
            Duration::from_secs(30),
            "a waiter gets the lock",
            futures::future::select(a, b),
        )
        .await
        {
            futures::future::Either::Left((r, other)) => (got(r), other),
            futures::future::Either::Right((r, other)) => (got(r), other),
        };
        let released = Instant::now();
        first.release().await.expect("release after the outage");
        let second = got(within(Duration::from_secs(30), "the other waiter gets it", second).await);
        assert!(
            released.elapsed() < Duration::from_secs(1),
            "{name:?}: the second waiter got the lock {:?} after the release, as if it \
             had not listened again after the outage",
            released.elapsed()
        );
        second.release().await.expect("release");
    }
}
