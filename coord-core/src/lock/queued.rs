//! The acquire loop of queued kinds (fair locks, semaphores, read-write
//! locks): join the backend's queue once, then wait for a grant, keeping the
//! entry's lease alive (and the entry through a backend that fails for a
//! while: see [`Outage`]), and leave the queue at once on timeout or
//! cancellation.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::lock::backend::{ReleaseEvents, Wake};
use crate::lock::client::ClientShared;
use crate::lock::guard::LockGuard;
use crate::lock::handle::{Lock, RESUBSCRIBE_AFTER, listen_until};
use crate::lock::outage::{LAST_LOOK, Outage};
use crate::lock::queue::{HoldMode, QueueOutcome};
use crate::lock::relisten::Relisten;
use crate::lock::types::{FencingToken, LockGrant, LockOwner};
use crate::retry::RetryPolicy;

/// A queue entry that is not (yet) a guard's: dropping it (a cancelled or
/// failed acquisition) removes it from the queue in the background, so it
/// never blocks the waiters behind it.
struct Entry {
    shared: Arc<ClientShared>,
    name: Arc<str>,
    owner: Option<LockOwner>,
    pooled: bool,
    /// A dequeue was sent (and may still land).
    leaving: bool,
}

impl Entry {
    /// The entry became a guard's.
    fn into_owner(mut self) -> LockOwner {
        self.owner.take().expect("entry owner is taken once")
    }

    /// Leaves the queue now (a wait timeout or a busy `try_acquire`).
    async fn leave(mut self) {
        // The owner stays in the entry until the call returns: if this
        // future is dropped meanwhile, `Drop` still removes the entry.
        let Some(owner) = self.owner.clone() else {
            return;
        };
        let kind = crate::lock::LockKind::Fair;
        // From here a dequeue may be in flight: if this future is dropped,
        // `Drop` must not return the owner to the pool.
        self.leaving = true;
        let (result, clean) = self.shared.release_settled(&self.name, &owner, kind).await;
        self.owner = None;
        match result {
            Ok(()) | Err(Error::NotHeld(_)) => {
                if self.pooled && clean {
                    self.shared.recycle_owner(owner);
                }
            }
            Err(e) => {
                // No answer after the retries: leave in the background, so
                // that the entry does not block the queue until its lease
                // ends (and keep the owner out of the pool).
                tracing::debug!(lock = %self.name, error = %e, "could not leave the queue; leaving in the background");
                self.shared
                    .release_in_background(self.name.clone(), owner, false, kind);
            }
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            self.shared.release_in_background(
                self.name.clone(),
                owner,
                self.pooled && !self.leaving,
                crate::lock::LockKind::Fair,
            );
        }
    }
}

impl Lock {
    fn mode(&self) -> HoldMode {
        self.kind()
            .hold_mode()
            .expect("queued paths run for queued kinds only")
    }

    /// One `enqueue`, with the client's retries unless `retries` is false
    /// (an outage's pauses are the retries); the instant before it was sent.
    async fn enqueue_once(
        &self,
        owner: &LockOwner,
        retries: bool,
    ) -> Result<(QueueOutcome, Instant)> {
        let shared = &self.client().shared;
        let sent_at = Instant::now();
        let policy = if retries {
            &shared.retry
        } else {
            RetryPolicy::no_retries()
        };
        let outcome = policy
            .run(|| {
                shared.call(
                    "enqueue",
                    shared
                        .backend
                        .enqueue(self.name(), owner, self.mode(), self.ttl()),
                )
            })
            .await?;
        Ok((outcome, sent_at))
    }

    fn entry(&self, owner: &LockOwner, pooled: bool) -> Entry {
        Entry {
            shared: self.client().shared.clone(),
            name: self.name_arc().clone(),
            owner: Some(owner.clone()),
            pooled,
            leaving: false,
        }
    }

    /// One attempt: granted now, or out of the queue again.
    pub(crate) async fn try_acquire_queued(
        &self,
        owner: LockOwner,
        pooled: bool,
    ) -> Result<Option<LockGuard>> {
        let started = Instant::now();
        let entry = self.entry(&owner, pooled);
        let reply = self.enqueue_once(&owner, true).await;
        let arrived = Instant::now();
        match reply {
            Ok((QueueOutcome::Granted(grant), sent_at))
                if !crate::lock::handle::lost_on_arrival(&grant, sent_at, arrived) =>
            {
                if let Err(closed) = self.client().shared.check_open() {
                    // Granted after `shutdown()`: not a hold.
                    entry.leave().await;
                    return Err(closed);
                }
                let owner = entry.into_owner();
                let timing = (sent_at, arrived);
                Ok(Some(
                    self.guard(owner, pooled, grant, timing, started, false),
                ))
            }
            // Queued, or granted too late to be a hold: leave the queue.
            Ok((QueueOutcome::Granted(_) | QueueOutcome::Queued { .. }, _)) => {
                entry.leave().await;
                Ok(None)
            }
            Err(e) => Err(self.failed(entry, e)),
        }
    }

    /// An error from the backend: the entry may exist (the request may have
    /// been applied), so it is removed in the background unless the request
    /// was refused outright.
    fn failed(&self, entry: Entry, e: Error) -> Error {
        if matches!(e, Error::InvalidArgument(_) | Error::Unsupported(_)) {
            let mut entry = entry;
            if let Some(owner) = entry.owner.take() {
                self.recycle(owner, entry.pooled);
            }
        }
        e
    }

    /// Listens for changes that may grant `owner`; never fails (polls
    /// instead, and listens again later: see [`Relisten`]).
    async fn listen(&self, owner: &LockOwner, relisten: &mut Relisten) -> ReleaseEvents {
        match self
            .client()
            .shared
            .backend
            .subscribe_queue(self.name(), owner)
            .await
        {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for queue changes; polling");
                relisten.failed();
                ReleaseEvents::never()
            }
        }
    }

    /// Joins the queue and waits for the grant.
    pub(crate) async fn acquire_queued(&self, owner: LockOwner, pooled: bool) -> Result<LockGuard> {
        let shared = self.client().shared.clone();
        let started = Instant::now();
        let deadline = self.deadline(started);
        let mut entry = self.entry(&owner, pooled);
        // A waiting entry's lease is the lock's TTL: refresh it well before.
        let refresh = (self.ttl() / 3).max(Duration::from_millis(1));
        let mut events: Option<ReleaseEvents> = None;
        let mut subscribed_at: Option<Instant> = None;
        let mut _waiting = None;
        // The last answer that queued the entry: when its request was sent,
        // and the queue's fence then (see `Wake::Granted`).
        let mut queued_at: Option<(Instant, FencingToken)> = None;
        let mut waited = false;
        let mut listen_first = false;
        let mut relisten = Relisten::new();
        let mut outage = Outage::new(&shared.retry);
        if self.waited_last_time() {
            // Contended last time: listen before asking, so that the first
            // answer, if it queues the entry, needs no second one.
            subscribed_at = Some(Instant::now());
            events = Some(listen_until(deadline, self.listen(&owner, &mut relisten)).await);
        }
        loop {
            if let Err(closed) = shared.check_open() {
                entry.leave().await;
                return Err(closed);
            }
            // One request at a time, with no retries of its own (a
            // failure's pauses are the `Outage`'s), ending by the deadline
            // (or `LAST_LOOK` after a request sent at it): a hung server
            // cannot hold the wait past it.
            let sent = Instant::now();
            let enqueue = self.enqueue_once(&owner, false);
            let reply = match deadline {
                None => enqueue.await,
                Some(d) => match tokio::time::timeout_at(d.max(sent + LAST_LOOK), enqueue).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        // The enqueue may still land: the entry leaves in
                        // the background, its owner out of the pool.
                        entry.pooled = false;
                        drop(entry);
                        let what = format_args!("{} lock {:?}", self.kind(), self.name());
                        return Err(outage.unanswered_at_deadline(what, started.elapsed()));
                    }
                },
            };
            let arrived = Instant::now();
            if reply.is_ok() {
                outage.answered();
            }
            let retry_after = match reply {
                Ok((QueueOutcome::Granted(grant), sent_at))
                    if crate::lock::handle::lost_on_arrival(&grant, sent_at, arrived) =>
                {
                    // Granted too late to be a hold: ask again at once (the
                    // entry's next answer renews its lease, or it re-queues).
                    tracing::debug!(lock = %self.name(), "a grant arrived after its validity ended; not a hold");
                    Some(Duration::ZERO)
                }
                Ok((QueueOutcome::Granted(grant), sent_at)) => {
                    if let Err(closed) = shared.check_open() {
                        // Granted after `shutdown()`: not a hold.
                        entry.leave().await;
                        return Err(closed);
                    }
                    let owner = entry.into_owner();
                    self.set_waited(listen_first);
                    let timing = (sent_at, arrived);
                    return Ok(self.guard(owner, pooled, grant, timing, started, waited));
                }
                Ok((
                    QueueOutcome::Queued {
                        retry_after, fence, ..
                    },
                    sent_at,
                )) => {
                    queued_at = fence.map(|f| (sent_at, f));
                    waited = true;
                    // Listening before the next acquisition's first request
                    // helps only where the events do not depend on the entry
                    // existing: a backend that announces grants (etcd
                    // watches the entry's predecessor, found from the entry).
                    listen_first = fence.is_some();
                    retry_after
                }
                Err(e) => match outage.failed(&e, self.name(), sent, deadline) {
                    // The entry is kept (the request may have been applied):
                    // its next enqueue renews it, or queues it again after a
                    // restart that lost it.
                    Some(again) => {
                        queued_at = None;
                        // Cancelled from here, a late enqueue could still
                        // land after the background dequeue: the owner
                        // stays out of the pool.
                        entry.pooled = false;
                        tokio::time::sleep_until(again).await;
                        continue;
                    }
                    None => {
                        let e = self.failed(entry, e);
                        let what = format_args!("{} lock {:?}", self.kind(), self.name());
                        return Err(outage.gave_up(e, what));
                    }
                },
            };
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                entry.leave().await;
                return Err(Error::Timeout(format!(
                    "{} lock {:?}: not granted after waiting {:?}",
                    self.kind(),
                    self.name(),
                    now - started
                )));
            }
            let Some(listening) = events.as_mut() else {
                // Listen first, then ask again at once, so a removal between
                // the answer and the subscription is not missed.
                subscribed_at = Some(Instant::now());
                events = Some(listen_until(deadline, self.listen(&owner, &mut relisten)).await);
                _waiting = Some(shared.waiting_enter());
                continue;
            };
            if _waiting.is_none() {
                _waiting = Some(shared.waiting_enter());
            }
            let mut wake = now + self.poll_interval().min(refresh);
            if let Some(after) = retry_after {
                wake = wake.min(now + after + Duration::from_millis(1));
            }
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            tokio::select! {
                wake = listening.next_wake() => {
                    if let (Some(Wake::Granted(token)), Some((sent_at, fence))) = (wake, queued_at) {
                        // Handed over by the release that let the entry in:
                        // a grant of the current entry (a token above the
                        // fence of its last answer), whose lease was last
                        // set by the request sent at `sent_at`.
                        let grant = LockGrant { token, ttl: self.ttl() };
                        let arrived = Instant::now();
                        if token > fence
                            && !crate::lock::handle::lost_on_arrival(&grant, sent_at, arrived)
                        {
                            if let Err(closed) = shared.check_open() {
                                // Granted after `shutdown()`: not a hold.
                                entry.leave().await;
                                return Err(closed);
                            }
                            let owner = entry.into_owner();
                            self.set_waited(listen_first);
                            let timing = (sent_at, arrived);
                            return Ok(self.guard(owner, pooled, grant, timing, started, true));
                        }
                    }
                    let alive = wake.is_some();
                    if alive || subscribed_at.is_some_and(|at| at.elapsed() >= RESUBSCRIBE_AFTER) {
                        // A change ahead of us (or a lost channel): listen
                        // anew, as the backend may watch another predecessor
                        // now, then ask again.
                        // (Either way the channel worked.)
                        relisten.lived();
                        subscribed_at = Some(Instant::now());
                        events = Some(listen_until(deadline, self.listen(&owner, &mut relisten)).await);
                    } else {
                        tracing::debug!("queue notifications ended again at once; polling");
                        relisten.failed();
                        events = Some(ReleaseEvents::never());
                    }
                },
                _ = tokio::time::sleep_until(relisten.wake(wake)) => if relisten.due() {
                    // Polling since the notifications failed: listen again,
                    // then ask again.
                    tracing::debug!("queue notifications failed earlier; listening again");
                    events = None;
                },
            }
        }
    }
}
