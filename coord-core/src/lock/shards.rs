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

/// The guards a client holds (the renewal task and shutdown walk them).
///
/// Each shard is a slab: a guard's id is its slot and its shard, so that
/// tracking one costs a mutex and a slot, with no hashing and no counter
/// shared by every thread. A guard is added to its thread's shard.
#[derive(Debug, Default)]
pub(crate) struct HeldGuards {
    shards: [Mutex<Slab>; SHARDS],
}

/// One shard of [`HeldGuards`]: slots, and the free ones.
#[derive(Debug, Default)]
struct Slab {
    slots: Vec<Option<Arc<GuardShared>>>,
    free: Vec<usize>,
}

impl HeldGuards {
    /// Tracks `guard`; returns its id (for [`HeldGuards::remove`]).
    pub(crate) fn insert(&self, guard: Arc<GuardShared>) -> u64 {
        let shard = thread_shard();
        let mut slab = lock(&self.shards[shard]);
        let slot = match slab.free.pop() {
            Some(slot) => {
                slab.slots[slot] = Some(guard);
                slot
            }
            None => {
                slab.slots.push(Some(guard));
                slab.slots.len() - 1
            }
        };
        (slot * SHARDS + shard) as u64
    }

    /// Stops tracking `guard`, tracked as `id`. A slot that holds another
    /// guard by now (its guard was drained by shutdown, and the slot
    /// reused) is left alone.
    pub(crate) fn remove(&self, id: u64, guard: &Arc<GuardShared>) {
        let (slot, shard) = (id as usize / SHARDS, id as usize % SHARDS);
        let removed = {
            let mut slab = lock(&self.shards[shard]);
            match slab.slots.get_mut(slot) {
                Some(held) if held.as_ref().is_some_and(|g| Arc::ptr_eq(g, guard)) => {
                    let removed = held.take();
                    slab.free.push(slot);
                    removed
                }
                _ => None,
            }
        };
        // Dropped outside the shard's lock.
        drop(removed);
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let slab = lock(s);
                slab.slots.len() - slab.free.len()
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
            let mut slab = lock(s);
            let Slab { slots, free } = &mut *slab;
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

/// Owner ids whose holds surely ended, reused by later acquisitions (a new
/// id costs a formatted string).
#[derive(Debug, Default)]
pub(crate) struct OwnerPool {
    shards: [Mutex<Vec<LockOwner>>; SHARDS],
}

impl OwnerPool {
    /// An idle owner id of this thread's shard, if any.
    pub(crate) fn take(&self) -> Option<LockOwner> {
        lock(&self.shards[thread_shard()]).pop()
    }

    /// Keeps `owner` for reuse (dropped when the shard is full).
    pub(crate) fn put(&self, owner: LockOwner) {
        let mut idle = lock(&self.shards[thread_shard()]);
        if idle.len() < MAX_IDLE_OWNERS_PER_SHARD {
            idle.push(owner);
        }
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
