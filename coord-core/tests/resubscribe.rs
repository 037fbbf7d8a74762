//! A waiter whose release notifications end (a dropped pub/sub connection, a
//! cancelled watch) listens again instead of falling back to polling for the
//! rest of its wait; a channel that keeps dying at once cannot make it spin.

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
    let holder = LockClient::new(Arc::new(store.clone()));
    let guard = holder
        .lock(name)
        .ttl(Duration::from_secs(600))
        .build()
        .acquire()
        .await
        .unwrap();
    let waiter = LockClient::new(faulty);
    let waiting = tokio::spawn(async move {
        waiter
            .lock(name)
            .ttl(Duration::from_secs(600))
            .poll_interval(POLL)
            .wait_forever()
            .build()
            .acquire()
            .await
            .unwrap()
    });
    (guard, waiting)
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

    let released_at = tokio::time::Instant::now();
    guard.release().await.unwrap();
    let won = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiter got the lock")
        .unwrap();
    assert!(
        released_at.elapsed() < Duration::from_secs(1),
        "woken by the new channel, not by the {POLL:?} poll: {:?}",
        released_at.elapsed()
    );
    drop(won);
}

#[tokio::test(start_paused = true)]
async fn a_channel_that_dies_at_once_makes_the_waiter_poll_not_spin() {
    let store = MemoryBackend::new();
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    faulty.inject(LockOp::Subscribe, Fault::EndStreamAfter(Duration::ZERO));
    let (guard, waiting) = holder_and_waiter(&store, faulty.clone(), "dies").await;

    tokio::time::sleep(Duration::from_secs(65)).await;
    // One subscription, then polling every 30 s: the first attempt, the one
    // right after subscribing, one when the channel ended (a release may
    // have been lost with it), and one per poll (30 s, 60 s).
    assert_eq!(faulty.calls(LockOp::Subscribe), 1);
    assert_eq!(faulty.calls(LockOp::TryAcquire), 5);
    assert!(!waiting.is_finished());

    guard.release().await.unwrap();
    let won = tokio::time::timeout(POLL + Duration::from_secs(1), waiting)
        .await
        .expect("the poll finds the lock free")
        .unwrap();
    drop(won);
}
