//! Least requests: the fewest calls in flight among a few random candidates.

use std::fmt;
use std::sync::Arc;

use super::available::{best_of, in_flight_per_weight, weights_differ};
use super::{Balancer, Picker};
use crate::discovery::Endpoint;

/// Picks, among `choices` available endpoints drawn at random, the one with
/// the fewest calls in flight ([`Endpoint::in_flight`]) per unit of weight,
/// as Envoy's `LEAST_REQUEST` does: the load compared is (in flight + 1) /
/// weight, so an endpoint of weight 3 is given about three times the calls
/// in flight of one of weight 1, and with equal weights the fewest calls in
/// flight win. When the set has no more endpoints than `choices`, it scans
/// them all.
///
/// Two choices by default, Envoy's default too: going from one random
/// candidate to two shrinks the worst endpoint's excess load exponentially
/// (the "power of two choices"), while more candidates only improve it by a
/// constant factor, cost a draw each, and make many clients that see the
/// same counts herd onto the same few endpoints.
///
/// Each candidate after the first is drawn among all but the best so far,
/// so two candidates are always two distinct endpoints; ties go to the
/// earlier draw.
///
/// ```
/// use std::sync::Arc;
/// use coord_core::discovery::balancer::{Balancer, LeastRequests};
/// use coord_core::discovery::{Endpoint, ServiceInstance};
///
/// let endpoints: Arc<[Endpoint]> = ["busy", "idle"]
///     .iter()
///     .map(|id| Endpoint::new(ServiceInstance::new("s", *id, "10.0.0.1:80")))
///     .collect();
/// let _call = endpoints[0].start_call();
/// let picker = LeastRequests::default().picker(endpoints);
/// assert_eq!(picker.pick(None).unwrap().id(), "idle");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct LeastRequests {
    choices: usize,
}

impl LeastRequests {
    /// Compares `choices` random candidates (at least 1; 1 is [`Random`](super::Random)).
    pub fn with_choices(choices: usize) -> LeastRequests {
        LeastRequests {
            choices: choices.max(1),
        }
    }

    /// How many random candidates a pick compares.
    pub fn choices(&self) -> usize {
        self.choices
    }
}

impl Default for LeastRequests {
    /// Two choices.
    fn default() -> LeastRequests {
        LeastRequests::with_choices(2)
    }
}

impl Balancer for LeastRequests {
    fn name(&self) -> &'static str {
        "least_requests"
    }

    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker> {
        Box::new(LeastRequestsPicker {
            weighted: weights_differ(&endpoints),
            endpoints,
            choices: self.choices,
        })
    }
}

struct LeastRequestsPicker {
    endpoints: Arc<[Endpoint]>,
    choices: usize,
    /// Whether the weights differ (else the calls in flight are compared
    /// as they are: the same order).
    weighted: bool,
}

impl Picker for LeastRequestsPicker {
    fn pick(&self, _key: Option<u64>) -> Option<&Endpoint> {
        if self.weighted {
            best_of(&self.endpoints, self.choices, in_flight_per_weight)
        } else {
            best_of(&self.endpoints, self.choices, Endpoint::in_flight)
        }
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl fmt::Debug for LeastRequestsPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeastRequestsPicker")
            .field("endpoints", &self.endpoints.len())
            .field("choices", &self.choices)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::balancer::tests::{counts, set};

    #[test]
    fn fewer_calls_in_flight_win() {
        fastrand::seed(3);
        let endpoints = set(&[1; 10]);
        // Endpoint i has i calls in flight.
        let _calls: Vec<_> = endpoints
            .iter()
            .enumerate()
            .flat_map(|(i, e)| (0..i).map(|_| e.start_call()))
            .collect();
        let picker = LeastRequests::default().picker(endpoints);
        let shares = counts(picker.as_ref(), 10_000);
        // With two distinct candidates, endpoint i wins when the other is
        // one of the 9 - i busier ones: 2 (9 - i) / 90 of the picks.
        for (i, share) in shares.iter().enumerate() {
            let expected = 10_000.0 * 2.0 * (9 - i) as f64 / 90.0;
            assert!((*share as f64 - expected).abs() < 150.0, "{i}: {shares:?}");
        }
    }

    #[test]
    fn a_small_set_is_scanned_whole() {
        let endpoints = set(&[1; 3]);
        let _a = endpoints[0].start_call();
        let _b = endpoints[2].start_call();
        let picker = LeastRequests::with_choices(3).picker(endpoints);
        for _ in 0..100 {
            assert_eq!(picker.pick(None).unwrap().id(), "e1");
        }
    }

    #[test]
    fn more_choices_find_the_idle_one_more_often() {
        fastrand::seed(5);
        let endpoints = set(&[1; 20]);
        let _calls: Vec<_> = endpoints[1..].iter().map(|e| e.start_call()).collect();
        let two = counts(
            LeastRequests::default().picker(endpoints.clone()).as_ref(),
            10_000,
        )[0];
        let five = counts(
            LeastRequests::with_choices(5).picker(endpoints).as_ref(),
            10_000,
        )[0];
        assert!(five > two, "{five} <= {two}");
    }
}
