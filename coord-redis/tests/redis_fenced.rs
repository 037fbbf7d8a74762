//! `RedisFencedStore` against a real server: the shared fenced-store
//! conformance suite, plus what is specific to Redis (the key layout, a
//! corrupted stored token).

use coord_core::testkit::unique_name;
use coord_core::{Error, FencedStore, FencingToken};
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
async fn keys_live_under_the_namespace() {
    let h = RedisHarness::start().await;
    let store = RedisFencedStore::new(&h.connect().await.unwrap());
    let key = unique_name("fenced");
    store.write(&key, t(3), b"v").await.unwrap();
    assert!(store.redis_key(&key).starts_with(&h.settings().namespace));
    let mut raw = raw(&h).await;
    let token: String = redis::cmd("HGET")
        .arg(store.redis_key(&key))
        .arg("token")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(token, "3");
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

coord_core::fenced_store_conformance_tests!(redis, RedisHarness::start().await);
