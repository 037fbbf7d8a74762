//! Behaviour only the Redis backend has: fencing tokens as a hybrid logical
//! clock across restarts of a server without persistence and older fences, corrupted stored data, connection errors,
//! pub/sub wake-ups and reconnection.

use std::sync::Arc;
use std::time::Duration;

use coord_core::testkit::{LockHarness, ServerProcess, within};
use coord_core::{
    AcquireOutcome, Error, FencingToken, LockBackend, LockClient, LockOwner, Settings,
};
use coord_redis::RedisBackend;
use coord_redis::testkit::{RedisHarness, RedisServer, command_calls};

const TTL: Duration = Duration::from_secs(10);

fn owner(name: &str) -> LockOwner {
    LockOwner::new("test", name).unwrap()
}

async fn grant(b: &RedisBackend, name: &str, o: &LockOwner) -> FencingToken {
    match b.try_acquire(name, o, TTL).await.unwrap() {
        AcquireOutcome::Granted(g) => g.token,
        other => panic!("expected a grant of {name}, got {other:?}"),
    }
}

async fn refused(b: &dyn LockBackend, name: &str) {
    match b.try_acquire(name, &owner("waiter"), TTL).await.unwrap() {
        AcquireOutcome::Held { .. } => {}
        other => panic!("expected {name} to be held, got {other:?}"),
    }
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// How many connections subscribe to `channel` (`PUBSUB NUMSUB`).
async fn listeners(conn: &redis::aio::MultiplexedConnection, channel: &str) -> u64 {
    let reply: (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    reply.1
}

/// Waits, at most `limit`, until `channel` has `n` subscribers.
async fn until_listeners(
    conn: &redis::aio::MultiplexedConnection,
    channel: &str,
    n: u64,
    limit: Duration,
    what: &str,
) {
    within(limit, what, async {
        while listeners(conn, channel).await != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn fencing_tokens_increase_across_a_restart_without_persistence() {
    let mut server = RedisServer::spawn().expect("redis-server must start for this test");
    let settings = Settings::default();
    let b = RedisBackend::connect(server.url(), &settings)
        .await
        .unwrap();
    let first = grant(&b, "restart", &owner("a")).await;
    b.release("restart", &owner("a")).await.unwrap();
    let second = grant(&b, "restart", &owner("b")).await;
    assert!(second > first);

    server.restart().unwrap();
    // The server forgot everything, including the fence key.
    let mut raw = raw(server.url()).await;
    let fence: Option<String> = redis::cmd("GET")
        .arg("coord:lock:{restart}:fence")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(fence, None, "a server without persistence comes back empty");

    // The same backend reconnects (the first call may see the dropped connection).
    let mut third = None;
    for _ in 0..50 {
        match b.try_acquire("restart", &owner("c"), TTL).await {
            Ok(AcquireOutcome::Granted(g)) => {
                third = Some(g.token);
                break;
            }
            Ok(other) => panic!("the lock should be free after the restart, got {other:?}"),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let third = third.expect("reconnected after the restart");
    assert!(
        third > second,
        "token went backwards after a restart: {third} <= {second}"
    );
}

#[tokio::test]
async fn corrupted_fence_is_a_codec_error() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let ns = &h.settings().namespace;
    let mut raw = raw(h.server.url()).await;
    for bad in ["banana", "-5", "1.5", "9007199254740993"] {
        let _: () = redis::cmd("SET")
            .arg(format!("{ns}:lock:{{corrupt}}:fence"))
            .arg(bad)
            .query_async(&mut raw)
            .await
            .unwrap();
        let err = b
            .try_acquire("corrupt", &owner("a"), TTL)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{bad}: {err:?}");
        assert!(
            err.to_string().contains(bad) && err.to_string().contains("fence"),
            "{err}"
        );
        assert!(!err.is_retryable());
        // Nothing was granted, and the fence still holds what it held.
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{ns}:lock:{{corrupt}}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(!exists, "{bad}: the lock was left behind");
        let fence: String = redis::cmd("GET")
            .arg(format!("{ns}:lock:{{corrupt}}:fence"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(fence, bad);
    }
}

#[tokio::test]
async fn fence_of_another_type_is_an_error_and_grants_nothing() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let ns = &h.settings().namespace;
    let mut raw = raw(h.server.url()).await;
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{ns}:lock:{{listfence}}:fence"))
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = b
        .try_acquire("listfence", &owner("a"), TTL)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err:?}");
    // The lock taken before the fence was looked at was given back.
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("{ns}:lock:{{listfence}}"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn held_locks_report_their_remaining_lease() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let first = grant(&b, "lease", &owner("a")).await;
    // Re-grant to the same owner: the same token.
    assert_eq!(grant(&b, "lease", &owner("a")).await, first);
    match b.try_acquire("lease", &owner("b"), TTL).await.unwrap() {
        AcquireOutcome::Held {
            retry_after: Some(d),
        } => assert!(d <= TTL && d > TTL / 2, "{d:?}"),
        other => panic!("expected held with a lease, got {other:?}"),
    }
    // A lock key without expiry (set outside coord) is held with no hint.
    let ns = &h.settings().namespace;
    let mut raw = raw(h.server.url()).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{ns}:lock:{{forever}}"))
        .arg("someone")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        b.try_acquire("forever", &owner("b"), TTL).await.unwrap(),
        AcquireOutcome::Held { retry_after: None }
    );
}

#[tokio::test]
async fn fence_is_a_hybrid_logical_clock() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let ns = &h.settings().namespace;
    let mut raw = raw(h.server.url()).await;
    // A fence ahead of the server clock is still exceeded by exactly one.
    let ahead: u64 = 8_000_000_000_000_000;
    let _: () = redis::cmd("SET")
        .arg(format!("{ns}:lock:{{hlc}}:fence"))
        .arg(ahead)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(grant(&b, "hlc", &owner("a")).await.as_u64(), ahead + 1);
    // A fresh key starts at the server's clock (in microseconds, read to the
    // millisecond).
    let before = server_time_us(&mut raw).await / 1000 * 1000;
    let t = grant(&b, "hlc-fresh", &owner("a")).await.as_u64();
    let after = server_time_us(&mut raw).await;
    assert!(
        (before..=after).contains(&t),
        "token {t} is not the server clock ({before}..={after})"
    );
}

/// The server clock in microseconds.
async fn server_time_us(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1_000_000 + micros
}

#[tokio::test]
async fn a_fence_behind_the_clock_is_raised_to_it_at_the_next_grant() {
    // What a restore from an older snapshot, or a failover to a lagging
    // replica, leaves behind: a fence far below the tokens handed out since.
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let ns = &h.settings().namespace;
    let mut raw = raw(h.server.url()).await;
    for old in [1u64, 1_000_000, 1_000_007] {
        let _: () = redis::cmd("SET")
            .arg(format!("{ns}:lock:{{restored}}:fence"))
            .arg(old)
            .query_async(&mut raw)
            .await
            .unwrap();
        // The token's clock has millisecond resolution.
        let before = server_time_us(&mut raw).await / 1000 * 1000;
        let token = grant(&b, "restored", &owner("a")).await.as_u64();
        let after = server_time_us(&mut raw).await;
        b.release("restored", &owner("a")).await.unwrap();
        assert!(
            (before..=after).contains(&token),
            "fence {old}: token {token} is not the server clock ({before}..={after})"
        );
        // And the next grant counts on from there.
        let next = grant(&b, "restored", &owner("a")).await.as_u64();
        b.release("restored", &owner("a")).await.unwrap();
        assert!(next > token, "{next} <= {token}");
    }
}

#[tokio::test]
async fn uncontended_releases_publish_nothing_contended_ones_wake_waiters() {
    // A server of its own: the test counts every PUBLISH the server runs.
    let h = RedisHarness::on(RedisServer::spawn().expect("redis-server must start for this test"));
    let b = h.connect().await.unwrap();
    let mut raw = raw(h.server.url()).await;
    let a = owner("a");
    let before = command_calls(&mut raw, "publish").await;
    for _ in 0..5 {
        grant(&b, "quiet", &a).await;
        b.release("quiet", &a).await.unwrap();
    }
    assert_eq!(
        command_calls(&mut raw, "publish").await,
        before,
        "no waiter, no PUBLISH"
    );

    grant(&b, "quiet", &a).await;
    refused(&b, "quiet").await;
    // Renewing and re-granting keep the mark (and the owner check still holds).
    b.renew("quiet", &a, TTL).await.unwrap();
    grant(&b, "quiet", &a).await;
    assert!(matches!(
        b.release("quiet", &owner("waiter")).await,
        Err(Error::NotHeld(_))
    ));
    b.release("quiet", &a).await.unwrap();
    assert_eq!(
        command_calls(&mut raw, "publish").await,
        before + 1,
        "a refused waiter is woken"
    );
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_unavailable() {
    let port = ServerProcess::free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let mut settings = Settings::default();
    settings.connect_timeout = Duration::from_secs(1);
    let err = within(
        Duration::from_secs(15),
        "connect fails",
        RedisBackend::connect(&url, &settings),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("redis-server is running"), "{msg}");
}

#[tokio::test]
async fn bad_urls_are_invalid_arguments() {
    for url in [
        "redis://h:port",
        "redis://",
        "redis://h/db",
        "redis://a,b",
        "mysql://h",
    ] {
        let err = RedisBackend::connect(url, &Settings::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn wrong_password_is_a_permanent_error() {
    let h = RedisHarness::start().await;
    let url = h.server.url().replace("redis://", "redis://nobody:wrong@");
    let err = RedisBackend::connect(&url, &Settings::default())
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("username and password"), "{err}");
}

#[tokio::test]
async fn health_is_unhealthy_when_the_server_is_gone() {
    let mut server = RedisServer::spawn().expect("redis-server must start for this test");
    let b = RedisBackend::connect(server.url(), &Settings::default())
        .await
        .unwrap();
    assert!(b.health().await.is_healthy());
    server.stop().unwrap();
    let h = b.health().await;
    assert!(!h.is_healthy(), "{h:?}");
    assert!(h.detail.unwrap_or_default().contains("127.0.0.1"));
}

#[tokio::test]
async fn release_wakes_subscribers_and_shared_channels_survive_one_leaving() {
    let h = RedisHarness::start().await;
    let holder = h.new_backend().await;
    let waiter = h.new_backend().await;
    let a = owner("a");
    assert!(matches!(
        holder.try_acquire("wake", &a, TTL).await.unwrap(),
        AcquireOutcome::Granted(_)
    ));
    let mut first = waiter.subscribe("wake").await.unwrap();
    let second = waiter.subscribe("wake").await.unwrap();
    drop(second);
    // A refused attempt marks the hold as waited for; only such a release publishes.
    refused(waiter.as_ref(), "wake").await;
    // Give the unsubscribe task a chance to run: the channel must stay subscribed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    holder.release("wake", &a).await.unwrap();
    assert!(
        within(
            Duration::from_secs(5),
            "the release is published",
            first.next()
        )
        .await
    );

    // Subscribing again after everyone left works.
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut again = waiter.subscribe("wake").await.unwrap();
    assert!(matches!(
        holder.try_acquire("wake", &a, TTL).await.unwrap(),
        AcquireOutcome::Granted(_)
    ));
    // A force release publishes whether or not anyone was refused.
    assert!(holder.force_release("wake").await.unwrap());
    assert!(
        within(
            Duration::from_secs(5),
            "the force release is published",
            again.next()
        )
        .await
    );
    assert!(!holder.force_release("wake").await.unwrap());
}

#[tokio::test]
async fn a_lease_handle_that_waited_last_time_listens_first_and_tries_once_before_the_release() {
    // A worker looping on a contended lease lock: its next wait costs one
    // refused attempt (it listens before trying), then the winning one.
    // A server of its own: its command counts are this test's.
    let h = RedisHarness::on(RedisServer::spawn().expect("redis-server must start for this test"));
    let holder = LockClient::new(h.new_backend().await)
        .lock("loop")
        .ttl(TTL)
        .build();
    let worker = LockClient::new(h.new_backend().await)
        .lock("loop")
        .ttl(TTL)
        .build();
    let mut conn = raw(h.server.url()).await;
    for round in 0..3 {
        let held = holder.acquire().await.unwrap();
        let attempts = command_calls(&mut conn, "set").await;
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.acquire().await.unwrap() }
        });
        // The worker's refusal marks the holder's value (a trailing NUL).
        within(Duration::from_secs(5), "the worker is refused", async {
            loop {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg(format!("{}:lock:{{loop}}", h.settings().namespace))
                    .query_async(&mut conn.clone())
                    .await
                    .unwrap();
                if value.last() == Some(&0) {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        let token = held.fencing_token();
        held.release().await.unwrap();
        let guard = within(Duration::from_secs(5), "the worker is granted", waiting)
            .await
            .unwrap();
        assert!(guard.fencing_token() > token);
        let tried = command_calls(&mut conn, "set").await - attempts;
        // The first wait tries again once it listens (before or after the
        // release, a race), later ones try once before the release.
        if round == 0 {
            assert!((2..=3).contains(&tried), "round 0: {tried}");
        } else {
            assert_eq!(tried, 2, "round {round}");
        }
        guard.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_channel_left_by_its_last_listener_lingers_then_is_unsubscribed() {
    // A worker that waits for the same lock again and again joins its
    // channel without a SUBSCRIBE round trip each time; a channel nobody
    // comes back to is unsubscribed after a few seconds.
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let b = RedisBackend::connect(server.url(), &Settings::default())
        .await
        .unwrap();
    let mut conn = raw(server.url()).await;
    let channel = format!("{}:lock:{{linger}}:released", Settings::default().namespace);
    let first = b.subscribe("linger").await.unwrap();
    assert_eq!(listeners(&conn, &channel).await, 1);
    let subscribes = command_calls(&mut conn, "subscribe").await;
    drop(first);
    for _ in 0..5 {
        // The leaving runs in a task of its own: let it run first.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        drop(b.subscribe("linger").await.unwrap());
    }
    assert_eq!(command_calls(&mut conn, "subscribe").await, subscribes);
    assert_eq!(
        listeners(&conn, &channel).await,
        1,
        "still subscribed while it lingers"
    );
    until_listeners(
        &conn,
        &channel,
        0,
        Duration::from_secs(15),
        "the idle channel is unsubscribed",
    )
    .await;
    // And a listener after that subscribes again, and is woken.
    let mut later = b.subscribe("linger").await.unwrap();
    assert_eq!(listeners(&conn, &channel).await, 1);
    let _: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(within(Duration::from_secs(5), "the message arrives", later.next()).await);
}

#[tokio::test]
async fn a_channel_left_again_and_again_keeps_one_lingering_task() {
    // A worker looping on a contended lock joins and leaves its channel on
    // every wait: the channel lingers once, not once per leaving (a task
    // per leaving, each sleeping the whole linger, piled up by the
    // thousand under contention).
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let b = RedisBackend::connect(server.url(), &Settings::default())
        .await
        .unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    drop(b.subscribe("churn").await.unwrap());
    let settle = || async {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    };
    settle().await;
    let before = metrics.num_alive_tasks();
    for _ in 0..100 {
        drop(b.subscribe("churn").await.unwrap());
        settle().await;
    }
    let after = metrics.num_alive_tasks();
    assert!(
        after <= before + 2,
        "{} tasks more after 100 leavings ({before} -> {after})",
        after.saturating_sub(before)
    );
}

#[tokio::test]
async fn pubsub_streams_end_when_the_server_dies_and_resubscribe_after() {
    let mut server = RedisServer::spawn().expect("redis-server must start for this test");
    let b = RedisBackend::connect(server.url(), &Settings::default())
        .await
        .unwrap();
    let mut events = b.subscribe("dies").await.unwrap();
    server.restart().unwrap();
    assert!(
        !within(Duration::from_secs(5), "the stream ends", events.next()).await,
        "a stream on a dead connection ends"
    );
    let mut events = within(Duration::from_secs(10), "resubscribed", async {
        loop {
            match b.subscribe("dies").await {
                Ok(ev) => break ev,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    let a = owner("a");
    let mut token = None;
    for _ in 0..50 {
        if let Ok(AcquireOutcome::Granted(g)) = b.try_acquire("dies", &a, TTL).await {
            token = Some(g.token);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(token.is_some());
    refused(&b, "dies").await;
    b.release("dies", &a).await.unwrap();
    assert!(
        within(
            Duration::from_secs(5),
            "the release is published",
            events.next()
        )
        .await
    );
}

#[tokio::test]
async fn lock_client_end_to_end() {
    let h = RedisHarness::start().await;
    let client = LockClient::new(Arc::new(h.connect().await.unwrap()));
    let lock = client.lock("e2e").ttl(Duration::from_secs(5)).build();
    let guard = lock.acquire().await.unwrap();
    assert!(lock.try_acquire().await.unwrap().is_none());
    let t = guard.fencing_token();
    guard.release().await.unwrap();
    let again = lock.acquire().await.unwrap();
    assert!(again.fencing_token() > t);
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_paused_server_gives_timeouts_and_unhealthy() {
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let mut settings = Settings::default();
    settings.request_timeout = Duration::from_millis(300);
    settings.connect_timeout = Duration::from_millis(300);
    let b = RedisBackend::connect(server.url(), &settings)
        .await
        .unwrap();
    grant(&b, "paused", &owner("a")).await;
    server.pause().unwrap();
    let result = within(
        Duration::from_secs(5),
        "the request times out",
        b.try_acquire("paused", &owner("b"), TTL),
    )
    .await;
    let health = within(Duration::from_secs(5), "health answers", b.health()).await;
    let sub = within(
        Duration::from_secs(5),
        "subscribe gives up",
        b.subscribe("paused"),
    )
    .await;
    server.resume().unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(!health.is_healthy(), "{health:?}");
    assert!(sub.unwrap_err().is_retryable());
    // Works again once resumed.
    let mut ok = false;
    for _ in 0..50 {
        if b.renew("paused", &owner("a"), TTL).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "renew works after the server resumes");
    assert!(
        within(Duration::from_secs(5), "subscribe", b.subscribe("paused"))
            .await
            .is_ok()
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn rediss_to_a_plain_server_fails_cleanly() {
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let url = server.url().replace("redis://", "rediss://");
    let mut settings = Settings::default();
    settings.connect_timeout = Duration::from_secs(1);
    settings.request_timeout = Duration::from_secs(1);
    let result = within(
        Duration::from_secs(15),
        "connect fails",
        RedisBackend::connect(&url, &settings),
    )
    .await;
    assert!(
        result.is_err(),
        "a TLS handshake with a plain server cannot succeed"
    );
}

#[tokio::test]
async fn a_cluster_spreads_locks_over_its_nodes_and_wakes_waiters_across_them() {
    let h = RedisHarness::start_cluster().await;
    let url = h.server.url().to_owned();
    let holder = h.connect().await.unwrap();
    let waiter = h.connect().await.unwrap();
    let a = owner("a");
    for i in 0..32 {
        grant(&holder, &format!("spread/{i}"), &a).await;
    }
    // Every node holds some of the locks (each lock's keys share one slot).
    let addrs = url.trim_start_matches("redis+cluster://");
    assert_eq!(addrs.split(',').count(), 3, "{url}");
    for addr in addrs.split(',') {
        let mut node = raw(&format!("redis://{addr}")).await;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut node).await.unwrap();
        assert!(keys > 0, "node {addr} holds none of the 32 locks");
    }
    // A release is published on the lock's node and heard through the hub.
    for i in 0..3 {
        let name = format!("spread/{i}");
        let mut events = waiter.subscribe(&name).await.unwrap();
        refused(&waiter, &name).await;
        holder.release(&name, &a).await.unwrap();
        assert!(
            within(
                Duration::from_secs(5),
                "the release is published",
                events.next()
            )
            .await,
            "no wake-up for {name}"
        );
    }
}

/// The ids of the server's pub/sub connections subscribed to one channel.
async fn pubsub_clients(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter(|l| l.contains(" sub=1 "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// Polls (bounded) until exactly one pub/sub connection is subscribed and
/// it is not `not`; returns its id.
async fn one_subscriber(conn: &mut redis::aio::MultiplexedConnection, not: Option<&str>) -> String {
    within(Duration::from_secs(10), "the waiter subscribes", async {
        loop {
            let ids = pubsub_clients(conn).await;
            if ids.len() == 1 && Some(ids[0].as_str()) != not {
                break ids[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_waiter_resubscribes_when_its_pubsub_connection_is_killed() {
    let h = RedisHarness::start().await;
    let mut raw = raw(h.server.url()).await;
    let holder = LockClient::new(Arc::new(h.connect().await.unwrap()));
    let waiter = LockClient::new(Arc::new(h.connect().await.unwrap()));
    let guard = holder
        .lock("killed")
        .ttl(Duration::from_secs(30))
        .build()
        .acquire()
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        waiter
            .lock("killed")
            .ttl(Duration::from_secs(30))
            .poll_interval(Duration::from_secs(30))
            .wait_forever()
            .build()
            .acquire()
            .await
    });
    let first = one_subscriber(&mut raw, None).await;
    // A channel that dies younger than 1 s makes a waiter poll instead; this
    // one is older when it is killed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the waiter's pub/sub connection");
    // The waiter listens again, on a new connection.
    one_subscriber(&mut raw, Some(&first)).await;

    let released_at = std::time::Instant::now();
    guard.release().await.unwrap();
    let won = within(Duration::from_secs(5), "the waiter wakes", waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(
        released_at.elapsed() < Duration::from_secs(2),
        "woken through the new subscription, not the 30 s poll: {:?}",
        released_at.elapsed()
    );
    won.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_script_calls_and_a_bad_lock_fails_alone() {
    // A server of its own: the test counts the script calls it runs.
    let h = RedisHarness::on(RedisServer::spawn().expect("redis-server must start for this test"));
    let b = Arc::new(h.connect().await.unwrap());
    let ns = h.settings().namespace.clone();
    let mut raw = raw(h.server.url()).await;
    let _: () = redis::cmd("RPUSH")
        .arg(format!("{ns}:lock:{{batch/bad}}:fence"))
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    const N: usize = 64;
    let names: Vec<String> = (0..N)
        .map(|i| {
            if i == N / 2 {
                "batch/bad".to_owned()
            } else {
                format!("batch/{i}")
            }
        })
        .collect();
    let before = command_calls(&mut raw, "evalsha").await;
    let a = owner("a");
    let outcomes = futures::future::join_all(names.iter().map(|n| b.try_acquire(n, &a, TTL))).await;
    for (name, outcome) in names.iter().zip(&outcomes) {
        match outcome {
            Err(e) if name == "batch/bad" => assert!(e.to_string().contains("WRONGTYPE"), "{e}"),
            Ok(AcquireOutcome::Granted(_)) if name != "batch/bad" => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    let releases = futures::future::join_all(
        names
            .iter()
            .filter(|n| *n != "batch/bad")
            .map(|n| b.release(n, &a)),
    )
    .await;
    assert!(releases.iter().all(Result::is_ok), "{releases:?}");
    let scripts = command_calls(&mut raw, "evalsha").await - before;
    assert!(
        scripts < 2 * N as u64 - 1,
        "{scripts} script calls for {} operations: nothing was batched",
        2 * N - 1
    );
    // Every lock is free again, and the bad one was never taken.
    for name in &names {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{ns}:lock:{{{name}}}"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(!exists, "{name} is still held");
    }
}

/// A held lock whose fence key was deleted outside coord is still inspected:
/// the holder without a token, not an unexpected-reply error.
#[tokio::test]
async fn inspect_of_a_lock_without_its_fence_shows_the_holder() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let ns = &h.settings().namespace;
    let mut raw = raw(h.server.url()).await;
    let o = owner("fenceless");
    grant(&b, "fenceless", &o).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{ns}:lock:{{fenceless}}:fence"))
        .query_async(&mut raw)
        .await
        .unwrap();
    let info = b
        .inspect("fenceless")
        .await
        .expect("inspect")
        .expect("held");
    assert_eq!(info.holders[0].owner, o.as_str());
    assert_eq!(info.holders[0].token, None);
    b.release("fenceless", &o).await.unwrap();
}

#[tokio::test]
async fn a_subscription_cancelled_while_its_subscribe_is_unanswered_leaves_the_channel() {
    // A listener given up while its SUBSCRIBE is in flight (a waiter whose
    // deadline passed, a cache dropped) must not keep the channel
    // subscribed for the connection's lifetime.
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let b = RedisBackend::connect(server.url(), &Settings::default())
        .await
        .unwrap();
    let conn = raw(server.url()).await;
    let channel = format!(
        "{}:lock:{{given-up}}:released",
        Settings::default().namespace
    );
    // The pub/sub connection is open, so the next subscription's only
    // round trip is its SUBSCRIBE.
    let _open = b.subscribe("other").await.unwrap();
    server.pause().unwrap();
    let given_up = tokio::time::timeout(Duration::from_millis(300), b.subscribe("given-up")).await;
    server.resume().unwrap();
    assert!(
        given_up.is_err(),
        "the subscription cannot complete while the server is paused"
    );
    until_listeners(
        &conn,
        &channel,
        1,
        Duration::from_secs(10),
        "the SUBSCRIBE sent before the cancellation reaches the server",
    )
    .await;
    until_listeners(
        &conn,
        &channel,
        0,
        Duration::from_secs(15),
        "the channel nobody listens to any more is unsubscribed",
    )
    .await;
}
