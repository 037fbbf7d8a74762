//! Safety under faults on Redis: holders of one lease lock write to one
//! fenced resource with their guards' fencing tokens, and a
//! [`FenceAudit`](coord_core::testkit::FenceAudit) of the accepted writes
//! must stay clean when the server restarts without persistence (the locks
//! vanish under their holders), a holder stalls past its TTL or its link
//! to the server is blackholed; without fencing the audit must fail.

use std::sync::Arc;
use std::time::Duration;

use coord_core::testkit::{
    AfterHeal, AuditedResource, FaultProxy, Fencing, LockHarness, Workload,
    blackholed_holder_is_refused_by_fencing, paused_holder_is_refused_by_fencing,
    unfenced_paused_holder_breaks_the_audit, within,
};
use coord_core::{CacheBackend, Error, LockClient};
use coord_redis::RedisBackend;
use coord_redis::testkit::{RedisHarness, RedisServer};

/// The server restarts while a holder is in the middle of its round: its
/// lock vanishes, a waiting holder gets in with a newer token (a hybrid
/// logical clock that survives the restart) while the first still thinks
/// it holds, and the first's next write must be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_without_persistence_cannot_let_a_stale_holder_write() {
    // A local process whatever COORD_TEST_SERVERS says: the case needs the
    // waiting holder in (and writing) before the one caught by the restart
    // renews and learns of its loss, which a restart of a few milliseconds
    // gives; a container takes about a second to restart, by which time the
    // caught holder's watchdog has found out and it stops writing.
    let server = RedisServer::spawn_process(&[]).expect("redis-server must start for this test");
    let mut h = RedisHarness::on(server);
    // Rounds long enough that the holder caught by the restart still has
    // writes to do when the next holder is in.
    let w = Workload {
        rounds: 2,
        writes_per_round: 16,
        work: Duration::from_millis(30),
        ttl: Duration::from_secs(3),
        ..Workload::new()
    };
    let resource = Arc::new(AuditedResource::new(Fencing::On));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(LockClient::new(h.new_backend().await));
    }
    // The second holder is two writes into its round.
    let trigger = w.writes_per_round as u64 + 2;
    let restart = {
        let (resource, server) = (resource.clone(), &mut h.server);
        async move {
            resource.audit().wait_for_accepted(trigger).await;
            tokio::task::block_in_place(|| server.restart()).expect("restart redis-server");
        }
    };
    let (report, ()) = within(
        Duration::from_secs(60),
        "the holders and the restart finish",
        async { tokio::join!(w.run(clients, resource.clone()), restart) },
    )
    .await;
    let audit = resource.audit();
    assert_eq!(
        audit.violations(),
        Vec::<String>::new(),
        "{:?}",
        audit.writes()
    );
    assert_eq!(report.rounds, 6, "{report:?}");
    assert_eq!(report.accepted, resource.value());
    assert!(report.accepted >= 4 * 16, "{report:?}");
    assert!(
        report.refused >= 1,
        "the holder caught by the restart kept writing after the next one got in, \
         and fencing must have refused it: {report:?}"
    );
    // Each refused holder observed lost() (the workload fails otherwise).
    assert!(report.lost >= report.refused, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_holder_is_refused_by_fencing() {
    paused_holder_is_refused_by_fencing(&RedisHarness::start().await, Duration::from_millis(300))
        .await;
}

/// The negative control: without fencing the paused holder's late write is
/// accepted, and the audit must report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_fencing_the_paused_holder_breaks_the_audit() {
    unfenced_paused_holder_breaks_the_audit(
        &RedisHarness::start().await,
        Duration::from_millis(300),
    )
    .await;
}

/// The holder's link to Redis is blackholed (through the testkit's
/// `FaultProxy`): its guard must be at risk, then lost, within the TTL; its
/// calls must time out, not hang; a client connected directly gets the
/// lock once the lease ends, and fencing refuses the old holder. Healed,
/// the holder's client works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_holder_is_refused_by_fencing() {
    let h = RedisHarness::on(RedisServer::spawn().expect("redis-server must start for this test"));
    let request_timeout = Duration::from_millis(500);
    let (proxy, proxied) = through_a_proxy(&h, request_timeout).await;
    let direct = h.new_backend().await;
    let ttl = Duration::from_secs(3);
    let report = blackholed_holder_is_refused_by_fencing(
        &proxy,
        Arc::new(proxied),
        direct,
        ttl,
        request_timeout,
        // The connection the blackhole swallowed requests of is out of
        // step with its replies for good; the backend replaces it after a
        // timeout, so the client recovers with no reset.
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

/// A link that swallows bytes (a proxy that drops what it reads during a
/// partition, unlike TCP, which resends) leaves a multiplexed connection
/// whose replies no longer line up with its requests: each reply would go
/// to an earlier, abandoned request. After a timeout the backend must stop
/// using that connection, so once the link flows again every reply reaches
/// its own request (never another key's value) within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_reach_their_own_requests_after_a_link_swallowed_bytes() {
    let h = RedisHarness::on(RedisServer::spawn().expect("redis-server must start for this test"));
    let (proxy, proxied) = through_a_proxy(&h, Duration::from_millis(500)).await;
    let proxied = Arc::new(proxied);
    let direct = h.connect().await.expect("connect straight to the server");
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        direct
            .set(
                "lined-up",
                key,
                format!("v{i}").into(),
                Duration::from_secs(60),
                "test",
            )
            .await
            .expect("set through the direct client");
    }
    let get_all = |backend: Arc<RedisBackend>| {
        let keys = keys.clone();
        async move {
            let calls = keys.iter().map(|key| {
                let (backend, key) = (backend.clone(), key.clone());
                tokio::spawn(async move { backend.get("lined-up", &key).await })
            });
            let mut replies = Vec::new();
            for call in calls {
                replies.push(call.await.expect("the get's task"));
            }
            replies
        }
    };
    let before = get_all(proxied.clone()).await;
    assert!(before.iter().all(Result::is_ok), "{before:?}");

    proxy.blackhole();
    let cut = get_all(proxied.clone()).await;
    assert!(
        cut.iter().all(|r| matches!(r, Err(Error::Timeout(_)))),
        "every call through the blackhole times out: {cut:?}"
    );
    proxy.heal();

    within(
        Duration::from_secs(10),
        "every get through the healed link is answered",
        async {
            loop {
                let replies = get_all(proxied.clone()).await;
                for (i, reply) in replies.iter().enumerate() {
                    if let Ok(value) = reply {
                        let expected = format!("v{i}");
                        assert_eq!(
                            value.as_deref(),
                            Some(expected.as_bytes()),
                            "k{i} was answered with another request's reply: {replies:?}"
                        );
                    }
                }
                if replies.iter().all(Result::is_ok) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}

/// A fault proxy in front of `h`'s server, and a backend connected through
/// it with `request_timeout` (and a 1 s connect timeout).
async fn through_a_proxy(
    h: &RedisHarness,
    request_timeout: Duration,
) -> (FaultProxy, RedisBackend) {
    let upstream = h
        .server
        .url()
        .trim_start_matches("redis://")
        .parse()
        .expect("a spawned server's URL is redis://IP:PORT");
    let proxy = FaultProxy::start(upstream).expect("start the fault proxy");
    let mut settings = h.settings().clone();
    settings.request_timeout = request_timeout;
    settings.connect_timeout = Duration::from_secs(1);
    let proxied = RedisBackend::connect(&format!("redis://{}", proxy.addr()), &settings)
        .await
        .expect("connect through the proxy");
    (proxy, proxied)
}

/// Waiters ride out a restart: Redis is down for 2.5 s (longer than one
/// call's retries) and comes back empty; a lease and a fair waiter, with the
/// default retry settings, each get their lock, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_ride_out_a_restart() {
    let server = RedisServer::spawn_process(&[]).expect("redis-server must start for this test");
    let mut h = RedisHarness::on(server);
    let holder = LockClient::new(h.new_backend().await);
    let waiters = LockClient::new(h.new_backend().await);
    let server = &mut h.server;
    let outage = async move {
        server.stop().expect("kill redis-server");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tokio::task::block_in_place(|| server.restart()).expect("restart redis-server");
    };
    coord_core::testkit::waiters_ride_out_a_server_outage(holder, waiters, outage).await;
}
