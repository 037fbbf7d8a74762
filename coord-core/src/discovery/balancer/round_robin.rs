//! Round-robin: each endpoint in turn.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::available::scan_from;
use super::{Balancer, Picker};
use crate::discovery::Endpoint;

/// Picks each endpoint in turn, ignoring weights.
///
/// One atomic counter per picker, started at a random position so that
/// clients that rebuild their pickers at the same moment do not all begin
/// with the same endpoint. The turn of an unavailable endpoint goes to the
/// next available one.
///
/// ```
/// use std::sync::Arc;
/// use coord_core::discovery::balancer::{Balancer, RoundRobin};
/// use coord_core::discovery::{Endpoint, ServiceInstance};
///
/// let endpoints: Arc<[Endpoint]> = ["a", "b"]
///     .iter()
///     .map(|id| Endpoint::new(ServiceInstance::new("s", *id, "10.0.0.1:80")))
///     .collect();
/// let picker = RoundRobin.picker(endpoints);
/// let first = picker.pick(None).unwrap().id().to_owned();
/// let second = picker.pick(None).unwrap().id();
/// assert_ne!(first, second);
/// assert_eq!(picker.pick(None).unwrap().id(), first);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl Balancer for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker> {
        let start = fastrand::usize(..endpoints.len().max(1));
        Box::new(RoundRobinPicker {
            endpoints,
            next: AtomicUsize::new(start),
        })
    }
}

struct RoundRobinPicker {
    endpoints: Arc<[Endpoint]>,
    next: AtomicUsize,
}

impl Picker for RoundRobinPicker {
    fn pick(&self, _key: Option<u64>) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % n;
        scan_from(&self.endpoints, turn)
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl fmt::Debug for RoundRobinPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoundRobinPicker")
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::balancer::tests::{counts, set};

    #[test]
    fn every_endpoint_gets_the_same_share() {
        let endpoints = set(&[1, 5, 100, 7]);
        let picker = RoundRobin.picker(endpoints.clone());
        let shares = counts(picker.as_ref(), 4 * 250);
        assert_eq!(shares, vec![250; 4]);
    }

    #[test]
    fn unavailable_endpoints_are_skipped() {
        let endpoints = set(&[1; 5]);
        endpoints[1].set_healthy(false);
        endpoints[4].set_healthy(false);
        let picker = RoundRobin.picker(endpoints.clone());
        let shares = counts(picker.as_ref(), 1000);
        assert_eq!(shares[1], 0);
        assert_eq!(shares[4], 0);
        assert_eq!(shares.iter().sum::<usize>(), 1000);
    }
}
