//! The registry side of discovery on real servers:
//!
//! * register-to-watcher propagation (a `register` on one client until
//!   another client's watcher snapshot holds the instance), p50 and p99, on
//!   Redis and etcd, beside the raw floor of the same notification path
//!   (a Redis `PUBLISH` to a subscriber; an etcd put to a watcher);
//! * registering 10,000 instances of one service through one client (64 in
//!   flight), and until a watcher on another client holds all of them;
//! * the resident memory a watcher and a routed client of 10,000 instances
//!   add to the process.
//!
//! ```text
//! cargo bench -p coord-benches --bench discovery_registry
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::Settings;
use coord::discovery::{DiscoveryClient, RegistryBackend, ServiceInstance};
use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::RedisBackend;
use coord::redis::testkit::RedisServer;
use coord_benches::percentiles;
use futures::StreamExt;
use tokio::runtime::Runtime;

fn instance(service: &str, n: usize) -> ServiceInstance {
    ServiceInstance::new(
        service,
        format!("i-{n:05}"),
        format!("10.{}.{}.{}:8080", n >> 16, (n >> 8) & 255, n & 255),
    )
    .zone(if n.is_multiple_of(2) { "a" } else { "b" })
}

/// Register on `writer` until `reader`'s watcher holds the instance.
async fn propagation(
    writer: &DiscoveryClient,
    reader: &DiscoveryClient,
    rounds: usize,
) -> (Duration, Duration) {
    let service = format!("prop-{:08x}", fastrand::u32(..));
    let watcher = reader.watch(&service).await.expect("watch");
    let mut snapshots = watcher.subscribe();
    let mut samples = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let start = Instant::now();
        let reg = writer
            .register(instance(&service, n))
            .await
            .expect("register");
        snapshots
            .wait_for(|s| s.instances.len() == 1)
            .await
            .expect("watcher");
        samples.push(start.elapsed());
        reg.deregister().await.expect("deregister");
        snapshots
            .wait_for(|s| s.instances.is_empty())
            .await
            .expect("watcher");
    }
    percentiles(samples)
}

/// The raw floor on Redis: `PUBLISH` until a subscriber on another
/// connection receives it.
async fn redis_floor(url: &str, rounds: usize) -> (Duration, Duration) {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe("bench-floor").await.expect("subscribe");
    let mut messages = pubsub.into_on_message();
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("bench-floor")
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("publish");
        messages.next().await.expect("message");
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

/// The raw floor on etcd: a put until a watcher on another client sees it.
async fn etcd_floor(endpoint: &str, rounds: usize) -> (Duration, Duration) {
    let mut writer = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("etcd");
    let mut reader = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("etcd");
    let mut stream = reader.watch("bench-floor", None).await.expect("watch");
    let mut samples = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let start = Instant::now();
        writer
            .put("bench-floor", n.to_string(), None)
            .await
            .expect("put");
        loop {
            let resp = stream.message().await.expect("watch").expect("open");
            if !resp.events().is_empty() {
                break;
            }
        }
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Registers 10,000 instances through `writer` (64 in flight) and waits
/// until a watcher on `reader` holds them; then measures what a watcher and
/// a routed client of them cost in resident memory.
async fn ten_thousand(name: &str, writer: &DiscoveryClient, reader: &DiscoveryClient) {
    const N: usize = 10_000;
    let service = format!("many-{:08x}", fastrand::u32(..));
    let start = Instant::now();
    let regs: Vec<_> = futures::stream::iter(0..N)
        .map(|n| {
            let w = writer.clone();
            let s = service.clone();
            async move { w.register(instance(&s, n)).await.expect("register") }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let registered = start.elapsed();
    let before = rss_bytes();
    let watcher = reader.watch(&service).await.expect("watch");
    let listed = start.elapsed();
    let mut snapshots = watcher.subscribe();
    snapshots
        .wait_for(|s| s.instances.len() == N)
        .await
        .expect("watcher");
    let client = reader
        .service(&service)
        .local_zone("a")
        .build()
        .await
        .expect("client");
    assert_eq!(client.endpoints().len(), N);
    let after = rss_bytes();
    println!(
        "  {name}: register {N} instances (64 in flight) {registered:>9.2?} ({:.0}/s); a new watcher lists them in {:>9.2?}; watcher + routed client add ~{:.1} MiB RSS (~{} B per instance)",
        N as f64 / registered.as_secs_f64(),
        listed - registered,
        after.saturating_sub(before) as f64 / (1 << 20) as f64,
        after.saturating_sub(before) / N as u64,
    );
    let start = Instant::now();
    futures::stream::iter(regs)
        .map(|r| async move { r.deregister().await.expect("deregister") })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    println!(
        "  {name}: deregister {N} instances {:>9.2?}",
        start.elapsed()
    );
    drop((client, watcher));
}

fn main() {
    let rt = Runtime::new().expect("runtime");
    eprintln!("starting redis-server and etcd on free loopback ports...");
    let redis = RedisServer::start().expect("redis-server (apt-get install redis-server)");
    let etcd = EtcdServer::start().expect("etcd (apt-get install etcd-server)");
    rt.block_on(async {
        let settings = Settings::default();
        let client = |b: Arc<dyn RegistryBackend>| DiscoveryClient::new(b).with_ttl(Duration::from_secs(30)).expect("ttl");
        let r1 = client(Arc::new(RedisBackend::connect(redis.url(), &settings).await.expect("redis")));
        let r2 = client(Arc::new(RedisBackend::connect(redis.url(), &settings).await.expect("redis")));
        let e1 = client(Arc::new(EtcdBackend::connect(&etcd.url(), &settings).await.expect("etcd")));
        let e2 = client(Arc::new(EtcdBackend::connect(&etcd.url(), &settings).await.expect("etcd")));

        println!("register → another client's watcher (300 rounds)");
        let (p50, p99) = propagation(&r1, &r2, 300).await;
        let (f50, f99) = redis_floor(redis.url(), 300).await;
        println!("  redis: coord p50 {p50:>9.2?} p99 {p99:>9.2?}   raw PUBLISH→subscriber p50 {f50:>9.2?} p99 {f99:>9.2?}");
        let (p50, p99) = propagation(&e1, &e2, 300).await;
        let endpoint = etcd.endpoints()[0].clone();
        let (f50, f99) = etcd_floor(&endpoint, 300).await;
        println!("  etcd:  coord p50 {p50:>9.2?} p99 {p99:>9.2?}   raw put→watcher p50 {f50:>9.2?} p99 {f99:>9.2?}");

        println!("10,000 instances of one service");
        ten_thousand("redis", &r1, &r2).await;
        ten_thousand("etcd", &e1, &e2).await;
    });
    drop(rt);
    drop((redis, etcd));
}
