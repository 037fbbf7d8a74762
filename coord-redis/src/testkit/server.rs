//! [`RedisServer`]: one Redis server for a test — external, a local
//! process, or a container.

use coord_core::testkit::ServerProcess;
use coord_core::testkit::containers::{ServerMode, TestContainer, TestNetwork};
use coord_core::{Error, Result};

use super::container::{REDIS_IMAGE, start_redis, wait_answering};
use super::{INSTALL_HINT, TEST_URL_ENV};

/// A Redis server for tests: an external one (`COORD_TEST_REDIS_URL`), a
/// local `redis-server` child process, or a container of
/// `coord/redis:local` (see [`RedisServer::spawn`] for which); a managed
/// one is killed (removed) on drop.
///
/// [`stop`](Self::stop), [`restart`](Self::restart), [`pause`](Self::pause)
/// and [`resume`](Self::resume) work the same on a process and on a
/// container.
#[derive(Debug)]
pub struct RedisServer {
    pub(super) url: String,
    pub(super) port: Option<u16>,
    pub(super) process: Option<ServerProcess>,
    pub(super) container: Option<TestContainer>,
    // Kept alive (and removed on drop) with the process using it.
    pub(super) _dir: Option<tempfile::TempDir>,
    /// The other nodes of a cluster this fixture spawned.
    pub(super) peers: Vec<RedisServer>,
    /// The network of a cluster of containers: removed after them (the
    /// fields drop in order).
    pub(super) network: Option<TestNetwork>,
}

impl RedisServer {
    /// The server of `COORD_TEST_REDIS_URL`, or a new one ([`spawn`](Self::spawn)).
    /// Fails (saying what to install or build) when none can be started.
    pub fn start() -> Result<RedisServer> {
        Self::external(TEST_URL_ENV).map_or_else(Self::spawn, Ok)
    }

    /// The server(s) named by the environment variable `var`, when set.
    pub(super) fn external(var: &str) -> Option<RedisServer> {
        let url = std::env::var(var).ok()?;
        let url = url.trim();
        (!url.is_empty()).then(|| RedisServer::unmanaged(url.to_owned()))
    }

    pub(super) fn unmanaged(url: String) -> RedisServer {
        RedisServer {
            url,
            port: None,
            process: None,
            container: None,
            _dir: None,
            peers: Vec::new(),
            network: None,
        }
    }

    /// A new server without persistence, never the external one: a
    /// container when [`ServerMode::select`] says so
    /// (`COORD_TEST_SERVERS=containers`), a local `redis-server` on a free
    /// loopback port in a temporary directory otherwise.
    pub fn spawn() -> Result<RedisServer> {
        Self::spawn_with(&[])
    }

    /// Like [`RedisServer::spawn`], with more `redis-server` arguments
    /// (`["--requirepass", "secret"]`); [`url`](Self::url) carries no
    /// password.
    pub fn spawn_with(extra: &[&str]) -> Result<RedisServer> {
        match ServerMode::select(REDIS_IMAGE)? {
            ServerMode::Processes => Self::spawn_process(extra),
            ServerMode::Containers => Self::spawn_container(extra),
        }
    }

    /// A new local `redis-server` child process, whatever the mode.
    pub fn spawn_process(extra: &[&str]) -> Result<RedisServer> {
        ServerProcess::retry_port_races(|| Self::spawn_process_once(extra))
    }

    fn spawn_process_once(extra: &[&str]) -> Result<RedisServer> {
        let dir = tempfile::tempdir().map_err(|e| {
            Error::unavailable("cannot create a temporary directory", Some(e.into()))
        })?;
        let port = ServerProcess::free_port()?;
        let mut args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.path().to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = ServerProcess::spawn("redis-server", args, port, INSTALL_HINT)?;
        Ok(RedisServer {
            port: Some(port),
            process: Some(process),
            _dir: Some(dir),
            ..RedisServer::unmanaged(format!("redis://127.0.0.1:{port}"))
        })
    }

    /// A new container of `coord/redis:local`, whatever the mode; its port
    /// is published on a free 127.0.0.1 port.
    pub fn spawn_container(extra: &[&str]) -> Result<RedisServer> {
        ServerProcess::retry_port_races(|| {
            let port = ServerProcess::free_port()?;
            let container = start_redis("redis", None, 6379, port, None, extra)?;
            Ok(RedisServer {
                port: Some(port),
                container: Some(container),
                ..RedisServer::unmanaged(format!("redis://127.0.0.1:{port}"))
            })
        })
    }

    /// The server's URL (`redis://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The loopback port of a server this fixture manages.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// How this fixture runs the server; `None` for an external one.
    pub fn mode(&self) -> Option<ServerMode> {
        if self.container.is_some() {
            Some(ServerMode::Containers)
        } else if self.process.is_some() {
            Some(ServerMode::Processes)
        } else {
            None
        }
    }

    /// The child process, when this fixture spawned one (not in container
    /// mode: use [`pause`](Self::pause), [`stop`](Self::stop) and the
    /// others, which work in both modes).
    pub fn process(&self) -> Option<&ServerProcess> {
        self.process.as_ref()
    }

    /// The container, when this fixture runs the server in one.
    pub fn container(&self) -> Option<&TestContainer> {
        self.container.as_ref()
    }

    /// Kills the server (SIGKILL). Fails for an external server.
    pub fn stop(&mut self) -> Result<()> {
        match (&mut self.process, &self.container) {
            (Some(p), _) => p.stop(),
            (None, Some(c)) => c.kill(),
            (None, None) => Err(Self::not_managed()),
        }
    }

    /// Kills the server and starts it again on the same port; having no
    /// persistence, it comes back empty. Returns once it answers. Fails for
    /// an external server.
    pub fn restart(&mut self) -> Result<()> {
        match (&mut self.process, &self.container) {
            (Some(p), _) => {
                p.stop()?;
                p.start()
            }
            (None, Some(c)) => {
                c.restart()?;
                wait_answering(self.port.unwrap_or_default())
            }
            (None, None) => Err(Self::not_managed()),
        }
    }

    /// Freezes the server (SIGSTOP, or `docker pause`): connections stay
    /// open, nothing answers. Fails for an external server.
    pub fn pause(&self) -> Result<()> {
        match (&self.process, &self.container) {
            (Some(p), _) => p.pause(),
            (None, Some(c)) => c.pause(),
            (None, None) => Err(Self::not_managed()),
        }
    }

    /// Lets a paused server run again (SIGCONT, or `docker unpause`).
    pub fn resume(&self) -> Result<()> {
        match (&self.process, &self.container) {
            (Some(p), _) => p.resume(),
            (None, Some(c)) => c.unpause(),
            (None, None) => Err(Self::not_managed()),
        }
    }

    fn not_managed() -> Error {
        Error::Unsupported(format!(
            "the server of {TEST_URL_ENV} is not managed by the test; unset it to let \
             the fixture start its own redis-server"
        ))
    }
}
