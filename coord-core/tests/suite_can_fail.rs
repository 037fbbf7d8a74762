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
#[derive(Debug)]
struct AlwaysGrants {
    caps: Capabilities,
    next: AtomicU64,
}

#[coord_core::async_trait]
impl LockBackend for AlwaysGrants {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    async fn try_acquire(&self, _: &str, _: &LockOwner, ttl: Duration) -> Result<AcquireOutcome> {
        let token = FencingToken::new(self.next.fetch_add(1, Ordering::SeqCst) + 1);
        Ok(AcquireOutcome::Granted(LockGrant { token, ttl }))
    }
    async fn renew(&self, _: &str, _: &LockOwner, _: Duration) -> Result<()> {
        Ok(())
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

struct Broken(Arc<AlwaysGrants>);

#[coord_core::async_trait]
impl LockHarness for Broken {
    async fn new_backend(&self) -> Arc<dyn LockBackend> {
        self.0.clone()
    }
}

fn broken() -> Broken {
    Broken(Arc::new(AlwaysGrants {
        caps: Capabilities::new("broken"),
        next: AtomicU64::new(0),
    }))
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
