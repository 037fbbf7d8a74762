//! Consistent hashing: the owner of the request's key on a hash ring that
//! every process builds the same.

use std::fmt;
use std::sync::Arc;

use super::available::{pick_weight, random_available};
use super::hash::ring_points;
use super::{Balancer, Picker};
use crate::discovery::Endpoint;

/// Ring points per endpoint of average weight, by default.
const DEFAULT_REPLICAS: u32 = 160;

/// The most ring points per endpoint of average weight.
const MAX_REPLICAS: u32 = 4096;

/// The most points on a ring (48 MiB); past it, every endpoint gets
/// proportionally fewer.
const MAX_RING_POINTS: u64 = 1 << 22;

/// Ring entries walked before checking that some endpoint is available at
/// all (so a ring with none available answers `None` quickly).
const SHORT_WALK: usize = 64;

/// Sends each key to the same endpoint, in every process, and moves few keys
/// when the set changes: adding one endpoint to `n` moves about `1/(n+1)` of
/// the keys, all to the new endpoint.
///
/// Each `Up` endpoint owns points on a ring of `u64`: point `k` of the
/// instance with id `id` is [`hash_key`](super::hash_key) of the id's bytes
/// followed by `k` as 4 little-endian bytes. An endpoint gets `replicas` points (160 by
/// default) scaled by its weight relative to the mean weight, at least one:
/// with equal weights, adding or removing an endpoint leaves the others'
/// points alone; with unequal weights, a change of the mean moves a few more
/// keys. The ring depends only on the ids and weights, not on the order of
/// the set.
///
/// A key (hashed with [`hash_key`](super::hash_key)) belongs to the first
/// point at or after it, wrapping around; when that point's endpoint is
/// unavailable the key goes to the next point of an available one, so only
/// the keys of unavailable endpoints move, and they come back when it
/// recovers. A pick without a key is [`Random`](super::Random)'s.
///
/// ```
/// use std::sync::Arc;
/// use coord_core::discovery::balancer::{Balancer, ConsistentHash, hash_key};
/// use coord_core::discovery::{Endpoint, ServiceInstance};
///
/// let endpoints: Arc<[Endpoint]> = ["a", "b", "c"]
///     .iter()
///     .map(|id| Endpoint::new(ServiceInstance::new("s", *id, "10.0.0.1:80")))
///     .collect();
/// let picker = ConsistentHash::default().picker(endpoints.clone());
/// let key = Some(hash_key(b"session-17"));
/// let owner = picker.pick(key).unwrap().id().to_owned();
///
/// // Another process, another order: the same owner.
/// let reversed: Arc<[Endpoint]> = endpoints.iter().rev().cloned().collect();
/// let elsewhere = ConsistentHash::default().picker(reversed);
/// assert_eq!(elsewhere.pick(key).unwrap().id(), owner);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConsistentHash {
    replicas: u32,
}

impl ConsistentHash {
    /// `replicas` ring points per endpoint of average weight (1 to 4096).
    /// More points balance the keys more evenly (the share of an endpoint
    /// varies by about `1/√replicas`) at the cost of a larger ring.
    pub fn with_replicas(replicas: u32) -> ConsistentHash {
        ConsistentHash {
            replicas: replicas.clamp(1, MAX_REPLICAS),
        }
    }

    /// Ring points per endpoint of average weight.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }
}

impl Default for ConsistentHash {
    /// 160 points per endpoint of average weight.
    fn default() -> ConsistentHash {
        ConsistentHash::with_replicas(DEFAULT_REPLICAS)
    }
}

impl Balancer for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker> {
        let (points, owners) = ring(&endpoints, self.replicas);
        Box::new(ConsistentHashPicker {
            endpoints,
            points: points.into(),
            owners: owners.into(),
        })
    }
}

/// The ring: sorted points, and the endpoint index owning each.
fn ring(endpoints: &[Endpoint], replicas: u32) -> (Vec<u64>, Vec<u32>) {
    let weights: Vec<u64> = endpoints
        .iter()
        .map(|e| u64::from(pick_weight(e)))
        .collect();
    let up = weights.iter().filter(|&&w| w > 0).count() as u64;
    let total: u64 = weights.iter().sum();
    // replicas × weight / mean weight, rounded, at least 1 (in u128: an
    // unvalidated weight may be as large as u32::MAX).
    let (up, total) = (u128::from(up), u128::from(total));
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|&w| match w {
            0 => 0,
            w => ((u128::from(replicas) * u128::from(w) * up + total / 2) / total).max(1) as u64,
        })
        .collect();
    let all: u64 = counts.iter().sum();
    if all > MAX_RING_POINTS {
        for c in counts.iter_mut().filter(|c| **c > 0) {
            *c = (u128::from(*c) * u128::from(MAX_RING_POINTS) / u128::from(all)).max(1) as u64;
        }
    }
    let mut ring: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
    for (i, (e, &count)) in endpoints.iter().zip(&counts).enumerate() {
        ring.extend(ring_points(e.id(), count as u32).map(|p| (p, i as u32)));
    }
    // Ties (a 64-bit collision, or a duplicated id) go by id, then address,
    // so that the order of the set never matters.
    ring.sort_unstable_by(|(p, a), (q, b)| {
        let (a, b) = (&endpoints[*a as usize], &endpoints[*b as usize]);
        p.cmp(q)
            .then_with(|| a.id().cmp(b.id()))
            .then_with(|| a.addr().cmp(b.addr()))
    });
    ring.into_iter().unzip()
}

struct ConsistentHashPicker {
    endpoints: Arc<[Endpoint]>,
    points: Box<[u64]>,
    owners: Box<[u32]>,
}

impl ConsistentHashPicker {
    /// The endpoint at ring entry `at` when it is available.
    #[inline]
    fn available(&self, at: usize) -> Option<&Endpoint> {
        let endpoint = &self.endpoints[self.owners[at] as usize];
        endpoint.is_available().then_some(endpoint)
    }
}

impl Picker for ConsistentHashPicker {
    fn pick(&self, key: Option<u64>) -> Option<&Endpoint> {
        let Some(key) = key else {
            return random_available(&self.endpoints);
        };
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|&p| p < key) % len;
        let walk =
            |from: usize, to: usize| (from..to).find_map(|s| self.available((start + s) % len));
        if let Some(endpoint) = walk(0, SHORT_WALK.min(len)) {
            return Some(endpoint);
        }
        if !self.endpoints.iter().any(Endpoint::is_available) {
            return None;
        }
        walk(SHORT_WALK.min(len), len)
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl fmt::Debug for ConsistentHashPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsistentHashPicker")
            .field("endpoints", &self.endpoints.len())
            .field("ring_points", &self.points.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::discovery::ServiceInstance;
    use crate::discovery::balancer::hash_key;
    use crate::discovery::balancer::tests::set;

    const KEYS: u64 = 10_000;

    fn owners(picker: &dyn Picker) -> Vec<String> {
        (0..KEYS)
            .map(|k| {
                picker
                    .pick(Some(hash_key(&k.to_le_bytes())))
                    .unwrap()
                    .id()
                    .to_owned()
            })
            .collect()
    }

    fn named(ids: impl IntoIterator<Item = String>) -> Arc<[Endpoint]> {
        ids.into_iter()
            .map(|id| Endpoint::new(ServiceInstance::new("s", id, "10.0.0.1:80")))
            .collect()
    }

    #[test]
    fn the_same_key_goes_to_the_same_endpoint() {
        let picker = ConsistentHash::default().picker(set(&[1; 20]));
        for k in 0..100u64 {
            let key = Some(hash_key(&k.to_le_bytes()));
            let first = picker.pick(key).unwrap();
            for _ in 0..5 {
                assert!(picker.pick(key).unwrap().same(first));
            }
        }
    }

    #[test]
    fn the_ring_does_not_depend_on_the_order_of_the_set() {
        let endpoints = set(&[100, 200, 50, 100, 300, 1, 100]);
        let mut shuffled: Vec<Endpoint> = endpoints.to_vec();
        fastrand::shuffle(&mut shuffled);
        let a = ConsistentHash::default().picker(endpoints);
        let b = ConsistentHash::default().picker(shuffled.into());
        assert_eq!(owners(a.as_ref()), owners(b.as_ref()));
    }

    #[test]
    fn keys_spread_over_the_endpoints_by_weight() {
        let endpoints = set(&[100, 100, 200, 400]);
        let picker = ConsistentHash::default().picker(endpoints);
        let owners = owners(picker.as_ref());
        for (id, expected) in [("e0", 0.125), ("e1", 0.125), ("e2", 0.25), ("e3", 0.5)] {
            let share = owners.iter().filter(|o| *o == id).count() as f64 / KEYS as f64;
            assert!((share - expected).abs() < 0.3 * expected, "{id}: {share}");
        }
    }

    fn moved_when_adding_one(prefix: &str, n: usize) -> (usize, Vec<String>, Vec<String>) {
        let ids = |count: usize| (0..count).map(move |i| format!("{prefix}-{i}"));
        let before = owners(ConsistentHash::default().picker(named(ids(n))).as_ref());
        let after = owners(ConsistentHash::default().picker(named(ids(n + 1))).as_ref());
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        (moved, before, after)
    }

    #[test]
    fn adding_one_endpoint_moves_about_its_share_of_keys() {
        // Short ids too: "a-1", "a-2", …
        for prefix in ["10.1.2.3:8080", "a", "billing-7f9c"] {
            for n in [10, 50] {
                let (moved, before, after) = moved_when_adding_one(prefix, n);
                let bound = 1.5 * KEYS as f64 / (n + 1) as f64;
                assert!(
                    (moved as f64) <= bound,
                    "{prefix}, n = {n}: {moved} moved, bound {bound}"
                );
                // Every key that moved went to the new endpoint.
                let new = format!("{prefix}-{n}");
                assert!(before.iter().zip(&after).all(|(b, a)| b == a || *a == new));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn adding_one_endpoint_moves_few_keys_whatever_the_ids(prefix in "[a-z0-9.-]{1,20}", n in 5usize..40) {
            let (moved, _, _) = moved_when_adding_one(&prefix, n);
            prop_assert!(moved as f64 <= 1.5 * KEYS as f64 / (n + 1) as f64, "{} moved", moved);
        }
    }

    #[test]
    fn an_unavailable_owners_keys_go_elsewhere_and_others_stay() {
        let endpoints = set(&[1; 10]);
        let picker = ConsistentHash::default().picker(endpoints.clone());
        let before = owners(picker.as_ref());
        endpoints[4].set_healthy(false);
        let during = owners(picker.as_ref());
        for (b, d) in before.iter().zip(&during) {
            if b == "e4" {
                assert_ne!(d, "e4");
            } else {
                assert_eq!(b, d);
            }
        }
        endpoints[4].set_healthy(true);
        assert_eq!(owners(picker.as_ref()), before);
    }

    #[test]
    fn without_a_key_it_picks_at_random() {
        let picker = ConsistentHash::default().picker(set(&[1; 4]));
        let seen: std::collections::HashSet<String> = (0..200)
            .map(|_| picker.pick(None).unwrap().id().to_owned())
            .collect();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn a_ring_with_few_available_endpoints_still_finds_one() {
        let endpoints = set(&[1; 200]);
        for e in &endpoints[1..] {
            e.set_healthy(false);
        }
        let picker = ConsistentHash::default().picker(endpoints.clone());
        for k in 0..100u64 {
            assert_eq!(
                picker
                    .pick(Some(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                    .unwrap()
                    .id(),
                "e0"
            );
        }
        endpoints[0].set_healthy(false);
        assert!(picker.pick(Some(1)).is_none());
    }
}
