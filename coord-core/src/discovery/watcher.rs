//! A watched local snapshot of one service: listed once, kept current by the
//! backend's watch, listed again after a gap, a reconnect or a compaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::backend::{
    RegistryBackend, RegistryChange, RegistryEvent, RegistryEvents, RegistryListing,
};
use super::instance::ServiceInstance;
use crate::error::Result;

/// How often a watcher lists its service again even when the watch is
/// quiet: a bound on how long a silently stalled watch can hide changes.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// The most changes one published snapshot gathers.
const MAX_BATCH: usize = 4096;

/// The instances of one service as a watcher last saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSnapshot {
    /// The service.
    pub service: String,
    /// The registry revision the snapshot reflects.
    pub revision: u64,
    /// Every registered instance (any status), sorted by id. Shared
    /// (`Arc`) with the watcher's later snapshots, so that a change costs
    /// a pointer copy per instance, not a deep copy.
    pub instances: Vec<Arc<ServiceInstance>>,
    /// Whether the backend is unreachable: the snapshot is the last one
    /// seen and may be out of date.
    pub stale: bool,
}

impl ServiceSnapshot {
    /// The instance with this id.
    pub fn get(&self, id: &str) -> Option<&ServiceInstance> {
        self.instances
            .binary_search_by(|i| i.id.as_str().cmp(id))
            .ok()
            .map(|at| &*self.instances[at])
    }
}

/// A change to a watched service, as [`ServiceWatcher::events`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryEvent {
    /// An instance was registered.
    Added(ServiceInstance),
    /// An instance changed (status, weight, metadata, address…).
    Updated {
        /// What it was.
        before: ServiceInstance,
        /// What it is.
        after: ServiceInstance,
    },
    /// An instance was deregistered or expired.
    Removed(ServiceInstance),
    /// The watcher listed the service again after a gap (a missed message,
    /// a compaction, a reconnect); the changes it found were reported as
    /// `Added` / `Updated` / `Removed` just before.
    Resynced {
        /// The revision of the new listing.
        revision: u64,
    },
    /// The backend is unreachable; the snapshot is kept (marked stale).
    Unreachable {
        /// What failed.
        error: String,
    },
}

/// A local snapshot of one service, kept current in the background, so that
/// reading it never touches the network (a lock-free load).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::discovery::{DiscoveryClient, ServiceInstance};
/// use coord_core::memory::MemoryBackend;
///
/// let discovery = DiscoveryClient::new(Arc::new(MemoryBackend::new()));
/// let watcher = discovery.watch("billing").await?;
/// let mut changes = watcher.subscribe();
/// let _reg = discovery.register(ServiceInstance::new("billing", "b-1", "10.0.0.1:80")).await?;
/// changes.wait_for(|s| s.instances.len() == 1).await.unwrap();
/// assert_eq!(watcher.snapshot().instances[0].id, "b-1");
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct ServiceWatcher {
    shared: Arc<WatchShared>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct WatchShared {
    snapshot: ArcSwap<ServiceSnapshot>,
    latest: watch::Sender<Arc<ServiceSnapshot>>,
    events: broadcast::Sender<DiscoveryEvent>,
}

impl ServiceWatcher {
    /// Lists `service` and starts watching it.
    pub(crate) async fn start(
        backend: Arc<dyn RegistryBackend>,
        service: &str,
    ) -> Result<ServiceWatcher> {
        let listing = backend.list_instances(service).await?;
        // Watched before returning, so that nothing written after this
        // call returns can be missed or reported late as a resync.
        let stream = backend.watch_instances(service, listing.revision).await?;
        let first = Arc::new(snapshot_of(service, listing, false));
        let shared = Arc::new(WatchShared {
            snapshot: ArcSwap::new(first.clone()),
            latest: watch::channel(first).0,
            events: broadcast::channel(1024).0,
        });
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            backend,
            service.to_owned(),
            shared.clone(),
            stop.clone(),
            stream,
        ));
        Ok(ServiceWatcher { shared, stop })
    }

    /// The current snapshot (lock-free; no network).
    #[inline]
    pub fn snapshot(&self) -> Arc<ServiceSnapshot> {
        self.shared.snapshot.load_full()
    }

    /// A receiver of every new snapshot (`changed()`, `wait_for(...)`).
    pub fn subscribe(&self) -> watch::Receiver<Arc<ServiceSnapshot>> {
        self.shared.latest.subscribe()
    }

    /// The changes from now on, one event per instance change.
    pub fn events(&self) -> broadcast::Receiver<DiscoveryEvent> {
        self.shared.events.subscribe()
    }
}

impl Drop for ServiceWatcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn snapshot_of(service: &str, listing: RegistryListing, stale: bool) -> ServiceSnapshot {
    let mut instances = listing.instances;
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    instances.dedup_by(|a, b| a.id == b.id);
    let instances = instances.into_iter().map(Arc::new).collect();
    ServiceSnapshot {
        service: service.to_owned(),
        revision: listing.revision,
        instances,
        stale,
    }
}

impl WatchShared {
    fn current(&self) -> Arc<ServiceSnapshot> {
        self.snapshot.load_full()
    }

    fn publish(&self, next: ServiceSnapshot) {
        let next = Arc::new(next);
        self.snapshot.store(next.clone());
        self.latest.send_replace(next);
    }

    fn emit(&self, event: DiscoveryEvent) {
        let _ = self.events.send(event);
    }

    /// Applies a batch of changes from the watch (all that were ready at
    /// once), publishing one snapshot for the batch and then an event per
    /// change.
    fn apply(&self, changes: Vec<(u64, RegistryChange)>) {
        let current = self.current();
        let mut next = (*current).clone();
        next.stale = false;
        let mut events = Vec::with_capacity(changes.len());
        for (revision, change) in changes {
            next.revision = revision;
            match change {
                RegistryChange::Put(instance) => {
                    match next.instances.binary_search_by(|i| i.id.cmp(&instance.id)) {
                        Ok(at) if *next.instances[at] == instance => {}
                        Ok(at) => {
                            let before = std::mem::replace(
                                &mut next.instances[at],
                                Arc::new(instance.clone()),
                            );
                            events.push(DiscoveryEvent::Updated {
                                before: (*before).clone(),
                                after: instance,
                            });
                        }
                        Err(at) => {
                            next.instances.insert(at, Arc::new(instance.clone()));
                            events.push(DiscoveryEvent::Added(instance));
                        }
                    }
                }
                RegistryChange::Removed { id } => {
                    if let Ok(at) = next.instances.binary_search_by(|i| i.id.as_str().cmp(&id)) {
                        let gone = next.instances.remove(at);
                        events.push(DiscoveryEvent::Removed((*gone).clone()));
                    }
                }
            }
        }
        self.publish(next);
        for e in events {
            self.emit(e);
        }
    }

    /// Replaces the snapshot with a fresh listing, reporting the differences.
    fn resync(&self, service: &str, listing: RegistryListing) {
        let current = self.current();
        let next = snapshot_of(service, listing, false);
        let before: BTreeMap<&str, &ServiceInstance> = current
            .instances
            .iter()
            .map(|i| (i.id.as_str(), &**i))
            .collect();
        let after: BTreeMap<&str, &ServiceInstance> = next
            .instances
            .iter()
            .map(|i| (i.id.as_str(), &**i))
            .collect();
        let mut events = Vec::new();
        for (id, old) in &before {
            match after.get(id) {
                None => events.push(DiscoveryEvent::Removed((*old).clone())),
                Some(new) if new != old => events.push(DiscoveryEvent::Updated {
                    before: (*old).clone(),
                    after: (*new).clone(),
                }),
                Some(_) => {}
            }
        }
        for (id, new) in &after {
            if !before.contains_key(id) {
                events.push(DiscoveryEvent::Added((*new).clone()));
            }
        }
        let revision = next.revision;
        let changed = next != *current;
        if changed {
            self.publish(next);
        }
        for e in events {
            self.emit(e);
        }
        self.emit(DiscoveryEvent::Resynced { revision });
    }

    fn mark_stale(&self, error: &crate::Error) {
        let current = self.current();
        if !current.stale {
            let mut next = (*current).clone();
            next.stale = true;
            self.publish(next);
            tracing::warn!(service = %current.service, error = %error, "registry unreachable; keeping the last snapshot");
            self.emit(DiscoveryEvent::Unreachable {
                error: error.to_string(),
            });
        }
    }
}

/// Watches from the snapshot's revision; lists again after a gap, the end
/// of the stream, an error, or [`RESYNC_EVERY`] of quiet.
async fn follow(
    backend: Arc<dyn RegistryBackend>,
    service: String,
    shared: Arc<WatchShared>,
    stop: CancellationToken,
    first: RegistryEvents,
) {
    let mut first = Some(first);
    let mut backoff = Duration::from_millis(50);
    let max_backoff = Duration::from_secs(2);
    let mut listed = true;
    loop {
        if !listed {
            let listing = tokio::select! {
                _ = stop.cancelled() => return,
                l = backend.list_instances(&service) => l,
            };
            match listing {
                Ok(listing) => shared.resync(&service, listing),
                Err(e) => {
                    shared.mark_stale(&e);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            }
        }
        listed = false;
        let revision = shared.current().revision;
        let stream = match first.take() {
            Some(stream) => Ok(stream),
            None => tokio::select! {
                _ = stop.cancelled() => return,
                s = backend.watch_instances(&service, revision) => s,
            },
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                shared.mark_stale(&e);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        let resync_at = tokio::time::Instant::now() + RESYNC_EVERY;
        let mut delivered = false;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(resync_at) => break,
                e = stream.next() => e,
            };
            match event {
                Some(RegistryEvent::Changed { revision, change }) => {
                    delivered = true;
                    backoff = Duration::from_millis(50);
                    // Take every change that is ready too: one snapshot per
                    // burst, not one per change.
                    let mut batch = vec![(revision, change)];
                    let mut gap = false;
                    while batch.len() < MAX_BATCH {
                        match futures::FutureExt::now_or_never(stream.next()) {
                            Some(Some(RegistryEvent::Changed { revision, change })) => {
                                batch.push((revision, change));
                            }
                            Some(Some(RegistryEvent::Gap)) | Some(None) => {
                                gap = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    shared.apply(batch);
                    if gap {
                        break;
                    }
                }
                Some(RegistryEvent::Gap) => break,
                None => {
                    // A stream that ends at once (a connection that keeps
                    // dropping) must not make this loop spin.
                    if !delivered {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(max_backoff);
                    }
                    break;
                }
            }
        }
    }
}
