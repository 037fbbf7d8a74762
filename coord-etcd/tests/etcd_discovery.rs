//! What is specific to service discovery on etcd: a client's registrations
//! share one lease (and one keep-alive per period), instances survive an
//! etcd restart and come back after their lease was lost, watches resume
//! after a compaction, 10,000 instances list and watch, the key layout
//! keeps look-alike services apart and skips what is not a registration.

use std::sync::Arc;
use std::time::Duration;

use coord_core::LockBackend;
use coord_core::discovery::{
    DiscoveryClient, RegistrationEvent, RegistryBackend, RegistryChange, RegistryEvent,
    ServiceInstance,
};
use coord_core::testkit::{unique_name, within};
use coord_etcd::testkit::EtcdHarness;
use coord_etcd::{EtcdBackend, Settings};
use etcd_client::{DeleteOptions, LeaseTimeToLiveOptions};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn unique_service(case: &str) -> String {
    unique_name(case).replace('/', "-")
}

fn instance(service: &str, id: &str, port: u16) -> ServiceInstance {
    ServiceInstance::new(service, id, format!("127.0.0.1:{port}"))
}

/// A client whose requests give up after `timeout` (renewals fail fast
/// while etcd is down).
async fn connect(h: &EtcdHarness, timeout: Duration) -> EtcdBackend {
    let mut settings = Settings::default();
    settings.request_timeout = timeout;
    EtcdBackend::connect(&h.server().url(), &settings)
        .await
        .expect("connect")
}

/// A harness over a server of its own that the test may stop and freeze.
async fn own_server() -> EtcdHarness {
    let h = EtcdHarness::start_isolated().await;
    assert!(
        h.server().is_spawned(),
        "this test stops or freezes etcd, which it can only do to a server it \
         spawned: unset COORD_TEST_ETCD_ENDPOINTS"
    );
    h
}

/// Runs a blocking server operation (stop, restart) off the runtime.
async fn on_server(
    h: &EtcdHarness,
    op: fn(&coord_etcd::testkit::EtcdServer) -> coord_core::Result<()>,
) {
    let h = h.clone();
    tokio::task::spawn_blocking(move || op(h.server()))
        .await
        .expect("the server operation ran")
        .expect("the server operation succeeded");
}

/// etcd's count of lease keep-alives (`etcd_debugging_lease_renewed_total`),
/// from its `/metrics`.
async fn renewals_seen_by_etcd(h: &EtcdHarness) -> u64 {
    let mut conn = tokio::net::TcpStream::connect(&h.server().endpoints()[0])
        .await
        .expect("metrics connection");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .await
        .expect("metrics request");
    let mut body = String::new();
    conn.read_to_string(&mut body).await.expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_lease_renewed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("etcd reports etcd_debugging_lease_renewed_total") as u64
}

async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<RegistrationEvent>,
    limit: Duration,
    what: &str,
) -> RegistrationEvent {
    within(limit, what, events.recv()).await.expect("event")
}

/// 100 instances registered through one client live on one etcd lease
/// (etcd's own lease list says so), and their renewals cost about one
/// keep-alive per period, not one per instance; a second TTL gets a
/// second lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_instances_of_one_client_share_one_lease() {
    // A server of its own: its lease list holds this client's leases only.
    let h = own_server().await;
    let backend = h.connect().await.unwrap();
    let ttl = Duration::from_secs(3);
    let d = DiscoveryClient::new(Arc::new(backend.clone()))
        .with_ttl(ttl)
        .unwrap();
    let svc = unique_service("one-lease");
    let regs = futures::future::try_join_all(
        (0..100u16).map(|n| d.register(instance(&svc, &format!("i-{n:03}"), 1000 + n))),
    )
    .await
    .expect("register 100");

    let ours = backend.registry_leases();
    assert_eq!(ours.len(), 1, "one lease for 100 instances: {ours:?}");
    let mut leases = backend.client().lease_client();
    let in_etcd: Vec<i64> = leases
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(in_etcd, [ours[0].id], "etcd holds exactly this one lease");
    let attached = leases
        .time_to_live(ours[0].id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(attached.keys().len(), 100, "every instance is on it");
    println!(
        "100 instances on {} lease (id {:x}, TTL {:?})",
        in_etcd.len(),
        ours[0].id,
        ours[0].ttl
    );

    // Three TTLs of renewals (each registration renews every second): the
    // instances stay, on the same lease, for a handful of keep-alives.
    let before = renewals_seen_by_etcd(&h).await;
    tokio::time::sleep(ttl * 3).await;
    let keep_alives = renewals_seen_by_etcd(&h).await - before;
    println!(
        "{keep_alives} keep-alives in {:?} for 100 instances",
        ttl * 3
    );
    assert!(
        (1..=15).contains(&keep_alives),
        "about one keep-alive per second for 100 renewals per second, got {keep_alives}"
    );
    assert_eq!(d.instances(&svc).await.unwrap().len(), 100);
    assert_eq!(backend.registry_leases(), ours, "still the same lease");
    assert!(regs.iter().all(|r| r.reregistrations() == 0));

    let _other = d
        .register_with_ttl(instance(&svc, "longer", 1), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        backend.registry_leases().len(),
        2,
        "another TTL bucket, another lease"
    );
}

/// etcd killed and restarted with its data, after being down longer than
/// the TTL: etcd restores the client's lease, so the instance was never
/// lost. Its registration reports the failed renewals, then the recovery,
/// and never had to register again; a watcher on another client is
/// current again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_survives_an_etcd_restart() {
    let h = own_server().await;
    let ttl = Duration::from_secs(2);
    let writer = DiscoveryClient::new(Arc::new(connect(&h, Duration::from_millis(500)).await));
    let reader = DiscoveryClient::new(Arc::new(connect(&h, Duration::from_millis(500)).await));
    let svc = unique_service("restart");
    let reg = writer
        .register_with_ttl(instance(&svc, "a", 1), ttl)
        .await
        .unwrap();
    let mut events = reg.events();
    let watcher = reader.watch(&svc).await.unwrap();

    on_server(&h, |s| s.stop()).await;
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    on_server(&h, |s| s.restart()).await;

    let failed = next_event(&mut events, Duration::from_secs(5), "a failed renewal").await;
    assert!(
        matches!(failed, RegistrationEvent::RenewFailed { .. }),
        "{failed:?}"
    );
    let recovered = next_event(&mut events, Duration::from_secs(10), "the recovery").await;
    assert_eq!(recovered, RegistrationEvent::Recovered);
    assert_eq!(reg.reregistrations(), 0, "etcd restored the lease");
    let mut rx = watcher.subscribe();
    within(
        Duration::from_secs(10),
        "the watcher is current again",
        rx.wait_for(|s| !s.stale && s.instances.len() == 1),
    )
    .await
    .unwrap();
    // Renewals keep the restored lease alive.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(reader.instances(&svc).await.unwrap().len(), 1);
}

/// etcd frozen (SIGSTOP) for longer than the TTL: when it runs again it
/// expires the client's lease and the instance with it. The registration
/// registers it again on a new lease once etcd answers (`Reregistered`),
/// and a watcher sees it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_lease_was_lost_registers_again() {
    let h = own_server().await;
    let ttl = Duration::from_secs(2);
    let backend = connect(&h, Duration::from_millis(500)).await;
    let writer = DiscoveryClient::new(Arc::new(backend.clone()));
    let reader = DiscoveryClient::new(Arc::new(connect(&h, Duration::from_millis(500)).await));
    let svc = unique_service("lost-lease");
    let reg = writer
        .register_with_ttl(instance(&svc, "a", 1), ttl)
        .await
        .unwrap();
    let lost = backend.registry_leases();
    let mut events = reg.events();
    let watcher = reader.watch(&svc).await.unwrap();

    h.server().pause().unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(1500)).await;
    h.server().resume().unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(&mut events, left, "the registration registers again").await {
            RegistrationEvent::Reregistered => break,
            RegistrationEvent::RenewFailed { .. } | RegistrationEvent::Recovered => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reg.reregistrations(), 1);
    let now = backend.registry_leases();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0].id, lost[0].id, "on a new lease");
    assert_eq!(reader.instances(&svc).await.unwrap().len(), 1);
    let mut rx = watcher.subscribe();
    within(
        Duration::from_secs(10),
        "the watcher sees the instance back",
        rx.wait_for(|s| !s.stale && s.instances.len() == 1),
    )
    .await
    .unwrap();
}

/// A lease revoked behind the client's back (an operator, `etcdctl lease
/// revoke`) takes its instances; each registration puts its own back, all
/// on one new lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_replaced_by_one_new_lease() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let d = DiscoveryClient::new(Arc::new(backend.clone()))
        .with_ttl(Duration::from_secs(2))
        .unwrap();
    let svc = unique_service("revoked");
    let mut regs = Vec::new();
    for n in 0..3u16 {
        regs.push(
            d.register(instance(&svc, &format!("i-{n}"), n + 1))
                .await
                .unwrap(),
        );
    }
    let mut events: Vec<_> = regs.iter().map(|r| r.events()).collect();
    let old = backend.registry_leases();
    assert_eq!(old.len(), 1);
    h.connect()
        .await
        .unwrap()
        .client()
        .lease_client()
        .revoke(old[0].id)
        .await
        .unwrap();
    for e in &mut events {
        let event = next_event(
            e,
            Duration::from_secs(3),
            "each registration registers again",
        )
        .await;
        assert_eq!(event, RegistrationEvent::Reregistered);
    }
    assert_eq!(d.instances(&svc).await.unwrap().len(), 3);
    let new = backend.registry_leases();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new[0].id, old[0].id);
}

/// A watch from a revision etcd compacted starts with a gap (the watcher
/// must list again); a watch broken by a restart ends; a watcher follows
/// through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_a_compaction() {
    let h = own_server().await;
    let backend = connect(&h, Duration::from_secs(2)).await;
    let ttl = Duration::from_secs(30);
    let svc = unique_service("compacted");
    backend
        .register(&instance(&svc, "a", 1), "o", ttl)
        .await
        .unwrap();
    let listing = RegistryBackend::list_instances(&backend, &svc)
        .await
        .unwrap();
    let reader = DiscoveryClient::new(Arc::new(connect(&h, Duration::from_secs(2)).await));
    let watcher = reader.watch(&svc).await.unwrap();

    // A live watch, for the restart below.
    let mut live = backend
        .watch_instances(&svc, listing.revision)
        .await
        .unwrap();
    backend
        .register(&instance(&svc, "b", 2), "o", ttl)
        .await
        .unwrap();
    let b = within(Duration::from_secs(5), "the live watch sees b", live.next())
        .await
        .expect("an event");
    let RegistryEvent::Changed { revision, change } = b else {
        panic!("{b:?}")
    };
    assert!(revision > listing.revision);
    assert!(
        matches!(change, RegistryChange::Put(ref i) if i.id == "b"),
        "{change:?}"
    );

    let mut kv = backend.client().kv_client();
    let now = kv.put(format!("{svc}-compact"), "", None).await.unwrap();
    let at = now.header().unwrap().revision();
    kv.compact(at, None).await.unwrap();
    let mut resumed = backend
        .watch_instances(&svc, listing.revision)
        .await
        .unwrap();
    assert_eq!(resumed.next().await, Some(RegistryEvent::Gap));
    assert_eq!(resumed.next().await, None, "nothing after the gap");

    on_server(&h, |s| s.restart()).await;
    let ended = within(Duration::from_secs(10), "the live watch ends", async {
        loop {
            match live.next().await {
                None | Some(RegistryEvent::Gap) => break,
                Some(_) => {}
            }
        }
    });
    ended.await;
    backend
        .register(&instance(&svc, "c", 3), "o", ttl)
        .await
        .unwrap();
    let mut rx = watcher.subscribe();
    within(
        Duration::from_secs(10),
        "the watcher follows after the restart",
        rx.wait_for(|s| s.instances.len() == 3 && !s.stale),
    )
    .await
    .unwrap();
}

/// 10,000 instances of one service (one client, one lease): they list in
/// pages as one snapshot, sorted; a watcher holds them all; revoking the
/// lease (closing the client) removes them in one revision, which a watch
/// delivers whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_instances_in_one_service() {
    const N: usize = 10_000;
    let h = own_server().await;
    let backend = Arc::new(connect(&h, Duration::from_secs(10)).await);
    let svc = unique_service("ten-thousand");
    let ttl = Duration::from_secs(120);
    let started = std::time::Instant::now();
    futures::stream::iter(0..N)
        .map(|n| {
            let (backend, svc) = (backend.clone(), svc.clone());
            async move {
                let i = instance(&svc, &format!("i-{n:05}"), 1 + (n % 60_000) as u16)
                    .metadata("rack", format!("r{}", n % 40));
                backend.register(&i, &format!("owner-{n}"), ttl).await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("register 10,000");
    println!("registered {N} in {:?}", started.elapsed());
    assert_eq!(backend.registry_leases().len(), 1, "on one lease");

    let started = std::time::Instant::now();
    let listing = RegistryBackend::list_instances(&*backend, &svc)
        .await
        .unwrap();
    println!(
        "listed {} in {:?}",
        listing.instances.len(),
        started.elapsed()
    );
    assert_eq!(listing.instances.len(), N);
    assert!(listing.instances.windows(2).all(|w| w[0].id < w[1].id));
    assert!(backend.services().await.unwrap().contains(&svc));

    let reader = DiscoveryClient::new(Arc::new(connect(&h, Duration::from_secs(10)).await));
    let watcher = reader.watch(&svc).await.unwrap();
    assert_eq!(watcher.snapshot().instances.len(), N);

    let mut events = backend
        .watch_instances(&svc, listing.revision)
        .await
        .unwrap();
    LockBackend::close(&*backend).await;
    let mut removed = 0;
    within(Duration::from_secs(30), "every removal is watched", async {
        while removed < N {
            match events.next().await {
                Some(RegistryEvent::Changed {
                    change: RegistryChange::Removed { .. },
                    ..
                }) => removed += 1,
                other => panic!("{other:?} after {removed} removals"),
            }
        }
    })
    .await;
    assert!(
        RegistryBackend::list_instances(&*backend, &svc)
            .await
            .unwrap()
            .instances
            .is_empty()
    );
}

/// Services whose names extend each other stay apart, and what is under
/// the registry's keys without being a registration (a key with no id, an
/// id with a `/`, a corrupted value, a record under another id's key) is
/// skipped by listings and watches, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_layout_keeps_services_apart_and_skips_foreign_keys() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let d = DiscoveryClient::new(Arc::new(backend.clone()));
    let svc = unique_service("layout");
    let names = [
        svc.clone(),
        format!("{svc}-admin"),
        format!("{svc}.v2"),
        format!("{svc}_x"),
    ];
    let mut regs = Vec::new();
    for (n, name) in names.iter().enumerate() {
        regs.push(d.register(instance(name, "a", n as u16 + 1)).await.unwrap());
    }
    let watcher = d.watch(&svc).await.unwrap();

    let prefix = backend.registry_prefix(&svc);
    let record = coord_core::discovery::encode_record(&instance(&svc, "a", 9), "intruder").unwrap();
    let foreign = [
        (prefix.trim_end_matches('/').to_owned(), b"no id".to_vec()),
        (format!("{prefix}x/y"), b"an id with a slash".to_vec()),
        (format!("{prefix}corrupt"), b"{not json".to_vec()),
        (format!("{prefix}alias"), record),
    ];
    let mut kv = backend.client().kv_client();
    for (key, value) in &foreign {
        kv.put(key.as_str(), value.clone(), None).await.unwrap();
    }
    backend
        .register(&instance(&svc, "b", 2), "o", Duration::from_secs(30))
        .await
        .unwrap();

    for (n, name) in names.iter().enumerate() {
        let listed = d.instances(name).await.unwrap();
        assert_eq!(listed.len(), 1 + usize::from(n == 0), "{name}: {listed:?}");
        assert_eq!(listed[0].addr, format!("127.0.0.1:{}", n + 1), "{name}");
    }
    let services = backend.services().await.unwrap();
    for name in &names {
        assert!(services.contains(name), "{name} in {services:?}");
    }
    assert!(
        services.windows(2).all(|w| w[0] < w[1]),
        "sorted and distinct: {services:?}"
    );
    let mut rx = watcher.subscribe();
    within(
        Duration::from_secs(5),
        "the watcher sees b and nothing foreign",
        rx.wait_for(|s| s.instances.len() == 2),
    )
    .await
    .unwrap();
    let ids: Vec<_> = watcher
        .snapshot()
        .instances
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(watcher.snapshot().get("a").unwrap().addr, "127.0.0.1:1");

    let cleanup = DeleteOptions::new().with_prefix();
    kv.delete(prefix.trim_end_matches('/'), Some(cleanup))
        .await
        .unwrap();
}

/// Closing the backend (what `Coord::shutdown` ends with) revokes the
/// registry's leases: the client's instances go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_backend_removes_its_instances() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let d = DiscoveryClient::new(Arc::new(backend.clone()));
    let svc = unique_service("close");
    let regs = vec![
        d.register(instance(&svc, "a", 1)).await.unwrap(),
        d.register(instance(&svc, "b", 2)).await.unwrap(),
    ];
    LockBackend::close(&backend).await;
    assert!(backend.registry_leases().is_empty());
    let other = h.connect().await.unwrap();
    assert!(
        RegistryBackend::list_instances(&other, &svc)
            .await
            .unwrap()
            .instances
            .is_empty()
    );
    for r in regs {
        r.abandon();
    }
}
