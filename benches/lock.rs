//! Lease lock acquire+release on Redis and etcd, beside the floor measured in
//! the same run: the raw backend round trips a lock needs, and etcd-client's
//! native lock/unlock. Starts its own servers through the testkit fixtures.
//!
//! ```text
//! cargo bench -p coord-benches --bench lock
//! # only the ratios of the pairs whose label contains "redis:", no criterion runs
//! COORD_BENCH_ONLY=redis: cargo bench -p coord-benches --bench lock -- none
//! ```
//!
//! Criterion reports each workload; the ratios printed at the end come from
//! interleaved rounds (floor, ours, floor, ours, …) so that the drift of a
//! shared machine cancels out, and are the median of the per-round ratios.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::testkit::RedisServer;
use coord::redis::{RedisBackend, RedlockBackend, RedlockConfig};
use coord::{AcquireOutcome, Lock, LockBackend, LockClient, LockOwner, Settings};
use coord_benches::{compare_and_delete, owner_value, redis_conn};
use criterion::Criterion;
use etcd_client::{Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
use tokio::runtime::Runtime;

/// Concurrent tasks sharing one client, each on its own key.
const TASKS: u64 = 64;
/// Interleaved rounds per ratio.
const ROUNDS: usize = 9;

/// One acquire+release cycle on the key of task `t`.
type Op = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |t| Box::pin(f(t)))
}

/// Runs `ops` cycles one after the other, or spread over [`TASKS`] tasks.
async fn run(op: &Op, ops: u64, concurrent: bool) -> Duration {
    let start = Instant::now();
    if concurrent {
        let per_task = ops.div_ceil(TASKS).max(1);
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let op = op.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        op(t).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("bench task");
        }
        start
            .elapsed()
            .mul_f64(ops as f64 / (per_task * TASKS) as f64)
    } else {
        for _ in 0..ops {
            op(0).await;
        }
        start.elapsed()
    }
}

/// A floor and our implementation of the same work.
struct Pair {
    label: &'static str,
    floor: (&'static str, Op),
    ours: (&'static str, Op),
}

fn bench(c: &mut Criterion, rt: &Runtime, pairs: &[Pair]) {
    for concurrent in [false, true] {
        let mode = if concurrent { "64tasks" } else { "seq" };
        let mut seen = std::collections::HashSet::new();
        for p in pairs {
            for (name, op) in [&p.floor, &p.ours] {
                if !seen.insert(*name) {
                    continue;
                }
                c.bench_function(&format!("{name}/{mode}"), |b| {
                    b.iter_custom(|iters| rt.block_on(run(op, iters, concurrent)))
                });
            }
        }
    }
}

/// Median over interleaved rounds of ours/floor time for the same work:
/// sequentially, the two alternate in blocks of 16 cycles within each
/// round ([`coord_benches::ratio`]); with 64 tasks, round by round.
fn ratio(rt: &Runtime, p: &Pair, concurrent: bool) -> (f64, f64, f64) {
    let ops = if concurrent { 6_400 } else { 400 };
    if !concurrent {
        let (floor, ours) = (&p.floor.1, &p.ours.1);
        let (r, f, o) = rt.block_on(coord_benches::ratio(ops as u32, |_| floor(0), |_| ours(0)));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        return (r, us(f), us(o));
    }
    rt.block_on(async {
        run(&p.floor.1, ops / 4, concurrent).await;
        run(&p.ours.1, ops / 4, concurrent).await;
        let mut rounds = Vec::new();
        for round in 0..ROUNDS {
            let (f, o) = if round % 2 == 0 {
                let f = run(&p.floor.1, ops, concurrent).await;
                (f, run(&p.ours.1, ops, concurrent).await)
            } else {
                let o = run(&p.ours.1, ops, concurrent).await;
                (run(&p.floor.1, ops, concurrent).await, o)
            };
            rounds.push((o.as_secs_f64() / f.as_secs_f64(), f, o));
        }
        rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (r, f, o) = rounds[ROUNDS / 2];
        let us = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
        (r, us(f), us(o))
    })
}

fn coord_ops(client: LockClient, prefix: &str) -> Op {
    let locks: Arc<Vec<Lock>> = Arc::new(
        (0..TASKS)
            .map(|t| client.lock(format!("{prefix}/{t}")).build())
            .collect(),
    );
    op(move |t| {
        let locks = locks.clone();
        async move {
            let guard = locks[t as usize].acquire().await.expect("acquire");
            guard.release().await.expect("release");
        }
    })
}

/// The backend's primitives called directly: the same server work as the
/// lock client, without its layer (waiting, watchdog, retries, metrics).
fn direct_ops(backend: Arc<dyn LockBackend>, prefix: &str) -> Op {
    let names: Arc<Vec<String>> = Arc::new((0..TASKS).map(|t| format!("{prefix}/{t}")).collect());
    // One owner per task, reused like the lock client reuses its owners.
    let owners: Arc<Vec<LockOwner>> = Arc::new(
        (0..TASKS)
            .map(|t| LockOwner::new("bench", &format!("task{t}")).expect("owner"))
            .collect(),
    );
    op(move |t| {
        let backend = backend.clone();
        let names = names.clone();
        let owners = owners.clone();
        async move {
            let name = &names[t as usize];
            let owner = &owners[t as usize];
            let ttl = Duration::from_secs(30);
            match backend
                .try_acquire(name, owner, ttl)
                .await
                .expect("try_acquire")
            {
                AcquireOutcome::Granted(_) => {}
                held => panic!("{name} was not free: {held:?}"),
            }
            backend.release(name, owner).await.expect("release");
        }
    })
}

/// The strongest raw floor's commands, one pair per task: `SET key val NX PX`
/// and the compare-and-delete script called by hash (loaded on every
/// connection of `conns` first, so no call meets NOSCRIPT), each built once,
/// so a cycle pays only the round trips.
fn raw_lock_cmds(
    rt: &Runtime,
    conns: &[redis::aio::ConnectionManager],
    prefix: &str,
) -> Arc<Vec<(redis::Cmd, redis::Cmd)>> {
    let del = compare_and_delete();
    for conn in conns {
        let mut conn = conn.clone();
        rt.block_on(del.load_async(&mut conn)).expect("SCRIPT LOAD");
    }
    let hash = del.get_hash();
    Arc::new(
        (0..TASKS)
            .map(|t| {
                let key = format!("{prefix}:{t}");
                let val = owner_value();
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(&val).arg("NX").arg("PX").arg(30_000);
                let mut del = redis::cmd("EVALSHA");
                del.arg(hash).arg(1).arg(&key).arg(&val);
                (set, del)
            })
            .collect(),
    )
}

fn redis_pairs(rt: &Runtime, url: &str) -> Vec<Pair> {
    let raw = rt.block_on(redis_conn(url));
    let cmds = raw_lock_cmds(rt, std::slice::from_ref(&raw), "bench:raw");
    let floor = op(move |t| {
        let mut conn = raw.clone();
        let cmds = cmds.clone();
        async move {
            let (set, del) = &cmds[t as usize];
            let reply: Option<String> = set.query_async(&mut conn).await.expect("SET NX PX");
            assert!(reply.is_some(), "raw lock {t} was not free");
            let n: i64 = del.query_async(&mut conn).await.expect("EVALSHA");
            assert_eq!(n, 1);
        }
    });
    let backend: Arc<dyn LockBackend> = Arc::new(
        rt.block_on(RedisBackend::connect(url, &Settings::default()))
            .expect("coord redis"),
    );
    let ours = coord_ops(LockClient::new(backend.clone()), "bench/coord");
    vec![
        Pair {
            label: "redis: coord lease lock vs raw SET NX PX + EVALSHA",
            floor: ("redis/raw_setnx_evalsha", floor),
            ours: ("redis/coord_lease_lock", ours.clone()),
        },
        Pair {
            label: "redis: coord lease lock vs its backend's scripts direct",
            floor: ("redis/backend_direct", direct_ops(backend, "bench/direct")),
            ours: ("redis/coord_lease_lock", ours),
        },
    ]
}

/// Redlock over three servers against the raw three-way floor: `SET NX PX`
/// on the three servers at once, then the compare-and-delete on the three
/// at once, each server's commands built once per task and all calls in
/// flight on one multiplexed connection per server.
fn redlock_pairs(rt: &Runtime, urls: &[&str]) -> Vec<Pair> {
    let conns: Vec<redis::aio::ConnectionManager> = urls
        .iter()
        .map(|url| rt.block_on(redis_conn(url)))
        .collect();
    let cmds = raw_lock_cmds(rt, &conns, "bench:raw3");
    let conns = Arc::new(conns);
    let floor = op(move |t| {
        let (conns, cmds) = (conns.clone(), cmds.clone());
        async move {
            let (set, del) = &cmds[t as usize];
            let sets = conns.iter().map(|c| {
                let mut c = c.clone();
                async move { set.query_async::<Option<String>>(&mut c).await }
            });
            for r in futures::future::join_all(sets).await {
                assert!(r.expect("SET NX PX").is_some(), "raw lock {t} was not free");
            }
            let dels = conns.iter().map(|c| {
                let mut c = c.clone();
                async move { del.query_async::<i64>(&mut c).await }
            });
            for r in futures::future::join_all(dels).await {
                assert_eq!(r.expect("EVALSHA"), 1);
            }
        }
    });
    let mut config = RedlockConfig::default();
    config.quarantine = Some(Duration::ZERO); // fresh servers
    let backend: Arc<dyn LockBackend> = Arc::new(
        rt.block_on(RedlockBackend::connect(urls, &Settings::default(), config))
            .expect("redlock"),
    );
    let ours = coord_ops(LockClient::new(backend.clone()), "bench/redlock");
    vec![
        Pair {
            label: "redlock, 3 servers: coord vs raw 3-way SET NX PX + EVALSHA",
            floor: ("redlock/raw_3way", floor),
            ours: ("redlock/coord_lease_lock", ours.clone()),
        },
        Pair {
            label: "redlock, 3 servers: coord vs its backend direct",
            floor: (
                "redlock/backend_direct",
                direct_ops(backend, "bench/redlock-direct"),
            ),
            ours: ("redlock/coord_lease_lock", ours),
        },
    ]
}

fn etcd_pairs(rt: &Runtime, url: &str, endpoint: &str) -> Vec<Pair> {
    let (raw, lease) = rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd connection");
        // Long enough for the whole run: the anchors' lease is not kept alive.
        let lease = client.lease_grant(3600, None).await.expect("lease").id();
        (client, lease)
    });
    let kv = raw.clone();
    let put_txn = op(move |t| {
        let mut client = kv.clone();
        async move {
            let key = format!("bench/raw/{t}");
            let val = owner_value();
            let opts = PutOptions::new().with_lease(lease);
            client
                .put(key.clone(), val.clone(), Some(opts))
                .await
                .expect("put");
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, val)])
                .and_then([TxnOp::delete(key, None)]);
            assert!(client.txn(txn).await.expect("txn").succeeded());
        }
    });
    let native = op(move |t| {
        let mut client = raw.clone();
        async move {
            let opts = LockOptions::new().with_lease(lease);
            let resp = client
                .lock(format!("bench/native/{t}"), Some(opts))
                .await
                .expect("native lock");
            client
                .unlock(resp.key().to_vec())
                .await
                .expect("native unlock");
        }
    });
    let backend: Arc<dyn LockBackend> = Arc::new(
        rt.block_on(EtcdBackend::connect(url, &Settings::default()))
            .expect("coord etcd"),
    );
    let ours = coord_ops(LockClient::new(backend.clone()), "bench/coord");
    vec![
        Pair {
            label: "etcd: coord lease lock vs native lock/unlock",
            floor: ("etcd/native_lock_unlock", native),
            ours: ("etcd/coord_lease_lock", ours.clone()),
        },
        Pair {
            label: "etcd: coord lease lock vs raw lease-put + txn delete",
            floor: ("etcd/raw_leaseput_txndel", put_txn),
            ours: ("etcd/coord_lease_lock", ours.clone()),
        },
        Pair {
            label: "etcd: coord lease lock vs its backend's txns direct",
            floor: ("etcd/backend_direct", direct_ops(backend, "bench/direct")),
            ours: ("etcd/coord_lease_lock", ours),
        },
    ]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    eprintln!("starting redis-server and etcd on free loopback ports...");
    let redis = RedisServer::start().expect("redis-server (apt-get install redis-server)");
    let etcd = EtcdServer::start().expect("etcd (apt-get install etcd-server)");
    let redlock_servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::spawn().expect("redis-server for Redlock"))
        .collect();
    let redlock_urls: Vec<&str> = redlock_servers.iter().map(RedisServer::url).collect();
    let mut pairs = redis_pairs(&rt, redis.url());
    pairs.extend(redlock_pairs(&rt, &redlock_urls));
    pairs.extend(etcd_pairs(&rt, &etcd.url(), &etcd.endpoints()[0]));
    // COORD_BENCH_ONLY=<text>: only the pairs whose label contains it.
    if let Ok(only) = std::env::var("COORD_BENCH_ONLY") {
        pairs.retain(|p| p.label.contains(only.as_str()));
        eprintln!("COORD_BENCH_ONLY={only}: {} pairs", pairs.len());
    }

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c, &rt, &pairs);
    c.final_summary();

    println!(
        "\nratios, ours/floor time per acquire+release (median of {ROUNDS} interleaved rounds):"
    );
    for p in &pairs {
        for concurrent in [false, true] {
            let (r, f, o) = ratio(&rt, p, concurrent);
            let mode = if concurrent {
                "64 tasks, one client"
            } else {
                "sequential"
            };
            println!(
                "  {:<54} {mode:<21} {o:>8.1} µs vs {f:>8.1} µs = {r:.2}× time, {:.2}× throughput",
                p.label,
                1.0 / r
            );
        }
    }
    drop(rt);
    drop((redis, etcd, redlock_servers));
}
