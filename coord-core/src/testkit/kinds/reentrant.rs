//! Reentrant locks: holds counted per owner, other owners excluded.

use std::time::Duration;

use crate::testkit::kinds::{client, short_ttl};
use crate::testkit::{LockHarness, unique_name, within};

/// One task acquires three times: one token, a count of 3, and the lock
/// stays held for others until the third release.
pub async fn counts_holds_per_owner(h: &dyn LockHarness) {
    let name = unique_name("reentrant-count");
    let (a, b) = (client(h).await, client(h).await);
    let lock = a
        .lock(name.clone())
        .reentrant()
        .ttl(Duration::from_secs(30))
        .build();
    let first = lock.acquire().await.expect("first hold");
    let second = lock.acquire().await.expect("second hold (reentrant)");
    let third = lock.try_acquire().await.expect("try").expect("third hold");
    assert_eq!(first.hold_count(), 3);
    let token = first.fencing_token();
    assert_eq!(second.fencing_token(), first.fencing_token());
    assert_eq!(third.fencing_token(), first.fencing_token());
    let other = b.lock(name.clone()).reentrant().build();
    assert!(
        other.try_acquire().await.expect("try").is_none(),
        "held by a"
    );
    first.release().await.expect("release 1 of 3");
    third.release().await.expect("release 2 of 3");
    assert!(
        other.try_acquire().await.expect("try").is_none(),
        "one hold is left: still held"
    );
    assert_eq!(second.hold_count(), 1);
    second.release().await.expect("last release");
    let now = other.try_acquire().await.expect("try");
    let now = now.expect("free after the last release");
    assert!(now.fencing_token() > token, "a new grant has a newer token");
    now.release().await.expect("release");
}

/// Two owners in one client exclude each other; one owner re-enters from
/// another tokio task.
pub async fn other_owner_blocks(h: &dyn LockHarness) {
    let name = unique_name("reentrant-owners");
    let c = client(h).await;
    let as_a = c.lock(name.clone()).reentrant().owner("worker-a").build();
    let as_b = c.lock(name.clone()).reentrant().owner("worker-b").build();
    let held = as_a.acquire().await.expect("a holds");
    assert!(
        as_b.try_acquire().await.expect("try").is_none(),
        "b is another owner"
    );
    let again = {
        let as_a = as_a.clone();
        tokio::spawn(async move { as_a.acquire().await })
    };
    let again = within(
        Duration::from_secs(10),
        "a re-enters from another task",
        again,
    )
    .await
    .expect("task")
    .expect("a re-enters");
    assert_eq!(again.fencing_token(), held.fencing_token());
    assert_eq!(held.hold_count(), 2);
    drop(again);
    held.release().await.expect("last release");
    let b = as_b
        .try_acquire()
        .await
        .expect("try")
        .expect("b gets it now");
    b.release().await.expect("release");
}

/// The hold count survives watchdog renewals past the TTL.
pub async fn count_survives_renewals(h: &dyn LockHarness) {
    let name = unique_name("reentrant-renew");
    let (a, b) = (client(h).await, client(h).await);
    let ttl = short_ttl(&a);
    let lock = a.lock(name.clone()).reentrant().ttl(ttl).build();
    let one = lock.acquire().await.expect("hold 1");
    let two = lock.acquire().await.expect("hold 2");
    tokio::time::sleep(ttl * 2).await; // the lease must be renewed to survive this
    assert!(one.is_held() && two.is_held(), "renewed by the watchdog");
    assert_eq!(one.hold_count(), 2);
    let other = b.lock(name.clone()).reentrant().ttl(ttl).build();
    assert!(other.try_acquire().await.expect("try").is_none());
    one.release().await.expect("release 1");
    assert!(other.try_acquire().await.expect("try").is_none());
    two.release().await.expect("release 2");
    other
        .try_acquire()
        .await
        .expect("try")
        .expect("free")
        .release()
        .await
        .expect("release");
}

/// An acquisition whose reply was lost is cleaned up in the background; the
/// same owner's next acquisition must not be ended by that cleanup.
pub async fn lost_reply_cleanup_spares_the_next_hold(h: &dyn LockHarness) {
    use crate::testkit::{Fault, FaultyLockBackend, LockOp};
    use std::sync::Arc;
    let name = unique_name("reentrant-lost-reply");
    let faulty = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    // No retries: the lost reply fails the acquisition (a retry would just
    // be granted the same attempt's hold again).
    let a = crate::lock::LockClient::builder(faulty.clone())
        .retry(crate::RetryPolicy::none())
        .build()
        .expect("client");
    let b = client(h).await;
    let lock = a
        .lock(name.clone())
        .reentrant()
        .owner("worker")
        .ttl(Duration::from_secs(30))
        .build();
    faulty.inject_times(LockOp::TryAcquire, Fault::LoseReply, 1);
    let first = lock.acquire().await;
    assert!(first.is_err(), "the reply was lost: {first:?}");
    let held = lock.acquire().await.expect("the same owner acquires again");
    within(
        Duration::from_secs(10),
        "the lost attempt is cleaned up",
        async {
            while faulty.calls(LockOp::Release) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
    // The cleanup went to the lost attempt's grant, not to this one.
    held.renew().await.expect("still held after the cleanup");
    let other = b.lock(name.clone()).reentrant().build();
    assert!(
        other.try_acquire().await.expect("try").is_none(),
        "still held"
    );
    held.release().await.expect("release");
}
