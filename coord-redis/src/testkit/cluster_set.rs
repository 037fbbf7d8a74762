//! [`RedisClusterSet`]: a Redis Cluster whose masters have replicas, each
//! node in a container, which a test can kill, pause and cut off from the
//! others.

use std::time::{Duration, Instant};

use coord_core::testkit::containers::{TestContainer, TestNetwork, require_image};
use coord_core::{Error, Result};

use super::cluster::{BUS_PORT, assign_and_meet, start_cluster_nodes};
use super::container::REDIS_IMAGE;

/// How long the cluster may take to form, its replicas to sync, or a
/// replica to take over a failed master (node timeout 1 s, then a vote).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The nodes' `cluster-node-timeout`: how long a master may be unreachable
/// before its replicas fail it over (and before a master cut off from the
/// majority stops taking writes).
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// A Redis Cluster of masters with replicas, each node a container of
/// `coord/redis:local` on a network of its own, for tests of cluster
/// failover. Container-only: without an engine or the image it fails,
/// saying what to start or build. Everything is removed on drop.
///
/// Node `i < masters` starts as a master with an equal share of the slots;
/// the others are replicas, node `masters + j` of master `j % masters`.
/// Each node listens inside its container on the port that publishes it on
/// 127.0.0.1 and announces the host name `127.0.0.1`, so `CLUSTER SLOTS`
/// and `MOVED` send clients to addresses they reach, while the nodes talk
/// (bus and replication) on their network. A node
/// [partitioned](Self::partition) from that network keeps answering the
/// test: a master cut off from the majority takes writes until the node
/// timeout, then refuses them (`CLUSTERDOWN`).
///
/// ```no_run
/// # async fn run() -> coord_core::Result<()> {
/// use coord_redis::testkit::RedisClusterSet;
/// use std::time::Duration;
///
/// let set = RedisClusterSet::start(3, 1)?; // three masters, one replica each
/// set.kill(0)?;
/// let promoted = set.await_promotion(0, Duration::from_secs(30))?;
/// let backend =
///     coord_redis::RedisBackend::connect(&set.url(), &coord_core::Settings::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisClusterSet {
    nodes: Vec<Node>,
    masters: usize,
    /// Removed after the nodes (fields drop in order).
    network: TestNetwork,
}

#[derive(Debug)]
struct Node {
    container: TestContainer,
    port: u16,
    /// `CLUSTER MYID`.
    id: String,
}

impl RedisClusterSet {
    /// `masters` masters, each with `replicas_per_master` replicas. Blocks
    /// the calling thread until the slots are covered and every replica is
    /// in sync (at most about 30 s).
    pub fn start(masters: usize, replicas_per_master: usize) -> Result<RedisClusterSet> {
        if masters == 0 {
            return Err(Error::invalid("a cluster needs at least one master"));
        }
        require_image(REDIS_IMAGE)?;
        let network = TestNetwork::create("redis-cluster-set", true)?;
        let total = masters * (1 + replicas_per_master);
        let timeout = CLUSTER_NODE_TIMEOUT.as_millis().to_string();
        let nodes = start_cluster_nodes(
            &network,
            "redis-cluster-set",
            total,
            &["--cluster-node-timeout", &timeout],
        )?
        .into_iter()
        .map(|(container, port)| Node {
            container,
            port,
            id: String::new(),
        })
        .collect();
        let set = RedisClusterSet {
            nodes,
            masters,
            network,
        };
        set.form()
    }

    fn form(mut self) -> Result<RedisClusterSet> {
        let urls: Vec<String> = (0..self.nodes.len()).map(|i| self.node_url(i)).collect();
        let mut meet = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            meet.push((
                node.container.ip_on(&self.network)?,
                node.port,
                Some(BUS_PORT),
            ));
        }
        let url_refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        assign_and_meet(&url_refs, &meet, self.masters)?;
        for i in 0..self.nodes.len() {
            self.nodes[i].id = query(self.nodes[i].port, redis::cmd("CLUSTER").arg("MYID"))?;
        }
        for i in self.masters..self.nodes.len() {
            let master = &self.nodes[(i - self.masters) % self.masters].id;
            query::<()>(
                self.nodes[i].port,
                redis::cmd("CLUSTER").arg("REPLICATE").arg(master),
            )?;
        }
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        for i in self.masters..self.nodes.len() {
            loop {
                let info: String =
                    query(self.nodes[i].port, redis::cmd("INFO").arg("replication"))?;
                if info.contains("role:slave") && info.contains("master_link_status:up") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Timeout(format!(
                        "replica node {i} of the test cluster did not sync within \
                         {SETTLE_TIMEOUT:?}: {info}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(self)
    }

    /// The `redis+cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// How many nodes there are (masters and replicas).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The URL of node `i` alone: `redis://127.0.0.1:PORT`.
    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The nodes that serve slots now, as the live node `asked` sees them
    /// (`CLUSTER NODES`: flagged `master`, not `fail`, with slots).
    pub fn masters_seen_by(&self, asked: usize) -> Result<Vec<usize>> {
        let text: String = query(self.nodes[asked].port, redis::cmd("CLUSTER").arg("NODES"))?;
        let mut masters = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serving =
                fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail");
            if serving && let Some(i) = self.nodes.iter().position(|n| n.id == fields[0]) {
                masters.push(i);
            }
        }
        masters.sort_unstable();
        Ok(masters)
    }

    /// Waits (at most `limit`) until a replica of node `failed` serves its
    /// slots, as every live node other than `failed` sees it, and the
    /// cluster state is `ok` there; returns the promoted node. Blocks the
    /// calling thread.
    pub fn await_promotion(&self, failed: usize, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        let replicas: Vec<usize> = (self.masters..self.nodes.len())
            .filter(|i| (i - self.masters) % self.masters == failed % self.masters)
            .collect();
        loop {
            let mut last = String::new();
            let promoted = replicas.iter().copied().find(|&r| {
                (0..self.nodes.len()).filter(|&i| i != failed).all(|i| {
                    let ok: Result<String> =
                        query(self.nodes[i].port, redis::cmd("CLUSTER").arg("INFO"));
                    match (ok, self.masters_seen_by(i)) {
                        (Ok(info), Ok(masters)) => {
                            info.contains("cluster_state:ok") && masters.contains(&r)
                        }
                        (a, b) => {
                            last = format!("{:?} {:?}", a.err(), b.err());
                            // A node that does not answer (killed, paused)
                            // has no say.
                            true
                        }
                    }
                })
            });
            if let Some(r) = promoted {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "no replica of node {failed} took over its slots within {limit:?} {last}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&self, i: usize) -> Result<()> {
        self.nodes[i].container.kill()
    }

    /// Freezes node `i` (`docker pause`): connections stay open, it answers
    /// nothing.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.nodes[i].container.pause()
    }

    /// Lets a paused node run again.
    pub fn unpause(&self, i: usize) -> Result<()> {
        self.nodes[i].container.unpause()
    }

    /// Cuts node `i` off from the other nodes (`docker network
    /// disconnect`); it goes on answering the test on its port.
    pub fn partition(&self, i: usize) -> Result<()> {
        self.nodes[i].container.disconnect(&self.network)
    }

    /// Reconnects a partitioned node to the others.
    pub fn heal(&self, i: usize) -> Result<()> {
        self.nodes[i].container.connect(&self.network)
    }
}

/// `cmd` on 127.0.0.1:`port`, on a new connection bounded by a second.
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T> {
    let run = || -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        conn.set_write_timeout(Some(Duration::from_secs(1)))?;
        cmd.query(&mut conn)
    };
    run().map_err(|e| {
        Error::unavailable(
            format!("test cluster node at 127.0.0.1:{port}: {e}"),
            Some(Box::new(e) as _),
        )
    })
}
