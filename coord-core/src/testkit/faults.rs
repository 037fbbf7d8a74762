//! Fault injection: a decorator over any lock backend that makes chosen
//! operations fail, time out, lose their reply, slow down or go silent.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use coord_core::memory::MemoryBackend;
//! use coord_core::testkit::{Fault, FaultyLockBackend, LockOp};
//! use coord_core::{Error, LockClient, RetryPolicy};
//!
//! let faulty = Arc::new(FaultyLockBackend::new(Arc::new(MemoryBackend::new())));
//! faulty.inject_times(LockOp::TryAcquire, Fault::Unavailable, 1);
//! let client = LockClient::builder(faulty.clone()).retry(RetryPolicy::none()).build()?;
//! let lock = client.lock("orders/42").build();
//! assert!(matches!(lock.try_acquire().await, Err(Error::Unavailable { .. })));
//! assert!(lock.try_acquire().await?.is_some(), "the rule was used up");
//! assert_eq!(faulty.calls(LockOp::TryAcquire), 2);
//! # Ok::<_, Error>(()) }).unwrap();
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::health::ComponentHealth;
use crate::lock::{
    AcquireOutcome, HoldMode, LockBackend, LockInfo, LockOwner, QueueOutcome, ReleaseEvents,
};

/// The operations of a [`LockBackend`], to aim faults at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockOp {
    /// [`LockBackend::try_acquire`].
    TryAcquire,
    /// [`LockBackend::renew`].
    Renew,
    /// [`LockBackend::release`].
    Release,
    /// [`LockBackend::subscribe`].
    Subscribe,
    /// [`LockBackend::force_release`].
    ForceRelease,
    /// [`LockBackend::health`].
    Health,
}

const OPS: usize = 6;

/// What an injected fault does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fails with [`Error::Unavailable`] without reaching the backend.
    Unavailable,
    /// Fails with [`Error::Timeout`] without reaching the backend.
    Timeout,
    /// Reaches the backend, then loses the reply: the caller sees
    /// [`Error::Timeout`] although the operation was applied.
    LoseReply,
    /// Waits this long, then reaches the backend.
    Delay(Duration),
    /// Reaches the backend, then holds the reply back this long: a caller
    /// that gives up meanwhile has had its operation applied.
    DelayReply(Duration),
    /// For [`LockOp::Subscribe`]: a stream that never yields, as if the
    /// backend sent no notifications. Other operations pass through.
    Silence,
    /// For [`LockOp::Subscribe`]: the stream ends after this long, as if the
    /// notification connection dropped. Other operations pass through.
    EndStreamAfter(Duration),
}

#[derive(Debug)]
struct Rule {
    op: LockOp,
    fault: Fault,
    /// Calls left to hit; `None` until [`FaultyLockBackend::clear`].
    remaining: Option<usize>,
}

/// Wraps a backend and injects [`Fault`]s by operation, counting every call.
#[derive(Debug)]
pub struct FaultyLockBackend {
    inner: Arc<dyn LockBackend>,
    rules: Mutex<Vec<Rule>>,
    calls: [AtomicUsize; OPS],
    holds_lost: AtomicUsize,
    /// The inner backend's capabilities, possibly changed by the test.
    capabilities: Capabilities,
}

impl FaultyLockBackend {
    /// A decorator over `inner` with no faults yet.
    pub fn new(inner: Arc<dyn LockBackend>) -> Self {
        FaultyLockBackend {
            capabilities: inner.capabilities().clone(),
            inner,
            rules: Mutex::new(Vec::new()),
            calls: Default::default(),
            holds_lost: AtomicUsize::new(0),
        }
    }

    /// Reports the backend as [`distributed`](Capabilities::distributed)
    /// (or not), to run an in-process backend under the rules of a networked
    /// one.
    pub fn distributed(mut self, distributed: bool) -> Self {
        self.capabilities.distributed = distributed;
        self
    }

    /// The wrapped backend (calls on it are neither counted nor faulted).
    pub fn inner(&self) -> &Arc<dyn LockBackend> {
        &self.inner
    }

    /// Applies `fault` to every call of `op` until [`clear`](Self::clear).
    pub fn inject(&self, op: LockOp, fault: Fault) {
        self.push(op, fault, None);
    }

    /// Applies `fault` to the next `times` calls of `op`.
    pub fn inject_times(&self, op: LockOp, fault: Fault, times: usize) {
        self.push(op, fault, Some(times));
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many calls of `op` were made (faulted or not).
    pub fn calls(&self, op: LockOp) -> usize {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    /// How many times the client told the backend that a hold was lost
    /// ([`LockBackend::hold_lost`]).
    pub fn holds_lost(&self) -> usize {
        self.holds_lost.load(Ordering::SeqCst)
    }

    fn push(&self, op: LockOp, fault: Fault, remaining: Option<usize>) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Rule {
                op,
                fault,
                remaining,
            });
    }

    /// Counts a call of `op` and takes the first rule that applies to it.
    fn take(&self, op: LockOp) -> Option<Fault> {
        self.calls[op as usize].fetch_add(1, Ordering::SeqCst);
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let index = rules
            .iter()
            .position(|r| r.op == op && r.remaining != Some(0))?;
        let rule = &mut rules[index];
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        Some(rule.fault)
    }

    async fn apply<T>(&self, op: LockOp, call: impl Future<Output = Result<T>>) -> Result<T> {
        match self.take(op) {
            None | Some(Fault::Silence | Fault::EndStreamAfter(_)) => call.await,
            Some(Fault::Unavailable) => Err(Error::unavailable(
                format!("injected fault: {op:?} found the backend unavailable"),
                None,
            )),
            Some(Fault::Timeout) => {
                Err(Error::Timeout(format!("injected fault: {op:?} timed out")))
            }
            Some(Fault::LoseReply) => {
                let _applied = call.await;
                Err(Error::Timeout(format!(
                    "injected fault: the reply to {op:?} was lost"
                )))
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                call.await
            }
            Some(Fault::DelayReply(d)) => {
                let reply = call.await;
                tokio::time::sleep(d).await;
                reply
            }
        }
    }
}

#[async_trait]
impl LockBackend for FaultyLockBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn try_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<AcquireOutcome> {
        let call = self.inner.try_acquire(name, owner, ttl);
        self.apply(LockOp::TryAcquire, call).await
    }

    async fn renew(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        self.apply(LockOp::Renew, self.inner.renew(name, owner, ttl))
            .await
    }

    async fn release(&self, name: &str, owner: &LockOwner) -> Result<()> {
        self.apply(LockOp::Release, self.inner.release(name, owner))
            .await
    }

    async fn subscribe(&self, name: &str) -> Result<ReleaseEvents> {
        // Peek at the rule `apply` is about to take (and count down).
        let rule = {
            let rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            rules
                .iter()
                .find(|r| r.op == LockOp::Subscribe && r.remaining != Some(0))
                .map(|r| r.fault)
        };
        let events = self
            .apply(LockOp::Subscribe, self.inner.subscribe(name))
            .await?;
        Ok(match rule {
            Some(Fault::Silence) => ReleaseEvents::never(),
            Some(Fault::EndStreamAfter(after)) => {
                let signals = futures::stream::unfold(events, |mut events| async move {
                    events.next().await.then_some(((), events))
                });
                ReleaseEvents::new(signals.take_until(tokio::time::sleep(after)))
            }
            _ => events,
        })
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        self.apply(LockOp::ForceRelease, self.inner.force_release(name))
            .await
    }

    async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        self.inner.inspect(name).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        self.inner.list(prefix).await
    }

    async fn enqueue(
        &self,
        name: &str,
        owner: &LockOwner,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<QueueOutcome> {
        let call = self.inner.enqueue(name, owner, mode, ttl);
        self.apply(LockOp::TryAcquire, call).await
    }

    async fn renew_queued(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let call = self.inner.renew_queued(name, owner, ttl);
        self.apply(LockOp::Renew, call).await
    }

    async fn dequeue(&self, name: &str, owner: &LockOwner) -> Result<()> {
        self.apply(LockOp::Release, self.inner.dequeue(name, owner))
            .await
    }

    async fn subscribe_queue(&self, name: &str, owner: &LockOwner) -> Result<ReleaseEvents> {
        let call = self.inner.subscribe_queue(name, owner);
        self.apply(LockOp::Subscribe, call).await
    }

    async fn force_release_queued(&self, name: &str) -> Result<usize> {
        let call = self.inner.force_release_queued(name);
        self.apply(LockOp::ForceRelease, call).await
    }

    async fn health(&self) -> ComponentHealth {
        let name = self.inner.capabilities().backend;
        match self
            .apply(LockOp::Health, async { Ok(self.inner.health().await) })
            .await
        {
            Ok(h) => h,
            Err(e) => ComponentHealth::unhealthy(name, e.to_string()),
        }
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    fn hold_lost(&self, name: &str, owner: &LockOwner) {
        self.holds_lost.fetch_add(1, Ordering::SeqCst);
        self.inner.hold_lost(name, owner);
    }

    async fn proclaim(&self, name: &str, owner: &LockOwner, value: &str) -> Result<()> {
        self.inner.proclaim(name, owner, value).await
    }

    async fn subscribe_changes(&self, name: &str) -> Result<ReleaseEvents> {
        let call = self.inner.subscribe_changes(name);
        self.apply(LockOp::Subscribe, call).await
    }
}
