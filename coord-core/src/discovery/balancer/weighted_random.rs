//! Weighted random: at random, in proportion to the weights (Vose's alias
//! method).

use std::fmt;
use std::sync::Arc;

use super::available::{DRAWS, pick_weight, random_available};
use super::{Balancer, Picker};
use crate::discovery::Endpoint;

/// Picks an endpoint at random with a probability proportional to its
/// weight, in O(1): one uniform column of an alias table (Vose's method),
/// then one uniform draw deciding between the column's own endpoint and its
/// alias. The table is built in integers, so the probabilities are exact.
///
/// A draw that hits an unavailable endpoint is drawn again, four draws in
/// all; then the pick falls back to [`Random`](super::Random)'s, ignoring
/// weights.
///
/// ```
/// use std::sync::Arc;
/// use coord_core::discovery::balancer::{Balancer, WeightedRandom};
/// use coord_core::discovery::{Endpoint, ServiceInstance};
///
/// let endpoints: Arc<[Endpoint]> = [("big", 900), ("small", 100)]
///     .iter()
///     .map(|(id, w)| Endpoint::new(ServiceInstance::new("s", *id, "10.0.0.1:80").weight(*w)))
///     .collect();
/// let picker = WeightedRandom.picker(endpoints);
/// let big = (0..1000).filter(|_| picker.pick(None).unwrap().id() == "big").count();
/// assert!(big > 800);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRandom;

impl Balancer for WeightedRandom {
    fn name(&self) -> &'static str {
        "weighted_random"
    }

    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker> {
        let (columns, total) = alias_table(&endpoints);
        Box::new(WeightedRandomPicker {
            endpoints,
            columns: columns.into(),
            total,
        })
    }
}

/// One column of the alias table: a draw `u` uniform in `0..total` picks
/// `own` when `u < keep`, else `alias`.
#[derive(Clone, Copy)]
struct Column {
    keep: u64,
    own: u32,
    alias: u32,
}

/// Vose's alias table over the `Up` endpoints, in integers: each of the
/// `m` columns holds `total` (the sum of the weights), and endpoint `i`
/// holds `weight_i × m` of it in all, so picking a column uniformly and
/// then a unit uniformly picks `i` with probability `weight_i / total`.
fn alias_table(endpoints: &[Endpoint]) -> (Vec<Column>, u64) {
    let members: Vec<(u32, u64)> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u32, u64::from(pick_weight(e))))
        .filter(|&(_, w)| w > 0)
        .collect();
    let m = members.len() as u64;
    let total: u64 = members.iter().map(|&(_, w)| w).sum();
    let mut columns: Vec<Column> = Vec::with_capacity(members.len());
    let mut left: Vec<u64> = Vec::with_capacity(members.len());
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (c, &(own, w)) in members.iter().enumerate() {
        columns.push(Column {
            keep: total,
            own,
            alias: own,
        });
        left.push(w * m);
        if w * m < total {
            small.push(c);
        } else {
            large.push(c);
        }
    }
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        columns[s].keep = left[s];
        columns[s].alias = columns[l].own;
        left[l] -= total - left[s];
        if left[l] < total {
            large.pop();
            small.push(l);
        }
    }
    // With exact arithmetic whatever is left holds exactly `total` (keep as set).
    (columns, total)
}

struct WeightedRandomPicker {
    endpoints: Arc<[Endpoint]>,
    columns: Box<[Column]>,
    /// The sum of the weights of the `Up` endpoints.
    total: u64,
}

impl Picker for WeightedRandomPicker {
    fn pick(&self, _key: Option<u64>) -> Option<&Endpoint> {
        if self.columns.is_empty() {
            return None;
        }
        for _ in 0..DRAWS {
            let column = self.columns[fastrand::usize(..self.columns.len())];
            let index = if fastrand::u64(..self.total) < column.keep {
                column.own
            } else {
                column.alias
            } as usize;
            let endpoint = &self.endpoints[index];
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

impl fmt::Debug for WeightedRandomPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightedRandomPicker")
            .field("endpoints", &self.endpoints.len())
            .field("total_weight", &self.total)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::discovery::balancer::tests::{assert_shares, counts, set};

    proptest! {
        #[test]
        fn the_table_holds_each_weight_exactly(weights in prop::collection::vec(1u32..=10_000, 1..50)) {
            let endpoints = set(&weights);
            let (columns, total) = alias_table(&endpoints);
            let m = weights.len() as u64;
            let mut held = vec![0u64; weights.len()];
            for c in &columns {
                prop_assert!(c.keep <= total);
                held[c.own as usize] += c.keep;
                held[c.alias as usize] += total - c.keep;
            }
            prop_assert_eq!(held, weights.iter().map(|&w| u64::from(w) * m).collect::<Vec<_>>());
        }
    }

    #[test]
    fn shares_follow_the_weights() {
        fastrand::seed(11);
        let weights = [100, 200, 300, 400, 1000];
        let picker = WeightedRandom.picker(set(&weights));
        assert_shares(&counts(picker.as_ref(), 100_000), &weights, 0.03);
    }

    #[test]
    fn an_unavailable_endpoint_is_skipped() {
        fastrand::seed(11);
        let endpoints = set(&[1000, 1, 1]);
        endpoints[0].set_healthy(false);
        let picker = WeightedRandom.picker(endpoints);
        let shares = counts(picker.as_ref(), 1000);
        assert_eq!(shares[0], 0);
        assert_eq!(shares[1] + shares[2], 1000);
    }
}
