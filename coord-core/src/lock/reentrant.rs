//! Reentrant locks: holds counted per logical [`LockOwner`] in the client
//! that owns it, over one lease hold on the backend.
//!
//! An owner's client id is part of the owner, so only this client can hold
//! for it; counting here costs no round trip and keeps one fencing token and
//! one renewal for all nested holds. Each backend grant uses an owner of its
//! own ([`LockOwner::tagged`]), so the release (or the cleanup of a failed
//! attempt) of one grant can never end a later one. A per-(name, owner)
//! gate serialises only the acquisitions of one owner.

use foldhash::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::lock::guard::{GuardShared, LockGuard};
use crate::lock::handle::Lock;
use crate::lock::types::LockOwner;

type SlotKey = (Arc<str>, LockOwner);

/// The gates of the reentrant locks of one client.
#[derive(Debug, Default)]
pub(crate) struct ReentrantSlots {
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
}

/// One (name, logical owner): its live hold, if any, and the hold's guard id.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    gate: tokio::sync::Mutex<Option<(Arc<GuardShared>, u64)>>,
}

impl ReentrantSlots {
    fn slot(&self, name: &Arc<str>, owner: &LockOwner) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((name.clone(), owner.clone()))
            .or_default()
            .clone()
    }

    /// Drops the slot when it holds nothing and nobody else uses it.
    fn forget(&self, name: &Arc<str>, owner: &LockOwner, slot: Arc<Slot>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let idle = slot.gate.try_lock().is_ok_and(|g| {
            g.as_ref()
                .is_none_or(|(held, _)| held.holds.load(Ordering::Acquire) == 0)
        });
        // The map's reference and ours.
        if idle && Arc::strong_count(&slot) == 2 {
            slots.remove(&(name.clone(), owner.clone()));
        }
    }

    /// Drops the slot of the logical owner of the grant `shared`, if idle.
    fn forget_grant(&self, shared: &GuardShared) {
        let Ok(logical) = LockOwner::new(shared.owner.client_id(), shared.owner.logical()) else {
            return;
        };
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.get(&(shared.name.clone(), logical.clone())).cloned()
        };
        if let Some(slot) = slot {
            self.forget(&shared.name, &logical, slot);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Adds one hold to the live hold in `gate`, if there is one that is still
/// held (not lost, within its validity).
fn reenter(gate: &Option<(Arc<GuardShared>, u64)>) -> Option<LockGuard> {
    let (held, id) = gate.as_ref()?;
    if held.is_lost() || tokio::time::Instant::now() >= held.valid_until() {
        return None;
    }
    held.holds
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            (h > 0).then_some(h + 1)
        })
        .ok()?;
    Some(LockGuard::share_of(held.clone(), *id))
}

/// Takes one hold off; `true` when it was the last one.
fn drop_one(shared: &GuardShared) -> bool {
    shared
        .holds
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            (h > 0).then_some(h - 1)
        })
        == Ok(1)
}

/// Ends one hold; the last one releases the grant on the backend. Needs no
/// gate: the grant's owner is its own, and a concurrent acquisition of the
/// same logical owner sees a count of 0 and takes a new grant.
pub(crate) async fn release(shared: &Arc<GuardShared>, id: u64) -> Result<()> {
    if !drop_one(shared) {
        return if shared.is_lost() {
            Err(Error::NotHeld(format!(
                "{:?}: this hold was lost",
                &*shared.name
            )))
        } else {
            Ok(())
        };
    }
    let client = shared.client.clone();
    end_hold(shared, id);
    let result = client
        .release_once(&shared.name, &shared.owner, shared.kind)
        .await;
    if matches!(&result, Err(e) if !matches!(e, Error::NotHeld(_))) {
        // As `LockGuard::release`: go on in the background.
        client.release_in_background(
            shared.name.clone(),
            shared.owner.clone(),
            false,
            shared.kind,
        );
    }
    result
}

/// A dropped guard: counts down at once; the last hold is released in the
/// background (or left to expire, stopped, without a runtime).
pub(crate) fn release_dropped(shared: &Arc<GuardShared>, id: u64) {
    if !drop_one(shared) {
        return;
    }
    end_hold(shared, id);
    shared.client.release_in_background(
        shared.name.clone(),
        shared.owner.clone(),
        false,
        shared.kind,
    );
}

/// Stops renewing the grant and stops tracking it.
fn end_hold(shared: &Arc<GuardShared>, id: u64) {
    shared.record_hold();
    shared.stop.cancel();
    shared.client.untrack(id, shared);
    shared.client.reentrant.forget_grant(shared);
}

impl Lock {
    /// Acquires a reentrant lock for the logical `owner`: one more hold when
    /// it holds the lock already, else a lease acquisition (waiting as usual).
    pub(crate) async fn acquire_reentrant(&self, owner: LockOwner) -> Result<LockGuard> {
        self.reentrant_with(owner, false)
            .await?
            .ok_or_else(|| Error::Timeout(format!("reentrant lock {:?}", self.name())))
    }

    /// One attempt at a reentrant lock for the logical `owner`.
    pub(crate) async fn try_acquire_reentrant(
        &self,
        owner: LockOwner,
    ) -> Result<Option<LockGuard>> {
        self.reentrant_with(owner, true).await
    }

    async fn reentrant_with(&self, owner: LockOwner, once: bool) -> Result<Option<LockGuard>> {
        let shared = &self.client().shared;
        let slot = shared.reentrant.slot(self.name_arc(), &owner);
        let result = self.reentrant_in(&slot, &owner, once).await;
        shared.reentrant.forget(self.name_arc(), &owner, slot);
        result
    }

    async fn reentrant_in(
        &self,
        slot: &Slot,
        owner: &LockOwner,
        once: bool,
    ) -> Result<Option<LockGuard>> {
        let started = tokio::time::Instant::now();
        let deadline = self.deadline(started);
        // The gate is busy only while another task of this owner acquires.
        let mut gate = if once {
            match slot.gate.try_lock() {
                Ok(gate) => gate,
                Err(_) => return Ok(None),
            }
        } else {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, slot.gate.lock())
                    .await
                    .map_err(|_| {
                        Error::Timeout(format!(
                            "reentrant lock {:?}: another task of the same owner is still acquiring it",
                            self.name()
                        ))
                    })?,
                None => slot.gate.lock().await,
            }
        };
        if let Some(guard) = reenter(&gate) {
            return Ok(Some(guard));
        }
        let grant_owner = LockOwner::tagged(owner.client_id(), owner.owner())?;
        let guard = if once {
            self.try_acquire_lease(grant_owner, false).await?
        } else {
            // One deadline for the gate and the wait.
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            Some(
                self.with_wait_timeout(left)
                    .acquire_lease(grant_owner, false)
                    .await?,
            )
        };
        if let Some(g) = &guard {
            *gate = Some((g.shared().clone(), g.id()));
        }
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::lock::LockClient;
    use crate::memory::MemoryBackend;

    #[tokio::test]
    async fn busy_attempts_leave_no_slot_behind() {
        let store = MemoryBackend::new();
        let (a, b) = (
            LockClient::new(Arc::new(store.clone())),
            LockClient::new(Arc::new(store)),
        );
        let held = a.lock("r").reentrant().build().acquire().await.unwrap();
        for i in 0..20 {
            let lock = b.lock("r").reentrant().owner(format!("o{i}")).build();
            assert!(lock.try_acquire().await.unwrap().is_none());
        }
        assert_eq!(b.shared.reentrant.len(), 0);
        held.release().await.unwrap();
        assert_eq!(a.shared.reentrant.len(), 0);
    }

    #[test]
    fn a_guard_dropped_without_a_runtime_stops_renewing() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = LockClient::new(Arc::new(MemoryBackend::new()));
        let guard = rt
            .block_on(
                client
                    .lock("r")
                    .reentrant()
                    .ttl(Duration::from_secs(5))
                    .build()
                    .acquire(),
            )
            .unwrap();
        std::thread::spawn(move || drop(guard)).join().unwrap();
        assert_eq!(client.held(), 0, "no longer tracked (nor renewed)");
    }
}
