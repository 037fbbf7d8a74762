//! Caches beside their floors, measured in one run with interleaved rounds
//! (floor, ours, floor, ours, …; the median of the per-round ratios):
//!
//! * an L1 hit against a raw `moka` get of the same `Arc` value;
//! * an L2 hit (L1 dropped before each read) against a raw Redis `GET` and
//!   a raw etcd range of the same stored bytes;
//! * `get_many` of 100 keys against one raw `MGET`;
//! * invalidation propagation between two instances (a write through A
//!   until B's next read returns it), p50 and p99, on Redis and etcd.
//!
//! ```text
//! cargo bench -p coord-benches --bench cache
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::Settings;
use coord::cache::{CacheBackend, CacheBuilder, MultiLevelCache};
use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::RedisBackend;
use coord::redis::testkit::RedisServer;
use coord_benches::{ROUNDS, percentiles, ratio, redis_conn, row};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user-{id}"),
        email: format!("user-{id}@example.com"),
    }
}

async fn cache_on(backend: Arc<dyn CacheBackend>, name: &str) -> MultiLevelCache<User> {
    let c = CacheBuilder::new(backend, name)
        .ttl(Duration::from_secs(600))
        .jitter(0.0)
        .build::<User>()
        .expect("cache");
    tokio::time::timeout(Duration::from_secs(10), c.ready())
        .await
        .expect("invalidations flow");
    c
}

/// Write through `a`, then read through `b` until it returns the write:
/// p50 and p99 over `n` writes.
async fn propagation(
    a: &MultiLevelCache<User>,
    b: &MultiLevelCache<User>,
    n: u64,
) -> (Duration, Duration) {
    let mut samples = Vec::new();
    a.set("hot", user(0)).await.expect("set");
    b.get("hot").await.expect("get");
    for i in 1..=n {
        // B holds the current value in L1 before each write.
        while b.get("hot").await.expect("get").map(|u| u.id) != Some(i - 1) {}
        a.set("hot", user(i)).await.expect("set");
        let written = Instant::now();
        loop {
            if b.get("hot").await.expect("get").map(|u| u.id) == Some(i) {
                break;
            }
            tokio::task::yield_now().await;
        }
        samples.push(written.elapsed());
    }
    percentiles(samples)
}

/// Small-`GET` latency p50/p99 through `backend` while two other tasks
/// write and read 1 MiB values through it.
async fn small_reads_beside_large_values(
    backend: Arc<RedisBackend>,
    cache: &str,
) -> (Duration, Duration) {
    let big = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    backend
        .set(
            cache,
            "small",
            bytes::Bytes::from_static(b"v"),
            Duration::from_secs(600),
            "bench",
        )
        .await
        .expect("set");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let movers: Vec<_> = (0..2)
        .map(|i| {
            let (b, big, stop, cache) =
                (backend.clone(), big.clone(), stop.clone(), cache.to_owned());
            tokio::spawn(async move {
                let key = format!("big{i}");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    b.set(&cache, &key, big.clone(), Duration::from_secs(600), "bench")
                        .await
                        .expect("set big");
                    b.get(&cache, &key).await.expect("get big");
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut samples = Vec::new();
    for _ in 0..500 {
        let start = Instant::now();
        backend.get(cache, "small").await.expect("get small");
        samples.push(start.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for m in movers {
        m.await.expect("mover");
    }
    percentiles(samples)
}

fn main() {
    let rt = Runtime::new().expect("runtime");
    eprintln!("starting redis-server and etcd on free loopback ports...");
    let redis = RedisServer::start().expect("redis-server (apt-get install redis-server)");
    let etcd = EtcdServer::start().expect("etcd (apt-get install etcd-server)");
    rt.block_on(async {
        let settings = Settings::default();
        let rb = Arc::new(RedisBackend::connect(redis.url(), &settings).await.expect("redis"));
        let rb2 = Arc::new(RedisBackend::connect(redis.url(), &settings).await.expect("redis"));
        let eb = Arc::new(EtcdBackend::connect(&etcd.url(), &settings).await.expect("etcd"));
        let eb2 = Arc::new(EtcdBackend::connect(&etcd.url(), &settings).await.expect("etcd"));
        let name = format!("bench-{:08x}", fastrand::u32(..));
        let redis_cache = cache_on(rb.clone(), &name).await;
        let etcd_cache = cache_on(eb.clone(), &name).await;

        println!("caches vs their floors (median of {ROUNDS} interleaved rounds)");

        // L1 hit vs raw moka.
        let moka: moka::future::Cache<String, Arc<User>> = moka::future::Cache::new(10_000);
        moka.insert("k1".into(), Arc::new(user(1))).await;
        redis_cache.set("k1", user(1)).await.expect("set");
        redis_cache.get("k1").await.expect("get");
        let r = ratio(
            200_000,
            |_| {
                let m = moka.clone();
                async move {
                    std::hint::black_box(m.get("k1").await);
                }
            },
            |_| {
                let c = redis_cache.clone();
                async move {
                    std::hint::black_box(c.get("k1").await.expect("get"));
                }
            },
        )
        .await;
        row("L1 hit vs raw moka get", r);

        // L2 hit vs raw GET / range.
        let mut raw = redis_conn(redis.url()).await;
        let redis_key = rb.cache_key(&name, "k1");
        let r = ratio(
            2_000,
            |_| {
                let mut conn = raw.clone();
                let key = redis_key.clone();
                async move {
                    let v: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
                    assert!(v.is_some());
                }
            },
            |_| {
                let c = redis_cache.clone();
                async move {
                    c.invalidate_local("k1").await;
                    assert!(c.get("k1").await.expect("get").is_some());
                }
            },
        )
        .await;
        row("redis: L2 hit vs raw GET", r);
        let backend_name = name.clone();
        let r = ratio(
            2_000,
            |_| {
                let mut conn = raw.clone();
                let key = redis_key.clone();
                async move {
                    let v: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
                    assert!(v.is_some());
                }
            },
            |_| {
                let (b, name) = (rb.clone(), backend_name.clone());
                async move {
                    assert!(b.get(&name, "k1").await.expect("get").is_some());
                }
            },
        )
        .await;
        row("redis: the backend's get alone vs raw GET", r);

        etcd_cache.set("k1", user(1)).await.expect("set");
        let kv = eb.client().kv_client();
        let etcd_key = format!("{}k1", eb.cache_prefix(&name));
        let r = ratio(
            1_000,
            |_| {
                let key = etcd_key.clone();
                let mut kv = kv.clone();
                async move {
                    let resp = kv.get(key, None).await.expect("range");
                    assert_eq!(resp.kvs().len(), 1);
                }
            },
            |_| {
                let c = etcd_cache.clone();
                async move {
                    c.invalidate_local("k1").await;
                    assert!(c.get("k1").await.expect("get").is_some());
                }
            },
        )
        .await;
        row("etcd: L2 hit vs raw range", r);

        // L2 hits of keys L1 never held (no local invalidation inside the
        // measured call): each call reads the next of many keys written
        // through another instance, the floor reads the same keys raw.
        for (label, backend, writer_backend, calls) in [
            ("redis", rb.clone() as Arc<dyn CacheBackend>, rb2.clone() as Arc<dyn CacheBackend>, 2_000u32),
            ("etcd", eb.clone() as Arc<dyn CacheBackend>, eb2.clone() as Arc<dyn CacheBackend>, 500u32),
        ] {
            let cold_name = format!("{name}-cold-{label}");
            let total = calls as usize * (ROUNDS + 1) * 2;
            let writer = cache_on(writer_backend, &cold_name).await;
            let reader = CacheBuilder::new(backend.clone(), &cold_name)
                .ttl(Duration::from_secs(600))
                .jitter(0.0)
                .l1_max_entries(total as u64 * 2)
                .build::<User>()
                .expect("cache");
            tokio::time::timeout(Duration::from_secs(10), reader.ready()).await.expect("ready");
            futures::stream::iter(0..total)
                .for_each_concurrent(32, |i| {
                    let w = writer.clone();
                    async move { w.set(&format!("c{i}"), user(i as u64)).await.expect("set") }
                })
                .await;
            let next_ours = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let next_floor = Arc::new(std::sync::atomic::AtomicUsize::new(total / 2));
            let raw_redis = raw.clone();
            let kv = eb.client().kv_client();
            let redis_prefix = rb.cache_key(&cold_name, "");
            let etcd_prefix = eb.cache_prefix(&cold_name);
            let r = ratio(
                calls,
                |_| {
                    let i = next_floor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (mut conn, mut kv) = (raw_redis.clone(), kv.clone());
                    let (rk, ek) = (format!("{redis_prefix}c{i}"), format!("{etcd_prefix}c{i}"));
                    async move {
                        if label == "redis" {
                            let v: Option<Vec<u8>> = redis::cmd("GET").arg(&rk).query_async(&mut conn).await.expect("GET");
                            assert!(v.is_some());
                        } else {
                            assert_eq!(kv.get(ek, None).await.expect("range").kvs().len(), 1);
                        }
                    }
                },
                |_| {
                    let i = next_ours.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let c = reader.clone();
                    async move {
                        assert!(c.get(&format!("c{i}")).await.expect("get").is_some());
                    }
                },
            )
            .await;
            row(&format!("{label}: L2 hit of a key L1 never held vs raw read"), r);
        }

        // get_many(100) vs one MGET.
        let keys: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            redis_cache.set(k, user(i as u64)).await.expect("set");
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let raw_keys: Vec<String> = keys.iter().map(|k| rb.cache_key(&name, k)).collect();
        let r = ratio(
            1_000,
            |_| {
                let mut conn = raw.clone();
                let raw_keys = raw_keys.clone();
                async move {
                    let v: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&raw_keys).query_async(&mut conn).await.expect("MGET");
                    assert_eq!(v.len(), 100);
                }
            },
            |_| {
                let c = redis_cache.clone();
                let key_refs = key_refs.clone();
                async move {
                    c.clear_local();
                    let v = c.get_many(&key_refs).await.expect("get_many");
                    assert!(v.iter().all(Option::is_some));
                }
            },
        )
        .await;
        row("redis: get_many(100), L1 cold, vs raw MGET", r);
        let _: () = redis::cmd("PING").query_async(&mut raw).await.expect("PING");

        // Small reads beside 1 MiB values: shared multiplexed connection vs
        // the cache pool.
        for pool in [0, 4] {
            let mut s = Settings::default();
            s.cache.redis_pool_size = pool;
            let b = Arc::new(RedisBackend::connect(redis.url(), &s).await.expect("redis"));
            let (p50, p99) = small_reads_beside_large_values(b, &format!("{name}-mixed")).await;
            let how = if pool == 0 { "shared multiplexed connection".to_string() } else { format!("pool of {pool}") };
            println!("  redis: small GET beside 1 MiB values, {how:<29} p50 {p50:>10.2?}  p99 {p99:>10.2?}");
        }

        // Invalidation propagation between two instances.
        let a = cache_on(rb.clone(), &format!("{name}-prop")).await;
        let b = cache_on(rb2.clone(), &format!("{name}-prop")).await;
        let (p50, p99) = propagation(&a, &b, 300).await;
        println!("  redis: invalidation A write → B fresh read         p50 {p50:>10.2?}  p99 {p99:>10.2?}");
        let a = cache_on(eb.clone(), &format!("{name}-prop")).await;
        let b = cache_on(eb2.clone(), &format!("{name}-prop")).await;
        let (p50, p99) = propagation(&a, &b, 200).await;
        println!("  etcd: invalidation A write → B fresh read          p50 {p50:>10.2?}  p99 {p99:>10.2?}");
    });
    drop(rt);
    drop((redis, etcd));
}
