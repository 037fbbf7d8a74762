//! Lock administration: list, force-release with fencing, statistics.

use std::time::Duration;

use crate::error::Error;
use crate::fence::FencedResource;
use crate::lock::{HoldMode, StoredKind};
use crate::testkit::kinds::{client, until_waiting};
use crate::testkit::{LockHarness, unique_name, within};

/// `list` shows lease and queued locks under a prefix with owner, token,
/// remaining TTL and waiters, and nothing outside the prefix.
pub async fn list_shows_holders_and_waiters(h: &dyn LockHarness) {
    let prefix = unique_name("admin-list");
    let c = client(h).await;
    let ttl = Duration::from_secs(30);
    let lease = c
        .lock(format!("{prefix}/lease"))
        .ttl(ttl)
        .build()
        .acquire()
        .await
        .expect("lease");
    let fair = c.lock(format!("{prefix}/fair")).fair().ttl(ttl).build();
    let fair_holder = fair.acquire().await.expect("fair holder");
    let waiter = {
        let fair = fair.clone();
        tokio::spawn(async move { fair.acquire().await })
    };
    until_waiting(&c, 1).await;
    let outside = c
        .lock(format!("{prefix}-outside"))
        .ttl(ttl)
        .build()
        .acquire()
        .await
        .expect("outside");
    let locks = c.admin().list(&format!("{prefix}/")).await.expect("list");
    assert_eq!(locks.len(), 2, "{locks:#?}");
    let fair_info = locks
        .iter()
        .find(|l| l.kind == StoredKind::Queue)
        .expect("the fair lock");
    assert_eq!(fair_info.name, format!("{prefix}/fair"));
    assert_eq!(fair_info.holders.len(), 1);
    assert_eq!(fair_info.holders[0].owner, fair_holder.owner().as_str());
    assert_eq!(
        fair_info.holders[0].token,
        Some(fair_holder.fencing_token())
    );
    assert_eq!(fair_info.holders[0].mode, HoldMode::Exclusive);
    assert_eq!(fair_info.waiters.len(), 1);
    assert_eq!(fair_info.waiters[0].token, None);
    let lease_info = locks
        .iter()
        .find(|l| l.kind == StoredKind::Lease)
        .expect("the lease lock");
    assert_eq!(lease_info.name, format!("{prefix}/lease"));
    assert_eq!(lease_info.holders[0].owner, lease.owner().as_str());
    assert_eq!(lease_info.holders[0].token, Some(lease.fencing_token()));
    let left = lease_info.holders[0].ttl_remaining.expect("remaining TTL");
    assert!(left <= ttl && left > Duration::from_secs(20), "{left:?}");
    fair_holder.release().await.expect("release");
    let w = within(Duration::from_secs(10), "the waiter is granted", waiter)
        .await
        .expect("task")
        .expect("granted");
    for g in [lease, outside, w] {
        g.release().await.expect("release");
    }
}

/// After a force-release, the next holder's fenced writes are accepted and
/// the old holder's are refused; its guard is lost at its next renewal.
pub async fn force_release_refuses_old_holder_fenced_write(h: &dyn LockHarness) {
    let name = unique_name("admin-force");
    let (a, b) = (client(h).await, client(h).await);
    let resource = FencedResource::new(Vec::new());
    let old = a
        .lock(name.clone())
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("old holder");
    resource
        .apply(old.fencing_token(), |v| v.push("old-1"))
        .expect("old holder writes");
    assert!(
        b.admin().force_release(&name).await.expect("force"),
        "it was held"
    );
    let new = b
        .lock(name.clone())
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("new holder");
    assert!(new.fencing_token() > old.fencing_token());
    resource
        .apply(new.fencing_token(), |v| v.push("new-1"))
        .expect("new holder writes");
    let late = resource.apply(old.fencing_token(), |v| v.push("old-2"));
    assert!(matches!(late, Err(Error::Conflict { .. })), "{late:?}");
    assert_eq!(resource.read(|v| v.clone()), vec!["old-1", "new-1"]);
    let renewed = old.renew().await;
    assert!(matches!(renewed, Err(Error::NotHeld(_))), "{renewed:?}");
    assert!(!old.is_held());
    // The same on a queued lock.
    let fair = format!("{name}-fair");
    let old_q = a
        .lock(fair.clone())
        .fair()
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("fair holder");
    assert_eq!(
        b.admin().force_release_queued(&fair).await.expect("force"),
        1
    );
    let new_q = b
        .lock(fair.clone())
        .fair()
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("next");
    assert!(new_q.fencing_token() > old_q.fencing_token());
    let fair_resource = FencedResource::new(0);
    fair_resource
        .apply(new_q.fencing_token(), |v| *v += 1)
        .expect("new holder writes");
    assert!(
        fair_resource
            .apply(old_q.fencing_token(), |v| *v += 1)
            .is_err()
    );
    assert!(matches!(old_q.renew().await, Err(Error::NotHeld(_))));
    new.release().await.expect("release");
    new_q.release().await.expect("release");
    drop((old, old_q));
}

/// Statistics count grants, contended grants, hold times and losses.
pub async fn stats_count_acquisitions(h: &dyn LockHarness) {
    let name = unique_name("admin-stats");
    let (a, b) = (client(h).await, client(h).await);
    let lock = a.lock(name.clone()).ttl(Duration::from_secs(30)).build();
    for _ in 0..3 {
        lock.acquire()
            .await
            .expect("acquire")
            .release()
            .await
            .expect("release");
    }
    let held = b
        .lock(name.clone())
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .expect("b holds");
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire().await })
    };
    until_waiting(&a, 1).await;
    held.release().await.expect("release");
    let g = within(Duration::from_secs(10), "the waiter is granted", waiter)
        .await
        .expect("task")
        .expect("granted");
    assert!(a.admin().force_release(&name).await.expect("force"));
    let lost = within(Duration::from_secs(40), "the guard sees the loss", async {
        g.renew().await.expect_err("not held");
        g.lost().await
    })
    .await;
    assert!(matches!(lost, Error::LockLost(_)), "{lost}");
    drop(g);
    let stats = a.admin().stats(&name).expect("stats");
    assert_eq!(stats.acquisitions, 4);
    assert_eq!(stats.contended, 1);
    assert_eq!(stats.lost, 1);
    assert_eq!(stats.wait.count, 4);
    assert_eq!(stats.hold.count, 4, "three releases and one dropped guard");
    assert!(a.admin().all_stats().iter().any(|(n, _)| n == &name));
}
