//! The cache conformance suite: every case runs unchanged on every backend.
//!
//! Each case takes a [`CacheHarness`] and panics with a message on failure.
//! [`cache_conformance_tests!`](crate::cache_conformance_tests) expands them
//! into one named test per case, `conformance_cache_<case>_<backend>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::cache::{CacheBackend, CacheBuilder, CacheCodec, MultiLevelCache};
use crate::error::Error;
use crate::health::HealthStatus;
use crate::testkit::within;

/// How the suite reaches the backend under test.
#[async_trait::async_trait]
pub trait CacheHarness: Send + Sync + 'static {
    /// A new, independent client of the backend under test (its own
    /// connections), sharing the store with every other client it made.
    async fn new_cache_backend(&self) -> Arc<dyn CacheBackend>;

    /// A new, independent lock client of the same backend, for the loads
    /// that are single-flight across processes; `None` fails that case.
    async fn new_lock_backend(&self) -> Option<Arc<dyn crate::lock::LockBackend>> {
        None
    }
}

/// The suite over a [`ShardedCacheBackend`](crate::cache::ShardedCacheBackend)
/// of several harnesses' backends (one shard each, named `shard-{i}`).
pub struct ShardedCacheHarness {
    shards: Vec<Box<dyn CacheHarness>>,
}

impl std::fmt::Debug for ShardedCacheHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedCacheHarness")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl ShardedCacheHarness {
    /// A harness whose backends shard over one backend of each of `shards`.
    pub fn new(shards: Vec<Box<dyn CacheHarness>>) -> Self {
        ShardedCacheHarness { shards }
    }
}

#[async_trait::async_trait]
impl CacheHarness for ShardedCacheHarness {
    async fn new_cache_backend(&self) -> Arc<dyn CacheBackend> {
        let mut shards = Vec::new();
        for (i, h) in self.shards.iter().enumerate() {
            shards.push((format!("shard-{i}"), h.new_cache_backend().await));
        }
        Arc::new(crate::cache::ShardedCacheBackend::new(shards).expect("shards"))
    }

    async fn new_lock_backend(&self) -> Option<Arc<dyn crate::lock::LockBackend>> {
        self.shards.first()?.new_lock_backend().await
    }
}

/// Every case's name, in the order the macro expands them.
pub const CASES: &[&str] = &[
    "missing_key_is_none",
    "set_then_get_round_trips",
    "get_many_is_in_order",
    "overwrite_replaces_the_value",
    "delete_removes_and_reports",
    "exists_follows_the_value",
    "values_expire_after_their_ttl",
    "caches_are_namespaced",
    "bad_input_is_invalid_argument",
    "a_write_invalidates_other_instances",
    "a_delete_invalidates_other_instances",
    "concurrent_loads_share_one_flight",
    "loads_are_single_flight_across_processes",
    "warm_loads_missing_keys_with_progress",
    "refresh_ahead_reloads_hot_keys_before_expiry",
    "a_load_does_not_overwrite_a_write_made_meanwhile",
    "a_bloom_filter_turns_away_unknown_keys",
    "a_failed_load_fails_every_waiter_and_is_not_cached",
    "a_panicking_loader_is_an_error",
    "not_found_is_remembered",
    "a_corrupted_value_is_a_codec_error_and_a_miss",
    "a_codec_mismatch_is_a_clear_error",
    "large_values_are_stored_compressed",
    "health_reports_healthy",
];

/// How long an invalidation may take to reach another instance in a test.
const PROPAGATION: Duration = Duration::from_secs(5);

/// A cache name no other test uses.
fn unique_cache(case: &str) -> String {
    format!("conformance-{case}-{:016x}", fastrand::u64(..))
}

async fn cache<T>(backend: Arc<dyn CacheBackend>, name: &str) -> MultiLevelCache<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let c = CacheBuilder::new(backend, name)
        .ttl(Duration::from_secs(60))
        .build::<T>()
        .expect("build the cache");
    within(PROPAGATION, "the cache's invalidations flow", c.ready()).await;
    c
}

/// Polls `check` until it holds or `limit` passes (then fails with `what`).
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `c` has received `n` invalidations (a write's own message
/// may reach another instance after that instance read the new value,
/// and then rightly evicts it: tests that count L1 hits wait for it first).
async fn delivered<T>(c: &MultiLevelCache<T>, n: u64)
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    eventually(PROPAGATION, "the invalidation is delivered", || async {
        c.stats().invalidations_received >= n
    })
    .await;
}

/// A key nobody wrote reads as `None` at every level.
pub async fn missing_key_is_none(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let name = unique_cache("missing");
    assert_eq!(b.get(&name, "nobody").await.expect("get"), None);
    let c = cache::<String>(b, &name).await;
    assert_eq!(c.get("nobody").await.expect("get"), None);
    assert_eq!(c.stats().misses, 1);
}

/// A typed value comes back equal, from L2 on another instance and from L1
/// on the writer.
pub async fn set_then_get_round_trips(h: &dyn CacheHarness) {
    let name = unique_cache("roundtrip");
    let a = cache::<Vec<u32>>(h.new_cache_backend().await, &name).await;
    let b = cache::<Vec<u32>>(h.new_cache_backend().await, &name).await;
    a.set("k", vec![1, 2, 3]).await.expect("set");
    delivered(&b, 1).await;
    assert_eq!(
        *b.get("k").await.expect("get").expect("present"),
        vec![1, 2, 3]
    );
    assert_eq!(b.stats().l2_hits, 1);
    assert_eq!(
        *b.get("k").await.expect("get").expect("present"),
        vec![1, 2, 3]
    );
    assert_eq!(b.stats().l1_hits, 1, "the second read is served by L1");
    assert_eq!(
        *a.get("k").await.expect("get").expect("present"),
        vec![1, 2, 3]
    );
    assert_eq!(a.stats().l1_hits, 1, "the writer keeps what it wrote in L1");
}

/// `get_many` answers every key, in the order asked, missing ones as `None`.
pub async fn get_many_is_in_order(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let name = unique_cache("many");
    let entries: Vec<(String, Bytes)> = (0..20)
        .map(|i| (format!("k{i}"), Bytes::from(format!("v{i}"))))
        .collect();
    let refs: Vec<(&str, Bytes)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    b.set_many(&name, &refs, Duration::from_secs(60), "t")
        .await
        .expect("set_many");
    let keys = ["k3", "absent", "k0", "k19"];
    let got = b.get_many(&name, &keys).await.expect("get_many");
    assert_eq!(
        got,
        vec![
            Some(Bytes::from("v3")),
            None,
            Some(Bytes::from("v0")),
            Some(Bytes::from("v19"))
        ]
    );
    let c = cache::<u64>(h.new_cache_backend().await, &name).await;
    c.set("a", 1).await.expect("set");
    c.set("b", 2).await.expect("set");
    let typed = c.get_many(&["b", "none", "a"]).await.expect("get_many");
    let typed: Vec<Option<u64>> = typed.into_iter().map(|v| v.map(|v| *v)).collect();
    assert_eq!(typed, vec![Some(2), None, Some(1)]);
}

/// A second write replaces the first everywhere.
pub async fn overwrite_replaces_the_value(h: &dyn CacheHarness) {
    let name = unique_cache("overwrite");
    let a = cache::<String>(h.new_cache_backend().await, &name).await;
    a.set("k", "one".into()).await.expect("set");
    a.set("k", "two".into()).await.expect("set");
    assert_eq!(
        a.get("k")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("two")
    );
    let b = cache::<String>(h.new_cache_backend().await, &name).await;
    assert_eq!(
        b.get("k")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("two")
    );
}

/// `delete` removes the value and says whether there was one;
/// `delete_many` counts what existed.
pub async fn delete_removes_and_reports(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let name = unique_cache("delete");
    let c = cache::<u8>(b.clone(), &name).await;
    c.set("k", 1).await.expect("set");
    assert!(c.delete("k").await.expect("delete"));
    assert!(!c.delete("k").await.expect("delete again"));
    assert_eq!(c.get("k").await.expect("get"), None);
    let v = Bytes::from_static(b"x");
    b.set_many(
        &name,
        &[("a", v.clone()), ("b", v)],
        Duration::from_secs(60),
        "t",
    )
    .await
    .expect("set_many");
    assert_eq!(
        b.delete_many(&name, &["a", "b", "c"], "t")
            .await
            .expect("delete_many"),
        2
    );
    assert_eq!(
        b.get_many(&name, &["a", "b"]).await.expect("get_many"),
        vec![None, None]
    );
}

/// `exists` is true exactly while a value is stored.
pub async fn exists_follows_the_value(h: &dyn CacheHarness) {
    let name = unique_cache("exists");
    let c = cache::<u8>(h.new_cache_backend().await, &name).await;
    assert!(!c.exists("k").await.expect("exists"));
    c.set("k", 1).await.expect("set");
    assert!(c.exists("k").await.expect("exists"));
    c.delete("k").await.expect("delete");
    assert!(!c.exists("k").await.expect("exists"));
}

/// A value is gone after its TTL (within the backend's rounding).
pub async fn values_expire_after_their_ttl(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let name = unique_cache("ttl");
    b.set(
        &name,
        "k",
        Bytes::from_static(b"v"),
        Duration::from_millis(500),
        "t",
    )
    .await
    .expect("set");
    assert!(
        b.exists(&name, "k").await.expect("exists"),
        "present right after the write"
    );
    // etcd rounds TTLs up to whole seconds (at least 2 s) and expires
    // leases on its own schedule.
    eventually(Duration::from_secs(8), "the value expires", || {
        let b = b.clone();
        let name = name.clone();
        async move { b.get(&name, "k").await.expect("get").is_none() }
    })
    .await;
}

/// One key in two caches holds two values.
pub async fn caches_are_namespaced(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let (n1, n2) = (unique_cache("ns1"), unique_cache("ns2"));
    let c1 = cache::<u8>(b.clone(), &n1).await;
    let c2 = cache::<u8>(b, &n2).await;
    c1.set("k", 1).await.expect("set");
    c2.set("k", 2).await.expect("set");
    c1.clear_local();
    c2.clear_local();
    assert_eq!(c1.get("k").await.expect("get").map(|v| *v), Some(1));
    assert_eq!(c2.get("k").await.expect("get").map(|v| *v), Some(2));
    c1.delete("k").await.expect("delete");
    assert_eq!(c2.get("k").await.expect("get").map(|v| *v), Some(2));
}

/// Empty and oversized keys, bad names, zero and tiny TTLs and values over
/// the backend's limit are refused with `InvalidArgument`, storing nothing.
pub async fn bad_input_is_invalid_argument(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let name = unique_cache("bad");
    let c = cache::<String>(b.clone(), &name).await;
    let invalid = |r: crate::error::Result<()>, what: &str| match r {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    };
    invalid(c.set("", "v".into()).await, "empty key");
    invalid(
        c.set(&"k".repeat(crate::cache::MAX_CACHE_KEY_LEN + 1), "v".into())
            .await,
        "huge key",
    );
    invalid(c.set("nul\0key", "v".into()).await, "NUL in key");
    invalid(
        c.set_with_ttl("k", "v".into(), Duration::ZERO).await,
        "zero TTL",
    );
    invalid(
        c.set_with_ttl("k", "v".into(), Duration::from_micros(5))
            .await,
        "TTL under 1 ms",
    );
    assert!(
        matches!(c.get("").await, Err(Error::InvalidArgument(_))),
        "empty key on get"
    );
    for bad in ["", "a/b"] {
        assert!(
            matches!(
                CacheBuilder::new(b.clone(), bad).build::<u8>(),
                Err(Error::InvalidArgument(_))
            ),
            "cache name {bad:?}"
        );
    }
    assert!(matches!(
        CacheBuilder::new(b.clone(), "ok")
            .ttl(Duration::ZERO)
            .build::<u8>(),
        Err(Error::InvalidArgument(_))
    ));
    let max = b.max_value_bytes();
    if max <= 16 << 20 {
        // Incompressible, so the stored form is over the limit too.
        let big: String = (0..max + 1).map(|_| fastrand::alphanumeric()).collect();
        invalid(c.set("big", big).await, "value over the backend's limit");
    }
    assert!(
        !c.exists("big").await.expect("exists"),
        "nothing was stored"
    );
    assert!(!c.exists("k").await.expect("exists"), "nothing was stored");
}

/// A write through one instance evicts the key from another instance's L1:
/// its next read returns the new value within the propagation bound.
pub async fn a_write_invalidates_other_instances(h: &dyn CacheHarness) {
    let name = unique_cache("invalidate");
    let a = cache::<u32>(h.new_cache_backend().await, &name).await;
    let b = cache::<u32>(h.new_cache_backend().await, &name).await;
    a.set("k", 1).await.expect("set");
    delivered(&b, 1).await;
    assert_eq!(b.get("k").await.expect("get").map(|v| *v), Some(1));
    assert_eq!(b.get("k").await.expect("get").map(|v| *v), Some(1));
    assert_eq!(b.stats().l1_hits, 1, "B holds the value in L1");
    a.set("k", 2).await.expect("overwrite");
    eventually(PROPAGATION, "B sees the new value", || {
        let b = b.clone();
        async move { b.get("k").await.expect("get").map(|v| *v) == Some(2) }
    })
    .await;
    assert!(b.stats().invalidations_received >= 1);
}

/// A delete through one instance evicts the key from another's L1.
pub async fn a_delete_invalidates_other_instances(h: &dyn CacheHarness) {
    let name = unique_cache("invalidate-del");
    let a = cache::<u32>(h.new_cache_backend().await, &name).await;
    let b = cache::<u32>(h.new_cache_backend().await, &name).await;
    a.set("k", 1).await.expect("set");
    assert_eq!(b.get("k").await.expect("get").map(|v| *v), Some(1));
    a.delete("k").await.expect("delete");
    eventually(PROPAGATION, "B sees the delete", || {
        let b = b.clone();
        async move { b.get("k").await.expect("get").is_none() }
    })
    .await;
}

/// 200 concurrent `get_or_load` of a cold key run the loader once, and
/// every caller gets its value.
pub async fn concurrent_loads_share_one_flight(h: &dyn CacheHarness) {
    let name = unique_cache("flight");
    let c = cache::<String>(h.new_cache_backend().await, &name).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move {
                c.get_or_load("cold", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Long enough for every caller to join the flight.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(Some("loaded".to_string()))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        let v = t.await.expect("task").expect("get_or_load");
        assert_eq!(v.as_deref().map(String::as_str), Some("loaded"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load for 200 callers");
    assert_eq!(c.stats().loads, 1);
    let other = cache::<String>(h.new_cache_backend().await, &name).await;
    assert_eq!(
        other
            .get("cold")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("loaded"),
        "the loaded value was stored in L2"
    );
}

/// Two instances on independent connections, both with a load lock: 100
/// concurrent `get_or_load`s of a cold key on each run the loader once in all.
pub async fn loads_are_single_flight_across_processes(h: &dyn CacheHarness) {
    let name = unique_cache("flight-x");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let locks = h
            .new_lock_backend()
            .await
            .expect("this case needs the harness's lock backend (CacheHarness::new_lock_backend)");
        let c = CacheBuilder::new(h.new_cache_backend().await, &name)
            .load_lock(crate::lock::LockClient::new(locks), Duration::from_secs(20))
            .build::<String>()
            .expect("build");
        within(PROPAGATION, "the cache's invalidations flow", c.ready()).await;
        for _ in 0..100 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_load("cold", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(Some("loaded once".to_string()))
                })
                .await
            }));
        }
    }
    for t in tasks {
        let v = t.await.expect("task").expect("get_or_load");
        assert_eq!(v.as_deref().map(String::as_str), Some("loaded once"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one load for 200 callers in two processes"
    );
}

/// `warm` loads what is missing, counts what fails, and reports progress
/// up to 100 %.
pub async fn warm_loads_missing_keys_with_progress(h: &dyn CacheHarness) {
    let name = unique_cache("warm");
    let c = cache::<u64>(h.new_cache_backend().await, &name).await;
    c.set("k0", 0).await.expect("set");
    let keys: Vec<String> = (0..50)
        .map(|i| format!("k{i}"))
        .chain(["".to_string()])
        .collect();
    let mut seen = Vec::new();
    let report = c
        .warm(
            keys,
            8,
            |key| async move {
                if key == "k13" {
                    return Err(Error::unavailable("the source is down for k13", None));
                }
                Ok(Some(key[1..].parse::<u64>().unwrap_or(0)))
            },
            |p| seen.push(*p),
        )
        .await
        .expect("warm");
    assert_eq!((report.keys, report.done), (51, 51));
    assert_eq!(
        report.loaded, 49,
        "k0 was cached; the empty key never reached the loader"
    );
    assert_eq!(report.failed, 2, "k13 and the empty key");
    assert_eq!(
        seen.last().map(|p| p.done),
        Some(51),
        "progress reached the end"
    );
    assert!(
        seen.windows(2).all(|w| w[0].done < w[1].done),
        "progress only moves forward"
    );
    assert_eq!(c.get("k42").await.expect("get").map(|v| *v), Some(42));
    assert!(matches!(
        c.warm(Vec::<String>::new(), 0, |_| async { Ok(None) }, |_| {})
            .await,
        Err(Error::InvalidArgument(_))
    ));
}

/// With refresh-ahead, a hot key read through `get_or_refresh` is reloaded
/// in the background once past the refresh point: readers keep getting the
/// old value meanwhile (never a miss), then the new one.
pub async fn refresh_ahead_reloads_hot_keys_before_expiry(h: &dyn CacheHarness) {
    let name = unique_cache("refresh");
    let c = CacheBuilder::new(h.new_cache_backend().await, &name)
        .ttl(Duration::from_secs(3))
        .l1_ttl(Duration::from_secs(3))
        .jitter(0.0)
        .refresh_ahead(0.3)
        .build::<u32>()
        .expect("build");
    within(PROPAGATION, "the cache's invalidations flow", c.ready()).await;
    let version = Arc::new(AtomicUsize::new(1));
    let loads = Arc::new(AtomicUsize::new(0));
    let load = |version: Arc<AtomicUsize>, loads: Arc<AtomicUsize>| async move {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok(Some(version.load(Ordering::SeqCst) as u32))
    };
    let first = c
        .get_or_refresh("hot", {
            let (v, l) = (version.clone(), loads.clone());
            move || load(v, l)
        })
        .await
        .expect("first load");
    assert_eq!(first.map(|v| *v), Some(1));
    version.store(2, Ordering::SeqCst);
    // Past 30 % of the 3 s TTL (0.9 s) a read serves 1 and reloads; well
    // before the 3 s expiry the reload's 2 is served.
    eventually(
        Duration::from_millis(2_500),
        "the refreshed value is served",
        || {
            let (c, v, l) = (c.clone(), version.clone(), loads.clone());
            async move {
                let got = c
                    .get_or_refresh("hot", move || load(v, l))
                    .await
                    .expect("get_or_refresh")
                    .map(|v| *v);
                assert!(got.is_some(), "a hot key never misses");
                got == Some(2)
            }
        },
    )
    .await;
    assert_eq!(loads.load(Ordering::SeqCst), 2, "one load, one refresh");
}

/// A load whose loader runs while the key is written through another
/// instance stores nothing over that write, and returns the newer value.
pub async fn a_load_does_not_overwrite_a_write_made_meanwhile(h: &dyn CacheHarness) {
    let name = unique_cache("fill");
    let loading = cache::<String>(h.new_cache_backend().await, &name).await;
    let writer = cache::<String>(h.new_cache_backend().await, &name).await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn({
        let loading = loading.clone();
        async move {
            loading
                .get_or_load("k", || async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok(Some("loaded from an old read".to_string()))
                })
                .await
        }
    });
    within(PROPAGATION, "the loader starts", started_rx)
        .await
        .expect("loader started");
    writer
        .set("k", "written meanwhile".into())
        .await
        .expect("set");
    release_tx.send(()).expect("release the loader");
    let got = load.await.expect("task").expect("get_or_load");
    assert_eq!(
        got.as_deref().map(String::as_str),
        Some("written meanwhile")
    );
    let b = h.new_cache_backend().await;
    assert!(
        !b.fill(
            &name,
            "k",
            Bytes::from_static(b"x"),
            Duration::from_secs(60),
            "t"
        )
        .await
        .expect("fill"),
        "fill refuses a key that holds a value"
    );
    let reader = cache::<String>(b, &name).await;
    assert_eq!(
        reader
            .get("k")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("written meanwhile"),
        "L2 kept the write"
    );
}

/// With a bloom filter, `get_or_load` of a key nobody seeded or wrote
/// returns "absent" without the loader; seeded keys load, and a key
/// written through another instance becomes known through its invalidation.
pub async fn a_bloom_filter_turns_away_unknown_keys(h: &dyn CacheHarness) {
    let name = unique_cache("bloom");
    let c = CacheBuilder::new(h.new_cache_backend().await, &name)
        .bloom_filter(10_000, 0.001)
        .build::<u32>()
        .expect("build");
    within(PROPAGATION, "the cache's invalidations flow", c.ready()).await;
    let other = cache::<u32>(h.new_cache_backend().await, &name).await;
    c.bloom_insert(["user:1"]);
    for i in 0..100 {
        let v = c
            .get_or_load(&format!("attack:{i}"), || async {
                panic!("the loader must not run for an unknown key")
            })
            .await
            .expect("get_or_load");
        assert_eq!(v, None);
    }
    assert_eq!(c.stats().bloom_rejections, 100);
    let v = c
        .get_or_load("user:1", || async { Ok(Some(1)) })
        .await
        .expect("load");
    assert_eq!(v.map(|v| *v), Some(1), "a seeded key loads");
    other.set("user:2", 2).await.expect("set elsewhere");
    eventually(PROPAGATION, "the write elsewhere becomes known", || {
        let c = c.clone();
        async move {
            c.get_or_load("user:2", || async { Ok(None) })
                .await
                .expect("get_or_load")
                .map(|v| *v)
                == Some(2)
        }
    })
    .await;
    assert!(matches!(
        CacheBuilder::new(h.new_cache_backend().await, &name)
            .bloom_filter(0, 0.01)
            .build::<u32>(),
        Err(Error::InvalidArgument(_))
    ));
}

/// A loader error reaches every waiter of its flight; the next call loads again.
pub async fn a_failed_load_fails_every_waiter_and_is_not_cached(h: &dyn CacheHarness) {
    let name = unique_cache("load-fail");
    let c = cache::<u8>(h.new_cache_backend().await, &name).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move {
                c.get_or_load("k", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(Error::unavailable("the database is down", None))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task");
        assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one flight");
    let v = c
        .get_or_load("k", || async { Ok(Some(7)) })
        .await
        .expect("load");
    assert_eq!(v.map(|v| *v), Some(7), "the failure was not cached");
    assert_eq!(c.stats().load_failures, 1);
}

/// A loader that panics fails its callers with an error; nothing hangs.
pub async fn a_panicking_loader_is_an_error(h: &dyn CacheHarness) {
    let name = unique_cache("load-panic");
    let c = cache::<u8>(h.new_cache_backend().await, &name).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_load("k", || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if std::hint::black_box(true) {
                        panic!("loader bug");
                    }
                    Ok(Some(1))
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        let r = within(
            Duration::from_secs(10),
            "a waiter of a panicked load returns",
            t,
        )
        .await
        .expect("the caller's task itself does not panic");
        match r {
            Err(e) => assert!(e.to_string().contains("panicked"), "{e}"),
            Ok(v) => panic!("a panicking loader produced {v:?}"),
        }
    }
    let v = c
        .get_or_load("k", || async { Ok(Some(2)) })
        .await
        .expect("load");
    assert_eq!(v.map(|v| *v), Some(2));
}

/// "Not found" from the loader is remembered: 1000 lookups, one load.
pub async fn not_found_is_remembered(h: &dyn CacheHarness) {
    let name = unique_cache("negative");
    let c = cache::<u8>(h.new_cache_backend().await, &name).await;
    let calls = AtomicUsize::new(0);
    for _ in 0..1000 {
        let v = c
            .get_or_load("missing", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            })
            .await
            .expect("get_or_load");
        assert_eq!(v, None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let other = cache::<u8>(h.new_cache_backend().await, &name).await;
    let v = other
        .get_or_load("missing", || async {
            panic!("the negative entry is shared through L2")
        })
        .await
        .expect("get_or_load");
    assert_eq!(v, None);
    assert!(
        other.exists("missing").await.expect("exists"),
        "a negative entry is stored"
    );
}

/// A value changed behind the cache's back (bad checksum, foreign bytes)
/// is a codec error naming the key from `get`, counted, and a miss for
/// `get_or_load`, which stores a good value over it.
pub async fn a_corrupted_value_is_a_codec_error_and_a_miss(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let name = unique_cache("corrupt");
    let c = cache::<String>(b.clone(), &name).await;
    c.set("k", "good".into()).await.expect("set");
    let mut stored = b
        .get(&name, "k")
        .await
        .expect("raw get")
        .expect("stored")
        .to_vec();
    let last = stored.len() - 1;
    stored[last] ^= 0x55;
    b.set(
        &name,
        "k",
        Bytes::from(stored),
        Duration::from_secs(60),
        "intruder",
    )
    .await
    .expect("raw overwrite");
    b.set(
        &name,
        "plain",
        Bytes::from_static(b"not a coord value"),
        Duration::from_secs(60),
        "intruder",
    )
    .await
    .expect("raw write");
    let reader = cache::<String>(h.new_cache_backend().await, &name).await;
    for key in ["k", "plain"] {
        match reader.get(key).await {
            Err(e @ Error::Codec { .. }) => assert!(e.to_string().contains(key), "{e}"),
            other => panic!("{key}: expected a codec error, got {other:?}"),
        }
    }
    assert_eq!(reader.stats().codec_errors, 2);
    let v = reader
        .get_or_load("k", || async { Ok(Some("reloaded".to_string())) })
        .await
        .expect("get_or_load");
    assert_eq!(v.as_deref().map(String::as_str), Some("reloaded"));
    reader.clear_local();
    assert_eq!(
        reader
            .get("k")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("reloaded")
    );
}

/// Two instances with different codecs: the reader gets an error saying so.
pub async fn a_codec_mismatch_is_a_clear_error(h: &dyn CacheHarness) {
    let name = unique_cache("codec");
    let json = cache::<u32>(h.new_cache_backend().await, &name).await;
    let postcard = CacheBuilder::new(h.new_cache_backend().await, &name)
        .codec(CacheCodec::Postcard)
        .build::<u32>()
        .expect("build");
    json.set("k", 5).await.expect("set");
    match postcard.get("k").await {
        Err(e @ Error::Codec { .. }) => assert!(e.to_string().contains("codec"), "{e}"),
        other => panic!("expected a codec error, got {other:?}"),
    }
}

/// A large, compressible value round-trips and is stored compressed.
pub async fn large_values_are_stored_compressed(h: &dyn CacheHarness) {
    let b = h.new_cache_backend().await;
    let name = unique_cache("large");
    let c = cache::<String>(b.clone(), &name).await;
    let value = "coordination ".repeat(20_000);
    c.set("big", value.clone()).await.expect("set");
    let stored = b.get(&name, "big").await.expect("raw get").expect("stored");
    assert!(
        stored.len() < value.len() / 4,
        "stored {} bytes of {}",
        stored.len(),
        value.len()
    );
    let other = cache::<String>(h.new_cache_backend().await, &name).await;
    assert_eq!(
        other.get("big").await.expect("get").as_deref(),
        Some(&value)
    );
}

/// `health` is healthy with a measured round trip once invalidations flow.
pub async fn health_reports_healthy(h: &dyn CacheHarness) {
    let c = cache::<u8>(h.new_cache_backend().await, &unique_cache("health")).await;
    let health = c.health().await;
    assert_eq!(health.status, HealthStatus::Healthy, "{health:?}");
    assert!(health.latency.is_some());
}
