//! Owners are reused inside a client only once their hold has surely ended,
//! so a client writes at most as many distinct owners as it holds at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use coord_core::memory::MemoryBackend;
use coord_core::testkit::{Fault, FaultyLockBackend, LockOp};
use coord_core::{Error, LockClient, RetryPolicy};

#[tokio::test]
async fn sequential_acquisitions_reuse_one_owner() {
    let client = LockClient::new(Arc::new(MemoryBackend::new()));
    let mut owners = HashSet::new();
    for i in 0..50 {
        let lock = client.lock(format!("seq{}", i % 5)).build();
        let guard = lock.acquire().await.unwrap();
        owners.insert(guard.owner().clone());
        if i % 2 == 0 {
            guard.release().await.unwrap();
        } else {
            assert!(lock.try_acquire().await.unwrap().is_none());
            guard.release().await.unwrap();
        }
    }
    assert_eq!(owners.len(), 1, "{owners:?}");
}

#[tokio::test]
async fn concurrent_holds_get_distinct_owners() {
    let client = LockClient::new(Arc::new(MemoryBackend::new()));
    let mut guards = Vec::new();
    for i in 0..8 {
        guards.push(
            client
                .lock(format!("c{i}"))
                .build()
                .acquire()
                .await
                .unwrap(),
        );
    }
    let owners: HashSet<_> = guards.iter().map(|g| g.owner().clone()).collect();
    assert_eq!(owners.len(), 8);
    for g in guards {
        g.release().await.unwrap();
    }
    let again = client.lock("c0").build().acquire().await.unwrap();
    assert!(owners.contains(again.owner()), "a released owner is reused");
}

#[tokio::test]
async fn an_owner_whose_release_failed_is_not_reused() {
    let backend = Arc::new(FaultyLockBackend::new(Arc::new(MemoryBackend::new())));
    let client = LockClient::builder(backend.clone())
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let guard = client
        .lock("f")
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .unwrap();
    let stuck = guard.owner().clone();
    backend.inject(LockOp::Release, Fault::Unavailable);
    assert!(matches!(
        guard.release().await,
        Err(Error::Unavailable { .. })
    ));
    backend.clear();
    // The lock may still be held under `stuck`: a new acquisition must not
    // inherit it by reusing the owner.
    let other = client.lock("g").build().acquire().await.unwrap();
    assert_ne!(other.owner(), &stuck);
    assert!(
        client
            .lock("f")
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
}

/// On a networked backend too, an owner whose release was answered on its
/// first try is reused: etcd keeps every owner as a key under the lock's
/// prefix, and a new owner per acquisition would pile up deleted keys that
/// every later acquisition walks (until a compaction). Released or dropped,
/// lease or queued kinds.
#[tokio::test]
async fn a_networked_backend_reuses_owners_after_clean_releases() {
    let backend = FaultyLockBackend::new(Arc::new(MemoryBackend::new())).distributed(true);
    let client = LockClient::new(Arc::new(backend));
    let mut owners = HashSet::new();
    for i in 0..20 {
        let lock = match i % 3 {
            0 => client.lock("net").build(),
            1 => client.lock("net-fair").fair().build(),
            _ => client.lock("net-sem").semaphore(2).build(),
        };
        let guard = lock.acquire().await.unwrap();
        owners.insert(guard.owner().clone());
        if i % 2 == 0 {
            guard.release().await.unwrap();
        } else {
            drop(guard);
            // The dropped guard's release runs in the background.
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match lock.try_acquire().await.unwrap() {
                        Some(g) => break g.release().await.unwrap(),
                        None => tokio::task::yield_now().await,
                    }
                }
            })
            .await
            .expect("the dropped hold is released");
        }
    }
    assert!(owners.len() <= 2, "owners piled up: {}", owners.len());
}

/// Over a network a release of an ended hold may still be applied late (a
/// release that timed out against a paused server member, then succeeded on
/// another, runs again when the paused member resumes): it must never end a
/// newer hold, so the owner of a release that needed a retry is never
/// reused, whether the reply was lost (the release was applied) or the
/// request never arrived.
#[tokio::test]
async fn an_owner_whose_release_was_retried_is_never_reused() {
    for fault in [Fault::LoseReply, Fault::Timeout] {
        let backend =
            Arc::new(FaultyLockBackend::new(Arc::new(MemoryBackend::new())).distributed(true));
        let client = LockClient::new(backend.clone());
        for kind in ["lease", "fair"] {
            let lock = match kind {
                "lease" => client.lock(format!("retried-{kind}")).build(),
                _ => client.lock(format!("retried-{kind}")).fair().build(),
            };
            let guard = lock.acquire().await.unwrap();
            let first = guard.owner().clone();
            // A dequeue counts as a release for the fault rules.
            backend.inject_times(LockOp::Release, fault, 1);
            guard.release().await.unwrap();
            backend.clear();
            for _ in 0..3 {
                let again = lock.acquire().await.unwrap();
                assert_ne!(
                    again.owner(),
                    &first,
                    "{kind}, {fault:?}: the owner of a retried release was reused"
                );
                again.release().await.unwrap();
            }
        }
    }
}
