//! `LockClient`: one client's view of a lock backend, shared by all its locks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::health::ComponentHealth;
use crate::lock::backend::LockBackend;
use crate::lock::guard::GuardShared;
use crate::lock::handle::LockBuilder;
use crate::lock::kind::LockKind;
use crate::lock::reentrant::ReentrantSlots;
use crate::lock::renewal::RenewalScheduler;
use crate::lock::shards::HoldTables;
use crate::lock::stats::{LockStats, StatsTable};
use crate::lock::types::LockOwner;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::settings::{LockSettings, Settings};

/// Builds locks on one backend. Cheap to clone; clones share the backend
/// connection, the client id and the set of held locks.
///
/// ```
/// # tokio_test_block(async {
/// use std::sync::Arc;
/// use coord_core::{LockClient, memory::MemoryBackend};
///
/// let client = LockClient::new(Arc::new(MemoryBackend::new()));
/// let guard = client.lock("orders/42").build().acquire().await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok::<_, coord_core::Error>(()) });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f) }
/// ```
#[derive(Debug, Clone)]
pub struct LockClient {
    pub(crate) shared: Arc<ClientShared>,
}

/// The first pause before a failed background release is sent again.
const BACKGROUND_RELEASE_FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between a background release's tries.
const BACKGROUND_RELEASE_MAX_PAUSE: Duration = Duration::from_secs(30);
/// How long a background release is tried at most.
const BACKGROUND_RELEASE_FOR: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub(crate) struct ClientShared {
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) backend_name: &'static str,
    pub(crate) client_id: Arc<str>,
    pub(crate) defaults: LockSettings,
    pub(crate) retry: RetryPolicy,
    pub(crate) metrics: Option<Metrics>,
    /// Whether the backend may answer lease calls at once
    /// ([`LockBackend::try_acquire_now`]); cleared by its first `None`, so
    /// a networked backend's acquisitions skip the in-process fast path.
    pub(crate) answers_at_once: AtomicBool,
    waiting: AtomicUsize,
    /// Set by [`LockClient::shutdown`]: no new acquisitions.
    closed: AtomicBool,
    /// The guards it holds and the owners it reuses (see
    /// [`ClientShared::take_owner`]).
    pub(crate) tables: HoldTables,
    pub(crate) renewals: Arc<RenewalScheduler>,
    pub(crate) stats: StatsTable,
    pub(crate) reentrant: ReentrantSlots,
}

/// Options of a [`LockClient`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LockClientBuilder {
    backend: Arc<dyn LockBackend>,
    client_id: Option<String>,
    defaults: LockSettings,
    retry: RetryPolicy,
    metrics: Option<Metrics>,
}

impl LockClientBuilder {
    /// This client's id, stored with every lock it holds (no `:`).
    /// Default: a random id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Lock defaults and retry policy from SDK settings.
    pub fn settings(mut self, settings: &Settings) -> Self {
        self.defaults = settings.lock.clone();
        self.retry = RetryPolicy::new(&settings.retry);
        self
    }

    /// Lock defaults only.
    pub fn lock_defaults(mut self, defaults: LockSettings) -> Self {
        self.defaults = defaults;
        self
    }

    /// The retry policy of backend calls.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Record Prometheus metrics.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The client. Fails when the client id is not usable.
    pub fn build(self) -> Result<LockClient> {
        let client_id = match self.client_id {
            Some(id) => {
                LockOwner::new(&id, "probe")?;
                id
            }
            None => format!("{:016x}", fastrand::u64(..)),
        };
        let backend_name = self.backend.capabilities().backend;
        Ok(LockClient {
            shared: Arc::new(ClientShared {
                backend: self.backend,
                backend_name,
                client_id: client_id.into(),
                defaults: self.defaults,
                retry: self.retry,
                metrics: self.metrics,
                answers_at_once: AtomicBool::new(true),
                waiting: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                tables: HoldTables::default(),
                renewals: Arc::new(RenewalScheduler::new()),
                stats: StatsTable::default(),
                reentrant: ReentrantSlots::default(),
            }),
        })
    }
}

impl LockClient {
    /// A client with default settings and a random client id.
    pub fn new(backend: Arc<dyn LockBackend>) -> Self {
        LockClient::builder(backend)
            .build()
            .expect("a random client id is always valid")
    }

    /// A builder for a client with options.
    pub fn builder(backend: Arc<dyn LockBackend>) -> LockClientBuilder {
        LockClientBuilder {
            backend,
            client_id: None,
            defaults: LockSettings::default(),
            retry: RetryPolicy::default(),
            metrics: None,
        }
    }

    /// A lock named `name`, with this client's defaults until changed.
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        LockBuilder::new(self.clone(), name.into())
    }

    /// A leader election called `name` (its lock is `election/<name>`).
    pub fn election(&self, name: impl Into<String>) -> crate::lock::ElectionBuilder {
        crate::lock::ElectionBuilder::new(self.clone(), name.into())
    }

    /// Lock administration: list, force-release, statistics.
    pub fn admin(&self) -> crate::lock::LockAdmin {
        crate::lock::LockAdmin::new(self.clone())
    }

    /// This client's id.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// What the backend promises.
    pub fn capabilities(&self) -> &Capabilities {
        self.shared.backend.capabilities()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.shared.backend
    }

    /// How many `acquire()` calls of this client are waiting for a holder to
    /// release right now.
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Acquire)
    }

    /// How many locks this client holds (guards not yet released or dropped).
    pub fn held(&self) -> usize {
        self.shared.tables.len()
    }

    /// What this client saw of lock `name`: acquisitions, contended
    /// acquisitions, wait and hold times, lost leases. `None` before its
    /// first grant.
    pub fn lock_stats(&self, name: &str) -> Option<LockStats> {
        self.shared.stats.get(name)
    }

    /// [`LockClient::lock_stats`] of every lock this client took, by name.
    pub fn all_lock_stats(&self) -> Vec<(String, LockStats)> {
        self.shared.stats.all()
    }

    /// The backend's health (one round trip).
    pub async fn health(&self) -> ComponentHealth {
        self.shared.backend.health().await
    }

    /// Releases every lock this client holds, then closes the backend.
    /// Guards still alive afterwards report their lock as lost, and every
    /// acquisition from then on (a waiting one at its next attempt) fails
    /// with [`Error::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let held = self.shared.tables.drain();
        let mut first_error = None;
        for guard in held {
            guard.mark_closed("the client was shut down");
            if let Err(e) = self
                .shared
                .release_once(&guard.name, &guard.owner, guard.kind)
                .await
                && !matches!(e, Error::NotHeld(_))
            {
                first_error.get_or_insert(e);
            }
        }
        self.shared.backend.close().await;
        first_error.map_or(Ok(()), Err)
    }
}

impl LockClient {
    /// Takes locks again after a shutdown: only for tests of what a
    /// shutdown leaves behind.
    #[cfg(test)]
    pub(crate) fn reopen(&self) {
        self.shared.closed.store(false, Ordering::Release);
    }
}

impl ClientShared {
    /// [`Error::Closed`] once the client was shut down: no new acquisition
    /// starts, and a waiting one gives up at its next attempt.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed(
                "this lock client was shut down (LockClient::shutdown or Coord::shutdown); \
                 make a new one to take locks again"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Renews a hold through the backend call of its kind.
    pub(crate) async fn renew_hold(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: std::time::Duration,
        kind: LockKind,
    ) -> Result<()> {
        if kind.is_queued() {
            self.backend.renew_queued(name, owner, ttl).await
        } else {
            self.backend.renew(name, owner, ttl).await
        }
    }

    /// Runs one backend call with metrics.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        // One await point, so the future holds `fut` once.
        let start = self.metrics.as_ref().map(|_| Instant::now());
        let r = fut.await;
        if let (Some(m), Some(start)) = (&self.metrics, start) {
            m.backend_request(self.backend_name, op, start.elapsed(), &r);
        }
        r
    }

    /// A backend call answered at once ([`LockBackend::try_acquire_now`]),
    /// with its metrics; `None` when the backend must be awaited instead.
    pub(crate) fn call_now<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&dyn LockBackend) -> Option<Result<T>>,
    ) -> Option<Result<T>> {
        match &self.metrics {
            None => f(&*self.backend),
            Some(m) => {
                let start = Instant::now();
                let r = f(&*self.backend)?;
                m.backend_request(self.backend_name, op, start.elapsed(), &r);
                Some(r)
            }
        }
    }

    /// Releases with retries. A `NotHeld` after an ambiguous failed attempt
    /// counts as released: the lost reply was most likely the success.
    pub(crate) async fn release_once(
        &self,
        name: &str,
        owner: &LockOwner,
        kind: LockKind,
    ) -> Result<()> {
        self.release_settled(name, owner, kind).await.0
    }

    /// [`release_once`](Self::release_once), and whether the release was
    /// *clean*: answered on its first try, so that no request of `owner`
    /// can still be in flight. Only the owner of a clean release may be
    /// reused ([`recycle_owner`](Self::recycle_owner)).
    pub(crate) async fn release_settled(
        &self,
        name: &str,
        owner: &LockOwner,
        kind: LockKind,
    ) -> (Result<()>, bool) {
        if !kind.is_queued()
            && let Some(r) = self.call_now("release", |b| {
                b.release_now(name, owner, tokio::time::Instant::now())
            })
        {
            return (r, true);
        }
        let ambiguous = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .retry
            .run(|| async {
                let r = if kind.is_queued() {
                    self.call("dequeue", self.backend.dequeue(name, owner))
                        .await
                } else {
                    self.call("release", self.backend.release(name, owner))
                        .await
                };
                if r.as_ref().is_err_and(Error::is_retryable) {
                    ambiguous.store(true, Ordering::Relaxed);
                }
                r
            })
            .await;
        let ambiguous = ambiguous.load(Ordering::Relaxed);
        match result {
            Err(Error::NotHeld(_)) if ambiguous => (Ok(()), false),
            other => (other, !ambiguous),
        }
    }

    /// An owner for one acquisition: one whose earlier hold has surely ended,
    /// or a new one. Reusing owners bounds the number of distinct owners a
    /// client ever writes to its peak concurrency, which keeps backends that
    /// key holders by owner (etcd) from piling up deleted keys.
    pub(crate) fn take_owner(&self) -> LockOwner {
        self.tables
            .take_owner()
            .unwrap_or_else(|| LockOwner::unique(&self.client_id))
    }

    /// Returns an owner whose hold has surely ended (released, refused as
    /// not held, or never granted) for reuse.
    ///
    /// Callers pass only owners of which no release can still be in flight
    /// (a *clean* release, see [`release_settled`](Self::release_settled)):
    /// over a network, a release that timed out may still be applied later,
    /// for instance by a paused server member once it runs again, and would
    /// then end a new hold of the same owner. Stale acquisitions and
    /// renewals of a reused owner are harmless (idempotent for the same
    /// owner). Reuse matters on etcd: every owner is a key under the lock's
    /// prefix, and each new one leaves a deleted key that every later
    /// acquisition's range compare walks until the next compaction.
    pub(crate) fn recycle_owner(&self, owner: LockOwner) {
        self.tables.put_owner(owner);
    }

    /// Releases `owner`'s hold on `name` in the background (a dropped guard,
    /// or an acquisition whose reply was lost and so may have succeeded).
    /// A pooled owner is reused once the release has surely ended its hold.
    ///
    /// A release the backend does not answer (an outage longer than the
    /// call's retries) is sent again, [`BACKGROUND_RELEASE_FIRST_PAUSE`]
    /// later, then twice as long after each failure up to
    /// [`BACKGROUND_RELEASE_MAX_PAUSE`], for [`BACKGROUND_RELEASE_FOR`] at
    /// most: a lock whose lease outlives its TTL (etcd keeps a client's
    /// locks of one TTL on one lease, which its other locks keep alive)
    /// would otherwise stay held after the outage. It stops early once this
    /// client holds the same lock with the same owner again (a fixed
    /// owner's next hold, which a late release must not end).
    pub(crate) fn release_in_background(
        self: &Arc<Self>,
        name: Arc<str>,
        owner: LockOwner,
        pooled: bool,
        kind: LockKind,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(lock = %name, "no tokio runtime to release a dropped lock; it expires with its TTL");
            return;
        };
        let shared = self.clone();
        handle.spawn(async move {
            let started = tokio::time::Instant::now();
            let mut pause = BACKGROUND_RELEASE_FIRST_PAUSE;
            loop {
                match shared.release_settled(&name, &owner, kind).await {
                    (Ok(()) | Err(Error::NotHeld(_)), clean) => {
                        if pooled && clean {
                            shared.recycle_owner(owner);
                        }
                        if pause > BACKGROUND_RELEASE_FIRST_PAUSE {
                            tracing::info!(lock = %name, "background release done once the backend answered");
                        }
                        return;
                    }
                    (Err(e), _) if !e.is_retryable() => {
                        tracing::warn!(lock = %name, error = %e, "background release refused; the lock stays held until its lease ends");
                        return;
                    }
                    (Err(e), _) => {
                        if started.elapsed() >= BACKGROUND_RELEASE_FOR {
                            tracing::warn!(lock = %name, error = %e, "background release still fails; giving up: the lock stays held until its lease ends");
                            return;
                        }
                        if pause == BACKGROUND_RELEASE_FIRST_PAUSE {
                            tracing::warn!(lock = %name, error = %e, "background release failed; sending it again until the backend answers");
                        }
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKGROUND_RELEASE_MAX_PAUSE);
                if shared.holds(&name, &owner) {
                    return;
                }
            }
        });
    }

    /// Whether this client holds `name` with `owner` now.
    fn holds(&self, name: &str, owner: &LockOwner) -> bool {
        self.tables
            .all()
            .iter()
            .any(|g| &*g.name == name && g.owner == *owner)
    }

    pub(crate) fn track(&self, guard: Arc<GuardShared>) -> u64 {
        self.tables.insert(guard)
    }

    /// The guards held now (for the renewal task's scan).
    pub(crate) fn held_guards(&self) -> Vec<Arc<GuardShared>> {
        self.tables.all()
    }

    pub(crate) fn untrack(&self, id: u64, guard: &Arc<GuardShared>) {
        self.tables.remove(id, guard);
    }

    pub(crate) fn waiting_enter(self: &Arc<Self>) -> WaitingMark {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        WaitingMark(self.clone())
    }
}

/// Counts a waiting `acquire()` while alive.
#[derive(Debug)]
pub(crate) struct WaitingMark(Arc<ClientShared>);

impl Drop for WaitingMark {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
