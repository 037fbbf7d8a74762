//! Routing over a watched service on the memory backend: zone fallback,
//! canary shares, empty-list protection, panic mode, breakers, health
//! checks, and `call` with retries, a budget and a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coord_core::discovery::balancer::{RoundRobin, WeightedRoundRobin};
use coord_core::discovery::breaker::{BreakerConfig, BreakerState};
use coord_core::discovery::{
    CallError, Canary, DiscoveryClient, HealthCheck, PickOptions, Registration, RetryBudget,
    ServiceClient, ServiceInstance,
};
use coord_core::memory::MemoryBackend;

const WAIT: Duration = Duration::from_secs(5);

fn discovery() -> DiscoveryClient {
    DiscoveryClient::new(Arc::new(MemoryBackend::new()))
}

fn instance(id: &str, port: u16) -> ServiceInstance {
    ServiceInstance::new("svc", id, format!("127.0.0.1:{port}"))
}

async fn register_all(d: &DiscoveryClient, instances: Vec<ServiceInstance>) -> Vec<Registration> {
    let mut regs = Vec::new();
    for i in instances {
        regs.push(d.register(i).await.expect("register"));
    }
    regs
}

/// Waits until the client routes to exactly `n` endpoints.
async fn routed(client: &ServiceClient, n: usize) {
    tokio::time::timeout(WAIT, async {
        while client.endpoints().len() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the client never routed to {n} endpoints"));
}

fn count_picks(
    client: &ServiceClient,
    picks: usize,
    options: &PickOptions<'_>,
) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for _ in 0..picks {
        let e = client.pick_with(options).expect("a pick");
        *counts.entry(e.id().to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn the_local_zone_is_preferred_and_left_when_it_has_too_few_healthy() {
    let d = discovery();
    let _regs = register_all(
        &d,
        vec![
            instance("a1", 1).zone("a"),
            instance("a2", 2).zone("a"),
            instance("b1", 3).zone("b"),
            instance("b2", 4).zone("b"),
        ],
    )
    .await;
    let client = d
        .service("svc")
        .local_zone("a")
        .min_local(2)
        .balancer(RoundRobin)
        .build()
        .await
        .unwrap();
    let counts = count_picks(&client, 1000, &PickOptions::new());
    assert_eq!(counts.keys().filter(|k| k.starts_with('a')).count(), 2);
    assert!(counts.keys().all(|k| k.starts_with('a')), "{counts:?}");
    // One of zone a's two fails its health: fewer than min_local → everything.
    let a1 = client
        .endpoints()
        .into_iter()
        .find(|e| e.id() == "a1")
        .unwrap();
    a1.set_healthy(false);
    tokio::time::timeout(WAIT, async {
        loop {
            let counts = count_picks(&client, 200, &PickOptions::new());
            if counts.keys().any(|k| k.starts_with('b')) {
                assert!(
                    !counts.contains_key("a1"),
                    "an unhealthy endpoint is never picked"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("zone fallback within the recount period");
}

#[tokio::test]
async fn a_canary_gets_its_share_within_3_percent_and_labelled_requests() {
    let d = discovery();
    let _regs = register_all(
        &d,
        vec![
            instance("s1", 1).version("1.0"),
            instance("s2", 2).version("1.0"),
            instance("c1", 3).version("2.0"),
        ],
    )
    .await;
    let client = d
        .service("svc")
        .canary(Canary::new("2.0", 10.0).label("beta"))
        .build()
        .await
        .unwrap();
    let counts = count_picks(&client, 10_000, &PickOptions::new());
    let share = *counts.get("c1").unwrap_or(&0) as f64 / 10_000.0 * 100.0;
    assert!(
        (7.0..=13.0).contains(&share),
        "canary share {share} % (±3 % of 10 %)"
    );
    let labelled = count_picks(&client, 100, &PickOptions::new().label("beta"));
    assert_eq!(
        labelled.get("c1"),
        Some(&100),
        "labelled requests all go to the canary"
    );
}

#[tokio::test]
async fn an_emptied_list_keeps_the_last_good_set() {
    let d = discovery();
    let regs = register_all(&d, vec![instance("a", 1), instance("b", 2)]).await;
    let client = d.service("svc").build().await.unwrap();
    routed(&client, 2).await;
    for r in regs {
        r.deregister().await.unwrap();
    }
    // The watcher sees the list empty; routing keeps the last good set.
    let watcher = d.watch("svc").await.unwrap();
    assert!(watcher.snapshot().instances.is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.endpoints().len(), 2, "empty-list protection");
    assert!(client.pick().is_some());
    // A new registration replaces the protected set.
    let _c = d.register(instance("c", 3)).await.unwrap();
    routed(&client, 1).await;
    assert_eq!(client.pick().unwrap().id(), "c");
}

#[tokio::test]
async fn below_the_panic_threshold_every_endpoint_is_picked() {
    let d = discovery();
    let _regs = register_all(
        &d,
        (0..4).map(|n| instance(&format!("i{n}"), 10 + n)).collect(),
    )
    .await;
    let client = d.service("svc").balancer(RoundRobin).build().await.unwrap();
    routed(&client, 4).await;
    let endpoints = client.endpoints();
    for e in &endpoints[..3] {
        e.set_healthy(false);
    }
    // 1 of 4 healthy is below the default 50 %: panic mode spreads load.
    tokio::time::timeout(WAIT, async {
        loop {
            if count_picks(&client, 400, &PickOptions::new()).len() == 4 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("panic mode within the recount period");
    // With the threshold off, only the healthy one is picked.
    let strict = d
        .service("svc")
        .panic_threshold(0.0)
        .balancer(RoundRobin)
        .build()
        .await
        .unwrap();
    routed(&strict, 4).await;
    let healthy_id = endpoints[3].id().to_owned();
    for e in strict.endpoints() {
        e.set_healthy(e.id() == healthy_id);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let counts = count_picks(&strict, 100, &PickOptions::new());
    assert_eq!(counts.len(), 1, "{counts:?}");
}

#[tokio::test]
async fn a_failed_call_is_retried_on_another_instance() {
    let d = discovery();
    let _regs = register_all(&d, vec![instance("bad", 1), instance("good", 2)]).await;
    let client = d
        .service("svc")
        .balancer(RoundRobin)
        .retry_budget(None)
        .backoff(Duration::from_millis(1))
        .build()
        .await
        .unwrap();
    routed(&client, 2).await;
    for _ in 0..20 {
        let tried = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = tried.clone();
        let out = client
            .call(move |e| {
                let t = t.clone();
                async move {
                    t.lock().unwrap().push(e.id().to_owned());
                    if e.id() == "bad" {
                        Err("refused")
                    } else {
                        Ok(e.id().to_owned())
                    }
                }
            })
            .await
            .expect("the good instance answers");
        assert_eq!(out, "good");
        let tried = tried.lock().unwrap();
        assert!(
            tried.len() <= 2 && tried.last().unwrap() == "good",
            "{tried:?}"
        );
        if tried.len() == 2 {
            assert_ne!(tried[0], tried[1], "a retry goes to another instance");
        }
    }
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_an_outage() {
    let d = discovery();
    let _regs = register_all(&d, vec![instance("a", 1), instance("b", 2)]).await;
    let client = d
        .service("svc")
        .breaker(None)
        .max_attempts(5)
        .backoff(Duration::from_millis(1))
        .retry_budget(Some(RetryBudget::new(Duration::from_secs(10), 0.2, 0)))
        .build()
        .await
        .unwrap();
    routed(&client, 2).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let a = attempts.clone();
        let r = client
            .call(move |_| {
                a.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>("down") }
            })
            .await;
        assert!(matches!(r, Err(CallError::Failed { .. })));
    }
    let total = attempts.load(Ordering::Relaxed);
    assert!(
        total <= 100 + 20,
        "100 calls made {total} attempts: retries above 20 % of calls"
    );
    assert!(
        total >= 100 + 19,
        "the budget allows about 20 retries, made {}",
        total - 100
    );
}

#[tokio::test]
async fn the_deadline_bounds_a_call_with_its_retries() {
    let d = discovery();
    let _regs = register_all(&d, vec![instance("slow", 1)]).await;
    let client = d
        .service("svc")
        .deadline(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    routed(&client, 1).await;
    let started = std::time::Instant::now();
    let r = client
        .call(|_| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, &str>(())
        })
        .await;
    assert!(
        matches!(r, Err(CallError::DeadlineExceeded { attempts: 1, .. })),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_failing_instance_is_ejected_by_its_breaker() {
    let d = discovery();
    let _regs = register_all(&d, vec![instance("bad", 1), instance("good", 2)]).await;
    let mut breaker = BreakerConfig::default();
    breaker.minimum_calls = 5;
    breaker.open_for = Duration::from_secs(60);
    let client = d
        .service("svc")
        .breaker(Some(breaker))
        .panic_threshold(0.0)
        .max_attempts(1)
        .balancer(RoundRobin)
        .build()
        .await
        .unwrap();
    routed(&client, 2).await;
    for _ in 0..40 {
        let _ = client
            .call(|e| async move { if e.id() == "bad" { Err("down") } else { Ok(()) } })
            .await;
    }
    let states: std::collections::HashMap<_, _> = client.breaker_states().into_iter().collect();
    assert_eq!(states["bad"], BreakerState::Open);
    assert_eq!(states["good"], BreakerState::Closed);
    let counts = count_picks(&client, 100, &PickOptions::new());
    assert_eq!(
        counts.get("good"),
        Some(&100),
        "an open breaker's instance is not picked"
    );
}

#[tokio::test]
async fn an_active_health_check_takes_a_dead_instance_out_and_back() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_port = listener.local_addr().unwrap().port();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let d = discovery();
    let _regs = register_all(
        &d,
        vec![instance("live", live_port), instance("dead", dead_port)],
    )
    .await;
    let client = d
        .service("svc")
        .panic_threshold(0.0)
        .health_check(
            HealthCheck::tcp()
                .interval(Duration::from_millis(20))
                .fall(2)
                .rise(2),
        )
        .build()
        .await
        .unwrap();
    routed(&client, 2).await;
    tokio::time::timeout(WAIT, async {
        loop {
            let counts = count_picks(&client, 100, &PickOptions::new());
            if counts.len() == 1 && counts.contains_key("live") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the dead instance is taken out");
    let revived = tokio::net::TcpListener::bind(("127.0.0.1", dead_port)).await;
    if let Ok(_revived) = revived {
        tokio::time::timeout(WAIT, async {
            loop {
                if count_picks(&client, 200, &PickOptions::new()).len() == 2 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the instance comes back after `rise` passes");
    }
    drop(listener);
}

#[tokio::test]
async fn weighted_round_robin_through_the_client_follows_the_weights() {
    let d = discovery();
    let _regs = register_all(
        &d,
        vec![instance("a", 1).weight(300), instance("b", 2).weight(100)],
    )
    .await;
    let client = d
        .service("svc")
        .balancer(WeightedRoundRobin)
        .build()
        .await
        .unwrap();
    routed(&client, 2).await;
    let counts = count_picks(&client, 4000, &PickOptions::new());
    assert_eq!(counts["a"], 3000);
    assert_eq!(counts["b"], 1000);
}

#[tokio::test]
async fn tag_and_metadata_filters_and_draining_instances_are_not_routed() {
    let d = discovery();
    let regs = register_all(
        &d,
        vec![
            instance("grpc-eu", 1).tag("grpc").metadata("region", "eu"),
            instance("grpc-us", 2).tag("grpc").metadata("region", "us"),
            instance("http-eu", 3).metadata("region", "eu"),
        ],
    )
    .await;
    let client = d
        .service("svc")
        .tag("grpc")
        .metadata("region", "eu")
        .build()
        .await
        .unwrap();
    routed(&client, 1).await;
    assert_eq!(client.pick().unwrap().id(), "grpc-eu");
    regs[0]
        .set_status(coord_core::discovery::InstanceStatus::Draining)
        .await
        .unwrap();
    // Draining leaves nothing routable: the last good set is kept.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.endpoints().len(), 1);
    let all = d.service("svc").build().await.unwrap();
    routed(&all, 2).await;
    assert!(
        all.endpoints().iter().all(|e| e.id() != "grpc-eu"),
        "a draining instance is not routed"
    );
}
