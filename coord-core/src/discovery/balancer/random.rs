//! Random: uniformly at random.

use std::fmt;
use std::sync::Arc;

use super::available::random_available;
use super::{Balancer, Picker};
use crate::discovery::Endpoint;

/// Picks an endpoint uniformly at random, ignoring weights, from the
/// thread's random generator (no shared state between threads).
///
/// A draw that hits an unavailable endpoint is drawn again, four draws in
/// all; then the pick takes the first available endpoint after a random
/// position.
///
/// ```
/// use std::sync::Arc;
/// use coord_core::discovery::balancer::{Balancer, Random};
/// use coord_core::discovery::{Endpoint, ServiceInstance};
///
/// let endpoints: Arc<[Endpoint]> = ["a", "b"]
///     .iter()
///     .map(|id| Endpoint::new(ServiceInstance::new("s", *id, "10.0.0.1:80")))
///     .collect();
/// endpoints[0].set_healthy(false);
/// let picker = Random.picker(endpoints);
/// assert_eq!(picker.pick(None).unwrap().id(), "b");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Balancer for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn picker(&self, endpoints: Arc<[Endpoint]>) -> Box<dyn Picker> {
        Box::new(RandomPicker { endpoints })
    }
}

struct RandomPicker {
    endpoints: Arc<[Endpoint]>,
}

impl Picker for RandomPicker {
    fn pick(&self, _key: Option<u64>) -> Option<&Endpoint> {
        random_available(&self.endpoints)
    }

    fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl fmt::Debug for RandomPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomPicker")
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::balancer::tests::{assert_shares, counts, set};

    #[test]
    fn shares_are_even() {
        fastrand::seed(7);
        let picker = Random.picker(set(&[1, 10, 100, 1000]));
        assert_shares(&counts(picker.as_ref(), 100_000), &[1, 1, 1, 1], 0.03);
    }

    #[test]
    fn unavailable_endpoints_are_never_picked() {
        fastrand::seed(7);
        let endpoints = set(&[1; 10]);
        for e in &endpoints[..9] {
            e.set_healthy(false);
        }
        let picker = Random.picker(endpoints);
        assert_eq!(counts(picker.as_ref(), 1000)[9], 1000);
    }
}
