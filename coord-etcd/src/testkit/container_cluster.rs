//! [`EtcdContainerCluster`]: etcd members in containers on a network of
//! their own, which a test can kill, pause and partition from each other.

use std::time::{Duration, Instant};

use coord_core::testkit::ServerProcess;
use coord_core::testkit::containers::{TestContainer, TestNetwork, unique_name};
use coord_core::{Error, Result};
use etcd_client::{Client, ConnectOptions};

use super::container::{MemberSpec, PEER_PORT, start_member};
use super::{block_on_own_runtime, etcd_url, loopback, wait_ready_blocking};

/// How long one member may take to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// An etcd cluster of `n` members, each in a container of
/// `coord/etcd:local`, for tests of what only a network can do: a member
/// cut off from the others. Container-only: without an engine or the image
/// it fails, saying what to start or build, and never falls back to
/// processes ([`EtcdCluster`](super::EtcdCluster) is the process fixture).
///
/// The members talk to each other on an internal network the fixture
/// creates (by container name); each member's client port is published on
/// its own 127.0.0.1 port through the default bridge, so a member
/// [partitioned](Self::partition) from the others still answers the test
/// (and shows what a cut-off member does: no linearizable reads, no
/// writes). Short heartbeat and election timeouts (50 ms / 500 ms) make
/// leader changes quick. Everything is removed on drop.
///
/// Cutting the *client* off from one member is not offered: leaving the
/// bridge does not unpublish a port (the engine keeps forwarding it over
/// the internal network); use a TCP fault proxy for that.
///
/// ```no_run
/// # async fn run() -> coord_etcd::Result<()> {
/// use coord_etcd::{EtcdBackend, Settings, testkit::EtcdContainerCluster};
///
/// let cluster = EtcdContainerCluster::start(3)?;
/// let leader = cluster.leader().await?.expect("a leader");
/// cluster.partition(leader)?; // the other two elect a new leader
/// let backend = EtcdBackend::connect(&cluster.url(), &Settings::default()).await?;
/// cluster.heal(leader)?;
/// # drop(backend); Ok(()) }
/// ```
#[derive(Debug)]
pub struct EtcdContainerCluster {
    members: Vec<Member>,
    /// Removed after the members (fields drop in order).
    network: TestNetwork,
}

#[derive(Debug)]
struct Member {
    container: TestContainer,
    client_port: u16,
    /// Its raft id, once known.
    id: u64,
}

impl EtcdContainerCluster {
    /// Starts `n` members (3 or 5) and waits until the cluster answers a
    /// linearizable read (at most 20 s). Blocks the calling thread.
    pub fn start(n: usize) -> Result<EtcdContainerCluster> {
        if n == 0 {
            return Err(Error::invalid("an etcd cluster needs at least one member"));
        }
        let network = TestNetwork::create("etcd-cluster", true)?;
        let names: Vec<String> = (0..n).map(|_| unique_name("etcd-member")).collect();
        let initial = names
            .iter()
            .enumerate()
            .map(|(i, host)| format!("member{i}=http://{host}:{PEER_PORT}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = names[0].clone();
        let extra = [
            "--initial-cluster-token",
            &token,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ];
        let mut members = Vec::with_capacity(n);
        for (i, host) in names.iter().enumerate() {
            let name = format!("member{i}");
            // A port taken meanwhile: the container did not start, try another.
            let (container, client_port) = ServerProcess::retry_port_races(|| {
                let port = ServerProcess::free_port()?;
                let member = MemberSpec {
                    name: &name,
                    peer_host: host,
                    initial_cluster: &initial,
                    host_port: port,
                    extra: &extra,
                };
                start_member(&member, Some(host), Some(&network), false).map(|c| (c, port))
            })?;
            members.push(Member {
                container,
                client_port,
                id: 0,
            });
        }
        let mut cluster = EtcdContainerCluster { members, network };
        wait_ready_blocking(&cluster.url()).map_err(|e| {
            let logs = cluster.members[0].container.logs(10);
            e.context(format!(
                "the etcd containers did not form a cluster; member0 logs:\n{logs}"
            ))
        })?;
        cluster.learn_ids()?;
        Ok(cluster)
    }

    /// Asks the cluster for its members' raft ids, matched by peer URL.
    fn learn_ids(&mut self) -> Result<()> {
        let url = self.url();
        let endpoints = self.endpoints();
        let members = block_on_own_runtime(async move {
            let mut client = connect(&endpoints).await?;
            client
                .member_list()
                .await
                .map_err(|e| Error::unavailable(format!("member list from {url}: {e}"), None))
        })?;
        for m in members.members() {
            let host = m
                .peer_urls()
                .iter()
                .find_map(|u| u.strip_prefix("http://"))
                .and_then(|u| u.split(':').next())
                .unwrap_or_default();
            if let Some(member) = self
                .members
                .iter_mut()
                .find(|member| member.container.name() == host)
            {
                member.id = m.id();
            }
        }
        Ok(())
    }

    /// How many members the cluster has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client endpoint, `127.0.0.1:PORT`, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| loopback(m.client_port))
            .collect()
    }

    /// The URL of the whole cluster: `etcd://h1,h2,h3`.
    pub fn url(&self) -> String {
        etcd_url(&self.endpoints())
    }

    /// The URL of member `i` alone.
    pub fn member_url(&self, i: usize) -> String {
        etcd_url(&[self.endpoint(i)])
    }

    /// The client endpoint of member `i`, `127.0.0.1:PORT`.
    pub fn endpoint(&self, i: usize) -> String {
        loopback(self.members[i].client_port)
    }

    /// Member `i`'s raft id.
    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i].id
    }

    /// Member `i`'s container.
    pub fn container(&self, i: usize) -> &TestContainer {
        &self.members[i].container
    }

    /// The network the members talk to each other on.
    pub fn network(&self) -> &TestNetwork {
        &self.network
    }

    /// The current leader's index, as the members that answer within a
    /// second say (the answer of the highest raft term wins), or `None`
    /// when none of them knows a leader.
    pub async fn leader(&self) -> Result<Option<usize>> {
        let asks = (0..self.len()).map(|i| {
            let endpoint = self.endpoint(i);
            async move {
                tokio::time::timeout(STATUS_TIMEOUT, async {
                    let mut client = connect(std::slice::from_ref(&endpoint)).await?;
                    client
                        .status()
                        .await
                        .map_err(|e| Error::unavailable(format!("status of {endpoint}: {e}"), None))
                })
                .await
                .ok()
                .and_then(Result::ok)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let best = answers
            .iter()
            .flatten()
            .max_by_key(|status| status.raft_term());
        let Some(status) = best else {
            return Err(Error::unavailable(
                "no member of the etcd cluster answered a status request",
                None,
            ));
        };
        Ok(self.members.iter().position(|m| m.id == status.leader()))
    }

    /// Waits (at most `limit`) until the members name a leader other than
    /// `not` (any leader when `None`), and returns its index.
    pub async fn await_leader(&self, not: Option<usize>, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(leader)) = self.leader().await
                && Some(leader) != not
            {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the etcd cluster named no leader{} within {limit:?}",
                    not.map(|i| format!(" other than member {i}"))
                        .unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills member `i` (SIGKILL); its data stays for [`restart`](Self::restart).
    pub fn kill(&self, i: usize) -> Result<()> {
        self.members[i].container.kill()
    }

    /// Starts member `i` again with its data (killing it first if it runs),
    /// and waits until the cluster answers through it. Blocks the calling
    /// thread.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.members[i].container.restart()?;
        wait_ready_blocking(&self.member_url(i))
    }

    /// Freezes member `i` (`docker pause`): its connections stay open, it
    /// answers nothing, to the test or to its peers.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.members[i].container.pause()
    }

    /// Lets a paused member run again.
    pub fn unpause(&self, i: usize) -> Result<()> {
        self.members[i].container.unpause()
    }

    /// Cuts member `i` off from the other members (`docker network
    /// disconnect`): it keeps running and answering the test on its port,
    /// but reaches no peer, nor they it.
    pub fn partition(&self, i: usize) -> Result<()> {
        self.members[i].container.disconnect(&self.network)
    }

    /// Reconnects a partitioned member to the others, under the same name.
    pub fn heal(&self, i: usize) -> Result<()> {
        self.members[i].container.connect(&self.network)
    }
}

/// A client of `endpoints` with short timeouts.
async fn connect(endpoints: &[String]) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(STATUS_TIMEOUT)
        .with_timeout(STATUS_TIMEOUT);
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| Error::unavailable(format!("cannot connect to {endpoints:?}: {e}"), None))
}
