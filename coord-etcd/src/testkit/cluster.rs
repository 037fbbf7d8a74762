//! [`EtcdCluster`]: several etcd members on loopback, each of which a test
//! can kill, restart, pause and resume.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use coord_core::testkit::ServerProcess;
use coord_core::{Error, Result};

use super::{INSTALL_HINT, data_dir, etcd_url, loopback, member_args, wait_ready_blocking};

/// An etcd cluster of `n` members spawned on free loopback ports, each with
/// a temporary data directory, killed on drop. Short heartbeat and election
/// timeouts (50 ms / 500 ms) make leader changes quick.
///
/// ```no_run
/// # async fn run() -> coord_etcd::Result<()> {
/// use coord_etcd::{EtcdBackend, Settings, testkit::EtcdCluster};
///
/// let cluster = EtcdCluster::start(3)?;
/// let backend = EtcdBackend::connect(&cluster.url(), &Settings::default()).await?;
/// cluster.stop(0)?; // a minority down: the backend goes on with the others
/// # drop(backend); Ok(()) }
/// ```
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
}

#[derive(Debug)]
struct Member {
    client_port: u16,
    process: Mutex<ServerProcess>,
    _data_dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (3 or 5) and waits until the cluster answers a
    /// linearizable read (at most 20 s). Blocks the calling thread.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        if n == 0 {
            return Err(Error::invalid("an etcd cluster needs at least one member"));
        }
        ServerProcess::retry_port_races(|| Self::start_once(n))
    }

    fn start_once(n: usize) -> Result<EtcdCluster> {
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((ServerProcess::free_port()?, ServerProcess::free_port()?));
        }
        let name = |i: usize| format!("member{i}");
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("{}=http://127.0.0.1:{peer}", name(i)))
            .collect();
        let token = format!("coord-test-{}-{}", std::process::id(), ports[0].0);
        let mut members = Vec::with_capacity(n);
        for (i, (client_port, peer_port)) in ports.iter().enumerate() {
            let dir = data_dir()?;
            let mut args =
                member_args(&name(i), &dir, *client_port, *peer_port, &initial.join(","));
            args.extend(
                [
                    "--initial-cluster-token",
                    &token,
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ]
                .map(str::to_owned),
            );
            let process = ServerProcess::spawn("etcd", args, *client_port, INSTALL_HINT)?;
            members.push(Member {
                client_port: *client_port,
                process: Mutex::new(process),
                _data_dir: dir,
            });
        }
        let cluster = EtcdCluster { members };
        wait_ready_blocking(&cluster.url())?;
        Ok(cluster)
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
        etcd_url(&[loopback(self.members[i].client_port)])
    }

    /// Kills member `i` (SIGKILL); its data stays for [`restart`](Self::restart).
    pub fn stop(&self, i: usize) -> Result<()> {
        self.process(i).stop()
    }

    /// Starts member `i` again with its data (killing it first if it runs),
    /// and waits until the cluster answers through it. Blocks the calling
    /// thread.
    pub fn restart(&self, i: usize) -> Result<()> {
        {
            let mut p = self.process(i);
            p.stop()?;
            p.start()?;
        }
        wait_ready_blocking(&self.member_url(i))
    }

    /// Freezes member `i` (SIGSTOP): its connections stay open, it answers nothing.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.process(i).pause()
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&self, i: usize) -> Result<()> {
        self.process(i).resume()
    }

    /// The index of the member that leads, as the first member that answers
    /// says (paused or stopped members are skipped, each within 1 s).
    pub async fn leader(&self) -> Result<usize> {
        let mut ids = Vec::with_capacity(self.members.len());
        let mut leader = None;
        for m in &self.members {
            let endpoint = format!("http://127.0.0.1:{}", m.client_port);
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(1));
            let status = match etcd_client::Client::connect([endpoint], Some(options)).await {
                Ok(mut client) => client.status().await.ok(),
                Err(_) => None,
            };
            ids.push(
                status
                    .as_ref()
                    .and_then(|s| s.header().map(|h| h.member_id())),
            );
            if leader.is_none() {
                leader = status.map(|s| s.leader()).filter(|id| *id != 0);
            }
        }
        let leader = leader
            .ok_or_else(|| Error::unavailable("no etcd member answered with a leader", None))?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .ok_or_else(|| {
                Error::unavailable(
                    format!("the leader (member id {leader:x}) did not answer its status"),
                    None,
                )
            })
    }

    fn process(&self, i: usize) -> MutexGuard<'_, ServerProcess> {
        self.members[i]
            .process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // A paused member still dies of SIGKILL; give it a moment's grace anyway.
        for i in 0..self.members.len() {
            let _ = self.resume(i);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
