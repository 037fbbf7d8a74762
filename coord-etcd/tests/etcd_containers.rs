//! The container fixtures really do what they say: an etcd member cut off
//! from the others by `docker network disconnect` stops serving linearizable
//! reads (and the others elect a new leader when it led) until healed; a
//! paused member answers nothing; a killed one comes back with its data; a
//! five-member cluster writes with two members cut off but not with three.
//! These tests use etcd's own client, to see each member alone.
//! Container-only: these tests fail (saying what to start or build) without
//! an engine and the `coord/etcd:local` image.

use std::time::{Duration, Instant};

use coord_etcd::testkit::{EtcdContainerCluster, EtcdServer};
use etcd_client::{Client, ConnectOptions, GetOptions};

/// A client of `endpoints` whose requests give up after a second.
async fn client(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(1));
    Client::connect(endpoints, Some(options))
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoints:?}: {e}"))
}

/// A client of member `i` alone.
async fn member(cluster: &EtcdContainerCluster, i: usize) -> Client {
    client(&[cluster.endpoint(i)]).await
}

/// A client of every member but `except`.
async fn others(cluster: &EtcdContainerCluster, except: &[usize]) -> Client {
    let endpoints: Vec<String> = (0..cluster.len())
        .filter(|i| !except.contains(i))
        .map(|i| cluster.endpoint(i))
        .collect();
    client(&endpoints).await
}

/// The value of `key` as `c` reads it: linearizable, or from the member's
/// own state (`serializable`).
async fn read(c: &mut Client, key: &str, serializable: bool) -> Result<Option<String>, String> {
    let options = serializable.then(|| GetOptions::new().with_serializable());
    let resp = c.get(key, options).await.map_err(|e| e.to_string())?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// Writes `key` = `value` through `c`, trying again (for at most 15 s)
/// while the cluster elects a leader or the machine is slow.
async fn must_put(c: &mut Client, key: &str, value: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c.put(key, value, None).await {
            Ok(_) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls (at most `limit`) until a linearizable read of `key` through
/// member `i` alone returns `want`.
async fn until_member_reads(
    cluster: &EtcdContainerCluster,
    i: usize,
    key: &str,
    want: &str,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let mut last = Err("no attempt".to_owned());
    while Instant::now() < deadline {
        let mut c = member(cluster, i).await;
        last = read(&mut c, key, false).await;
        if matches!(&last, Ok(Some(v)) if v == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("member {i} did not read {key}={want} within {limit:?}: last {last:?}");
}

/// Runs a blocking fixture operation off the runtime.
async fn blocking<T: Send + 'static>(op: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(op)
        .await
        .expect("fixture operation")
}

async fn start(n: usize) -> std::sync::Arc<EtcdContainerCluster> {
    let cluster = blocking(move || EtcdContainerCluster::start(n))
        .await
        .unwrap_or_else(|e| panic!("a {n}-member etcd cluster in containers: {e}"));
    std::sync::Arc::new(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_member_stops_serving_linearizable_reads_until_healed() {
    let cluster = start(3).await;
    let leader = cluster
        .await_leader(None, Duration::from_secs(10))
        .await
        .expect("a leader");
    let cut = (leader + 1) % 3;
    let mut all = client(&cluster.endpoints()).await;
    must_put(&mut all, "k", "before", "put before").await;
    until_member_reads(&cluster, cut, "k", "before", Duration::from_secs(15)).await;

    cluster.partition(cut).expect("partition");
    let mut majority = others(&cluster, &[cut]).await;
    must_put(&mut majority, "k", "during", "the majority still writes").await;
    let mut alone = member(&cluster, cut).await;
    let started = Instant::now();
    let linearizable = read(&mut alone, "k", false).await;
    assert!(
        linearizable.is_err(),
        "a partitioned member served a linearizable read: {linearizable:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // It still runs and answers from its own (stale) state.
    assert_eq!(
        read(&mut alone, "k", true).await,
        Ok(Some("before".to_owned())),
        "a serializable read through the cut-off member"
    );
    let write = alone.put("k", "from-the-cut-off-member", None).await;
    assert!(
        write.is_err(),
        "a partitioned member accepted a write: {write:?}"
    );

    cluster.heal(cut).expect("heal");
    until_member_reads(&cluster, cut, "k", "during", Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_and_rejoins_when_healed() {
    let cluster = start(3).await;
    let old = cluster
        .await_leader(None, Duration::from_secs(10))
        .await
        .expect("a leader");
    cluster.partition(old).expect("partition the leader");
    let new = cluster
        .await_leader(Some(old), Duration::from_secs(10))
        .await
        .expect("the other two elect a new leader");
    assert_ne!(new, old);
    let mut majority = others(&cluster, &[old]).await;
    must_put(&mut majority, "term", "new", "the new majority writes").await;
    let mut alone = member(&cluster, old).await;
    assert!(
        alone.put("term", "old", None).await.is_err(),
        "the cut-off old leader must not commit a write"
    );
    cluster.heal(old).expect("heal");
    until_member_reads(&cluster, old, "term", "new", Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_answers_nothing_and_the_others_go_on() {
    let cluster = start(3).await;
    let paused = 0;
    cluster.pause(paused).expect("pause");
    let mut frozen = member(&cluster, paused).await;
    let started = Instant::now();
    let status = frozen.status().await;
    assert!(status.is_err(), "a paused member answered: {status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "a paused member's connection must hang, not be refused ({:?})",
        started.elapsed()
    );
    let mut majority = others(&cluster, &[paused]).await;
    must_put(&mut majority, "p", "while-paused", "the others write").await;
    cluster.unpause(paused).expect("unpause");
    until_member_reads(
        &cluster,
        paused,
        "p",
        "while-paused",
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_restarts_with_its_data() {
    let cluster = start(3).await;
    let victim = 2;
    let mut all = client(&cluster.endpoints()).await;
    must_put(&mut all, "a", "1", "put a").await;
    until_member_reads(&cluster, victim, "a", "1", Duration::from_secs(15)).await;
    let id = cluster.member_id(victim);

    cluster.kill(victim).expect("kill");
    let mut dead = member(&cluster, victim).await;
    assert!(
        read(&mut dead, "a", true).await.is_err(),
        "a killed member answered"
    );
    let mut majority = others(&cluster, &[victim]).await;
    must_put(&mut majority, "b", "2", "the others write").await;

    let c = cluster.clone();
    blocking(move || c.restart(victim))
        .await
        .expect("restart the member");
    let mut back = member(&cluster, victim).await;
    assert_eq!(
        read(&mut back, "a", true).await,
        Ok(Some("1".to_owned())),
        "its own data survived the kill"
    );
    until_member_reads(&cluster, victim, "b", "2", Duration::from_secs(15)).await;
    let status = back.status().await.expect("status");
    assert_eq!(
        status.header().map(|h| h.member_id()),
        Some(id),
        "the same member came back, not a new one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_write_with_two_cut_off_but_not_three() {
    let cluster = start(5).await;
    cluster.partition(3).expect("partition 3");
    cluster.partition(4).expect("partition 4");
    let mut three = others(&cluster, &[3, 4]).await;
    must_put(&mut three, "q", "3-of-5", "three of five are a quorum").await;
    cluster.partition(2).expect("partition 2");
    let mut two = others(&cluster, &[2, 3, 4]).await;
    assert!(
        two.put("q", "2-of-5", None).await.is_err(),
        "two of five are no quorum"
    );
    assert!(
        read(&mut two, "q", false).await.is_err(),
        "two of five serve no linearizable read"
    );
    for i in [2, 3, 4] {
        cluster.heal(i).expect("heal");
    }
    // The refused write may still commit once a quorum is back (etcd keeps
    // the proposal): every member agrees on one value either way. The healed
    // members, whose terms went up while cut off, may force an election
    // first (etcd 3.4 has no pre-vote by default).
    let mut all = client(&cluster.endpoints()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let agreed = loop {
        match read(&mut all, "q", false).await {
            Ok(Some(value)) => break value,
            other if Instant::now() >= deadline => {
                panic!("no linearizable read once healed: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(agreed == "3-of-5" || agreed == "2-of-5", "{agreed}");
    for i in 0..5 {
        until_member_reads(&cluster, i, "q", &agreed, Duration::from_secs(20)).await;
    }
}

/// The single-server fixture in a container: stop, restart on its data,
/// pause and resume, whatever `COORD_TEST_SERVERS` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_server_container_stops_restarts_and_pauses() {
    let server = std::sync::Arc::new(
        blocking(EtcdServer::spawn_container)
            .await
            .expect("etcd in a container"),
    );
    assert!(server.container().is_some() && server.pid().is_none());
    let mut c = client(server.endpoints()).await;
    must_put(&mut c, "kept", "yes", "put").await;

    let s = server.clone();
    blocking(move || s.stop()).await.expect("stop");
    let mut down = client(server.endpoints()).await;
    assert!(
        read(&mut down, "kept", false).await.is_err(),
        "a stopped server answered"
    );
    let s = server.clone();
    blocking(move || s.restart()).await.expect("restart");
    let mut back = client(server.endpoints()).await;
    assert_eq!(
        read(&mut back, "kept", false).await,
        Ok(Some("yes".to_owned())),
        "a restart keeps the data"
    );

    server.pause().expect("pause");
    let started = Instant::now();
    assert!(
        read(&mut back, "kept", false).await.is_err(),
        "a paused server answered"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.resume().expect("resume");
    assert_eq!(
        read(&mut back, "kept", false).await,
        Ok(Some("yes".to_owned()))
    );
}
