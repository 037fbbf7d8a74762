//! Health reports of connectors and components.

use std::time::Duration;

/// Whether a component works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HealthStatus {
    /// Works as it should.
    Healthy,
    /// Works with reduced guarantees (e.g. a cache serving only from L1).
    Degraded,
    /// Does not work.
    Unhealthy,
}

/// One component's health, with the round-trip latency it measured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ComponentHealth {
    /// The component (`redis`, `etcd`, `memory`, ...).
    pub name: String,
    /// Its status.
    pub status: HealthStatus,
    /// The latency of the probe (one round trip), when one was made.
    pub latency: Option<Duration>,
    /// What went wrong, or a short description.
    pub detail: Option<String>,
}

impl ComponentHealth {
    /// A healthy report with the measured latency.
    pub fn healthy(name: impl Into<String>, latency: Duration) -> Self {
        ComponentHealth {
            name: name.into(),
            status: HealthStatus::Healthy,
            latency: Some(latency),
            detail: None,
        }
    }

    /// An unhealthy report saying what failed.
    pub fn unhealthy(name: impl Into<String>, detail: impl Into<String>) -> Self {
        ComponentHealth {
            name: name.into(),
            status: HealthStatus::Unhealthy,
            latency: None,
            detail: Some(detail.into()),
        }
    }

    /// Whether the status is [`HealthStatus::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }
}

/// A component that can report its health (a cache, say), for a
/// [`HealthRegistry`].
#[async_trait::async_trait]
pub trait HealthSource: Send + Sync {
    /// One health report.
    async fn health(&self) -> ComponentHealth;
}

/// The components of one client whose health its report aggregates. Holds
/// them weakly: a dropped component leaves the report.
#[derive(Default)]
pub struct HealthRegistry {
    sources: std::sync::Mutex<Vec<std::sync::Weak<dyn HealthSource>>>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRegistry").finish_non_exhaustive()
    }
}

impl HealthRegistry {
    /// Adds `source` (held weakly).
    pub fn register(&self, source: std::sync::Weak<dyn HealthSource>) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|s| s.strong_count() > 0);
        sources.push(source);
    }

    /// The reports of every live component, in registration order.
    pub async fn reports(&self) -> Vec<ComponentHealth> {
        let live: Vec<_> = {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            sources.retain(|s| s.strong_count() > 0);
            sources
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect()
        };
        let mut out = Vec::with_capacity(live.len());
        for source in live {
            out.push(source.health().await);
        }
        out
    }
}

/// The health of a client and each of its components.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The worst status of any component.
    pub status: HealthStatus,
    /// Each component's report: the backend first, then caches and other
    /// components built through the client.
    pub components: Vec<ComponentHealth>,
}

impl HealthReport {
    /// A report over `components`, with the worst status among them.
    pub fn new(components: Vec<ComponentHealth>) -> Self {
        let status = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        HealthReport { status, components }
    }

    /// One report summing the components up: the worst status, the first
    /// component's latency, and what is wrong with the others.
    pub fn summary(&self, name: &str) -> ComponentHealth {
        let problems: Vec<String> = self
            .components
            .iter()
            .filter(|c| c.status != HealthStatus::Healthy)
            .map(|c| match &c.detail {
                Some(d) => format!("{} {:?}: {d}", c.name, c.status),
                None => format!("{} {:?}", c.name, c.status),
            })
            .collect();
        ComponentHealth {
            name: name.to_owned(),
            status: self.status,
            latency: self.components.first().and_then(|c| c.latency),
            detail: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}
