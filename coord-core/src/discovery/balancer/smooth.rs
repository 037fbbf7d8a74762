//! The order of one cycle of weighted round-robin: nginx's smooth order,
//! precomputed, or for cycles too long to store, a golden-ratio spread
//! computed at each pick.

use std::collections::BTreeMap;

/// The longest cycle stored as a schedule (4 MiB of `u32`).
pub(super) const MAX_SCHEDULE: u64 = 1 << 20;

/// The most work spent building a schedule: steps × distinct weights.
pub(super) const MAX_BUILD_WORK: u64 = 1 << 24;

/// One cycle of nginx's smooth weighted round-robin over `members`
/// (`(endpoint index, weight)` in endpoint order, weights ≥ 1): the endpoint
/// index of each step.
///
/// nginx, at each step, adds every member's weight to its current weight,
/// picks the member with the highest current weight (the first one on a
/// tie) and takes the total weight off the winner's current weight. After
/// `total` steps every current weight is back at 0, each member has been
/// picked exactly `weight` times, and in every prefix of `t` steps a member
/// has been picked at most ⌈t × weight / total⌉ times (its current weight
/// never drops to −total).
///
/// Members of equal weight keep their order relative to each other, so
/// they take their turns in index order: a step compares one front member
/// per distinct weight, and costs O(distinct weights), not O(members).
pub(super) fn nginx_schedule(members: &[(u32, u64)]) -> Vec<u32> {
    let total: u64 = members.iter().map(|&(_, w)| w).sum();
    let mut by_weight: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for &(index, weight) in members {
        by_weight.entry(weight).or_default().push(index);
    }
    let mut classes: Vec<Class> = by_weight
        .into_iter()
        .map(|(weight, members)| Class {
            weight,
            members,
            picks: 0,
        })
        .collect();
    let total_i = i128::from(total);
    let mut schedule = Vec::with_capacity(total as usize);
    for step in 1..=total {
        let mut best: Option<(i128, u32, usize)> = None;
        for (c, class) in classes.iter().enumerate() {
            let size = class.members.len() as u64;
            let front = class.members[(class.picks % size) as usize];
            // Picked `picks / size` times so far, like every member of its
            // class from the front on.
            let current =
                i128::from(step * class.weight) - i128::from(class.picks / size) * total_i;
            let better = match best {
                None => true,
                Some((b, index, _)) => current > b || (current == b && front < index),
            };
            if better {
                best = Some((current, front, c));
            }
        }
        let (_, index, c) = best.expect("at least one member");
        classes[c].picks += 1;
        schedule.push(index);
    }
    schedule
}

struct Class {
    weight: u64,
    /// Endpoint indices in increasing order.
    members: Vec<u32>,
    picks: u64,
}

/// A cycle too long to store: step `s` takes slot `s × stride mod total` of
/// the members' consecutive weight ranges. `stride` is coprime with `total`,
/// so a cycle visits every slot once and each member exactly `weight` times;
/// being close to `total / φ`, it spreads each member's visits evenly over
/// the cycle (the golden-ratio sequence has the lowest discrepancy), though
/// not as evenly as nginx's order.
pub(super) struct Spread {
    stride: u64,
    /// Where each member's range ends (exclusive), increasing.
    ends: Box<[u64]>,
    /// The endpoint index of each member.
    members: Box<[u32]>,
}

impl Spread {
    pub(super) fn new(members: &[(u32, u64)]) -> Spread {
        let mut end = 0;
        let ends = members
            .iter()
            .map(|&(_, w)| {
                end += w;
                end
            })
            .collect();
        Spread {
            stride: golden_stride(end),
            ends,
            members: members.iter().map(|&(i, _)| i).collect(),
        }
    }

    /// The endpoint index at `step` (< total) of the cycle.
    #[inline]
    pub(super) fn at(&self, step: u64, total: u64) -> u32 {
        let slot = if total <= u64::from(u32::MAX) {
            step * self.stride % total
        } else {
            (u128::from(step) * u128::from(self.stride) % u128::from(total)) as u64
        };
        self.members[self.ends.partition_point(|&end| end <= slot)]
    }
}

/// The integer nearest to `total / φ` that is coprime with `total`.
fn golden_stride(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let target = (total as f64 * 0.618_033_988_749_895).round() as u64;
    (0..total)
        .flat_map(|d| [target + d, target.wrapping_sub(d)])
        .find(|&s| s >= 1 && s < total && gcd(s, total) == 1)
        .unwrap_or(1)
}

pub(super) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// nginx's loop as written, over every member at each step.
    fn nginx_naive(weights: &[u64]) -> Vec<u32> {
        let total: u64 = weights.iter().sum();
        let mut current = vec![0i128; weights.len()];
        (0..total)
            .map(|_| {
                let mut best = 0;
                for (i, w) in weights.iter().enumerate() {
                    current[i] += i128::from(*w);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= i128::from(total);
                best as u32
            })
            .collect()
    }

    fn members(weights: &[u64]) -> Vec<(u32, u64)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (i as u32, *w))
            .collect()
    }

    #[test]
    fn five_one_one_is_nginx_order() {
        // a, a, b, a, c, a, a as in nginx's commit message.
        assert_eq!(
            nginx_schedule(&members(&[5, 1, 1])),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
    }

    proptest! {
        #[test]
        fn grouping_by_weight_gives_nginx_order(weights in prop::collection::vec(1u64..12, 1..12)) {
            prop_assert_eq!(nginx_schedule(&members(&weights)), nginx_naive(&weights));
        }

        #[test]
        fn nginx_is_exact_and_never_ahead_of_its_share(weights in prop::collection::vec(1u64..50, 1..20)) {
            let total: u64 = weights.iter().sum();
            let schedule = nginx_schedule(&members(&weights));
            let mut picked = vec![0u64; weights.len()];
            for (t, &i) in schedule.iter().enumerate() {
                picked[i as usize] += 1;
                let t = t as u64 + 1;
                for (j, w) in weights.iter().enumerate() {
                    prop_assert!(picked[j] <= (t * w).div_ceil(total), "member {} ahead at step {}", j, t);
                }
            }
            prop_assert_eq!(picked, weights);
        }

        #[test]
        fn a_spread_cycle_is_exact(weights in prop::collection::vec(1u64..10_000, 1..20)) {
            let total: u64 = weights.iter().sum();
            let spread = Spread::new(&members(&weights));
            prop_assert_eq!(gcd(spread.stride, total), 1);
            let mut picked = vec![0u64; weights.len()];
            for step in 0..total {
                picked[spread.at(step, total) as usize] += 1;
            }
            prop_assert_eq!(picked, weights);
        }
    }

    #[test]
    fn a_spread_is_smooth() {
        // Over any prefix, each member stays within a few picks of its share.
        let weights = [1u64, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233];
        let total: u64 = weights.iter().sum();
        let spread = Spread::new(&members(&weights));
        let mut picked = [0u64; 12];
        for step in 0..total {
            picked[spread.at(step, total) as usize] += 1;
            for (j, w) in weights.iter().enumerate() {
                let share = (step + 1) as f64 * *w as f64 / total as f64;
                assert!(
                    (picked[j] as f64 - share).abs() < 4.0,
                    "member {j} at step {step}"
                );
            }
        }
    }

    #[test]
    fn huge_cycles_use_wide_arithmetic() {
        let total = 5 * u64::from(u32::MAX);
        let spread = Spread::new(&members(&[total / 2, total - total / 2]));
        assert_eq!(gcd(spread.stride, total), 1);
        assert!(spread.at(total - 1, total) <= 1);
    }
}
