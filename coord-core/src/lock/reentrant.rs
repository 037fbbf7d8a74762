//! Reentrant locks: one lease hold on the backend, counted per
//! [`LockOwner`] in the client that owns it.
//!
//! An owner's client id is part of the owner, so only this client can hold
//! for it; counting here costs no round trip and keeps one fencing token and
//! one renewal for all nested holds. A per-(name, owner) gate serialises the
//! first acquisition and the last release, so a new hold never starts while
//! the release of the previous one is still in flight.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::lock::guard::{GuardShared, LockGuard};
use crate::lock::types::LockOwner;

type SlotKey = (Arc<str>, LockOwner);

/// The gates of the reentrant locks of one client.
#[derive(Debug, Default)]
pub(crate) struct ReentrantSlots {
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
}

/// One (name, owner): the live hold, if any, and its guard id.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) gate: tokio::sync::Mutex<Option<(Arc<GuardShared>, u64)>>,
}

impl ReentrantSlots {
    pub(crate) fn slot(&self, name: &Arc<str>, owner: &LockOwner) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((name.clone(), owner.clone()))
            .or_default()
            .clone()
    }

    /// Drops the slot when nobody but the map and the caller uses it.
    fn forget(&self, name: &Arc<str>, owner: &LockOwner, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(slot) == 2 && slot.gate.try_lock().is_ok_and(|g| g.is_none()) {
            slots.remove(&(name.clone(), owner.clone()));
        }
    }
}

/// Adds one hold to the live hold in `gate`, if there is one and it is not lost.
pub(crate) fn reenter(gate: &Option<(Arc<GuardShared>, u64)>) -> Option<LockGuard> {
    let (held, id) = gate.as_ref()?;
    if held.is_lost() {
        return None;
    }
    held.holds
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            (h > 0).then_some(h + 1)
        })
        .ok()?;
    Some(LockGuard::share_of(held.clone(), *id))
}

/// Ends one hold; the last one releases the lock on the backend.
pub(crate) async fn release(shared: &Arc<GuardShared>, id: u64) -> Result<()> {
    if drop_one(shared) {
        return Ok(());
    }
    let client = shared.client.clone();
    let slot = client.reentrant.slot(&shared.name, &shared.owner);
    let result = {
        let mut gate = slot.gate.lock().await;
        // Another hold may have been added while we waited for the gate.
        if drop_one(shared) {
            return Ok(());
        }
        shared.holds.store(0, Ordering::Release);
        let current = gate.as_ref().is_some_and(|(g, _)| Arc::ptr_eq(g, shared));
        shared.record_hold();
        shared.stop.cancel();
        client.untrack(id);
        if current {
            let r = client
                .release_once(&shared.name, &shared.owner, shared.kind)
                .await;
            *gate = None;
            r
        } else {
            // This hold was lost and the owner holds the lock again under a
            // newer grant: releasing now would end that one.
            Err(Error::LockLost(format!(
                "{:?}: this hold was lost before its release",
                &*shared.name
            )))
        }
    };
    client.reentrant.forget(&shared.name, &shared.owner, &slot);
    result
}

/// A dropped guard: counts down at once, or releases in the background.
pub(crate) fn release_dropped(shared: &Arc<GuardShared>, id: u64) {
    if drop_one(shared) {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(lock = %shared.name, "no tokio runtime to release a dropped lock; it expires with its TTL");
        return;
    };
    let shared = shared.clone();
    handle.spawn(async move {
        if let Err(e) = release(&shared, id).await
            && !matches!(e, Error::NotHeld(_) | Error::LockLost(_))
        {
            tracing::warn!(lock = %shared.name, error = %e, "background release failed; the lock expires with its TTL");
        }
    });
}

/// Takes one hold off a count above one; `false` when this is the last hold.
fn drop_one(shared: &GuardShared) -> bool {
    shared
        .holds
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            (h > 1).then_some(h - 1)
        })
        .is_ok()
}

impl crate::lock::handle::Lock {
    /// Acquires a reentrant lock for `owner`: one more hold when the owner
    /// holds it already, else a lease acquisition (waiting as usual).
    pub(crate) async fn acquire_reentrant(&self, owner: LockOwner) -> Result<LockGuard> {
        self.reentrant_with(owner, false)
            .await?
            .ok_or_else(|| Error::Timeout("reentrant acquisition".into()))
    }

    /// One attempt at a reentrant lock for `owner`.
    pub(crate) async fn try_acquire_reentrant(
        &self,
        owner: LockOwner,
    ) -> Result<Option<LockGuard>> {
        self.reentrant_with(owner, true).await
    }

    async fn reentrant_with(&self, owner: LockOwner, once: bool) -> Result<Option<LockGuard>> {
        let shared = &self.client().shared;
        let slot = shared.reentrant.slot(self.name_arc(), &owner);
        let started = tokio::time::Instant::now();
        // The gate is held only while another task of this owner acquires or
        // releases; it counts against the wait timeout.
        let mut gate = match self.deadline(started) {
            Some(deadline) => tokio::time::timeout_at(deadline, slot.gate.lock())
                .await
                .map_err(|_| {
                    Error::Timeout(format!(
                        "reentrant lock {:?}: another task of the same owner is still acquiring it",
                        self.name()
                    ))
                })?,
            None => slot.gate.lock().await,
        };
        if let Some(guard) = reenter(&gate) {
            return Ok(Some(guard));
        }
        let guard = if once {
            self.try_acquire_lease(owner, false).await?
        } else {
            Some(self.acquire_lease(owner, false).await?)
        };
        if let Some(g) = &guard {
            *gate = Some((g.shared().clone(), g.id()));
        }
        Ok(guard)
    }
}
