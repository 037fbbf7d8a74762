//! A release that gets no answer, even after its retries, goes on in the
//! background: the lock (or the queue entry) is free once it lands, not
//! only when its lease ends, and the owner does not go back to the pool.

use std::sync::Arc;
use std::time::Duration;

use coord_core::memory::MemoryBackend;
use coord_core::testkit::{Fault, FaultyLockBackend, LockOp, within};
use coord_core::{LockBackend, LockClient, RetryPolicy};

const TTL: Duration = Duration::from_secs(60);

fn setup() -> (Arc<FaultyLockBackend>, LockClient, MemoryBackend) {
    let store = MemoryBackend::new();
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    let client = LockClient::builder(faulty.clone())
        .retry(RetryPolicy::none())
        .build()
        .expect("client");
    (faulty, client, store)
}

/// Waits until `name` has no holder and no waiter, well within the TTL.
async fn freed(store: &MemoryBackend, name: &str) {
    within(
        Duration::from_secs(10),
        "released in the background, long before the 60 s lease ends",
        async {
            while store.inspect(name).await.expect("inspect").is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_release_with_no_answer_goes_on_in_the_background() {
    let (faulty, client, store) = setup();
    let guard = client
        .lock("unanswered")
        .ttl(TTL)
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
    freed(&store, "unanswered").await;
}

#[tokio::test]
async fn a_queue_entry_whose_leave_got_no_answer_leaves_in_the_background() {
    let (faulty, client, store) = setup();
    let holder = LockClient::new(Arc::new(store.clone()));
    let held = holder
        .lock("busy")
        .fair()
        .ttl(TTL)
        .build()
        .acquire()
        .await
        .expect("acquire");
    // A busy try_acquire queues, then leaves (a dequeue) at once.
    faulty.inject_times(LockOp::Release, Fault::Unavailable, 1);
    let attempt = client
        .lock("busy")
        .fair()
        .ttl(TTL)
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
        next.lock("busy").fair().ttl(TTL).build().acquire(),
    )
    .await
    .expect("acquire");
    got.release().await.expect("release");
}
