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
    calls(0..n, &mut f).await / n.max(1)
}

/// The total time of `f` over the call indexes in `range`.
async fn calls<F, Fut>(range: std::ops::Range<u32>, f: &mut F) -> std::time::Duration
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = std::time::Instant::now();
    for i in range {
        f(i).await;
    }
    start.elapsed()
}

/// Calls per block of a [`ratio`] round: small enough that a burst of
/// machine noise (another process, a page-cache flush) lands on both sides
/// alike, large enough that reading the clock costs nothing measurable.
const BLOCK: u32 = 16;

/// `ours` beside `floor` in [`ROUNDS`] rounds of `n` calls each (after a
/// warm-up of `n / 4` of each). Within a round the two alternate in blocks
/// of 16 calls (floor, ours, ours, floor, …), so that noise on this 2-core
/// machine is shared instead of landing on whichever side ran during it.
/// Returns the round with the median ratio, as (ours / floor, floor's time
/// per call, ours per call).
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
    let n = n.max(1);
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let (mut f, mut o) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        let mut start = 0;
        let mut block = round as u32;
        while start < n {
            let range = start..(start + BLOCK).min(n);
            if block.is_multiple_of(2) {
                f += calls(range.clone(), &mut floor).await;
                o += calls(range.clone(), &mut ours).await;
            } else {
                o += calls(range.clone(), &mut ours).await;
                f += calls(range.clone(), &mut floor).await;
            }
            start = range.end;
            block += 1;
        }
        rounds.push((o.as_secs_f64() / f.as_secs_f64(), f / n, o / n));
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
