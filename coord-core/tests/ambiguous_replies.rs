//! A lost reply to an acquisition is "maybe acquired", never "not acquired":
//! retried, the same owner gets the same grant; given up, it is cleaned up.

use std::sync::Arc;
use std::time::Duration;

use coord_core::memory::MemoryBackend;
use coord_core::testkit::{Fault, FaultyLockBackend, LockOp};
use coord_core::{Error, LockClient, RetryPolicy};

/// A memory store whose first `lose` acquisition replies are lost (the
/// acquisitions themselves are applied).
fn backend(lose: usize) -> (Arc<FaultyLockBackend>, MemoryBackend) {
    let store = MemoryBackend::new();
    let faulty = Arc::new(FaultyLockBackend::new(Arc::new(store.clone())));
    faulty.inject_times(LockOp::TryAcquire, Fault::LoseReply, lose);
    (faulty, store)
}

#[tokio::test]
async fn a_retried_acquisition_gets_the_grant_its_lost_reply_carried() {
    let (b, store) = backend(2);
    let client = LockClient::new(b.clone());
    let guard = client
        .lock("a")
        .build()
        .acquire()
        .await
        .expect("acquired on retry");
    assert_eq!(guard.fencing_token().as_u64(), 1, "one grant, not three");
    let other = LockClient::new(Arc::new(store));
    assert!(
        other
            .lock("a")
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    guard.release().await.unwrap();
    assert!(
        other
            .lock("a")
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_given_up_acquisition_is_released_in_the_background() {
    let (b, store) = backend(1);
    let client = LockClient::builder(b.clone())
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let err = client.lock("g").build().acquire().await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    // The lock was in fact granted; the client must not leave it behind.
    let other = LockClient::new(Arc::new(store));
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        other
            .lock("g")
            .poll_interval(Duration::from_secs(30))
            .build()
            .acquire(),
    )
    .await
    .expect("the orphaned grant was cleaned up")
    .unwrap();
    assert_eq!(b.calls(LockOp::Release), 1);
    assert_eq!(client.held(), 0);
    got.release().await.unwrap();
}
