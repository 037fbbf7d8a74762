//! The container fixtures really do what they say: the Sentinels of a
//! replica set promote the replica when the primary is killed, paused or
//! cut off from them (a cut-off primary goes on taking writes the new one
//! never sees, and is made a replica when healed, losing them); a single
//! server in a container stops, restarts empty and pauses; a Redis Cluster
//! in containers sends clients to loopback addresses. Container-only: these
//! tests fail (saying what to start or build) without an engine and the
//! `coord/redis:local` image.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_core::testkit::LockHarness;
use coord_redis::testkit::{
    RedisClusterSet, RedisHarness, RedisReplicaSet, RedisServer, ReplicaSetMember,
};

/// How long the Sentinels may take to fail over (down after 1 s, then a
/// vote; a failed vote is retried after 10 s).
const FAILOVER: Duration = Duration::from_secs(30);

/// How long an old primary may take to be made a replica once it is back
/// (the Sentinels wait about 8 s before reconfiguring it).
const REJOIN: Duration = Duration::from_secs(40);

/// A connection to `url` whose calls (and the connection itself) give up
/// after a second.
async fn conn(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn get(url: &str, key: &str) -> redis::RedisResult<Option<String>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn(url).await?)
        .await
}

async fn put(url: &str, key: &str, value: &str) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn(url).await?)
        .await
}

/// The node's role (`master` or `slave`) and, for a replica, its primary
/// as `host port`.
async fn role(url: &str) -> redis::RedisResult<(String, Option<(String, u16)>)> {
    let reply: redis::Value = redis::cmd("ROLE")
        .query_async(&mut conn(url).await?)
        .await?;
    let redis::Value::Array(items) = reply else {
        return Ok((format!("{reply:?}"), None));
    };
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    let role = text(items.first());
    let primary = (role == "slave").then(|| {
        let port = match items.get(2) {
            Some(redis::Value::Int(p)) => *p as u16,
            _ => 0,
        };
        (text(items.get(1)), port)
    });
    Ok((role, primary))
}

/// Polls (at most `limit`) until `check` holds, failing with `what`.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!("{what} did not happen within {limit:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until data node `node` is a replica of data node `of`, in sync
/// enough to read `key` = `value`.
async fn until_replica_of(set: &RedisReplicaSet, node: usize, of: usize, key: &str, value: &str) {
    let url = set.node_url(node);
    let primary_port = set
        .node_url(of)
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("port");
    until(
        REJOIN,
        &format!("node {node} becoming a replica of node {of}"),
        || {
            let url = url.clone();
            async move {
                let (role, primary) = role(&url).await.map_err(|e| e.to_string())?;
                if role != "slave" || primary.as_ref().map(|p| p.1) != Some(primary_port) {
                    return Err(format!("role {role} of {primary:?}"));
                }
                match get(&url, key).await {
                    Ok(Some(v)) if v == value => Ok(()),
                    other => Err(format!("{key} = {other:?}")),
                }
            }
        },
    )
    .await;
}

async fn start_set() -> Arc<RedisReplicaSet> {
    let set = tokio::task::spawn_blocking(RedisReplicaSet::start)
        .await
        .expect("start")
        .unwrap_or_else(|e| panic!("a Redis replica set in containers: {e}"));
    Arc::new(set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinels_name_the_primary_at_a_loopback_address() {
    let set = start_set().await;
    assert_eq!(set.primary().await.expect("primary"), 0);
    // What a Sentinel answers, turned into an address the test reaches.
    let mut sentinel = conn(&set.sentinel_url(1)).await.expect("a Sentinel");
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(set.master_name())
        .query_async(&mut sentinel)
        .await
        .expect("get-master-addr-by-name");
    let addr = set.loopback(&host, port).expect("a member's address");
    assert_eq!(format!("redis://{addr}"), set.node_url(0));
    write_and_replicate(&set).await;
}

/// A write to the primary (node 0) reaches the replica (node 1).
async fn write_and_replicate(set: &RedisReplicaSet) {
    put(&set.node_url(0), "replicated", "yes")
        .await
        .expect("write to the primary");
    let replica = set.node_url(1);
    until(Duration::from_secs(10), "replication", || {
        let replica = replica.clone();
        async move {
            match get(&replica, "replicated").await {
                Ok(Some(v)) if v == "yes" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_rejoins_as_a_replica() {
    let set = start_set().await;
    set.kill(ReplicaSetMember::Node(0))
        .expect("kill the primary");
    assert!(
        get(&set.node_url(0), "x").await.is_err(),
        "a killed node answered"
    );
    let new = set
        .await_primary(Some(0), FAILOVER)
        .await
        .expect("the Sentinels promote the replica");
    assert_eq!(new, 1);
    assert_eq!(role(&set.node_url(1)).await.expect("role").0, "master");
    put(&set.node_url(1), "after", "failover")
        .await
        .expect("the new primary takes writes");
    let s = set.clone();
    tokio::task::spawn_blocking(move || s.restart(ReplicaSetMember::Node(0)))
        .await
        .expect("restart")
        .expect("restart the old primary");
    until_replica_of(&set, 0, 1, "after", "failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_keeps_taking_writes_that_are_lost_when_healed() {
    let set = start_set().await;
    write_and_replicate(&set).await;
    set.partition(ReplicaSetMember::Node(0))
        .expect("cut the primary off");
    let new = set
        .await_primary(Some(0), FAILOVER)
        .await
        .expect("the Sentinels promote the replica");
    assert_eq!(new, 1);
    // Split brain: the old primary still answers the test, as a primary.
    assert_eq!(role(&set.node_url(0)).await.expect("role").0, "master");
    put(&set.node_url(0), "split", "old-side")
        .await
        .expect("the cut-off primary still takes writes");
    put(&set.node_url(1), "split", "new-side")
        .await
        .expect("the new primary takes writes");
    set.heal(ReplicaSetMember::Node(0)).expect("heal");
    // Made a replica of the new primary, it drops its own write.
    until_replica_of(&set, 0, 1, "split", "new-side").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_answers_nothing_and_is_replaced() {
    let set = start_set().await;
    set.pause(ReplicaSetMember::Node(0))
        .expect("pause the primary");
    let started = Instant::now();
    let ping: redis::RedisResult<String> = async {
        redis::cmd("PING")
            .query_async(&mut conn(&set.node_url(0)).await?)
            .await
    }
    .await;
    assert!(ping.is_err(), "a paused node answered: {ping:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a paused node's connection must hang, not be refused"
    );
    let new = set
        .await_primary(Some(0), FAILOVER)
        .await
        .expect("the Sentinels promote the replica");
    assert_eq!(new, 1);
    put(&set.node_url(1), "after", "pause")
        .await
        .expect("write");
    set.unpause(ReplicaSetMember::Node(0)).expect("unpause");
    until_replica_of(&set, 0, 1, "after", "pause").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_cut_off_from_each_other_cannot_fail_over() {
    let set = start_set().await;
    // Two of three Sentinels cut off: the one left cannot be elected to
    // lead a failover (it needs a majority of all Sentinels).
    set.partition(ReplicaSetMember::Sentinel(1))
        .expect("cut sentinel 1");
    set.partition(ReplicaSetMember::Sentinel(2))
        .expect("cut sentinel 2");
    set.kill(ReplicaSetMember::Node(0))
        .expect("kill the primary");
    // A failover takes about 2 s with the Sentinels together; give this
    // one 8 s to (wrongly) happen.
    let mut lone = conn(&set.sentinel_url(0)).await.expect("the lone Sentinel");
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(set.master_name())
            .query_async(&mut lone)
            .await
            .expect("the lone Sentinel answers");
        assert_eq!(
            set.loopback(&host, port),
            Some(set.node_url(0).trim_start_matches("redis://").to_owned()),
            "a Sentinel without a majority failed over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    set.heal(ReplicaSetMember::Sentinel(1)).expect("heal");
    set.heal(ReplicaSetMember::Sentinel(2)).expect("heal");
    let new = set
        .await_primary(Some(0), FAILOVER)
        .await
        .expect("together again, they fail over");
    assert_eq!(new, 1);
}

/// The single-server fixture in a container: pause, stop, restart empty,
/// whatever `COORD_TEST_SERVERS` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_server_container_pauses_stops_and_restarts_empty() {
    let mut server = tokio::task::spawn_blocking(|| RedisServer::spawn_container(&[]))
        .await
        .expect("spawn")
        .expect("Redis in a container");
    assert!(server.container().is_some() && server.process().is_none());
    let url = server.url().to_owned();
    put(&url, "k", "v").await.expect("set");

    server.pause().expect("pause");
    let started = Instant::now();
    assert!(get(&url, "k").await.is_err(), "a paused server answered");
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.resume().expect("resume");
    assert_eq!(get(&url, "k").await.expect("get"), Some("v".to_owned()));

    server.stop().expect("stop");
    assert!(get(&url, "k").await.is_err(), "a stopped server answered");
    tokio::task::block_in_place(|| server.restart()).expect("restart");
    assert_eq!(
        get(&url, "k").await.expect("get after restart"),
        None,
        "no persistence: a restart comes back empty, on the same address"
    );
}

/// A Redis Cluster in containers: the nodes talk on their network, the
/// client is sent to 127.0.0.1 ports, and a lock backend works across it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_in_containers_sends_clients_to_loopback() {
    let server = tokio::task::spawn_blocking(|| RedisServer::spawn_cluster_containers(3))
        .await
        .expect("spawn")
        .expect("a Redis Cluster in containers");
    let first = server
        .url()
        .trim_start_matches("redis+cluster://")
        .split(',')
        .next()
        .expect("a node")
        .to_owned();
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn(&format!("redis://{first}")).await.expect("a node"))
        .await
        .expect("CLUSTER SLOTS");
    assert_eq!(slots.len(), 3);
    let text = format!("{slots:?}");
    assert!(
        text.matches("127.0.0.1").count() >= 3,
        "every node's preferred endpoint is loopback: {text}"
    );
    let harness = RedisHarness::on(server);
    let backend = harness.new_backend().await;
    let owner = coord_core::LockOwner::new("cluster", "o").expect("owner");
    // Names spread over the slots of every node.
    for i in 0..30 {
        let name = format!("containers/{i}");
        let outcome = backend
            .try_acquire(&name, &owner, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("acquire {name}: {e}"));
        assert!(
            matches!(outcome, coord_core::AcquireOutcome::Granted(_)),
            "{outcome:?}"
        );
        backend.release(&name, &owner).await.expect("release");
    }
}

/// A `redis+sentinel://` client of the set: through the address map it
/// reaches the primary the Sentinels name by its container name, and after
/// the primary is cut off from them it moves to the promoted replica
/// (its next grants are written there). Without the map, connect fails
/// saying to map the addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_client_maps_announced_addresses_and_follows_a_cut_off_primary() {
    use coord_core::{LockBackend, LockOwner, Settings};
    use coord_redis::RedisBackend;

    let set = start_set().await;
    let mut base = Settings::default();
    base.connect_timeout = Duration::from_secs(3);
    base.request_timeout = Duration::from_secs(1);

    let unmapped = RedisBackend::connect(&set.url(), &base)
        .await
        .expect_err("the container names the Sentinels announce do not resolve here");
    assert!(
        unmapped.to_string().contains("address_map"),
        "the error must say how to map the addresses: {unmapped}"
    );

    let backend = RedisBackend::connect(&set.url(), &set.settings(base))
        .await
        .expect("connect through the Sentinels, addresses mapped");
    let owner = LockOwner::new("containers", "a").expect("owner");
    let ttl = Duration::from_secs(30);
    backend
        .try_acquire("before", &owner, ttl)
        .await
        .expect("a grant on the first primary");
    assert!(
        get(&set.node_url(0), "coord:lock:{before}")
            .await
            .expect("read node 0")
            .is_some(),
        "the grant is on node 0, the first primary"
    );

    set.partition(ReplicaSetMember::Node(0))
        .expect("cut the primary off");
    assert_eq!(
        set.await_primary(Some(0), FAILOVER)
            .await
            .expect("failover"),
        1
    );
    // The client keeps its connection to node 0 (still a master for it)
    // until the switch reaches it; a grant written on node 1 shows it moved.
    let (backend, owner) = (&backend, &owner);
    let node1 = set.node_url(1);
    until(
        FAILOVER,
        "the client's move to the promoted replica",
        || {
            let node1 = node1.clone();
            async move {
                let name = format!("after-{}", fastrand_suffix());
                match backend.try_acquire(&name, owner, ttl).await {
                    Ok(_) => match get(&node1, &format!("coord:lock:{{{name}}}")).await {
                        Ok(Some(_)) => Ok(()),
                        other => Err(format!("granted, but not on node 1: {other:?}")),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    set.heal(ReplicaSetMember::Node(0)).expect("heal");
}

/// A suffix no other call of this test used.
fn fastrand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A key whose hash slot node 0 of a three-master [`RedisClusterSet`]
/// serves (slots 0–5460).
async fn key_of_node_0(set: &RedisClusterSet) -> String {
    let mut node0 = conn(&set.node_url(0)).await.expect("node 0");
    for i in 0.. {
        let key = format!("k{i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut node0)
            .await
            .expect("keyslot");
        if slot < 5461 {
            return key;
        }
    }
    unreachable!()
}

async fn start_cluster_set() -> Arc<RedisClusterSet> {
    let set = tokio::task::spawn_blocking(|| RedisClusterSet::start(3, 1))
        .await
        .expect("start")
        .unwrap_or_else(|e| panic!("a Redis Cluster with replicas in containers: {e}"));
    Arc::new(set)
}

/// A killed master of a Redis Cluster is replaced by its replica; a
/// `redis+cluster://` client goes on granting every lock, and each lock's
/// next fencing token is above the one it had before the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_is_replaced_and_locks_go_on_with_higher_tokens() {
    use coord_core::{AcquireOutcome, LockBackend, LockOwner, Settings};
    use coord_redis::RedisBackend;

    let set = start_cluster_set().await;
    assert_eq!(set.masters_seen_by(1).expect("masters"), vec![0, 1, 2]);
    let mut settings = Settings::default();
    settings.request_timeout = Duration::from_secs(1);
    let backend = RedisBackend::connect(&set.url(), &settings)
        .await
        .expect("connect to the cluster");
    let owner = LockOwner::new("containers", "cluster").expect("owner");
    let ttl = Duration::from_secs(30);
    let names: Vec<String> = (0..30).map(|i| format!("spread-{i}")).collect();
    let mut before = Vec::new();
    for name in &names {
        let AcquireOutcome::Granted(grant) = backend
            .try_acquire(name, &owner, ttl)
            .await
            .expect("acquire")
        else {
            panic!("a free lock {name} is held");
        };
        backend.release(name, &owner).await.expect("release");
        before.push(grant.token);
    }

    set.kill(0).expect("kill master 0");
    let s = set.clone();
    let promoted = tokio::task::spawn_blocking(move || s.await_promotion(0, FAILOVER))
        .await
        .expect("join")
        .expect("a replica takes over");
    assert_eq!(promoted, 3, "node 3 is node 0's replica");

    for (name, before) in names.iter().zip(before) {
        let (backend, owner) = (&backend, &owner);
        until(FAILOVER, "a grant after the failover", || async move {
            match backend.try_acquire(name, owner, ttl).await {
                Ok(AcquireOutcome::Held { .. }) => Err(format!("{name} is held")),
                Ok(AcquireOutcome::Granted(grant)) => {
                    assert!(
                        grant.token > before,
                        "{name}: token {:?} after the failover, {before:?} before",
                        grant.token
                    );
                    backend
                        .release(name, owner)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }
}

/// A master cut off from the rest of the cluster refuses writes once the
/// node timeout has passed (`CLUSTERDOWN`: no split brain beyond it), its
/// replica takes over, and healed it rejoins as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_cluster_master_stops_taking_writes_and_is_replaced() {
    let set = start_cluster_set().await;
    let key = key_of_node_0(&set).await;
    put(&set.node_url(0), &key, "before")
        .await
        .expect("master 0 takes writes");
    set.partition(0).expect("cut master 0 off");
    let node0 = set.node_url(0);
    until(FAILOVER, "master 0 refusing writes", || {
        let (node0, key) = (node0.clone(), key.clone());
        async move {
            match put(&node0, &key, "cut-off").await {
                Err(e) if e.to_string().to_ascii_uppercase().contains("CLUSTERDOWN") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let s = set.clone();
    let promoted = tokio::task::spawn_blocking(move || s.await_promotion(0, FAILOVER))
        .await
        .expect("join")
        .expect("a replica takes over");
    assert_eq!(promoted, 3);
    put(&set.node_url(3), &key, "after")
        .await
        .expect("the promoted replica takes writes");
    set.heal(0).expect("heal");
    until(REJOIN, "node 0 rejoining as a replica", || {
        let node0 = node0.clone();
        async move {
            match role(&node0).await {
                Ok((r, _)) if r == "slave" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}
