//! The lock kinds (lease, reentrant, fair, semaphore, read, write, election)
//! on Redis and etcd beside the raw floor of benches/lock.rs, Redlock over 3
//! and 5 servers, and the throughput of 16 contenders on one key. Starts its
//! own servers through the testkit fixtures. A plain timed program (no
//! criterion): it prints one table at the end.
//!
//! ```text
//! cargo bench -p coord-benches --bench lock_kinds
//! COORD_BENCH_ONLY="redis, vs" cargo bench -p coord-benches --bench lock_kinds
//! ```
//!
//! `COORD_BENCH_ONLY=<text>` runs only the rows whose section and label
//! contain it (contention rows are "contention <label>"; their raw spin floor
//! runs whenever a row of its backend does).
//!
//! Uncontended rows: sequential acquire+release cycles on one client, each
//! workload on its own key, TTL 30 s, watchdog on (the defaults). The ratio
//! is ours/floor time per cycle, the median over interleaved rounds (floor,
//! ours, ours, floor, …) so that the drift of a shared machine cancels out;
//! the µs shown are those of the median round.
//!
//! Floors (as in benches/lock.rs): Redis `SET key val NX PX` + an EVALSHA
//! compare-and-delete; etcd a put on a long lease + a compare-value txn
//! delete.
//!
//! Contention rows: 16 tokio tasks on ONE key, each with its own connection
//! and its own `LockClient` (like 16 processes), looping acquire+release for
//! a fixed window; throughput is all their cycles over the time until the
//! last one finished. The raw contended floors spin: try once (Redis
//! `SET NX PX`; etcd a txn that puts with a lease when the key's
//! create_revision is 0), sleep 1 ms when it is taken, release as above.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::testkit::RedisServer;
use coord::redis::{RedisBackend, RedlockBackend, RedlockConfig};
use coord::{Lock, LockBackend, LockClient, Settings};
use coord_benches::{compare_and_delete, owner_value, redis_conn};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::runtime::Runtime;

/// Interleaved rounds per uncontended ratio.
const ROUNDS: usize = 9;
/// Cycles per round and workload on Redis (and Redlock).
const REDIS_OPS: u64 = 600;
/// Cycles per round and workload on etcd (a round trip costs more).
const ETCD_OPS: u64 = 200;
/// Contenders on the one key.
const CONTENDERS: usize = 16;
/// How long each contention workload runs per round.
const WINDOW: Duration = Duration::from_secs(2);
/// Contention rounds (every workload once per round, order rotated).
const CONTENTION_ROUNDS: usize = 7;
/// The TTL of every lock.
const TTL: Duration = Duration::from_secs(30);

/// One acquire+release cycle.
type Op = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn op<F, Fut>(f: F) -> Op
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// A floor and our implementation of the same work.
struct Pair {
    section: &'static str,
    label: String,
    floor: Op,
    ours: Op,
    ops: u64,
}

/// Median over interleaved rounds of ours/floor time per cycle, with the
/// floor's and our µs per cycle in that round.
fn ratio(rt: &Runtime, p: &Pair) -> (f64, f64, f64) {
    let (floor, ours) = (&p.floor, &p.ours);
    let (r, f, o) = rt.block_on(coord_benches::ratio(p.ops as u32, |_| floor(), |_| ours()));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (r, us(f), us(o))
}

/// `SET key val NX PX 30000`: whether it was set.
async fn set_nx(conn: &mut redis::aio::ConnectionManager, key: &str, val: &str) -> bool {
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(val)
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .expect("SET NX PX");
    set.is_some()
}

/// The raw Redis floor: SET NX PX, then EVALSHA compare-and-delete.
fn redis_floor(conn: redis::aio::ConnectionManager, key: String) -> Op {
    let del = compare_and_delete();
    op(move || {
        let mut conn = conn.clone();
        let del = del.clone();
        let key = key.clone();
        async move {
            let val = owner_value();
            assert!(
                set_nx(&mut conn, &key, &val).await,
                "raw lock {key} was not free"
            );
            let n: i64 = del
                .key(&key)
                .arg(&val)
                .invoke_async(&mut conn)
                .await
                .expect("EVALSHA");
            assert_eq!(n, 1);
        }
    })
}

/// The raw contended Redis floor: SET NX PX until it is set (1 ms sleep
/// between tries), then EVALSHA compare-and-delete.
fn redis_spin(conn: redis::aio::ConnectionManager, key: String) -> Op {
    let del = compare_and_delete();
    op(move || {
        let mut conn = conn.clone();
        let del = del.clone();
        let key = key.clone();
        async move {
            let val = owner_value();
            while !set_nx(&mut conn, &key, &val).await {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let n: i64 = del
                .key(&key)
                .arg(&val)
                .invoke_async(&mut conn)
                .await
                .expect("EVALSHA");
            assert_eq!(n, 1);
        }
    })
}

/// A long etcd lease for the raw floors (not kept alive; the run is shorter).
async fn etcd_raw(endpoint: &str) -> (etcd_client::Client, i64) {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("etcd connection");
    let lease = client.lease_grant(3600, None).await.expect("lease").id();
    (client, lease)
}

async fn etcd_delete_if(client: &mut etcd_client::Client, key: &str, val: &str) {
    let txn = Txn::new()
        .when([Compare::value(key, CompareOp::Equal, val)])
        .and_then([TxnOp::delete(key, None)]);
    assert!(client.txn(txn).await.expect("txn").succeeded());
}

/// The raw etcd floor: a put on the lease, then a compare-value txn delete.
fn etcd_floor(client: etcd_client::Client, lease: i64, key: String) -> Op {
    op(move || {
        let mut client = client.clone();
        let key = key.clone();
        async move {
            let val = owner_value();
            let opts = PutOptions::new().with_lease(lease);
            client
                .put(key.clone(), val.clone(), Some(opts))
                .await
                .expect("put");
            etcd_delete_if(&mut client, &key, &val).await;
        }
    })
}

/// The raw contended etcd floor: a txn that puts on the lease when the key
/// does not exist, retried after 1 ms until it succeeds; then the txn delete.
fn etcd_spin(client: etcd_client::Client, lease: i64, key: String) -> Op {
    op(move || {
        let mut client = client.clone();
        let key = key.clone();
        async move {
            let val = owner_value();
            loop {
                let opts = PutOptions::new().with_lease(lease);
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), val.clone(), Some(opts))]);
                if client.txn(txn).await.expect("txn put").succeeded() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            etcd_delete_if(&mut client, &key, &val).await;
        }
    })
}

fn lock_op(lock: Lock) -> Op {
    op(move || {
        let lock = lock.clone();
        async move {
            let guard = lock.acquire().await.expect("acquire");
            guard.release().await.expect("release");
        }
    })
}

/// Every kind on `client`, each on its own name under `prefix`.
fn kind_ops(client: &LockClient, prefix: &str) -> Vec<(&'static str, Op)> {
    let lock = |kind: &str| client.lock(format!("{prefix}/{kind}")).ttl(TTL);
    let election = client
        .election(format!("{prefix}-election"))
        .ttl(TTL)
        .build();
    vec![
        ("lease", lock_op(lock("lease").build())),
        ("reentrant", lock_op(lock("reentrant").reentrant().build())),
        ("fair", lock_op(lock("fair").fair().build())),
        (
            "semaphore(3)",
            lock_op(lock("semaphore").semaphore(3).build()),
        ),
        ("read", lock_op(lock("read").read().build())),
        ("write", lock_op(lock("write").write().build())),
        (
            "election campaign+resign",
            op(move || {
                let election = election.clone();
                async move {
                    let leadership = election.campaign("bench-node").await.expect("campaign");
                    leadership.resign().await.expect("resign");
                }
            }),
        ),
    ]
}

/// One contention workload: a cycle per contender, all on the same key.
struct Contention {
    label: &'static str,
    workers: Vec<Op>,
}

/// Cycles per second of all `workers` looping for `window`, and the fewest
/// and most cycles one of them completed.
async fn contend(workers: &[Op], window: Duration) -> (f64, u64, u64) {
    let start = Instant::now();
    let deadline = start + window;
    let tasks: Vec<_> = workers
        .iter()
        .map(|w| {
            let w = w.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    w().await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.expect("contender"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = counts.iter().sum();
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    (total as f64 / elapsed, min, max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn coord_redis_client(rt: &Runtime, url: &str) -> LockClient {
    let backend: Arc<dyn LockBackend> = Arc::new(
        rt.block_on(RedisBackend::connect(url, &Settings::default()))
            .expect("coord redis"),
    );
    LockClient::new(backend)
}

fn coord_etcd_client(rt: &Runtime, url: &str) -> LockClient {
    let backend: Arc<dyn LockBackend> = Arc::new(
        rt.block_on(EtcdBackend::connect(url, &Settings::default()))
            .expect("coord etcd"),
    );
    LockClient::new(backend)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!("starting redis-server x6 and etcd on free loopback ports...");
    let redis = RedisServer::start().expect("redis-server (apt-get install redis-server)");
    let etcd = EtcdServer::start().expect("etcd (apt-get install etcd-server)");
    // Redlock needs independent servers of its own, fresh: no quarantine.
    let redlock_servers: Vec<RedisServer> = (0..5)
        .map(|_| RedisServer::spawn().expect("redis-server for Redlock"))
        .collect();
    let etcd_url = etcd.url();
    let etcd_endpoint = etcd.endpoints()[0].clone();

    let mut pairs = Vec::new();

    // Redis: every kind vs the raw floor.
    let raw_conn = rt.block_on(redis_conn(redis.url()));
    let redis_raw = redis_floor(raw_conn.clone(), "bench:kinds:raw".into());
    let redis_client = coord_redis_client(&rt, redis.url());
    let redis_kinds = kind_ops(&redis_client, "bench-kinds");
    let redis_lease = redis_kinds[0].1.clone();
    for (kind, ours) in redis_kinds {
        pairs.push(Pair {
            section: "redis, vs raw SET NX PX + EVALSHA",
            label: kind.to_owned(),
            floor: redis_raw.clone(),
            ours,
            ops: REDIS_OPS,
        });
    }

    // etcd: every kind vs the raw floor.
    let (etcd_raw_client, etcd_lease) = rt.block_on(etcd_raw(&etcd_endpoint));
    let etcd_raw_op = etcd_floor(
        etcd_raw_client.clone(),
        etcd_lease,
        "bench/kinds/raw".into(),
    );
    let etcd_client = coord_etcd_client(&rt, &etcd_url);
    for (kind, ours) in kind_ops(&etcd_client, "bench-kinds") {
        pairs.push(Pair {
            section: "etcd, vs raw lease-put + txn delete",
            label: kind.to_owned(),
            floor: etcd_raw_op.clone(),
            ours,
            ops: ETCD_OPS,
        });
    }

    // Redlock over 3 and 5 servers.
    let mut redlock_config = RedlockConfig::default();
    redlock_config.quarantine = Some(Duration::ZERO);
    let mut redlock_ops = Vec::new();
    for n in [3, 5] {
        let urls: Vec<&str> = redlock_servers[..n].iter().map(RedisServer::url).collect();
        let backend: Arc<dyn LockBackend> = Arc::new(
            rt.block_on(RedlockBackend::connect(
                &urls,
                &Settings::default(),
                redlock_config.clone(),
            ))
            .expect("redlock"),
        );
        let client = LockClient::new(backend);
        let ours = lock_op(
            client
                .lock(format!("bench-kinds/redlock{n}"))
                .ttl(TTL)
                .build(),
        );
        pairs.push(Pair {
            section: "redlock lease lock",
            label: format!("{n} servers vs raw floor, 1 server"),
            floor: redis_raw.clone(),
            ours: ours.clone(),
            ops: REDIS_OPS,
        });
        pairs.push(Pair {
            section: "redlock lease lock",
            label: format!("{n} servers vs coord lease, 1 server"),
            floor: redis_lease.clone(),
            ours: ours.clone(),
            ops: REDIS_OPS,
        });
        redlock_ops.push(ours);
    }

    let only = std::env::var("COORD_BENCH_ONLY").ok();
    let keep = |text: &str| only.as_deref().is_none_or(|o| text.contains(o));
    pairs.retain(|p| keep(&format!("{} {}", p.section, p.label)));
    if let Some(o) = &only {
        eprintln!("COORD_BENCH_ONLY={o}: {} uncontended pairs", pairs.len());
    }
    println!(
        "\nuncontended: ours/floor time per acquire+release, sequential, one client \
         (median of {ROUNDS} interleaved rounds; {REDIS_OPS} cycles/round on redis, {ETCD_OPS} on etcd)"
    );
    let mut section = "";
    for p in &pairs {
        if p.section != section {
            section = p.section;
            println!("  {section}");
        }
        let (r, f, o) = ratio(&rt, p);
        println!(
            "    {:<38} {o:>9.1} µs vs {f:>9.1} µs = {r:>5.2}× time, {:>5.2}× throughput",
            p.label,
            1.0 / r
        );
    }

    // Redlock over 5 servers with 2 of them hung (SIGSTOP: connections
    // open, no answer) vs Redlock over the 3 live ones: an attempt should
    // cost one round trip of the live servers, not the hung ones' timeout.
    for s in &redlock_servers[3..5] {
        s.pause().expect("SIGSTOP");
    }
    let hung = Pair {
        section: "redlock lease lock, 2 of 5 servers hung",
        label: "5 servers (2 hung) vs 3 servers".to_owned(),
        floor: redlock_ops[0].clone(),
        ours: redlock_ops[1].clone(),
        ops: REDIS_OPS,
    };
    if keep(&format!("{} {}", hung.section, hung.label)) {
        let (r, f, o) = ratio(&rt, &hung);
        println!("  {}", hung.section);
        println!(
            "    {:<38} {o:>9.1} µs vs {f:>9.1} µs = {r:>5.2}× time, {:>5.2}× throughput",
            hung.label,
            1.0 / r
        );
    }
    for s in &redlock_servers[3..5] {
        s.resume().expect("SIGCONT");
    }

    // Contention: 16 contenders, each with its own connection and client.
    let mut workloads = Vec::new();
    let redis_spin_workers = (0..CONTENDERS)
        .map(|_| {
            let conn = rt.block_on(redis_conn(redis.url()));
            redis_spin(conn, "bench:kinds:contended:raw".into())
        })
        .collect();
    workloads.push(Contention {
        label: "redis raw SET NX spin (1 ms)",
        workers: redis_spin_workers,
    });
    let coord_workers = |client: &dyn Fn() -> LockClient, name: &str, fair: bool| -> Vec<Op> {
        (0..CONTENDERS)
            .map(|_| {
                let b = client().lock(name).ttl(TTL);
                lock_op(if fair { b.fair() } else { b }.build())
            })
            .collect()
    };
    let redis_new = || coord_redis_client(&rt, redis.url());
    workloads.push(Contention {
        label: "redis coord lease",
        workers: coord_workers(&redis_new, "bench-kinds/contended/lease", false),
    });
    workloads.push(Contention {
        label: "redis coord fair",
        workers: coord_workers(&redis_new, "bench-kinds/contended/fair", true),
    });
    let etcd_spin_workers = (0..CONTENDERS)
        .map(|_| {
            let (client, lease) = rt.block_on(etcd_raw(&etcd_endpoint));
            etcd_spin(client, lease, "bench/kinds/contended/raw".into())
        })
        .collect();
    workloads.push(Contention {
        label: "etcd raw txn put-if-absent spin (1 ms)",
        workers: etcd_spin_workers,
    });
    let etcd_new = || coord_etcd_client(&rt, &etcd_url);
    workloads.push(Contention {
        label: "etcd coord lease",
        workers: coord_workers(&etcd_new, "bench-kinds/contended/lease", false),
    });
    workloads.push(Contention {
        label: "etcd coord fair",
        workers: coord_workers(&etcd_new, "bench-kinds/contended/fair", true),
    });

    eprintln!(
        "contention: {} workloads x {CONTENTION_ROUNDS} rounds x {WINDOW:?}...",
        workloads.len()
    );
    let mut results: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); workloads.len()];
    // Per round, each workload against its backend's raw spin floor (index
    // 0 for redis, 3 for etcd), then the median.
    let floor_of = |i: usize| if i < 3 { 0 } else { 3 };
    let mut run = vec![false; workloads.len()];
    for (i, w) in workloads.iter().enumerate() {
        if keep(&format!("contention {}", w.label)) {
            run[i] = true;
            run[floor_of(i)] = true;
        }
    }
    rt.block_on(async {
        for (i, w) in workloads.iter().enumerate() {
            // Warm-up: connections, scripts, subscriptions.
            if run[i] {
                contend(&w.workers, Duration::from_millis(300)).await;
            }
        }
        for round in 0..CONTENTION_ROUNDS {
            for i in 0..workloads.len() {
                let i = (i + round) % workloads.len();
                if run[i] {
                    results[i].push(contend(&workloads[i].workers, WINDOW).await);
                }
            }
        }
    });
    println!(
        "\ncontention: {CONTENDERS} tasks on ONE key, each with its own connection and LockClient, \
         acquire+release loops for {WINDOW:?} (median of {CONTENTION_ROUNDS} rounds)"
    );
    for (i, w) in workloads.iter().enumerate() {
        if !run[i] {
            continue;
        }
        let ops = median(results[i].iter().map(|r| r.0).collect());
        let rel = median(
            results[i]
                .iter()
                .zip(&results[floor_of(i)])
                .map(|(o, f)| o.0 / f.0)
                .collect(),
        );
        let min = results[i].iter().map(|r| r.1).min().unwrap_or(0);
        let max = results[i].iter().map(|r| r.2).max().unwrap_or(0);
        println!(
            "    {:<40} {ops:>9.0} ops/s = {rel:>5.2}× the raw spin's throughput; \
             cycles per task per round {min}..{max}",
            w.label
        );
    }
    drop(workloads);
    drop(rt);
    drop((redis, etcd, redlock_servers));
}
