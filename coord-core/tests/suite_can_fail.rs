//! Negative controls: the conformance suite must fail on a broken backend,
//! or its passing on real backends proves nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coord_core::testkit::{Fault, FaultyLockBackend, LockHarness, LockOp, lock};
use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, FencingToken, LockBackend, LockGrant, LockOwner,
    ReleaseEvents, Result,
};

/// Grants every request and accepts every release: no exclusion at all.
/// With `refuse_old_renewals`, it remembers the owner it granted last per
/// name and refuses older holders' renewals, so their guards learn they are
/// lost (exclusion broken, loss signalling working).
#[derive(Debug)]
struct AlwaysGrants {
    caps: Capabilities,
    next: AtomicU64,
    refuse_old_renewals: bool,
    latest: std::sync::Mutex<std::collections::HashMap<String, LockOwner>>,
}

#[coord_core::async_trait]
impl LockBackend for AlwaysGrants {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    async fn try_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<AcquireOutcome> {
        let token = FencingToken::new(self.next.fetch_add(1, Ordering::SeqCst) + 1);
        self.latest
            .lock()
            .unwrap()
            .insert(name.to_owned(), owner.clone());
        Ok(AcquireOutcome::Granted(LockGrant { token, ttl }))
    }
    async fn renew(&self, name: &str, owner: &LockOwner, _: Duration) -> Result<()> {
        match self.latest.lock().unwrap().get(name) {
            Some(latest) if self.refuse_old_renewals && latest != owner => Err(
                coord_core::Error::NotHeld(format!("{name}: granted to a newer owner")),
            ),
            _ => Ok(()),
        }
    }
    async fn list(&self, _: &str) -> Result<Vec<coord_core::LockInfo>> {
        Ok(Vec::new())
    }
    async fn release(&self, _: &str, _: &LockOwner) -> Result<()> {
        Ok(())
    }
    async fn subscribe(&self, _: &str) -> Result<ReleaseEvents> {
        Ok(ReleaseEvents::never())
    }
    async fn force_release(&self, _: &str) -> Result<bool> {
        Ok(true)
    }
    async fn health(&self) -> ComponentHealth {
        ComponentHealth::healthy("broken", Duration::ZERO)
    }
}

fn always_grants(refuse_old_renewals: bool) -> AlwaysGrants {
    AlwaysGrants {
        caps: Capabilities::new("broken"),
        next: AtomicU64::new(0),
        refuse_old_renewals,
        latest: std::sync::Mutex::default(),
    }
}

struct Broken(Arc<AlwaysGrants>);

#[coord_core::async_trait]
impl LockHarness for Broken {
    async fn new_backend(&self) -> Arc<dyn LockBackend> {
        self.0.clone()
    }
}

fn broken() -> Broken {
    Broken(Arc::new(always_grants(false)))
}

#[tokio::test]
#[should_panic(expected = "entered while")]
async fn mutual_exclusion_catches_double_grants() {
    lock::mutual_exclusion_with(&broken(), 4, 50).await;
}

#[tokio::test]
#[should_panic(expected = "NotHeld")]
async fn owner_check_catches_release_by_anyone() {
    lock::non_owner_release_and_renew_refused(&broken()).await;
}

/// Clients of one memory store whose release notifications never arrive.
struct DeafHarness(coord_core::memory::MemoryBackend);

#[coord_core::async_trait]
impl LockHarness for DeafHarness {
    async fn new_backend(&self) -> Arc<dyn LockBackend> {
        let deaf = FaultyLockBackend::new(Arc::new(self.0.clone()));
        deaf.inject(LockOp::Subscribe, Fault::Silence);
        Arc::new(deaf)
    }
}

#[tokio::test]
#[should_panic(expected = "waiting until the waiter acquires")]
async fn wake_up_case_catches_a_backend_without_notifications() {
    let harness = DeafHarness(coord_core::memory::MemoryBackend::new());
    lock::waiter_woken_by_release(&harness).await;
}

/// The chaos runner's checkers must catch overlaps that really happened
/// among the workers themselves, not only the control worker each row
/// runs: workers whose backend grants everyone hold one lock at the same
/// time, and the fenced resource refuses the older holders' writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_checkers_catch_real_overlaps() {
    use coord_core::LockClient;
    use coord_core::testkit::chaos::{self, ChaosKind, ChaosPlan};

    let backend = Arc::new(always_grants(true));
    let plan = ChaosPlan::new(3);
    let reports = chaos::run_scenario(
        &plan,
        "control: a backend that grants everyone",
        &[ChaosKind::Lease],
        false,
        || {
            let backend: Arc<dyn LockBackend> = backend.clone();
            async move { LockClient::new(backend) }
        },
        async {},
        |()| async {},
    )
    .await;
    let report = &reports[0];
    assert!(
        !report.overlaps.is_empty(),
        "no overlap reported: {report:?}"
    );
    assert!(
        report.refused_writes > 0,
        "no stale write refused: {report:?}"
    );
    assert!(!report.violations().is_empty());
    assert!(report.control_caught, "the row's own control: {report:?}");
}
