//! `EtcdFencedStore` against a real etcd: the shared fenced-store
//! conformance suite, plus what is specific to etcd (the stored form, a
//! corrupted stored value).

use coord_core::testkit::unique_name;
use coord_core::{Error, FencedStore, FencingToken};
use coord_etcd::EtcdFencedStore;
use coord_etcd::testkit::EtcdHarness;

fn t(n: u64) -> FencingToken {
    FencingToken::new(n)
}

#[tokio::test]
async fn the_stored_form_is_the_token_then_the_value() {
    let h = EtcdHarness::start().await;
    let store = EtcdFencedStore::new(&h.connect().await.unwrap());
    let mut kv = h.connect().await.unwrap().client().kv_client();
    let key = unique_name("fenced");
    store.write(&key, t(42), b"v").await.unwrap();
    let resp = kv.get(store.etcd_key(&key), None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"00000000000000000042v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_token_is_a_codec_error_and_is_left_alone() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let store = EtcdFencedStore::new(&backend);
    let mut kv = backend.client().kv_client();
    for bad in [
        &b"banana"[..],
        b"",
        b"0000000000000000001",
        b"-0000000000000000001x",
        b"99999999999999999999",
    ] {
        let key = unique_name("fenced-corrupt");
        kv.put(store.etcd_key(&key), bad, None).await.unwrap();
        let err = store.write(&key, t(1), b"x").await.unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{bad:?}: {err:?}");
        let err = store.read(&key).await.unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{bad:?}: {err:?}");
        let resp = kv.get(store.etcd_key(&key), None).await.unwrap();
        assert_eq!(resp.kvs()[0].value(), bad, "nothing was changed");
    }
}

coord_core::fenced_store_conformance_tests!(etcd, EtcdHarness::start().await);
