//! Benchmarks of coord against the raw backend clients (see `lock.rs` and
//! `lock_kinds.rs`; run with `cargo bench -p coord-benches`): a package of
//! its own, so that building the facade's memory demo needs neither backend
//! client nor `protoc`.

/// A value no other bench owner uses.
pub fn owner_value() -> String {
    format!("bench:{:016x}", fastrand::u64(..))
}

/// A multiplexed, auto-reconnecting connection to the Redis at `url`.
pub async fn redis_conn(url: &str) -> redis::aio::ConnectionManager {
    redis::Client::open(url)
        .expect("redis url")
        .get_connection_manager()
        .await
        .expect("redis connection")
}

/// The raw floor's release: delete `KEYS[1]` only if it holds `ARGV[1]`.
pub fn compare_and_delete() -> redis::Script {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
}

/// Rounds of an interleaved comparison (floor, ours, floor, ours, …).
pub const ROUNDS: usize = 9;

/// The time per call of `f` over `n` calls (`f` gets the call's index).
pub async fn per_call<F, Fut>(n: u32, mut f: F) -> std::time::Duration
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = std::time::Instant::now();
    for i in 0..n {
        f(i).await;
    }
    start.elapsed() / n
}

/// `ours` beside `floor` in [`ROUNDS`] interleaved rounds of `n` calls each
/// (after a warm-up of `n / 4` of each), alternating which goes first: the
/// round with the median ratio, as (ours / floor, floor's time per call,
/// ours per call).
pub async fn ratio<F1, F2, Fut1, Fut2>(
    n: u32,
    mut floor: F1,
    mut ours: F2,
) -> (f64, std::time::Duration, std::time::Duration)
where
    F1: FnMut(u32) -> Fut1,
    F2: FnMut(u32) -> Fut2,
    Fut1: std::future::Future<Output = ()>,
    Fut2: std::future::Future<Output = ()>,
{
    per_call(n / 4, &mut floor).await;
    per_call(n / 4, &mut ours).await;
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let (f, o) = if round % 2 == 0 {
            let f = per_call(n, &mut floor).await;
            (f, per_call(n, &mut ours).await)
        } else {
            let o = per_call(n, &mut ours).await;
            (per_call(n, &mut floor).await, o)
        };
        rounds.push((o.as_secs_f64() / f.as_secs_f64(), f, o));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    rounds[ROUNDS / 2]
}

/// Prints one row of a [`ratio`] comparison.
pub fn row(label: &str, (r, f, o): (f64, std::time::Duration, std::time::Duration)) {
    println!("  {label:<52} {o:>10.2?} vs {f:>10.2?} = {r:.2}× time");
}

/// The p50 and p99 of `samples`.
pub fn percentiles(
    mut samples: Vec<std::time::Duration>,
) -> (std::time::Duration, std::time::Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}
