//! The config center beside its floors, on real servers:
//!
//! * `get` of a 200-byte value against a raw read of the same size (a
//!   Redis `GET`, an etcd range), interleaved rounds, median ratio;
//! * `put` against a raw write of the same size (`SET`, etcd put);
//! * put-to-watcher propagation (a `put` on one client until another
//!   client's `ConfigWatch` yields it), p50 and p99, on Redis and etcd;
//! * a `ConfigHandle` read against a plain `Arc` clone and an `ArcSwap` load.
//!
//! ```text
//! cargo bench -p coord-benches --bench config
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::Settings;
use coord::config::{ConfigBackend, ConfigCenter};
use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::RedisBackend;
use coord::redis::testkit::RedisServer;
use coord_benches::{ROUNDS, percentiles, ratio, redis_conn, row};
use tokio::runtime::Runtime;

fn value() -> String {
    format!(
        "{{\"url\":\"postgres://db.internal:5432/billing\",\"pool\":20,\"pad\":\"{}\"}}",
        "x".repeat(130)
    )
}

async fn propagation(
    writer: &ConfigCenter,
    reader: &ConfigCenter,
    rounds: u32,
) -> (Duration, Duration) {
    let ns = format!("bench{:08x}/prop", fastrand::u32(..));
    let key = format!("{ns}/k");
    let mut watch = reader.watch(&ns).await.expect("watch");
    let mut samples = Vec::new();
    for i in 0..rounds {
        let start = Instant::now();
        writer.put(&key, format!("{i}")).await.expect("put");
        loop {
            let v = watch.next().await.expect("open").expect("readable");
            if v.as_str().expect("text") == i.to_string() {
                break;
            }
        }
        samples.push(start.elapsed());
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
        let center = |b: Arc<dyn ConfigBackend>| ConfigCenter::new(b).with_author("bench");
        let r1 = center(Arc::new(RedisBackend::connect(redis.url(), &settings).await.expect("redis")));
        let r2 = center(Arc::new(RedisBackend::connect(redis.url(), &settings).await.expect("redis")));
        let e1 = center(Arc::new(EtcdBackend::connect(&etcd.url(), &settings).await.expect("etcd")));
        let e2 = center(Arc::new(EtcdBackend::connect(&etcd.url(), &settings).await.expect("etcd")));
        let ns = format!("bench{:08x}/main", fastrand::u32(..));
        let key = format!("{ns}/db");
        let v = value();

        println!("config center vs its floors (median of {ROUNDS} interleaved rounds)");
        // Redis.
        r1.put(&key, &v).await.expect("put");
        let mut raw = redis_conn(redis.url()).await;
        let _: () = redis::cmd("SET").arg("bench-raw").arg(&v).query_async(&mut raw).await.expect("SET");
        let r = ratio(
            2_000,
            |_| {
                let mut conn = raw.clone();
                async move {
                    let got: Option<Vec<u8>> = redis::cmd("GET").arg("bench-raw").query_async(&mut conn).await.expect("GET");
                    assert!(got.is_some());
                }
            },
            |_| {
                let (c, k) = (r1.clone(), key.clone());
                async move {
                    assert!(c.get(&k).await.expect("get").is_some());
                }
            },
        )
        .await;
        row("redis: get vs raw GET", r);
        let r = ratio(
            1_000,
            |_| {
                let (mut conn, v) = (raw.clone(), v.clone());
                async move {
                    let _: () = redis::cmd("SET").arg("bench-raw").arg(&v).query_async(&mut conn).await.expect("SET");
                }
            },
            |_| {
                let (c, k, v) = (r1.clone(), format!("{ns}/put"), v.clone());
                async move {
                    c.put(&k, &v).await.expect("put");
                }
            },
        )
        .await;
        row("redis: put vs raw SET", r);

        // etcd.
        e1.put(&key, &v).await.expect("put");
        let kv = etcd_client::Client::connect(etcd.endpoints(), None).await.expect("etcd").kv_client();
        kv.clone().put("bench-raw", v.clone(), None).await.expect("put");
        let r = ratio(
            1_000,
            |_| {
                let mut kv = kv.clone();
                async move {
                    assert_eq!(kv.get("bench-raw", None).await.expect("range").kvs().len(), 1);
                }
            },
            |_| {
                let (c, k) = (e1.clone(), key.clone());
                async move {
                    assert!(c.get(&k).await.expect("get").is_some());
                }
            },
        )
        .await;
        row("etcd: get vs raw range", r);
        let r = ratio(
            300,
            |_| {
                let (mut kv, v) = (kv.clone(), v.clone());
                async move {
                    kv.put("bench-raw", v, None).await.expect("put");
                }
            },
            |_| {
                let (c, k, v) = (e1.clone(), format!("{ns}/put"), v.clone());
                async move {
                    c.put(&k, &v).await.expect("put");
                }
            },
        )
        .await;
        row("etcd: put vs raw put", r);

        println!("put → another client's watch (300 rounds)");
        let (p50, p99) = propagation(&r1, &r2, 300).await;
        println!("  redis: p50 {p50:>9.2?} p99 {p99:>9.2?}");
        let (p50, p99) = propagation(&e1, &e2, 300).await;
        println!("  etcd:  p50 {p50:>9.2?} p99 {p99:>9.2?}");

        // ConfigHandle reads.
        #[derive(serde::Deserialize)]
        struct Db {
            pool: u32,
        }
        let handle = r1.handle::<Db>(&key).build().await.expect("handle");
        let plain = Arc::new(Db { pool: 20 });
        let swap = arc_swap::ArcSwap::from(plain.clone());
        const N: u32 = 2_000_000;
        let mut ratios = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(std::hint::black_box(&plain).clone().pool);
            }
            let arc = t.elapsed();
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(std::hint::black_box(&swap).load().pool);
            }
            let swap_load = t.elapsed();
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(std::hint::black_box(&handle).get().pool);
            }
            let get = t.elapsed();
            let t = Instant::now();
            for _ in 0..N {
                std::hint::black_box(std::hint::black_box(&handle).load().pool);
            }
            let load = t.elapsed();
            ratios.push((get.as_secs_f64() / arc.as_secs_f64(), load.as_secs_f64() / swap_load.as_secs_f64(), arc / N, get / N, swap_load / N, load / N));
        }
        ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rg, rl, arc, get, swap_load, load) = ratios[ROUNDS / 2];
        println!("ConfigHandle reads (median of {ROUNDS} rounds of {N})");
        println!("  handle.get() {get:?} vs Arc clone {arc:?} = {rg:.2}×; handle.load() {load:?} vs ArcSwap load {swap_load:?} = {rl:.2}×");
    });
    drop(rt);
    drop((redis, etcd));
}
