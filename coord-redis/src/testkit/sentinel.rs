//! [`RedisSentinel`]: a primary, one replica and three Redis Sentinels as
//! local processes on free loopback ports, for failover tests.
//!
//! ```no_run
//! use coord_redis::testkit::RedisSentinel;
//!
//! # async fn run() -> coord_core::Result<()> {
//! let set = RedisSentinel::start()?;
//! let backend = set.connect().await?; // through set.url(), redis+sentinel://…
//! let old = set.master_addr().await?;
//! let new = set.failover().await?; // SENTINEL FAILOVER, waited for
//! assert_ne!(old, new);
//! # drop(backend); Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use coord_core::testkit::ServerProcess;
use coord_core::{Error, Result, Settings};
use redis::RedisResult;

use super::{INSTALL_HINT, RedisServer, fastrand_u32};
use crate::RedisBackend;
use crate::config::RedisNode;

/// The name the fixture's sentinels monitor the master under.
pub const SENTINEL_MASTER_NAME: &str = "coordtest";

/// The sentinels' `down-after-milliseconds`: a master that does not answer
/// for this long is down, and a failover starts.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);

/// The sentinels' `failover-timeout`. Sentinels do not start an automatic
/// failover of the same master within twice this of the previous one.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(2000);

/// How long [`RedisSentinel::failover`] and [`RedisSentinel::kill_master`]
/// callers should allow the sentinels to agree on a new master.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// How long [`RedisSentinel::start`] waits for the replica to sync and the
/// sentinels to find each other.
const READY_WAIT: Duration = Duration::from_secs(30);

/// How long one request of the fixture to a node may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis primary and replica monitored by three sentinels (quorum 2),
/// all local child processes; every process is killed on drop.
///
/// The sentinels run with short timeouts ([`DOWN_AFTER`],
/// [`FAILOVER_TIMEOUT`]), so a killed primary is replaced within a few
/// seconds. Nothing is persisted.
#[derive(Debug)]
pub struct RedisSentinel {
    // Dropped (killed) first, so that no failover starts while the data
    // nodes go.
    sentinels: Vec<ServerProcess>,
    /// Which sentinels are paused (and so left out of the fixture's queries).
    paused: Mutex<Vec<bool>>,
    /// The data nodes; the first was the primary at start.
    servers: Vec<RedisServer>,
    settings: Settings,
    // The sentinels' configuration files (they rewrite them).
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts the primary, the replica and the sentinels, and waits until
    /// the replica is in sync and every sentinel knows the replica and the
    /// other two sentinels (so that a failover can be authorized at once).
    /// Blocks the calling thread for a few seconds.
    pub fn start() -> Result<RedisSentinel> {
        // Processes in every mode: the sentinels reach the data nodes on loopback.
        let primary = RedisServer::spawn_process(&[])?;
        let primary_port = port_of(&primary);
        let replica =
            RedisServer::spawn_process(&["--replicaof", "127.0.0.1", &primary_port.to_string()])?;
        let dir = tempfile::tempdir().map_err(|e| {
            Error::unavailable("cannot create a temporary directory", Some(e.into()))
        })?;
        let sentinels = (0..3)
            .map(|_| ServerProcess::retry_port_races(|| spawn_sentinel(&dir, primary_port)))
            .collect::<Result<Vec<_>>>()?;
        let mut settings = Settings::default();
        settings.namespace = format!("coordtest{:08x}", fastrand_u32());
        let set = RedisSentinel {
            paused: Mutex::new(vec![false; sentinels.len()]),
            sentinels,
            servers: vec![primary, replica],
            settings,
            _dir: dir,
        };
        set.wait_until_ready()?;
        Ok(set)
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/coordtest`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_nodes()
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "redis+sentinel://{}/{SENTINEL_MASTER_NAME}",
            hosts.join(",")
        )
    }

    /// The name the sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        SENTINEL_MASTER_NAME
    }

    /// The sentinels' addresses.
    pub fn sentinel_nodes(&self) -> Vec<RedisNode> {
        self.sentinels.iter().map(|s| local(s.port())).collect()
    }

    /// The data nodes' addresses (the primary at start first), running or not.
    pub fn data_nodes(&self) -> Vec<RedisNode> {
        self.servers.iter().map(|s| local(port_of(s))).collect()
    }

    /// The settings [`connect`](Self::connect) uses: defaults with a
    /// namespace unique to this fixture.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A new backend through [`url`](Self::url), with its own connections.
    pub async fn connect(&self) -> Result<RedisBackend> {
        RedisBackend::connect(&self.url(), &self.settings).await
    }

    /// Freezes sentinel `i` (SIGSTOP, in [`sentinel_nodes`](Self::sentinel_nodes)
    /// order): its connections stay open and silent. The fixture's own
    /// queries leave it out until [`resume_sentinel`](Self::resume_sentinel).
    pub fn pause_sentinel(&self, i: usize) -> Result<()> {
        self.sentinel(i)?.pause()?;
        self.paused_mut()[i] = true;
        Ok(())
    }

    /// Lets a paused sentinel run again (SIGCONT).
    pub fn resume_sentinel(&self, i: usize) -> Result<()> {
        self.sentinel(i)?.resume()?;
        self.paused_mut()[i] = false;
        Ok(())
    }

    fn sentinel(&self, i: usize) -> Result<&ServerProcess> {
        self.sentinels
            .get(i)
            .ok_or_else(|| Error::invalid(format!("the test set has no sentinel {i}")))
    }

    fn paused_mut(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sentinels that are not paused.
    fn running_sentinels(&self) -> Vec<RedisNode> {
        let paused = self.paused_mut().clone();
        self.sentinel_nodes()
            .into_iter()
            .zip(paused)
            .filter(|(_, paused)| !paused)
            .map(|(node, _)| node)
            .collect()
    }

    /// The master the first (unpaused) sentinel that answers names now.
    pub async fn master_addr(&self) -> Result<RedisNode> {
        let mut last = None;
        for sentinel in self.running_sentinels() {
            match master_by_name(&sentinel).await {
                Ok(node) => return Ok(node),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::unavailable(
            format!("no sentinel of the test set names its master: {last:?}"),
            None,
        ))
    }

    /// The running data node that is not [`master_addr`](Self::master_addr).
    pub async fn replica_addr(&self) -> Result<RedisNode> {
        let master = self.master_addr().await?;
        self.servers
            .iter()
            .filter(|s| s.process().is_some_and(|p| p.pid().is_some()))
            .map(|s| local(port_of(s)))
            .find(|n| *n != master)
            .ok_or_else(|| Error::NotFound("the test set has no running replica".into()))
    }

    /// Forces a failover with `SENTINEL FAILOVER` (sent to the first
    /// unpaused sentinel) and waits (up to
    /// [`FAILOVER_WAIT`]) until every sentinel names the new master and it
    /// answers `ROLE` as master. Returns the new master. The old master
    /// keeps running, and stays a master for some seconds until the
    /// sentinels demote it.
    pub async fn failover(&self) -> Result<RedisNode> {
        let old = self.master_addr().await?;
        let sentinel = self
            .running_sentinels()
            .first()
            .cloned()
            .ok_or_else(|| Error::invalid("every sentinel of the test set is paused"))?;
        let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
        loop {
            let reply: RedisResult<String> = query(
                &sentinel,
                redis::cmd("SENTINEL")
                    .arg("FAILOVER")
                    .arg(SENTINEL_MASTER_NAME),
            )
            .await;
            match reply {
                Ok(_) => break,
                // A failover in progress, or the replica not yet good
                // enough to promote: ask again shortly.
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "SENTINEL FAILOVER refused; asking again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(Error::Timeout(format!(
                        "SENTINEL FAILOVER was refused for {FAILOVER_WAIT:?}: {e}"
                    )));
                }
            }
        }
        self.wait_for_new_master(&old, FAILOVER_WAIT).await
    }

    /// Kills (SIGKILL) the data node the sentinels name as master and
    /// returns its address; the sentinels fail over after [`DOWN_AFTER`].
    /// Wait for the new master with
    /// [`wait_for_new_master`](Self::wait_for_new_master).
    pub async fn kill_master(&mut self) -> Result<RedisNode> {
        let master = self.master_addr().await?;
        self.stop(&master)?;
        Ok(master)
    }

    /// Kills (SIGKILL) the data node at `node`.
    pub fn stop(&mut self, node: &RedisNode) -> Result<()> {
        self.server_mut(node)?.stop()
    }

    /// Freezes the data node at `node` (SIGSTOP): its connections stay
    /// open, nothing is read or answered.
    pub fn pause(&self, node: &RedisNode) -> Result<()> {
        self.process(node)?.pause()
    }

    /// Lets a [`pause`](Self::pause)d data node run again (SIGCONT).
    pub fn resume(&self, node: &RedisNode) -> Result<()> {
        self.process(node)?.resume()
    }

    /// Waits, polling every 50 ms up to `within`, until every unpaused
    /// sentinel names the same master other than `old` and that node
    /// answers `ROLE` as master. Returns it.
    pub async fn wait_for_new_master(
        &self,
        old: &RedisNode,
        within: Duration,
    ) -> Result<RedisNode> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            seen.clear();
            for sentinel in self.running_sentinels() {
                seen.push(master_by_name(&sentinel).await.map_err(|e| e.to_string()));
            }
            if let Some(Ok(first)) = seen.first()
                && first != old
                && seen.iter().all(|s| s.as_ref() == Ok(first))
                && role(first).await.is_ok_and(|r| r == "master")
            {
                return Ok(first.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the sentinels did not agree on a master other than {old} within \
                     {within:?}; they last said {seen:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn server_mut(&mut self, node: &RedisNode) -> Result<&mut RedisServer> {
        self.servers
            .iter_mut()
            .find(|s| port_of(s) == node.port)
            .ok_or_else(|| Error::NotFound(format!("{node} is not a data node of the test set")))
    }

    fn process(&self, node: &RedisNode) -> Result<&ServerProcess> {
        self.servers
            .iter()
            .find(|s| port_of(s) == node.port)
            .and_then(RedisServer::process)
            .ok_or_else(|| Error::NotFound(format!("{node} is not a data node of the test set")))
    }

    /// Blocks until the replica is in sync and every sentinel sees the
    /// master up, one replica and two other sentinels.
    fn wait_until_ready(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + READY_WAIT;
        let replica = self.data_nodes()[1].clone();
        loop {
            let Err(last) = self.readiness(&replica) else {
                return Ok(());
            };
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "the test Sentinel set was not ready within {READY_WAIT:?}: {last}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Why the set is not ready yet, if it is not.
    fn readiness(&self, replica: &RedisNode) -> std::result::Result<(), String> {
        let info: String = blocking_query(replica, redis::cmd("INFO").arg("replication"))
            .map_err(|e| format!("replica {replica}: {e}"))?;
        if !info.contains("master_link_status:up") {
            return Err(format!("replica {replica} is not in sync yet"));
        }
        for sentinel in self.sentinel_nodes() {
            let master: HashMap<String, String> = blocking_query(
                &sentinel,
                redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(SENTINEL_MASTER_NAME),
            )
            .map_err(|e| format!("sentinel {sentinel}: {e}"))?;
            let field = |k: &str| master.get(k).map(String::as_str).unwrap_or_default();
            if field("flags") != "master"
                || field("num-slaves") != "1"
                || field("num-other-sentinels") != "2"
            {
                return Err(format!(
                    "sentinel {sentinel} sees flags={:?} num-slaves={:?} num-other-sentinels={:?}",
                    field("flags"),
                    field("num-slaves"),
                    field("num-other-sentinels")
                ));
            }
        }
        Ok(())
    }
}

/// A sentinel on a free port monitoring the primary at `primary_port`.
fn spawn_sentinel(dir: &tempfile::TempDir, primary_port: u16) -> Result<ServerProcess> {
    let port = ServerProcess::free_port()?;
    let conf = dir.path().join(format!("sentinel-{port}.conf"));
    let name = SENTINEL_MASTER_NAME;
    let text = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         daemonize no\n\
         dir {}\n\
         sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
         sentinel down-after-milliseconds {name} {}\n\
         sentinel failover-timeout {name} {}\n\
         sentinel parallel-syncs {name} 1\n",
        dir.path().display(),
        DOWN_AFTER.as_millis(),
        FAILOVER_TIMEOUT.as_millis(),
    );
    std::fs::write(&conf, text).map_err(|e| {
        Error::unavailable(
            format!("cannot write the sentinel configuration {}", conf.display()),
            Some(e.into()),
        )
    })?;
    let args = vec![conf.to_string_lossy().into_owned(), "--sentinel".to_owned()];
    ServerProcess::spawn("redis-server", args, port, INSTALL_HINT)
}

fn local(port: u16) -> RedisNode {
    RedisNode {
        host: "127.0.0.1".into(),
        port,
    }
}

/// The port of a fixture-spawned server.
fn port_of(server: &RedisServer) -> u16 {
    server.process().map_or(0, ServerProcess::port)
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one sentinel.
async fn master_by_name(sentinel: &RedisNode) -> Result<RedisNode> {
    let reply: Option<(String, u16)> = query(
        sentinel,
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER_NAME),
    )
    .await
    .map_err(|e| Error::unavailable(format!("sentinel {sentinel}: {e}"), None))?;
    reply
        .map(|(host, port)| RedisNode { host, port })
        .ok_or_else(|| {
            Error::NotFound(format!(
                "sentinel {sentinel} knows no {SENTINEL_MASTER_NAME}"
            ))
        })
}

/// The first line of `ROLE` of a node: `master`, `slave` or `sentinel`.
async fn role(node: &RedisNode) -> RedisResult<String> {
    let reply: Vec<redis::Value> = query(node, &redis::cmd("ROLE")).await?;
    match reply.first() {
        Some(redis::Value::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(redis::Value::SimpleString(s)) => Ok(s.clone()),
        _ => Ok(String::new()),
    }
}

/// One command on a new connection to `node`, within [`QUERY_TIMEOUT`].
async fn query<T: redis::FromRedisValue>(node: &RedisNode, cmd: &redis::Cmd) -> RedisResult<T> {
    let attempt = async {
        let client = redis::Client::open(format!("redis://{node}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    };
    match tokio::time::timeout(QUERY_TIMEOUT, attempt).await {
        Ok(reply) => reply,
        Err(_) => Err(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}

/// One command on a new blocking connection to `node`.
fn blocking_query<T: redis::FromRedisValue>(node: &RedisNode, cmd: &redis::Cmd) -> RedisResult<T> {
    let client = redis::Client::open(format!("redis://{node}"))?;
    let mut conn = client.get_connection_with_timeout(QUERY_TIMEOUT)?;
    conn.set_read_timeout(Some(QUERY_TIMEOUT))?;
    cmd.query(&mut conn)
}
