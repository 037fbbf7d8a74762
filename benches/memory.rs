//! The embedded memory backend beside in-process floors: acquire+release of
//! a lease lock through `LockClient` (tokens, TTL, `lost()`, the watchdog)
//! against the backend's own calls without the client (the calls answered
//! at once that the client makes, with a clock reading each, as the client
//! reads it), a
//! `tokio::sync::Mutex` lock/unlock and a `DashMap` insert+remove,
//! sequentially and with 64 tasks. A plain timed program (no criterion).
//!
//! ```text
//! cargo bench -p coord-benches --bench memory
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord::memory::MemoryBackend;
use coord::{AcquireOutcome, Lock, LockBackend, LockClient, LockOwner};
use dashmap::DashMap;
use tokio::runtime::Runtime;

const SEQ_OPS: u64 = 200_000;
const TASKS: u64 = 64;
const PER_TASK: u64 = 5_000;
const ROUNDS: usize = 7;
const TTL: Duration = Duration::from_secs(30);

async fn seq<F, Fut>(ops: u64, f: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..ops {
        f(i).await;
    }
    start.elapsed()
}

async fn par<F, Fut>(f: F) -> Duration
where
    F: Fn(u64, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    f(t, i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

/// One acquire+release of `name` by the backend alone: the calls answered
/// at once that `LockClient` makes for an in-process backend, each at a
/// clock reading of its own.
fn backend_cycle(b: &MemoryBackend, name: &str, owner: &LockOwner) {
    let now = tokio::time::Instant::now();
    match b.try_acquire_now(name, owner, TTL, now) {
        Some(Ok(AcquireOutcome::Granted(_))) => {}
        other => panic!("acquire: {other:?}"),
    }
    let now = tokio::time::Instant::now();
    b.release_now(name, owner, now)
        .expect("answered at once")
        .expect("release");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = Runtime::new().expect("runtime");
    let client = LockClient::new(Arc::new(MemoryBackend::new()));
    let locks: Arc<Vec<Lock>> = Arc::new(
        (0..TASKS)
            .map(|t| client.lock(format!("bench/mem/{t}")).build())
            .collect(),
    );
    let mutex = Arc::new(tokio::sync::Mutex::new(0u64));
    let map: Arc<DashMap<String, u64>> = Arc::new(DashMap::new());
    let keys: Arc<Vec<String>> = Arc::new((0..TASKS).map(|t| format!("bench/mem/{t}")).collect());

    let backend = Arc::new(MemoryBackend::new());
    let owner = LockOwner::new("bench", "raw").expect("owner");
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("coord memory lease lock", Vec::new(), Vec::new()),
        ("MemoryBackend calls (no client)", Vec::new(), Vec::new()),
        ("tokio::sync::Mutex lock/unlock", Vec::new(), Vec::new()),
        ("DashMap insert+remove", Vec::new(), Vec::new()),
    ];
    rt.block_on(async {
        for _ in 0..ROUNDS {
            let l = locks.clone();
            let d = seq(SEQ_OPS, |_| {
                let l = l.clone();
                async move {
                    let g = l[0].acquire().await.expect("acquire");
                    g.release().await.expect("release");
                }
            })
            .await;
            rows[0].1.push(d.as_nanos() as f64 / SEQ_OPS as f64);
            let (b, o, k) = (backend.clone(), owner.clone(), keys.clone());
            let d = seq(SEQ_OPS, |_| {
                let (b, o, k) = (b.clone(), o.clone(), k.clone());
                async move { backend_cycle(&b, &k[0], &o) }
            })
            .await;
            rows[1].1.push(d.as_nanos() as f64 / SEQ_OPS as f64);
            let m = mutex.clone();
            let d = seq(SEQ_OPS, |_| {
                let m = m.clone();
                async move {
                    *m.lock().await += 1;
                }
            })
            .await;
            rows[2].1.push(d.as_nanos() as f64 / SEQ_OPS as f64);
            let (mp, k) = (map.clone(), keys.clone());
            let d = seq(SEQ_OPS, |i| {
                let (mp, k) = (mp.clone(), k.clone());
                async move {
                    mp.insert(k[0].clone(), i);
                    mp.remove(&k[0]);
                }
            })
            .await;
            rows[3].1.push(d.as_nanos() as f64 / SEQ_OPS as f64);

            let total = (TASKS * PER_TASK) as f64;
            let l = locks.clone();
            let d = par(move |t, _| {
                let l = l.clone();
                async move {
                    let g = l[t as usize].acquire().await.expect("acquire");
                    g.release().await.expect("release");
                }
            })
            .await;
            rows[0].2.push(total / d.as_secs_f64());
            let (b, o, k) = (backend.clone(), owner.clone(), keys.clone());
            let d = par(move |t, _| {
                let (b, o, k) = (b.clone(), o.clone(), k.clone());
                async move { backend_cycle(&b, &k[t as usize], &o) }
            })
            .await;
            rows[1].2.push(total / d.as_secs_f64());
            let m = mutex.clone();
            let d = par(move |_, _| {
                let m = m.clone();
                async move {
                    *m.lock().await += 1;
                }
            })
            .await;
            rows[2].2.push(total / d.as_secs_f64());
            let (mp, k) = (map.clone(), keys.clone());
            let d = par(move |t, i| {
                let (mp, k) = (mp.clone(), k.clone());
                async move {
                    mp.insert(k[t as usize].clone(), i);
                    mp.remove(&k[t as usize]);
                }
            })
            .await;
            rows[3].2.push(total / d.as_secs_f64());
        }
    });
    println!("memory backend vs in-process floors (median of {ROUNDS} rounds)");
    let coord_seq = median(rows[0].1.clone());
    let coord_par = median(rows[0].2.clone());
    for (label, s, p) in &rows {
        let (s, p) = (median(s.clone()), median(p.clone()));
        println!(
            "  {label:<34} sequential {s:>7.0} ns/op (coord = {:>5.1}x)   64 tasks {:>9.0} ops/s (coord = {:>5.2}x)",
            coord_seq / s,
            p,
            coord_par / p
        );
    }
}
