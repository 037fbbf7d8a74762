//! Power of two choices: the less loaded of two random candidates, by
//! calls in flight or by latency.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::available::{best_of, in_flight_per_weight, per_weight, weights_differ};
use super::{Balancer, Picker};
use crate::discovery::Endpoint;

/// The latency an endpoint without samples is assumed to have, by default
/// (linkerd's default round-trip estimate).
const DEFAULT_LATENCY: Duration = Duration::from_millis(30);

/// Draws two distinct available endpoints at random and picks the less
/// loaded per unit of weight. Load is either the calls in flight plus one
/// ([`by_in_flight`](Self::by_in_flight)) or the peak-EWMA latency times
/// the calls in flight plus one ([`by_latency`](Self::by_latency), tower's
/// and Finagle's `PeakEwma`, read from [`Endpoint::latency_load`]), divided
/// by the endpoint's weight: an endpoint of weight 3 counts its load a
/// third as much. With equal weights that is the plain comparison. Ties go
/// to the first draw. With two endpoints it compares both.
///
/// Two random candidates instead of the least loaded of all keep a stale
/// view of the loads from sending everything to one endpoint, at a
/// constant cost per pick.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use coord_core::discovery::balancer::{Balancer, PowerOfTwoChoices};
/// use coord_core::discovery::{Endpoint, ServiceInstance};
///
/// let endpoints: Arc<[Endpoint]> = ["slow", "fast"]
///     .iter()
///     .map(|id| Endpoint::new(ServiceInstance::new("s", *id, "10.0.0.1:80")))
///     .collect();
/// endpoints[0].record_latency(Duration::from_millis(500));
/// endpoints[1].record_latency(Duration::from_millis(5));
/// let picker = PowerOfTwoChoices::by_latency().picker(endpoints);
/// assert_eq!(picker.pick(None).unwrap().id(), "fast");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PowerOfTwoChoices {
    load: Load,
}

#[derive(Debug, Clone, Copy)]
enum Load {
    InFlight,
    Latency { default: Duration },
}

impl PowerOfTwoChoices {
    /// Compares the calls in flight.
    pub fn by_in_flight() -> PowerOfTwoChoices {
        PowerOfTwoChoices {
            load: Load::InFlight,
        }
    }

    /// Compares latency × (calls in flight + 1); an endpoint without a
    /// latency sample yet counts as 30 ms.
    pub fn by_latency() -> PowerOfTwoChoices {
        PowerOfTwoChoices::by_latency_or(DEFAULT_LATENCY)
    }

    /// Compares latency × (calls in flight + 1); an endpoint without a
    /// latency sample yet counts as `default`. A low default sends new
    /// endpoints traffic sooner, so they get measured sooner.
    pub fn by_latency_or(default: Duration) -> PowerOfTwoChoices {
        PowerOfTwoChoices {
            load: Load::Latency { default },
        }
    }
}

impl Default for PowerOfTwoChoices {
    /// By calls in flight.
    fn default() -> PowerOfTwoChoices {
        PowerOfTwoChoices::by_in_flight()
    }
}

impl Balancer for PowerOfTwoChoices {
    fn name(&self) -> &'static str {
        match self.load {
            Load::InFlight => "p2c_in_flight",
            Load::Latency { .. } => "p2c_latency",
        }
    }

    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker> {
        Box::new(PowerOfTwoChoicesPicker {
            weighted: weights_differ(&endpoints),
            endpoints,
            load: self.load,
        })
    }
}

struct PowerOfTwoChoicesPicker {
    endpoints: Arc<[Endpoint]>,
    load: Load,
    /// Whether the weights differ (else the loads are compared as they
    /// are: the same order).
    weighted: bool,
}

impl Picker for PowerOfTwoChoicesPicker {
    fn pick(&self, _key: Option<u64>) -> Option<&Endpoint> {
        match (self.load, self.weighted) {
            (Load::InFlight, false) => best_of(&self.endpoints, 2, Endpoint::in_flight),
            (Load::InFlight, true) => best_of(&self.endpoints, 2, in_flight_per_weight),
            (Load::Latency { default }, false) => {
                best_of(&self.endpoints, 2, |e| e.latency_load(default))
            }
            (Load::Latency { default }, true) => best_of(&self.endpoints, 2, |e| {
                per_weight(e.latency_load(default), e)
            }),
        }
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl fmt::Debug for PowerOfTwoChoicesPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerOfTwoChoicesPicker")
            .field("endpoints", &self.endpoints.len())
            .field("load", &self.load)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::balancer::tests::{counts, set};

    #[test]
    fn a_heavily_loaded_endpoint_is_never_picked() {
        fastrand::seed(1);
        let endpoints = set(&[1; 8]);
        let _calls: Vec<_> = (0..100).map(|_| endpoints[3].start_call()).collect();
        let picker = PowerOfTwoChoices::by_in_flight().picker(endpoints);
        let shares = counts(picker.as_ref(), 10_000);
        assert_eq!(shares[3], 0, "{shares:?}");
    }

    #[test]
    fn a_slow_endpoint_is_picked_less() {
        fastrand::seed(2);
        let endpoints = set(&[1; 4]);
        for (i, e) in endpoints.iter().enumerate() {
            let ms = if i == 0 { 200 } else { 10 };
            e.record_latency(Duration::from_millis(ms));
        }
        let picker = PowerOfTwoChoices::by_latency().picker(endpoints);
        let shares = counts(picker.as_ref(), 10_000);
        // It wins only against itself, which two distinct draws never are.
        assert_eq!(shares[0], 0, "{shares:?}");
        assert_eq!(PowerOfTwoChoices::by_latency().name(), "p2c_latency");
    }

    #[test]
    fn endpoints_without_samples_count_as_the_default() {
        fastrand::seed(4);
        let endpoints = set(&[1; 2]);
        endpoints[0].record_latency(Duration::from_millis(50));
        let optimistic = PowerOfTwoChoices::by_latency_or(Duration::from_millis(1));
        let pessimistic = PowerOfTwoChoices::by_latency_or(Duration::from_secs(1));
        assert_eq!(
            optimistic
                .picker(endpoints.clone())
                .pick(None)
                .unwrap()
                .id(),
            "e1"
        );
        assert_eq!(pessimistic.picker(endpoints).pick(None).unwrap().id(), "e0");
    }

    #[test]
    fn an_unavailable_candidate_is_replaced() {
        fastrand::seed(6);
        let endpoints = set(&[1; 6]);
        endpoints[0].set_healthy(false);
        let _calls: Vec<_> = (0..5).map(|_| endpoints[1].start_call()).collect();
        let picker = PowerOfTwoChoices::by_in_flight().picker(endpoints);
        let shares = counts(picker.as_ref(), 10_000);
        assert_eq!(shares[0], 0, "{shares:?}");
        assert!(shares[1] < 100, "{shares:?}");
    }
}
