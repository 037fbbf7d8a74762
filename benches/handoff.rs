//! Grant hand-off latency of the queued kinds: how long after a release
//! the waiter it admits holds the lock. Starts its own servers. A plain
//! timed program (no criterion): it prints percentiles per backend and kind.
//!
//! ```text
//! cargo bench -p coord-benches --bench handoff
//! ```
//!
//! Eight tasks, each with its own client (like eight processes), loop over
//! one lock for a fixed window: acquire, hold 5 ms, release. A release
//! stamps the time it is sent; the next grant to a task that had to wait
//! measures the time since the latest release. Semaphore: 2 permits; read-write: every
//! fourth task writes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::RedisBackend;
use coord::redis::testkit::RedisServer;
use coord::{LockBackend, LockClient, LockKind, Settings};
use tokio::runtime::Runtime;

const TASKS: usize = 8;
const HOLD: Duration = Duration::from_millis(5);
const WINDOW: Duration = Duration::from_secs(4);

/// The hand-offs of one run, in microseconds.
async fn run(clients: &[LockClient], name: &str, kind: impl Fn(usize) -> LockKind) -> Vec<u64> {
    let last_release = Arc::new(Mutex::new(None::<Instant>));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + WINDOW;
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let lock = client
            .lock(name)
            .kind(kind(i))
            .ttl(Duration::from_secs(10))
            .poll_interval(Duration::from_millis(100))
            .build();
        let (last_release, samples) = (last_release.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let asked = Instant::now();
                let guard = lock.acquire().await.expect("acquire");
                let granted = Instant::now();
                let released = *last_release.lock().unwrap();
                // A waiter: it asked before the release that let it in.
                if let Some(r) = released
                    && r > asked
                {
                    samples
                        .lock()
                        .unwrap()
                        .push(granted.duration_since(r).as_micros() as u64);
                }
                tokio::time::sleep(HOLD).await;
                // Stamped as the release is sent: a backend that hands the
                // lock over in the release itself may grant the next waiter
                // before the releaser has its reply.
                *last_release.lock().unwrap() = Some(Instant::now());
                guard.release().await.expect("release");
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut s = samples.lock().unwrap().clone();
    s.sort_unstable();
    s
}

fn pct(s: &[u64], p: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() - 1) as f64 * p).round() as usize;
    s[i] as f64 / 1000.0
}

fn main() {
    let rt = Runtime::new().expect("runtime");
    eprintln!("starting redis-server and etcd on free loopback ports...");
    let redis = RedisServer::start().expect("redis-server (apt-get install redis-server)");
    let etcd = EtcdServer::start().expect("etcd (apt-get install etcd-server)");
    let clients = |rt: &Runtime, make: &dyn Fn() -> Arc<dyn LockBackend>| {
        let _ = rt;
        (0..TASKS)
            .map(|_| LockClient::new(make()))
            .collect::<Vec<_>>()
    };
    let redis_url = redis.url().to_owned();
    let redis_clients = clients(&rt, &|| {
        Arc::new(
            rt.block_on(RedisBackend::connect(&redis_url, &Settings::default()))
                .expect("redis"),
        )
    });
    let etcd_url = etcd.url();
    let etcd_clients = clients(&rt, &|| {
        Arc::new(
            rt.block_on(EtcdBackend::connect(&etcd_url, &Settings::default()))
                .expect("etcd"),
        )
    });
    println!(
        "grant hand-off after a release, {TASKS} tasks with their own clients, hold {HOLD:?}, {WINDOW:?} per row (ms)"
    );
    for (backend, cs) in [("redis", &redis_clients), ("etcd", &etcd_clients)] {
        type KindOf = fn(usize) -> LockKind;
        let kinds: [(&str, KindOf); 3] = [
            ("fair", |_| LockKind::Fair),
            ("semaphore(2)", |_| LockKind::Semaphore(2)),
            ("read-write (1 writer in 4)", |i| {
                if i % 4 == 0 {
                    LockKind::Write
                } else {
                    LockKind::Read
                }
            }),
        ];
        for (label, kind) in kinds {
            let name = format!("bench-handoff/{backend}/{label}");
            let s = rt.block_on(run(cs, &name, kind));
            println!(
                "  {backend:<5} {label:<28} n={:<5} p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  max {:>7.2}",
                s.len(),
                pct(&s, 0.5),
                pct(&s, 0.9),
                pct(&s, 0.99),
                pct(&s, 1.0)
            );
        }
    }
    drop((redis_clients, etcd_clients));
    drop(rt);
}
