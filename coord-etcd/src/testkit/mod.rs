//! Test fixtures: a real etcd server for your tests, and the harness that
//! runs coord's conformance suite against it.
//!
//! * [`EtcdServer`]: `COORD_TEST_ETCD_ENDPOINTS` when set; otherwise a
//!   managed server, a local `etcd` process or a container of
//!   `coord/etcd:local` as `COORD_TEST_SERVERS=processes|containers` says
//!   (processes when unset; see
//!   [`ServerMode::select`](coord_core::testkit::containers::ServerMode::select)).
//! * [`EtcdCluster`]: several members as local processes.
//! * [`EtcdContainerCluster`]: several members in containers on a network
//!   of their own, which a test can cut off from each other.
//!
//! Containers need an engine and the image (`bash .ci/build-images.sh`);
//! without them these fixtures fail saying what to run.
//!
//! ```no_run
//! # async fn run() -> coord_etcd::Result<()> {
//! use coord_etcd::{EtcdBackend, Settings, testkit::EtcdServer};
//!
//! let server = EtcdServer::start()?; // or COORD_TEST_ETCD_ENDPOINTS
//! let backend = EtcdBackend::connect(&server.url(), &Settings::default()).await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use coord_core::testkit::containers::{ServerMode, TestContainer};
use coord_core::testkit::{LockHarness, ServerProcess};
use coord_core::{Error, LockBackend, Result, Settings};

use crate::EtcdBackend;

mod cluster;
mod container;
mod container_cluster;

pub use cluster::EtcdCluster;
pub use container::ETCD_IMAGE;
pub use container_cluster::EtcdContainerCluster;

/// The environment variable naming an existing etcd to test against
/// (`host:port[,host:port…]`, `http://` optional) instead of spawning one.
pub const ENDPOINTS_ENV: &str = "COORD_TEST_ETCD_ENDPOINTS";

pub(crate) const INSTALL_HINT: &str = "install etcd (`apt-get install etcd-server`) or set \
    COORD_TEST_ETCD_ENDPOINTS to the endpoints of a running etcd";

/// How long a spawned etcd may take to answer requests.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// An etcd server for tests: the one named by `COORD_TEST_ETCD_ENDPOINTS`,
/// or one this fixture manages — an `etcd` process spawned on free loopback
/// ports with a temporary data directory (in `/dev/shm` when it exists), or
/// a container of `coord/etcd:local` whose client port is published on a
/// free loopback port (see [`EtcdServer::spawn`] for which) — killed on
/// drop. [`stop`](Self::stop), [`restart`](Self::restart),
/// [`pause`](Self::pause) and [`resume`](Self::resume) work the same on a
/// process and on a container.
#[derive(Debug)]
pub struct EtcdServer {
    endpoints: Vec<String>,
    spawned: Option<Spawned>,
}

#[derive(Debug)]
enum Spawned {
    Process {
        process: Mutex<ServerProcess>,
        // Kept until the process is gone: dropped after `process`.
        _data_dir: tempfile::TempDir,
    },
    /// Its data lives in the container's file system, which a restart keeps.
    Container(TestContainer),
}

impl EtcdServer {
    /// The server named by `COORD_TEST_ETCD_ENDPOINTS`, or a new one
    /// ([`spawn`](Self::spawn)). Returns once etcd answers a request (at
    /// most 20 s). Blocks the calling thread meanwhile; works inside and
    /// outside a runtime.
    pub fn start() -> Result<EtcdServer> {
        if let Ok(list) = std::env::var(ENDPOINTS_ENV)
            && !list.trim().is_empty()
        {
            let endpoints = list
                .split(',')
                .map(|e| e.trim().trim_start_matches("http://").to_owned())
                .collect();
            let server = EtcdServer {
                endpoints,
                spawned: None,
            };
            server.wait_ready()?;
            return Ok(server);
        }
        Self::spawn()
    }

    /// A new server, never the external one: a container when
    /// [`ServerMode::select`] says so (`COORD_TEST_SERVERS=containers`), a
    /// local `etcd` process otherwise. Blocks like [`start`](Self::start).
    pub fn spawn() -> Result<EtcdServer> {
        match ServerMode::select(ETCD_IMAGE)? {
            ServerMode::Processes => Self::spawn_process(),
            ServerMode::Containers => Self::spawn_container(),
        }
    }

    /// A new container of `coord/etcd:local`, whatever the mode. Blocks
    /// like [`start`](Self::start).
    pub fn spawn_container() -> Result<EtcdServer> {
        let server = ServerProcess::retry_port_races(|| {
            let port = ServerProcess::free_port()?;
            let member = container::MemberSpec {
                name: "coord-test",
                peer_host: "127.0.0.1",
                initial_cluster: &format!("coord-test=http://127.0.0.1:{}", container::PEER_PORT),
                host_port: port,
                extra: &[],
            };
            let container = container::start_member(&member, None, None, true)?;
            Ok(EtcdServer {
                endpoints: vec![format!("127.0.0.1:{port}")],
                spawned: Some(Spawned::Container(container)),
            })
        })?;
        server.wait_ready()?;
        Ok(server)
    }

    /// A new local `etcd` process, whatever the mode. Blocks like
    /// [`start`](Self::start).
    pub fn spawn_process() -> Result<EtcdServer> {
        let mut last_error = None;
        // Another process may take a free port before etcd binds it: retry.
        for _ in 0..3 {
            match spawn_etcd() {
                Ok(server) => {
                    server.wait_ready()?;
                    return Ok(server);
                }
                // The binary is missing: retrying cannot help.
                Err(e @ Error::Unavailable { .. }) if e.to_string().contains("cannot start") => {
                    return Err(e);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::unavailable("could not start etcd", None)))
    }

    /// One server shared by every caller while any of them holds it; a new
    /// one is started when the last holder dropped it. Blocks like [`start`](Self::start).
    pub fn shared() -> Result<Arc<EtcdServer>> {
        static SHARED: Mutex<Weak<EtcdServer>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = slot.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(EtcdServer::start()?);
        *slot = Arc::downgrade(&server);
        Ok(server)
    }

    /// The client endpoints, `host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The URL to connect to: `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    /// Whether this fixture manages the server, as a process or a
    /// container (and so can stop, pause and restart it).
    pub fn is_spawned(&self) -> bool {
        self.spawned.is_some()
    }

    /// How this fixture runs the server; `None` for an external one.
    pub fn mode(&self) -> Option<ServerMode> {
        self.spawned.as_ref().map(|s| match s {
            Spawned::Process { .. } => ServerMode::Processes,
            Spawned::Container(_) => ServerMode::Containers,
        })
    }

    /// The process id of a spawned, running process (`None` for a
    /// container: use [`stop`](Self::stop), [`pause`](Self::pause) and the
    /// others, which work in both modes).
    pub fn pid(&self) -> Option<u32> {
        match self.spawned.as_ref()? {
            Spawned::Process { process, .. } => lock(process).pid(),
            Spawned::Container(_) => None,
        }
    }

    /// The container, when this fixture runs the server in one.
    pub fn container(&self) -> Option<&TestContainer> {
        match self.spawned.as_ref()? {
            Spawned::Container(c) => Some(c),
            Spawned::Process { .. } => None,
        }
    }

    /// Kills the server (SIGKILL). Its data stays for [`restart`](Self::restart).
    pub fn stop(&self) -> Result<()> {
        match self.spawned()? {
            Spawned::Process { process, .. } => lock(process).stop(),
            Spawned::Container(c) => c.kill(),
        }
    }

    /// Starts a stopped server again on the same ports with the same data
    /// (killing a running one first), and waits until it answers. Blocks
    /// the calling thread meanwhile.
    pub fn restart(&self) -> Result<()> {
        match self.spawned()? {
            Spawned::Process { process, .. } => {
                let mut p = lock(process);
                p.stop()?;
                p.start()?;
            }
            Spawned::Container(c) => c.restart()?,
        }
        self.wait_ready()
    }

    /// Freezes the server (SIGSTOP, or `docker pause`): connections stay
    /// open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        match self.spawned()? {
            Spawned::Process { process, .. } => lock(process).pause(),
            Spawned::Container(c) => c.pause(),
        }
    }

    /// Lets a paused server run again (SIGCONT, or `docker unpause`).
    pub fn resume(&self) -> Result<()> {
        match self.spawned()? {
            Spawned::Process { process, .. } => lock(process).resume(),
            Spawned::Container(c) => c.unpause(),
        }
    }

    fn spawned(&self) -> Result<&Spawned> {
        self.spawned.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "the etcd at {} comes from {ENDPOINTS_ENV}; only a spawned server can be stopped, paused or restarted",
                self.endpoints.join(",")
            ))
        })
    }

    fn wait_ready(&self) -> Result<()> {
        wait_ready_blocking(&self.url())
    }
}

/// A fixture's client endpoint on loopback: `127.0.0.1:PORT`.
pub(crate) fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The `etcd://` URL of `endpoints`.
pub(crate) fn etcd_url(endpoints: &[String]) -> String {
    format!("etcd://{}", endpoints.join(","))
}

/// Waits until etcd at `url` answers a linearizable read, on a runtime of
/// its own in a thread of its own (so it works inside and outside a runtime).
pub(crate) fn wait_ready_blocking(url: &str) -> Result<()> {
    block_on_own_runtime(wait_ready(url))
}

/// Runs `fut` on a runtime of its own in a thread of its own (so it works
/// inside and outside a runtime).
pub(crate) fn block_on_own_runtime<T: Send>(
    fut: impl std::future::Future<Output = Result<T>> + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::unavailable("cannot start a runtime", Some(e.into())))?
                    .block_on(fut)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::unavailable(
                    "a fixture's blocking call panicked",
                    None,
                ))
            })
    })
}

/// A temporary data directory for an etcd process (in `/dev/shm` when it exists).
pub(crate) fn data_dir() -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix("coord-etcd-test-");
    if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .map_err(|e| Error::unavailable("cannot create a data directory for etcd", Some(e.into())))
}

async fn wait_ready(url: &str) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut settings = Settings::default();
    settings.connect_timeout = Duration::from_secs(1);
    settings.request_timeout = Duration::from_secs(1);
    loop {
        let err = match EtcdBackend::connect(url, &settings).await {
            Ok(backend) => match backend.ping().await {
                h if h.is_healthy() => return Ok(()),
                h => h.detail.unwrap_or_default(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::unavailable(
                format!("etcd at {url} did not answer within {READY_TIMEOUT:?}: {err}"),
                None,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_etcd() -> Result<EtcdServer> {
    ServerProcess::retry_port_races(spawn_etcd_once)
}

fn spawn_etcd_once() -> Result<EtcdServer> {
    let data_dir = data_dir()?;
    let client_port = ServerProcess::free_port()?;
    let peer_port = ServerProcess::free_port()?;
    let peer = format!("http://127.0.0.1:{peer_port}");
    let args = member_args(
        "coord-test",
        &data_dir,
        client_port,
        peer_port,
        &format!("coord-test={peer}"),
    );
    let process = ServerProcess::spawn("etcd", args, client_port, INSTALL_HINT)?;
    Ok(EtcdServer {
        endpoints: vec![format!("127.0.0.1:{client_port}")],
        spawned: Some(Spawned::Process {
            process: Mutex::new(process),
            _data_dir: data_dir,
        }),
    })
}

/// The arguments of one etcd member `name` listening on loopback, with its
/// data under `dir`, in a new cluster `initial_cluster`
/// (`name=http://127.0.0.1:PEER,…`).
pub(crate) fn member_args(
    name: &str,
    dir: &tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    [
        "--name",
        name,
        "--data-dir",
        &dir.path().join("data").to_string_lossy(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-state",
        "new",
        "--logger",
        "zap",
        "--log-level",
        "error",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn lock(process: &Mutex<ServerProcess>) -> MutexGuard<'_, ServerProcess> {
    process.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs coord's conformance suite against etcd: every
/// [`new_backend`](LockHarness::new_backend) is a new, independent
/// [`EtcdBackend`] connection to one [shared](EtcdServer::shared) server.
///
/// ```text
/// coord_core::lock_conformance_tests!(etcd, coord_etcd::testkit::EtcdHarness::start().await);
/// ```
#[derive(Debug, Clone)]
pub struct EtcdHarness {
    server: Arc<EtcdServer>,
    settings: Settings,
}

impl EtcdHarness {
    /// A harness over the shared test server. Panics, failing the test, when
    /// etcd cannot be started: a conformance test must not silently skip.
    pub async fn start() -> EtcdHarness {
        match EtcdHarness::try_start().await {
            Ok(h) => h,
            Err(e) => panic!("cannot run the etcd tests: {e}"),
        }
    }

    /// Like [`start`](Self::start), returning the error.
    pub async fn try_start() -> Result<EtcdHarness> {
        Ok(EtcdHarness {
            server: EtcdServer::shared()?,
            settings: Settings::default(),
        })
    }

    /// A harness over a server of its own (spawned for it, killed when the
    /// harness and its clones are dropped), for tests that restart it: a
    /// restart of the shared server would disturb the other tests using it
    /// (their requests fail, their leases are extended). Panics like
    /// [`start`](Self::start).
    pub async fn start_isolated() -> EtcdHarness {
        match EtcdServer::start() {
            Ok(server) => EtcdHarness {
                server: Arc::new(server),
                settings: Settings::default(),
            },
            Err(e) => panic!("cannot run the etcd tests: {e}"),
        }
    }

    /// The server under test.
    pub fn server(&self) -> &EtcdServer {
        &self.server
    }

    /// A new client with these settings (namespace, timeouts).
    pub async fn connect(&self) -> Result<EtcdBackend> {
        EtcdBackend::connect(&self.server.url(), &self.settings).await
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::fenced::FencedStoreHarness for EtcdHarness {
    async fn new_fenced_store(&self) -> Arc<dyn coord_core::FencedStore> {
        match self.connect().await {
            Ok(b) => Arc::new(crate::EtcdFencedStore::new(&b)),
            Err(e) => panic!("cannot connect to the etcd under test: {e}"),
        }
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::cache::CacheHarness for EtcdHarness {
    async fn new_cache_backend(&self) -> Arc<dyn coord_core::CacheBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("cannot connect to the etcd under test: {e}"),
        }
    }

    async fn new_lock_backend(&self) -> Option<Arc<dyn LockBackend>> {
        Some(LockHarness::new_backend(self).await)
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::discovery::DiscoveryHarness for EtcdHarness {
    async fn new_registry_backend(&self) -> Arc<dyn coord_core::discovery::RegistryBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("cannot connect to the etcd under test: {e}"),
        }
    }

    /// Restarts the spawned server (every watch stream and keep-alive
    /// stream breaks; leases survive, as etcd restores them), then writes
    /// a key and compacts the history to that revision, so that a watch
    /// resumed from before the restart is refused as compacted and the
    /// watcher must list again. `false` for a server from
    /// `COORD_TEST_ETCD_ENDPOINTS`, which cannot be restarted (it is only
    /// compacted then). Other tests using the same server see it down for
    /// about a second and their leases extended: run the discovery suite
    /// on [`start_isolated`](EtcdHarness::start_isolated) harnesses.
    async fn interrupt_watches(&self) -> bool {
        let restarted = self.server.is_spawned();
        if restarted {
            let server = self.server.clone();
            match tokio::task::spawn_blocking(move || server.restart()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("cannot restart the etcd under test: {e}"),
                Err(e) => panic!("the restart of the etcd under test panicked: {e}"),
            }
        }
        let compacted: Result<()> = async {
            let backend = self.connect().await?;
            let mut kv = backend.client().kv_client();
            let key = format!("{}testkit/interrupted", backend.inner.prefix);
            let put = kv
                .put(key, "", None)
                .await
                .map_err(|e| crate::error::map("write before compacting", e))?;
            let revision = put.header().map_or(0, |h| h.revision());
            kv.compact(revision, None)
                .await
                .map_err(|e| crate::error::map("compact", e))?;
            Ok(())
        }
        .await;
        if let Err(e) = compacted {
            panic!("cannot compact the etcd under test: {e}");
        }
        restarted
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::config::ConfigHarness for EtcdHarness {
    async fn new_config_backend(&self) -> Arc<dyn coord_core::config::ConfigBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("cannot connect to the etcd under test: {e}"),
        }
    }

    /// Restarts the spawned server (every watch stream breaks) and returns
    /// once it answers. `false` for a server from
    /// `COORD_TEST_ETCD_ENDPOINTS`, which cannot be restarted. Other tests
    /// using the same server see it down for about a second: run the
    /// config suite on [`start_isolated`](EtcdHarness::start_isolated)
    /// harnesses.
    async fn interrupt_config_watches(&self) -> bool {
        if !self.server.is_spawned() {
            return false;
        }
        let server = self.server.clone();
        match tokio::task::spawn_blocking(move || server.restart()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => panic!("cannot restart the etcd under test: {e}"),
            Err(e) => panic!("the restart of the etcd under test panicked: {e}"),
        }
    }
}

#[coord_core::async_trait]
impl LockHarness for EtcdHarness {
    async fn new_backend(&self) -> Arc<dyn LockBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("cannot connect to the etcd under test: {e}"),
        }
    }
}
