//! Routing: which endpoints a request may go to (filters, zone and data
//! centre preference, canary split, panic mode) and the precomputed table
//! that makes each pick a few atomic reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::balancer::{Balancer, Picker};
use super::endpoint::Endpoint;
use super::instance::{InstanceStatus, ServiceInstance};

/// A canary release: a share of traffic, and every request carrying a
/// label, goes to the instances of one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// The instances' [`version`](ServiceInstance::version) that gets the canary traffic.
    pub version: String,
    /// The share of unlabelled requests sent to it, in percent (0 to 100).
    pub percent: f64,
    /// Requests carrying this label always go to it.
    pub label: Option<String>,
}

impl Canary {
    /// `percent` % of requests go to instances of `version`.
    pub fn new(version: impl Into<String>, percent: f64) -> Canary {
        Canary {
            version: version.into(),
            percent: if percent.is_finite() {
                percent.clamp(0.0, 100.0)
            } else {
                0.0
            },
            label: None,
        }
    }

    /// Requests carrying `label` (see [`PickOptions::label`]) always go to the canary.
    pub fn label(mut self, label: impl Into<String>) -> Canary {
        self.label = Some(label.into());
        self
    }
}

/// What one request brings to a pick: a sticky key for
/// [`ConsistentHash`](super::balancer::ConsistentHash), a label for canary
/// routing. Borrowed, so building one allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickOptions<'a> {
    key: Option<u64>,
    label: Option<&'a str>,
}

impl<'a> PickOptions<'a> {
    /// No key, no label.
    pub fn new() -> Self {
        Self::default()
    }

    /// The request's sticky key (requests with one key go to one instance
    /// under the consistent-hash balancer).
    pub fn key(mut self, key: &[u8]) -> Self {
        self.key = Some(super::balancer::hash_key(key));
        self
    }

    /// A key already hashed with [`hash_key`](super::balancer::hash_key).
    pub fn hashed_key(mut self, key: u64) -> Self {
        self.key = Some(key);
        self
    }

    /// The request's routing label (matched against [`Canary::label`]).
    pub fn label(mut self, label: &'a str) -> Self {
        self.label = Some(label);
        self
    }
}

/// Which instances routing considers, and how it prefers among them.
#[derive(Debug, Clone)]
pub(crate) struct RoutingPolicy {
    pub(crate) tags: Vec<String>,
    pub(crate) metadata: Vec<(String, String)>,
    pub(crate) zone: Option<String>,
    pub(crate) datacenter: Option<String>,
    /// Available endpoints the local zone (or data centre) needs to be preferred.
    pub(crate) min_local: usize,
    pub(crate) canary: Option<Canary>,
    /// Below this share of available endpoints, pick among all of them,
    /// ignoring health (Envoy's panic threshold).
    pub(crate) panic_below: f64,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy {
            tags: Vec::new(),
            metadata: Vec::new(),
            zone: None,
            datacenter: None,
            min_local: 1,
            canary: None,
            panic_below: 0.5,
        }
    }
}

impl RoutingPolicy {
    /// Whether routing may ever send traffic to `instance`: `Up` and
    /// carrying every required tag and metadata entry.
    pub(crate) fn admits(&self, instance: &ServiceInstance) -> bool {
        instance.status == InstanceStatus::Up
            && self.tags.iter().all(|t| instance.has_tag(t))
            && self
                .metadata
                .iter()
                .all(|(k, v)| instance.metadata.get(k) == Some(v))
    }
}

/// The pickers of one group of endpoints (stable or canary): local zone,
/// local data centre, everything; with the flags the recount keeps.
#[derive(Debug)]
struct Tier {
    endpoints: Arc<[Endpoint]>,
    all: Box<dyn Picker>,
    zone: Option<Box<dyn Picker>>,
    datacenter: Option<Box<dyn Picker>>,
    zone_ok: AtomicBool,
    datacenter_ok: AtomicBool,
    panic: AtomicBool,
}

impl Tier {
    fn new(endpoints: Vec<Endpoint>, balancer: &dyn Balancer, policy: &RoutingPolicy) -> Tier {
        let local = |pick: &dyn Fn(&ServiceInstance) -> bool| -> Option<Box<dyn Picker>> {
            let subset: Vec<Endpoint> = endpoints
                .iter()
                .filter(|e| pick(e.instance()))
                .cloned()
                .collect();
            (!subset.is_empty() && subset.len() < endpoints.len())
                .then(|| balancer.picker(subset.into()))
        };
        let zone = policy
            .zone
            .as_deref()
            .and_then(|z| local(&|i| i.zone.as_deref() == Some(z)));
        let datacenter = policy
            .datacenter
            .as_deref()
            .and_then(|d| local(&|i| i.datacenter.as_deref() == Some(d)));
        let endpoints: Arc<[Endpoint]> = endpoints.into();
        let tier = Tier {
            all: balancer.picker(endpoints.clone()),
            endpoints,
            zone,
            datacenter,
            zone_ok: AtomicBool::new(false),
            datacenter_ok: AtomicBool::new(false),
            panic: AtomicBool::new(false),
        };
        tier.recount(policy);
        tier
    }

    fn recount(&self, policy: &RoutingPolicy) {
        let available = |p: &Option<Box<dyn Picker>>| {
            p.as_ref().map_or(0, |p| {
                p.endpoints().iter().filter(|e| e.is_available()).count()
            })
        };
        self.zone_ok
            .store(available(&self.zone) >= policy.min_local, Ordering::Relaxed);
        self.datacenter_ok.store(
            available(&self.datacenter) >= policy.min_local,
            Ordering::Relaxed,
        );
        let total = self.endpoints.len();
        let up = self.endpoints.iter().filter(|e| e.is_available()).count();
        self.panic.store(
            total > 0 && (up as f64) < policy.panic_below * total as f64,
            Ordering::Relaxed,
        );
    }

    #[inline]
    fn pick(&self, key: Option<u64>) -> Option<&Endpoint> {
        if self.panic.load(Ordering::Relaxed) {
            // Too few healthy endpoints: spread over all of them, healthy or
            // not, rather than overload the few left (Envoy's panic mode).
            return match self.endpoints.len() {
                0 => None,
                n => self.endpoints.get(fastrand::usize(..n)),
            };
        }
        if self.zone_ok.load(Ordering::Relaxed)
            && let Some(e) = self.zone.as_ref().and_then(|p| p.pick(key))
        {
            return Some(e);
        }
        if self.datacenter_ok.load(Ordering::Relaxed)
            && let Some(e) = self.datacenter.as_ref().and_then(|p| p.pick(key))
        {
            return Some(e);
        }
        self.all.pick(key)
    }
}

/// Everything a pick needs, rebuilt when the set of endpoints changes.
#[derive(Debug)]
pub(crate) struct RouteTable {
    /// Every endpoint routing may use (admitted by the policy).
    pub(crate) endpoints: Arc<[Endpoint]>,
    stable: Option<Tier>,
    canary: Option<(Tier, f64, Option<String>)>,
}

impl RouteTable {
    pub(crate) fn empty() -> RouteTable {
        RouteTable {
            endpoints: Arc::from(Vec::new()),
            stable: None,
            canary: None,
        }
    }

    /// A table over `endpoints` (already admitted by the policy).
    pub(crate) fn build(
        endpoints: Vec<Endpoint>,
        balancer: &dyn Balancer,
        policy: &RoutingPolicy,
    ) -> RouteTable {
        let all: Arc<[Endpoint]> = endpoints.clone().into();
        let (canary, stable): (Vec<Endpoint>, Vec<Endpoint>) = match &policy.canary {
            Some(c) => endpoints
                .into_iter()
                .partition(|e| e.instance().version.as_deref() == Some(c.version.as_str())),
            None => (Vec::new(), endpoints),
        };
        let canary = match (&policy.canary, canary.is_empty()) {
            (Some(c), false) => Some((
                Tier::new(canary, balancer, policy),
                c.percent,
                c.label.clone(),
            )),
            _ => None,
        };
        RouteTable {
            endpoints: all,
            stable: (!stable.is_empty()).then(|| Tier::new(stable, balancer, policy)),
            canary,
        }
    }

    /// Refreshes the zone, data-centre and panic flags from the endpoints'
    /// availability (after a breaker or health change).
    pub(crate) fn recount(&self, policy: &RoutingPolicy) {
        if let Some(t) = &self.stable {
            t.recount(policy);
        }
        if let Some((t, _, _)) = &self.canary {
            t.recount(policy);
        }
    }

    /// An endpoint for a request, or `None` when none is available.
    #[inline]
    pub(crate) fn pick(&self, options: &PickOptions<'_>) -> Option<&Endpoint> {
        if let Some((tier, percent, label)) = &self.canary {
            let labelled = matches!((label, options.label), (Some(l), Some(r)) if l == r);
            if (labelled || (*percent > 0.0 && fastrand::f64() * 100.0 < *percent))
                && let Some(e) = tier.pick(options.key)
            {
                return Some(e);
            }
        }
        match &self.stable {
            Some(tier) => tier.pick(options.key),
            // Only canary instances exist: they take everything.
            None => self
                .canary
                .as_ref()
                .and_then(|(t, _, _)| t.pick(options.key)),
        }
    }
}
