//! [`RedisReplicaSet`]: a Redis primary with replicas and Sentinels, each in
//! a container, which a test can kill, pause and cut off from the others.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coord_core::testkit::ServerProcess;
use coord_core::testkit::containers::{
    ContainerSpec, TestContainer, TestNetwork, require_image, unique_name,
};
use coord_core::{Error, Result};

use super::container::{REDIS_IMAGE, start_redis, wait_answering, wait_answering_within};

/// The name the Sentinels monitor the primary under.
pub const MASTER_NAME: &str = "coord";

/// How long a new replica set may take to be ready: replicas in sync,
/// every Sentinel aware of every other and of every replica.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one query of a Sentinel or node may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// A member of a [`RedisReplicaSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaSetMember {
    /// Data node `i`: 0 is the first primary, the others its replicas.
    Node(usize),
    /// Sentinel `i`.
    Sentinel(usize),
}

/// A Redis primary, its replicas and Sentinels, each in a container of
/// `coord/redis:local`, for tests of failover: kill, pause or cut off a
/// member and watch the Sentinels promote a replica. Container-only:
/// without an engine or the image it fails, saying what to start or build.
/// Everything is removed on drop.
///
/// # Addresses
///
/// Each member listens inside its container on the same port as the
/// 127.0.0.1 port that publishes it, and announces its container name
/// (`replica-announce-ip`, `sentinel announce-ip`, with
/// `resolve-hostnames`/`announce-hostnames`). The members reach each other
/// by name on an internal network; the Sentinels answer `name port`, and
/// [`loopback`](Self::loopback) turns that into the `127.0.0.1:port` the
/// test reaches (only the host changes). Announcing `127.0.0.1` itself
/// does not work: each container has a loopback of its own, so the
/// Sentinels could reach neither the replicas nor each other through it
/// (they mark them down and never fail over), and the primary they monitor
/// would still be named by its network address.
///
/// Each member also joins the default bridge, which carries its published
/// port: a member [partitioned](Self::partition) from the others keeps
/// answering the test — a partitioned primary goes on accepting writes
/// that the promoted replica never sees, as in a real split brain.
///
/// ```no_run
/// # async fn run() -> coord_core::Result<()> {
/// use coord_redis::testkit::{RedisReplicaSet, ReplicaSetMember};
/// use std::time::Duration;
///
/// let set = RedisReplicaSet::start()?;
/// set.kill(ReplicaSetMember::Node(0))?;
/// let primary = set.await_primary(Some(0), Duration::from_secs(30)).await?;
/// let url = set.node_url(primary); // the promoted replica
/// // A client of the set: the sentinels' URL, their addresses mapped.
/// let backend = coord_redis::RedisBackend::connect(
///     &set.url(),
///     &set.settings(coord_core::Settings::default()),
/// )
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisReplicaSet {
    nodes: Vec<Instance>,
    sentinels: Vec<Instance>,
    /// Removed after the members (fields drop in order).
    network: TestNetwork,
}

#[derive(Debug)]
struct Instance {
    container: TestContainer,
    port: u16,
}

impl RedisReplicaSet {
    /// A primary, one replica and three Sentinels (quorum 2). Blocks the
    /// calling thread until they are ready (at most about 30 s).
    pub fn start() -> Result<RedisReplicaSet> {
        Self::start_with(1, 3)
    }

    /// A primary, `replicas` replicas and `sentinels` Sentinels (quorum: a
    /// majority of them). Blocks like [`start`](Self::start).
    pub fn start_with(replicas: usize, sentinels: usize) -> Result<RedisReplicaSet> {
        if sentinels == 0 {
            return Err(Error::invalid("a replica set needs at least one Sentinel"));
        }
        require_image(REDIS_IMAGE)?;
        let network = TestNetwork::create("redis-replicas", true)?;
        let mut set = RedisReplicaSet {
            nodes: Vec::new(),
            sentinels: Vec::new(),
            network,
        };
        for i in 0..=replicas {
            let node = set.start_node(i)?;
            set.nodes.push(node);
        }
        for _ in 0..sentinels {
            let sentinel = set.start_sentinel(sentinels / 2 + 1)?;
            set.sentinels.push(sentinel);
        }
        set.wait_ready()?;
        Ok(set)
    }

    fn start_node(&self, i: usize) -> Result<Instance> {
        ServerProcess::retry_port_races(|| {
            let port = ServerProcess::free_port()?;
            let name = unique_name("redis-node");
            let mut extra = vec![
                "--replica-announce-ip".to_owned(),
                name.clone(),
                "--repl-diskless-sync-delay".to_owned(),
                "0".to_owned(),
            ];
            if i > 0 {
                let primary = &self.nodes[0];
                extra.extend([
                    "--replicaof".to_owned(),
                    primary.container.name().to_owned(),
                    primary.port.to_string(),
                ]);
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let container = start_redis(
                "redis-node",
                Some(&name),
                port,
                port,
                Some(&self.network),
                &extra,
            )?;
            Ok(Instance { container, port })
        })
    }

    fn start_sentinel(&self, quorum: usize) -> Result<Instance> {
        let primary = &self.nodes[0];
        ServerProcess::retry_port_races(|| {
            let port = ServerProcess::free_port()?;
            let name = unique_name("redis-sentinel");
            let config = format!(
                "port {port}\n\
                 bind 0.0.0.0\n\
                 protected-mode no\n\
                 sentinel resolve-hostnames yes\n\
                 sentinel announce-hostnames yes\n\
                 sentinel announce-ip {name}\n\
                 sentinel announce-port {port}\n\
                 sentinel monitor {MASTER_NAME} {} {} {quorum}\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                primary.container.name(),
                primary.port,
            );
            let container = TestContainer::start(
                ContainerSpec::new(REDIS_IMAGE, "redis-sentinel")
                    .named(&name)
                    .cmd(["redis-server", "/data/sentinel.conf", "--sentinel"])
                    .file("/data/sentinel.conf", config)
                    .publish(port, port)
                    .network(&self.network),
            )?;
            wait_answering(port)?;
            Ok(Instance { container, port })
        })
    }

    /// Waits until every replica is in sync and every Sentinel knows every
    /// other Sentinel and every replica.
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let replicas = self.nodes.len() - 1;
        let others = self.sentinels.len() - 1;
        loop {
            let mut waiting_for = None;
            for (i, node) in self.nodes.iter().enumerate().skip(1) {
                let info = info_replication(node.port).unwrap_or_default();
                if !info.contains("master_link_status:up") {
                    waiting_for = Some(format!("replica {i} to sync"));
                }
            }
            for (i, sentinel) in self.sentinels.iter().enumerate() {
                match sentinel_master(sentinel.port) {
                    Ok(fields)
                        if fields.get("num-slaves") == Some(&replicas.to_string())
                            && fields.get("num-other-sentinels") == Some(&others.to_string())
                            && fields.get("flags").map(String::as_str) == Some("master") => {}
                    Ok(fields) => {
                        waiting_for = Some(format!(
                            "Sentinel {i} to see {replicas} replica(s) and {others} other \
                             Sentinel(s): {fields:?}"
                        ));
                    }
                    Err(e) => waiting_for = Some(format!("Sentinel {i}: {e}")),
                }
            }
            let Some(what) = waiting_for else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the Redis replica set was not ready within {READY_TIMEOUT:?}: waiting for {what}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many data nodes (the primary and its replicas) there are.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// How many Sentinels there are.
    pub fn sentinels(&self) -> usize {
        self.sentinels.len()
    }

    /// The name the Sentinels monitor the primary under ([`MASTER_NAME`]).
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The URL of data node `i`: `redis://127.0.0.1:PORT`.
    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The URL of Sentinel `i`: `redis://127.0.0.1:PORT`.
    pub fn sentinel_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.sentinels[i].port)
    }

    /// Every Sentinel's address, `127.0.0.1:PORT`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The `redis+sentinel://` URL of the set: every Sentinel, then
    /// [`MASTER_NAME`]. Connect with [`settings`](Self::settings), whose
    /// address map turns the container names the Sentinels announce into
    /// loopback addresses.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{MASTER_NAME}",
            self.sentinel_addrs().join(",")
        )
    }

    /// `base` with an [`address_map`](coord_core::Settings::address_map)
    /// entry per member: `container-name:port` → `127.0.0.1:port`.
    pub fn settings(&self, base: coord_core::Settings) -> coord_core::Settings {
        let mut settings = base;
        for m in self.nodes.iter().chain(&self.sentinels) {
            settings.address_map.insert(
                format!("{}:{}", m.container.name(), m.port),
                format!("127.0.0.1:{}", m.port),
            );
        }
        settings
    }

    /// The member's container.
    pub fn container(&self, member: ReplicaSetMember) -> &TestContainer {
        &self.instance(member).container
    }

    /// The loopback address (`127.0.0.1:port`) of the member a Sentinel or
    /// a node named as `host port` (its container name), or `None` for a
    /// host that is no member.
    pub fn loopback(&self, host: &str, port: u16) -> Option<String> {
        self.nodes
            .iter()
            .chain(&self.sentinels)
            .find(|m| m.container.name() == host && m.port == port)
            .map(|m| format!("127.0.0.1:{}", m.port))
    }

    /// The data node that a majority of the Sentinels name as the primary
    /// (`SENTINEL get-master-addr-by-name`), asking each for at most a
    /// second. Fails when no majority agrees.
    pub async fn primary(&self) -> Result<usize> {
        let asks = self.sentinels.iter().map(|s| {
            let url = format!("redis://127.0.0.1:{}", s.port);
            async move {
                let ask = async {
                    let client = redis::Client::open(url.as_str())?;
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(MASTER_NAME)
                        .query_async::<Option<(String, u16)>>(&mut conn)
                        .await
                };
                tokio::time::timeout(QUERY_TIMEOUT, ask)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten()
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut votes: HashMap<usize, usize> = HashMap::new();
        for (host, port) in answers.iter().flatten() {
            if let Some(i) = self
                .nodes
                .iter()
                .position(|n| n.container.name() == host && n.port == *port)
            {
                *votes.entry(i).or_default() += 1;
            }
        }
        let majority = self.sentinels.len() / 2 + 1;
        votes
            .into_iter()
            .find(|&(_, n)| n >= majority)
            .map(|(i, _)| i)
            .ok_or_else(|| {
                Error::unavailable(
                    format!("no majority of the Sentinels names one primary: {answers:?}"),
                    None,
                )
            })
    }

    /// Waits (at most `limit`) until a majority of the Sentinels name a
    /// primary other than `not` (any when `None`), and returns it.
    pub async fn await_primary(&self, not: Option<usize>, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.primary().await {
                Ok(i) if Some(i) != not => return Ok(i),
                Ok(i) => format!("they still name node {i}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the Sentinels named no new primary within {limit:?}: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the member (SIGKILL).
    pub fn kill(&self, member: ReplicaSetMember) -> Result<()> {
        self.instance(member).container.kill()
    }

    /// Kills the member and starts it again on the same port, and waits
    /// until it answers. A data node comes back empty (no persistence)
    /// with the role its command line gives it (node 0 primary, the others
    /// replicas of node 0), until the Sentinels reconfigure it; a Sentinel
    /// keeps the configuration it rewrote. Blocks the calling thread.
    pub fn restart(&self, member: ReplicaSetMember) -> Result<()> {
        let instance = self.instance(member);
        instance.container.restart()?;
        wait_answering_within(instance.port, READY_TIMEOUT)
    }

    /// Freezes the member (`docker pause`): connections stay open, it
    /// answers nothing.
    pub fn pause(&self, member: ReplicaSetMember) -> Result<()> {
        self.instance(member).container.pause()
    }

    /// Lets a paused member run again.
    pub fn unpause(&self, member: ReplicaSetMember) -> Result<()> {
        self.instance(member).container.unpause()
    }

    /// Cuts the member off from the others (`docker network disconnect`);
    /// it goes on answering the test on its port.
    pub fn partition(&self, member: ReplicaSetMember) -> Result<()> {
        self.instance(member).container.disconnect(&self.network)
    }

    /// Reconnects a partitioned member to the others, under the same name.
    pub fn heal(&self, member: ReplicaSetMember) -> Result<()> {
        self.instance(member).container.connect(&self.network)
    }

    fn instance(&self, member: ReplicaSetMember) -> &Instance {
        match member {
            ReplicaSetMember::Node(i) => &self.nodes[i],
            ReplicaSetMember::Sentinel(i) => &self.sentinels[i],
        }
    }
}

/// A blocking connection to 127.0.0.1:`port` whose calls give up after
/// [`QUERY_TIMEOUT`].
fn connection(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let conn = client.get_connection_with_timeout(QUERY_TIMEOUT)?;
    conn.set_read_timeout(Some(QUERY_TIMEOUT))?;
    conn.set_write_timeout(Some(QUERY_TIMEOUT))?;
    Ok(conn)
}

/// `INFO replication` of the node on `port`.
fn info_replication(port: u16) -> redis::RedisResult<String> {
    redis::cmd("INFO")
        .arg("replication")
        .query(&mut connection(port)?)
}

/// `SENTINEL MASTER` of the Sentinel on `port`, as field → value.
fn sentinel_master(port: u16) -> redis::RedisResult<HashMap<String, String>> {
    let flat: Vec<String> = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER_NAME)
        .query(&mut connection(port)?)?;
    Ok(flat
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect())
}
