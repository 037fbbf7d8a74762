//! Caches when Redis goes away: degraded mode (reads served from what L1
//! held, writes refused, health `Degraded`) and recovery when the server
//! returns (L1 flushed: no value that may have missed an invalidation is
//! served once Redis answers again).

use std::time::Duration;

use coord_core::cache::CacheBuilder;
use coord_core::testkit::cache::CacheHarness;
use coord_core::testkit::within;
use coord_core::{Error, HealthStatus};
use coord_redis::testkit::{RedisHarness, RedisServer};
use tokio::time::Instant;

/// Polls `check` every 20 ms until it holds, failing after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_survive_a_server_outage_and_l1_is_flushed_on_return() {
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let mut h = RedisHarness::on(server);
    let cache = CacheBuilder::new(h.new_cache_backend().await, "degraded")
        .max_stale(Duration::from_secs(60))
        .build::<String>()
        .expect("build");
    within(Duration::from_secs(5), "invalidations flow", cache.ready()).await;
    cache.set("k", "before".into()).await.expect("set");
    assert_eq!(
        cache
            .get("k")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("before")
    );

    // Redis goes away (and comes back empty: no persistence).
    tokio::task::block_in_place(|| h.server.stop()).expect("stop redis-server");
    until(Duration::from_secs(10), "the cache notices", || async {
        !cache.is_l1_live()
    })
    .await;
    let health = cache.health().await;
    assert_eq!(health.status, HealthStatus::Degraded, "{health:?}");
    let stale = cache
        .get("k")
        .await
        .expect("a read is served while Redis is down");
    assert_eq!(stale.as_deref().map(String::as_str), Some("before"));
    assert!(cache.stats().stale_hits >= 1);
    let many = cache
        .get_many(&["k"])
        .await
        .expect("get_many is served too");
    assert_eq!(many[0].as_deref().map(String::as_str), Some("before"));
    let loaded = cache
        .get_or_load("never-cached", || async {
            Ok(Some("from the loader".to_string()))
        })
        .await
        .expect("the loader runs while Redis is down");
    assert_eq!(
        loaded.as_deref().map(String::as_str),
        Some("from the loader")
    );
    match cache.set("k", "during".into()).await {
        Err(e) => assert!(e.is_retryable(), "a write fails as unavailable: {e}"),
        Ok(()) => panic!("a write succeeded with Redis down"),
    }
    assert!(
        matches!(
            cache.get("other").await,
            Err(Error::Unavailable { .. } | Error::Timeout(_))
        ),
        "a key L1 never held is an error, not a made-up miss"
    );

    tokio::task::block_in_place(|| h.server.restart()).expect("restart redis-server");
    within(
        Duration::from_secs(15),
        "invalidations flow again",
        cache.ready(),
    )
    .await;
    assert_eq!(cache.health().await.status, HealthStatus::Healthy);
    assert_eq!(
        cache.get("k").await.expect("get"),
        None,
        "after the return, the server's (empty) state is served, not the stale copy"
    );
}

/// With `cache.redis_pool_size`, cache calls run on pooled connections of
/// their own: they work, and a server that stops answering fails them
/// within `request_timeout` instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_cache_connections_work_and_time_out() {
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let mut settings = coord_core::Settings::default();
    settings.cache.redis_pool_size = 2;
    settings.request_timeout = Duration::from_millis(500);
    let backend = coord_redis::RedisBackend::connect(server.url(), &settings)
        .await
        .expect("connect");
    let cache = CacheBuilder::new(std::sync::Arc::new(backend), "pooled")
        .build::<u32>()
        .expect("build");
    within(Duration::from_secs(5), "invalidations flow", cache.ready()).await;
    for i in 0..10u32 {
        cache.set(&format!("k{i}"), i).await.expect("set");
    }
    cache.clear_local();
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got: Vec<Option<u32>> = cache
        .get_many(&refs)
        .await
        .expect("get_many")
        .into_iter()
        .map(|v| v.map(|v| *v))
        .collect();
    assert_eq!(got, (0..10).map(Some).collect::<Vec<_>>());
    assert!(cache.delete("k3").await.expect("delete"));

    server.pause().expect("pause redis-server");
    let started = Instant::now();
    let result = cache.set("k4", 40).await;
    server.resume().expect("resume redis-server");
    assert!(result.is_err(), "a write to a paused server fails");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within request_timeout (and the pool's wait), not hanging: {:?}",
        started.elapsed()
    );
}

/// Avalanche protection: 1000 keys written at once with a 60 s TTL and a
/// 20 % jitter expire spread over 48–72 s (read back with `PTTL`), not
/// together.
#[tokio::test]
async fn ttls_written_together_are_spread_by_the_jitter() {
    let h = RedisHarness::start().await;
    let backend = h.connect().await.expect("connect");
    let cache = CacheBuilder::new(std::sync::Arc::new(backend.clone()), "avalanche")
        .ttl(Duration::from_secs(60))
        .jitter(0.2)
        .build::<u32>()
        .expect("build");
    for i in 0..1000u32 {
        cache.set(&format!("k{i}"), i).await.expect("set");
    }
    let mut conn = redis::Client::open(h.server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let mut ttls = Vec::new();
    for i in 0..1000 {
        let ms: i64 = redis::cmd("PTTL")
            .arg(backend.cache_key("avalanche", &format!("k{i}")))
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        ttls.push(ms);
    }
    ttls.sort_unstable();
    let (min, max) = (ttls[0], ttls[999]);
    assert!(
        min >= 47_000 && max <= 72_000,
        "TTLs within 60 s ± 20 %: {min}..{max} ms"
    );
    assert!(
        max - min >= 18_000,
        "spread over most of the window: {min}..{max} ms"
    );
    // No second holds more than 8 % of the keys (without jitter: all of them).
    let mut per_second = std::collections::HashMap::new();
    for t in &ttls {
        *per_second.entry(t / 1000).or_insert(0) += 1;
    }
    assert!(per_second.values().all(|n| *n <= 80), "{per_second:?}");
}
