//! A queued acquisition cancelled while it is leaving the queue (after its
//! wait timeout) still leaves: its entry must not block the waiters behind it.

use std::sync::Arc;
use std::time::Duration;

use coord_core::LockClient;
use coord_core::memory::MemoryBackend;
use coord_core::testkit::{Fault, FaultyLockBackend, LockOp, within};

#[tokio::test]
async fn cancelled_while_leaving_still_leaves() {
    let store = MemoryBackend::new();
    let holder = LockClient::new(Arc::new(store.clone()));
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    let quitter = LockClient::new(faulty.clone());
    let next = LockClient::new(Arc::new(store));
    let ttl = Duration::from_secs(60);
    let held = holder
        .lock("q")
        .fair()
        .ttl(ttl)
        .build()
        .acquire()
        .await
        .unwrap();
    // Leaving (a dequeue) takes a second; the caller gives up before that.
    faulty.inject_times(LockOp::Release, Fault::Delay(Duration::from_secs(1)), 1);
    let waiting = quitter
        .lock("q")
        .fair()
        .ttl(ttl)
        .wait_timeout(Duration::from_millis(100))
        .build();
    let cancelled = tokio::time::timeout(Duration::from_millis(400), waiting.acquire()).await;
    assert!(cancelled.is_err(), "cancelled while leaving the queue");
    held.release().await.unwrap();
    let got = within(
        Duration::from_secs(10),
        "the next waiter is granted, long before the departed entry's 60 s lease",
        next.lock("q").fair().ttl(ttl).build().acquire(),
    )
    .await
    .unwrap();
    got.release().await.unwrap();
}
