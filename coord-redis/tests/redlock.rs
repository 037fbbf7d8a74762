//! Redlock against real local servers: outages, cleanup, the restart
//! quarantine and fencing tokens.

use std::sync::Arc;
use std::time::Duration;

use coord_core::{AcquireOutcome, Error, FencingToken, LockBackend, LockClient, LockOwner};
use coord_redis::testkit::RedlockHarness;
use coord_redis::{RedlockBackend, RedlockConfig};
use tokio::time::Instant;

/// A connection of its own to server `i` of `h`.
async fn server_conn(h: &RedlockHarness, i: usize) -> redis::aio::MultiplexedConnection {
    redis::Client::open(h.server(i).url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// A connection to each server of `h`, in order.
async fn server_conns(h: &RedlockHarness) -> Vec<redis::aio::MultiplexedConnection> {
    let mut conns = Vec::new();
    for i in 0..h.urls().len() {
        conns.push(server_conn(h, i).await);
    }
    conns
}

/// How many times the servers behind `conns` ran `command`, together.
async fn calls_on_all(conns: &mut [redis::aio::MultiplexedConnection], command: &str) -> u64 {
    let mut calls = 0;
    for conn in conns {
        calls += coord_redis::testkit::command_calls(conn, command).await;
    }
    calls
}

/// Whether server `i` of `h` holds the lock key of `name` (any owner).
async fn has_lock(h: &RedlockHarness, i: usize, name: &str) -> bool {
    let mut conn = server_conn(h, i).await;
    let key = format!("{}:lock:{{{name}}}", h.settings().namespace);
    redis::cmd("EXISTS")
        .arg(&key)
        .query_async::<i64>(&mut conn)
        .await
        .expect("EXISTS")
        == 1
}

/// The fence (last token) of `name` on server `i` of `h`.
async fn fence(h: &RedlockHarness, i: usize, name: &str) -> u64 {
    let mut conn = server_conn(h, i).await;
    let key = format!("{}:lock:{{{name}}}:fence", h.settings().namespace);
    redis::cmd("GET")
        .arg(&key)
        .query_async::<u64>(&mut conn)
        .await
        .expect("GET fence")
}

fn owner(name: &str) -> LockOwner {
    LockOwner::new("redlock-test", name).expect("owner")
}

async fn grant(b: &dyn LockBackend, name: &str, who: &LockOwner, ttl: Duration) -> FencingToken {
    match b.try_acquire(name, who, ttl).await {
        Ok(AcquireOutcome::Granted(g)) => {
            assert!(
                g.ttl < ttl,
                "validity {:?} must be below the TTL {ttl:?}",
                g.ttl
            );
            g.token
        }
        other => panic!("expected a grant of {name}, got {other:?}"),
    }
}

/// Options whose quarantine a test can wait out.
fn quick_quarantine() -> RedlockConfig {
    let mut c = RedlockHarness::config();
    c.max_ttl = Duration::from_secs(2);
    c.quarantine = None;
    c.retry_count = 1;
    c.retry_delay = Duration::from_millis(20);
    c
}

/// Waits (bounded) until `b` has noticed that server `i` restarted: a server
/// that failed is checked in the background while the others serve.
async fn until_quarantined(b: &RedlockBackend, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let probe = owner("probe");
    while b.is_quarantined(i) != Some(true) {
        assert!(
            Instant::now() < deadline,
            "server {i} not seen as quarantined after 5 s"
        );
        // An attempt starts the check when one is due.
        let _ = b.try_acquire("probe", &probe, Duration::from_secs(1)).await;
        let _ = b.release("probe", &probe).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until no server of `b` is quarantined.
async fn until_out_of_quarantine(b: &RedlockBackend, servers: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !servers.iter().all(|&i| b.is_quarantined(i) == Some(false)) {
        assert!(
            Instant::now() < deadline,
            "servers {servers:?} still quarantined after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_with_a_minority_down() {
    let mut h = RedlockHarness::start(3).await;
    let before = Arc::new(h.connect().await.expect("connect"));
    h.stop(2).expect("stop");
    // Connecting while a minority is down works too.
    let after = Arc::new(h.connect().await.expect("connect with one server down"));
    let mut last = None;
    for backend in [before, after] {
        let client = LockClient::new(backend);
        let guard = client
            .lock("minority")
            .ttl(Duration::from_secs(5))
            .wait_timeout(Duration::from_secs(10))
            .build()
            .acquire()
            .await
            .expect("acquire with 2 of 3 servers");
        assert!(guard.ttl() < Duration::from_secs(5));
        if let Some(prev) = last {
            assert!(guard.fencing_token() > prev);
        }
        last = Some(guard.fencing_token());
        guard.renew().await.expect("renew with 2 of 3 servers");
        guard.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_without_a_majority_and_leaves_nothing() {
    let mut h = RedlockHarness::start(3).await;
    let b = h.connect().await.expect("connect");
    h.stop(1).expect("stop");
    h.stop(2).expect("stop");
    let who = owner("a");
    let err = b
        .try_acquire("majority-down", &who, Duration::from_secs(5))
        .await
        .expect_err("no majority");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("1 of 3") && msg.contains("needs 2"), "{msg}");
    assert!(
        !has_lock(&h, 0, "majority-down").await,
        "the one server that granted must have been unlocked"
    );
    // A new client cannot even start without a quorum.
    let err = h.connect().await.expect_err("no quorum to connect to");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_vote_leaves_nothing_behind() {
    let h = RedlockHarness::start(3).await;
    let mut config = RedlockHarness::config();
    config.retry_count = 2;
    config.retry_delay = Duration::from_millis(10);
    let b = h.connect_with(config).await.expect("connect");
    // Someone else holds the lock on servers 1 and 2 only.
    let other = owner("other");
    for i in [1, 2] {
        let one = h.connect_one(i).await.expect("connect one");
        grant_plain(&one, "split", &other).await;
    }
    let who = owner("me");
    let outcome = b
        .try_acquire("split", &who, Duration::from_secs(5))
        .await
        .expect("attempt");
    match outcome {
        AcquireOutcome::Held { retry_after } => {
            let after = retry_after.expect("the holder's remaining lease");
            assert!(after <= Duration::from_secs(30), "{after:?}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    assert!(
        !has_lock(&h, 0, "split").await,
        "server 0 granted but the attempt failed: it must be unlocked"
    );
    assert!(has_lock(&h, 1, "split").await && has_lock(&h, 2, "split").await);
    // Releasing by a non-holder changes nothing and says so.
    assert!(matches!(
        b.release("split", &who).await,
        Err(Error::NotHeld(_))
    ));
}

/// Takes `name` on one plain server for `who` (30 s).
async fn grant_plain(b: &coord_redis::RedisBackend, name: &str, who: &LockOwner) -> FencingToken {
    match b.try_acquire(name, who, Duration::from_secs(30)).await {
        Ok(AcquireOutcome::Granted(g)) => g.token,
        other => panic!("expected a grant on one server, got {other:?}"),
    }
}

/// The classic Redlock hazard: the holder has servers 0 and 1 (server 2 was
/// busy), server 1 restarts empty, server 2 is free. Without the quarantine
/// another owner would win 1 and 2, a majority, while the first still
/// believes it holds the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_quarantined() {
    let mut h = RedlockHarness::start(3).await;
    let config = quick_quarantine();
    let early = h.connect_with(config.clone()).await.expect("connect");
    // New servers are quarantined too: nothing is granted before it ends.
    let who = owner("holder");
    assert!(matches!(
        early.try_acquire("q", &who, Duration::from_secs(2)).await,
        Ok(AcquireOutcome::Held { .. })
    ));
    for i in 0..3 {
        assert!(!has_lock(&h, i, "q").await);
    }
    until_out_of_quarantine(&early, &[0, 1, 2]).await;

    // Server 2 is busy with a short lock of someone else.
    let busy = h.connect_one(2).await.expect("connect one");
    let squatter = owner("squatter");
    assert!(matches!(
        busy.try_acquire("q", &squatter, Duration::from_secs(60))
            .await,
        Ok(AcquireOutcome::Granted(_))
    ));
    let token = grant(&early, "q", &who, Duration::from_secs(2)).await;
    assert!(has_lock(&h, 0, "q").await && has_lock(&h, 1, "q").await);
    busy.release("q", &squatter).await.expect("squatter leaves");

    h.restart(1).expect("restart server 1 empty");
    let fresh = h.connect_with(config.clone()).await.expect("connect after");
    assert_eq!(fresh.is_quarantined(1), Some(true));
    let thief = owner("thief");
    for b in [&fresh, &early] {
        let outcome = b
            .try_acquire("q", &thief, Duration::from_secs(2))
            .await
            .expect("attempt");
        assert!(
            matches!(outcome, AcquireOutcome::Held { .. }),
            "a restarted server was counted: {outcome:?}"
        );
    }
    // The client connected before the restart noticed it.
    until_quarantined(&early, 1).await;
    assert!(
        !has_lock(&h, 1, "q").await,
        "a quarantined server got a lock"
    );
    assert!(!has_lock(&h, 2, "q").await, "a failed attempt left a lock");
    // The holder's majority is gone with server 1's data: its renewal says so.
    assert!(matches!(
        early.renew("q", &who, Duration::from_secs(2)).await,
        Err(Error::NotHeld(_))
    ));

    // Once the holder's lease ran out, the lock is free again, with a higher token.
    let deadline = Instant::now() + Duration::from_secs(15);
    let next = loop {
        match fresh
            .try_acquire("q", &thief, Duration::from_secs(2))
            .await
            .expect("attempt")
        {
            AcquireOutcome::Granted(g) => break g.token,
            AcquireOutcome::Held { retry_after } => {
                assert!(Instant::now() < deadline, "never granted again");
                let wait = retry_after.unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
            }
        }
    };
    assert!(next > token, "token {next} after {token}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_increase_across_grants_and_restarts() {
    let mut h = RedlockHarness::start(3).await;
    let config = quick_quarantine();
    let b = h.connect_with(config.clone()).await.expect("connect");
    until_out_of_quarantine(&b, &[0, 1, 2]).await;
    let ttl = Duration::from_secs(2);
    let mut last = FencingToken::new(0);
    let mut next = |t: FencingToken| {
        assert!(t > last, "token {t} after {last}");
        last = t;
    };
    for round in 0..5 {
        let who = owner(&format!("o{round}"));
        let token = grant(&b, "t", &who, ttl).await;
        next(token);
        // Every granting server's fence was raised to the Redlock token.
        for i in 0..3 {
            assert_eq!(fence(&h, i, "t").await, token.as_u64(), "server {i}");
        }
        b.release("t", &who).await.expect("release");
    }
    for restarted in [1, 2] {
        h.restart(restarted).expect("restart");
        // The other two grant while the restarted one is quarantined ...
        for round in 0..3 {
            let who = owner(&format!("r{restarted}-{round}"));
            next(grant(&b, "t", &who, ttl).await);
            b.release("t", &who).await.expect("release");
        }
        until_quarantined(&b, restarted).await;
        // ... and it takes part again afterwards.
        until_out_of_quarantine(&b, &[0, 1, 2]).await;
    }
    // A new client with its own connections continues the sequence.
    let other = h.connect_with(config).await.expect("connect");
    let who = owner("last");
    next(grant(&other, "t", &who, ttl).await);
    other.release("t", &who).await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_tolerate_two_down() {
    let mut h = RedlockHarness::start(5).await;
    let b = Arc::new(h.connect().await.expect("connect"));
    assert_eq!(b.quorum(), 3);
    h.stop(0).expect("stop");
    h.stop(3).expect("stop");
    let client = LockClient::new(b.clone());
    let guard = client
        .lock("five")
        .ttl(Duration::from_secs(5))
        .build()
        .acquire()
        .await
        .expect("acquire with 3 of 5");
    let token = guard.fencing_token();
    guard.release().await.expect("release");
    let who = owner("five");
    assert!(grant(b.as_ref(), "five", &who, Duration::from_secs(5)).await > token);
    b.release("five", &who).await.expect("release");
    h.stop(4).expect("stop");
    let err = b
        .try_acquire("five", &who, Duration::from_secs(5))
        .await
        .expect_err("2 of 5");
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.to_string().contains("2 of 5"),
        "{err}"
    );
    for i in [1, 2] {
        assert!(!has_lock(&h, i, "five").await);
    }
}

/// With two of five servers hung (SIGSTOP: connections open, no answer),
/// only the first attempt waits for them; later attempts and releases do not
/// wait their server timeout (they are probed in the background, at most
/// once a second), so each takes about one round trip of the live servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_servers_do_not_slow_every_attempt() {
    let h = RedlockHarness::start(5).await;
    let config = RedlockHarness::config();
    let limit = config.server_timeout;
    let b = h.connect_with(config).await.expect("connect");
    for i in [0, 3] {
        h.server(i).pause().expect("pause");
    }
    let who = owner("hung");
    let ttl = Duration::from_secs(10);
    // The first attempt meets the hung servers and waits for them once.
    grant(&b, "hung", &who, ttl).await;
    b.release("hung", &who).await.expect("release");
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let start = Instant::now();
        grant(&b, "hung", &who, ttl).await;
        b.release("hung", &who).await.expect("release");
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < limit / 2,
        "an attempt with 2 of 5 servers hung took {slowest:?}; the server timeout is {limit:?}"
    );
    for i in [0, 3] {
        h.server(i).resume().expect("resume");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_is_below_the_ttl_and_long_ttls_are_refused() {
    let h = RedlockHarness::start(3).await;
    let b = h.connect().await.expect("connect");
    let who = owner("v");
    let ttl = Duration::from_secs(10);
    let started = Instant::now();
    let granted = b.try_acquire("v", &who, ttl).await.expect("attempt");
    let elapsed = started.elapsed();
    let AcquireOutcome::Granted(g) = granted else {
        panic!("expected a grant, got {granted:?}");
    };
    // ttl - elapsed - (1 % + 2 ms)
    assert!(g.ttl <= ttl - Duration::from_millis(102), "{:?}", g.ttl);
    assert!(
        g.ttl >= ttl - Duration::from_millis(102) - elapsed,
        "{:?}",
        g.ttl
    );
    // The same owner again: the same token.
    match b.try_acquire("v", &who, ttl).await.expect("again") {
        AcquireOutcome::Granted(again) => assert_eq!(again.token, g.token),
        other => panic!("expected a re-grant, got {other:?}"),
    }
    b.release("v", &who).await.expect("release");
    let err = b
        .try_acquire("v", &who, Duration::from_secs(61))
        .await
        .expect_err("above max_ttl");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let caps = b.capabilities();
    assert_eq!(caps.backend, "redlock");
    assert!(caps.fencing && caps.distributed && caps.watch && !caps.linearizable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused() {
    let h = RedlockHarness::start(1).await;
    let url = h.server(0).url();
    let s = h.settings();
    let none: [&str; 0] = [];
    let err = RedlockBackend::connect(&none, s, RedlockConfig::default())
        .await
        .expect_err("no servers");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = RedlockBackend::connect(&[url, url], s, RedlockConfig::default())
        .await
        .expect_err("the same server twice");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let cluster = format!("redis+cluster://{}", url.trim_start_matches("redis://"));
    let err = RedlockBackend::connect(&[cluster.as_str()], s, RedlockConfig::default())
        .await
        .expect_err("a cluster");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // One server is a valid (if pointless) Redlock.
    let one = RedlockBackend::connect(&[url], s, RedlockHarness::config())
        .await
        .expect("one server");
    assert_eq!(one.quorum(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_list_report_the_majority_view() {
    let h = RedlockHarness::start(3).await;
    let b = h.connect().await.expect("connect");
    assert_eq!(b.inspect("view/a").await.expect("inspect"), None);
    let who = owner("viewer");
    let token = grant(&b, "view/a", &who, Duration::from_secs(10)).await;
    // A minority view (one server only) is not a holder.
    let lone = h.connect_one(0).await.expect("connect one");
    let stranger = owner("stranger");
    grant_plain(&lone, "view/b", &stranger).await;

    let info = b.inspect("view/a").await.expect("inspect").expect("held");
    let holder = &info.holders[0];
    assert_eq!(holder.owner, who.as_str());
    assert_eq!(holder.token, Some(token));
    let left = holder.ttl_remaining.expect("a remaining lease");
    assert!(left <= Duration::from_secs(10), "{left:?}");
    assert_eq!(b.inspect("view/b").await.expect("inspect"), None);

    let listed = b.list("view/").await.expect("list");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["view/a"]);
    b.release("view/a", &who).await.expect("release");
    assert_eq!(b.inspect("view/a").await.expect("inspect"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_grant_reads_each_servers_clock_once_and_its_token_follows_it() {
    // The quarantine check's TIME is also the hybrid clock's reading: no
    // PEXPIRETIME on top of it.
    let h = RedlockHarness::start(3).await;
    let b = h.connect_with(quick_quarantine()).await.expect("connect");
    until_out_of_quarantine(&b, &[0, 1, 2]).await;
    let mut conns = server_conns(&h).await;
    let mut before = Vec::new();
    for conn in &mut conns {
        let time: (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
        let calls = (
            coord_redis::testkit::command_calls(conn, "time").await,
            coord_redis::testkit::command_calls(conn, "pexpiretime").await,
        );
        before.push((time.0 * 1_000_000 + time.1, calls));
    }
    let who = owner("clock");
    let token = grant(&b, "clock", &who, Duration::from_secs(2)).await;
    b.release("clock", &who).await.expect("release");
    for (i, conn) in conns.iter_mut().enumerate() {
        let (server_us, (times, pexpiretimes)) = before[i];
        // Redlock's fences follow the clock in 10 ms steps.
        let step = server_us - server_us % 10_000;
        assert!(
            token.as_u64() >= step,
            "server {i}: token {token} is below the 10 ms step {step} of the server clock read before the grant"
        );
        // (Background checks of the servers read TIME too: at least one.)
        assert!(
            coord_redis::testkit::command_calls(conn, "time").await > times,
            "server {i}: the grant reads TIME"
        );
        assert_eq!(
            coord_redis::testkit::command_calls(conn, "pexpiretime").await,
            pexpiretimes,
            "server {i}: no PEXPIRETIME beside the TIME"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_of_a_grant_hand_out_the_same_token_as_the_clock_moves() {
    // Each server raises its fence to its own clock when the fence falls
    // behind it. Read to the microsecond, three servers' clocks give three
    // tokens, and Redlock must raise the two lower fences (a round trip, a
    // GET and a SET each) on most grants made 10 ms or more apart; read in
    // 10 ms steps, they agree but for a step boundary between the readings.
    let h = RedlockHarness::start(3).await;
    let b = h.connect_with(quick_quarantine()).await.expect("connect");
    until_out_of_quarantine(&b, &[0, 1, 2]).await;
    let mut conns = server_conns(&h).await;
    let sets = calls_on_all(&mut conns, "set").await;
    const GRANTS: u64 = 20;
    let mut last = FencingToken::new(0);
    for round in 0..GRANTS {
        let who = owner(&format!("step{round}"));
        let token = grant(&b, "steps", &who, Duration::from_secs(2)).await;
        assert!(token > last, "token {token} after {last}");
        last = token;
        for i in 0..3 {
            assert_eq!(fence(&h, i, "steps").await, token.as_u64(), "server {i}");
        }
        b.release("steps", &who).await.expect("release");
        // The clock moves past the next step.
        tokio::time::sleep(Duration::from_millis(11)).await;
    }
    let after = calls_on_all(&mut conns, "set").await;
    // One SET per server and grant for the lock itself; a fence raise adds
    // one. Without steps this was about 5 per grant.
    assert!(
        after - sets <= 3 * GRANTS + GRANTS / 2,
        "{} SETs for {GRANTS} grants on 3 servers",
        after - sets
    );
}
