//! A waiter whose release notifications end (a dropped pub/sub connection, a
//! cancelled watch) listens again instead of falling back to polling for the
//! rest of its wait; so does one whose subscription failed (a server that was
//! restarting), once it answers again; a channel that keeps dying at once
//! cannot make it spin.

use std::sync::Arc;
use std::time::Duration;

use coord_core::memory::MemoryBackend;
use coord_core::testkit::{Fault, FaultyLockBackend, LockOp};
use coord_core::{LockClient, LockGuard};

const POLL: Duration = Duration::from_secs(30);

/// A holder of `name` on `store`, and a waiter for it through `faulty`.
async fn holder_and_waiter(
    store: &MemoryBackend,
    faulty: Arc<FaultyLockBackend>,
    name: &'static str,
) -> (LockGuard, tokio::task::JoinHandle<LockGuard>) {
    holder_and_waiter_of(store, faulty, name, false).await
}

/// [`holder_and_waiter`] of a lease lock, or of a fair lock (`fair`).
async fn holder_and_waiter_of(
    store: &MemoryBackend,
    faulty: Arc<FaultyLockBackend>,
    name: &'static str,
    fair: bool,
) -> (LockGuard, tokio::task::JoinHandle<LockGuard>) {
    let lock = |client: &LockClient| {
        let builder = client
            .lock(name)
            .ttl(Duration::from_secs(600))
            .poll_interval(POLL)
            .wait_forever();
        if fair { builder.fair() } else { builder }.build()
    };
    let holder = LockClient::new(Arc::new(store.clone()));
    let guard = lock(&holder).acquire().await.unwrap();
    let waiter = lock(&LockClient::new(faulty));
    let waiting = tokio::spawn(async move { waiter.acquire().await.unwrap() });
    (guard, waiting)
}

/// Releases `guard` and checks that the waiter gets the lock within a
/// second: woken by a channel it listens to, not by its [`POLL`].
async fn released_wakes_the_waiter(guard: LockGuard, waiting: tokio::task::JoinHandle<LockGuard>) {
    let released_at = tokio::time::Instant::now();
    guard.release().await.unwrap();
    let won = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiter got the lock")
        .unwrap();
    assert!(
        released_at.elapsed() < Duration::from_secs(1),
        "woken by a channel, not by the {POLL:?} poll: {:?}",
        released_at.elapsed()
    );
    drop(won);
}

/// A waiter whose subscription was refused (the server was down for a
/// moment) listens again once it answers, rather than poll for the rest of
/// its wait: the release wakes it, long before its next poll.
async fn a_refused_subscription_is_made_again(fair: bool) {
    let store = MemoryBackend::new();
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    faulty.inject_times(LockOp::Subscribe, Fault::Unavailable, 1);
    let (guard, waiting) = holder_and_waiter_of(&store, faulty.clone(), "refused", fair).await;

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        faulty.calls(LockOp::Subscribe) >= 2,
        "listened again after the refusal: {} subscriptions",
        faulty.calls(LockOp::Subscribe)
    );
    assert!(!waiting.is_finished());

    released_wakes_the_waiter(guard, waiting).await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_waiter_listens_again_after_a_refused_subscription() {
    a_refused_subscription_is_made_again(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_fair_waiter_listens_again_after_a_refused_subscription() {
    a_refused_subscription_is_made_again(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_listens_again_when_its_notifications_end() {
    let store = MemoryBackend::new();
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    faulty.inject_times(
        LockOp::Subscribe,
        Fault::EndStreamAfter(Duration::from_secs(5)),
        1,
    );
    let (guard, waiting) = holder_and_waiter(&store, faulty.clone(), "again").await;

    // The first channel ends after 5 s; the waiter subscribes again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(faulty.calls(LockOp::Subscribe), 2);
    assert!(!waiting.is_finished());

    released_wakes_the_waiter(guard, waiting).await;
}

#[tokio::test(start_paused = true)]
async fn a_channel_that_dies_at_once_makes_the_waiter_poll_not_spin() {
    let store = MemoryBackend::new();
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    faulty.inject(LockOp::Subscribe, Fault::EndStreamAfter(Duration::ZERO));
    let (guard, waiting) = holder_and_waiter(&store, faulty.clone(), "dies").await;

    tokio::time::sleep(Duration::from_secs(65)).await;
    // Polling, and listening again 1 s after the first channel died, then
    // 2, 4, 8, 16 and 30 s after each next one (at 0, 1, 3, 7, 15, 31 and
    // 61 s; each 30 s poll falls on one of them). Each time three attempts:
    // before subscribing, right after, and when the channel ended (a
    // release may have been lost with it).
    assert_eq!(faulty.calls(LockOp::Subscribe), 7);
    assert_eq!(faulty.calls(LockOp::TryAcquire), 21);
    assert!(!waiting.is_finished());

    guard.release().await.unwrap();
    let won = tokio::time::timeout(POLL + Duration::from_secs(1), waiting)
        .await
        .expect("the poll finds the lock free")
        .unwrap();
    drop(won);
}
