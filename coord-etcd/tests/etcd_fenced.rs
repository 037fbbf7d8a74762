//! `EtcdFencedStore` against a real etcd: newer and equal tokens are
//! accepted, older ones refused without a change, concurrent writers leave
//! the highest token, and a corrupted stored value is a codec error.

use std::sync::Arc;
use std::time::Duration;

use coord_core::testkit::{unique_name, within};
use coord_core::{Error, FencedStore, FencingToken, LockClient};
use coord_etcd::EtcdFencedStore;
use coord_etcd::testkit::EtcdHarness;

fn t(n: u64) -> FencingToken {
    FencingToken::new(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_and_equal_tokens_are_accepted_older_ones_refused() {
    let h = EtcdHarness::start().await;
    let store = EtcdFencedStore::new(&h.connect().await.unwrap());
    let key = unique_name("fenced");
    assert_eq!(store.read(&key).await.unwrap(), None);

    store.write(&key, t(5), b"first").await.unwrap();
    store.write(&key, t(5), b"again").await.unwrap();
    store.write(&key, t(9), b"newer").await.unwrap();
    let err = store.write(&key, t(8), b"stale").await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains('9'), "{err}");
    assert_eq!(
        store.read(&key).await.unwrap(),
        Some((t(9), b"newer".to_vec())),
        "a refused write changes nothing"
    );
    store.write(&key, t(u64::MAX), b"").await.unwrap();
    assert_eq!(
        store.read(&key).await.unwrap(),
        Some((t(u64::MAX), Vec::new()))
    );
    assert!(matches!(
        store.write("", t(1), b"x").await,
        Err(Error::InvalidArgument(_))
    ));

    // The stored form: 20 digits of token, then the value.
    let mut kv = h.connect().await.unwrap().client().kv_client();
    let other = unique_name("fenced");
    store.write(&other, t(42), b"v").await.unwrap();
    let resp = kv.get(store.etcd_key(&other), None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"00000000000000000042v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_leave_the_highest_token() {
    let h = EtcdHarness::start().await;
    let key = unique_name("fenced-race");
    let mut tokens: Vec<u64> = (0..48).map(|_| random_u64() >> 1).collect();
    tokens.push(0);
    let max = *tokens.iter().max().unwrap();
    let mut tasks = Vec::new();
    for chunk in tokens.chunks(6) {
        let store = EtcdFencedStore::new(&h.connect().await.unwrap());
        let (key, chunk) = (key.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for token in chunk {
                loop {
                    match store.write(&key, t(token), &token.to_be_bytes()).await {
                        Ok(()) | Err(Error::Conflict { .. }) => break,
                        // Still racing after its attempts: the write may be retried.
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => panic!("write {token}: {e}"),
                    }
                }
            }
        }));
    }
    within(Duration::from_secs(60), "the writers finish", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    let store = EtcdFencedStore::new(&h.connect().await.unwrap());
    assert_eq!(
        store.read(&key).await.unwrap(),
        Some((t(max), max.to_be_bytes().to_vec()))
    );
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

/// The recipe: each holder writes with its guard's fencing token (the lock
/// key's create revision); a newer holder's write makes the older one's refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_tokens_fence_the_store() {
    let h = EtcdHarness::start().await;
    let backend = h.connect().await.unwrap();
    let store = EtcdFencedStore::new(&backend);
    let client = LockClient::new(Arc::new(backend));
    let name = unique_name("fenced-lock");
    let lock = client
        .lock(name.clone())
        .ttl(Duration::from_secs(10))
        .build();
    let first = lock.acquire().await.unwrap();
    let old = first.fencing_token();
    store.write(&name, old, b"one").await.unwrap();
    first.release().await.unwrap();
    let second = lock.acquire().await.unwrap();
    store
        .write(&name, second.fencing_token(), b"two")
        .await
        .unwrap();
    assert!(matches!(
        store.write(&name, old, b"late").await,
        Err(Error::Conflict { .. })
    ));
    second.release().await.unwrap();
    assert_eq!(store.read(&name).await.unwrap().unwrap().1, b"two");
}

/// Random bits without another dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
