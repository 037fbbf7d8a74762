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
