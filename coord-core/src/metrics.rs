//! Prometheus metrics, registered on a caller-provided registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::discovery::breaker::BreakerState;
use crate::error::{Error, Result};

/// The SDK's metrics (prefix `coord_`). Create once per registry with
/// [`Metrics::register`] and hand it to the client builder.
#[derive(Debug, Clone)]
pub struct Metrics {
    backend_requests: IntCounterVec,
    backend_duration: HistogramVec,
    lock_ops: IntCounterVec,
    lock_wait: HistogramVec,
    lock_lost: IntCounterVec,
    lock_at_risk: IntCounterVec,
    lock_acquisitions: IntCounterVec,
    lock_wait_by_lock: HistogramVec,
    lock_hold: HistogramVec,
    cache_events: IntCounterVec,
    cache_load: HistogramVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    registration_events: IntCounterVec,
    config_reloads: IntCounterVec,
    breaker_calls: IntCounterVec,
    /// How many breakers of each name export their series: a name's series
    /// are removed when its last breaker goes, so that instances that come
    /// and go (each with a breaker of its own) do not pile up series.
    breakers: Arc<Mutex<HashMap<String, usize>>>,
}

/// The `outcome` labels of `coord_breaker_calls_total`, in the order of
/// [`BreakerSeries`]' counters.
const BREAKER_OUTCOMES: [&str; 4] = ["success", "failure", "slow", "rejected"];
/// The states a breaker's transitions go from and to.
const BREAKER_STATES: [BreakerState; 3] = [
    BreakerState::Closed,
    BreakerState::Open,
    BreakerState::HalfOpen,
];

/// The series of one breaker (see [`Metrics::breaker`]); removed from the
/// registry when the last breaker of its name drops its handles.
#[derive(Debug)]
pub(crate) struct BreakerSeries {
    metrics: Metrics,
    name: String,
    /// `coord_breaker_state`.
    pub(crate) state: IntGauge,
    /// `coord_breaker_calls_total` by outcome.
    pub(crate) success: IntCounter,
    pub(crate) failure: IntCounter,
    pub(crate) slow: IntCounter,
    pub(crate) rejected: IntCounter,
}

impl BreakerSeries {
    /// Counts a transition of the breaker (`coord_breaker_transitions_total`).
    pub(crate) fn transition(&self, from: &str, to: &str) {
        self.metrics
            .breaker_transitions
            .with_label_values(&[&self.name, from, to])
            .inc();
    }
}

impl Drop for BreakerSeries {
    fn drop(&mut self) {
        let m = &self.metrics;
        let mut live = m.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(n) = live.get_mut(&self.name) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        live.remove(&self.name);
        // Removing a series never created is an error that means nothing.
        let name = self.name.as_str();
        let _ = m.breaker_state.remove_label_values(&[name]);
        for outcome in BREAKER_OUTCOMES {
            let _ = m.breaker_calls.remove_label_values(&[name, outcome]);
        }
        for from in BREAKER_STATES {
            for to in BREAKER_STATES {
                let _ =
                    m.breaker_transitions
                        .remove_label_values(&[name, from.as_str(), to.as_str()]);
            }
        }
    }
}

fn prom(e: prometheus::Error) -> Error {
    Error::invalid(format!("cannot register coord metrics: {e}"))
}

impl Metrics {
    /// Registers every coord metric on `registry`. Fails if they are
    /// registered there already.
    pub fn register(registry: &Registry) -> Result<Self> {
        let latency_buckets = prometheus::exponential_buckets(0.000_05, 2.0, 18).map_err(prom)?;
        let hold_buckets = prometheus::exponential_buckets(0.000_5, 4.0, 12).map_err(prom)?;
        let m = Metrics {
            backend_requests: IntCounterVec::new(
                Opts::new(
                    "coord_backend_requests_total",
                    "Backend requests by backend, operation and outcome",
                ),
                &["backend", "op", "outcome"],
            )
            .map_err(prom)?,
            backend_duration: HistogramVec::new(
                HistogramOpts::new(
                    "coord_backend_request_duration_seconds",
                    "Backend request latency by backend and operation",
                )
                .buckets(latency_buckets.clone()),
                &["backend", "op"],
            )
            .map_err(prom)?,
            lock_ops: IntCounterVec::new(
                Opts::new(
                    "coord_lock_operations_total",
                    "Lock acquire/release/renew calls by outcome",
                ),
                &["backend", "op", "outcome"],
            )
            .map_err(prom)?,
            lock_wait: HistogramVec::new(
                HistogramOpts::new(
                    "coord_lock_acquire_duration_seconds",
                    "Time from acquire() to grant, waiting included",
                )
                .buckets(latency_buckets.clone()),
                &["backend"],
            )
            .map_err(prom)?,
            lock_lost: IntCounterVec::new(
                Opts::new("coord_lock_lost_total", "Locks lost while held, per lock"),
                &["backend", "lock"],
            )
            .map_err(prom)?,
            lock_at_risk: IntCounterVec::new(
                Opts::new(
                    "coord_lock_at_risk_total",
                    "Holds whose renewal failed, or was unanswered with a third of the TTL left (at risk of loss), per lock",
                ),
                &["backend", "lock"],
            )
            .map_err(prom)?,
            lock_acquisitions: IntCounterVec::new(
                Opts::new(
                    "coord_lock_acquisitions_total",
                    "Lock grants per lock; contended=true when the caller had to wait",
                ),
                &["backend", "lock", "contended"],
            )
            .map_err(prom)?,
            lock_wait_by_lock: HistogramVec::new(
                HistogramOpts::new(
                    "coord_lock_wait_seconds",
                    "Time from acquire() to grant, per lock",
                )
                .buckets(latency_buckets),
                &["backend", "lock"],
            )
            .map_err(prom)?,
            lock_hold: HistogramVec::new(
                HistogramOpts::new(
                    "coord_lock_hold_seconds",
                    "Time from grant to release or loss, per lock",
                )
                .buckets(hold_buckets),
                &["backend", "lock"],
            )
            .map_err(prom)?,
            cache_events: IntCounterVec::new(
                Opts::new(
                    "coord_cache_events_total",
                    "Cache events by cache: l1_hit, l2_hit, stale_hit, miss, load, load_failure, \
                     codec_error, write, invalidation_received, resync",
                ),
                &["backend", "cache", "event"],
            )
            .map_err(prom)?,
            cache_load: HistogramVec::new(
                HistogramOpts::new(
                    "coord_cache_load_duration_seconds",
                    "Time a cache loader took, per cache",
                )
                .buckets(prometheus::exponential_buckets(0.000_1, 4.0, 12).map_err(prom)?),
                &["backend", "cache"],
            )
            .map_err(prom)?,
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "coord_breaker_state",
                    "Circuit breaker state per breaker: 0 closed, 1 open, 2 half-open",
                ),
                &["breaker"],
            )
            .map_err(prom)?,
            breaker_transitions: IntCounterVec::new(
                Opts::new(
                    "coord_breaker_transitions_total",
                    "Circuit breaker state changes per breaker, from and to \
                     (closed, open, half_open)",
                ),
                &["breaker", "from", "to"],
            )
            .map_err(prom)?,
            registration_events: IntCounterVec::new(
                Opts::new(
                    "coord_registration_events_total",
                    "What happened to service registrations, by service and event: \
                     reregistered (the registry had lost the instance), replaced, \
                     renew_failed, recovered, health_down, health_up",
                ),
                &["service", "event"],
            )
            .map_err(prom)?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "coord_config_reloads_total",
                    "Typed config handles: new versions taken (reloaded) or refused \
                     (did not decode or validate), by key",
                ),
                &["key", "outcome"],
            )
            .map_err(prom)?,
            breaker_calls: IntCounterVec::new(
                Opts::new(
                    "coord_breaker_calls_total",
                    "Calls through a circuit breaker by outcome: success, failure, \
                     slow (succeeded, but slow) or rejected",
                ),
                &["breaker", "outcome"],
            )
            .map_err(prom)?,
            breakers: Arc::default(),
        };
        registry
            .register(Box::new(m.cache_events.clone()))
            .map_err(prom)?;
        registry
            .register(Box::new(m.cache_load.clone()))
            .map_err(prom)?;
        registry
            .register(Box::new(m.backend_requests.clone()))
            .map_err(prom)?;
        registry
            .register(Box::new(m.backend_duration.clone()))
            .map_err(prom)?;
        registry
            .register(Box::new(m.lock_ops.clone()))
            .map_err(prom)?;
        registry
            .register(Box::new(m.lock_wait.clone()))
            .map_err(prom)?;
        for family in [&m.lock_lost, &m.lock_at_risk, &m.lock_acquisitions] {
            registry.register(Box::new(family.clone())).map_err(prom)?;
        }
        for family in [&m.lock_wait_by_lock, &m.lock_hold] {
            registry.register(Box::new(family.clone())).map_err(prom)?;
        }
        registry
            .register(Box::new(m.breaker_state.clone()))
            .map_err(prom)?;
        for family in [
            &m.breaker_transitions,
            &m.breaker_calls,
            &m.registration_events,
            &m.config_reloads,
        ] {
            registry.register(Box::new(family.clone())).map_err(prom)?;
        }
        Ok(m)
    }

    /// Records one backend request.
    pub fn backend_request<T>(
        &self,
        backend: &str,
        op: &str,
        elapsed: Duration,
        result: &Result<T>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind_label(),
        };
        self.backend_requests
            .with_label_values(&[backend, op, outcome])
            .inc();
        self.backend_duration
            .with_label_values(&[backend, op])
            .observe(elapsed.as_secs_f64());
    }

    /// Records a lock operation (`acquire`, `release`, `renew`) and its outcome.
    pub fn lock_op(&self, backend: &str, op: &str, outcome: &str) {
        self.lock_ops
            .with_label_values(&[backend, op, outcome])
            .inc();
    }

    /// Records the time an acquire took, waiting included.
    pub fn lock_acquired(&self, backend: &str, waited: Duration) {
        self.lock_wait
            .with_label_values(&[backend])
            .observe(waited.as_secs_f64());
    }

    /// Records a lost lock. `lock` is the lock's name (bounded by the
    /// client to [`MAX_TRACKED_LOCKS`](crate::lock::MAX_TRACKED_LOCKS) values).
    pub fn lock_lost(&self, backend: &str, lock: &str) {
        self.lock_lost.with_label_values(&[backend, lock]).inc();
    }

    /// Records a hold of `lock` becoming at risk (a renewal failed, or was
    /// unanswered with a third of the TTL left).
    pub fn lock_at_risk(&self, backend: &str, lock: &str) {
        self.lock_at_risk.with_label_values(&[backend, lock]).inc();
    }

    /// Records one grant of `lock`: how long it waited and whether it had to.
    pub fn lock_granted(&self, backend: &str, lock: &str, waited: Duration, contended: bool) {
        let contended = if contended { "true" } else { "false" };
        self.lock_acquisitions
            .with_label_values(&[backend, lock, contended])
            .inc();
        self.lock_wait_by_lock
            .with_label_values(&[backend, lock])
            .observe(waited.as_secs_f64());
    }

    /// The counter of cache `cache`'s `event` (see `coord_cache_events_total`).
    pub(crate) fn cache_event(
        &self,
        backend: &str,
        cache: &str,
        event: &str,
    ) -> prometheus::IntCounter {
        self.cache_events
            .with_label_values(&[backend, cache, event])
    }

    /// The load-time histogram of cache `cache`.
    pub(crate) fn cache_load(&self, backend: &str, cache: &str) -> prometheus::Histogram {
        self.cache_load.with_label_values(&[backend, cache])
    }

    /// The series of circuit breaker `breaker` (`coord_breaker_*`,
    /// labelled `breaker="<name>"`), exported until the last breaker of
    /// that name drops them.
    pub(crate) fn breaker(&self, breaker: &str) -> BreakerSeries {
        let mut live = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        *live.entry(breaker.to_owned()).or_default() += 1;
        // Made under the lock: a removal by the last breaker of the name
        // never runs between the count and the series' creation.
        let [success, failure, slow, rejected] = BREAKER_OUTCOMES
            .map(|outcome| self.breaker_calls.with_label_values(&[breaker, outcome]));
        BreakerSeries {
            metrics: self.clone(),
            name: breaker.to_owned(),
            state: self.breaker_state.with_label_values(&[breaker]),
            success,
            failure,
            slow,
            rejected,
        }
    }

    /// Counts a registration event of `service` (`coord_registration_events_total`).
    pub(crate) fn registration_event(&self, service: &str, event: &str) {
        self.registration_events
            .with_label_values(&[service, event])
            .inc();
    }

    /// Counts a typed config handle's reload or refusal (`coord_config_reloads_total`).
    pub(crate) fn config_reload(&self, key: &str, outcome: &str) {
        self.config_reloads.with_label_values(&[key, outcome]).inc();
    }

    /// Records how long `lock` was held.
    pub fn lock_held(&self, backend: &str, lock: &str, held: Duration) {
        self.lock_hold
            .with_label_values(&[backend, lock])
            .observe(held.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_per_registry() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.lock_op("memory", "acquire", "ok");
        m.backend_request::<()>("memory", "try_acquire", Duration::from_micros(80), &Ok(()));
        let names: Vec<_> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.contains(&"coord_lock_operations_total".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"coord_backend_requests_total".to_owned()));
        assert!(Metrics::register(&registry).is_err());
    }

    #[test]
    fn per_lock_families_carry_the_lock_name() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.lock_granted("redis", "orders/42", Duration::from_millis(3), true);
        m.lock_held("redis", "orders/42", Duration::from_millis(30));
        m.lock_lost("redis", "orders/42");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        for line in [
            r#"coord_lock_acquisitions_total{backend="redis",contended="true",lock="orders/42"} 1"#,
            r#"coord_lock_lost_total{backend="redis",lock="orders/42"} 1"#,
            r#"coord_lock_hold_seconds_count{backend="redis",lock="orders/42"} 1"#,
            r#"coord_lock_wait_seconds_count{backend="redis",lock="orders/42"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
