//! `Picker::pick` of every balancer on sets of 10, 100 and 1,000 endpoints
//! (mixed weights, latencies recorded, all available; and 1,000 with one in
//! ten unavailable), the consistent hash with a different key at each pick.
//! In-process, no server.
//!
//! ```text
//! cargo bench -p coord-benches --bench discovery
//! cargo bench -p coord-benches --bench discovery -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! Criterion reports each case; the table printed at the end is the median
//! of a few plain timed rounds beside the issue's target (100 ns a pick at
//! 1,000 endpoints, 300 ns for the consistent hash).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::discovery::balancer::{
    Balancer, ConsistentHash, LeastRequests, Picker, PowerOfTwoChoices, Random, RoundRobin,
    WeightedRandom, WeightedRoundRobin,
};
use coord_core::discovery::{Endpoint, ServiceInstance};
use criterion::{BenchmarkId, Criterion};

const SIZES: [usize; 3] = [10, 100, 1000];
const ROUNDS: usize = 7;
const PICKS_PER_ROUND: u64 = 200_000;

fn balancers() -> Vec<Box<dyn Balancer>> {
    vec![
        Box::new(RoundRobin),
        Box::new(WeightedRoundRobin),
        Box::new(Random),
        Box::new(WeightedRandom),
        Box::new(LeastRequests::default()),
        Box::new(PowerOfTwoChoices::by_in_flight()),
        Box::new(PowerOfTwoChoices::by_latency()),
        Box::new(ConsistentHash::default()),
    ]
}

/// `n` endpoints of weights 50, 100, 200 and 300 in turn, with latencies
/// recorded; every tenth unavailable when `some_out`.
fn endpoints(n: usize, some_out: bool) -> Arc<[Endpoint]> {
    (0..n)
        .map(|i| {
            let weight = [50, 100, 200, 300][i % 4];
            let instance = ServiceInstance::new(
                "bench",
                format!("bench-{i}"),
                format!("10.0.{}.{}:8080", i / 256, i % 256),
            )
            .weight(weight);
            let e = Endpoint::new(instance);
            e.record_latency(Duration::from_micros(500 + 37 * (i as u64 % 100)));
            e.set_healthy(!(some_out && i % 10 == 3));
            e
        })
        .collect()
}

/// The key of pick `i`: a spread of the counter (the hash of a sticky key
/// is uniform on `u64`), or none for the other balancers.
#[inline]
fn key(name: &str, i: u64) -> Option<u64> {
    (name == "consistent_hash").then(|| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

struct Case {
    label: String,
    name: &'static str,
    picker: Box<dyn Picker>,
}

fn cases() -> Vec<Case> {
    let mut sets: Vec<(String, Arc<[Endpoint]>)> = SIZES
        .iter()
        .map(|&n| (n.to_string(), endpoints(n, false)))
        .collect();
    sets.push(("1000 (10% out)".to_owned(), endpoints(1000, true)));
    let mut cases = Vec::new();
    for balancer in balancers() {
        for (label, set) in &sets {
            cases.push(Case {
                label: label.clone(),
                name: balancer.name(),
                picker: balancer.picker(set.clone()),
            });
        }
    }
    cases
}

fn bench(c: &mut Criterion, cases: &[Case]) {
    for case in cases {
        let mut group = c.benchmark_group(format!("pick/{}", case.name));
        group.bench_function(BenchmarkId::from_parameter(&case.label), |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                black_box(case.picker.pick(black_box(key(case.name, i))));
            })
        });
        group.finish();
    }
}

/// Median nanoseconds per pick over [`ROUNDS`] plain timed rounds.
fn ns_per_pick(case: &Case) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|r| {
            let base = r as u64 * PICKS_PER_ROUND;
            let start = Instant::now();
            for i in base..base + PICKS_PER_ROUND {
                black_box(case.picker.pick(black_box(key(case.name, i))));
            }
            start.elapsed().as_nanos() as f64 / PICKS_PER_ROUND as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let cases = cases();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench(&mut c, &cases);
    c.final_summary();

    println!("\nns per pick, one thread (median of {ROUNDS} rounds of {PICKS_PER_ROUND}):");
    println!(
        "  {:<22} {:>8} {:>8} {:>8} {:>15}   target at 1000",
        "balancer", "10", "100", "1000", "1000 (10% out)"
    );
    for chunk in cases.chunks(SIZES.len() + 1) {
        let name = chunk[0].name;
        let figures: Vec<f64> = chunk.iter().map(ns_per_pick).collect();
        let target = if name == "consistent_hash" {
            300.0
        } else {
            100.0
        };
        let verdict = if figures[2] <= target && figures[3] <= target {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "  {name:<22} {:>8.1} {:>8.1} {:>8.1} {:>15.1}   ≤ {target:.0} ns: {verdict}",
            figures[0], figures[1], figures[2], figures[3]
        );
    }
}
