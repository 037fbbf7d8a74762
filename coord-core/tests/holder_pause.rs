//! Safety under faults on the memory backend: holders of one lease lock
//! write to one fenced resource with their guards' fencing tokens, and a
//! [`FenceAudit`](coord_core::testkit::FenceAudit) of the accepted writes
//! must stay clean when a holder stalls past its TTL or its lock is
//! force-released under it; without fencing the audit must fail.

use std::sync::Arc;
use std::time::Duration;

use coord_core::LockClient;
use coord_core::testkit::{
    AuditedResource, Fencing, LockHarness, MemoryHarness, Workload,
    paused_holder_is_refused_by_fencing, unfenced_paused_holder_breaks_the_audit, within,
};

const TTL: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_holder_is_refused_by_fencing() {
    paused_holder_is_refused_by_fencing(&MemoryHarness::new(), TTL).await;
}

/// The negative control: without fencing the paused holder's late write is
/// accepted, and the audit must report it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_fencing_the_paused_holder_breaks_the_audit() {
    let r = unfenced_paused_holder_breaks_the_audit(&MemoryHarness::new(), TTL).await;
    assert!(
        r.violations.iter().any(|v| v.starts_with("went backwards")),
        "{:?}",
        r.violations
    );
}

/// The lock is force-released under a working holder, again and again (an
/// operator's or a failover's doing): the next holder gets in while the
/// first still works, and fencing refuses the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_releases_under_working_holders_keep_the_audit_clean() {
    let h = MemoryHarness::new();
    let w = Workload {
        rounds: 3,
        writes_per_round: 8,
        work: Duration::from_millis(15),
        ttl: Duration::from_secs(2),
        ..Workload::new()
    };
    let resource = Arc::new(AuditedResource::new(Fencing::On));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(LockClient::new(h.new_backend().await));
    }
    let admin = h.new_backend().await;
    let faults = {
        let (resource, lock) = (resource.clone(), w.lock.clone());
        async move {
            // At most 3 rounds of 8 writes are cut short: 35 is reached.
            for n in [3, 20, 35] {
                resource.audit().wait_for_accepted(n).await;
                admin.force_release(&lock).await.unwrap();
            }
        }
    };
    let (report, ()) = within(
        Duration::from_secs(60),
        "the holders and the force-releases finish",
        async { tokio::join!(w.run(clients, resource.clone()), faults) },
    )
    .await;
    let audit = resource.audit();
    assert_eq!(
        audit.violations(),
        Vec::<String>::new(),
        "{:?}",
        audit.writes()
    );
    assert_eq!(report.rounds, 9);
    assert!(report.accepted >= 35, "{report:?}");
    assert_eq!(report.accepted, resource.value());
    assert!(
        report.refused >= 1,
        "a holder kept working after its lock was force-released: {report:?}"
    );
    assert!(report.lost >= report.refused, "{report:?}");
}
