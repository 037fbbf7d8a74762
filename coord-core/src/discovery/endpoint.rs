//! An endpoint: a service instance as the routing side sees it, with the
//! live counters the balancers read (in-flight calls, latency) and whether
//! it may be picked.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::breaker::CircuitBreaker;
use super::instance::{InstanceStatus, ServiceInstance};

/// How fast the latency average forgets: the weight of a sample halves
/// every `DECAY` of time.
const DECAY: Duration = Duration::from_secs(10);

/// One instance of a service as the balancers see it. Cheap to clone (an
/// `Arc`); the counters are shared by every clone, and kept across
/// snapshots as long as the instance stays registered.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<EndpointShared>,
}

struct EndpointShared {
    instance: ServiceInstance,
    /// Calls started and not finished.
    in_flight: AtomicU32,
    /// Peak-EWMA of call latency in nanoseconds, as `f64` bits (0: no sample yet).
    latency_ns: AtomicU64,
    /// When `latency_ns` was last updated, in nanoseconds since `born`.
    latency_at: AtomicU64,
    born: Instant,
    /// Set by the active health checks: whether routing may pick it.
    healthy: AtomicBool,
    /// The instance's breaker, when routing keeps one per instance.
    breaker: Option<CircuitBreaker>,
}

impl Endpoint {
    /// An endpoint for `instance`, healthy, with no calls recorded.
    pub fn new(instance: ServiceInstance) -> Endpoint {
        Self::build(instance, None)
    }

    /// An endpoint whose availability also follows `breaker` (not picked
    /// while it is open). Clones of one breaker share its state, so an
    /// endpoint rebuilt for a changed instance keeps its breaker's history.
    pub fn with_breaker(instance: ServiceInstance, breaker: CircuitBreaker) -> Endpoint {
        Self::build(instance, Some(breaker))
    }

    fn build(instance: ServiceInstance, breaker: Option<CircuitBreaker>) -> Endpoint {
        Endpoint {
            shared: Arc::new(EndpointShared {
                instance,
                in_flight: AtomicU32::new(0),
                latency_ns: AtomicU64::new(0),
                latency_at: AtomicU64::new(0),
                born: Instant::now(),
                healthy: AtomicBool::new(true),
                breaker,
            }),
        }
    }

    /// The instance.
    pub fn instance(&self) -> &ServiceInstance {
        &self.shared.instance
    }

    /// The instance's id.
    pub fn id(&self) -> &str {
        &self.shared.instance.id
    }

    /// The instance's address (`host:port`).
    pub fn addr(&self) -> &str {
        &self.shared.instance.addr
    }

    /// The instance's weight.
    pub fn weight(&self) -> u32 {
        self.shared.instance.weight
    }

    /// Whether routing may pick it now: the instance is `Up`, the active
    /// health check (if any) passes, and its circuit breaker (if any)
    /// permits a call.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.shared.instance.status == InstanceStatus::Up
            && self.shared.healthy.load(Ordering::Relaxed)
            && self
                .shared
                .breaker
                .as_ref()
                .is_none_or(CircuitBreaker::permits)
    }

    /// Whether the active health check passes (true without one).
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Marks it healthy or not (the active health check); returns whether
    /// that changed anything.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.shared.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// The instance's circuit breaker, when it has one.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.shared.breaker.as_ref()
    }

    /// Calls started through [`start_call`](Self::start_call) and not finished.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a call as in flight until the returned guard is dropped or
    /// [`finish`](CallGuard::finish)ed (which also records its latency).
    pub fn start_call(&self) -> CallGuard {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        CallGuard {
            endpoint: self.clone(),
            started: Instant::now(),
            done: false,
        }
    }

    /// The decayed peak-EWMA of call latency (a slow sample counts at once,
    /// fast ones pull it down gradually); `None` before the first sample.
    pub fn latency(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.shared.latency_ns.load(Ordering::Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    /// The load score of power-of-two-choices by latency: the latency
    /// average times (in-flight + 1), as tower's `PeakEwma` computes it.
    /// Endpoints without a sample score as if their latency were `default`.
    #[inline]
    pub fn latency_load(&self, default: Duration) -> f64 {
        let ns = f64::from_bits(self.shared.latency_ns.load(Ordering::Relaxed));
        let ns = if ns > 0.0 {
            ns
        } else {
            default.as_nanos() as f64
        };
        ns * f64::from(self.in_flight() + 1)
    }

    /// Records the latency of a finished call into the average.
    pub fn record_latency(&self, latency: Duration) {
        let s = &self.shared;
        let now = s.born.elapsed().as_nanos() as u64;
        let sample = latency.as_nanos().max(1) as f64;
        let previous_at = s.latency_at.swap(now, Ordering::Relaxed);
        let _ = s
            .latency_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let next = if old <= 0.0 || sample > old {
                    sample
                } else {
                    let elapsed = now.saturating_sub(previous_at) as f64;
                    let keep = (-elapsed / DECAY.as_nanos() as f64).exp();
                    old * keep + sample * (1.0 - keep)
                };
                Some(next.to_bits())
            });
    }

    /// Whether two handles are the same endpoint (not merely equal instances).
    pub fn same(&self, other: &Endpoint) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id())
            .field("addr", &self.addr())
            .field("in_flight", &self.in_flight())
            .field("available", &self.is_available())
            .finish()
    }
}

/// A call in flight on an [`Endpoint`]; dropping it ends the call without
/// recording a latency.
#[derive(Debug)]
pub struct CallGuard {
    endpoint: Endpoint,
    started: Instant,
    done: bool,
}

impl CallGuard {
    /// Ends the call and records its latency; returns the latency.
    pub fn finish(mut self) -> Duration {
        let latency = self.started.elapsed();
        self.endpoint.record_latency(latency);
        self.end();
        latency
    }

    fn end(&mut self) {
        if !self.done {
            self.done = true;
            self.endpoint
                .shared
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::new(ServiceInstance::new("s", "a", "127.0.0.1:1"))
    }

    #[test]
    fn calls_count_in_flight_until_finished_or_dropped() {
        let e = endpoint();
        let a = e.start_call();
        let b = e.start_call();
        assert_eq!(e.in_flight(), 2);
        a.finish();
        drop(b);
        assert_eq!(e.in_flight(), 0);
        assert!(e.latency().is_some());
    }

    #[test]
    fn a_slow_sample_counts_at_once_and_fast_ones_pull_it_down() {
        let e = endpoint();
        e.record_latency(Duration::from_millis(1));
        e.record_latency(Duration::from_millis(100));
        assert_eq!(e.latency(), Some(Duration::from_millis(100)));
        e.record_latency(Duration::from_millis(1));
        assert!(e.latency().unwrap() <= Duration::from_millis(100));
    }

    #[test]
    fn availability_follows_status_and_health() {
        let e = endpoint();
        assert!(e.is_available());
        e.set_healthy(false);
        assert!(!e.is_available());
        let down = Endpoint::new(
            ServiceInstance::new("s", "a", "127.0.0.1:1").status(InstanceStatus::Down),
        );
        assert!(!down.is_available());
    }
}
