//! `Lock`: a named lock with its options, and the acquire/wait loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::lock::backend::ReleaseEvents;
use crate::lock::client::LockClient;
use crate::lock::guard::LockGuard;
use crate::lock::kind::LockKind;
use crate::lock::outage::{LAST_LOOK, Outage};
use crate::lock::relisten::Relisten;
use crate::lock::shards::LockedShard;
use crate::lock::stats::StatsCell;
use crate::lock::types::{AcquireOutcome, LockGrant, LockOwner, validate_lock_request};
use crate::retry::RetryPolicy;

/// `listening`'s release signals, or, when `deadline` passes first (a
/// server that does not confirm a subscription), none: the waiter polls,
/// and its wait still ends at its deadline.
pub(crate) async fn listen_until(
    deadline: Option<Instant>,
    listening: impl std::future::Future<Output = ReleaseEvents>,
) -> ReleaseEvents {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, listening)
            .await
            .unwrap_or_else(|_| ReleaseEvents::never()),
        None => listening.await,
    }
}

/// A waiter whose notification channel ends listens again at once, unless
/// the channel lived shorter than this: then it polls, and listens again
/// later ([`Relisten`]), so a failing channel cannot make it spin.
pub(crate) const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Options of one lock; start from [`LockClient::lock`].
#[derive(Debug, Clone)]
#[must_use]
pub struct LockBuilder {
    client: LockClient,
    name: String,
    ttl: Duration,
    wait_timeout: Option<Duration>,
    poll_interval: Duration,
    watchdog: bool,
    owner: Option<String>,
    kind: LockKind,
}

impl LockBuilder {
    pub(crate) fn new(client: LockClient, name: String) -> Self {
        let d = &client.shared.defaults;
        LockBuilder {
            ttl: d.ttl,
            wait_timeout: d.wait_timeout,
            poll_interval: d.poll_interval,
            watchdog: d.watchdog,
            owner: None,
            kind: LockKind::Lease,
            client,
            name,
        }
    }

    /// The kind of lock (default [`LockKind::Lease`]).
    pub fn kind(mut self, kind: LockKind) -> Self {
        self.kind = kind;
        self
    }

    /// A reentrant lock ([`LockKind::Reentrant`]): its owner (the one given
    /// with [`owner`](Self::owner), or else the current tokio task) may
    /// acquire it again while holding it; only the last release frees it.
    pub fn reentrant(self) -> Self {
        self.kind(LockKind::Reentrant)
    }

    /// A fair lock ([`LockKind::Fair`]): granted strictly in request order.
    pub fn fair(self) -> Self {
        self.kind(LockKind::Fair)
    }

    /// A semaphore of `permits` permits ([`LockKind::Semaphore`]), granted in
    /// request order; each permit has its own fencing token.
    pub fn semaphore(self, permits: u32) -> Self {
        self.kind(LockKind::Semaphore(permits))
    }

    /// The read side of a read-write lock ([`LockKind::Read`]).
    pub fn read(self) -> Self {
        self.kind(LockKind::Read)
    }

    /// The write side of a read-write lock ([`LockKind::Write`]).
    pub fn write(self) -> Self {
        self.kind(LockKind::Write)
    }

    /// The lease TTL. A holder that stops renewing loses the lock after it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long `acquire()` waits before returning [`Error::Timeout`].
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// Wait forever in `acquire()` (the default unless settings say
    /// otherwise) while the lock is held. A backend that fails still ends
    /// the wait once it has failed for the retry policy's `max_elapsed` in
    /// a row (see [`Lock::acquire`]).
    pub fn wait_forever(mut self) -> Self {
        self.wait_timeout = None;
        self
    }

    /// How often a waiter retries when no release notification arrives.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Whether the guard renews its lease at a third of the TTL (default on).
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// A fixed logical owner instead of a fresh one per acquisition.
    ///
    /// * Lease lock: two acquisitions with the same owner are the same hold
    ///   (idempotent).
    /// * Reentrant lock: the owner whose holds are counted (default: the
    ///   current tokio task).
    /// * Queued kinds: the name shown for the entry (`owner#<random>`); each
    ///   acquisition is still an entry of its own.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// The lock. Its options are checked when it is first acquired.
    pub fn build(self) -> Lock {
        Lock {
            client: self.client,
            name: self.name.into(),
            ttl: self.ttl,
            wait_timeout: self.wait_timeout,
            poll_interval: self.poll_interval.max(Duration::from_millis(1)),
            watchdog: self.watchdog,
            owner: self.owner,
            kind: self.kind,
            cells: Arc::default(),
        }
    }
}

/// A named lease lock. Acquire it to get a [`LockGuard`].
#[derive(Debug, Clone)]
pub struct Lock {
    client: LockClient,
    name: Arc<str>,
    ttl: Duration,
    wait_timeout: Option<Duration>,
    poll_interval: Duration,
    watchdog: bool,
    owner: Option<String>,
    kind: LockKind,
    /// What the handle learns once and its clones share.
    cells: Arc<LockCells>,
}

/// What a [`Lock`] handle learns on first use (one allocation per handle).
#[derive(Debug, Default)]
struct LockCells {
    /// This lock's statistics cell, looked up in the client's table on
    /// first use.
    stats: OnceLock<Arc<StatsCell>>,
    /// The name, TTL and kind passed their checks (they never change).
    checked: AtomicBool,
    /// The last acquisition through this handle had to wait: the next one
    /// listens for releases before its first request, sparing the request a
    /// waiter otherwise sends again once it listens.
    waited: AtomicBool,
}

enum Attempt {
    /// The grant, when its request was sent and when its reply arrived.
    Granted(LockGrant, Instant, Instant),
    Held(Option<Duration>),
    /// Granted, but the grant's validity ran out while the reply was in
    /// flight (a paused server, a slow network): not a hold. The lock may
    /// still be ours on the server until its lease ends there.
    LostOnArrival,
}

/// Whether a grant whose request was sent at `sent_at` is past its
/// validity, or so nearly (less than a tenth of its TTL left) that its guard
/// would be lost before a renewal could answer: a guard lost on arrival.
/// (Asking again with the same owner renews it instead.)
pub(crate) fn lost_on_arrival(grant: &LockGrant, sent_at: Instant, arrived: Instant) -> bool {
    arrived.saturating_duration_since(sent_at) >= grant.ttl - grant.ttl / 10
}

impl Lock {
    /// Whether the last acquisition through this handle waited.
    pub(crate) fn waited_last_time(&self) -> bool {
        self.cells.waited.load(Ordering::Relaxed)
    }

    /// Records whether this acquisition waited.
    pub(crate) fn set_waited(&self, waited: bool) {
        self.cells.waited.store(waited, Ordering::Relaxed);
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lock's kind.
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// The lock's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub(crate) fn client(&self) -> &LockClient {
        &self.client
    }

    /// Acquires the lock, waiting while someone else holds it: woken by the
    /// backend's release notification, or at the holder's lease end, or at
    /// the poll interval at the latest. Returns [`Error::Timeout`] when the
    /// wait timeout passes first.
    ///
    /// A backend that fails with a retryable error (a restart, a failover)
    /// is asked again with the same owner, one request at a time, as if the
    /// lock were held, until it answers, the wait timeout passes
    /// ([`Error::Timeout`], naming the backend's error), or it has failed
    /// for the retry policy's `max_elapsed` in a row (the backend's error,
    /// saying how long it failed).
    pub async fn acquire(&self) -> Result<LockGuard> {
        let span = tracing::debug_span!("coord.lock.acquire", backend = self.client.shared.backend_name, lock = %self.name);
        if span.is_disabled()
            && let Some(guard) = self.acquire_at_once()
        {
            if let Some(m) = &self.client.shared.metrics {
                m.lock_op(self.client.shared.backend_name, "acquire", "ok");
            }
            return Ok(guard);
        }
        // The general path runs inline: an uncontended lease acquisition
        // allocates no future (an allocation per call, often freed on
        // another worker thread, cost the 64-task Redis bench a tenth of
        // its client CPU). What is large and rare (the waiting loop, the
        // retries, the other kinds) is boxed apart, where it runs.
        let result = if span.is_disabled() {
            self.acquire_unspanned().await
        } else {
            Box::pin(self.acquire_unspanned().instrument(span)).await
        };
        self.record("acquire", &result);
        result
    }

    /// One attempt: the guard if the lock was free, `None` if it is held.
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        let span = tracing::debug_span!("coord.lock.try_acquire", backend = self.client.shared.backend_name, lock = %self.name);
        let result = if span.is_disabled() {
            self.try_acquire_unspanned().await
        } else {
            self.try_acquire_unspanned().instrument(span).await
        };
        if let Some(m) = &self.client.shared.metrics {
            let outcome = match &result {
                Ok(Some(_)) => "ok",
                Ok(None) => "busy",
                Err(e) => e.kind_label(),
            };
            m.lock_op(self.client.shared.backend_name, "try_acquire", outcome);
        }
        result
    }

    /// A free lease lock of an in-process backend, granted without a
    /// future ([`LockBackend::try_acquire_now`]); `None` sends the caller
    /// down the general path (a held lock, another kind, a first use whose
    /// checks have not run, a backend that must be awaited).
    ///
    /// [`LockBackend::try_acquire_now`]: crate::lock::LockBackend::try_acquire_now
    fn acquire_at_once(&self) -> Option<LockGuard> {
        let shared = &self.client.shared;
        if self.kind != LockKind::Lease
            || !self.cells.checked.load(Ordering::Relaxed)
            || !shared.answers_at_once.load(Ordering::Relaxed)
        {
            return None;
        }
        if self.owner.is_some() {
            // A fixed owner: not from the pool.
            let (owner, pooled) = self.check_and_owner().ok()?;
            return self.grant_at_once(None, owner, pooled);
        }
        // The owner is taken from, and the guard tracked in, this thread's
        // shard under one lock. Checked under it: a shutdown closes the
        // client before it drains the shards, so either this sees the
        // client closed or the shutdown finds this guard.
        let mut shard = shared.tables.lock_thread_shard();
        shared.check_open().ok()?;
        let owner = shard
            .take_owner()
            .unwrap_or_else(|| LockOwner::unique(&shared.client_id));
        self.grant_at_once(Some(&mut shard), owner, true)
    }

    /// [`Lock::acquire_at_once`] with `owner`: its guard is tracked in
    /// `shard` when given (where a refused `owner` goes back too).
    fn grant_at_once(
        &self,
        mut shard: Option<&mut LockedShard<'_>>,
        owner: LockOwner,
        pooled: bool,
    ) -> Option<LockGuard> {
        let shared = &self.client.shared;
        // One clock reading: the backend grants at `now` and the answer is
        // there at once, with no reply in flight to outlive the grant (a
        // thread stalled past the TTL inside this call is no different from
        // one stalled just after it, which no check can see), so the grant
        // is never lost on arrival and arrives at `now`.
        let now = Instant::now();
        let answer = shared.call_now("try_acquire", |b| {
            b.try_acquire_now(&self.name, &owner, self.ttl, now)
        });
        if let Some(Ok(AcquireOutcome::Granted(grant))) = answer {
            return Some(self.guard_in(shard, owner, pooled, grant, (now, now), now, false));
        }
        if answer.is_none() {
            // A backend to await: from now on the general path only.
            shared.answers_at_once.store(false, Ordering::Relaxed);
        }
        // Held, or an error answered at once (nothing was applied): the
        // general path asks again and waits or reports.
        match (pooled, shard.as_mut()) {
            (true, Some(shard)) => shard.put_owner(owner),
            _ => self.recycle(owner, pooled),
        }
        None
    }

    async fn acquire_unspanned(&self) -> Result<LockGuard> {
        let (owner, pooled) = self.check_and_owner()?;
        // The other kinds' futures are boxed: inline, the largest would
        // grow every lease acquisition's future (see `acquire`).
        match self.kind {
            LockKind::Lease => self.acquire_lease(owner, pooled).await,
            LockKind::Reentrant => Box::pin(self.acquire_reentrant(owner)).await,
            _ => Box::pin(self.acquire_queued(owner, pooled)).await,
        }
    }

    async fn try_acquire_unspanned(&self) -> Result<Option<LockGuard>> {
        let (owner, pooled) = self.check_and_owner()?;
        match self.kind {
            LockKind::Lease => self.try_acquire_lease(owner, pooled).await,
            LockKind::Reentrant => self.try_acquire_reentrant(owner).await,
            _ => self.try_acquire_queued(owner, pooled).await,
        }
    }

    /// One lease attempt with `owner`.
    pub(crate) async fn try_acquire_lease(
        &self,
        owner: LockOwner,
        pooled: bool,
    ) -> Result<Option<LockGuard>> {
        let started = Instant::now();
        let answer = match self.attempt(&owner, pooled, started, true).await {
            Ok(answer) => answer,
            Err(e) => {
                self.drop_failed(owner, pooled, &e);
                return Err(e);
            }
        };
        Ok(match answer {
            Attempt::Granted(grant, sent_at, arrived) => {
                Some(self.guard(owner, pooled, grant, (sent_at, arrived), started, false))
            }
            Attempt::Held(_) => {
                self.recycle(owner, pooled);
                None
            }
            Attempt::LostOnArrival => {
                self.give_back(owner, pooled).await;
                None
            }
        })
    }

    /// Gives back a grant that is not to be a hold (it arrived too late,
    /// or after the client was shut down), so that it does not block others
    /// until its lease ends; an error leaves it to expire.
    async fn give_back(&self, owner: LockOwner, pooled: bool) {
        let shared = &self.client.shared;
        match shared
            .call("release", shared.backend.release(&self.name, &owner))
            .await
        {
            Ok(()) | Err(Error::NotHeld(_)) => self.recycle(owner, pooled),
            // Maybe still held: released in the background, and the owner
            // never goes back to the pool, since the failed release may
            // still land and would end a later hold of the same owner.
            Err(_) => {
                shared.release_in_background(self.name.clone(), owner, false, LockKind::Lease)
            }
        }
    }

    fn record<T>(&self, op: &str, result: &Result<T>) {
        if let Some(m) = &self.client.shared.metrics {
            let outcome = result.as_ref().map_or_else(Error::kind_label, |_| "ok");
            m.lock_op(self.client.shared.backend_name, op, outcome);
        }
    }

    /// Checks the request and picks the owner; `true` when the owner comes
    /// from the client's pool (and goes back to it when the hold ends).
    fn check_and_owner(&self) -> Result<(LockOwner, bool)> {
        self.client.shared.check_open()?;
        if !self.cells.checked.load(Ordering::Relaxed) {
            validate_lock_request(&self.name, self.ttl)?;
            self.kind.validate()?;
            self.cells.checked.store(true, Ordering::Relaxed);
        }
        let client_id = &self.client.shared.client_id;
        match (&self.owner, self.kind) {
            // A lease lock with a fixed owner: the same hold (idempotent).
            (Some(o), LockKind::Lease) => Ok((LockOwner::new(client_id, o)?, false)),
            // The logical owner of a reentrant lock; each backend grant gets
            // a tagged owner of its own (see `reentrant.rs`).
            (Some(o), LockKind::Reentrant) => Ok((LockOwner::new(client_id, o)?, false)),
            (None, LockKind::Reentrant) => Ok((LockOwner::new(client_id, &current_task())?, false)),
            // Queued kinds: a fixed owner only names the entry; every
            // acquisition is an entry of its own, so the cleanup of a
            // cancelled one never removes a later one.
            (Some(o), _) => Ok((LockOwner::tagged(client_id, o)?, false)),
            (None, _) => Ok((self.client.shared.take_owner(), true)),
        }
    }

    /// Gives back a pooled owner that never got (or surely lost) a hold.
    pub(crate) fn recycle(&self, owner: LockOwner, pooled: bool) {
        if pooled {
            self.client.shared.recycle_owner(owner);
        }
    }

    /// Acquires the lease lock with `owner`, waiting while it is held.
    ///
    /// The first attempt runs inline and the waiting loop is boxed apart:
    /// an uncontended acquisition (most of them) allocates no future of its
    /// own, and the caller's future stays small.
    pub(crate) async fn acquire_lease(&self, owner: LockOwner, pooled: bool) -> Result<LockGuard> {
        let started = Instant::now();
        let first = if self.waited_last_time() {
            // Contended last time: listen before trying, so that a refusal
            // needs no second attempt once listening.
            None
        } else {
            // The first attempt goes out now: one clock reading less.
            // One request: a failure goes to the waiting loop's `Outage`.
            // (Not bounded by the wait timeout, which would grow every
            // acquisition's future by a timer: a hung server holds it for
            // its `request_timeout` at most.)
            match self.attempt(&owner, pooled, started, false).await {
                Ok(Attempt::Granted(grant, sent_at, arrived)) => {
                    self.set_waited(false);
                    let timing = (sent_at, arrived);
                    return Ok(self.guard(owner, pooled, grant, timing, started, false));
                }
                // Refused, or failed: the waiting loop waits or rides out
                // the failure (see `Outage`).
                answer => Some(answer),
            }
        };
        Box::pin(self.wait_for_lease(owner, pooled, started, first)).await
    }

    /// [`Lock::acquire_lease`] after a first attempt (sent at `started`)
    /// that did not grant (`first`), or from the start when `first` is
    /// `None`: listens for releases and tries again until granted or the
    /// wait timeout passes. A backend that fails is asked again with the
    /// same owner (see [`Outage`]).
    async fn wait_for_lease(
        &self,
        owner: LockOwner,
        pooled: bool,
        started: Instant,
        first: Option<Result<Attempt>>,
    ) -> Result<LockGuard> {
        let deadline = self.wait_timeout.map(|t| started + t);
        let shared = &self.client.shared;
        let mut events: Option<ReleaseEvents> = None;
        let mut subscribed_at: Option<Instant> = None;
        let mut _waiting = None;
        let mut waited = false;
        let mut relisten = Relisten::new();
        if first.is_none() {
            subscribed_at = Some(Instant::now());
            events = Some(listen_until(deadline, self.listen_for_releases(&mut relisten)).await);
        }
        let mut answered = first;
        // When the request of the answer at hand was sent.
        let mut sent_at = started;
        let mut outage = Outage::new(&shared.retry);
        // Whether the last answer was a grant that came too late, or a
        // failure (which may have been applied): the lock may then be held
        // by `owner` until given back.
        let mut late_grant = false;
        loop {
            // (An answer already here is taken first: the attempt that got
            // it checked the client.)
            if answered.is_none()
                && let Err(closed) = shared.check_open()
            {
                if late_grant {
                    self.give_back(owner, pooled).await;
                } else {
                    self.recycle(owner, pooled);
                }
                return Err(closed);
            }
            let answer = match answered.take() {
                Some(answer) => answer,
                // One request at a time, with no retries of its own (a
                // failure's pauses are the `Outage`'s), ending by the
                // deadline (or `LAST_LOOK` after a request sent at it): a
                // hung server cannot hold the wait past it.
                None => {
                    sent_at = Instant::now();
                    let attempt = self.attempt(&owner, pooled, sent_at, false);
                    match deadline {
                        None => attempt.await,
                        Some(d) => {
                            match tokio::time::timeout_at(d.max(sent_at + LAST_LOOK), attempt).await
                            {
                                Ok(answer) => answer,
                                // Still in flight: its `InFlight` gives back
                                // whatever it is granted, and keeps the owner
                                // out of the pool.
                                Err(_) => {
                                    let what = format_args!("lock {:?}", &*self.name);
                                    return Err(
                                        outage.unanswered_at_deadline(what, started.elapsed())
                                    );
                                }
                            }
                        }
                    }
                }
            };
            let answer = match answer {
                Ok(answer) => {
                    outage.answered();
                    answer
                }
                Err(e) => match outage.failed(&e, &self.name, sent_at, deadline) {
                    // The request may have been applied: the owner is kept,
                    // and its next grant renews whatever this one got.
                    Some(again) => {
                        late_grant = true;
                        // Dropped while it waits: the owner's maybe-hold is
                        // released in the background.
                        let maybe_held = InFlight {
                            lock: self,
                            owner: &owner,
                            armed: true,
                        };
                        tokio::time::sleep_until(again).await;
                        maybe_held.answered();
                        continue;
                    }
                    None => {
                        self.drop_failed(owner, pooled, &e);
                        return Err(outage.gave_up(e, format_args!("lock {:?}", &*self.name)));
                    }
                },
            };
            late_grant = matches!(answer, Attempt::LostOnArrival);
            let retry_after = match answer {
                Attempt::Granted(grant, sent_at, arrived) => {
                    self.set_waited(waited);
                    let timing = (sent_at, arrived);
                    return Ok(self.guard(owner, pooled, grant, timing, started, waited));
                }
                Attempt::Held(retry_after) => {
                    waited = true;
                    retry_after
                }
                // Ask again at once: the same owner's next grant renews the
                // lease (or the lock went to someone else meanwhile).
                Attempt::LostOnArrival => Some(Duration::ZERO),
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                if late_grant {
                    self.give_back(owner, pooled).await;
                } else {
                    self.recycle(owner, pooled);
                }
                return Err(Error::Timeout(format!(
                    "lock {:?} still held by another owner after waiting {:?}",
                    &*self.name,
                    now - started
                )));
            }
            let Some(listening) = events.as_mut() else {
                // Listen first, then try again at once: a release between the
                // failed attempt and the subscription is not missed.
                subscribed_at = Some(Instant::now());
                events =
                    Some(listen_until(deadline, self.listen_for_releases(&mut relisten)).await);
                _waiting = Some(shared.waiting_enter());
                continue;
            };
            if _waiting.is_none() {
                _waiting = Some(shared.waiting_enter());
            }
            let mut wake = now + self.poll_interval;
            if let Some(after) = retry_after {
                wake = wake.min(now + after + Duration::from_millis(1));
            }
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            tokio::select! {
                alive = listening.next() => if !alive {
                    // The backend lost its notification channel (a dropped
                    // pub/sub connection, a cancelled watch). Listen again and
                    // retry at once, unless the new channel died young too:
                    // then poll, and listen again later (`Relisten`).
                    if subscribed_at.is_some_and(|at| at.elapsed() >= RESUBSCRIBE_AFTER) {
                        tracing::debug!("release notifications ended; listening again");
                        relisten.lived();
                        events = None;
                    } else {
                        tracing::debug!("release notifications ended again at once; polling");
                        relisten.failed();
                        events = Some(ReleaseEvents::never());
                    }
                },
                _ = tokio::time::sleep_until(relisten.wake(wake)) => if relisten.due() {
                    // Polling since the notifications failed: listen again.
                    tracing::debug!("release notifications failed earlier; listening again");
                    events = None;
                },
            }
        }
    }

    /// Release signals of this lock; never fails (polls instead, and
    /// listens again later: see [`Relisten`]).
    async fn listen_for_releases(&self, relisten: &mut Relisten) -> ReleaseEvents {
        match self.client.shared.backend.subscribe(&self.name).await {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for releases; polling");
                relisten.failed();
                ReleaseEvents::never()
            }
        }
    }

    /// One attempt, with the client's retries of retryable errors unless
    /// `retries` is false (an outage's pauses are the retries). On an error
    /// the request may have been applied: the caller asks again with the
    /// same owner or gives it up ([`Lock::drop_failed`]), never assumes "not
    /// acquired".
    /// `sent_at` is a reading of the clock taken just before the call:
    /// validity counts from before the request is sent (before the first
    /// retry, which only makes it shorter), never from wall-clock time.
    async fn attempt(
        &self,
        owner: &LockOwner,
        pooled: bool,
        sent_at: Instant,
        retries: bool,
    ) -> Result<Attempt> {
        let shared = &self.client.shared;
        // An in-process backend answers at once: no future, no retry (it
        // never fails transiently).
        // (The answer is the `if let`'s scrutinee, which is dropped before
        // the `else`: the future does not keep it across the call.)
        let result = if let Some(r) = shared.call_now("try_acquire", |b| {
            b.try_acquire_now(&self.name, owner, self.ttl, sent_at)
        }) {
            r
        } else {
            let in_flight = InFlight {
                lock: self,
                owner,
                armed: true,
            };
            let policy = if retries {
                &shared.retry
            } else {
                RetryPolicy::no_retries()
            };
            let result = policy
                .run(|| {
                    shared.call(
                        "try_acquire",
                        shared.backend.try_acquire(&self.name, owner, self.ttl),
                    )
                })
                .await;
            in_flight.answered();
            result
        };
        let arrived = Instant::now();
        if matches!(result, Ok(AcquireOutcome::Granted(_)))
            && let Err(closed) = shared.check_open()
        {
            // Granted after `shutdown()` released the client's holds: not a
            // hold either. (Boxed: a rare path, kept out of this future.)
            Box::pin(self.give_back(owner.clone(), pooled)).await;
            return Err(closed);
        }
        match result {
            Ok(AcquireOutcome::Granted(grant)) if lost_on_arrival(&grant, sent_at, arrived) => {
                tracing::debug!(lock = %self.name, ttl = ?grant.ttl, elapsed = ?(arrived - sent_at), "a grant arrived after its validity ended; not a hold");
                Ok(Attempt::LostOnArrival)
            }
            Ok(AcquireOutcome::Granted(grant)) => Ok(Attempt::Granted(grant, sent_at, arrived)),
            Ok(AcquireOutcome::Held { retry_after }) => Ok(Attempt::Held(retry_after)),
            Err(e) => Err(e),
        }
    }

    /// Gives up on `owner` after an attempt failed with `e`: the request
    /// may have been applied, so the owner is handed to a background
    /// release (never assumed "not acquired"), unless it was refused outright.
    fn drop_failed(&self, owner: LockOwner, pooled: bool, e: &Error) {
        if matches!(e, Error::InvalidArgument(_) | Error::Unsupported(_)) {
            self.recycle(owner, pooled);
        } else if matches!(e, Error::Closed(_)) {
            // A grant after `shutdown()`, which the attempt gave back (and
            // the closed client lends no owner again).
        } else {
            self.client.shared.release_in_background(
                self.name.clone(),
                owner,
                pooled,
                LockKind::Lease,
            );
        }
    }

    pub(crate) fn guard(
        &self,
        owner: LockOwner,
        pooled: bool,
        grant: LockGrant,
        timing: (Instant, Instant),
        started: Instant,
        contended: bool,
    ) -> LockGuard {
        self.guard_in(None, owner, pooled, grant, timing, started, contended)
    }

    /// [`Lock::guard`], tracked in `shard` when given (see [`LockGuard::new`]).
    #[allow(clippy::too_many_arguments)] // two call sites, each argument named there
    fn guard_in(
        &self,
        shard: Option<&mut LockedShard<'_>>,
        owner: LockOwner,
        pooled: bool,
        grant: LockGrant,
        (sent_at, granted_at): (Instant, Instant),
        started: Instant,
        contended: bool,
    ) -> LockGuard {
        let shared = &self.client.shared;
        // (Granted at its start, the in-process grant: no clock arithmetic.)
        let waited = if granted_at == started {
            Duration::ZERO
        } else {
            granted_at.saturating_duration_since(started)
        };
        let stats = self.stats_cell();
        stats.acquired(waited, contended);
        if let Some(m) = &shared.metrics {
            m.lock_acquired(shared.backend_name, waited);
            m.lock_granted(shared.backend_name, stats.label(), waited, contended);
        }
        LockGuard::new(
            shard,
            shared.clone(),
            self.name.clone(),
            owner,
            pooled,
            grant,
            sent_at,
            granted_at,
            self.watchdog,
            self.kind,
            stats.clone(),
        )
    }

    /// This lock's statistics cell.
    pub(crate) fn stats_cell(&self) -> &Arc<StatsCell> {
        self.cells
            .stats
            .get_or_init(|| self.client.shared.stats.cell(&self.name))
    }

    /// How long a waiter may sleep before its next attempt.
    pub(crate) fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// When `acquire()` gives up, counted from `started`.
    pub(crate) fn deadline(&self, started: Instant) -> Option<Instant> {
        self.wait_timeout.map(|t| started + t)
    }

    /// This lock with another wait timeout.
    pub(crate) fn with_wait_timeout(&self, timeout: Option<Duration>) -> Lock {
        let mut lock = self.clone();
        lock.wait_timeout = timeout;
        lock
    }

    /// The name, shared.
    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.name
    }
}

/// The logical owner of a reentrant lock acquired without an explicit owner:
/// the current tokio task, or the current thread outside of a task.
fn current_task() -> String {
    match tokio::task::try_id() {
        Some(id) => format!("task-{id}"),
        None => format!("thread-{:?}", std::thread::current().id()),
    }
}

/// A lease request awaiting its answer. If the acquisition's future is
/// dropped first (a `tokio::time::timeout` around `acquire()`, a cancelled
/// campaign), the request may still grant: the owner's hold is then
/// released in the background, and the owner stays out of the pool.
struct InFlight<'a> {
    lock: &'a Lock,
    owner: &'a LockOwner,
    armed: bool,
}

impl InFlight<'_> {
    /// The answer arrived: whoever awaits it now owns the outcome.
    fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.lock.client.shared.release_in_background(
                self.lock.name.clone(),
                self.owner.clone(),
                false,
                LockKind::Lease,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::LockClient;
    use crate::memory::MemoryBackend;

    #[test]
    fn an_uncontended_acquisition_carries_no_waiting_or_retry_state() {
        let client = LockClient::new(Arc::new(MemoryBackend::new()));
        let lock = client.lock("sizes").build();
        // `acquire` runs the first attempt inline, in the caller's future
        // (no allocation of its own); the waiting loop, the retries and the
        // other kinds are boxed apart, only when they run. With the waiting
        // loop and the retries inline, it was 776 bytes.
        let size = std::mem::size_of_val(&lock.acquire());
        assert!(size <= 512, "acquire: {size} bytes");
    }

    #[tokio::test]
    async fn a_release_carries_no_retry_state() {
        let client = LockClient::new(Arc::new(MemoryBackend::new()));
        let guard = client
            .lock("sizes")
            .build()
            .acquire()
            .await
            .expect("acquire");
        // `release` runs the backend call inline (no allocation of its own);
        // the retries' timer and backoff are boxed apart. Inline, they made
        // this future 704 bytes.
        let release = guard.release();
        let size = std::mem::size_of_val(&release);
        assert!(size <= 640, "release: {size} bytes");
        release.await.expect("release");
    }
}
