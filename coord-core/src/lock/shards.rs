//! The client-wide tables that every grant and release touches (the guards
//! it holds, the owner ids it reuses), split into shards so that tasks on
//! different worker threads rarely meet on one mutex.

use foldhash::HashMap;
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

/// The guards a client holds, by guard id (the renewal task and shutdown
/// walk them).
#[derive(Debug, Default)]
pub(crate) struct HeldGuards {
    shards: [Mutex<HashMap<u64, Arc<GuardShared>>>; SHARDS],
}

impl HeldGuards {
    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<GuardShared>>> {
        &self.shards[id as usize % SHARDS]
    }

    pub(crate) fn insert(&self, id: u64, guard: Arc<GuardShared>) {
        lock(self.shard(id)).insert(id, guard);
    }

    pub(crate) fn remove(&self, id: u64) {
        lock(self.shard(id)).remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub(crate) fn all(&self) -> Vec<Arc<GuardShared>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(lock(s).values().cloned());
        }
        all
    }

    /// Removes and returns every guard.
    pub(crate) fn drain(&self) -> Vec<Arc<GuardShared>> {
        let mut all = Vec::new();
        for s in &self.shards {
            all.extend(lock(s).drain().map(|(_, g)| g));
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
