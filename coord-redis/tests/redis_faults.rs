//! Safety under faults on Redis: holders of one lease lock write to one
//! fenced resource with their guards' fencing tokens, and a
//! [`FenceAudit`](coord_core::testkit::FenceAudit) of the accepted writes
//! must stay clean when the server restarts without persistence (the locks
//! vanish under their holders) or a holder stalls past its TTL; without
//! fencing the audit must fail.

use std::sync::Arc;
use std::time::Duration;

use coord_core::LockClient;
use coord_core::testkit::{
    AuditedResource, Fencing, LockHarness, Workload, paused_holder_is_refused_by_fencing,
    unfenced_paused_holder_breaks_the_audit, within,
};
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
