//! The service registry in process memory: a map of instances per service
//! with expiry times, a revision counter and a broadcast channel per service.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use foldhash::HashMap;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::discovery::{
    RegistryBackend, RegistryChange, RegistryEvent, RegistryEvents, RegistryListing, RenewOutcome,
    ServiceInstance,
};
use crate::error::Result;
use crate::health::ComponentHealth;
use crate::memory::MemoryBackend;

/// Changes a slow watcher may fall behind by before it must list again.
const EVENT_BUFFER: usize = 4096;

/// How often a watch sweeps expired instances (so that an instance whose
/// process died disappears without anyone calling).
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// The services of one memory store.
#[derive(Debug, Default)]
pub(crate) struct MemoryRegistry {
    services: Mutex<HashMap<String, Service>>,
}

#[derive(Debug)]
struct Service {
    entries: BTreeMap<String, Entry>,
    /// Bumped by every change; kept when the service empties, so that a
    /// watcher's revision stays comparable.
    revision: u64,
    events: broadcast::Sender<RegistryEvent>,
}

#[derive(Debug)]
struct Entry {
    owner: String,
    instance: ServiceInstance,
    expires: Instant,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            entries: BTreeMap::new(),
            revision: 0,
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }
}

impl Service {
    fn change(&mut self, change: RegistryChange) {
        self.revision += 1;
        // No watcher is not an error.
        let _ = self.events.send(RegistryEvent::Changed {
            revision: self.revision,
            change,
        });
    }

    /// Removes expired entries, telling watchers.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.entries.remove(&id);
            self.change(RegistryChange::Removed { id });
        }
    }
}

impl MemoryRegistry {
    fn services(&self) -> MutexGuard<'_, HashMap<String, Service>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sweep(&self, service: &str) {
        if let Some(s) = self.services().get_mut(service) {
            s.sweep(Instant::now());
        }
    }
}

fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[async_trait]
impl RegistryBackend for MemoryBackend {
    fn registry_backend_name(&self) -> &'static str {
        "memory"
    }

    async fn register(&self, instance: &ServiceInstance, owner: &str, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut services = self.registry().services();
        let service = services.entry(instance.service.clone()).or_default();
        service.sweep(now);
        service.entries.insert(
            instance.id.clone(),
            Entry {
                owner: owner.to_owned(),
                instance: instance.clone(),
                expires: expiry(now, ttl),
            },
        );
        service.change(RegistryChange::Put(instance.clone()));
        Ok(())
    }

    async fn renew_instance(
        &self,
        service: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<RenewOutcome> {
        let now = Instant::now();
        let mut services = self.registry().services();
        let Some(service) = services.get_mut(service) else {
            return Ok(RenewOutcome::Missing);
        };
        service.sweep(now);
        Ok(match service.entries.get_mut(id) {
            None => RenewOutcome::Missing,
            Some(e) if e.owner != owner => RenewOutcome::Replaced,
            Some(e) => {
                e.expires = expiry(now, ttl);
                RenewOutcome::Renewed
            }
        })
    }

    async fn deregister(&self, service: &str, id: &str, owner: &str) -> Result<bool> {
        let mut services = self.registry().services();
        let Some(service) = services.get_mut(service) else {
            return Ok(false);
        };
        service.sweep(Instant::now());
        if service.entries.get(id).is_none_or(|e| e.owner != owner) {
            return Ok(false);
        }
        service.entries.remove(id);
        service.change(RegistryChange::Removed { id: id.to_owned() });
        Ok(true)
    }

    async fn services(&self) -> Result<Vec<String>> {
        let now = Instant::now();
        let mut services = self.registry().services();
        let mut names: Vec<String> = services
            .iter_mut()
            .filter_map(|(name, s)| {
                s.sweep(now);
                (!s.entries.is_empty()).then(|| name.clone())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    async fn list_instances(&self, service: &str) -> Result<RegistryListing> {
        let mut services = self.registry().services();
        let Some(s) = services.get_mut(service) else {
            return Ok(RegistryListing {
                instances: Vec::new(),
                revision: 0,
            });
        };
        s.sweep(Instant::now());
        Ok(RegistryListing {
            instances: s.entries.values().map(|e| e.instance.clone()).collect(),
            revision: s.revision,
        })
    }

    async fn watch_instances(&self, service: &str, revision: u64) -> Result<RegistryEvents> {
        let (rx, current) = {
            let mut services = self.registry().services();
            let s = services.entry(service.to_owned()).or_default();
            (s.events.subscribe(), s.revision)
        };
        let backend = self.clone();
        let name = service.to_owned();
        let first_gap = current > revision;
        let state = (
            rx,
            backend,
            name,
            revision,
            first_gap,
            tokio::time::interval(SWEEP_EVERY),
        );
        let stream = futures::stream::unfold(state, |mut st| async move {
            let (rx, backend, name, after, gap, tick) = &mut st;
            if std::mem::take(gap) {
                return Some((RegistryEvent::Gap, st));
            }
            loop {
                tokio::select! {
                    message = rx.recv() => match message {
                        Ok(RegistryEvent::Changed { revision, change }) => {
                            if revision > *after {
                                *after = revision;
                                return Some((RegistryEvent::Changed { revision, change }, st));
                            }
                        }
                        Ok(RegistryEvent::Gap) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((RegistryEvent::Gap, st));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = tick.tick() => backend.registry().sweep(name),
                }
            }
        });
        Ok(RegistryEvents::new(stream))
    }

    async fn registry_health(&self) -> ComponentHealth {
        let start = std::time::Instant::now();
        drop(self.registry().services());
        ComponentHealth::healthy("memory", start.elapsed())
    }
}
