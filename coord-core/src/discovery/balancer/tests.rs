//! Helpers for the balancers' tests, and the cases every balancer shares.

use std::sync::Arc;

use super::*;
use crate::discovery::{InstanceStatus, ServiceInstance};

/// Endpoints `e0`, `e1`, … of the given weights.
pub(super) fn set(weights: &[u32]) -> Arc<[Endpoint]> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Endpoint::new(ServiceInstance::new("s", format!("e{i}"), "10.0.0.1:80").weight(w))
        })
        .collect()
}

/// How many of `picks` picks went to each endpoint of the picker's set.
pub(super) fn counts(picker: &dyn Picker, picks: usize) -> Vec<usize> {
    let endpoints = picker.endpoints();
    let mut counts = vec![0; endpoints.len()];
    for _ in 0..picks {
        let picked = picker.pick(None).expect("an available endpoint");
        let i = endpoints.iter().position(|e| e.same(picked)).unwrap();
        counts[i] += 1;
    }
    counts
}

/// Asserts that each share of `counts` is within `tolerance` (relative) of
/// its share of `weights`.
pub(super) fn assert_shares(counts: &[usize], weights: &[u32], tolerance: f64) {
    let picks: usize = counts.iter().sum();
    let total: u32 = weights.iter().sum();
    for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
        let expected = picks as f64 * f64::from(w) / f64::from(total);
        assert!(
            (c as f64 - expected).abs() <= tolerance * expected,
            "endpoint {i}: {c} picks, expected {expected:.0} ± {:.0}%: {counts:?}",
            tolerance * 100.0
        );
    }
}

fn _object_safe(_: Arc<dyn Balancer>, _: Box<dyn Picker>) {}

fn every_balancer() -> Vec<Box<dyn Balancer>> {
    vec![
        Box::new(RoundRobin),
        Box::new(WeightedRoundRobin),
        Box::new(Random),
        Box::new(WeightedRandom),
        Box::new(LeastRequests::default()),
        Box::new(LeastRequests::with_choices(5)),
        Box::new(PowerOfTwoChoices::by_in_flight()),
        Box::new(PowerOfTwoChoices::by_latency()),
        Box::new(ConsistentHash::default()),
    ]
}

const KEYS: [Option<u64>; 3] = [None, Some(0), Some(u64::MAX)];

#[test]
fn an_empty_set_gives_none() {
    for balancer in every_balancer() {
        let picker = balancer.picker(set(&[]));
        for key in KEYS {
            assert!(picker.pick(key).is_none(), "{}", balancer.name());
        }
    }
}

#[test]
fn a_set_with_none_available_gives_none() {
    for n in [1, 2, 7, 300] {
        let endpoints = set(&vec![100; n]);
        for e in endpoints.iter() {
            e.set_healthy(false);
        }
        for balancer in every_balancer() {
            let picker = balancer.picker(endpoints.clone());
            for key in KEYS {
                assert!(picker.pick(key).is_none(), "{} of {n}", balancer.name());
            }
        }
    }
}

#[test]
fn a_set_with_none_up_gives_none() {
    let endpoints: Arc<[Endpoint]> = [InstanceStatus::Draining, InstanceStatus::Down]
        .iter()
        .map(|&status| Endpoint::new(ServiceInstance::new("s", "x", "10.0.0.1:80").status(status)))
        .collect();
    for balancer in every_balancer() {
        let picker = balancer.picker(endpoints.clone());
        for key in KEYS {
            assert!(picker.pick(key).is_none(), "{}", balancer.name());
        }
    }
}

#[test]
fn only_the_one_available_endpoint_is_picked() {
    for n in [1, 2, 3, 50, 1000] {
        let endpoints = set(&vec![100; n]);
        for e in &endpoints[..n - 1] {
            e.set_healthy(false);
        }
        let last = &endpoints[n - 1];
        for balancer in every_balancer() {
            let picker = balancer.picker(endpoints.clone());
            for k in 0..50u64 {
                let key = (k % 2 == 0).then(|| hash_key(&k.to_le_bytes()));
                let picked = picker.pick(key).expect("the available one");
                assert!(picked.same(last), "{} of {n}", balancer.name());
            }
        }
    }
}

#[test]
fn names_are_distinct_and_debug_is_short() {
    let balancers = every_balancer();
    let mut names: Vec<&str> = balancers.iter().map(|b| b.name()).collect();
    names.sort_unstable();
    names.dedup();
    // LeastRequests appears twice with different choices.
    assert_eq!(names.len(), balancers.len() - 1);
    for balancer in balancers {
        let picker = balancer.picker(set(&vec![100; 1000]));
        let debug = format!("{picker:?}");
        assert!(debug.len() < 200, "{debug}");
        assert_eq!(picker.endpoints().len(), 1000);
    }
}

#[test]
fn weights_past_the_validated_range_do_not_overflow() {
    // Validation caps weights at 10,000, but a picker must not panic on an
    // unvalidated instance.
    let endpoints = set(&[u32::MAX, 0, u32::MAX - 1, 1]);
    for balancer in every_balancer() {
        let picker = balancer.picker(endpoints.clone());
        for k in 0..100u64 {
            assert!(picker.pick(Some(k)).is_some(), "{}", balancer.name());
        }
    }
}

/// The calls in flight on each endpoint after `calls` calls were started,
/// one pick at a time, and none finished.
fn in_flight_after(picker: &dyn Picker, calls: usize) -> Vec<u32> {
    let _held: Vec<_> = (0..calls)
        .map(|_| picker.pick(None).expect("an endpoint").start_call())
        .collect();
    picker.endpoints().iter().map(Endpoint::in_flight).collect()
}

/// The least-loaded pickers weigh the load: calls in flight settle in
/// proportion to the weights (without weights, 20 and 20).
#[test]
fn the_least_loaded_pickers_give_weights_their_share_of_calls_in_flight() {
    let pickers: [Box<dyn Balancer>; 3] = [
        Box::new(LeastRequests::default()),
        Box::new(PowerOfTwoChoices::by_in_flight()),
        Box::new(PowerOfTwoChoices::by_latency()),
    ];
    for balancer in pickers {
        // Two endpoints: every pick compares both.
        let picker = balancer.picker(set(&[1, 3]));
        let flight = in_flight_after(picker.as_ref(), 40);
        assert!(
            (9..=11).contains(&flight[0]) && (29..=31).contains(&flight[1]),
            "{}: {flight:?}",
            balancer.name()
        );
        // Idle: the heavier endpoint first.
        let picker = balancer.picker(set(&[1, 3]));
        assert_eq!(picker.pick(None).unwrap().id(), "e1", "{}", balancer.name());
    }
    // More endpoints than choices: random candidates, shares near the weights.
    fastrand::seed(11);
    let picker = LeastRequests::default().picker(set(&[1, 1, 2, 4]));
    let flight = in_flight_after(picker.as_ref(), 800);
    for (got, weight) in flight.iter().zip([1.0, 1.0, 2.0, 4.0]) {
        let expected = 800.0 * weight / 8.0;
        assert!(
            (f64::from(*got) - expected).abs() < expected * 0.15,
            "{flight:?}"
        );
    }
}
