//! `RedisFencedStore` against a real server: newer and equal tokens are
//! accepted, older ones refused without a change, concurrent writers leave
//! the highest token, and a corrupted stored token is a codec error.

use std::sync::Arc;
use std::time::Duration;

use coord_core::testkit::{unique_name, within};
use coord_core::{Error, FencedStore, FencingToken, LockClient};
use coord_redis::RedisFencedStore;
use coord_redis::testkit::RedisHarness;

fn t(n: u64) -> FencingToken {
    FencingToken::new(n)
}

async fn raw(h: &RedisHarness) -> redis::aio::MultiplexedConnection {
    redis::Client::open(h.server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn newer_and_equal_tokens_are_accepted_older_ones_refused() {
    let h = RedisHarness::start().await;
    let store = RedisFencedStore::new(&h.connect().await.unwrap());
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

    // Tokens compare exactly over the whole u64 range (beyond a Lua number's 2^53).
    let big = (1u64 << 53) + 1;
    store.write(&key, t(big), b"big").await.unwrap();
    assert!(matches!(
        store.write(&key, t(big - 1), b"x").await,
        Err(Error::Conflict { .. })
    ));
    store.write(&key, t(u64::MAX), b"").await.unwrap();
    assert_eq!(
        store.read(&key).await.unwrap(),
        Some((t(u64::MAX), Vec::new()))
    );

    // Keys are namespaced and independent; bad input is refused.
    let other = unique_name("fenced");
    store.write(&other, t(1), b"other").await.unwrap();
    assert!(store.redis_key(&key).starts_with(&h.settings().namespace));
    assert!(matches!(
        store.write("", t(1), b"x").await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_leave_the_highest_token() {
    let h = RedisHarness::start().await;
    let key = unique_name("fenced-race");
    let mut tokens: Vec<u64> = (0..64).map(|_| fastrand_u64() >> 1).collect();
    tokens.push(0);
    let max = *tokens.iter().max().unwrap();
    let mut tasks = Vec::new();
    for chunk in tokens.chunks(8) {
        // A store (and connection) per writer group.
        let store = RedisFencedStore::new(&h.connect().await.unwrap());
        let (key, chunk) = (key.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            for token in chunk {
                match store.write(&key, t(token), &token.to_be_bytes()).await {
                    Ok(()) => accepted += 1,
                    Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("write {token}: {e}"),
                }
            }
            accepted
        }));
    }
    let accepted: u32 = within(Duration::from_secs(30), "the writers finish", async {
        let mut n = 0;
        for task in tasks {
            n += task.await.unwrap();
        }
        n
    })
    .await;
    assert!(accepted >= 1);
    let store = RedisFencedStore::new(&h.connect().await.unwrap());
    assert_eq!(
        store.read(&key).await.unwrap(),
        Some((t(max), max.to_be_bytes().to_vec()))
    );
}

#[tokio::test]
async fn a_corrupted_token_is_a_codec_error_and_is_left_alone() {
    let h = RedisHarness::start().await;
    let store = RedisFencedStore::new(&h.connect().await.unwrap());
    let mut conn = raw(&h).await;
    for bad in ["banana", "-1", "007", "18446744073709551616", ""] {
        let key = unique_name("fenced-corrupt");
        let _: () = redis::cmd("HSET")
            .arg(store.redis_key(&key))
            .arg("token")
            .arg(bad)
            .arg("value")
            .arg("v")
            .query_async(&mut conn)
            .await
            .unwrap();
        let err = store.write(&key, t(1), b"x").await.unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{bad:?}: {err:?}");
        let err = store.read(&key).await.unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{bad:?}: {err:?}");
        let token: String = redis::cmd("HGET")
            .arg(store.redis_key(&key))
            .arg("token")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(token, bad, "nothing was changed");
    }
    // A key of another type is a backend error, not a panic or a silent overwrite.
    let key = unique_name("fenced-wrongtype");
    let _: () = redis::cmd("SET")
        .arg(store.redis_key(&key))
        .arg("plain")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.write(&key, t(1), b"x").await.unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err:?}");
    assert!(store.read(&key).await.is_err());
}

/// The recipe: each holder writes with its guard's fencing token; a newer
/// holder's write makes the older one's refused.
#[tokio::test]
async fn lock_tokens_fence_the_store() {
    let h = RedisHarness::start().await;
    let backend = h.connect().await.unwrap();
    let store = RedisFencedStore::new(&backend);
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
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
