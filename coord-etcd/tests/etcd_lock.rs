//! etcd-specific lock behaviour: create-revision tokens, shared leases,
//! expiry of a holder that stops renewing, connection errors, restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::testkit::{ServerProcess, unique_name, within};
use coord_core::{AcquireOutcome, Error, LockBackend, LockClient, LockGrant, LockOwner, Settings};
use coord_etcd::EtcdBackend;
use coord_etcd::testkit::{EtcdHarness, EtcdServer};

fn owner(o: &str) -> LockOwner {
    LockOwner::new("etcdtest", o).unwrap()
}

async fn grant(b: &EtcdBackend, name: &str, o: &LockOwner, ttl: Duration) -> LockGrant {
    match b.try_acquire(name, o, ttl).await.unwrap() {
        AcquireOutcome::Granted(g) => g,
        held => panic!("expected a grant of {name}, got {held:?}"),
    }
}

async fn kv(b: &EtcdBackend, name: &str) -> Option<etcd_client::KeyValue> {
    let mut kv = b.client().kv_client();
    let resp = kv.get(b.lock_key(name), None).await.unwrap();
    resp.kvs().first().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_create_revisions_and_increase() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("create-revision");
    let mut last = 0;
    for i in 0..3 {
        let o = owner(&format!("o{i}"));
        let g = grant(&b, &name, &o, Duration::from_secs(10)).await;
        // Valid for at most 5/6 of the lease: renewals can share keep-alives.
        assert!(g.ttl <= Duration::from_millis(8_334), "{:?}", g.ttl);
        assert!(g.ttl >= Duration::from_secs(10) / 2, "{:?}", g.ttl);
        let stored = kv(&b, &name).await.expect("the lock key exists");
        assert_eq!(g.token.as_u64(), stored.create_revision() as u64);
        assert_eq!(stored.value_str().unwrap(), o.as_str());
        assert!(g.token.as_u64() > last, "{} after {last}", g.token);
        last = g.token.as_u64();
        b.release(&name, &o).await.unwrap();
    }
    assert!(kv(&b, &name).await.is_none(), "release deletes the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_per_ttl_bucket_is_reused() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let o = owner("reuse");
    let names: Vec<_> = (0..5).map(|_| unique_name("lease-reuse")).collect();
    for round in 0..2 {
        for name in &names {
            grant(&b, name, &o, Duration::from_millis(9_500)).await;
        }
        let leases = b.leases();
        assert_eq!(leases.len(), 1, "round {round}: {leases:?}");
        for name in &names {
            assert_eq!(kv(&b, name).await.unwrap().lease(), leases[0].id);
            b.release(name, &o).await.unwrap();
        }
    }
    // A different TTL bucket gets its own lease.
    let name = unique_name("lease-reuse");
    grant(&b, &name, &o, Duration::from_secs(3)).await;
    assert_eq!(b.leases().len(), 2, "{:?}", b.leases());
    b.release(&name, &o).await.unwrap();
    // Releasing leaves the shared lease alive; close() revokes it.
    let id = b.leases()[0].id;
    b.close().await;
    assert!(b.leases().is_empty());
    let mut lease = b.client().lease_client();
    let ttl = lease.time_to_live(id, None).await.unwrap();
    assert!(ttl.ttl() <= 0, "revoked lease still has ttl {}", ttl.ttl());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_renewing_loses_the_lock_after_its_ttl() {
    let h = EtcdHarness::start().await;
    let (a, b) = (h.connect().await.unwrap(), h.connect().await.unwrap());
    let name = unique_name("expiry");
    let ttl = Duration::from_secs(2);
    let (oa, ob) = (owner("a"), owner("b"));
    let started = Instant::now();
    let g = grant(&a, &name, &oa, ttl).await;
    assert!(g.ttl <= ttl, "grant ttl {:?} outlasts the lease", g.ttl);
    assert!(matches!(
        b.try_acquire(&name, &ob, ttl).await.unwrap(),
        AcquireOutcome::Held { .. }
    ));
    // The waiter is woken by the expiry (a DELETE event), not by polling.
    let mut events = b.subscribe(&name).await.unwrap();
    within(
        ttl + Duration::from_secs(2),
        "the expiry is seen",
        events.next(),
    )
    .await;
    let gb = grant(&b, &name, &ob, ttl).await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(gb.token > g.token);
    match a.renew(&name, &oa, g.ttl).await {
        Err(Error::NotHeld(_)) => {}
        other => panic!("renew after expiry: expected NotHeld, got {other:?}"),
    }
    b.release(&name, &ob).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_the_lease_alive_past_its_ttl() {
    let h = EtcdHarness::start().await;
    let (a, b) = (h.connect().await.unwrap(), h.connect().await.unwrap());
    let name = unique_name("renewed");
    let (oa, ob) = (owner("a"), owner("b"));
    let g = grant(&a, &name, &oa, Duration::from_secs(2)).await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        tokio::time::sleep(g.ttl / 3).await;
        a.renew(&name, &oa, g.ttl).await.unwrap();
        assert!(matches!(
            b.try_acquire(&name, &ob, g.ttl).await.unwrap(),
            AcquireOutcome::Held { .. }
        ));
    }
    a.release(&name, &oa).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_holds_a_lock_for_many_ttls() {
    let h = EtcdHarness::start().await;
    let a = LockClient::new(Arc::new(h.connect().await.unwrap()));
    let b = LockClient::new(Arc::new(h.connect().await.unwrap()));
    let name = unique_name("watchdog");
    let ttl = Duration::from_secs(2);
    let guard = a.lock(&name).ttl(ttl).build().acquire().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(guard.is_held());
    assert!(
        b.lock(&name)
            .ttl(ttl)
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    guard.release().await.unwrap();
    let again = b.lock(&name).ttl(ttl).build().try_acquire().await.unwrap();
    again.expect("free after release").release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reacquire_with_another_ttl_moves_the_lock_to_that_lease() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("regrant");
    let o = owner("same");
    let first = grant(&b, &name, &o, Duration::from_secs(3)).await;
    let second = grant(&b, &name, &o, Duration::from_secs(10)).await;
    assert_eq!(first.token, second.token);
    let ten = b
        .leases()
        .into_iter()
        .find(|l| l.ttl == Duration::from_secs(10))
        .unwrap();
    assert_eq!(kv(&b, &name).await.unwrap().lease(), ten.id);
    b.renew(&name, &o, second.ttl).await.unwrap();
    b.release(&name, &o).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_closed_port_is_unavailable() {
    let port = ServerProcess::free_port().unwrap();
    let mut settings = Settings::default();
    settings.connect_timeout = Duration::from_secs(1);
    let url = format!("etcd://127.0.0.1:{port}");
    let started = Instant::now();
    let err = EtcdBackend::connect(&url, &settings).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("check that etcd is running"), "{msg}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bad_urls_are_invalid_arguments() {
    let settings = Settings::default();
    for url in [
        "etcd://",
        "etcd://h:port",
        "etcd://h1:2379,,h2:2379",
        "http://h:2379",
    ] {
        match EtcdBackend::connect(url, &settings).await {
            Err(Error::InvalidArgument(_)) => {}
            other => panic!("{url}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_across_a_server_restart() {
    let server = EtcdServer::start().unwrap();
    if !server.is_spawned() {
        // COORD_TEST_ETCD_ENDPOINTS names a server this test cannot restart.
        return;
    }
    let mut settings = Settings::default();
    settings.request_timeout = Duration::from_secs(2);
    let b = EtcdBackend::connect(&server.url(), &settings)
        .await
        .unwrap();
    let name = unique_name("restart");
    let o = owner("r");
    let before = grant(&b, &name, &o, Duration::from_secs(5)).await;
    b.release(&name, &o).await.unwrap();
    server.restart().unwrap();
    // The same client reconnects by itself.
    let after = within(Duration::from_secs(15), "acquire after restart", async {
        loop {
            match b.try_acquire(&name, &o, Duration::from_secs(5)).await {
                Ok(AcquireOutcome::Granted(g)) => break g,
                Ok(held) => panic!("nobody holds it, got {held:?}"),
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("not retryable after restart: {e:?}"),
            }
        }
    })
    .await;
    assert!(after.token > before.token);
    b.release(&name, &o).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_gives_retryable_errors_then_recovers() {
    let server = EtcdServer::start().unwrap();
    if !server.is_spawned() {
        return;
    }
    let mut settings = Settings::default();
    settings.request_timeout = Duration::from_millis(500);
    let b = EtcdBackend::connect(&server.url(), &settings)
        .await
        .unwrap();
    let name = unique_name("pause");
    let o = owner("p");
    let g = grant(&b, &name, &o, Duration::from_secs(10)).await;
    server.pause().unwrap();
    let err = b
        .try_acquire(&name, &o, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(!b.ping().await.is_healthy());
    server.resume().unwrap();
    let again = grant(&b, &name, &o, Duration::from_secs(10)).await;
    assert_eq!(again.token, g.token);
    b.release(&name, &o).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_acquisitions_share_one_lease() {
    let h = EtcdHarness::start().await;
    let b = Arc::new(h.connect().await.unwrap());
    let o = owner("many");
    let names: Vec<_> = (0..16).map(|_| unique_name("concurrent-grant")).collect();
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let (b, o, name) = (b.clone(), o.clone(), name.clone());
            tokio::spawn(async move { grant(&b, &name, &o, Duration::from_secs(7)).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.leases().len(), 1, "{:?}", b.leases());
    for name in &names {
        b.release(name, &o).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_outlives_the_request_timeout() {
    let h = EtcdHarness::start().await;
    let mut settings = Settings::default();
    settings.request_timeout = Duration::from_millis(500);
    let b = EtcdBackend::connect(&h.server().url(), &settings)
        .await
        .unwrap();
    let name = unique_name("long-watch");
    let o = owner("w");
    grant(&b, &name, &o, Duration::from_secs(10)).await;
    let mut events = b.subscribe(&name).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.release(&name, &o).await.unwrap();
    let woke = within(Duration::from_secs(2), "the release is seen", events.next()).await;
    assert!(woke, "the watch ended instead of reporting the release");
}
