//! The lock and cache conformance suites through the cluster client (`redis+cluster://`),
//! on a local three-master Redis Cluster (or `COORD_TEST_REDIS_CLUSTER_URL`):
//! locks hash to slots on different nodes, and releases published on one node
//! reach subscribers connected to another.

coord_core::lock_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
coord_core::lock_kinds_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
coord_core::discovery_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
coord_core::config_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
coord_core::cache_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);

/// Multi-key cache calls on a cluster go slot by slot: `get_many` of 100
/// keys spread over many slots (half of them sharing five hash tags, so
/// some slots hold several) sends one `MGET` per distinct slot (counted on
/// the servers with `INFO commandstats`, slots from `CLUSTER KEYSLOT`),
/// `set_many` one `MULTI`/`EXEC` (its `SET`s and one `PUBLISH`) per slot,
/// `delete_many` one `DEL` per slot; values come back in the caller's
/// order, and every written key is announced once.
#[tokio::test]
async fn multi_key_cache_calls_go_one_command_per_slot() {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use bytes::Bytes;
    use coord_core::cache::{CacheBackend, CacheEvent};

    let h = coord_redis::testkit::RedisHarness::start_cluster().await;
    let b = h.connect().await.expect("connect");
    let watcher = h.connect().await.expect("connect");
    let url = h.server.url().to_owned();
    let mut nodes = Vec::new();
    for addr in url.trim_start_matches("redis+cluster://").split(',') {
        let client = redis::Client::open(format!("redis://{addr}")).expect("node url");
        nodes.push(
            client
                .get_multiplexed_async_connection()
                .await
                .expect("node"),
        );
    }
    assert!(nodes.len() > 1, "{url} is not a cluster of several nodes");

    // Every node's calls of each command, summed over the nodes.
    async fn calls(nodes: &mut [redis::aio::MultiplexedConnection]) -> BTreeMap<String, u64> {
        let mut sum = BTreeMap::new();
        for node in nodes {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(node)
                .await
                .expect("INFO commandstats");
            for line in info.lines() {
                let Some((name, stats)) = line
                    .strip_prefix("cmdstat_")
                    .and_then(|l| l.split_once(':'))
                else {
                    continue;
                };
                let n: u64 = stats
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
                    .expect("calls=");
                *sum.entry(name.to_owned()).or_default() += n;
            }
        }
        sum
    }
    fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, cmd: &str) -> u64 {
        after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0)
    }
    // The distinct slots of some of the cache's keys, as the server hashes them.
    let cache = "slots";
    let mut slot_of = Vec::new();
    let keys: Vec<String> = (0..100)
        .map(|i| match i {
            0..50 => format!("{{tag{}}}:key-{i}", i % 5),
            _ => format!("key-{i}"),
        })
        .collect();
    for key in &keys {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(b.cache_key(cache, key))
            .query_async(&mut nodes[0])
            .await
            .expect("CLUSTER KEYSLOT");
        slot_of.push(slot);
    }
    let slots = |range: std::ops::Range<usize>| -> u64 {
        range.map(|i| slot_of[i]).collect::<HashSet<_>>().len() as u64
    };
    let all = slots(0..100);
    assert!(
        (30..100).contains(&all),
        "100 keys, half of them under 5 hash tags, fell into {all} slots"
    );
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let value = |i: usize| Bytes::from(format!("value-{i}"));

    // set_many of the even keys: one transaction and one PUBLISH per slot.
    let mut events = watcher.watch(cache).await.expect("watch");
    let even: Vec<usize> = (0..100).step_by(2).collect();
    let entries: Vec<(&str, Bytes)> = even.iter().map(|&i| (refs[i], value(i))).collect();
    let even_slots = even
        .iter()
        .map(|&i| slot_of[i])
        .collect::<HashSet<_>>()
        .len() as u64;
    let before = calls(&mut nodes).await;
    b.set_many(cache, &entries, Duration::from_secs(60), "writer")
        .await
        .expect("set_many");
    let after = calls(&mut nodes).await;
    assert_eq!(delta(&before, &after, "set"), 50);
    assert_eq!(delta(&before, &after, "exec"), even_slots);
    assert_eq!(delta(&before, &after, "publish"), even_slots);
    // Every written key is announced, once, by the writer.
    let mut announced = Vec::new();
    while announced.len() < even.len() {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an invalidation within 5 s")
            .expect("the watch is open");
        match event {
            CacheEvent::Invalidated { keys, origin } => {
                assert_eq!(origin.as_deref(), Some("writer"));
                announced.extend(keys);
            }
            other => panic!("not an invalidation: {other:?}"),
        }
    }
    announced.sort();
    let mut written: Vec<String> = even.iter().map(|&i| keys[i].clone()).collect();
    written.sort();
    assert_eq!(announced, written);

    // get_many of all 100: one MGET per distinct slot, values in order.
    let before = calls(&mut nodes).await;
    let got = b.get_many(cache, &refs).await.expect("get_many");
    let after = calls(&mut nodes).await;
    assert_eq!(delta(&before, &after, "mget"), all);
    assert_eq!(delta(&before, &after, "get"), 0);
    let expected: Vec<Option<Bytes>> = (0..100).map(|i| (i % 2 == 0).then(|| value(i))).collect();
    assert_eq!(got, expected);

    // delete_many of the first 30 keys (15 of them exist): one DEL per slot.
    let before = calls(&mut nodes).await;
    let deleted = b
        .delete_many(cache, &refs[..30], "writer")
        .await
        .expect("delete_many");
    let after = calls(&mut nodes).await;
    assert_eq!(deleted, 15);
    assert_eq!(delta(&before, &after, "del"), slots(0..30));
    assert_eq!(delta(&before, &after, "exec"), slots(0..30));
    let got = b.get_many(cache, &refs).await.expect("get_many");
    let expected: Vec<Option<Bytes>> = (0..100)
        .map(|i| (i >= 30 && i % 2 == 0).then(|| value(i)))
        .collect();
    assert_eq!(got, expected);

    // A key asked twice is answered twice, and duplicates delete once.
    let got = b
        .get_many(cache, &[refs[40], refs[41], refs[40], refs[60]])
        .await
        .expect("get_many");
    assert_eq!(
        got,
        vec![Some(value(40)), None, Some(value(40)), Some(value(60))]
    );
    let deleted = b
        .delete_many(cache, &[refs[40], refs[40], refs[60]], "writer")
        .await
        .expect("delete_many");
    assert_eq!(deleted, 2);
}
