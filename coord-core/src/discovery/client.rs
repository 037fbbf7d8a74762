//! The discovery client: registers instances, lists and watches services,
//! and builds routed service clients.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::backend::{MAX_REGISTRATION_TTL, MIN_REGISTRATION_TTL, RegistryBackend};
use super::instance::{ServiceInstance, validate_service_name};
use super::registration::{Registration, RegistrationShared};
use super::watcher::ServiceWatcher;
use crate::error::{Error, Result};

/// The default registration TTL: an instance whose process dies disappears
/// within this long.
pub const DEFAULT_REGISTRATION_TTL: Duration = Duration::from_secs(10);

/// Registers instances and discovers services on one backend.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::discovery::{DiscoveryClient, ServiceInstance};
/// use coord_core::memory::MemoryBackend;
///
/// let discovery = DiscoveryClient::new(Arc::new(MemoryBackend::new()));
/// let registration = discovery
///     .register(ServiceInstance::new("billing", "billing-1", "10.0.0.7:8080"))
///     .await?;
/// assert_eq!(discovery.services().await?, ["billing"]);
/// assert_eq!(discovery.instances("billing").await?.len(), 1);
/// registration.deregister().await?;
/// assert!(discovery.instances("billing").await?.is_empty());
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct DiscoveryClient {
    backend: Arc<dyn RegistryBackend>,
    ttl: Duration,
    registrations: Arc<Mutex<Vec<Weak<RegistrationShared>>>>,
    metrics: Option<crate::Metrics>,
}

impl DiscoveryClient {
    /// A client over `backend`, registering with [`DEFAULT_REGISTRATION_TTL`].
    pub fn new(backend: Arc<dyn RegistryBackend>) -> Self {
        DiscoveryClient {
            backend,
            ttl: DEFAULT_REGISTRATION_TTL,
            registrations: Arc::default(),
            metrics: None,
        }
    }

    /// The same client registering with `ttl` (1 s to 24 h): how long an
    /// instance outlives a crashed process. Renewals go every third of it.
    pub fn with_ttl(mut self, ttl: Duration) -> Result<Self> {
        validate_ttl(ttl)?;
        self.ttl = ttl;
        Ok(self)
    }

    /// The same client counting registration events on `metrics`
    /// (`coord_registration_events_total`) and exporting its service
    /// clients' breakers.
    pub fn with_metrics(mut self, metrics: crate::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn RegistryBackend> {
        &self.backend
    }

    /// Registers `instance` and keeps it alive until the returned
    /// [`Registration`] is deregistered or dropped.
    pub async fn register(&self, instance: ServiceInstance) -> Result<Registration> {
        self.register_with_ttl(instance, self.ttl).await
    }

    /// [`register`](Self::register) with its own TTL.
    pub async fn register_with_ttl(
        &self,
        instance: ServiceInstance,
        ttl: Duration,
    ) -> Result<Registration> {
        instance.validate()?;
        validate_ttl(ttl)?;
        let registration =
            Registration::start(self.backend.clone(), instance, ttl, self.metrics.clone()).await?;
        let mut live = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|r| r.strong_count() > 0);
        live.push(registration.shared());
        Ok(registration)
    }

    /// The services with at least one live instance, sorted.
    pub async fn services(&self) -> Result<Vec<String>> {
        self.backend.services().await
    }

    /// The live instances of `service` (any status), sorted by id.
    pub async fn instances(&self, service: &str) -> Result<Vec<ServiceInstance>> {
        validate_service_name(service)?;
        let mut instances = self.backend.list_instances(service).await?.instances;
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(instances)
    }

    /// A local snapshot of `service`, kept current in the background.
    /// Fails if the first listing does.
    pub async fn watch(&self, service: &str) -> Result<ServiceWatcher> {
        validate_service_name(service)?;
        ServiceWatcher::start(self.backend.clone(), service).await
    }

    /// A routed client of `service`: pick endpoints, call them with
    /// breakers and retries. Finish with `.build().await`.
    pub fn service(&self, service: &str) -> super::ServiceClientBuilder {
        let builder = super::ServiceClientBuilder::new(self.clone(), service);
        match &self.metrics {
            Some(m) => builder.metrics(m.clone()),
            None => builder,
        }
    }

    /// Deregisters every live registration made through this client (and
    /// its clones), waiting for each; the first error, after trying all.
    /// An [abandoned](super::Registration::abandon) one is left to expire.
    pub async fn deregister_all(&self) -> Result<()> {
        let live: Vec<_> = {
            let mut live = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *live)
        };
        let mut first = None;
        for r in live.iter().filter_map(Weak::upgrade) {
            if r.is_abandoned() {
                continue;
            }
            if let Err(e) = r.deregister().await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn validate_ttl(ttl: Duration) -> Result<()> {
    if !(MIN_REGISTRATION_TTL..=MAX_REGISTRATION_TTL).contains(&ttl) {
        return Err(Error::invalid(format!(
            "registration TTL {ttl:?} is outside {MIN_REGISTRATION_TTL:?} to {MAX_REGISTRATION_TTL:?}"
        )));
    }
    Ok(())
}
