//! `Coord`: the entry point — one connection to one backend.

use std::sync::Arc;
use std::time::Duration;

use coord_core::discovery::{
    DiscoveryClient, Registration, ServiceClientBuilder, ServiceInstance, ServiceWatcher,
};
use coord_core::url::redact;
use coord_core::{
    CacheBackend, CacheBuilder, Capabilities, ComponentHealth, Error, FencedStore, HealthRegistry,
    HealthReport, LockBuilder, LockClient, Metrics, Result, Settings,
};

use crate::connect;

/// A connection to a coordination backend, chosen by URL. Cheap to clone.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let coord = coord::Coord::connect("memory://").await?;
/// let guard = coord.lock("orders/42").build().acquire().await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok::<_, coord::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Coord {
    inner: Arc<Inner>,
}

struct Inner {
    locks: LockClient,
    fenced: Arc<dyn FencedStore>,
    cache: Arc<dyn CacheBackend>,
    discovery: DiscoveryClient,
    config: coord_core::config::ConfigCenter,
    /// The caches built through this `Coord`, for `health()`.
    components: Arc<HealthRegistry>,
    /// The metrics of the registry the `Coord` was built with.
    metrics: Option<Metrics>,
    settings: Settings,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord")
            .field("locks", &self.locks)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Options of a [`Coord`]: settings, metrics registry, client id.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CoordBuilder {
    settings: Option<Settings>,
    url: Option<String>,
    registry: Option<prometheus::Registry>,
    client_id: Option<String>,
}

impl CoordBuilder {
    /// Settings to use instead of [`Settings::load`] (`coord.toml`, `COORD_*`).
    /// They are checked like loaded ones ([`Settings::validate`]) at connect.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = Some(settings);
        self
    }

    /// The backend URL, overriding the settings' `url`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Registers coord's Prometheus metrics (prefix `coord_`) on `registry`.
    pub fn metrics(mut self, registry: &prometheus::Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// This client's id, stored with every lock it holds. Default: random.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Connects to the backend.
    pub async fn connect(self) -> Result<Coord> {
        let mut settings = match self.settings {
            Some(s) => s,
            None => Settings::load()?,
        };
        if let Some(url) = self.url {
            settings.url = url;
        }
        // A URL pasted with a space or a newline around it.
        if settings.url.trim().len() != settings.url.len() {
            settings.url = settings.url.trim().to_owned();
        }
        // The same checks as for loaded settings, for settings made in code.
        settings.validate()?;
        let span = tracing::debug_span!("coord.connect", url = %redact(&settings.url));
        let backend =
            tracing::Instrument::instrument(connect::backend(&settings.url, &settings), span)
                .await?;
        let mut locks = LockClient::builder(backend.locks).settings(&settings);
        let metrics = match &self.registry {
            Some(registry) => Some(Metrics::register(registry)?),
            None => None,
        };
        if let Some(m) = &metrics {
            locks = locks.metrics(m.clone());
        }
        if let Some(id) = self.client_id {
            locks = locks.client_id(id);
        }
        Ok(Coord {
            inner: Arc::new(Inner {
                locks: locks.build()?,
                fenced: backend.fenced,
                cache: backend.cache,
                discovery: {
                    let d =
                        DiscoveryClient::new(backend.registry).with_ttl(settings.discovery.ttl)?;
                    match &metrics {
                        Some(m) => d.with_metrics(m.clone()),
                        None => d,
                    }
                },
                config: coord_core::config::ConfigCenter::new(backend.config)
                    .with_author(config_author(&settings)),
                components: Arc::default(),
                metrics,
                settings,
            }),
        })
    }
}

impl Coord {
    /// Connects to the backend named by `url` (`memory://`,
    /// `redis://host:6379`, `redis+cluster://h1,h2`,
    /// `redis+sentinel://s1:26379,s2:26379/mymaster`, `etcd://h1:2379,h2:2379`),
    /// with other settings from `coord.toml` and `COORD_*` variables.
    ///
    /// A malformed URL is [`Error::InvalidArgument`] saying what is wrong; a
    /// scheme whose cargo feature is off is [`Error::Unsupported`] naming it.
    pub async fn connect(url: &str) -> Result<Coord> {
        Coord::builder().url(url).connect().await
    }

    /// Options beyond the URL.
    pub fn builder() -> CoordBuilder {
        CoordBuilder::default()
    }

    /// A lock named `name`; set its options, then `.build()`.
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder {
        self.inner.locks.lock(name)
    }

    /// A fair lock named `name` (granted in request order).
    pub fn fair_lock(&self, name: impl Into<String>) -> LockBuilder {
        self.lock(name).fair()
    }

    /// A semaphore named `name` with `permits` permits.
    pub fn semaphore(&self, name: impl Into<String>, permits: u32) -> LockBuilder {
        self.lock(name).semaphore(permits)
    }

    /// A multi-lock over `names`: all taken or none, in one deadlock-free
    /// order, with one deadline and one guard (see
    /// [`LockClient::multi_lock`]).
    pub fn multi_lock<I, S>(&self, names: I) -> coord_core::MultiLockBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.locks().multi_lock(names)
    }

    /// A leader election named `name`.
    pub fn election(&self, name: impl Into<String>) -> coord_core::lock::ElectionBuilder {
        self.locks().election(name)
    }

    /// A store that accepts a write only with a fencing token at least as
    /// new as the last one it accepted for that key, on this backend (Redis:
    /// one Lua compare-and-set; etcd: a txn; memory: in process). Use it for
    /// state that must stay safe even when a lock holder pauses past its
    /// lease: pass the guard's [`fencing_token`](coord_core::LockGuard::fencing_token).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let coord = coord::Coord::connect("memory://fenced-doc").await?;
    /// let store = coord.fenced_store();
    /// let guard = coord.lock("report").build().acquire().await?;
    /// store.write("report", guard.fencing_token(), b"done").await?;
    /// let (token, value) = store.read("report").await?.expect("written");
    /// assert_eq!((token, value.as_slice()), (guard.fencing_token(), &b"done"[..]));
    /// # Ok::<_, coord::Error>(()) }).unwrap();
    /// ```
    pub fn fenced_store(&self) -> Arc<dyn FencedStore> {
        self.inner.fenced.clone()
    }

    /// A typed two-level cache named `name` (in-process L1 over this
    /// backend); set its options, then `.build::<T>()`. Every instance of
    /// one name, in any process, shares the backend's values and evicts
    /// what the others write from its L1.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct User { name: String }
    ///
    /// let coord = coord::Coord::connect("memory://").await?;
    /// let users = coord.cache("users").ttl(Duration::from_secs(600)).build::<User>()?;
    /// let user = users
    ///     .get_or_load("42", || async { Ok(Some(User { name: "Ada".into() })) })
    ///     .await?
    ///     .expect("loaded");
    /// assert_eq!(user.name, "Ada");
    /// # Ok::<_, coord::Error>(()) }).unwrap();
    /// ```
    pub fn cache(&self, name: impl Into<String>) -> CacheBuilder {
        let builder = CacheBuilder::new(self.inner.cache.clone(), name)
            .health_registry(self.inner.components.clone());
        match &self.inner.metrics {
            Some(m) => builder.metrics(m.clone()),
            None => builder,
        }
    }

    /// Registers `instance` in the service registry and keeps it alive
    /// (renewed every third of `discovery.ttl`, 10 s by default) until the
    /// returned [`Registration`] is deregistered or dropped, or
    /// [`shutdown`](Self::shutdown) runs.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use coord::discovery::ServiceInstance;
    ///
    /// let coord = coord::Coord::connect("memory://").await?;
    /// let registration = coord
    ///     .register(ServiceInstance::new("billing", "billing-1", "10.0.0.7:8080").zone("eu-1a"))
    ///     .await?;
    /// let billing = coord.service("billing").local_zone("eu-1a").build().await?;
    /// assert_eq!(billing.pick().unwrap().addr(), "10.0.0.7:8080");
    /// registration.deregister().await?;
    /// # Ok::<_, coord::Error>(()) }).unwrap();
    /// ```
    pub async fn register(&self, instance: ServiceInstance) -> Result<Registration> {
        self.inner.discovery.register(instance).await
    }

    /// A routed client of `service` (balancer, breakers, retries, zone and
    /// canary routing); finish with `.build().await`.
    pub fn service(&self, service: &str) -> ServiceClientBuilder {
        self.inner.discovery.service(service)
    }

    /// A local snapshot of `service`, kept current in the background.
    pub async fn watch_service(&self, service: &str) -> Result<ServiceWatcher> {
        self.inner.discovery.watch(service).await
    }

    /// The discovery client: services, instances, watches, registrations.
    pub fn discovery(&self) -> &DiscoveryClient {
        &self.inner.discovery
    }

    /// The config center on this backend: versioned configuration in
    /// namespaces `app/env` (history, compare-and-set, rollback, diff,
    /// freezing, watches, templates, secrets, typed hot-reloaded handles).
    /// Writes are authored by this client's id unless
    /// [`ConfigCenter::with_author`](coord_core::config::ConfigCenter::with_author)
    /// says otherwise. Not to be confused with the SDK's own
    /// [`settings`](Self::settings).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let coord = coord::Coord::connect("memory://").await?;
    /// let config = coord.config_center().clone().with_author("ann");
    /// config.put("billing/prod/timeout", "5s").await?;
    /// assert_eq!(config.get("billing/prod/timeout").await?.unwrap().as_str()?, "5s");
    /// # Ok::<_, coord::Error>(()) }).unwrap();
    /// ```
    pub fn config_center(&self) -> &coord_core::config::ConfigCenter {
        &self.inner.config
    }

    /// The cache side of the backend (byte values, for a custom cache).
    pub fn cache_backend(&self) -> &Arc<dyn CacheBackend> {
        &self.inner.cache
    }

    /// Lock administration: list, force-release, statistics.
    pub fn lock_admin(&self) -> coord_core::LockAdmin {
        self.locks().admin()
    }

    /// The lock client (held locks, waiting count, backend).
    pub fn locks(&self) -> &LockClient {
        &self.inner.locks
    }

    /// What the backend promises.
    pub fn capabilities(&self) -> &Capabilities {
        self.inner.locks.capabilities()
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The health of the backend (one timed round trip) and of every cache
    /// built through this `Coord`, summed up: the worst status, the
    /// backend's latency, and what is wrong with each component that is not
    /// healthy. [`health_report`](Self::health_report) has them one by one.
    pub async fn health(&self) -> ComponentHealth {
        self.health_report().await.summary("coord")
    }

    /// The health of each component: the backend first, then each live
    /// cache built through this `Coord`.
    pub async fn health_report(&self) -> HealthReport {
        let mut components = vec![self.inner.locks.health().await];
        components.extend(self.inner.components.reports().await);
        HealthReport::new(components)
    }

    /// Deregisters every instance registered through this `Coord` (first,
    /// so that callers stop picking it), then releases every held lock and
    /// closes the backend, within `timeout`. From then on every lock
    /// acquisition through it (a waiting one at its next attempt) fails
    /// with [`Error::Closed`]; caches, config handles and service clients
    /// already built are not stopped (drop them). Call it last, before the
    /// process exits.
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        let work = async {
            let deregistered = self.inner.discovery.deregister_all().await;
            let released = self.inner.locks.shutdown().await;
            deregistered.and(released)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "shutdown did not finish within {timeout:?}; instances not deregistered and \
                 unreleased locks expire with their TTL"
            ))),
        }
    }
}

/// The author of config writes when code does not name one: the user and
/// host, as far as the environment tells.
fn config_author(_settings: &Settings) -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME"));
    let host = std::env::var("HOSTNAME");
    match (user, host) {
        (Ok(u), Ok(h)) => format!("{u}@{h}"),
        (Ok(u), Err(_)) => u,
        _ => "unknown".to_owned(),
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use coord_core::HealthStatus;

    /// `health()` covers the caches built through the `Coord`: each is a
    /// component of the report, and a dropped cache leaves it.
    #[tokio::test]
    async fn health_covers_the_caches_built_through_it() {
        let coord = Coord::connect("memory://health-report").await.unwrap();
        assert_eq!(
            coord.health_report().await.components.len(),
            1,
            "the backend"
        );
        let cache = coord.cache("health-users").build::<String>().unwrap();
        cache.ready().await;
        let report = coord.health_report().await;
        assert_eq!(report.status, HealthStatus::Healthy, "{report:?}");
        let names: Vec<&str> = report.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["memory", "cache health-users"]);
        assert_eq!(coord.health().await.status, HealthStatus::Healthy);
        drop(cache);
        assert_eq!(coord.health_report().await.components.len(), 1);
    }
}

#[cfg(all(test, feature = "memory"))]
mod url_tests {
    use super::*;

    /// A URL pasted with spaces or a newline around it connects.
    #[tokio::test]
    async fn spaces_around_the_url_are_ignored() {
        let coord = Coord::connect("  memory://pasted\n")
            .await
            .expect("connect");
        assert_eq!(coord.settings().url, "memory://pasted");
    }
}

#[cfg(all(test, feature = "memory"))]
mod metrics_tests {
    use super::*;

    /// A `Coord` built with a registry exports its caches' counters.
    #[tokio::test]
    async fn caches_export_their_counters() {
        let registry = prometheus::Registry::new();
        let coord = Coord::builder()
            .url("memory://cache-metrics")
            .metrics(&registry)
            .connect()
            .await
            .unwrap();
        let cache = coord.cache("metered").build::<u32>().unwrap();
        cache.ready().await;
        assert_eq!(cache.get("k").await.unwrap(), None);
        cache.set("k", 1).await.unwrap();
        assert_eq!(cache.get("k").await.unwrap().map(|v| *v), Some(1));
        let value = |event: &str| -> f64 {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == "coord_cache_events_total")
                .flat_map(|f| f.get_metric())
                .filter(|m| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "event" && l.value() == event)
                        && m.get_label()
                            .iter()
                            .any(|l| l.name() == "cache" && l.value() == "metered")
                })
                .map(|m| m.get_counter().get_value())
                .sum()
        };
        assert_eq!(value("miss"), 1.0);
        assert_eq!(value("write"), 1.0);
        assert_eq!(value("l1_hit"), 1.0);
    }
}

#[cfg(all(test, feature = "memory"))]
mod discovery_tests {
    use super::*;
    use coord_core::discovery::ServiceInstance;

    /// `shutdown` deregisters the instances registered through the `Coord`
    /// (before releasing locks), so that callers stop picking them.
    #[tokio::test]
    async fn shutdown_deregisters_first() {
        let coord = Coord::connect("memory://discovery-shutdown").await.unwrap();
        let other = Coord::connect("memory://discovery-shutdown").await.unwrap();
        let _a = coord
            .register(ServiceInstance::new("web", "web-1", "127.0.0.1:8080"))
            .await
            .unwrap();
        let _b = coord
            .register(ServiceInstance::new("api", "api-1", "127.0.0.1:9090"))
            .await
            .unwrap();
        let _lock = coord.lock("held").build().acquire().await.unwrap();
        assert_eq!(other.discovery().services().await.unwrap(), ["api", "web"]);
        coord.shutdown(Duration::from_secs(5)).await.unwrap();
        assert!(other.discovery().services().await.unwrap().is_empty());
        assert!(
            other
                .lock("held")
                .build()
                .try_acquire()
                .await
                .unwrap()
                .is_some()
        );
    }

    /// `discovery.ttl` from the settings is the registrations' TTL.
    #[tokio::test]
    async fn registrations_use_the_settings_ttl() {
        let mut settings = Settings::default();
        settings.url = "memory://discovery-ttl".into();
        settings.discovery.ttl = Duration::from_secs(3);
        let coord = Coord::builder().settings(settings).connect().await.unwrap();
        let r = coord
            .register(ServiceInstance::new("web", "web-1", "127.0.0.1:8080"))
            .await
            .unwrap();
        assert_eq!(r.ttl(), Duration::from_secs(3));
    }
}
