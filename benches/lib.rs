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
