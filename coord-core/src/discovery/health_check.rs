//! Active health checks: a TCP connect or a user's async function, run every
//! interval, with hysteresis (`rise` passes to come back, `fall` failures to
//! go down) so that one lost probe does not flap an instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::instance::ServiceInstance;
use crate::error::{Error, Result};

type CheckFn = dyn Fn(ServiceInstance) -> BoxFuture<'static, bool> + Send + Sync;

/// How to probe an instance, and how often.
///
/// ```
/// use std::time::Duration;
/// use coord_core::discovery::HealthCheck;
///
/// let tcp = HealthCheck::tcp().interval(Duration::from_secs(2)).fall(3).rise(2);
/// let http = HealthCheck::custom(|instance| async move {
///     // e.g. GET http://{instance.addr}/healthz with your HTTP client
///     !instance.addr.is_empty()
/// });
/// # let _ = (tcp, http);
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    probe: Probe,
    pub(crate) interval: Duration,
    timeout: Duration,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
}

#[derive(Clone)]
enum Probe {
    Tcp,
    Custom(Arc<CheckFn>),
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field(
                "probe",
                &match self.probe {
                    Probe::Tcp => "tcp",
                    Probe::Custom(_) => "custom",
                },
            )
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("rise", &self.rise)
            .field("fall", &self.fall)
            .finish()
    }
}

impl HealthCheck {
    /// Passes when a TCP connection to the instance's address opens within
    /// the timeout. Every 5 s, 1 s timeout, down after 3 failures, up after 2 passes.
    pub fn tcp() -> HealthCheck {
        Self::with(Probe::Tcp)
    }

    /// Passes when `check` returns `true` within the timeout.
    pub fn custom<F, Fut>(check: F) -> HealthCheck
    where
        F: Fn(ServiceInstance) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        Self::with(Probe::Custom(Arc::new(move |i| Box::pin(check(i)))))
    }

    fn with(probe: Probe) -> HealthCheck {
        HealthCheck {
            probe,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }

    /// How often to probe (at least 10 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long one probe may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Passes in a row that bring a down instance back (at least 1).
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise.max(1);
        self
    }

    /// Failures in a row that take an instance down (at least 1).
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall.max(1);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.timeout.is_zero() {
            return Err(Error::invalid("health check timeout must be above zero"));
        }
        Ok(())
    }

    /// Probes `instance` once.
    pub async fn probe(&self, instance: &ServiceInstance) -> bool {
        let probe = async {
            match &self.probe {
                Probe::Tcp => tokio::net::TcpStream::connect(instance.addr.as_str())
                    .await
                    .is_ok(),
                Probe::Custom(check) => check(instance.clone()).await,
            }
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .unwrap_or(false)
    }
}

/// The up/down state of one instance under a check, with hysteresis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hysteresis {
    healthy: bool,
    passes: u32,
    failures: u32,
}

impl Hysteresis {
    /// Starts healthy (an instance is trusted until its checks fail).
    pub(crate) fn new() -> Self {
        Hysteresis {
            healthy: true,
            passes: 0,
            failures: 0,
        }
    }

    /// Records a probe; returns the new state when it changed.
    pub(crate) fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.healthy && self.passes >= rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_takes_fall_failures_to_go_down_and_rise_passes_to_come_back() {
        let mut h = Hysteresis::new();
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None, "a pass resets the failures");
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None, "a failure resets the passes");
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));
    }

    #[tokio::test]
    async fn tcp_probes_pass_on_a_listener_and_fail_without() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = ServiceInstance::new("s", "a", addr.as_str());
        let check = HealthCheck::tcp().timeout(Duration::from_secs(1));
        assert!(check.probe(&up).await);
        drop(listener);
        assert!(!check.probe(&up).await);
        let custom = HealthCheck::custom(|i| async move { i.id == "a" });
        assert!(custom.probe(&up).await);
    }
}
