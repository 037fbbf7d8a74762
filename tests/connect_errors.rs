//! Connecting to the wrong thing, or to something that does not answer:
//! every connect is bounded by `connect_timeout` and every call by
//! `request_timeout`, and the error says what is wrong (a password is
//! needed; this does not look like a Redis / etcd server), and is not
//! retryable when another kind of server answered.

use std::time::Duration;

use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdServer;
use coord::redis::RedisBackend;
use coord::redis::testkit::RedisServer;
use coord::{Coord, Error, LockBackend, LockOwner, Settings};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

const CONNECT: Duration = Duration::from_secs(1);
const REQUEST: Duration = Duration::from_millis(500);
/// Slack for a busy machine on top of a bound.
const SLACK: Duration = Duration::from_millis(700);

fn settings() -> Settings {
    let mut s = Settings::default();
    s.connect_timeout = CONNECT;
    s.request_timeout = REQUEST;
    s
}

async fn connect_err(url: &str) -> (Error, Duration) {
    let start = Instant::now();
    let result = Coord::builder()
        .settings(settings())
        .url(url)
        .connect()
        .await;
    let took = start.elapsed();
    match result {
        Ok(_) => panic!("connecting to {url} succeeded"),
        Err(e) => (e, took),
    }
}

/// A listener that accepts connections and never answers.
async fn silent_listener() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    (addr, task)
}

/// A listener that answers every connection like an HTTP server.
async fn http_listener() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_silent_server_fails_connect_within_connect_timeout() {
    let (addr, task) = silent_listener().await;
    for url in [format!("redis://{addr}"), format!("etcd://{addr}")] {
        let (e, took) = connect_err(&url).await;
        assert!(took < CONNECT + SLACK, "{url}: connect took {took:?}: {e}");
        assert!(
            matches!(e, Error::Timeout(_) | Error::Unavailable { .. }),
            "{url}: {e:?}"
        );
    }
    task.abort();
}

#[tokio::test]
async fn redis_without_the_password_it_needs_fails_at_connect() {
    let server = RedisServer::spawn_with(&["--requirepass", "s3cret"])
        .expect("redis-server with requirepass");
    let port = server.url().rsplit(':').next().expect("port").to_owned();
    let (e, _) = connect_err(&format!("redis://127.0.0.1:{port}")).await;
    assert!(e.to_string().contains("needs a password"), "{e}");
    let (e, _) = connect_err(&format!("redis://:wrong@127.0.0.1:{port}")).await;
    assert!(e.to_string().contains("password"), "{e}");
    let ok = Coord::builder()
        .settings(settings())
        .url(format!("redis://:s3cret@127.0.0.1:{port}"))
        .connect()
        .await
        .expect("connect with the password");
    let guard = ok.lock("auth").build().acquire().await.expect("acquire");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn redis_database_out_of_range_is_invalid_argument() {
    let server = RedisServer::spawn().expect("redis-server");
    let (e, _) = connect_err(&format!("{}/99", server.url())).await;
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("no such database"), "{e}");
}

#[tokio::test]
async fn redis_at_an_etcd_or_http_port_says_so() {
    let etcd = EtcdServer::shared().expect("etcd");
    let etcd_addr = etcd.endpoints()[0].trim_start_matches("http://").to_owned();
    let (http_addr, task) = http_listener().await;
    // etcd closes what is not HTTP without a word, as a proxy with no
    // server behind it would: that may pass, so it is retryable; an HTTP
    // server's answer will not change.
    for (addr, retryable) in [(etcd_addr, true), (http_addr, false)] {
        let (e, took) = connect_err(&format!("redis://{addr}")).await;
        assert!(took < CONNECT + SLACK, "{addr}: connect took {took:?}");
        assert!(
            e.to_string().contains("does not look like a Redis server"),
            "{addr}: {e}"
        );
        assert_eq!(e.is_retryable(), retryable, "{addr}: {e}");
    }
    task.abort();
}

/// Nothing listens at the address: `connect` fails at once on both
/// backends (the refusal is an answer), not at `connect_timeout`.
#[tokio::test]
async fn nothing_listening_fails_connect_at_once() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    for url in [format!("redis://{addr}"), format!("etcd://{addr}")] {
        let (e, took) = connect_err(&url).await;
        assert!(took < CONNECT / 2, "{url}: connect took {took:?}: {e}");
        assert!(e.to_string().contains("running"), "{url}: {e}");
        assert!(e.is_retryable(), "{url}: a server may start there: {e}");
    }
}

#[tokio::test]
async fn etcd_at_a_redis_port_says_so() {
    let redis = RedisServer::start().expect("redis");
    let addr = redis.url().trim_start_matches("redis://").to_owned();
    let (e, took) = connect_err(&format!("etcd://{addr}")).await;
    assert!(took < CONNECT + SLACK, "connect took {took:?}");
    assert!(
        e.to_string().contains("does not look like an etcd server"),
        "{e}"
    );
    assert!(
        !e.is_retryable(),
        "a Redis server's answer will not change: {e}"
    );
}

/// A server that stops answering after the connection was made: one call
/// fails within `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_paused_server_fail_within_request_timeout() {
    let redis = RedisServer::spawn().expect("redis");
    let etcd = EtcdServer::start().expect("etcd");
    let r = RedisBackend::connect(redis.url(), &settings())
        .await
        .expect("redis");
    let e = EtcdBackend::connect(&etcd.url(), &settings())
        .await
        .expect("etcd");
    let owner = LockOwner::new("timeouts", "o").expect("owner");
    let backends: [(&str, &dyn LockBackend); 2] = [("redis", &r), ("etcd", &e)];
    for (name, b) in backends {
        b.try_acquire("warm", &owner, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    redis.pause().expect("pause redis");
    etcd.pause().expect("pause etcd");
    for (name, b) in backends {
        let start = Instant::now();
        let result = b
            .try_acquire("paused", &owner, Duration::from_secs(5))
            .await;
        let took = start.elapsed();
        assert!(result.is_err(), "{name}: {result:?}");
        assert!(took < REQUEST + SLACK, "{name}: the call took {took:?}");
    }
    redis.resume().expect("resume");
    etcd.resume().expect("resume");
}
