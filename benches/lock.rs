//! Lease lock acquire+release on Redis and etcd, beside the floor measured in
//! the same run: the raw backend round trips a lock needs, and etcd-client's
//! native lock/unlock. Starts its own servers through the testkit fixtures and
//! prints the ratios at the end.
//!
//! ```text
//! cargo bench --bench lock --features full,testkit
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::RedisBackend;
use coord::redis::testkit::RedisServer;
use coord::{Lock, LockClient, Settings};
use criterion::Criterion;
use etcd_client::{Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
use tokio::runtime::Runtime;

/// Concurrent tasks sharing one client, each on its own key.
const TASKS: u64 = 64;

/// Nanoseconds per operation of every sample, by benchmark name.
#[derive(Default)]
struct Samples(Mutex<BTreeMap<String, Vec<f64>>>);

impl Samples {
    fn record(&self, name: &str, elapsed: Duration, ops: u64) {
        let per_op = elapsed.as_nanos() as f64 / ops.max(1) as f64;
        let mut m = self.0.lock().unwrap();
        m.entry(name.to_owned()).or_default().push(per_op);
    }

    fn median(&self, name: &str) -> Option<f64> {
        let m = self.0.lock().unwrap();
        let mut v = m.get(name)?.clone();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

/// Benchmarks `op` run sequentially, `iters` times per sample.
fn sequential<F, Fut>(c: &mut Criterion, rt: &Runtime, samples: &Samples, name: &str, op: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    op(i).await;
                }
                start.elapsed()
            });
            samples.record(name, elapsed, iters);
            elapsed
        })
    });
}

/// Benchmarks `op` run by [`TASKS`] concurrent tasks (task index passed),
/// reporting time per operation (the inverse of throughput).
fn concurrent<F, Fut>(c: &mut Criterion, rt: &Runtime, samples: &Samples, name: &str, op: F)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(TASKS).max(1);
            let elapsed = rt.block_on(async {
                let start = Instant::now();
                let mut tasks = Vec::new();
                for t in 0..TASKS {
                    let op = op.clone();
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..per_task {
                            op(t).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("bench task");
                }
                start.elapsed()
            });
            samples.record(name, elapsed, per_task * TASKS);
            elapsed.mul_f64(iters as f64 / (per_task * TASKS) as f64)
        })
    });
}

fn owner_value(i: u64) -> String {
    format!("bench:{:016x}{i}", fastrand::u64(..))
}

async fn lock_cycle(lock: &Lock) {
    let guard = lock.acquire().await.expect("acquire");
    guard.release().await.expect("release");
}

fn redis_benches(c: &mut Criterion, rt: &Runtime, samples: &Samples, url: &str) {
    let settings = Settings::default();
    let raw = rt.block_on(async {
        redis::Client::open(url)
            .expect("redis url")
            .get_connection_manager()
            .await
            .expect("redis connection")
    });
    let del = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    );
    let raw_cycle = move |key: String| {
        let mut conn = raw.clone();
        let del = del.clone();
        async move {
            let val = owner_value(0);
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&val)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut conn)
                .await
                .expect("SET NX PX");
            assert!(set.is_some(), "raw lock {key} was not free");
            let n: i64 = del
                .key(&key)
                .arg(&val)
                .invoke_async(&mut conn)
                .await
                .expect("EVALSHA");
            assert_eq!(n, 1);
        }
    };
    let client = rt.block_on(async {
        LockClient::new(Arc::new(
            RedisBackend::connect(url, &settings)
                .await
                .expect("coord redis"),
        ))
    });
    let locks: Arc<Vec<Lock>> = Arc::new(
        (0..TASKS)
            .map(|t| client.lock(format!("bench/coord/{t}")).build())
            .collect(),
    );

    let r = raw_cycle.clone();
    sequential(c, rt, samples, "redis/raw_setnx_evalsha/seq", move |_| {
        r("bench:raw:seq".into())
    });
    let l = locks.clone();
    sequential(c, rt, samples, "redis/coord_lease_lock/seq", move |_| {
        let l = l.clone();
        async move { lock_cycle(&l[0]).await }
    });
    let r = raw_cycle.clone();
    concurrent(
        c,
        rt,
        samples,
        "redis/raw_setnx_evalsha/64tasks",
        move |t| r(format!("bench:raw:{t}")),
    );
    let l = locks.clone();
    concurrent(c, rt, samples, "redis/coord_lease_lock/64tasks", move |t| {
        let l = l.clone();
        async move { lock_cycle(&l[t as usize]).await }
    });
}

fn etcd_benches(c: &mut Criterion, rt: &Runtime, samples: &Samples, url: &str, endpoint: &str) {
    let settings = Settings::default();
    let (raw, lease) = rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd connection");
        let lease = client.lease_grant(30, None).await.expect("lease").id();
        (client, lease)
    });
    let raw_cycle = {
        let raw = raw.clone();
        move |key: String| {
            let mut client = raw.clone();
            async move {
                let val = owner_value(0);
                client
                    .put(
                        key.clone(),
                        val.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                    .await
                    .expect("put");
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, val)])
                    .and_then([TxnOp::delete(key, None)]);
                assert!(client.txn(txn).await.expect("txn").succeeded());
            }
        }
    };
    let native_cycle = {
        let raw = raw.clone();
        move |key: String| {
            let mut client = raw.clone();
            async move {
                let resp = client
                    .lock(key, Some(LockOptions::new().with_lease(lease)))
                    .await
                    .expect("native lock");
                client
                    .unlock(resp.key().to_vec())
                    .await
                    .expect("native unlock");
            }
        }
    };
    let client = rt.block_on(async {
        LockClient::new(Arc::new(
            EtcdBackend::connect(url, &settings)
                .await
                .expect("coord etcd"),
        ))
    });
    let locks: Arc<Vec<Lock>> = Arc::new(
        (0..TASKS)
            .map(|t| client.lock(format!("bench/coord/{t}")).build())
            .collect(),
    );

    let r = raw_cycle.clone();
    sequential(c, rt, samples, "etcd/raw_leaseput_txndel/seq", move |_| {
        r("bench/raw/seq".into())
    });
    let n = native_cycle.clone();
    sequential(c, rt, samples, "etcd/native_lock_unlock/seq", move |_| {
        n("bench/native/seq".into())
    });
    let l = locks.clone();
    sequential(c, rt, samples, "etcd/coord_lease_lock/seq", move |_| {
        let l = l.clone();
        async move { lock_cycle(&l[0]).await }
    });
    let r = raw_cycle.clone();
    concurrent(
        c,
        rt,
        samples,
        "etcd/raw_leaseput_txndel/64tasks",
        move |t| r(format!("bench/raw/{t}")),
    );
    let n = native_cycle.clone();
    concurrent(
        c,
        rt,
        samples,
        "etcd/native_lock_unlock/64tasks",
        move |t| n(format!("bench/native/{t}")),
    );
    let l = locks.clone();
    concurrent(c, rt, samples, "etcd/coord_lease_lock/64tasks", move |t| {
        let l = l.clone();
        async move { lock_cycle(&l[t as usize]).await }
    });
}

fn ratio(samples: &Samples, label: &str, ours: &str, floor: &str) {
    match (samples.median(ours), samples.median(floor)) {
        (Some(o), Some(f)) => println!(
            "{label:<58} {:>9.1} µs vs {:>9.1} µs  = {:.2}× time, {:.2}× throughput",
            o / 1e3,
            f / 1e3,
            o / f,
            f / o
        ),
        _ => println!("{label:<58} (not measured: filtered out)"),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!("starting redis-server and etcd on free loopback ports...");
    let redis = RedisServer::start().expect("redis-server (apt-get install redis-server)");
    let etcd = EtcdServer::start().expect("etcd (apt-get install etcd-server)");
    let samples = Samples::default();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    redis_benches(&mut c, &rt, &samples, redis.url());
    etcd_benches(&mut c, &rt, &samples, &etcd.url(), &etcd.endpoints()[0]);
    c.final_summary();

    println!("\nratios (median time per acquire+release; lower time is better):");
    ratio(
        &samples,
        "redis coord vs raw SET NX PX + EVALSHA, sequential",
        "redis/coord_lease_lock/seq",
        "redis/raw_setnx_evalsha/seq",
    );
    ratio(
        &samples,
        "redis coord vs raw, 64 tasks on one client",
        "redis/coord_lease_lock/64tasks",
        "redis/raw_setnx_evalsha/64tasks",
    );
    ratio(
        &samples,
        "etcd coord vs native lock/unlock, sequential",
        "etcd/coord_lease_lock/seq",
        "etcd/native_lock_unlock/seq",
    );
    ratio(
        &samples,
        "etcd coord vs native lock/unlock, 64 tasks",
        "etcd/coord_lease_lock/64tasks",
        "etcd/native_lock_unlock/64tasks",
    );
    ratio(
        &samples,
        "etcd coord vs raw lease-put + txn delete, sequential",
        "etcd/coord_lease_lock/seq",
        "etcd/raw_leaseput_txndel/seq",
    );
    ratio(
        &samples,
        "etcd coord vs raw, 64 tasks",
        "etcd/coord_lease_lock/64tasks",
        "etcd/raw_leaseput_txndel/64tasks",
    );
    drop(rt);
    drop((redis, etcd));
}
