//! Safety under faults on etcd: holders of one lease lock write to one
//! fenced resource with their guards' fencing tokens, and a
//! [`FenceAudit`](coord_core::testkit::FenceAudit) of the accepted writes
//! must stay clean when etcd freezes (SIGSTOP) past the lease TTL, a
//! holder stalls past its TTL or its link to etcd is blackholed; without
//! fencing the audit must fail.

use std::sync::Arc;
use std::time::Duration;

use coord_core::testkit::{
    AfterHeal, AuditedResource, FaultProxy, Fencing, Workload,
    blackholed_holder_is_refused_by_fencing, paused_holder_is_refused_by_fencing,
    unfenced_paused_holder_breaks_the_audit, within,
};
use coord_core::{Error, LockClient};
use coord_etcd::testkit::{EtcdHarness, EtcdServer};
use coord_etcd::{EtcdBackend, Settings};

/// etcd's shortest lease: the TTL of every lock here.
const TTL: Duration = Duration::from_secs(2);

/// etcd freezes for longer than the lease TTL while a holder is in its
/// round: the holder must see `lost()` (its renewals get no answer), and
/// once etcd runs again (and expires the lease) the next holders work
/// without any violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_paused_past_the_lease_ttl() {
    // A server of its own: freezing the shared one would stall other tests.
    let server = EtcdServer::start().expect("etcd must start for this test");
    assert!(
        server.is_spawned(),
        "this test freezes etcd with SIGSTOP, which it can only do to a server it \
         spawned: unset COORD_TEST_ETCD_ENDPOINTS"
    );
    let mut settings = Settings::default();
    settings.request_timeout = Duration::from_millis(500);
    // A round outlasts a grant's validity (5/6 of the 2 s lease), so the
    // holder caught by the freeze is still working when its lease runs out.
    let w = Workload {
        rounds: 1,
        writes_per_round: 12,
        work: Duration::from_millis(150),
        ttl: TTL,
        ..Workload::new()
    };
    let resource = Arc::new(AuditedResource::new(Fencing::On));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let backend = EtcdBackend::connect(&server.url(), &settings)
            .await
            .unwrap();
        clients.push(LockClient::new(Arc::new(backend)));
    }
    let freeze = {
        let (resource, server) = (resource.clone(), &server);
        async move {
            resource.audit().wait_for_accepted(1).await;
            server.pause().expect("SIGSTOP etcd");
            // The fault itself: etcd stands still for longer than the lease TTL.
            tokio::time::sleep(TTL + Duration::from_secs(1)).await;
            server.resume().expect("SIGCONT etcd");
        }
    };
    let (report, ()) = within(
        Duration::from_secs(60),
        "the holders and the freeze finish",
        async { tokio::join!(w.run(clients, resource.clone()), freeze) },
    )
    .await;
    assert_eq!(report.rounds, 3, "{report:?}");
    assert!(
        report.lost >= 1,
        "the holder caught by the freeze must observe lost(): {report:?}"
    );
    assert_eq!(report.accepted, resource.value());

    // Recovery: a new holder gets the lock, with a token above every earlier
    // one, and its writes are accepted.
    let backend = EtcdBackend::connect(&server.url(), &settings)
        .await
        .unwrap();
    let lock = LockClient::new(Arc::new(backend))
        .lock(w.lock.clone())
        .ttl(TTL)
        .poll_interval(w.poll_interval)
        .build();
    let guard = within(
        Duration::from_secs(20),
        "a holder after the freeze acquires",
        async {
            loop {
                match lock.acquire().await {
                    Ok(guard) => break guard,
                    Err(e) if e.is_retryable() => tokio::time::sleep(w.poll_interval).await,
                    Err(e) => panic!("acquire after the freeze: {e}"),
                }
            }
        },
    )
    .await;
    let hold = format!("after/token{}", guard.fencing_token());
    for _ in 0..3 {
        resource
            .write(&hold, guard.fencing_token())
            .expect("the holder after the freeze writes");
    }
    guard.release().await.unwrap();

    let audit = resource.audit();
    assert_eq!(
        audit.violations(),
        Vec::<String>::new(),
        "{:?}",
        audit.writes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_holder_is_refused_by_fencing() {
    paused_holder_is_refused_by_fencing(&EtcdHarness::start().await, TTL).await;
}

/// The negative control: without fencing the paused holder's late write is
/// accepted, and the audit must report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_fencing_the_paused_holder_breaks_the_audit() {
    unfenced_paused_holder_breaks_the_audit(&EtcdHarness::start().await, TTL).await;
}

/// A hold that was signalled lost must not live on: etcd killed while a
/// lock is held, the guard sees `lost()`, etcd comes back with its data
/// (and the client's lease, which etcd restores), and the same client
/// acquires the same name again. It must not wait on its own stale key:
/// the grant comes within the TTL plus a second of etcd's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hold_does_not_block_its_own_client_after_a_restart() {
    let server = EtcdServer::start().expect("etcd must start for this test");
    assert!(
        server.is_spawned(),
        "this test kills etcd, which it can only do to a server it spawned: \
         unset COORD_TEST_ETCD_ENDPOINTS"
    );
    let ttl = Duration::from_secs(6);
    let mut settings = Settings::default();
    settings.request_timeout = Duration::from_millis(500);
    settings.connect_timeout = Duration::from_secs(1);
    let backend = EtcdBackend::connect(&server.url(), &settings)
        .await
        .expect("connect");
    let client = LockClient::new(Arc::new(backend));
    let lock = client.lock("restart/self-block").ttl(ttl).build();
    let guard = lock.acquire().await.expect("acquire");
    server.stop().expect("SIGKILL etcd");
    within(ttl * 2, "the guard is signalled lost", guard.lost()).await;
    server.restart().expect("restart etcd on its data");
    let back = tokio::time::Instant::now();
    let again = within(
        ttl + Duration::from_secs(1),
        "the same client acquires the name again",
        lock.acquire(),
    )
    .await
    .expect("acquire after the restart");
    assert!(again.fencing_token() > guard.fencing_token());
    eprintln!("granted again {:?} after etcd's return", back.elapsed());
    drop(guard);
    again.release().await.expect("release");
}

/// The holder's link to etcd is blackholed (through the testkit's
/// `FaultProxy`): its guard must be at risk, then lost, within the TTL; its
/// calls must time out, not hang; a client connected directly gets the
/// lock once the lease ends, and fencing refuses the old holder. Healed,
/// the holder's client works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_holder_is_refused_by_fencing() {
    let server = EtcdServer::shared().expect("etcd must start for this test");
    let upstream = tokio::net::lookup_host(&server.endpoints()[0])
        .await
        .expect("resolve the etcd endpoint")
        .next()
        .expect("an address of the etcd endpoint");
    let proxy = FaultProxy::start(upstream).expect("start the fault proxy");
    let request_timeout = Duration::from_millis(500);
    let mut settings = Settings::default();
    settings.request_timeout = request_timeout;
    settings.connect_timeout = Duration::from_secs(1);
    let proxied = EtcdBackend::connect(&format!("etcd://{}", proxy.addr()), &settings)
        .await
        .expect("connect through the proxy");
    let direct = EtcdBackend::connect(&server.url(), &settings)
        .await
        .expect("connect to etcd");
    let report = blackholed_holder_is_refused_by_fencing(
        &proxy,
        Arc::new(proxied),
        Arc::new(direct),
        Duration::from_secs(3),
        request_timeout,
        AfterHeal::Flow,
    )
    .await;
    assert!(
        matches!(report.failed_call, Error::Timeout(_)),
        "{:?}",
        report.failed_call
    );
    eprintln!("{report:?}");
}

/// Waiters ride out a restart: etcd is down for 2.5 s (longer than one
/// call's retries) and comes back with its data; a lease and a fair waiter,
/// with the default retry settings, each get their lock once the holder
/// releases it, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_ride_out_a_restart() {
    let h = EtcdHarness::start_isolated().await;
    assert!(
        h.server().is_spawned(),
        "this test kills etcd, which it can only do to a server it spawned: \
         unset COORD_TEST_ETCD_ENDPOINTS"
    );
    let holder = LockClient::new(Arc::new(h.connect().await.expect("connect")));
    let waiters = LockClient::new(Arc::new(h.connect().await.expect("connect")));
    let outage = async {
        h.server().stop().expect("kill etcd");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tokio::task::block_in_place(|| h.server().restart()).expect("restart etcd on its data");
    };
    coord_core::testkit::waiters_ride_out_a_server_outage(holder, waiters, outage).await;
}
