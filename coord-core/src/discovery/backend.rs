//! The registry backend trait: instances stored under their service, kept
//! alive by renewals, listed and watched from a revision.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};

use super::instance::ServiceInstance;
use crate::error::Result;
use crate::health::ComponentHealth;

/// The shortest registration TTL.
pub const MIN_REGISTRATION_TTL: Duration = Duration::from_secs(1);

/// The longest registration TTL.
pub const MAX_REGISTRATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Every instance of one service, at one revision of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryListing {
    /// The live instances, sorted by id.
    pub instances: Vec<ServiceInstance>,
    /// The revision this listing reflects: a [`watch_instances`](RegistryBackend::watch_instances)
    /// from it misses nothing.
    pub revision: u64,
}

/// One change to a service's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// The instance was registered or updated.
    Put(ServiceInstance),
    /// The instance with this id was deregistered or expired.
    Removed {
        /// The instance's id.
        id: String,
    },
}

/// What a registry watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "each event is moved once from the backend to the watcher; boxing would cost an allocation per change"
)]
pub enum RegistryEvent {
    /// A change, at `revision` (increasing along the stream).
    Changed {
        /// The registry's revision after the change.
        revision: u64,
        /// The change.
        change: RegistryChange,
    },
    /// Changes may have been missed (a dropped message, a compacted
    /// history): the watcher must list the service again.
    Gap,
}

/// A stream of [`RegistryEvent`]s of one service. It ends when the backend
/// loses the channel it came from; the watcher then lists and watches again.
pub struct RegistryEvents {
    inner: Pin<Box<dyn Stream<Item = RegistryEvent> + Send>>,
}

impl RegistryEvents {
    /// Wraps a backend's stream of events.
    pub fn new(stream: impl Stream<Item = RegistryEvent> + Send + 'static) -> Self {
        RegistryEvents {
            inner: Box::pin(stream),
        }
    }

    /// The next event, or `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<RegistryEvent> {
        self.inner.next().await
    }
}

impl fmt::Debug for RegistryEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryEvents")
    }
}

/// What [`RegistryBackend::renew_instance`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The instance is alive for another TTL.
    Renewed,
    /// The registry no longer holds the instance (it expired, or its lease
    /// was lost): register it again.
    Missing,
    /// Another registration (another owner) holds this id now: stop.
    Replaced,
}

/// A shared registry of service instances. Implemented by the same backend
/// values that serve locks and caches (`MemoryBackend`, `RedisBackend`,
/// `EtcdBackend`).
///
/// Each registration has an `owner` (a unique token of one
/// [`Registration`](super::Registration)). Registering an id that another
/// owner holds replaces it (the newest registration wins); the older owner's
/// renewals then see [`RenewOutcome::Replaced`] and its deregistration is a
/// no-op, so two processes claiming one id never delete each other's entry.
///
/// Backends check nothing the caller checks: the discovery client validates
/// instances, names and TTLs before calling.
#[async_trait]
pub trait RegistryBackend: Send + Sync + fmt::Debug + 'static {
    /// The backend's name (`memory`, `redis`, `etcd`), for health reports and metrics.
    fn registry_backend_name(&self) -> &'static str;

    /// Stores `instance` for `owner`, alive for `ttl` unless renewed,
    /// replacing what its id held, and notifies watchers.
    async fn register(&self, instance: &ServiceInstance, owner: &str, ttl: Duration) -> Result<()>;

    /// Keeps `owner`'s registration of `service`/`id` alive for another `ttl`.
    async fn renew_instance(
        &self,
        service: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<RenewOutcome>;

    /// Removes `owner`'s registration of `service`/`id` and notifies
    /// watchers; `false` if it was not there (or another owner holds it).
    async fn deregister(&self, service: &str, id: &str, owner: &str) -> Result<bool>;

    /// Leaves `owner`'s registration of `service`/`id` to expire within
    /// `ttl` from now (as the backend keeps TTLs: etcd rounds them up to
    /// whole seconds, at least 2 s), its renewals stopped by the caller (as
    /// if its process had crashed, though the client's other registrations
    /// live on). A backend where an instance expires on its own unless renewed
    /// has nothing to do (the default); one whose registrations of a client
    /// share a lease that the others keep alive moves the entry off it.
    async fn abandon(&self, service: &str, id: &str, owner: &str, ttl: Duration) -> Result<()> {
        let _ = (service, id, owner, ttl);
        Ok(())
    }

    /// The names of the services with at least one live instance, sorted.
    async fn services(&self) -> Result<Vec<String>>;

    /// The live instances of `service` and the revision they reflect.
    async fn list_instances(&self, service: &str) -> Result<RegistryListing>;

    /// The changes of `service` after `revision` (from a
    /// [`list_instances`](Self::list_instances)), including expiries. When the backend cannot
    /// tell that nothing was missed since `revision`, the stream starts with
    /// [`RegistryEvent::Gap`].
    async fn watch_instances(&self, service: &str, revision: u64) -> Result<RegistryEvents>;

    /// One round trip to the server.
    async fn registry_health(&self) -> ComponentHealth;
}
