//! Lease locks in process memory.

use foldhash::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::health::ComponentHealth;
use crate::lock::{
    AcquireOutcome, FencingToken, HoldMode, HolderInfo, LockBackend, LockGrant, LockInfo,
    LockOwner, QueueOutcome, ReleaseEvents, StoredKind,
};
use crate::memory::queue::Queues;

/// An in-process store. Clones share the same data; use one clone per
/// simulated client.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    /// The store, split by lock name into shards (a name's locks, fences,
    /// queues and listeners all live in its shard), so that calls on
    /// different names rarely meet on one mutex.
    store: Arc<[Mutex<Store>; SHARDS]>,
    caps: Arc<Capabilities>,
    fenced: Arc<crate::fence::MemoryFencedStore>,
    caches: crate::memory::cache::SharedCaches,
    registry: Arc<crate::memory::registry::MemoryRegistry>,
    config: Arc<crate::memory::config::MemoryConfig>,
}

/// How many shards the store has.
const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Store {
    /// Every lock name ever acquired: its fence and its holder, if any (kept
    /// after release, so that a name seen before costs no allocation).
    locks: HashMap<String, Slot>,
    listeners: HashMap<String, broadcast::Sender<()>>,
    /// Listeners to every change of holder (grants too): observers.
    observers: HashMap<String, broadcast::Sender<()>>,
    queues: Queues,
}

#[derive(Debug, Default)]
struct Slot {
    /// The last token granted.
    fence: u64,
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    owner: LockOwner,
    token: u64,
    expires: Instant,
    /// What the holder proclaimed.
    value: Option<String>,
}

impl Store {
    /// The live holder of `name`, dropping an expired one (and waking waiters).
    fn holder(&mut self, name: &str, now: Instant) -> Option<&mut Held> {
        let slot = self.locks.get_mut(name)?;
        if slot.held.as_ref().is_some_and(|h| h.expires <= now) {
            slot.held = None;
            self.notify(name);
            return None;
        }
        self.locks.get_mut(name)?.held.as_mut()
    }

    /// Ends the hold on `name` (if any) and wakes its waiters.
    fn vacate(&mut self, name: &str) {
        if let Some(slot) = self.locks.get_mut(name) {
            slot.held = None;
        }
        self.notify(name);
    }

    fn notify(&mut self, name: &str) {
        if let Some(tx) = self.listeners.get(name)
            && tx.send(()).is_err()
        {
            self.listeners.remove(name);
        }
        self.changed(name);
    }

    /// Signals a change of holder of `name` to its observers.
    fn changed(&mut self, name: &str) {
        if !self.observers.is_empty()
            && let Some(tx) = self.observers.get(name)
            && tx.send(()).is_err()
        {
            self.observers.remove(name);
        }
    }
}

fn lock_shard(shard: &Mutex<Store>) -> MutexGuard<'_, Store> {
    // A panic while holding the lock cannot leave the maps half-updated
    // in a way that matters more than losing the process' locks.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new listener on the channel of `name` in `channels`.
fn listen(channels: &mut HashMap<String, broadcast::Sender<()>>, name: &str) -> ReleaseEvents {
    let rx = channels
        .entry(name.to_owned())
        .or_insert_with(|| broadcast::channel(16).0)
        .subscribe();
    broadcast_events(rx)
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A new, empty store.
    pub fn new() -> Self {
        let mut caps = Capabilities::new("memory");
        caps.linearizable = true;
        caps.fencing = true;
        // Fair locks, semaphores and read-write locks queue in request order.
        caps.fair_ordering = true;
        caps.native_ttl = true;
        caps.watch = true;
        MemoryBackend {
            store: Arc::new(std::array::from_fn(|_| Mutex::default())),
            caps: Arc::new(caps),
            fenced: Arc::default(),
            caches: Arc::default(),
            registry: Arc::default(),
            config: Arc::default(),
        }
    }

    /// The fenced store that lives beside this store's locks (shared by its
    /// clones, so by every `memory://name` of one name).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use coord_core::{FencedStore, FencingToken};
    /// use coord_core::memory::MemoryBackend;
    ///
    /// let store = MemoryBackend::new().fenced_store();
    /// store.write("report", FencingToken::new(7), b"v1").await?;
    /// assert!(store.write("report", FencingToken::new(6), b"stale").await.is_err());
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub fn fenced_store(&self) -> Arc<crate::fence::MemoryFencedStore> {
        self.fenced.clone()
    }

    /// The config center's store of this store (shared by its clones).
    pub(crate) fn config(&self) -> &crate::memory::config::MemoryConfig {
        &self.config
    }

    /// The service registry of this store (shared by its clones).
    pub(crate) fn registry(&self) -> &crate::memory::registry::MemoryRegistry {
        &self.registry
    }

    /// The caches of this store (shared by its clones).
    pub(crate) fn caches(&self) -> &crate::memory::cache::MemoryCaches {
        &self.caches
    }

    /// Whether two handles share one store.
    pub fn same_store(&self, other: &MemoryBackend) -> bool {
        Arc::ptr_eq(&self.store, &other.store)
    }

    /// The shard of lock `name`, locked.
    fn store(&self, name: &str) -> MutexGuard<'_, Store> {
        let shard = foldhash::fast::FixedState::with_seed(0).hash_one(name) as usize % SHARDS;
        lock_shard(&self.store[shard])
    }
}

impl MemoryBackend {
    /// One acquisition attempt (the body of `try_acquire`) at `now`: one
    /// lookup of the name for a name seen before.
    fn try_acquire_sync(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
        now: Instant,
    ) -> Result<AcquireOutcome> {
        let ttl = self.caps.effective_ttl(ttl);
        let mut guard = self.store(name);
        let store = &mut *guard;
        let hold = |token| Held {
            owner: owner.clone(),
            token,
            expires: now + ttl,
            value: None,
        };
        let Some(slot) = store.locks.get_mut(name) else {
            // First use of the name.
            store.locks.insert(
                name.to_owned(),
                Slot {
                    fence: 1,
                    held: Some(hold(1)),
                },
            );
            store.changed(name);
            return Ok(granted(1, ttl));
        };
        let mut expired = false;
        if let Some(h) = &mut slot.held {
            if h.expires > now {
                if h.owner == *owner {
                    // The same owner again: the same hold, extended.
                    h.expires = now + ttl;
                    return Ok(granted(h.token, ttl));
                }
                return Ok(AcquireOutcome::Held {
                    retry_after: Some(h.expires.saturating_duration_since(now)),
                });
            }
            expired = true;
        }
        slot.fence += 1;
        let token = slot.fence;
        slot.held = Some(hold(token));
        if expired {
            // The expired holder's waiters were not woken yet.
            store.notify(name);
        } else {
            store.changed(name);
        }
        Ok(granted(token, ttl))
    }

    /// A release (the body of `release`) at `now`: one lookup of the name.
    fn release_sync(&self, name: &str, owner: &LockOwner, now: Instant) -> Result<()> {
        let mut guard = self.store(name);
        let store = &mut *guard;
        let (mine, live) = match store.locks.get_mut(name) {
            Some(slot) => match &slot.held {
                Some(h) => {
                    let live = h.expires > now;
                    let mine = live && h.owner == *owner;
                    if mine || !live {
                        // Released, or expired: either way it ends now.
                        slot.held = None;
                    }
                    (mine, live)
                }
                None => (false, true),
            },
            None => (false, true),
        };
        if mine || !live {
            store.notify(name);
        }
        if mine {
            Ok(())
        } else {
            Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}"
            )))
        }
    }
}

/// A grant of `token` for `ttl`.
fn granted(token: u64, ttl: Duration) -> AcquireOutcome {
    AcquireOutcome::Granted(LockGrant {
        token: FencingToken::new(token),
        ttl,
    })
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn try_acquire(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
    ) -> Result<AcquireOutcome> {
        self.try_acquire_sync(name, owner, ttl, Instant::now())
    }

    fn try_acquire_now(
        &self,
        name: &str,
        owner: &LockOwner,
        ttl: Duration,
        now: Instant,
    ) -> Option<Result<AcquireOutcome>> {
        Some(self.try_acquire_sync(name, owner, ttl, now))
    }

    async fn renew(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let ttl = self.caps.effective_ttl(ttl);
        match self.store(name).holder(name, now) {
            Some(held) if held.owner == *owner => {
                held.expires = now + ttl;
                Ok(())
            }
            _ => Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}"
            ))),
        }
    }

    async fn release(&self, name: &str, owner: &LockOwner) -> Result<()> {
        self.release_sync(name, owner, Instant::now())
    }

    fn release_now(&self, name: &str, owner: &LockOwner, now: Instant) -> Option<Result<()>> {
        Some(self.release_sync(name, owner, now))
    }

    async fn proclaim(&self, name: &str, owner: &LockOwner, value: &str) -> Result<()> {
        let now = Instant::now();
        let mut store = self.store(name);
        match store.holder(name, now) {
            Some(held) if held.owner == *owner => {
                held.value = Some(value.to_owned());
                store.changed(name);
                Ok(())
            }
            _ => Err(Error::NotHeld(format!(
                "lock {name:?} is not held by {owner}"
            ))),
        }
    }

    async fn subscribe_changes(&self, name: &str) -> Result<ReleaseEvents> {
        Ok(listen(&mut self.store(name).observers, name))
    }

    async fn subscribe(&self, name: &str) -> Result<ReleaseEvents> {
        Ok(listen(&mut self.store(name).listeners, name))
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        let now = Instant::now();
        let mut store = self.store(name);
        let was_held = store.holder(name, now).is_some();
        if was_held {
            store.vacate(name);
        }
        Ok(was_held)
    }

    async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        let now = Instant::now();
        let mut store = self.store(name);
        Ok(store
            .holder(name, now)
            .map(|held| lease_info(name, held, now)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let now = Instant::now();
        let mut out: Vec<LockInfo> = Vec::new();
        for shard in self.store.iter() {
            let mut store = lock_shard(shard);
            let names: Vec<String> = store
                .locks
                .keys()
                .filter(|n| n.starts_with(prefix))
                .cloned()
                .collect();
            out.extend(
                names
                    .iter()
                    .filter_map(|n| store.holder(n, now).map(|h| lease_info(n, h, now))),
            );
            out.extend(store.queues.list(prefix, now));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn enqueue(
        &self,
        name: &str,
        owner: &LockOwner,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<QueueOutcome> {
        let ttl = self.caps.effective_ttl(ttl);
        let now = Instant::now();
        Ok(self
            .store(name)
            .queues
            .enqueue(name, owner.as_str(), mode, ttl, now))
    }

    async fn renew_queued(&self, name: &str, owner: &LockOwner, ttl: Duration) -> Result<()> {
        let ttl = self.caps.effective_ttl(ttl);
        let now = Instant::now();
        self.store(name)
            .queues
            .renew(name, owner.as_str(), ttl, now)
    }

    async fn dequeue(&self, name: &str, owner: &LockOwner) -> Result<()> {
        let now = Instant::now();
        self.store(name).queues.dequeue(name, owner.as_str(), now)
    }

    async fn subscribe_queue(&self, name: &str, _owner: &LockOwner) -> Result<ReleaseEvents> {
        let rx = self.store(name).queues.subscribe(name);
        Ok(broadcast_events(rx))
    }

    async fn force_release_queued(&self, name: &str) -> Result<usize> {
        let now = Instant::now();
        Ok(self.store(name).queues.force_release(name, now))
    }

    async fn health(&self) -> ComponentHealth {
        let start = std::time::Instant::now();
        for shard in self.store.iter() {
            drop(lock_shard(shard));
        }
        ComponentHealth::healthy("memory", start.elapsed())
    }
}

/// Release signals from a broadcast channel; a lagging receiver still wakes.
fn broadcast_events(rx: broadcast::Receiver<()>) -> ReleaseEvents {
    ReleaseEvents::new(futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }))
}

fn lease_info(name: &str, held: &Held, now: Instant) -> LockInfo {
    LockInfo {
        name: name.to_owned(),
        kind: StoredKind::Lease,
        holders: vec![HolderInfo {
            owner: held.owner.as_str().to_owned(),
            token: Some(FencingToken::new(held.token)),
            mode: HoldMode::Exclusive,
            ttl_remaining: Some(held.expires.saturating_duration_since(now)),
            value: held.value.clone(),
        }],
        waiters: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an outcome says, without timings.
    fn shape(r: &Result<AcquireOutcome>) -> String {
        match r {
            Ok(AcquireOutcome::Granted(g)) => format!("granted {}", g.token.as_u64()),
            Ok(AcquireOutcome::Held { .. }) => "held".into(),
            Err(e) => format!("error {}", e.kind_label()),
        }
    }

    /// A lease answered at once counts from the caller's reading of the
    /// clock (the instant the client counts the guard's validity from), not
    /// from a later reading of the backend's own.
    #[tokio::test(start_paused = true)]
    async fn a_lease_answered_at_once_counts_from_the_callers_clock_reading() {
        let backend = MemoryBackend::new();
        let a = LockOwner::new("c", "a").unwrap();
        let b = LockOwner::new("c", "b").unwrap();
        let ttl = Duration::from_secs(1);
        let sent_at = Instant::now();
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(matches!(
            backend.try_acquire_now("n", &a, ttl, sent_at),
            Some(Ok(AcquireOutcome::Granted(_)))
        ));
        // 600 ms after the reading plus 399 ms: still held.
        tokio::time::advance(Duration::from_millis(399)).await;
        assert!(matches!(
            backend.try_acquire("n", &b, ttl).await,
            Ok(AcquireOutcome::Held { .. })
        ));
        // One second after the reading the lease is over, although the
        // backend answered only 400 ms before.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(
            backend.try_acquire("n", &b, ttl).await,
            Ok(AcquireOutcome::Granted(_))
        ));
        // A release answered at once at a reading after the lease's end
        // finds it over.
        assert!(matches!(
            backend.release_now("n", &b, Instant::now() + ttl),
            Some(Err(Error::NotHeld(_)))
        ));
    }

    /// The client calls `try_acquire_now` / `release_now` first: they must
    /// answer exactly as the awaited calls do, step by step, including a
    /// hold that expired and a release by the wrong owner.
    #[tokio::test(start_paused = true)]
    async fn answers_at_once_match_the_awaited_calls() {
        let (now, awaited) = (MemoryBackend::new(), MemoryBackend::new());
        let a = LockOwner::new("c", "a").unwrap();
        let b = LockOwner::new("c", "b").unwrap();
        let ttl = Duration::from_secs(1);
        let mut seen = Vec::new();
        for step in 0..7 {
            let (x, y) = match step {
                0 | 1 | 3 | 5 => (
                    shape(&now.try_acquire_now("n", &a, ttl, Instant::now()).unwrap()),
                    shape(&awaited.try_acquire("n", &a, ttl).await),
                ),
                2 | 6 => (
                    shape(&now.try_acquire_now("n", &b, ttl, Instant::now()).unwrap()),
                    shape(&awaited.try_acquire("n", &b, ttl).await),
                ),
                _ => {
                    let release = |r: Result<()>| {
                        r.map_or_else(|e| e.kind_label().to_owned(), |()| "ok".into())
                    };
                    let wrong = (
                        release(now.release_now("n", &b, Instant::now()).unwrap()),
                        release(awaited.release("n", &b).await),
                    );
                    assert_eq!(wrong.0, wrong.1, "a release by the wrong owner");
                    (
                        release(now.release_now("n", &a, Instant::now()).unwrap()),
                        release(awaited.release("n", &a).await),
                    )
                }
            };
            assert_eq!(x, y, "step {step}");
            seen.push(x);
            if step == 5 {
                // Let a's next hold expire before b asks.
                tokio::time::advance(ttl * 2).await;
            }
        }
        // a: granted 1, again 1 (same hold), b refused, a again, a released,
        // a granted 2, then (expired) b granted 3.
        assert_eq!(
            seen,
            [
                "granted 1",
                "granted 1",
                "held",
                "granted 1",
                "ok",
                "granted 2",
                "granted 3"
            ]
        );
    }
}
