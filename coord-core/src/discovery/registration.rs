//! A registration: an instance kept alive in the registry by a background
//! task, updated in place, and removed on `deregister` or drop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::backend::{RegistryBackend, RenewOutcome};
use super::instance::{InstanceStatus, ServiceInstance};
use crate::error::Result;

/// What happened to a registration, as [`Registration::events`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationEvent {
    /// A renewal failed (the backend is unreachable); the instance may
    /// expire if this lasts longer than its TTL. Reported once per outage.
    RenewFailed {
        /// What failed.
        error: String,
    },
    /// Renewals succeed again after [`RenewFailed`](Self::RenewFailed).
    Recovered,
    /// The registry had lost the instance (it expired during an outage, or
    /// its lease was lost) and it was registered again.
    Reregistered,
    /// Another registration took over this instance's id: this one stopped
    /// keeping it alive and will not remove it.
    Replaced,
    /// The registering side's health check (see
    /// [`Registration::health_check`]) marked the instance `Down` (`false`)
    /// or `Up` again (`true`).
    HealthChanged {
        /// Whether the instance passes its check now.
        healthy: bool,
    },
}

impl RegistrationEvent {
    fn label(&self) -> &'static str {
        match self {
            RegistrationEvent::RenewFailed { .. } => "renew_failed",
            RegistrationEvent::Recovered => "recovered",
            RegistrationEvent::Reregistered => "reregistered",
            RegistrationEvent::Replaced => "replaced",
            RegistrationEvent::HealthChanged { healthy: false } => "health_down",
            RegistrationEvent::HealthChanged { healthy: true } => "health_up",
        }
    }
}

/// An instance kept alive in the registry. Renewed in the background every
/// third of its TTL; registered again by itself if the registry lost it
/// (an outage longer than the TTL, a lost lease), and says so through
/// [`events`](Self::events).
///
/// Dropping it deregisters the instance in the background;
/// [`deregister`](Self::deregister) does it and waits.
/// [`abandon`](Self::abandon) stops renewing and leaves the entry to expire,
/// as a crashed process would.
#[derive(Debug)]
pub struct Registration {
    shared: Arc<RegistrationShared>,
    finished: bool,
}

#[derive(Debug)]
pub(crate) struct RegistrationShared {
    backend: Arc<dyn RegistryBackend>,
    owner: String,
    ttl: Duration,
    instance: Mutex<ServiceInstance>,
    /// Serializes writes of the instance (updates, re-registrations).
    writing: tokio::sync::Mutex<()>,
    events: broadcast::Sender<RegistrationEvent>,
    stop: CancellationToken,
    /// Set by [`Registration::abandon`]: the entry is left to expire, and
    /// [`DiscoveryClient::deregister_all`](super::DiscoveryClient::deregister_all)
    /// (a shutdown) leaves it alone, as a crashed process would.
    abandoned: AtomicBool,
    reregistrations: AtomicU64,
    metrics: Option<crate::Metrics>,
}

impl RegistrationShared {
    fn instance(&self) -> ServiceInstance {
        self.instance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn key(&self) -> (String, String) {
        let i = self.instance.lock().unwrap_or_else(|e| e.into_inner());
        (i.service.clone(), i.id.clone())
    }

    fn emit(&self, event: RegistrationEvent) {
        if let Some(m) = &self.metrics {
            let service = self.key().0;
            m.registration_event(&service, event.label());
        }
        let _ = self.events.send(event);
    }

    /// Applies `change` to the instance and stores it.
    async fn update(&self, change: impl FnOnce(&mut ServiceInstance)) -> Result<()> {
        let _writing = self.writing.lock().await;
        if self.stop.is_cancelled() {
            // Deregistered or abandoned meanwhile (a health probe in
            // flight): storing it would bring the instance back.
            return Err(crate::Error::Closed(
                "the registration has ended (deregistered or abandoned)".into(),
            ));
        }
        let mut next = self.instance();
        let (service, id) = (next.service.clone(), next.id.clone());
        change(&mut next);
        if next.service != service || next.id != id {
            return Err(crate::Error::invalid(
                "a registration's service and id cannot change; register a new instance",
            ));
        }
        next.validate()?;
        self.backend.register(&next, &self.owner, self.ttl).await?;
        *self.instance.lock().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// Leaves the entry to expire within its TTL (see [`Registration::abandon`]).
    async fn abandon(&self) -> Result<()> {
        let _writing = self.writing.lock().await;
        let (service, id) = self.key();
        self.backend
            .abandon(&service, &id, &self.owner, self.ttl)
            .await
    }

    /// Whether [`Registration::abandon`] left the entry to expire.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Removes the instance (only this owner's entry) and stops renewing.
    pub(crate) async fn deregister(&self) -> Result<bool> {
        self.stop.cancel();
        let _writing = self.writing.lock().await;
        let (service, id) = self.key();
        self.backend.deregister(&service, &id, &self.owner).await
    }
}

impl Registration {
    /// Registers `instance` (already validated) and starts renewing it.
    pub(crate) async fn start(
        backend: Arc<dyn RegistryBackend>,
        instance: ServiceInstance,
        ttl: Duration,
        metrics: Option<crate::Metrics>,
    ) -> Result<Registration> {
        let owner = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        backend.register(&instance, &owner, ttl).await?;
        let shared = Arc::new(RegistrationShared {
            backend,
            owner,
            ttl,
            instance: Mutex::new(instance),
            writing: tokio::sync::Mutex::new(()),
            events: broadcast::channel(64).0,
            stop: CancellationToken::new(),
            abandoned: AtomicBool::new(false),
            reregistrations: AtomicU64::new(0),
            metrics,
        });
        tokio::spawn(keep_alive(
            Arc::downgrade(&shared),
            shared.stop.clone(),
            ttl,
        ));
        Ok(Registration {
            shared,
            finished: false,
        })
    }

    pub(crate) fn shared(&self) -> Weak<RegistrationShared> {
        Arc::downgrade(&self.shared)
    }

    /// The instance as registered now.
    pub fn instance(&self) -> ServiceInstance {
        self.shared.instance()
    }

    /// The registration's TTL: how long the instance outlives its process.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// How many times the instance was registered again after the registry lost it.
    pub fn reregistrations(&self) -> u64 {
        self.shared.reregistrations.load(Ordering::Relaxed)
    }

    /// What happens to this registration from now on.
    pub fn events(&self) -> broadcast::Receiver<RegistrationEvent> {
        self.shared.events.subscribe()
    }

    /// Changes the status (`Draining` before a shutdown stops new traffic
    /// while calls in flight finish).
    pub async fn set_status(&self, status: InstanceStatus) -> Result<()> {
        self.update(|i| i.status = status).await
    }

    /// Changes the weight.
    pub async fn set_weight(&self, weight: u32) -> Result<()> {
        self.update(|i| i.weight = weight).await
    }

    /// Sets one metadata entry.
    pub async fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        self.update(|i| {
            i.metadata.insert(key.to_owned(), value.to_owned());
        })
        .await
    }

    /// Applies `change` to the instance and stores it; an invalid result
    /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument)) changes nothing.
    pub async fn update(&self, change: impl FnOnce(&mut ServiceInstance)) -> Result<()> {
        self.shared.update(change).await
    }

    /// Probes the instance itself with `check` for as long as the
    /// registration lives, and marks it `Down` after `fall` failures in a
    /// row and `Up` again after `rise` passes (a
    /// [`RegistrationEvent::HealthChanged`] each time), so that watchers
    /// stop routing to a process that is alive but cannot serve.
    pub fn health_check(&self, check: super::HealthCheck) {
        let shared = Arc::downgrade(&self.shared);
        let stop = self.shared.stop.clone();
        tokio::spawn(async move {
            let mut state = super::health_check::Hysteresis::new();
            let mut tick = tokio::time::interval(check.interval);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(s) = shared.upgrade() else { return };
                let passed = check.probe(&s.instance()).await;
                if let Some(healthy) = state.observe(passed, check.rise, check.fall) {
                    let status = if healthy {
                        InstanceStatus::Up
                    } else {
                        InstanceStatus::Down
                    };
                    match s.update(|i| i.status = status).await {
                        Ok(()) => s.emit(RegistrationEvent::HealthChanged { healthy }),
                        Err(_) if stop.is_cancelled() => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not store the health check's status; trying at the next probe");
                            state = super::health_check::Hysteresis::new();
                        }
                    }
                }
            }
        });
    }

    /// Removes the instance from the registry and waits for the backend to
    /// confirm; `false` if it was already gone (expired, or replaced by
    /// another registration of its id).
    pub async fn deregister(mut self) -> Result<bool> {
        self.finished = true;
        self.shared.deregister().await
    }

    /// Stops renewing and leaves the entry to expire within its TTL, as if
    /// the process had crashed (the client's other registrations live on).
    /// For tests and hand-overs. On a backend whose registrations of one
    /// client share a lease (etcd), the entry is moved in the background to
    /// a lease of its own that nobody renews; if that fails (a warning is
    /// logged), it lives as long as the client's other registrations.
    pub fn abandon(mut self) {
        self.finished = true;
        self.shared.abandoned.store(true, Ordering::Release);
        self.shared.stop.cancel();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            runtime.spawn(async move {
                if let Err(e) = shared.abandon().await {
                    tracing::warn!(error = %e, "could not leave the abandoned registration to expire on its own; it lives as long as the client's other registrations of its TTL");
                }
            });
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.shared.stop.cancel();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            runtime.spawn(async move {
                if let Err(e) = shared.deregister().await {
                    tracing::warn!(error = %e, "dropped registration could not be removed; it expires with its TTL");
                }
            });
        }
    }
}

/// Renews every third of the TTL (sooner after a failure), registers again
/// when the registry lost the instance, stops when replaced or cancelled.
async fn keep_alive(shared: Weak<RegistrationShared>, stop: CancellationToken, ttl: Duration) {
    let period = ttl / 3;
    let retry = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut wait = period;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(s) = shared.upgrade() else { return };
        let _writing = tokio::select! {
            _ = stop.cancelled() => return,
            w = s.writing.lock() => w,
        };
        if stop.is_cancelled() {
            return;
        }
        let (service, id) = s.key();
        let outcome = match s.backend.renew_instance(&service, &id, &s.owner, ttl).await {
            Ok(RenewOutcome::Missing) => {
                let instance = s.instance();
                s.backend
                    .register(&instance, &s.owner, ttl)
                    .await
                    .map(|()| {
                        s.reregistrations.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            service,
                            id,
                            "registry had lost the instance; registered it again"
                        );
                        s.emit(RegistrationEvent::Reregistered);
                    })
            }
            Ok(RenewOutcome::Replaced) => {
                tracing::warn!(
                    service,
                    id,
                    "another registration took over this instance id; stopped renewing"
                );
                s.emit(RegistrationEvent::Replaced);
                return;
            }
            Ok(RenewOutcome::Renewed) => Ok(()),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    s.emit(RegistrationEvent::Recovered);
                }
                wait = period;
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(service, id, error = %e, "renewal failed; retrying");
                    s.emit(RegistrationEvent::RenewFailed {
                        error: e.to_string(),
                    });
                }
                wait = retry;
            }
        }
    }
}
