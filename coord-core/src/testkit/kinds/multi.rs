//! Multi-lock: all or nothing, in one deadlock-free order, one guard.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::lock::LockClient;
use crate::testkit::kinds::{client, short_ttl};
use crate::testkit::{Fault, FaultyLockBackend, LockHarness, LockOp, unique_name, within};

/// One lock of the set is held elsewhere: the multi-lock times out within
/// its one deadline and leaves none of the others held.
pub async fn all_or_nothing(h: &dyn LockHarness) {
    let base = unique_name("multi-all");
    let names = [
        format!("{base}/a"),
        format!("{base}/b"),
        format!("{base}/c"),
    ];
    let (a, b) = (client(h).await, client(h).await);
    let blocker = b
        .lock(names[1].clone())
        .build()
        .acquire()
        .await
        .expect("hold b");
    let err = within(
        Duration::from_secs(10),
        "the multi-lock gives up",
        a.multi_lock(names.clone())
            .wait_timeout(Duration::from_millis(300))
            .acquire(),
    )
    .await
    .expect_err("b is held elsewhere");
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(
        a.multi_lock(names.clone())
            .try_acquire()
            .await
            .expect("try")
            .is_none(),
        "b is still held"
    );
    for name in [&names[0], &names[2]] {
        let free = b
            .lock(name.clone())
            .build()
            .try_acquire()
            .await
            .expect("try");
        assert!(
            free.is_some(),
            "{name} was left held by the failed multi-lock"
        );
    }
    blocker.release().await.expect("release");
}

/// Two clients take overlapping sets given in opposite orders, again and
/// again: both finish (no deadlock), and one guard releases everything.
pub async fn opposite_orders_do_not_deadlock(h: &dyn LockHarness) {
    let base = unique_name("multi-order");
    let (x, y) = (format!("{base}/x"), format!("{base}/y"));
    let mut tasks = Vec::new();
    for order in [[x.clone(), y.clone()], [y.clone(), x.clone()]] {
        let c = client(h).await;
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for _ in 0..10 {
                let guard = c
                    .multi_lock(order.clone())
                    .wait_timeout(Duration::from_secs(20))
                    .acquire()
                    .await
                    .expect("multi-lock");
                assert_eq!(guard.tokens().len(), 2);
                assert!(guard.is_held());
                last = guard.token(&order[0]);
                guard.release().await.expect("release");
            }
            last
        }));
    }
    for t in tasks {
        let last = within(Duration::from_secs(60), "both clients finish", t)
            .await
            .expect("task");
        assert!(last.is_some());
    }
    let c = client(h).await;
    let after = c.multi_lock([x, y]).try_acquire().await.expect("try");
    assert!(after.is_some(), "everything was released");
}

/// A lock taken early whose lease runs out while a later one is awaited
/// (its renewals fail) fails the whole acquisition with `LockLost`, and
/// nothing stays held: never a guard with a member already lost.
pub async fn a_member_lost_while_waiting_fails_the_whole(h: &dyn LockHarness) {
    let base = unique_name("multi-lost");
    let names = [format!("{base}/a"), format!("{base}/b")];
    let other = client(h).await;
    let faulty = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    let c = LockClient::new(faulty.clone());
    let ttl = short_ttl(&c);
    let blocker = other
        .lock(names[1].clone())
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("hold b");
    faulty.inject(LockOp::Renew, Fault::Unavailable);
    let acquiring = {
        let multi = c
            .multi_lock(names.clone())
            .ttl(ttl)
            .wait_timeout(Duration::from_secs(60));
        tokio::spawn(async move { multi.acquire().await.map(|_| ()) })
    };
    // Not a synchronisation: the scenario. `a` is taken at once and lost
    // at its lease end (its renewals fail); `b` is freed well after.
    tokio::time::sleep(ttl * 3).await;
    assert!(!acquiring.is_finished(), "still waiting for b");
    blocker.release().await.expect("release b");
    let result = within(Duration::from_secs(20), "the multi-lock ends", acquiring)
        .await
        .expect("multi-lock task");
    assert!(matches!(result, Err(Error::LockLost(_))), "{result:?}");
    faulty.clear();
    // (A lost member's release may go on in the background.)
    for name in &names {
        let lock = other
            .lock(name.clone())
            .ttl(Duration::from_secs(30))
            .build();
        let free = within(Duration::from_secs(10), "the member is free", async {
            loop {
                if let Some(g) = lock.try_acquire().await.expect("try") {
                    return g;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        free.release().await.expect("release");
    }
}
