//! Semaphores: at most N holders, each permit with its own token.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;
use crate::testkit::kinds::client;
use crate::testkit::{LockHarness, unique_name, within};

/// 32 contenders on a 3-permit semaphore: never more than 3 inside, and
/// every grant's token is distinct.
pub async fn never_more_than_n_holders(h: &dyn LockHarness) {
    const PERMITS: usize = 3;
    let name = unique_name("semaphore-limit");
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let clients = [
        client(h).await,
        client(h).await,
        client(h).await,
        client(h).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..32 {
        let lock = clients[i % clients.len()]
            .lock(name.clone())
            .semaphore(PERMITS as u32)
            .ttl(Duration::from_secs(30))
            .wait_timeout(Duration::from_secs(120))
            .build();
        let (inside, peak, tokens) = (inside.clone(), peak.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let g = lock.acquire().await.expect("permit");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokens.lock().unwrap().push(g.fencing_token());
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.expect("release");
            }
        }));
    }
    within(Duration::from_secs(180), "all contenders finish", async {
        for t in tasks {
            t.await.expect("contender");
        }
    })
    .await;
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= PERMITS,
        "{peak} holders at once on {PERMITS} permits"
    );
    assert!(peak >= 2, "permits were never shared (peak {peak})");
    let tokens = tokens.lock().unwrap();
    let distinct: HashSet<_> = tokens.iter().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "every permit grant has its own token"
    );
    assert_eq!(tokens.len(), 96);
}

/// N permits give N distinct tokens; the N+1th waits; a zero-permit
/// semaphore is an invalid argument.
pub async fn each_permit_has_its_own_token(h: &dyn LockHarness) {
    let name = unique_name("semaphore-tokens");
    let c = client(h).await;
    let sem = c
        .lock(name.clone())
        .semaphore(3)
        .ttl(Duration::from_secs(30))
        .build();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            sem.try_acquire()
                .await
                .expect("try")
                .expect("a permit is free"),
        );
    }
    let tokens: HashSet<_> = held.iter().map(|g| g.fencing_token()).collect();
    assert_eq!(tokens.len(), 3);
    assert!(
        sem.try_acquire().await.expect("try").is_none(),
        "all permits taken"
    );
    let newest = held.iter().map(|g| g.fencing_token()).max().unwrap();
    held.pop().unwrap().release().await.expect("release one");
    let next = sem
        .try_acquire()
        .await
        .expect("try")
        .expect("the freed permit");
    assert!(next.fencing_token() > newest);
    let zero = c
        .lock(name.clone())
        .semaphore(0)
        .build()
        .try_acquire()
        .await;
    assert!(matches!(zero, Err(Error::InvalidArgument(_))), "{zero:?}");
    next.release().await.expect("release");
    for g in held {
        g.release().await.expect("release");
    }
}
