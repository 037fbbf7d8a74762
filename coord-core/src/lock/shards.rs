//! The client-wide tables that every grant and release touches (the guards
//! it holds, the owner ids it reuses), split into shards so that tasks on
//! different worker threads rarely meet on one mutex.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::lock::guard::GuardShared;
use crate::lock::types::LockOwner;

/// How many shards each table has (a power of two).
const SHARDS: usize = 8;

/// Idle owner ids kept per shard.
const MAX_IDLE_OWNERS_PER_SHARD: usize = 128;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This thread's shard: threads get shards in turn, on first use.
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// The guards a client holds (the renewal task and shutdown walk them) and
/// the owner ids it reuses, in one table per shard: an in-process grant
/// takes an owner and tracks its guard under one lock, and its release
/// untracks the guard and keeps the owner under one lock
/// ([`HoldTables::lock_thread_shard`], [`HoldTables::lock_shard_of`]).
///
/// Each shard's guards are a slab: a guard's id is its slot and its shard,
/// so that tracking one costs a slot, with no hashing and no counter shared
/// by every thread. A guard is added to its thread's shard.
#[derive(Debug, Default)]
pub(crate) struct HoldTables {
    shards: [Mutex<HoldShard>; SHARDS],
}

/// One shard of [`HoldTables`]: guard slots, the free ones, and idle owners.
#[derive(Debug, Default)]
pub(crate) struct HoldShard {
    slots: Vec<Option<Arc<GuardShared>>>,
    free: Vec<usize>,
    /// Owner ids whose holds surely ended, reused by later acquisitions (a
    /// new id costs a formatted string).
    idle_owners: Vec<LockOwner>,
}

/// A shard of [`HoldTables`], locked.
#[derive(Debug)]
pub(crate) struct LockedShard<'a> {
    shard: MutexGuard<'a, HoldShard>,
    index: usize,
}

impl LockedShard<'_> {
    /// Tracks `guard`; returns its id (for [`LockedShard::remove`]).
    pub(crate) fn insert(&mut self, guard: Arc<GuardShared>) -> u64 {
        let shard = &mut *self.shard;
        let slot = match shard.free.pop() {
            Some(slot) => {
                shard.slots[slot] = Some(guard);
                slot
            }
            None => {
                shard.slots.push(Some(guard));
                shard.slots.len() - 1
            }
        };
        (slot * SHARDS + self.index) as u64
    }

    /// Stops tracking `guard`, tracked as `id` in this shard, and returns
    /// it (to be dropped once the shard is unlocked). A slot that holds
    /// another guard by now (its guard was drained by shutdown, and the slot
    /// reused) is left alone.
    #[must_use = "drop the guard once the shard is unlocked"]
    pub(crate) fn remove(&mut self, id: u64, guard: &Arc<GuardShared>) -> Option<Arc<GuardShared>> {
        debug_assert_eq!(id as usize % SHARDS, self.index, "the guard's own shard");
        let slot = id as usize / SHARDS;
        let shard = &mut *self.shard;
        match shard.slots.get_mut(slot) {
            Some(held) if held.as_ref().is_some_and(|g| Arc::ptr_eq(g, guard)) => {
                let removed = held.take();
                shard.free.push(slot);
                removed
            }
            _ => None,
        }
    }

    /// An idle owner id, if any.
    pub(crate) fn take_owner(&mut self) -> Option<LockOwner> {
        self.shard.idle_owners.pop()
    }

    /// Keeps `owner` for reuse (dropped when the shard has enough).
    pub(crate) fn put_owner(&mut self, owner: LockOwner) {
        if self.shard.idle_owners.len() < MAX_IDLE_OWNERS_PER_SHARD {
            self.shard.idle_owners.push(owner);
        }
    }
}

impl HoldTables {
    /// This thread's shard, locked: where its grants are tracked.
    pub(crate) fn lock_thread_shard(&self) -> LockedShard<'_> {
        let index = thread_shard();
        LockedShard {
            shard: lock(&self.shards[index]),
            index,
        }
    }

    /// The shard of the guard tracked as `id`, locked.
    pub(crate) fn lock_shard_of(&self, id: u64) -> LockedShard<'_> {
        let index = id as usize % SHARDS;
        LockedShard {
            shard: lock(&self.shards[index]),
            index,
        }
    }

    /// Tracks `guard`; returns its id (for [`HoldTables::remove`]).
    pub(crate) fn insert(&self, guard: Arc<GuardShared>) -> u64 {
        self.lock_thread_shard().insert(guard)
    }

    /// Stops tracking `guard`, tracked as `id` (see [`LockedShard::remove`]).
    pub(crate) fn remove(&self, id: u64, guard: &Arc<GuardShared>) {
        let removed = self.lock_shard_of(id).remove(id, guard);
        // Dropped outside the shard's lock.
        drop(removed);
    }

    /// An idle owner id of this thread's shard, if any.
    pub(crate) fn take_owner(&self) -> Option<LockOwner> {
        self.lock_thread_shard().take_owner()
    }

    /// Keeps `owner` for reuse (dropped when the shard has enough).
    pub(crate) fn put_owner(&self, owner: LockOwner) {
        self.lock_thread_shard().put_owner(owner);
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = lock(s);
                shard.slots.len() - shard.free.len()
            })
            .sum()
    }

    pub(crate) fn all(&self) -> Vec<Arc<GuardShared>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(lock(s).slots.iter().flatten().cloned());
        }
        all
    }

    /// Removes and returns every guard.
    pub(crate) fn drain(&self) -> Vec<Arc<GuardShared>> {
        let mut all = Vec::new();
        for s in &self.shards {
            let mut shard = lock(s);
            let HoldShard { slots, free, .. } = &mut *shard;
            for (i, held) in slots.iter_mut().enumerate() {
                if let Some(g) = held.take() {
                    all.push(g);
                    free.push(i);
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::LockClient;
    use crate::memory::MemoryBackend;

    #[tokio::test]
    async fn a_guard_released_after_shutdown_leaves_a_newer_guard_in_its_slot_tracked() {
        let client = LockClient::new(Arc::new(MemoryBackend::new()));
        let old = client
            .lock("slab/a")
            .build()
            .acquire()
            .await
            .expect("acquire");
        client.shutdown().await.expect("shutdown");
        assert_eq!(client.held(), 0);
        // (A shut-down client takes no lock; this one does again, to see
        // what the drain left.) The drained guard's slot is free again;
        // the next guard takes it.
        client.reopen();
        let new = client
            .lock("slab/b")
            .build()
            .acquire()
            .await
            .expect("acquire");
        assert_eq!(client.held(), 1);
        // Releasing the old guard must not untrack the new one.
        drop(old);
        assert_eq!(
            client.held(),
            1,
            "the newer guard in the reused slot was untracked"
        );
        new.release().await.expect("release");
        assert_eq!(client.held(), 0);
    }
}
