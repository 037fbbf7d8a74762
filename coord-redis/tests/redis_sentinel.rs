//! `redis+sentinel://` against real processes: a primary, a replica and
//! three sentinels ([`RedisSentinel`]). Connecting through the sentinels,
//! following a `SENTINEL FAILOVER` and a killed primary (locks, fencing
//! tokens, cache invalidations and lock wake-ups on the new master), and
//! what asynchronous replication does to a lock grant.
//!
//! Run with `--nocapture` to see the measured failover times.

use std::sync::Arc;
use std::time::Duration;

use coord_core::cache::CacheNotice;
use coord_core::testkit::{AuditedResource, Fencing, within};
use coord_core::{CacheBuilder, Error, HealthStatus, LockClient, RetryPolicy};
use coord_redis::RedisBackend;
use coord_redis::RedisNode;
use coord_redis::testkit::RedisSentinel;
use coord_redis::testkit::sentinel::FAILOVER_WAIT;
use tokio::time::Instant;

/// How long after a failover operations may take to succeed again.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

/// Starts the set (blocking for a few seconds), failing the test when it
/// cannot.
fn start() -> RedisSentinel {
    tokio::task::block_in_place(RedisSentinel::start)
        .unwrap_or_else(|e| panic!("cannot start the Redis Sentinel test set: {e}"))
}

/// A lock client with no retries, so each attempt shows what the backend
/// does at that moment.
fn probe_client(backend: &RedisBackend) -> LockClient {
    LockClient::builder(Arc::new(backend.clone()))
        .retry(RetryPolicy::none())
        .build()
        .expect("lock client")
}

/// One command on a new connection to the data node `node`.
async fn on_node<T: redis::FromRedisValue>(node: &RedisNode, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(format!("redis://{node}")).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {node}: {e}"));
    cmd.query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{cmd:?} on {node}: {e}"))
}

/// `ROLE`'s first line on `node`: `master` or `slave`.
async fn role(node: &RedisNode) -> String {
    let reply: Vec<redis::Value> = on_node(node, &redis::cmd("ROLE")).await;
    match reply.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("ROLE on {node}: {other:?}"),
    }
}

/// The Redis key of lock `name` in `set`'s namespace.
fn lock_key(set: &RedisSentinel, name: &str) -> String {
    format!("{}:lock:{{{name}}}", set.settings().namespace)
}

/// Polls every 5 ms until `backend` talks to `master`; the time it took.
async fn until_on(backend: &RedisBackend, master: &RedisNode, since: Instant) -> Duration {
    let deadline = Instant::now() + RECOVERY_BOUND;
    while backend.current_master().as_ref() != Some(master) {
        assert!(
            Instant::now() < deadline,
            "the backend stayed on {:?}, not {master}, for {RECOVERY_BOUND:?}",
            backend.current_master()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    since.elapsed()
}

/// Tries to take and release lock `name` every 10 ms until both succeed;
/// returns the time since `since`.
async fn first_success(client: &LockClient, name: &str, since: Instant) -> Duration {
    let deadline = Instant::now() + RECOVERY_BOUND;
    let mut last: Option<Error>;
    loop {
        let lock = client.lock(name).ttl(Duration::from_secs(5)).build();
        match lock.try_acquire().await {
            Ok(Some(guard)) => match guard.release().await {
                Ok(()) => return since.elapsed(),
                Err(e) => last = Some(e),
            },
            Ok(None) => panic!("probe lock {name} is held by someone else"),
            Err(e) => last = Some(e),
        }
        assert!(
            Instant::now() < deadline,
            "no lock operation succeeded within {RECOVERY_BOUND:?}; last error: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the replica has `key` (written on the master).
async fn replicated(set: &RedisSentinel, key: &str) {
    let replica = set.replica_addr().await.expect("replica");
    within(Duration::from_secs(5), "the replica has the key", async {
        while on_node::<i64>(&replica, redis::cmd("EXISTS").arg(key)).await != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits until `master` lists an online replica (`ROLE`): right after the
/// set starts, the replica may still be in its first sync, and a master
/// lists only replicas in sync.
async fn replica_online(master: &RedisNode) {
    within(
        Duration::from_secs(20),
        "the master lists its replica",
        async {
            loop {
                let role: redis::Value = on_node(master, &redis::cmd("ROLE")).await;
                if let redis::Value::Array(parts) = &role
                    && matches!(parts.get(2), Some(redis::Value::Array(r)) if !r.is_empty())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
}

/// Two clients on one set, each with a lock client and the cache `name`.
struct Pair {
    a: RedisBackend,
    b: RedisBackend,
    locks_a: LockClient,
    locks_b: LockClient,
    cache_a: coord_core::MultiLevelCache<String>,
    cache_b: coord_core::MultiLevelCache<String>,
}

impl Pair {
    async fn connect(set: &RedisSentinel) -> Pair {
        let a = set.connect().await.expect("connect a");
        let b = set.connect().await.expect("connect b");
        let cache = |backend: &RedisBackend| {
            CacheBuilder::new(Arc::new(backend.clone()), "failover")
                .build::<String>()
                .expect("cache")
        };
        let pair = Pair {
            locks_a: LockClient::new(Arc::new(a.clone())),
            locks_b: LockClient::new(Arc::new(b.clone())),
            cache_a: cache(&a),
            cache_b: cache(&b),
            a,
            b,
        };
        within(Duration::from_secs(5), "invalidations flow", async {
            pair.cache_a.ready().await;
            pair.cache_b.ready().await;
        })
        .await;
        pair
    }

    /// After a move to a new master: b's cache saw its stream end (a
    /// resync), subscribed again, and sees a's write to a key it holds in L1.
    async fn invalidations_flow(
        &self,
        notices: &mut tokio::sync::broadcast::Receiver<CacheNotice>,
    ) {
        within(
            Duration::from_secs(10),
            "b's cache resyncs after the move",
            async {
                loop {
                    if let Ok(CacheNotice::Resync) = notices.recv().await {
                        return;
                    }
                }
            },
        )
        .await;
        within(
            Duration::from_secs(10),
            "b's cache listens again",
            self.cache_b.ready(),
        )
        .await;
        let held = self.cache_b.get("k").await.expect("b reads k");
        assert_eq!(held.as_deref().map(String::as_str), Some("before"));
        self.cache_a
            .set("k", "after".into())
            .await
            .expect("a writes k");
        within(Duration::from_secs(5), "b hears of a's write", async {
            loop {
                if let Ok(CacheNotice::Invalidated(key)) = notices.recv().await
                    && key == "k"
                {
                    return;
                }
            }
        })
        .await;
        let now = self.cache_b.get("k").await.expect("b reads k again");
        assert_eq!(now.as_deref().map(String::as_str), Some("after"));
    }

    /// A waiter on b, which only a release notification can wake in time
    /// (its poll interval is a minute), takes the lock a releases.
    async fn waiter_wakes(&self, name: &str) {
        let held = self
            .locks_a
            .lock(name)
            .ttl(Duration::from_secs(10))
            .build()
            .acquire()
            .await
            .expect("a takes the lock");
        let lock_b = self
            .locks_b
            .lock(name)
            .ttl(Duration::from_secs(10))
            .poll_interval(Duration::from_secs(60))
            .wait_timeout(Duration::from_secs(30))
            .build();
        let waiter = tokio::spawn(async move {
            let guard = lock_b.acquire().await?;
            let token = guard.fencing_token();
            guard.release().await?;
            Ok::<_, Error>(token)
        });
        within(Duration::from_secs(5), "b waits, subscribed", async {
            while self.locks_b.waiting() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let held_token = held.fencing_token();
        let released = Instant::now();
        held.release().await.expect("a releases");
        let token = within(Duration::from_secs(5), "the waiter is woken", waiter)
            .await
            .expect("waiter task")
            .expect("the waiter takes the lock");
        assert!(token > held_token, "{token:?} after {held_token:?}");
        eprintln!("waiter woken {:?} after the release", released.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_caches_work_through_the_sentinels() {
    let set = start();
    let backend = set.connect().await.expect("connect through the sentinels");
    let master = set.master_addr().await.expect("master");
    assert_eq!(backend.current_master(), Some(master.clone()));
    assert_eq!(backend.ping().await.status, HealthStatus::Healthy);

    let locks = LockClient::new(Arc::new(backend.clone()));
    let lock = locks
        .lock("sentinel/basic")
        .ttl(Duration::from_secs(5))
        .build();
    let first = lock.acquire().await.expect("acquire");
    let held: i64 = on_node(
        &master,
        redis::cmd("EXISTS").arg(lock_key(&set, "sentinel/basic")),
    )
    .await;
    assert_eq!(held, 1, "the lock key is on the master");
    let token = first.fencing_token();
    first.release().await.expect("release");
    let second = lock.acquire().await.expect("acquire again");
    assert!(second.fencing_token() > token);
    second.release().await.expect("release");

    let cache = CacheBuilder::new(Arc::new(backend.clone()), "basic")
        .build::<String>()
        .expect("cache");
    within(Duration::from_secs(5), "invalidations flow", cache.ready()).await;
    cache.set("k", "v".into()).await.expect("set");
    assert_eq!(
        cache
            .get("k")
            .await
            .expect("get")
            .as_deref()
            .map(String::as_str),
        Some("v")
    );
    replicated(&set, &backend.cache_key("basic", "k")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sentinel_urls_say_what_to_do() {
    let set = start();
    let settings = set.settings().clone();
    let sentinels: Vec<String> = set
        .sentinel_nodes()
        .iter()
        .map(ToString::to_string)
        .collect();
    let sentinels = sentinels.join(",");

    let unknown = format!("redis+sentinel://{sentinels}/nosuch");
    match RedisBackend::connect(&unknown, &settings).await {
        Err(e @ Error::Unavailable { .. }) => {
            assert!(e.to_string().contains("sentinel monitor"), "{e}")
        }
        other => panic!("unknown master name: expected Unavailable, got {other:?}"),
    }

    let master = set.master_addr().await.expect("master");
    let not_a_sentinel = format!("redis+sentinel://{master}/coordtest");
    match RedisBackend::connect(&not_a_sentinel, &settings).await {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("not a Redis Sentinel"), "{m}"),
        other => panic!("a data node as sentinel: expected InvalidArgument, got {other:?}"),
    }

    let port = coord_core::testkit::ServerProcess::free_port().expect("port");
    let nobody = format!("redis+sentinel://127.0.0.1:{port}/coordtest");
    match RedisBackend::connect(&nobody, &settings).await {
        Err(e @ Error::Unavailable { .. }) => {
            assert!(e.to_string().contains("redis-sentinel runs"), "{e}")
        }
        other => panic!("no sentinel listening: expected Unavailable, got {other:?}"),
    }

    // A listener that never answers, as a hung sentinel would.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!(
        "redis+sentinel://{}/coordtest",
        silent.local_addr().expect("addr")
    );
    let started = Instant::now();
    match RedisBackend::connect(&silent_url, &settings).await {
        Err(e @ (Error::Timeout(_) | Error::Unavailable { .. })) => {
            assert!(e.to_string().contains("sentinel"), "{e}");
            eprintln!("silent sentinel: {e}");
        }
        other => panic!("a silent sentinel: expected Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < settings.connect_timeout + Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    for (url, needle) in [
        (format!("redis+sentinel://{sentinels}"), "no master name"),
        ("redis+sentinel:///coordtest".to_owned(), "no sentinel host"),
        (
            format!("redis+sentinel://{sentinels}/coordtest?sentinel_pass=x"),
            "sentinel_password",
        ),
    ] {
        match RedisBackend::connect(&url, &settings).await {
            Err(Error::InvalidArgument(m)) => assert!(m.contains(needle), "{url}: {m}"),
            other => panic!("{url}: expected InvalidArgument, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed() {
    let set = start();
    let pair = Pair::connect(&set).await;
    let probe = probe_client(&pair.a);
    let lock = "sentinel/failover";
    let before = {
        let g = pair
            .locks_a
            .lock(lock)
            .build()
            .acquire()
            .await
            .expect("acquire");
        let t = g.fencing_token();
        g.release().await.expect("release");
        t
    };
    pair.cache_a.set("k", "before".into()).await.expect("set");
    replicated(&set, &pair.a.cache_key("failover", "k")).await;
    let mut notices = pair.cache_b.events();
    let old = set.master_addr().await.expect("master");

    let started = Instant::now();
    let (new, agreed, moved_a, moved_b) = {
        let failover = async {
            let new = set.failover().await.expect("SENTINEL FAILOVER");
            (new, started.elapsed())
        };
        let moved = async {
            // Which node the sentinels will name is not known yet: wait
            // until each backend leaves the old master.
            let deadline = Instant::now() + FAILOVER_WAIT;
            let mut a = None;
            let mut b = None;
            while a.is_none() || b.is_none() {
                assert!(Instant::now() < deadline, "the backends did not move");
                if a.is_none() && pair.a.current_master().as_ref() != Some(&old) {
                    a = Some(started.elapsed());
                }
                if b.is_none() && pair.b.current_master().as_ref() != Some(&old) {
                    b = Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (a.unwrap_or_default(), b.unwrap_or_default())
        };
        let ((new, agreed), (a, b)) = tokio::join!(failover, moved);
        (new, agreed, a, b)
    };
    assert_ne!(new, old);
    assert_eq!(pair.a.current_master(), Some(new.clone()));
    assert_eq!(pair.b.current_master(), Some(new.clone()));
    // The sentinels demote the old master only seconds later: the backends
    // moved on the +switch-master event, not on a refused write.
    assert_eq!(
        role(&old).await,
        "master",
        "the old master is not demoted yet"
    );
    let op = first_success(&probe, "sentinel/probe", started).await;
    eprintln!(
        "SENTINEL FAILOVER: sentinels agreed after {agreed:?}; backends moved after \
         {moved_a:?} and {moved_b:?}; first lock operation on the new master {op:?} after \
         the command"
    );

    let after = pair
        .locks_a
        .lock(lock)
        .build()
        .acquire()
        .await
        .expect("acquire after");
    assert!(
        after.fencing_token() > before,
        "tokens increase across the failover: {:?} then {:?}",
        before,
        after.fencing_token()
    );
    let on_new: i64 = on_node(&new, redis::cmd("EXISTS").arg(lock_key(&set, lock))).await;
    assert_eq!(on_new, 1, "the grant is on the new master");
    after.release().await.expect("release");

    pair.invalidations_flow(&mut notices).await;
    pair.waiter_wakes("sentinel/waiter").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed() {
    let mut set = start();
    let pair = Pair::connect(&set).await;
    let probe = probe_client(&pair.a);
    let lock = "sentinel/killed";
    let before = {
        let g = pair
            .locks_a
            .lock(lock)
            .build()
            .acquire()
            .await
            .expect("acquire");
        let t = g.fencing_token();
        g.release().await.expect("release");
        t
    };
    pair.cache_a.set("k", "before".into()).await.expect("set");
    // The entry must be on the replica before the primary dies.
    replicated(&set, &pair.a.cache_key("failover", "k")).await;
    let replica = set.replica_addr().await.expect("replica");
    let mut notices = pair.cache_b.events();

    let killed_at = Instant::now();
    let old = set.kill_master().await.expect("kill the primary");
    let (op, agreed) = tokio::join!(first_success(&probe, "sentinel/probe", killed_at), async {
        let new = set
            .wait_for_new_master(&old, FAILOVER_WAIT)
            .await
            .expect("a new master");
        (new, killed_at.elapsed())
    });
    let (new, agreed) = agreed;
    assert_eq!(new, replica, "the replica was promoted");
    let moved_b = until_on(&pair.b, &new, killed_at).await;
    assert_eq!(pair.a.current_master(), Some(new.clone()));
    eprintln!(
        "killed primary: sentinels agreed after {agreed:?}; first lock operation {op:?} \
         after the kill; the idle backend moved after {moved_b:?}"
    );

    let after = pair
        .locks_a
        .lock(lock)
        .build()
        .acquire()
        .await
        .expect("acquire after");
    assert!(
        after.fencing_token() > before,
        "tokens increase across the failover: {:?} then {:?}",
        before,
        after.fencing_token()
    );
    after.release().await.expect("release");

    pair.invalidations_flow(&mut notices).await;
    pair.waiter_wakes("sentinel/waiter").await;
}

/// A grant the replica never received is lost in the failover: a second
/// client takes the same lock from the new master while the first still
/// believes it holds it. Fencing tokens still increase, so a fenced
/// resource refuses the stale holder; the stale holder's guard is lost at
/// its next renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lost_in_replication_is_refused_by_fencing() {
    let mut set = start();
    let a = set.connect().await.expect("connect a");
    let locks_a = LockClient::new(Arc::new(a.clone()));
    let name = "sentinel/lost";
    let master = set.master_addr().await.expect("master");
    let replica = set.replica_addr().await.expect("replica");

    // Cut replication deterministically: freeze the replica, make the
    // master drop its link (and whatever it had not yet sent), then grant.
    set.pause(&replica).expect("pause the replica");
    let _: i64 = on_node(
        &master,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"),
    )
    .await;
    // No watchdog: a keeps believing it holds the lock for the whole TTL,
    // as a holder would between two renewals.
    let ttl = Duration::from_secs(30);
    let stale = locks_a
        .lock(name)
        .ttl(ttl)
        .watchdog(false)
        .build()
        .acquire()
        .await
        .expect("a takes the lock on the old master");
    let stale_token = stale.fencing_token();
    let fenced = AuditedResource::new(Fencing::On);
    let unfenced = AuditedResource::new(Fencing::Off);
    for r in [&fenced, &unfenced] {
        r.write("a", stale_token)
            .expect("a writes while it holds the lock");
    }
    set.stop(&master).expect("kill the master");
    set.resume(&replica).expect("resume the replica");
    let new = set
        .wait_for_new_master(&master, FAILOVER_WAIT)
        .await
        .expect("the replica is promoted");
    assert_eq!(new, replica);

    let b = set.connect().await.expect("connect b");
    let locks_b = LockClient::new(Arc::new(b.clone()));
    let fresh = within(
        RECOVERY_BOUND,
        "b takes the lock on the new master",
        async {
            loop {
                match locks_b.lock(name).ttl(ttl).build().try_acquire().await {
                    Ok(Some(guard)) => return guard,
                    Ok(None) => panic!("the new master has a's grant: replication was not cut"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        },
    )
    .await;
    // Two holders overlap, as asynchronous replication allows...
    assert!(
        stale.is_held() && Instant::now() < stale.valid_until(),
        "a still holds the lock by its own clock while b holds it"
    );
    // ...and the token still goes up (a hybrid logical clock).
    assert!(
        fresh.fencing_token() > stale_token,
        "{:?} after {stale_token:?}",
        fresh.fencing_token()
    );
    for r in [&fenced, &unfenced] {
        r.write("b", fresh.fencing_token()).expect("b writes");
    }
    // a writes late, still believing it holds the lock.
    assert!(matches!(
        fenced.write("a", stale_token),
        Err(Error::Conflict { .. })
    ));
    assert!(
        fenced.audit().violations().is_empty(),
        "{:?}",
        fenced.audit().violations()
    );
    unfenced
        .write("a", stale_token)
        .expect("nothing refuses it");
    assert!(
        !unfenced.audit().violations().is_empty(),
        "without fencing the late write interleaves"
    );
    // a's next renewal goes to the new master, which refuses it.
    let renewed = within(RECOVERY_BOUND, "a renews", async {
        loop {
            match stale.renew().await {
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(20)).await,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        matches!(renewed, Err(Error::NotHeld(_) | Error::LockLost(_))),
        "{renewed:?}"
    );
    assert!(!stale.is_held());
    fresh.release().await.expect("b releases");
}

/// Waits until a client is subscribed on sentinel 0 (`sub=1` in its
/// `CLIENT LIST`): the backend's event listener, which starts there. Until
/// then, pausing sentinel 0 would not make the backend miss an event: its
/// listener would time out on it and subscribe on the next sentinel, looking
/// the master up as it does.
async fn listening_on_sentinel_0(set: &RedisSentinel) {
    let sentinel = set.sentinel_nodes()[0].clone();
    within(
        Duration::from_secs(10),
        "the backend's listener is subscribed on sentinel 0",
        async {
            loop {
                let clients: String = on_node(&sentinel, redis::cmd("CLIENT").arg("LIST")).await;
                if clients.lines().any(|l| l.contains(" sub=1 ")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
}

/// A backend that asks no sentinel for the master (`master_check=off`),
/// so that only its requests can catch a missed event.
async fn connect_without_master_check(set: &RedisSentinel) -> RedisBackend {
    let url = format!("{}?master_check=off", set.url());
    RedisBackend::connect(&url, set.settings())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A backend that misses the `+switch-master` event (the sentinel it
/// listens on is frozen) and makes no request at all still moves to the
/// new master: the master check finds the sentinel silent within
/// `connect_timeout`, the listener moves to the next sentinel and asks
/// the sentinels for the master. Without the check it would stay on the
/// old master until a request failed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_switch_event_is_caught_by_the_master_check() {
    let set = start();
    let a = set.connect().await.expect("connect");
    listening_on_sentinel_0(&set).await;
    set.pause_sentinel(0).expect("pause sentinel 0");
    let old = set.master_addr().await.expect("master");
    let started = Instant::now();
    let new = set.failover().await.expect("SENTINEL FAILOVER");
    assert_ne!(old, new);
    let bound = coord_redis::DEFAULT_MASTER_CHECK + set.settings().connect_timeout * 2;
    within(bound, "the master check moves the backend", async {
        while a.current_master().as_ref() != Some(&new) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eprintln!(
        "missed event, no requests: on the new master {:?} after SENTINEL FAILOVER",
        started.elapsed()
    );
    set.resume_sentinel(0).expect("resume sentinel 0");
}

/// A move that fails is tried again by the master check: the new master
/// is reached through a map entry that refuses connections when the
/// sentinels announce it, so the backend cannot move and stays (no
/// request would tell it otherwise: it makes none). Once the new master
/// answers, the next check, which finds the sentinel naming another node
/// than the backend's, moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_move_is_tried_again_by_the_master_check() {
    use coord_core::testkit::{FaultProxy, NewConnections};

    let set = start();
    let old = set.master_addr().await.expect("master");
    let replica = set.replica_addr().await.expect("replica");
    let proxy = FaultProxy::start(replica.to_string().parse().expect("an address"))
        .expect("a proxy in front of the replica");
    proxy.set_new_connections(NewConnections::Refuse);
    let mut settings = set.settings().clone();
    settings
        .address_map
        .insert(replica.to_string(), proxy.addr().to_string());
    let url = format!("{}?master_check=200ms", set.url());
    let a = RedisBackend::connect(&url, &settings)
        .await
        .expect("connect");
    assert_eq!(a.current_master(), Some(old.clone()));

    let new = set.failover().await.expect("SENTINEL FAILOVER");
    assert_eq!(new, replica, "the replica was promoted");
    let through_proxy = RedisNode {
        host: proxy.addr().ip().to_string(),
        port: proxy.addr().port(),
    };
    assert_ne!(
        a.current_master(),
        Some(through_proxy.clone()),
        "the new master cannot be reached yet"
    );
    proxy.heal();
    within(
        Duration::from_secs(5),
        "the master check moves the backend once the new master answers",
        async {
            while a.current_master().as_ref() != Some(&through_proxy) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    let probe = probe_client(&a);
    let guard = probe
        .lock("sentinel/after-a-failed-move")
        .ttl(Duration::from_secs(5))
        .build()
        .try_acquire()
        .await
        .expect("a grant through the map")
        .expect("free");
    guard.release().await.expect("release");
}

/// A backend that misses the `+switch-master` event (the sentinel it
/// listens on is frozen) still follows a `SENTINEL FAILOVER`: once the
/// sentinels demote the old master (seconds later), its requests fail
/// there (killed connections, `READONLY`), and the backend asks the
/// sentinels again. Until then it writes to the old master: those writes
/// are lost, as the sentinel module documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_switch_event_is_caught_by_failed_requests() {
    let set = start();
    let a = connect_without_master_check(&set).await;
    let probe = probe_client(&a);
    listening_on_sentinel_0(&set).await;
    set.pause_sentinel(0).expect("pause sentinel 0");
    let old = set.master_addr().await.expect("master");
    let started = Instant::now();
    let new = set.failover().await.expect("SENTINEL FAILOVER");
    assert_eq!(
        a.current_master(),
        Some(old.clone()),
        "no event reached the backend"
    );
    // Requests keep going (to the old master, then failing there) until
    // the backend has moved and one succeeds on the new master.
    let deadline = Instant::now() + RECOVERY_BOUND;
    let moved = loop {
        let lock = probe
            .lock("sentinel/probe")
            .ttl(Duration::from_secs(5))
            .build();
        if let Ok(Some(guard)) = lock.try_acquire().await {
            let on_new = a.current_master().as_ref() == Some(&new);
            if guard.release().await.is_ok() && on_new {
                break started.elapsed();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the backend did not move to {new} within {RECOVERY_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        role(&old).await,
        "slave",
        "it moved once the old master was demoted"
    );
    eprintln!(
        "missed event: first lock operation on the new master {moved:?} after SENTINEL FAILOVER"
    );
    set.resume_sentinel(0).expect("resume sentinel 0");
}

/// A demoted master refuses writes with `READONLY` while the connection to
/// it stays up: a backend that missed the event asks the sentinels then,
/// and sends the refused request again to the new master, so the caller
/// never sees the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_by_a_demoted_master_goes_to_the_new_one() {
    let set = start();
    let a = connect_without_master_check(&set).await;
    let probe = probe_client(&a);
    listening_on_sentinel_0(&set).await;
    set.pause_sentinel(0).expect("pause sentinel 0");
    let old = set.master_addr().await.expect("master");
    let new = set.failover().await.expect("SENTINEL FAILOVER");
    assert_eq!(
        a.current_master(),
        Some(old.clone()),
        "no event reached the backend"
    );
    // Demote the old master as the sentinels will, minus their killing
    // its clients: the backend's connection stays up.
    let _: String = on_node(&old, redis::cmd("REPLICAOF").arg(&new.host).arg(new.port)).await;
    let lock = probe
        .lock("sentinel/readonly")
        .ttl(Duration::from_secs(5))
        .build();
    let guard = lock
        .try_acquire()
        .await
        .expect("the refused write is sent again to the new master")
        .expect("free");
    assert_eq!(a.current_master(), Some(new.clone()));
    let on_new: i64 = on_node(
        &new,
        redis::cmd("EXISTS").arg(lock_key(&set, "sentinel/readonly")),
    )
    .await;
    assert_eq!(on_new, 1, "the grant is on the new master");
    guard.release().await.expect("release");
    set.resume_sentinel(0).expect("resume sentinel 0");
}

/// A master whose replica does not acknowledge its writes (frozen here;
/// cut off by a partition in the chaos suite, while the sentinels promote
/// it) hands out no lock: a grant, a queued grant and a fenced write each
/// fail with a retryable error, and the grant is given back. With
/// `replica_ack=off` (the negative control) the same master grants, as
/// asynchronous replication lets it. Once the replica answers again, the
/// lock is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_replica_does_not_acknowledge_grants_nothing() {
    let set = start();
    let backend = set.connect().await.expect("connect");
    let locks = probe_client(&backend);
    let url = format!("{}?replica_ack=off", set.url());
    let unacked = RedisBackend::connect(&url, set.settings())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let unacked_locks = probe_client(&unacked);
    let master = set.master_addr().await.expect("master");
    let replica = set.replica_addr().await.expect("replica");
    let ttl = Duration::from_secs(10);

    // A replica still in its first sync is not listed: nothing to wait for.
    replica_online(&master).await;
    set.pause(&replica).expect("pause the replica");
    let refused = |what: &str, r: Result<(), Error>| match r {
        Err(e) if e.is_retryable() && e.to_string().contains("replica_ack") => {}
        other => panic!("{what} on a master no replica acknowledges: {other:?}"),
    };
    let lease = locks.lock("sentinel/acked").ttl(ttl).build();
    refused("a grant", lease.try_acquire().await.map(|_| ()));
    let fair = locks.lock("sentinel/acked-fair").ttl(ttl).fair().build();
    refused("a queued grant", fair.try_acquire().await.map(|_| ()));
    let store = coord_redis::RedisFencedStore::new(&backend);
    refused(
        "a fenced write",
        coord_core::FencedStore::write(&store, "k", coord_core::FencingToken::new(1), b"v").await,
    );
    // The refused grant is given back (in the background).
    let key = lock_key(&set, "sentinel/acked");
    within(
        Duration::from_secs(10),
        "the refused grant is released",
        async {
            loop {
                let held: i64 = on_node(&master, redis::cmd("EXISTS").arg(&key)).await;
                if held == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    // Without the check, the master grants what its replica never saw.
    let unchecked = unacked_locks
        .lock("sentinel/acked")
        .ttl(ttl)
        .build()
        .try_acquire()
        .await
        .expect("replica_ack=off grants")
        .expect("the lock is free");
    unchecked.release().await.expect("release");

    set.resume(&replica).expect("resume the replica");
    let guard = within(
        Duration::from_secs(10),
        "granted once acknowledged",
        async {
            loop {
                match lease.try_acquire().await {
                    Ok(Some(guard)) => return guard,
                    Ok(None) => panic!("the lock is free"),
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("acquire: {e}"),
                }
            }
        },
    )
    .await;
    guard.renew().await.expect("an acknowledged renewal");
    guard.release().await.expect("release");
}
