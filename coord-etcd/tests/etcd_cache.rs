//! What is specific to caches on etcd: TTLs share leases per TTL bucket
//! (not one lease per key), and a write over etcd's request limit is
//! refused before it is sent.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use coord_core::Error;
use coord_core::cache::CacheBackend;
use coord_core::testkit::unique_name;
use coord_etcd::testkit::EtcdHarness;
use etcd_client::GetOptions;

#[tokio::test]
async fn entries_with_one_ttl_share_one_lease() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let cache = unique_name("lease-count").replace('/', "-");
    let ttl = Duration::from_secs(60);
    for batch in 0..10 {
        let keys: Vec<String> = (0..10).map(|i| format!("k{batch}-{i}")).collect();
        let entries: Vec<(&str, Bytes)> = keys
            .iter()
            .map(|k| (k.as_str(), Bytes::from_static(b"v")))
            .collect();
        backend.set_many(&cache, &entries, ttl, "t").await.unwrap();
    }
    for i in 0..20 {
        backend
            .set(
                &cache,
                &format!("single{i}"),
                Bytes::from_static(b"v"),
                ttl,
                "t",
            )
            .await
            .unwrap();
    }
    let mut kv = backend.client().kv_client();
    let prefix = backend.cache_prefix(&cache);
    let resp = kv
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        resp.kvs().len(),
        120,
        "every entry is stored under {prefix}"
    );
    let leases: HashSet<i64> = resp.kvs().iter().map(|kv| kv.lease()).collect();
    assert!(!leases.contains(&0), "every entry has a lease");
    // A lease takes writes for a tenth of its TTL (6 s here): the writes
    // above take far less, so one lease, two if they straddled a rollover.
    assert!(leases.len() <= 2, "120 entries on {} leases", leases.len());
}

#[tokio::test]
async fn a_write_over_the_request_limit_is_refused_before_sending() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let cache = unique_name("too-big").replace('/', "-");
    let value = Bytes::from(vec![b'x'; 600 << 10]);
    let keys = ["a", "b", "c"];
    let entries: Vec<(&str, Bytes)> = keys.iter().map(|k| (*k, value.clone())).collect();
    match backend
        .set_many(&cache, &entries, Duration::from_secs(60), "t")
        .await
    {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("request limit"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let got = backend.get_many(&cache, &keys).await.unwrap();
    assert_eq!(got, vec![None, None, None], "nothing was stored half-way");
}

/// More keys than etcd takes in one transaction (128) go as several.
#[tokio::test]
async fn calls_over_etcds_transaction_limit_are_split() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let cache = unique_name("many").replace('/', "-");
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let entries: Vec<(&str, Bytes)> = keys
        .iter()
        .map(|k| (k.as_str(), Bytes::from(k.clone())))
        .collect();
    backend
        .set_many(&cache, &entries, Duration::from_secs(60), "t")
        .await
        .unwrap();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = backend.get_many(&cache, &refs).await.unwrap();
    assert_eq!(got.len(), 300);
    assert!(
        got.iter()
            .zip(&keys)
            .all(|(v, k)| v.as_deref() == Some(k.as_bytes()))
    );
    assert_eq!(backend.delete_many(&cache, &refs, "t").await.unwrap(), 300);
}
