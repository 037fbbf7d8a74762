//! A routed client of one service: a watched snapshot, a balancer, a
//! breaker per instance, active health checks, and `call` with retries
//! bounded by a deadline and a retry budget.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::balancer::{Balancer, PowerOfTwoChoices};
use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use super::client::DiscoveryClient;
use super::endpoint::Endpoint;
use super::health_check::{HealthCheck, Hysteresis};
use super::retry_budget::RetryBudget;
use super::routing::{Canary, PickOptions, RouteTable, RoutingPolicy};
use super::watcher::{ServiceSnapshot, ServiceWatcher};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// How often the routing flags are recounted even without a change signal.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// Why [`ServiceClient::call`] gave up.
#[derive(Debug)]
pub enum CallError<E> {
    /// No endpoint could be picked: none registered, none available, or
    /// every breaker open.
    NoInstances(Error),
    /// The last attempt failed and no retry was left (attempts, retry
    /// budget, or a failure the classifier called final).
    Failed {
        /// The last attempt's error.
        error: E,
        /// Attempts made.
        attempts: u32,
    },
    /// The call's deadline passed.
    DeadlineExceeded {
        /// Attempts made.
        attempts: u32,
        /// The last failed attempt's error, if any failed before.
        last: Option<E>,
    },
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NoInstances(e) => write!(f, "{e}"),
            CallError::Failed { error, attempts } => {
                write!(f, "call failed after {attempts} attempt(s): {error}")
            }
            CallError::DeadlineExceeded { attempts, last } => {
                write!(f, "deadline exceeded after {attempts} attempt(s)")?;
                if let Some(e) = last {
                    write!(f, "; last error: {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for CallError<E> {}

impl<E> CallError<E> {
    /// The last attempt's error, if an attempt failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CallError::Failed { error, .. } => Some(error),
            CallError::DeadlineExceeded { last, .. } => last,
            CallError::NoInstances(_) => None,
        }
    }
}

/// Builds a [`ServiceClient`]: `DiscoveryClient::service("billing")`.
#[derive(Debug)]
#[must_use = "call .build().await to get the client"]
pub struct ServiceClientBuilder {
    discovery: DiscoveryClient,
    service: String,
    balancer: Arc<dyn Balancer>,
    policy: RoutingPolicy,
    breaker: Option<BreakerConfig>,
    health_check: Option<HealthCheck>,
    max_attempts: u32,
    backoff: Duration,
    deadline: Duration,
    budget: Option<RetryBudget>,
    metrics: Option<Metrics>,
}

impl ServiceClientBuilder {
    pub(crate) fn new(discovery: DiscoveryClient, service: &str) -> Self {
        ServiceClientBuilder {
            discovery,
            service: service.to_owned(),
            balancer: Arc::new(PowerOfTwoChoices::by_in_flight()),
            policy: RoutingPolicy::default(),
            breaker: Some(BreakerConfig::default()),
            health_check: None,
            max_attempts: 3,
            backoff: Duration::from_millis(20),
            deadline: Duration::from_secs(10),
            budget: Some(RetryBudget::default()),
            metrics: None,
        }
    }

    /// The load balancer (power of two choices by calls in flight by default).
    pub fn balancer(mut self, balancer: impl Balancer) -> Self {
        self.balancer = Arc::new(balancer);
        self
    }

    /// Only instances carrying `tag`.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.policy.tags.push(tag.into());
        self
    }

    /// Only instances whose metadata has `key` = `value`.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.policy.metadata.push((key.into(), value.into()));
        self
    }

    /// Prefer instances of this zone while it has at least
    /// [`min_local`](Self::min_local) available; then this client's data
    /// centre; then everything.
    pub fn local_zone(mut self, zone: impl Into<String>) -> Self {
        self.policy.zone = Some(zone.into());
        self
    }

    /// Prefer instances of this data centre (after the local zone).
    pub fn local_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.policy.datacenter = Some(datacenter.into());
        self
    }

    /// Available instances the local zone (or data centre) needs to be
    /// preferred (1 by default).
    pub fn min_local(mut self, n: usize) -> Self {
        self.policy.min_local = n.max(1);
        self
    }

    /// A canary release (see [`Canary`]).
    pub fn canary(mut self, canary: Canary) -> Self {
        self.policy.canary = Some(canary);
        self
    }

    /// Below this share of available instances (0.5 by default; 0 turns it
    /// off), pick among all instances regardless of their health.
    pub fn panic_threshold(mut self, share: f64) -> Self {
        self.policy.panic_below = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self
    }

    /// The per-instance circuit breaker (on by default, with
    /// [`BreakerConfig::default`]); `None` turns breakers off.
    pub fn breaker(mut self, config: Option<BreakerConfig>) -> Self {
        self.breaker = config;
        self
    }

    /// Probe instances actively and route only to those that pass.
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }

    /// Attempts per call, the first included (3 by default; 1 turns retries off).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The first retry's delay (doubled for each later one, with jitter; 20 ms by default).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long one call may take, retries included (10 s by default).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The retry budget (20 % of the last 10 s of calls plus one a second by
    /// default); `None` leaves retries bounded only by `max_attempts`.
    pub fn retry_budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// Export the breakers' metrics on `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Watches the service and starts routing. Fails if the first listing does.
    pub async fn build(self) -> Result<ServiceClient> {
        if let Some(c) = &self.breaker {
            c.validate()?;
        }
        if let Some(h) = &self.health_check {
            h.validate()?;
        }
        if self.deadline.is_zero() {
            return Err(Error::invalid(
                "a service client's deadline must be above zero",
            ));
        }
        let watcher = self.discovery.watch(&self.service).await?;
        let shared = Arc::new(Shared {
            service: self.service,
            balancer: self.balancer,
            policy: self.policy,
            breaker: self.breaker,
            metrics: self.metrics,
            health_check: self.health_check,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            deadline: self.deadline,
            budget: self.budget,
            table: ArcSwap::from_pointee(RouteTable::empty()),
            endpoints: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            last_good: Mutex::new(None),
            recount: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        });
        shared.rebuild(&watcher.snapshot());
        tokio::spawn(route(shared.clone(), watcher));
        let stop = Arc::new(StopOnDrop(shared.stop.clone()));
        Ok(ServiceClient {
            shared,
            _stop: stop,
        })
    }
}

/// A routed client of one service. Picking reads a precomputed table
/// (lock-free, no allocation, no network); the table follows the watched
/// snapshot, the breakers and the health checks in the background.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::discovery::{DiscoveryClient, ServiceInstance, balancer::RoundRobin};
/// use coord_core::memory::MemoryBackend;
///
/// let discovery = DiscoveryClient::new(Arc::new(MemoryBackend::new()));
/// let _a = discovery.register(ServiceInstance::new("billing", "a", "10.0.0.1:80")).await?;
/// let _b = discovery.register(ServiceInstance::new("billing", "b", "10.0.0.2:80")).await?;
/// let billing = discovery.service("billing").balancer(RoundRobin).build().await?;
///
/// let reply = billing
///     .call(|endpoint| async move { Ok::<_, std::io::Error>(format!("called {}", endpoint.addr())) })
///     .await
///     .expect("a call");
/// assert!(reply.starts_with("called 10.0.0."));
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ServiceClient {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

/// Stops the routing task when the last handle of a client is dropped.
#[derive(Debug)]
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[derive(Debug)]
struct Shared {
    service: String,
    balancer: Arc<dyn Balancer>,
    policy: RoutingPolicy,
    breaker: Option<BreakerConfig>,
    metrics: Option<Metrics>,
    health_check: Option<HealthCheck>,
    max_attempts: u32,
    backoff: Duration,
    deadline: Duration,
    budget: Option<RetryBudget>,
    table: ArcSwap<RouteTable>,
    /// Endpoints by instance id, kept across snapshots (with their breakers
    /// and counters) while the instance is unchanged.
    endpoints: Mutex<HashMap<String, Endpoint>>,
    health: Mutex<HashMap<String, Hysteresis>>,
    /// The last non-empty table, kept when a snapshot empties.
    last_good: Mutex<Option<Arc<RouteTable>>>,
    recount: Arc<Notify>,
    stop: CancellationToken,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn endpoint_for(&self, instance: &super::ServiceInstance, old: Option<&Endpoint>) -> Endpoint {
        if let Some(e) = old.filter(|e| e.instance() == instance) {
            return e.clone();
        }
        let endpoint = match (&self.breaker, old.and_then(Endpoint::breaker)) {
            (Some(_), Some(b)) => Endpoint::with_breaker(instance.clone(), b.clone()),
            (Some(config), None) => {
                let name = format!("{}/{}", self.service, instance.id);
                match CircuitBreaker::new(name, config.clone()) {
                    Ok(b) => {
                        let b = b.with_auto_half_open(true);
                        let b = match &self.metrics {
                            Some(m) => b.with_metrics(m.clone()),
                            None => b,
                        };
                        let signal = self.recount.clone();
                        b.on_change(move |_| signal.notify_one());
                        Endpoint::with_breaker(instance.clone(), b)
                    }
                    Err(_) => Endpoint::new(instance.clone()),
                }
            }
            (None, _) => Endpoint::new(instance.clone()),
        };
        if let Some(old) = old {
            endpoint.set_healthy(old.is_healthy());
        }
        endpoint
    }

    /// Rebuilds the route table for a new snapshot.
    fn rebuild(&self, snapshot: &ServiceSnapshot) {
        let mut endpoints = Self::lock(&self.endpoints);
        let mut next = HashMap::with_capacity(snapshot.instances.len());
        let mut admitted = Vec::new();
        for instance in &snapshot.instances {
            let e = self.endpoint_for(instance, endpoints.get(&instance.id));
            if self.policy.admits(instance) {
                admitted.push(e.clone());
            }
            next.insert(instance.id.clone(), e);
        }
        *endpoints = next;
        drop(endpoints);
        let mut last_good = Self::lock(&self.last_good);
        if admitted.is_empty()
            && let Some(good) = last_good.as_ref()
        {
            // Empty-list protection: an emptied set (an outage of the
            // registry, or of the registrations' renewals) keeps the
            // last good one rather than failing every call.
            tracing::warn!(
                service = %self.service,
                stale = snapshot.stale,
                kept = good.endpoints.len(),
                "the service's instance list emptied; routing to the last non-empty list"
            );
            self.table.store(good.clone());
            return;
        }
        let table = Arc::new(RouteTable::build(admitted, &*self.balancer, &self.policy));
        if !table.endpoints.is_empty() {
            *last_good = Some(table.clone());
        }
        self.table.store(table);
    }

    fn recount(&self) {
        self.table.load().recount(&self.policy);
    }

    /// Probes every routed endpoint once, updating health with hysteresis.
    async fn check_health(&self, check: &HealthCheck) {
        let endpoints = self.table.load().endpoints.clone();
        let results: Vec<(Endpoint, bool)> = futures::stream::iter(endpoints.iter().cloned())
            .map(|e| async move {
                let ok = check.probe(e.instance()).await;
                (e, ok)
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut changed = false;
        let mut health = Self::lock(&self.health);
        for (e, ok) in results {
            let h = health
                .entry(e.id().to_owned())
                .or_insert_with(Hysteresis::new);
            if let Some(now) = h.observe(ok, check.rise, check.fall) {
                tracing::info!(service = %self.service, id = e.id(), healthy = now, "health check changed an instance's state");
                changed |= e.set_healthy(now);
            }
        }
        let ids: std::collections::HashSet<&str> = endpoints.iter().map(Endpoint::id).collect();
        health.retain(|id, _| ids.contains(id.as_str()));
        drop(health);
        if changed {
            self.recount();
        }
    }
}

/// Follows the snapshot, the breakers and the health checks.
async fn route(shared: Arc<Shared>, watcher: ServiceWatcher) {
    let mut snapshots = watcher.subscribe();
    let mut recount = tokio::time::interval(RECOUNT_EVERY);
    let check_every = shared
        .health_check
        .as_ref()
        .map_or(Duration::from_secs(3600), |c| c.interval);
    let mut checks = tokio::time::interval(check_every);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                shared.rebuild(&snapshot);
            }
            _ = shared.recount.notified() => shared.recount(),
            _ = recount.tick() => shared.recount(),
            _ = checks.tick(), if shared.health_check.is_some() => {
                if let Some(check) = &shared.health_check {
                    shared.check_health(check).await;
                }
            }
        }
    }
}

impl ServiceClient {
    /// The service's name.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// An available endpoint, or `None` when none is. Lock-free, no
    /// allocation, no network.
    #[inline]
    pub fn pick(&self) -> Option<Endpoint> {
        self.pick_with(&PickOptions::new())
    }

    /// [`pick`](Self::pick) with a sticky key or a routing label.
    #[inline]
    pub fn pick_with(&self, options: &PickOptions<'_>) -> Option<Endpoint> {
        self.shared.table.load().pick(options).cloned()
    }

    /// Every endpoint routing may use now (admitted by the filters, any health).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.shared.table.load().endpoints.to_vec()
    }

    /// The breaker state of each routed endpoint, by instance id.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        self.shared
            .table
            .load()
            .endpoints
            .iter()
            .filter_map(|e| e.breaker().map(|b| (e.id().to_owned(), b.state())))
            .collect()
    }

    /// Runs `f` against a picked endpoint; every error counts as a failure
    /// and is retried on another instance (see [`call_with`](Self::call_with)).
    pub async fn call<T, E, F, Fut>(&self, f: F) -> Result<T, CallError<E>>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.call_with(&PickOptions::new(), |_: &E| true, f).await
    }

    /// Runs `f` against a picked endpoint, records the outcome and latency
    /// in the endpoint's breaker and the balancer's counters, and retries a
    /// failure that `retryable` accepts on another instance, with
    /// exponential backoff and jitter, while attempts, the retry budget and
    /// the deadline allow.
    pub async fn call_with<T, E, F, Fut>(
        &self,
        options: &PickOptions<'_>,
        retryable: impl Fn(&E) -> bool,
        mut f: F,
    ) -> Result<T, CallError<E>>
    where
        F: FnMut(Endpoint) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        let s = &self.shared;
        let deadline = Instant::now() + s.deadline;
        if let Some(b) = &s.budget {
            b.deposit();
        }
        let mut attempts = 0u32;
        let mut last: Option<E> = None;
        let mut tried: Vec<Endpoint> = Vec::new();
        loop {
            let Some((endpoint, permit)) = self.pick_untried(options, &tried) else {
                return Err(match last {
                    Some(error) => CallError::Failed { error, attempts },
                    None => CallError::NoInstances(Error::NoInstances(format!(
                        "service {:?} has no available instance ({} routed, breakers open or health checks failing for the rest)",
                        s.service,
                        s.table.load().endpoints.len()
                    ))),
                });
            };
            attempts += 1;
            let call = endpoint.start_call();
            let outcome = tokio::time::timeout_at(deadline, f(endpoint.clone())).await;
            let latency = call.finish();
            match outcome {
                Ok(Ok(value)) => {
                    if let Some(p) = permit {
                        p.success(latency);
                    }
                    return Ok(value);
                }
                Ok(Err(error)) => {
                    if let Some(p) = permit {
                        p.failure(latency);
                    }
                    let retry = retryable(&error)
                        && attempts < s.max_attempts
                        && s.budget.as_ref().is_none_or(RetryBudget::withdraw);
                    if !retry {
                        return Err(CallError::Failed { error, attempts });
                    }
                    last = Some(error);
                }
                Err(_) => {
                    if let Some(p) = permit {
                        p.failure(latency);
                    }
                    return Err(CallError::DeadlineExceeded { attempts, last });
                }
            }
            tried.push(endpoint);
            let factor = 1u32 << (attempts - 1).min(10);
            let pause = s
                .backoff
                .saturating_mul(factor)
                .mul_f64(0.5 + fastrand::f64() * 0.5);
            if Instant::now() + pause >= deadline {
                return Err(CallError::DeadlineExceeded { attempts, last });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// A picked endpoint not tried yet in this call (any, after a few
    /// draws), and its breaker's permit.
    fn pick_untried(
        &self,
        options: &PickOptions<'_>,
        tried: &[Endpoint],
    ) -> Option<(Endpoint, Option<super::breaker::BreakerPermit>)> {
        let table = self.shared.table.load();
        let mut fallback = None;
        let mut refused = None;
        for _ in 0..8 {
            let e = table.pick(options)?;
            let permit = match e.breaker() {
                Some(b) => match b.try_call() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        // Only panic mode picks an endpoint whose breaker
                        // refuses: it is called anyway, unrecorded, if no
                        // other turns up.
                        refused.get_or_insert_with(|| e.clone());
                        continue;
                    }
                },
                None => None,
            };
            if !tried.iter().any(|t| t.same(e)) {
                return Some((e.clone(), permit));
            }
            if fallback.is_none() {
                fallback = Some((e.clone(), permit));
            }
        }
        fallback.or_else(|| refused.map(|e| (e, None)))
    }
}
