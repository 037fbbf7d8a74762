//! `LockGuard`: a held lock, its fencing token, its validity and its loss.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::lock::client::ClientShared;
use crate::lock::kind::LockKind;
use crate::lock::renewal::RenewalScheduler;
use crate::lock::shards::LockedShard;
use crate::lock::stats::StatsCell;
use crate::lock::types::{FencingToken, LockGrant, LockOwner};

/// Stops a guard's renewals: set once, at release or loss. (An atomic flag
/// and a `Notify` in the guard itself, where a `CancellationToken` would
/// cost an allocation and a mutex on every grant.)
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stopped: AtomicBool,
    /// Whether anyone ever waited (most guards are released with no renewal
    /// in flight, and then `cancel` skips the `Notify`'s lock).
    waited: AtomicBool,
    wake: Notify,
}

impl StopSignal {
    pub(crate) fn cancel(&self) {
        // SeqCst with the same in `cancelled`: either the waiter sees
        // `stopped` or this sees `waited`.
        if !self.stopped.swap(true, Ordering::SeqCst) && self.waited.load(Ordering::SeqCst) {
            self.wake.notify_waiters();
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once [`StopSignal::cancel`] was called.
    pub(crate) async fn cancelled(&self) {
        self.waited.store(true, Ordering::SeqCst);
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Registered before the check, so a cancel in between still wakes us.
            woken.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            woken.await;
        }
    }
}

/// What a guard, its watchdog and the client's shutdown share.
#[derive(Debug)]
pub(crate) struct GuardShared {
    pub(crate) client: Arc<ClientShared>,
    pub(crate) name: Arc<str>,
    pub(crate) owner: LockOwner,
    /// Whether `owner` came from the client's pool and goes back after release.
    pooled: bool,
    pub(crate) token: FencingToken,
    pub(crate) ttl: Duration,
    base: Instant,
    valid_for_nanos: AtomicU64,
    /// Why the lock was lost, once it is. (A mutex and a `Notify`, not a
    /// `watch` channel: dropping a watch sender wakes eight lists of waiters,
    /// which a guard pays on every release.)
    lost: Mutex<Option<String>>,
    /// Wakes `lost()` waiters when `lost` is set.
    lost_wake: Notify,
    pub(crate) stop: StopSignal,
    /// Whether the client's renewal task renews this lock.
    pub(crate) watchdog: bool,
    /// Nanoseconds after `base` of the next renewal.
    next_renewal_nanos: AtomicU64,
    /// Whether a renewal is in flight.
    pub(crate) renewing: AtomicBool,
    /// The kind of lock (lease kinds and queued kinds renew and release
    /// through different backend calls).
    pub(crate) kind: LockKind,
    /// How many guards share this hold (more than 1 only for reentrant locks).
    pub(crate) holds: AtomicUsize,
    /// When the grant arrived (for hold-time statistics).
    granted_at: Instant,
    /// Whether the renewals are in trouble (the last one failed and is
    /// retried, or one is unanswered with a third of the TTL left): the hold
    /// is at risk of being lost. Cleared by a successful renewal.
    at_risk: AtomicBool,
    /// Wakes `at_risk()` waiters when `at_risk` is set.
    at_risk_wake: Notify,
    /// The lock's statistics.
    stats: Arc<StatsCell>,
}

impl GuardShared {
    pub(crate) fn valid_until(&self) -> Instant {
        self.base + Duration::from_nanos(self.valid_for_nanos.load(Ordering::Acquire))
    }

    pub(crate) fn next_renewal(&self) -> Instant {
        self.base + Duration::from_nanos(self.next_renewal_nanos.load(Ordering::Acquire))
    }

    pub(crate) fn set_next_renewal(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.next_renewal_nanos.store(nanos, Ordering::Release);
    }

    /// Moves the end of validity to `until` (from a renewal sent at `until - ttl`).
    pub(crate) fn extend(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.valid_for_nanos.fetch_max(nanos, Ordering::AcqRel);
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    /// Records a renewal in trouble, `why` (one failed and is retried, or
    /// one is still unanswered with a third of the lease left): the hold is
    /// at risk until a renewal succeeds.
    pub(crate) fn renewal_in_trouble(&self, why: &str) {
        if !self.at_risk.swap(true, Ordering::AcqRel) {
            tracing::warn!(lock = %self.name, token = %self.token, "lock at risk: {why}");
            if let Some(m) = &self.client.metrics {
                m.lock_at_risk(self.client.backend_name, self.stats.label());
            }
            self.at_risk_wake.notify_waiters();
        }
    }

    /// Records a successful renewal: the hold is safe again.
    pub(crate) fn renewal_succeeded(&self) {
        if self.at_risk.swap(false, Ordering::AcqRel) {
            tracing::info!(lock = %self.name, "lock safe again: renewed");
        }
    }

    fn lost_reason(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Marks the lock lost (once), stops renewal and wakes `lost()` waiters.
    pub(crate) fn mark_lost(&self, reason: &str) {
        self.end(reason, true, false);
    }

    /// Marks the lock lost because its lease ran out unrenewed, and tells the
    /// backend once ([`LockBackend::hold_lost`](crate::lock::LockBackend::hold_lost)),
    /// whichever of the watchdog and a `lost()` waiter sees it first, so that
    /// nothing of the lost hold lives on in the backend.
    ///
    /// The backend hears of it before `lost()` waiters wake: a holder that
    /// acquires again at once must not find its new hold on the lease being
    /// dropped for the old one.
    pub(crate) fn mark_expired(&self, reason: &str) {
        self.end(reason, true, true);
    }

    /// Like [`GuardShared::mark_lost`] for a hold the client itself ends
    /// (shutdown): not counted as a loss in statistics and metrics.
    pub(crate) fn mark_closed(&self, reason: &str) {
        self.end(reason, false, false);
    }

    /// Ends the hold with `reason` (telling the backend first when it
    /// `expired`); true when this call ended it.
    fn end(&self, reason: &str, count_as_lost: bool, expired: bool) -> bool {
        let changed = {
            let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
            let first = lost.is_none();
            if first {
                *lost = Some(reason.to_owned());
                if expired {
                    // Under the lock, so no `lost()` waiter sees the loss
                    // before the backend has dropped what kept the hold.
                    self.client.backend.hold_lost(&self.name, &self.owner);
                }
            }
            first
        };
        self.stop.cancel();
        if changed {
            self.lost_wake.notify_waiters();
        }
        if changed && count_as_lost {
            tracing::warn!(lock = %self.name, token = %self.token, reason, "lock lost");
            self.stats.lost();
            if let Some(m) = &self.client.metrics {
                m.lock_lost(self.client.backend_name, self.stats.label());
            }
        }
        changed
    }
}

impl GuardShared {
    /// Records the hold time of a hold that ended.
    pub(crate) fn record_hold(&self) {
        self.record_hold_at(Instant::now());
    }

    /// Records the hold time of a hold that ended at `now`.
    pub(crate) fn record_hold_at(&self, now: Instant) {
        let held = now.saturating_duration_since(self.granted_at);
        self.stats.released(held);
        if let Some(m) = &self.client.metrics {
            m.lock_held(self.client.backend_name, self.stats.label(), held);
        }
    }
}

/// A held lock. Pass [`LockGuard::fencing_token`] with every write to the
/// resource it protects, and stop working when [`LockGuard::lost`] resolves.
///
/// Dropping the guard releases the lock in the background; call
/// [`LockGuard::release`] to release it and see the result.
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock"]
pub struct LockGuard {
    pub(crate) shared: Arc<GuardShared>,
    id: u64,
    done: bool,
}

impl LockGuard {
    /// A guard of a new grant, tracked in `shard` (locked by the caller
    /// before it read the clock for the grant, and where it took the grant's
    /// owner) or else in the client's table.
    #[allow(clippy::too_many_arguments)] // one call site, each argument named there
    pub(crate) fn new(
        shard: Option<&mut LockedShard<'_>>,
        client: Arc<ClientShared>,
        name: Arc<str>,
        owner: LockOwner,
        pooled: bool,
        grant: LockGrant,
        sent_at: Instant,
        granted_at: Instant,
        watchdog_on: bool,
        kind: LockKind,
        stats: Arc<StatsCell>,
    ) -> Self {
        let ttl_nanos = grant.ttl.as_nanos() as u64;
        let shared = Arc::new(GuardShared {
            client,
            name,
            owner,
            pooled,
            token: grant.token,
            ttl: grant.ttl,
            base: sent_at,
            valid_for_nanos: AtomicU64::new(ttl_nanos),
            lost: Mutex::new(None),
            lost_wake: Notify::new(),
            stop: StopSignal::default(),
            watchdog: watchdog_on,
            next_renewal_nanos: AtomicU64::new(ttl_nanos / 3),
            renewing: AtomicBool::new(false),
            kind,
            holds: AtomicUsize::new(1),
            granted_at,
            at_risk: AtomicBool::new(false),
            at_risk_wake: Notify::new(),
            stats,
        });
        // Tracked in the shard locked before its clock was read, or later.
        let tracked_at_grant = shard.is_some();
        let id = match shard {
            Some(shard) => shard.insert(shared.clone()),
            None => shared.client.track(shared.clone()),
        };
        if watchdog_on && tracked_at_grant {
            RenewalScheduler::schedule_first(&shared.client, ttl_nanos / 3, || {
                shared.next_renewal()
            });
        } else if watchdog_on {
            RenewalScheduler::schedule(&shared.client, shared.next_renewal());
        }
        LockGuard {
            shared,
            id,
            done: false,
        }
    }

    /// One more guard of the same reentrant hold (the caller has counted it
    /// in `holds`).
    pub(crate) fn share_of(shared: Arc<GuardShared>, id: u64) -> LockGuard {
        LockGuard {
            shared,
            id,
            done: false,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<GuardShared> {
        &self.shared
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The kind of lock this guard holds.
    pub fn kind(&self) -> LockKind {
        self.shared.kind
    }

    /// How many guards share this hold: more than 1 when a reentrant lock
    /// was acquired again by its owner.
    pub fn hold_count(&self) -> usize {
        self.shared.holds.load(Ordering::Acquire)
    }

    /// The fencing token of this grant: strictly greater than every earlier
    /// grant's token of the same lock.
    pub fn fencing_token(&self) -> FencingToken {
        self.shared.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Who holds it.
    pub fn owner(&self) -> &LockOwner {
        &self.shared.owner
    }

    /// How long each grant or renewal of this hold counts as valid, from
    /// an instant taken before it was requested: the lease TTL the backend
    /// granted, less what the backend keeps back. Memory and Redis: the TTL
    /// asked for. etcd: the client's shared lease (whose TTL etcd rounds up
    /// to whole seconds, at least about 2 s), less a sixth of it and what
    /// had already run of it, so 25 s for the default 30 s, and about
    /// 1.67 s for a 500 ms TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Until when the lock is surely held, counted from an instant taken
    /// before the grant (or the last renewal) was requested.
    pub fn valid_until(&self) -> Instant {
        self.shared.valid_until()
    }

    /// Whether the renewals are in trouble: the last one failed and is
    /// being retried, or one is still unanswered with less than a third of
    /// the TTL left (a server that does not answer). The lock is still held
    /// (until [`valid_until`](Self::valid_until)) but at risk of being lost,
    /// like Curator's SUSPENDED before LOST. Cleared when a renewal
    /// succeeds. Counted in `coord_lock_at_risk_total`.
    pub fn is_at_risk(&self) -> bool {
        self.shared.at_risk.load(Ordering::Acquire) && !self.shared.is_lost()
    }

    /// Resolves when the lock becomes at risk (a renewal failed, or is
    /// unanswered with a third of the TTL left; see
    /// [`is_at_risk`](Self::is_at_risk)), or is lost, whichever comes
    /// first: time to pause work that must not outlive the lock, or to
    /// checkpoint.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let client = coord_core::LockClient::new(std::sync::Arc::new(coord_core::memory::MemoryBackend::new()));
    /// let guard = client.lock("job").build().acquire().await?;
    /// tokio::select! {
    ///     _ = guard.at_risk() => eprintln!("renewals are failing; pausing the work"),
    ///     _ = async { /* the protected work */ } => {}
    /// }
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn at_risk(&self) {
        loop {
            let woken = self.shared.at_risk_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.shared.at_risk.load(Ordering::Acquire) || self.shared.is_lost() {
                return;
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = self.lost() => return,
            }
        }
    }

    /// Whether the lock is still held: not lost, and within its validity.
    pub fn is_held(&self) -> bool {
        !self.shared.is_lost() && Instant::now() < self.shared.valid_until()
    }

    /// Resolves when the lock is lost: a renewal was refused or failed until
    /// the lease ran out, the validity passed without renewal, or the client
    /// shut down. Returns [`Error::LockLost`] with the reason.
    pub async fn lost(&self) -> Error {
        loop {
            // Registered before the check, so a loss in between still wakes us.
            let woken = self.shared.lost_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(reason) = self.shared.lost_reason() {
                return Error::LockLost(format!("{:?}: {reason}", &*self.shared.name));
            }
            let until = self.shared.valid_until();
            tokio::select! {
                _ = &mut woken => {},
                _ = tokio::time::sleep_until(until) => {
                    if Instant::now() >= self.shared.valid_until() {
                        let reason = "the lease ran out without renewal";
                        if self.shared.watchdog {
                            self.shared.mark_expired(reason);
                        } else {
                            self.shared.mark_lost(reason);
                        }
                    }
                }
            }
        }
    }

    /// Renews the lease now (the watchdog does this by itself at a third of
    /// the TTL). Returns [`Error::NotHeld`] when the backend no longer has
    /// this owner's lock, and marks the guard lost.
    pub async fn renew(&self) -> Result<()> {
        if let Some(reason) = self.shared.lost_reason() {
            return Err(Error::LockLost(reason));
        }
        let client = &self.shared.client;
        let sent_at = Instant::now();
        let result = client
            .retry
            .run(|| {
                client.call(
                    "renew",
                    client.renew_hold(
                        &self.shared.name,
                        &self.shared.owner,
                        self.shared.ttl,
                        self.shared.kind,
                    ),
                )
            })
            .await;
        match &result {
            Ok(()) => self.shared.extend(sent_at + self.shared.ttl),
            Err(Error::NotHeld(_)) => self.shared.mark_lost("renewal refused: not held"),
            Err(_) => {}
        }
        if let Some(m) = &client.metrics {
            let outcome = result.as_ref().map_or_else(Error::kind_label, |_| "ok");
            m.lock_op(client.backend_name, "renew", outcome);
        }
        result
    }

    /// Releases the lock. Returns [`Error::NotHeld`] when this owner no
    /// longer holds it (it expired or was force-released); at once for a
    /// guard already [lost](Self::lost) whose owner no later acquisition
    /// shares (every kind but a reentrant lock or a lease lock with a fixed
    /// `owner`), its release still sent, in the background, in case the key
    /// outlived the client's view of it. On another error (the server did
    /// not answer in time, even after the retries) the release goes on in
    /// the background: the lock is free once it lands, or when its lease
    /// ends.
    pub async fn release(mut self) -> Result<()> {
        self.done = true;
        if self.shared.kind == LockKind::Reentrant {
            return Box::pin(crate::lock::reentrant::release(&self.shared, self.id)).await;
        }
        // A guard already lost, whose owner is its own (pooled, or tagged
        // for a queued kind): nothing to wait for, where a server that does
        // not answer would hold the caller for its timeouts. (A fixed owner
        // of a lease lock is the same on the next acquisition, which a
        // release sent in the background could end: it waits, as before.)
        // `stop` is cancelled before a release only by a loss: one atomic
        // read on the hot path, the reason's mutex only when lost.
        let own_owner = self.shared.pooled || self.shared.kind.is_queued();
        if own_owner
            && self.shared.stop.is_cancelled()
            && let Some(reason) = self.shared.lost_reason()
        {
            let client = &self.shared.client;
            self.shared.record_hold_at(Instant::now());
            client.untrack(self.id, &self.shared);
            let (name, owner) = (&self.shared.name, &self.shared.owner);
            // The owner stays out of the pool, as a renewal of it may still
            // be in flight. (After a shutdown, which released the client's
            // holds itself, there is nothing left to send.)
            if client.check_open().is_ok() {
                client.release_in_background(name.clone(), owner.clone(), false, self.shared.kind);
            }
            if let Some(m) = &client.metrics {
                m.lock_op(client.backend_name, "release", "not_held");
            }
            return Err(Error::NotHeld(format!(
                "lock {name:?} was lost before its release ({reason})"
            )));
        }
        let now = Instant::now();
        self.shared.record_hold_at(now);
        self.shared.stop.cancel();
        let client = &self.shared.client;
        let span = tracing::debug_span!("coord.lock.release", backend = client.backend_name, lock = %self.shared.name);
        let (name, owner, kind) = (&self.shared.name, &self.shared.owner, self.shared.kind);
        // An in-process backend answers at once (a disabled span is not
        // entered on every poll).
        if span.is_disabled() && !kind.is_queued() && client.answers_at_once.load(Ordering::Relaxed)
        {
            if let Some(result) = self.release_at_once(now) {
                return result;
            }
        } else {
            client.untrack(self.id, &self.shared);
        }
        let (result, clean) = if span.is_disabled() {
            // Inline, with no allocation: its retries are boxed apart (see
            // `RetryPolicy::run`), so it adds little to this future.
            client.release_settled(name, owner, kind).await
        } else {
            let release = client.release_settled(name, owner, kind);
            Box::pin(tracing::Instrument::instrument(release, span)).await
        };
        // Released, or surely not held: a clean release's owner is reused.
        if matches!(result, Ok(()) | Err(Error::NotHeld(_))) && self.shared.pooled && clean {
            client.recycle_owner(self.shared.owner.clone());
        }
        self.released(result)
    }

    /// The release of a lease lock by an in-process backend, answered at
    /// once (`None` when the backend must be awaited): the guard is
    /// untracked, the lock released at `now` and the owner kept for reuse
    /// under one lock of the guard's shard. Untracks the guard either way.
    fn release_at_once(&self, now: Instant) -> Option<Result<()>> {
        let (client, name, owner) = (&self.shared.client, &self.shared.name, &self.shared.owner);
        let mut shard = client.tables.lock_shard_of(self.id);
        let untracked = shard.remove(self.id, &self.shared);
        let answer = client.call_now("release", |b| b.release_now(name, owner, now));
        if self.shared.pooled && matches!(answer, Some(Ok(()) | Err(Error::NotHeld(_)))) {
            shard.put_owner(owner.clone());
        }
        drop(shard);
        drop(untracked);
        let Some(result) = answer else {
            // A backend to await (a client whose locks are all new handles,
            // which skip the at-once grant): from now on the general path.
            client.answers_at_once.store(false, Ordering::Relaxed);
            return None;
        };
        Some(self.released(result))
    }

    /// Counts the release's `result` and, when the backend did not answer
    /// it (after the retries), releases in the background, so that the lock
    /// does not stay held until its lease ends (the owner stays out of the
    /// pool: the failed release may land).
    fn released(&self, result: Result<()>) -> Result<()> {
        let client = &self.shared.client;
        if let Some(m) = &client.metrics {
            let outcome = result.as_ref().map_or_else(Error::kind_label, |_| "ok");
            m.lock_op(client.backend_name, "release", outcome);
        }
        if let Err(e) = &result
            && !matches!(e, Error::NotHeld(_))
        {
            let shared = &self.shared;
            client.release_in_background(
                shared.name.clone(),
                shared.owner.clone(),
                false,
                shared.kind,
            );
        }
        result
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.shared.kind == LockKind::Reentrant {
            crate::lock::reentrant::release_dropped(&self.shared, self.id);
            return;
        }
        self.shared.record_hold();
        self.shared.stop.cancel();
        let client = &self.shared.client;
        client.untrack(self.id, &self.shared);
        client.release_in_background(
            self.shared.name.clone(),
            self.shared.owner.clone(),
            self.shared.pooled,
            self.shared.kind,
        );
    }
}
