//! A Redis Cluster of masters for tests: local processes, or containers on
//! a network of their own.

use std::time::{Duration, Instant};

use coord_core::testkit::ServerProcess;
use coord_core::testkit::containers::{ServerMode, TestContainer, TestNetwork};
use coord_core::{Error, Result};

use super::container::{REDIS_IMAGE, start_redis};
use super::{RedisServer, TEST_CLUSTER_URL_ENV};

/// The number of masters in the cluster [`RedisServer::start_cluster`] spawns.
pub const CLUSTER_NODES: usize = 3;

/// The cluster bus port of a node in a container (on the cluster's network
/// only, never published).
pub(super) const BUS_PORT: u16 = 16379;

/// How long a new cluster may take to agree on its slots.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

impl RedisServer {
    /// The cluster of `COORD_TEST_REDIS_CLUSTER_URL`, or a new local
    /// Redis Cluster of [`CLUSTER_NODES`] masters sharing the 16384 slots
    /// (`redis+cluster://` URL naming every node).
    pub fn start_cluster() -> Result<RedisServer> {
        Self::external(TEST_CLUSTER_URL_ENV).map_or_else(|| Self::spawn_cluster(CLUSTER_NODES), Ok)
    }

    /// A new Redis Cluster of `nodes` masters (no replicas), each owning an
    /// equal share of the slots, in the mode [`ServerMode::select`] picks.
    /// The returned fixture is the first node; the others (and, for
    /// containers, their network) live and die with it.
    ///
    /// In containers, each node listens on the same port inside as the
    /// loopback port that publishes it, and announces the host name
    /// `127.0.0.1` as its preferred endpoint: the nodes talk to each other
    /// on their network, and `CLUSTER SLOTS` and `MOVED` send clients to
    /// 127.0.0.1 ports they can reach.
    pub fn spawn_cluster(nodes: usize) -> Result<RedisServer> {
        let nodes = nodes.max(1);
        match ServerMode::select(REDIS_IMAGE)? {
            ServerMode::Processes => Self::spawn_cluster_processes(nodes),
            ServerMode::Containers => Self::spawn_cluster_containers(nodes),
        }
    }

    fn spawn_cluster_processes(nodes: usize) -> Result<RedisServer> {
        let servers = (0..nodes)
            .map(|_| {
                Self::spawn_process(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        // The nodes meet on the loopback addresses the clients use.
        let meet = servers
            .iter()
            .map(|s| {
                let port = s.port.unwrap_or_default();
                ("127.0.0.1".to_owned(), port, None)
            })
            .collect();
        form(servers, meet, None)
    }

    /// A new Redis Cluster of `nodes` masters in containers, whatever the
    /// mode (see [`spawn_cluster`](Self::spawn_cluster)).
    pub fn spawn_cluster_containers(nodes: usize) -> Result<RedisServer> {
        let nodes = nodes.max(1);
        let network = TestNetwork::create("redis-cluster", true)?;
        let servers: Vec<RedisServer> = start_cluster_nodes(&network, "redis-cluster", nodes, &[])?
            .into_iter()
            .map(|(container, port)| RedisServer {
                port: Some(port),
                container: Some(container),
                ..RedisServer::unmanaged(format!("redis://127.0.0.1:{port}"))
            })
            .collect();
        let mut meet = Vec::with_capacity(nodes);
        for server in &servers {
            let ip = match &server.container {
                Some(c) => c.ip_on(&network)?,
                None => String::new(),
            };
            meet.push((ip, server.port.unwrap_or_default(), Some(BUS_PORT)));
        }
        form(servers, meet, Some(network))
    }
}

/// Starts `nodes` cluster-enabled Redis containers on `network` at once
/// (most of a container's start is waiting for the engine), each listening
/// on the loopback port that publishes it, its bus on [`BUS_PORT`] (on the
/// network only), announcing the host name `127.0.0.1` so that
/// `CLUSTER SLOTS` and `MOVED` send clients where they can connect; `extra`
/// arguments are added. Every node or the first error (the nodes started
/// are removed).
pub(super) fn start_cluster_nodes(
    network: &TestNetwork,
    purpose: &str,
    nodes: usize,
    extra: &[&str],
) -> Result<Vec<(TestContainer, u16)>> {
    let start_node = || {
        ServerProcess::retry_port_races(|| {
            let port = ServerProcess::free_port()?;
            let bus = BUS_PORT.to_string();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus,
                "--cluster-announce-hostname",
                "127.0.0.1",
                "--cluster-preferred-endpoint-type",
                "hostname",
            ];
            args.extend_from_slice(extra);
            let container = start_redis(purpose, None, port, port, Some(network), &args)?;
            Ok((container, port))
        })
    };
    let started: Vec<Result<(TestContainer, u16)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..nodes).map(|_| scope.spawn(start_node)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::unavailable("starting a cluster node panicked", None))
                })
            })
            .collect()
    });
    let mut ok = Vec::with_capacity(nodes);
    let mut failure = None;
    for node in started {
        match node {
            Ok(node) => ok.push(node),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(ok),
    }
}

/// Gives each of `servers` its share of the slots, has the first meet the
/// others at `meet` (host, port, bus port), waits until every node sees a
/// healthy cluster of all of them, and returns the first node holding the
/// others (and `network`).
fn form(
    mut servers: Vec<RedisServer>,
    meet: Vec<(String, u16, Option<u16>)>,
    network: Option<TestNetwork>,
) -> Result<RedisServer> {
    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    if let Err(e) = assign_and_meet(&urls, &meet, urls.len()) {
        // The containers go before their network.
        drop(servers);
        drop(network);
        return Err(e);
    }
    let url = format!(
        "redis+cluster://{}",
        servers
            .iter()
            .map(|s| s.url.trim_start_matches("redis://"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut first = servers.remove(0);
    first.url = url;
    first.peers = servers;
    first.network = network;
    Ok(first)
}

/// Spreads the slots over the first `masters` of the nodes at `urls`, has
/// the first meet the others at `meet` (host, port, bus port), and waits
/// until every node sees a healthy cluster of all of them.
pub(super) fn assign_and_meet(
    urls: &[&str],
    meet: &[(String, u16, Option<u16>)],
    masters: usize,
) -> Result<()> {
    let nodes = urls.len();
    let addrs: Vec<String> = urls
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    let fail = |what: &str, e: redis::RedisError| {
        Error::unavailable(
            format!("cannot set up the test cluster on {addrs:?}: {what}: {e}"),
            None,
        )
    };
    let mut conns = urls
        .iter()
        .map(|url| {
            redis::Client::open(*url)
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
                .map_err(|e| fail("connect", e))
        })
        .collect::<Result<Vec<_>>>()?;
    const SLOTS: usize = 16384;
    for (i, conn) in conns.iter_mut().take(masters).enumerate() {
        let first = SLOTS * i / masters;
        let last = SLOTS * (i + 1) / masters - 1;
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(first)
            .arg(last)
            .query::<()>(conn)
            .map_err(|e| fail("CLUSTER ADDSLOTSRANGE", e))?;
    }
    for (host, port, bus) in &meet[1..] {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("MEET").arg(host).arg(port);
        if let Some(bus) = bus {
            cmd.arg(bus);
        }
        cmd.query::<()>(&mut conns[0])
            .map_err(|e| fail("CLUSTER MEET", e))?;
    }
    // Every node must see the whole cluster before a client may use it.
    let deadline = Instant::now() + FORM_TIMEOUT;
    let known = format!("cluster_known_nodes:{nodes}");
    for conn in &mut conns {
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(conn)
                .map_err(|e| fail("CLUSTER INFO", e))?;
            if info.contains("cluster_state:ok") && info.contains(&known) {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "the test cluster on {addrs:?} did not reach cluster_state:ok \
                     with {nodes} nodes within {FORM_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}
