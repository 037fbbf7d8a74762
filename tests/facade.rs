//! The facade against real servers: `Coord::connect(url)` on every backend,
//! metrics on a caller's registry, health, and URL errors.

use std::time::Duration;

use coord::etcd::testkit::EtcdServer;
use coord::redis::testkit::{RedisSentinel, RedisServer};
use coord::{Coord, Error, HealthStatus, Settings};

fn settings() -> Settings {
    let mut s = Settings::default();
    s.connect_timeout = Duration::from_secs(2);
    s.request_timeout = Duration::from_secs(2);
    s
}

/// Connects by URL, takes and releases a lock with a fresh client id, and
/// checks the metrics the caller's registry received.
async fn lock_through_facade(url: &str, backend: &str) {
    let registry = prometheus::Registry::new();
    let coord = Coord::builder()
        .settings(settings())
        .url(url)
        .metrics(&registry)
        .client_id("facade-test")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(coord.capabilities().backend, backend);
    assert_eq!(coord.health().await.status, HealthStatus::Healthy);

    let name = format!("facade/{:x}", fastrand::u64(..));
    let lock = coord.lock(name.clone()).ttl(Duration::from_secs(5)).build();
    let first = lock.acquire().await.expect("acquire");
    assert_eq!(first.owner().client_id(), "facade-test");
    assert!(lock.try_acquire().await.expect("try").is_none());
    let token = first.fencing_token();
    first.release().await.expect("release");
    let second = lock.acquire().await.expect("acquire again");
    assert!(second.fencing_token() > token);

    // The fenced store of the same backend: the older token is refused.
    let store = coord.fenced_store();
    store
        .write(&name, second.fencing_token(), b"new")
        .await
        .expect("fenced write");
    assert!(matches!(
        store.write(&name, token, b"stale").await,
        Err(Error::Conflict { .. })
    ));
    let (stored, value) = store.read(&name).await.expect("read").expect("stored");
    assert_eq!(
        (stored, value.as_slice()),
        (second.fencing_token(), &b"new"[..])
    );
    coord
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert!(!second.is_held());

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    for needle in [
        format!(
            "coord_lock_operations_total{{backend=\"{backend}\",op=\"acquire\",outcome=\"ok\"}} 2"
        ),
        format!(
            "coord_lock_operations_total{{backend=\"{backend}\",op=\"try_acquire\",outcome=\"busy\"}} 1"
        ),
        format!(
            "coord_backend_requests_total{{backend=\"{backend}\",op=\"try_acquire\",outcome=\"ok\"}} 3"
        ),
    ] {
        assert!(text.contains(&needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn memory_by_url() {
    lock_through_facade("memory://facade-test", "memory").await;
}

#[tokio::test]
async fn redis_by_url() {
    let server = RedisServer::start().expect("redis-server");
    lock_through_facade(server.url(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_by_url() {
    let set = tokio::task::block_in_place(RedisSentinel::start).expect("redis sentinels");
    let url = set.url();
    assert!(url.starts_with("redis+sentinel://"), "{url}");
    lock_through_facade(&url, "redis").await;
}

#[tokio::test]
async fn etcd_by_url() {
    let server = EtcdServer::start().expect("etcd");
    lock_through_facade(&server.url(), "etcd").await;
}

#[tokio::test]
async fn malformed_urls_are_invalid_arguments() {
    for url in [
        "",
        "localhost:6379",
        "nosuch://x",
        "redis://",
        "redis://host:notaport",
        "redis+sentinel://h1:26379,h2:26379",
        "redis+sentinel:///mymaster",
        "redis+sentinel://h1/mymaster?sentinel_pasword=x",
        "etcd://",
        "etcd://h1:2379,,h2:2379",
        "etcd://h1:99999",
        "memory://a/b",
    ] {
        match Coord::builder()
            .settings(settings())
            .url(url)
            .connect()
            .await
        {
            Err(Error::InvalidArgument(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("{url:?}: expected InvalidArgument, got {other}"),
            Ok(_) => panic!("{url:?}: expected InvalidArgument, connected"),
        }
    }
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unavailable() {
    let port = coord::testkit::ServerProcess::free_port().expect("port");
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("redis+sentinel://127.0.0.1:{port}/mymaster"),
        format!("etcd://127.0.0.1:{port}"),
    ] {
        let started = std::time::Instant::now();
        match Coord::builder()
            .settings(settings())
            .url(&url)
            .connect()
            .await
        {
            Err(e @ (Error::Unavailable { .. } | Error::Timeout(_))) => {
                assert!(e.is_retryable());
                assert!(e.to_string().contains(&port.to_string()), "{url}: {e}");
            }
            Err(other) => panic!("{url}: expected Unavailable, got {other}"),
            Ok(_) => panic!("{url}: connected to nothing"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{url} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn settings_pick_the_backend() {
    let server = RedisServer::start().expect("redis-server");
    let mut s = settings();
    s.url = server.url().to_owned();
    let coord = Coord::builder()
        .settings(s)
        .connect()
        .await
        .expect("connect");
    assert_eq!(coord.capabilities().backend, "redis");
}

/// Settings made in code are checked like loaded ones: a zero TTL is
/// refused at connect, not at the first acquisition.
#[tokio::test]
async fn settings_made_in_code_are_checked_at_connect() {
    let mut bad = settings();
    bad.lock.ttl = Duration::ZERO;
    let err = Coord::builder()
        .settings(bad)
        .url("memory://")
        .connect()
        .await
        .expect_err("a zero TTL");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("lock.ttl"), "{err}");
}
