//! Load balancers: pick one endpoint of a set, without touching the network.
//!
//! A [`Balancer`] is a policy, chosen once per service. Each time the set of
//! endpoints changes, [`Balancer::picker`] precomputes a [`Picker`] for the
//! new set (a schedule, an alias table, a hash ring), and every request asks
//! that picker for an endpoint. [`Picker::pick`] allocates nothing and takes
//! no lock: it reads the endpoints' atomics, draws from the thread's random
//! generator and, for the round-robins, bumps one atomic counter.
//!
//! | balancer | picks | cost of a pick |
//! | --- | --- | --- |
//! | [`RoundRobin`] | each endpoint in turn | O(1) |
//! | [`WeightedRoundRobin`] | in turn, in proportion to the weights (nginx's smooth order) | O(1), O(log n) for huge cycles |
//! | [`Random`] | uniformly at random | O(1) |
//! | [`WeightedRandom`] | at random, in proportion to the weights | O(1) (alias method) |
//! | [`LeastRequests`] | the fewest calls in flight per unit of weight among a few random candidates | O(choices) |
//! | [`PowerOfTwoChoices`] | the less loaded of two random candidates per unit of weight, by calls in flight or by latency | O(1) |
//! | [`ConsistentHash`] | the owner of the request's key on a hash ring, the same in every process | O(log n) |
//!
//! Every picker skips endpoints that are not
//! [available](crate::discovery::Endpoint::is_available) and returns `None`
//! when none is (or the set is empty). Instances that are not `Up` can never
//! become available, so the weighted pickers leave them out of their tables.
//!
//! ```
//! use std::sync::Arc;
//! use coord_core::discovery::balancer::{Balancer, ConsistentHash, RoundRobin, hash_key};
//! use coord_core::discovery::{Endpoint, ServiceInstance};
//!
//! let endpoints: Arc<[Endpoint]> = (1..=3)
//!     .map(|i| Endpoint::new(ServiceInstance::new("billing", format!("b-{i}"), format!("10.0.0.{i}:80"))))
//!     .collect();
//!
//! let picker = RoundRobin.picker(endpoints.clone());
//! let first = picker.pick(None).unwrap();
//! let second = picker.pick(None).unwrap();
//! assert!(!first.same(second));
//!
//! // Requests with the same key go to the same endpoint.
//! let sticky = ConsistentHash::default().picker(endpoints);
//! let key = Some(hash_key(b"customer-42"));
//! assert!(sticky.pick(key).unwrap().same(sticky.pick(key).unwrap()));
//! ```

use std::fmt;
use std::sync::Arc;

use super::endpoint::Endpoint;

mod available;
mod consistent_hash;
mod hash;
mod least_requests;
mod p2c;
mod random;
mod round_robin;
mod smooth;
mod weighted_random;
mod weighted_round_robin;

pub use consistent_hash::ConsistentHash;
pub use hash::hash_key;
pub use least_requests::LeastRequests;
pub use p2c::PowerOfTwoChoices;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_random::WeightedRandom;
pub use weighted_round_robin::WeightedRoundRobin;

/// A load-balancing policy: builds a [`Picker`] for each set of endpoints.
pub trait Balancer: Send + Sync + fmt::Debug + 'static {
    /// Short name for metrics and logs (`"round_robin"`, `"consistent_hash"`, …).
    fn name(&self) -> &'static str;

    /// Builds the picking state for one set of endpoints. Called when the
    /// set changes, off the request path, so everything a pick needs is
    /// precomputed here.
    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker>;
}

/// The picking state of a [`Balancer`] for one set of endpoints.
pub trait Picker: Send + Sync + fmt::Debug {
    /// An [available](Endpoint::is_available) endpoint, or `None` when none
    /// is. `key` is the request's sticky key hashed with [`hash_key`]; only
    /// [`ConsistentHash`] reads it (and picks like [`Random`] without one).
    ///
    /// Runs on every request: implementations must not allocate nor take a
    /// lock.
    fn pick(&self, key: Option<u64>) -> Option<&Endpoint>;

    /// The set it picks from.
    fn endpoints(&self) -> &[Endpoint];
}

#[cfg(test)]
mod tests;
