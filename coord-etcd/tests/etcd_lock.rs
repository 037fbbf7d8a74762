//! etcd-specific lock behaviour: create-revision tokens, shared leases,
//! expiry of a holder that stops renewing, connection errors, restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::testkit::{ServerProcess, unique_name, within};
use coord_core::{AcquireOutcome, Error, LockBackend, LockClient, LockGrant, LockOwner, Settings};
use coord_etcd::EtcdBackend;
use coord_etcd::testkit::{EtcdHarness, EtcdServer};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn};

fn owner(o: &str) -> LockOwner {
    LockOwner::new("etcdtest", o).unwrap()
}

async fn grant(b: &EtcdBackend, name: &str, o: &LockOwner, ttl: Duration) -> LockGrant {
    match b.try_acquire(name, o, ttl).await.unwrap() {
        AcquireOutcome::Granted(g) => g,
        held => panic!("expected a grant of {name}, got {held:?}"),
    }
}

/// Every key under lock `name`'s prefix.
async fn keys(b: &EtcdBackend, name: &str) -> Vec<etcd_client::KeyValue> {
    let mut kv = b.client().kv_client();
    let options = GetOptions::new().with_prefix();
    let resp = kv.get(b.lock_prefix(name), Some(options)).await.unwrap();
    resp.kvs().to_vec()
}

/// The holder key of lock `name`; there is never more than one.
async fn kv(b: &EtcdBackend, name: &str) -> Option<etcd_client::KeyValue> {
    let mut all = keys(b, name).await;
    assert!(all.len() <= 1, "several keys under lock {name:?}: {all:?}");
    all.pop()
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
        assert_eq!(stored.key_str().unwrap(), b.lock_key(&name, &o));
        assert!(stored.key_str().unwrap().ends_with(&format!("\0{o}")));
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

/// The acquire transaction relies on etcd comparing a key *range*: an empty
/// range compares like one absent key (create revision 0), a non-empty one
/// only if every key in it matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_range_compares_as_absent_and_a_non_empty_one_does_not() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let mut kv = b.client().kv_client();
    let base = unique_name("range-compare");
    let (prefix, end) = (format!("{base}\0"), format!("{base}\u{1}"));
    let free = || {
        Txn::new().when([
            Compare::create_revision(prefix.as_str(), CompareOp::Equal, 0).with_range(end.as_str()),
        ])
    };
    assert!(kv.txn(free()).await.unwrap().succeeded(), "empty range");
    // Keys just outside the range do not count.
    for outside in [
        base.clone(),
        format!("{base}/b"),
        end.clone(),
        format!("{end}\0x"),
    ] {
        kv.put(outside.as_str(), "", None).await.unwrap();
    }
    assert!(
        kv.txn(free()).await.unwrap().succeeded(),
        "only keys outside"
    );
    kv.put(format!("{prefix}someone"), "", None).await.unwrap();
    assert!(!kv.txn(free()).await.unwrap().succeeded(), "one key inside");
    kv.put(format!("{prefix}other"), "", None).await.unwrap();
    assert!(
        !kv.txn(free()).await.unwrap().succeeded(),
        "two keys inside"
    );
    kv.delete(
        prefix.as_str(),
        Some(etcd_client::DeleteOptions::new().with_range(end.as_str())),
    )
    .await
    .unwrap();
    assert!(kv.txn(free()).await.unwrap().succeeded(), "emptied again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_whose_names_share_a_prefix_are_independent() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let base = unique_name("nested");
    let names = [
        base.clone(),
        format!("{base}/b"),
        format!("{base}\u{1}"),
        format!("{base}b"),
    ];
    let ttl = Duration::from_secs(10);
    let owners: Vec<_> = (0..names.len()).map(|i| owner(&format!("n{i}"))).collect();
    for (name, o) in names.iter().zip(&owners) {
        grant(&b, name, o, ttl).await;
    }
    for (name, o) in names.iter().zip(&owners) {
        assert_eq!(keys(&b, name).await.len(), 1, "{name:?}");
        // Another owner cannot take any of them.
        assert!(matches!(
            b.try_acquire(name, &owner("intruder"), ttl).await.unwrap(),
            AcquireOutcome::Held { .. }
        ));
        b.renew(name, o, ttl / 2).await.unwrap();
    }
    // Releasing, watching and force-releasing `base` leaves the others alone.
    let mut events = b.subscribe(&base).await.unwrap();
    for (name, o) in names.iter().zip(&owners).skip(1) {
        b.release(name, o).await.unwrap();
        grant(&b, name, o, ttl).await;
    }
    let woke = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(
        woke.is_err(),
        "a release of another lock woke a waiter of {base:?}"
    );
    assert!(b.force_release(&base).await.unwrap());
    assert!(
        within(
            Duration::from_secs(2),
            "the force-release is seen",
            events.next()
        )
        .await
    );
    assert!(kv(&b, &base).await.is_none());
    for (name, o) in names.iter().zip(&owners).skip(1) {
        assert!(kv(&b, name).await.is_some(), "{name:?} survived");
        b.release(name, o).await.unwrap();
    }
    assert!(
        !b.force_release(&base).await.unwrap(),
        "nothing left to remove"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_deletes_only_the_owners_key_and_reports_not_held_when_it_is_gone() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("plain-delete");
    let (o, other) = (owner("holder"), owner("other"));
    let ttl = Duration::from_secs(10);
    grant(&b, &name, &o, ttl).await;
    // Another owner's release deletes nothing (its key does not exist).
    match b.release(&name, &other).await {
        Err(Error::NotHeld(_)) => {}
        r => panic!("release by another owner: expected NotHeld, got {r:?}"),
    }
    assert!(kv(&b, &name).await.is_some(), "the holder's key is intact");
    // The holder's key vanishes behind its back (an expiry, an admin):
    // release and renew say NotHeld.
    let mut client = b.client().kv_client();
    let deleted = client.delete(b.lock_key(&name, &o), None).await.unwrap();
    assert_eq!(deleted.deleted(), 1);
    match b.renew(&name, &o, ttl).await {
        Err(Error::NotHeld(_)) => {}
        r => panic!("renew after the key is gone: expected NotHeld, got {r:?}"),
    }
    match b.release(&name, &o).await {
        Err(Error::NotHeld(_)) => {}
        r => panic!("release after the key is gone: expected NotHeld, got {r:?}"),
    }
    // A normal release removes the key.
    grant(&b, &name, &o, ttl).await;
    b.release(&name, &o).await.unwrap();
    assert!(kv(&b, &name).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_an_ambiguous_reply_is_granted_the_same_token() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("ambiguous");
    let o = owner("retry");
    let ttl = Duration::from_secs(10);
    let first = grant(&b, &name, &o, ttl).await;
    let key = kv(&b, &name).await.unwrap();
    // The reply was lost: the caller tries again.
    let second = grant(&b, &name, &o, ttl).await;
    assert_eq!(first.token, second.token);
    let again = kv(&b, &name).await.unwrap();
    assert_eq!(again.create_revision(), key.create_revision());
    assert_eq!(
        again.mod_revision(),
        key.mod_revision(),
        "same lease: no write"
    );
    // The key was made by an earlier client with its own lease (e.g. the
    // reply was lost and the lease pool since replaced): the retry moves it
    // onto this client's lease and keeps the token.
    let c = h.connect().await.unwrap();
    let third = grant(&c, &name, &o, ttl).await;
    assert_eq!(third.token, first.token);
    assert_eq!(kv(&c, &name).await.unwrap().lease(), c.leases()[0].id);
    c.renew(&name, &o, third.ttl).await.unwrap();
    // Someone else's key is never taken over, even when it was created by
    // hand with an empty value.
    c.release(&name, &o).await.unwrap();
    let mut client = b.client().kv_client();
    let other = owner("by-hand");
    let lease = b.leases()[0].id;
    client
        .put(
            b.lock_key(&name, &other),
            "",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    assert!(matches!(
        b.try_acquire(&name, &o, ttl).await.unwrap(),
        AcquireOutcome::Held { .. }
    ));
    b.release(&name, &other).await.unwrap();
    let fourth = grant(&b, &name, &o, ttl).await;
    assert!(fourth.token > first.token);
    b.release(&name, &o).await.unwrap();
}
