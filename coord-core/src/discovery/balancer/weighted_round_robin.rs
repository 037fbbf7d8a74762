//! Weighted round-robin: each endpoint in turn, as often as its weight says,
//! in nginx's smooth order.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::available::{DRAWS, pick_weight, random_available};
use super::smooth::{MAX_BUILD_WORK, MAX_SCHEDULE, Spread, gcd, nginx_schedule};
use super::{Balancer, Picker};
use crate::discovery::Endpoint;

/// Picks endpoints in turn in proportion to their weights, in nginx's smooth
/// order: with weights 5, 1 and 1 a cycle is `a a b a c a a`, not
/// `a a a a a b c`.
///
/// The weights are divided by their greatest common divisor; a cycle is as
/// many picks as their sum, and over each cycle every `Up` endpoint is picked
/// exactly as many times as its reduced weight. The picker computes the
/// cycle once, so a pick is one atomic increment and one table read. A
/// cycle longer than 2²⁰ picks (or too costly to compute: more than 2²⁴
/// steps × distinct weights) is not stored; the picker then visits the
/// endpoints' weight ranges with a golden-ratio stride, still exactly in
/// proportion over each cycle but less evenly spread, at O(log n) a pick.
///
/// Each picker starts its cycle at a random step, so that clients that
/// rebuild their pickers together do not send their first requests to the
/// same endpoint. The turn of an unavailable endpoint goes to the next
/// available one of the following three in the cycle, else to a random
/// available endpoint.
///
/// ```
/// use std::sync::Arc;
/// use coord_core::discovery::balancer::{Balancer, WeightedRoundRobin};
/// use coord_core::discovery::{Endpoint, ServiceInstance};
///
/// let endpoints: Arc<[Endpoint]> = [("a", 300), ("b", 100)]
///     .iter()
///     .map(|(id, w)| Endpoint::new(ServiceInstance::new("s", *id, "10.0.0.1:80").weight(*w)))
///     .collect();
/// let picker = WeightedRoundRobin.picker(endpoints);
/// // A cycle is 3 + 1 picks: "a" three times, "b" once.
/// let cycle: Vec<&str> = (0..4).map(|_| picker.pick(None).unwrap().id()).collect();
/// assert_eq!(cycle.iter().filter(|id| **id == "a").count(), 3);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRoundRobin;

impl Balancer for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker> {
        let mut members: Vec<(u32, u64)> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u32, u64::from(pick_weight(e))))
            .filter(|&(_, w)| w > 0)
            .collect();
        let divisor = members.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        for (_, w) in &mut members {
            *w /= divisor;
        }
        let cycle: u64 = members.iter().map(|&(_, w)| w).sum();
        let mut weights: Vec<u64> = members.iter().map(|&(_, w)| w).collect();
        weights.sort_unstable();
        weights.dedup();
        let order = if cycle <= MAX_SCHEDULE
            && cycle.saturating_mul(weights.len() as u64) <= MAX_BUILD_WORK
        {
            Order::Schedule(nginx_schedule(&members).into())
        } else {
            Order::Spread(Spread::new(&members))
        };
        Box::new(WeightedRoundRobinPicker {
            next: AtomicU64::new(fastrand::u64(..cycle.max(1))),
            endpoints,
            cycle,
            order,
        })
    }
}

struct WeightedRoundRobinPicker {
    endpoints: Arc<[Endpoint]>,
    /// The next step; taken modulo `cycle`.
    next: AtomicU64,
    /// Picks in a cycle; 0 when no endpoint is `Up`.
    cycle: u64,
    order: Order,
}

enum Order {
    Schedule(Box<[u32]>),
    Spread(Spread),
}

impl WeightedRoundRobinPicker {
    #[inline]
    fn at(&self, step: u64) -> usize {
        (match &self.order {
            Order::Schedule(schedule) => schedule[step as usize],
            Order::Spread(spread) => spread.at(step, self.cycle),
        }) as usize
    }
}

impl Picker for WeightedRoundRobinPicker {
    fn pick(&self, _key: Option<u64>) -> Option<&Endpoint> {
        if self.cycle == 0 {
            return None;
        }
        let step = self.next.fetch_add(1, Ordering::Relaxed) % self.cycle;
        for skip in 0..DRAWS as u64 {
            let endpoint = &self.endpoints[self.at((step + skip) % self.cycle)];
            if endpoint.is_available() {
                return Some(endpoint);
            }
        }
        random_available(&self.endpoints)
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl fmt::Debug for WeightedRoundRobinPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = match self.order {
            Order::Schedule(_) => "schedule",
            Order::Spread(_) => "spread",
        };
        f.debug_struct("WeightedRoundRobinPicker")
            .field("endpoints", &self.endpoints.len())
            .field("cycle", &self.cycle)
            .field("order", &order)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::discovery::balancer::tests::{counts, set};

    proptest! {
        #[test]
        fn a_cycle_gives_every_endpoint_exactly_its_weight(
            weights in prop::collection::vec(1u32..=300, 1..30),
            scale in 1u32..=30,
        ) {
            let weights: Vec<u32> = weights.iter().map(|w| w * scale).collect();
            let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))) as u32;
            let reduced: Vec<usize> = weights.iter().map(|w| (w / divisor) as usize).collect();
            let cycle: usize = reduced.iter().sum();
            let picker = WeightedRoundRobin.picker(set(&weights));
            // Two cycles from wherever the picker starts.
            let shares = counts(picker.as_ref(), 2 * cycle);
            prop_assert_eq!(shares, reduced.iter().map(|w| 2 * w).collect::<Vec<_>>());
        }
    }

    #[test]
    fn long_cycles_are_exact_too() {
        // Coprime weights: a cycle of 1.8 million picks, too long to store.
        let weights: Vec<u32> = (0..200).map(|i| 9000 + i).collect();
        let cycle: usize = weights.iter().map(|&w| w as usize).sum();
        let picker = WeightedRoundRobin.picker(set(&weights));
        assert!(format!("{picker:?}").contains("spread"), "{picker:?}");
        let shares = counts(picker.as_ref(), cycle);
        assert_eq!(
            shares,
            weights.iter().map(|&w| w as usize).collect::<Vec<_>>()
        );
    }

    #[test]
    fn endpoints_that_are_not_up_take_no_turn() {
        use crate::discovery::{InstanceStatus, ServiceInstance};
        let endpoints: Arc<[Endpoint]> = [
            ("a", 2, InstanceStatus::Up),
            ("b", 0, InstanceStatus::Draining),
            ("c", 1, InstanceStatus::Up),
        ]
        .iter()
        .map(|&(id, w, status)| {
            Endpoint::new(
                ServiceInstance::new("s", id, "10.0.0.1:80")
                    .weight(w)
                    .status(status),
            )
        })
        .collect();
        let picker = WeightedRoundRobin.picker(endpoints);
        assert_eq!(counts(picker.as_ref(), 300), vec![200, 0, 100]);
    }

    #[test]
    fn an_unavailable_endpoints_turns_go_to_others() {
        let endpoints = set(&[5, 1, 1]);
        endpoints[0].set_healthy(false);
        let picker = WeightedRoundRobin.picker(endpoints.clone());
        let shares = counts(picker.as_ref(), 700);
        assert_eq!(shares[0], 0);
        assert_eq!(shares[1] + shares[2], 700);
    }
}
