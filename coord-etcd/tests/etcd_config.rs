//! What is specific to the config center on etcd: versions are keys of
//! their own (a compaction of etcd's history loses none), listings page
//! through thousands of keys, oversized writes are refused before anything
//! is sent, racing writers each get a version of their own, the key layout
//! keeps look-alike keys apart, and latest markers of the earlier layout
//! (the version number alone, without the record) stay readable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coord_core::Error;
use coord_core::config::{ConfigBackend, ConfigCenter, ConfigWrite, VersionMeta, encode_version};
use coord_core::testkit::{unique_name, within};
use coord_etcd::EtcdBackend;
use coord_etcd::testkit::EtcdHarness;

/// A namespace no other test uses.
fn unique_ns(case: &str) -> String {
    let id = unique_name(case)
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    format!("etcdcfg{id}/{case}")
}

/// A valid record holding `value`.
fn record(value: &str) -> Bytes {
    let mut meta = VersionMeta::default();
    meta.author = "tester".to_owned();
    meta.time_ms = 1;
    meta.crc32 = crc32(value.as_bytes());
    encode_version(&meta, value.as_bytes()).expect("a record")
}

/// CRC-32 (IEEE), as the records' checksum.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn write(key: &str, expected: Option<u64>, record: Bytes) -> ConfigWrite {
    ConfigWrite {
        key: key.to_owned(),
        expected,
        record,
    }
}

async fn backend(h: &EtcdHarness) -> Arc<EtcdBackend> {
    Arc::new(h.connect().await.expect("connect"))
}

fn center(backend: Arc<EtcdBackend>) -> ConfigCenter {
    ConfigCenter::new(backend).with_author("tester")
}

/// Runs a blocking server operation (pause, resume) off the runtime.
async fn on_server(
    h: &EtcdHarness,
    op: fn(&coord_etcd::testkit::EtcdServer) -> coord_core::Result<()>,
) {
    let h = h.clone();
    tokio::task::spawn_blocking(move || op(h.server()))
        .await
        .expect("the server operation ran")
        .expect("the server operation succeeded");
}

#[tokio::test]
async fn a_compaction_of_etcds_history_loses_no_config_version() {
    let h = EtcdHarness::start_isolated().await;
    let b = backend(&h).await;
    let c = center(b.clone());
    let ns = unique_ns("compaction");
    let key = format!("{ns}/db/url");
    for i in 1..=5 {
        c.put(&key, format!("v{i}")).await.unwrap();
    }
    let mut kv = b.client().kv_client();
    let put = kv.put("unrelated", "x", None).await.unwrap();
    let revision = put.header().unwrap().revision();
    kv.compact(
        revision,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    let history: Vec<(u64, String)> = c
        .history(&key, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| (v.version, v.as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(u64, String)> = (1..=5).rev().map(|i| (i, format!("v{i}"))).collect();
    assert_eq!(history, expected);
    let first = c.get_version(&key, 1).await.unwrap().expect("version 1");
    assert_eq!(first.as_str().unwrap(), "v1");
    assert_eq!(c.list(&ns).await.unwrap().len(), 1);
    assert_eq!(c.put(&key, "v6").await.unwrap(), 6);
}

#[tokio::test]
async fn thousands_of_keys_list_in_order() {
    let h = EtcdHarness::start().await;
    let b = backend(&h).await;
    let ns = unique_ns("many");
    // Over a page of latest markers (1,000) and many transactions of records.
    let keys: Vec<String> = (0..1200)
        .map(|i| format!("{ns}/group{}/k{i:04}", i % 10))
        .collect();
    for chunk in keys.chunks(60) {
        let writes: Vec<ConfigWrite> = chunk.iter().map(|k| write(k, Some(0), record(k))).collect();
        let versions = b.config_append(&ns, &writes).await.unwrap();
        assert!(versions.iter().all(|v| *v == 1));
    }
    let c = center(b.clone());
    let listed = within(Duration::from_secs(30), "the listing", c.list(&ns)).await;
    let listed: Vec<(String, String)> = listed
        .unwrap()
        .into_iter()
        .map(|v| (v.key.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let mut expected: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), k.clone())).collect();
    expected.sort();
    assert_eq!(listed.len(), 1200);
    assert_eq!(listed, expected);
    let group = c.list(&format!("{ns}/group3/")).await.unwrap();
    assert_eq!(group.len(), 120);
    assert!(
        group
            .iter()
            .all(|v| v.key.starts_with(&format!("{ns}/group3/")))
    );
}

#[tokio::test]
async fn oversized_writes_are_refused_before_anything_is_sent() {
    let h = EtcdHarness::start_isolated().await;
    assert!(h.server().is_spawned(), "this test pauses etcd");
    let b = backend(&h).await;
    let ns = unique_ns("size");
    let max = b.max_record_bytes();
    // A record is sent twice (its version and its key's latest marker), so
    // it gets about half of etcd's 1.5 MiB request limit.
    assert!(max > 700 << 10, "a value of 700 KiB fits: {max}");
    assert!(max < 768 << 10, "a record is counted twice: {max}");
    // The largest record etcd takes.
    let largest = Bytes::from(vec![7u8; max]);
    let key = format!("{ns}/largest");
    let write_largest = [write(&key, Some(0), largest.clone())];
    assert_eq!(b.config_append(&ns, &write_largest).await.unwrap(), [1]);
    let back = b.config_latest(&key).await.unwrap().expect("stored");
    assert_eq!(back.record, largest);
    let history = b.config_history(&key, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].record, largest);
    // With etcd frozen, a request would hang until the timeout: a refusal
    // comes at once.
    on_server(&h, |s| s.pause()).await;
    let too_big = [write(&format!("{ns}/big"), None, vec![1u8; max + 1].into())];
    // Each fits alone, not both in one request.
    let two = [
        write(&format!("{ns}/a"), None, vec![1u8; max * 2 / 3].into()),
        write(&format!("{ns}/b"), None, vec![1u8; max * 2 / 3].into()),
    ];
    let many: Vec<ConfigWrite> = (0..65)
        .map(|i| write(&format!("{ns}/k{i}"), None, record("x")))
        .collect();
    for writes in [&too_big[..], &two[..], &many[..]] {
        let refused = within(
            Duration::from_secs(1),
            "the refusal",
            b.config_append(&ns, writes),
        )
        .await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
    }
    on_server(&h, |s| s.resume()).await;
    for k in ["big", "a", "b", "k0"] {
        let latest = b.config_latest(&format!("{ns}/{k}")).await.unwrap();
        assert!(latest.is_none(), "nothing of {k} written");
    }
}

#[tokio::test]
async fn racing_writers_each_get_a_version_of_their_own() {
    let h = EtcdHarness::start().await;
    let ns = unique_ns("race");
    let key = format!("{ns}/k");
    let mut tasks = Vec::new();
    for w in 0..4 {
        let b = backend(&h).await;
        let (ns, key) = (ns.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                let writes = [write(&key, None, record(&format!("{w}-{i}")))];
                got.extend(b.config_append(&ns, &writes).await.unwrap());
            }
            got
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=100).collect::<Vec<u64>>());
    let b = backend(&h).await;
    assert_eq!(b.config_history(&key, 1000).await.unwrap().len(), 100);
    assert_eq!(b.config_latest(&key).await.unwrap().unwrap().version, 100);
}

#[tokio::test]
async fn look_alike_keys_stay_apart() {
    let h = EtcdHarness::start().await;
    let b = backend(&h).await;
    let c = center(b.clone());
    let ns = unique_ns("layout");
    let names = ["db", "db/url", "db-x", "latest", "v/latest", "versions/x"];
    for (i, name) in names.iter().enumerate() {
        for _ in 0..=i {
            c.put(&format!("{ns}/{name}"), *name).await.unwrap();
        }
    }
    for (i, name) in names.iter().enumerate() {
        let key = format!("{ns}/{name}");
        let history = c.history(&key, 100).await.unwrap();
        assert_eq!(history.len(), i + 1, "{key}");
        assert!(history.iter().all(|v| v.as_str().unwrap() == *name));
    }
    let listed: Vec<String> = c
        .list(&ns)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.key)
        .collect();
    let mut expected: Vec<String> = names.iter().map(|n| format!("{ns}/{n}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let db: Vec<String> = c
        .list(&format!("{ns}/db"))
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.key)
        .collect();
    assert_eq!(db, [format!("{ns}/db"), format!("{ns}/db/url")]);
    assert_eq!(c.compact(&format!("{ns}/db/url"), 1).await.unwrap(), 1);
    assert_eq!(c.history(&format!("{ns}/db"), 100).await.unwrap().len(), 1);
}

#[tokio::test]
async fn reserved_keys_ignore_freezes_and_a_key_written_twice_gets_two_versions() {
    let h = EtcdHarness::start().await;
    let b = backend(&h).await;
    let c = center(b.clone());
    let ns = unique_ns("reserved");
    c.freeze(&ns).await.unwrap();
    // Not `.coord/audit`: the center writes it when freezing.
    let audit = format!("{ns}/.coord/etcd-test");
    let writes = [
        write(&audit, Some(0), record("one")),
        write(&audit, Some(0), record("two")),
    ];
    assert_eq!(b.config_append(&ns, &writes).await.unwrap(), [1, 2]);
    let plain = [write(&format!("{ns}/k"), None, record("x"))];
    assert!(matches!(
        b.config_append(&ns, &plain).await,
        Err(Error::Frozen(_))
    ));
    assert_eq!(b.config_frozen(&ns).await.unwrap(), vec![ns.clone()]);
    c.unfreeze(&ns).await.unwrap();
    assert!(b.config_frozen(&ns).await.unwrap().is_empty());
    assert_eq!(b.config_append(&ns, &plain).await.unwrap(), [1]);
    let history = b.config_history(&audit, 10).await.unwrap();
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );
    // The latest marker holds the key's last record of the append.
    let latest = b.config_latest(&audit).await.unwrap().expect("stored");
    assert_eq!((latest.version, latest.record), (2, record("two")));
}

#[tokio::test]
async fn markers_of_the_earlier_layout_stay_readable_and_are_written_over() {
    let h = EtcdHarness::start().await;
    let b = backend(&h).await;
    let ns = unique_ns("legacy");
    let root = b.config_root();
    let keys = [format!("{ns}/a"), format!("{ns}/b")];
    let rec = |key: &str, version: u64| record(&format!("{key} v{version}"));
    // Two keys as the earlier layout wrote them: versions 1 and 2, each
    // latest marker the number alone.
    let mut kv = b.client().kv_client();
    for key in &keys {
        for v in 1..=2 {
            let at = format!("{root}versions/{key}\0{v:020}");
            kv.put(at, rec(key, v).to_vec(), None).await.unwrap();
        }
        kv.put(format!("{root}latest/{key}"), "2", None)
            .await
            .unwrap();
    }
    let latest = b.config_latest(&keys[0]).await.unwrap().expect("stored");
    assert_eq!((latest.version, latest.record), (2, rec(&keys[0], 2)));
    let history = b.config_history(&keys[1], 10).await.unwrap();
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );
    let mut notices = b.config_watch(&ns).await.unwrap();
    // Compare-and-set on an old marker, then the new format replaces it.
    let stale = [write(&keys[0], Some(1), rec(&keys[0], 3))];
    assert!(matches!(
        b.config_append(&ns, &stale).await,
        Err(Error::Conflict { .. })
    ));
    let next = [write(&keys[0], Some(2), rec(&keys[0], 3))];
    assert_eq!(b.config_append(&ns, &next).await.unwrap(), [3]);
    let notice = within(Duration::from_secs(10), "the notice", notices.next()).await;
    assert_eq!(
        notice,
        Some(coord_core::config::ConfigNotice::Changed {
            key: keys[0].clone(),
            version: 3,
        })
    );
    let marker = kv
        .get(format!("{root}latest/{}", keys[0]), None)
        .await
        .unwrap();
    let mut expected = b"3\n".to_vec();
    expected.extend_from_slice(&rec(&keys[0], 3));
    assert_eq!(marker.kvs()[0].value(), &expected[..]);
    // A listing of both formats at once.
    let listed: Vec<(String, u64, Bytes)> = b
        .config_list(&ns)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, v)| (key, v.version, v.record))
        .collect();
    assert_eq!(
        listed,
        [
            (keys[0].clone(), 3, rec(&keys[0], 3)),
            (keys[1].clone(), 2, rec(&keys[1], 2)),
        ]
    );
    assert_eq!(b.config_compact(&keys[0], 1).await.unwrap(), 2);
    let latest = b.config_latest(&keys[0]).await.unwrap().expect("stored");
    assert_eq!((latest.version, latest.record), (3, rec(&keys[0], 3)));
}

#[tokio::test]
async fn a_watch_sees_every_key_of_a_multi_key_write() {
    let h = EtcdHarness::start().await;
    let b = backend(&h).await;
    let ns = unique_ns("watch");
    let mut notices = b.config_watch(&ns).await.unwrap();
    let mut other = b.config_watch(&format!("{ns}-other")).await.unwrap();
    let writes: Vec<ConfigWrite> = (0..3)
        .map(|i| write(&format!("{ns}/k{i}"), None, record("x")))
        .collect();
    b.config_append(&ns, &writes).await.unwrap();
    let mut seen = Vec::new();
    within(Duration::from_secs(10), "the notices", async {
        while seen.len() < 3 {
            seen.push(notices.next().await.expect("open"));
        }
    })
    .await;
    let expected: Vec<_> = (0..3)
        .map(|i| coord_core::config::ConfigNotice::Changed {
            key: format!("{ns}/k{i}"),
            version: 1,
        })
        .collect();
    assert_eq!(seen, expected);
    let elsewhere = tokio::time::timeout(Duration::from_millis(300), other.next()).await;
    assert!(
        elsewhere.is_err(),
        "another namespace's watch: {elsewhere:?}"
    );
}
