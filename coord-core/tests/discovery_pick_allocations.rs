//! `Picker::pick` allocates nothing, for every balancer, on a set of 1,000
//! endpoints with some unavailable (so the retry and scan paths run too).
//!
//! allocation-counter installs a counting global allocator in this test
//! binary; it counts per thread, so the test harness's own threads do not
//! interfere.

use std::sync::Arc;
use std::time::Duration;

use coord_core::discovery::balancer::{
    Balancer, ConsistentHash, LeastRequests, PowerOfTwoChoices, Random, RoundRobin, WeightedRandom,
    WeightedRoundRobin, hash_key,
};
use coord_core::discovery::{Endpoint, ServiceInstance};

const ENDPOINTS: usize = 1000;
const PICKS: u64 = 10_000;

fn balancers() -> Vec<Box<dyn Balancer>> {
    vec![
        Box::new(RoundRobin),
        Box::new(WeightedRoundRobin),
        Box::new(Random),
        Box::new(WeightedRandom),
        Box::new(LeastRequests::default()),
        Box::new(LeastRequests::with_choices(ENDPOINTS)),
        Box::new(PowerOfTwoChoices::by_in_flight()),
        Box::new(PowerOfTwoChoices::by_latency()),
        Box::new(ConsistentHash::default()),
    ]
}

fn endpoints(weights: impl Fn(usize) -> u32) -> Arc<[Endpoint]> {
    (0..ENDPOINTS)
        .map(|i| {
            let instance = ServiceInstance::new(
                "bench",
                format!("i-{i}"),
                format!("10.0.{}.{}:80", i / 256, i % 256),
            )
            .weight(weights(i));
            let endpoint = Endpoint::new(instance);
            if i % 2 == 0 {
                endpoint.record_latency(Duration::from_millis(1 + i as u64 % 50));
            }
            endpoint
        })
        .collect()
}

#[test]
fn picks_allocate_nothing() {
    // Equal weights (a short stored schedule) and distinct ones (a cycle
    // too long to store).
    for set in [endpoints(|_| 100), endpoints(|i| 5000 + i as u32)] {
        // Every third endpoint is out, and the first 100 in a row.
        for (i, e) in set.iter().enumerate() {
            e.set_healthy(i % 3 != 0 && i >= 100);
        }
        let pickers: Vec<_> = balancers()
            .iter()
            .map(|b| (b.name(), b.picker(set.clone())))
            .collect();
        let keys: Vec<u64> = (0..PICKS).map(|k| hash_key(&k.to_le_bytes())).collect();
        // Warm up: the thread's random generator is seeded on first use.
        for (_, picker) in &pickers {
            picker.pick(Some(keys[0])).expect("an endpoint");
        }
        for (name, picker) in &pickers {
            let info = allocation_counter::measure(|| {
                for &key in &keys {
                    std::hint::black_box(picker.pick(std::hint::black_box(Some(key))));
                    std::hint::black_box(picker.pick(None));
                }
            });
            assert_eq!(info.count_total, 0, "{name} allocated: {info:?}");
        }
    }
}

#[test]
fn the_counter_counts() {
    // Guards against a counter that would read 0 whatever happens.
    let info = allocation_counter::measure(|| {
        std::hint::black_box(Box::new(1u64));
    });
    assert_eq!(info.count_total, 1);
}

/// A routed client's pick (the route table's canary split, zone preference
/// and balancer, behind an `arc-swap` load) allocates nothing either.
#[test]
fn a_service_clients_pick_allocates_nothing() {
    use coord_core::discovery::{Canary, DiscoveryClient, PickOptions};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (client, _regs) = rt.block_on(async {
        let d = DiscoveryClient::new(Arc::new(coord_core::memory::MemoryBackend::new()));
        let mut regs = Vec::new();
        for i in 0..ENDPOINTS {
            let instance = ServiceInstance::new(
                "svc",
                format!("i-{i}"),
                format!("10.0.{}.{}:80", i / 256, i % 256),
            )
            .zone(if i % 2 == 0 { "a" } else { "b" })
            .version(if i % 10 == 0 { "2" } else { "1" });
            regs.push(d.register(instance).await.unwrap());
        }
        let client = d
            .service("svc")
            .balancer(ConsistentHash::default())
            .local_zone("a")
            .canary(Canary::new("2", 10.0).label("beta"))
            .build()
            .await
            .unwrap();
        while client.endpoints().len() < ENDPOINTS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (client, regs)
    });
    let options = PickOptions::new().key(b"customer-42");
    let labelled = PickOptions::new().label("beta");
    for _ in 0..10 {
        client.pick_with(&options).expect("an endpoint");
        client.pick_with(&labelled).expect("an endpoint");
    }
    let info = allocation_counter::measure(|| {
        for _ in 0..PICKS {
            std::hint::black_box(client.pick_with(std::hint::black_box(&options)));
            std::hint::black_box(client.pick_with(std::hint::black_box(&labelled)));
            std::hint::black_box(client.pick());
        }
    });
    assert_eq!(
        info.count_total, 0,
        "ServiceClient::pick allocated: {info:?}"
    );
    drop(client);
    drop(rt);
}
