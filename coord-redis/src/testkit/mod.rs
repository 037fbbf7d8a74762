//! Test fixtures: a real Redis server for tests, the conformance harness,
//! and a primary/replica set behind three sentinels ([`RedisSentinel`]).
//!
//! [`RedisServer::start`] uses `COORD_TEST_REDIS_URL` when it is set;
//! otherwise it starts a server without persistence on a free loopback port
//! and kills it on drop: a local `redis-server` in a temporary directory, or
//! a container of `coord/redis:local`, as `COORD_TEST_SERVERS=processes|containers`
//! says (processes when unset; see
//! [`ServerMode::select`](coord_core::testkit::containers::ServerMode::select)).
//! [`RedisReplicaSet`] runs a primary, replicas and Sentinels in containers
//! on a network of their own; [`RedisClusterSet`] a Redis Cluster whose
//! masters have replicas. Containers need an engine and the image
//! (`bash .ci/build-images.sh`); without them these fixtures fail saying
//! what to run.
//!
//! ```no_run
//! use coord_redis::testkit::RedisServer;
//!
//! # async fn run() -> coord_core::Result<()> {
//! let server = RedisServer::start()?;
//! let backend =
//!     coord_redis::RedisBackend::connect(server.url(), &coord_core::Settings::default()).await?;
//! # drop(backend); Ok(()) }
//! ```

use std::sync::Arc;

use coord_core::testkit::LockHarness;
use coord_core::{LockBackend, Result, Settings};

use crate::RedisBackend;

mod cluster;
mod cluster_set;
mod command_stats;
mod container;
mod replica_set;
mod server;

pub use cluster::CLUSTER_NODES;
pub use cluster_set::{CLUSTER_NODE_TIMEOUT, RedisClusterSet};
pub use command_stats::command_calls;
pub use container::REDIS_IMAGE;
pub use replica_set::{MASTER_NAME, RedisReplicaSet, ReplicaSetMember};
pub use server::RedisServer;

pub mod sentinel;
pub use sentinel::RedisSentinel;

/// The environment variable naming an existing server to test against.
pub const TEST_URL_ENV: &str = "COORD_TEST_REDIS_URL";

/// The environment variable naming an existing cluster (`redis+cluster://…`)
/// to test against.
pub const TEST_CLUSTER_URL_ENV: &str = "COORD_TEST_REDIS_CLUSTER_URL";

const INSTALL_HINT: &str = "Install it (`apt-get install redis-server`) or set \
                            COORD_TEST_REDIS_URL=redis://host:port to use a running server.";

/// The conformance harness: every [`new_backend`](LockHarness::new_backend)
/// is a fresh [`RedisBackend::connect`] to one server, so each simulated
/// client has its own connections.
#[derive(Debug)]
pub struct RedisHarness {
    /// The server under test.
    pub server: RedisServer,
    settings: Settings,
}

impl RedisHarness {
    /// A harness on [`RedisServer::start`]. Panics (failing the test, never
    /// skipping it) when no server can be started.
    pub async fn start() -> RedisHarness {
        match Self::try_start().await {
            Ok(h) => h,
            Err(e) => panic!("cannot start a Redis server for the tests: {e}"),
        }
    }

    /// A harness on [`RedisServer::start_cluster`] (a local cluster of
    /// [`CLUSTER_NODES`] masters unless `COORD_TEST_REDIS_CLUSTER_URL` is
    /// set). Panics when none starts.
    pub async fn start_cluster() -> RedisHarness {
        match RedisServer::start_cluster().map(Self::on) {
            Ok(h) => h,
            Err(e) => panic!("cannot start a Redis Cluster for the tests: {e}"),
        }
    }

    /// A harness on [`RedisServer::start`], or why none could be started.
    pub async fn try_start() -> Result<RedisHarness> {
        RedisServer::start().map(Self::on)
    }

    /// A harness on `server`, with a namespace of its own.
    pub fn on(server: RedisServer) -> RedisHarness {
        let mut settings = Settings::default();
        settings.namespace = format!("coordtest{:08x}", fastrand_u32());
        RedisHarness { server, settings }
    }

    /// The settings each backend connects with (a namespace unique to this harness).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A new backend with its own connections.
    pub async fn connect(&self) -> Result<RedisBackend> {
        RedisBackend::connect(self.server.url(), &self.settings).await
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::fenced::FencedStoreHarness for RedisHarness {
    async fn new_fenced_store(&self) -> Arc<dyn coord_core::FencedStore> {
        match self.connect().await {
            Ok(b) => Arc::new(crate::RedisFencedStore::new(&b)),
            Err(e) => panic!(
                "cannot connect to the test Redis at {}: {e}",
                self.server.url()
            ),
        }
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::cache::CacheHarness for RedisHarness {
    async fn new_cache_backend(&self) -> Arc<dyn coord_core::CacheBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!(
                "cannot connect to the test Redis at {}: {e}",
                self.server.url()
            ),
        }
    }

    async fn new_lock_backend(&self) -> Option<Arc<dyn LockBackend>> {
        Some(LockHarness::new_backend(self).await)
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::discovery::DiscoveryHarness for RedisHarness {
    async fn new_registry_backend(&self) -> Arc<dyn coord_core::discovery::RegistryBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!(
                "cannot connect to the test Redis at {}: {e}",
                self.server.url()
            ),
        }
    }

    /// Drops every pub/sub connection of the server (each node of a
    /// cluster) with `CLIENT KILL TYPE pubsub`, as a network blip would.
    async fn interrupt_watches(&self) -> bool {
        let nodes = std::iter::once(&self.server).chain(&self.server.peers);
        for node in nodes {
            let url = node.url.replacen("redis+cluster://", "redis://", 1);
            let url = url.split(',').next().unwrap_or_default().to_owned();
            let killed: redis::RedisResult<i64> = async {
                let client = redis::Client::open(url.as_str())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut conn)
                    .await
            }
            .await;
            if let Err(e) = killed {
                panic!("CLIENT KILL TYPE pubsub on {url} failed: {e}");
            }
        }
        true
    }
}

#[coord_core::async_trait]
impl coord_core::testkit::config::ConfigHarness for RedisHarness {
    async fn new_config_backend(&self) -> Arc<dyn coord_core::config::ConfigBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!(
                "cannot connect to the test Redis at {}: {e}",
                self.server.url()
            ),
        }
    }

    /// Drops every pub/sub connection of the server (each node of a
    /// cluster), as the discovery harness does.
    async fn interrupt_config_watches(&self) -> bool {
        coord_core::testkit::discovery::DiscoveryHarness::interrupt_watches(self).await
    }
}

#[coord_core::async_trait]
impl LockHarness for RedisHarness {
    async fn new_backend(&self) -> Arc<dyn LockBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!(
                "cannot connect to the test Redis at {}: {e}",
                self.server.url()
            ),
        }
    }
}

/// A few random bits without another dependency.
fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// Redlock over several local servers: [`RedlockHarness::start`] spawns N
/// `redis-server`s (never the `COORD_TEST_REDIS_URL` one: Redlock needs
/// independent servers the test can stop and restart), and every
/// [`new_backend`](LockHarness::new_backend) is a fresh
/// [`RedlockBackend`](crate::RedlockBackend) over new connections to all of them.
///
/// Its servers are new, so nothing they could have granted before a restart
/// exists: [`RedlockHarness::config`] turns the quarantine off and allows a
/// slow (loaded) machine 2 s per request. Tests of the quarantine pass their
/// own [`RedlockConfig`](crate::RedlockConfig) to
/// [`RedlockHarness::connect_with`].
///
/// ```no_run
/// use coord_redis::testkit::RedlockHarness;
///
/// # async fn run() -> coord_core::Result<()> {
/// let mut h = RedlockHarness::try_start(3).await?;
/// let backend = h.connect().await?;
/// h.stop(2)?; // a minority down: locks still work
/// # drop(backend); Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedlockHarness {
    servers: Vec<RedisServer>,
    settings: Settings,
}

impl RedlockHarness {
    /// A harness on `n` new local servers. Panics (failing the test, never
    /// skipping it) when they cannot be started.
    pub async fn start(n: usize) -> RedlockHarness {
        match Self::try_start(n).await {
            Ok(h) => h,
            Err(e) => panic!("cannot start {n} Redis servers for the Redlock tests: {e}"),
        }
    }

    /// A harness on `n` new local servers, or why they could not be started.
    pub async fn try_start(n: usize) -> Result<RedlockHarness> {
        // Started at once: a container's start is mostly waiting for the engine.
        let servers = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n).map(|_| scope.spawn(RedisServer::spawn)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(coord_core::Error::unavailable(
                            "starting a Redlock server panicked",
                            None,
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut settings = Settings::default();
        settings.namespace = format!("coordtest{:08x}", fastrand_u32());
        Ok(RedlockHarness { servers, settings })
    }

    /// The harness's default Redlock options: no quarantine (the servers are
    /// new), a 2 s server timeout, otherwise the defaults.
    pub fn config() -> crate::RedlockConfig {
        crate::RedlockConfig {
            quarantine: Some(std::time::Duration::ZERO),
            server_timeout: std::time::Duration::from_secs(2),
            ..crate::RedlockConfig::default()
        }
    }

    /// The settings each backend connects with (a namespace unique to this harness).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The servers' URLs, in order.
    pub fn urls(&self) -> Vec<&str> {
        self.servers.iter().map(RedisServer::url).collect()
    }

    /// Server `i`.
    pub fn server(&self, i: usize) -> &RedisServer {
        &self.servers[i]
    }

    /// Kills server `i`.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.servers[i].stop()
    }

    /// Kills server `i` (if running) and starts it again, empty, on the same port.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.servers[i].restart()
    }

    /// A new Redlock over all servers with [`RedlockHarness::config`].
    pub async fn connect(&self) -> Result<crate::RedlockBackend> {
        self.connect_with(Self::config()).await
    }

    /// A new Redlock over all servers with `config`.
    pub async fn connect_with(
        &self,
        config: crate::RedlockConfig,
    ) -> Result<crate::RedlockBackend> {
        crate::RedlockBackend::connect(&self.urls(), &self.settings, config).await
    }

    /// A plain backend on server `i` alone (same namespace), to look at or
    /// change what that one server holds.
    pub async fn connect_one(&self, i: usize) -> Result<RedisBackend> {
        RedisBackend::connect(self.servers[i].url(), &self.settings).await
    }
}

#[coord_core::async_trait]
impl LockHarness for RedlockHarness {
    async fn new_backend(&self) -> Arc<dyn LockBackend> {
        match self.connect().await {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("cannot connect Redlock to {:?}: {e}", self.urls()),
        }
    }
}
