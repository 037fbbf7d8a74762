//! [`TestContainer`]: one container of a locally built image, started with
//! testcontainers, whose ports are published on 127.0.0.1, and which a test
//! can kill, start again, pause and cut off from a network.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::engine::{docker, require_image};
use super::network::TestNetwork;
use super::runtime::block_on;
use super::{labels, unique_name, valid_name};
use crate::error::{Error, Result};

/// How long removing a container may take.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long pausing, unpausing or starting a container again may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Which output stream a readiness message appears on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output (Redis logs there).
    Stdout,
    /// Standard error (etcd logs there).
    Stderr,
}

/// What to start: an image that exists locally (never pulled), its command,
/// the ports to publish on 127.0.0.1, its network, files to copy in before
/// it starts, and the log line that says it is ready.
///
/// ```no_run
/// use coord_core::testkit::containers::{ContainerSpec, LogStream, TestContainer};
/// use coord_core::testkit::ServerProcess;
///
/// # fn run() -> coord_core::Result<()> {
/// let port = ServerProcess::free_port()?;
/// let redis = TestContainer::start(
///     ContainerSpec::new("coord/redis:local", "redis")
///         .publish(port, 6379)
///         .ready_on(LogStream::Stdout, "Ready to accept connections"),
/// )?;
/// redis.pause()?; // connections open, nothing answers
/// redis.unpause()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    image: String,
    purpose: String,
    name: Option<String>,
    cmd: Vec<String>,
    ports: Vec<(u16, u16)>,
    network: Option<(String, bool)>,
    files: Vec<(String, Vec<u8>)>,
    ready: Option<(LogStream, String)>,
    startup_timeout: Duration,
}

impl ContainerSpec {
    /// A container of `image` (`name:tag`, built locally). `purpose` (letters,
    /// digits and `-`) goes into the container's name, which is also its
    /// host name on its network.
    pub fn new(image: &str, purpose: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.to_owned(),
            purpose: purpose.to_owned(),
            name: None,
            cmd: Vec::new(),
            ports: Vec::new(),
            network: None,
            files: Vec::new(),
            ready: None,
            startup_timeout: Duration::from_secs(60),
        }
    }

    /// Names the container `name` (from [`unique_name`](super::unique_name),
    /// so that it is unique), instead of a name made from the purpose: for
    /// containers that must know each other's names before they start.
    pub fn named(mut self, name: &str) -> ContainerSpec {
        self.name = Some(name.to_owned());
        self
    }

    /// The command to run instead of the image's.
    pub fn cmd(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> ContainerSpec {
        self.cmd = args.into_iter().map(Into::into).collect();
        self
    }

    /// Publishes `container_port` on 127.0.0.1:`host_port`. The host port is
    /// fixed, so a container started again keeps its address.
    pub fn publish(mut self, host_port: u16, container_port: u16) -> ContainerSpec {
        self.ports.push((host_port, container_port));
        self
    }

    /// Starts the container on `network`, where the others reach it by its
    /// [name](TestContainer::name). On an [internal](TestNetwork::is_internal)
    /// network the container also joins the engine's default bridge, which
    /// carries its published ports: cutting it off from `network`
    /// ([`TestContainer::disconnect`]) then leaves the test's own
    /// connections to it working.
    pub fn network(mut self, network: &TestNetwork) -> ContainerSpec {
        self.network = Some((network.name().to_owned(), network.is_internal()));
        self
    }

    /// Copies `contents` to `path` in the container before it starts.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> ContainerSpec {
        self.files.push((path.to_owned(), contents.into()));
        self
    }

    /// [`TestContainer::start`] returns once `message` appears on `stream`.
    /// Without it, it returns as soon as the container runs.
    pub fn ready_on(mut self, stream: LogStream, message: &str) -> ContainerSpec {
        self.ready = Some((stream, message.to_owned()));
        self
    }

    /// How long the container may take to become ready (default 60 s).
    pub fn startup_timeout(mut self, limit: Duration) -> ContainerSpec {
        self.startup_timeout = limit;
        self
    }
}

/// A running container, removed (with its anonymous volumes) on drop.
///
/// Every method blocks the calling thread until the engine has done it, and
/// works inside and outside a tokio runtime.
#[derive(Debug)]
pub struct TestContainer {
    container: Option<Arc<ContainerAsync<GenericImage>>>,
    id: String,
    name: String,
    ports: Vec<(u16, u16)>,
}

impl TestContainer {
    /// Starts a container as `spec` says. Fails with "run `bash
    /// .ci/build-images.sh`" when its image is missing, and with
    /// [`Error::Unavailable`] (docker's message included) when the engine
    /// refuses it, for example because a host port was taken meanwhile.
    pub fn start(spec: ContainerSpec) -> Result<TestContainer> {
        for part in std::iter::once(&spec.purpose).chain(&spec.name) {
            if !valid_name(part) {
                return Err(Error::invalid(format!(
                    "a container's purpose or name must be letters, digits and `-`, not {part:?}"
                )));
            }
        }
        require_image(&spec.image)?;
        let (image_name, tag) = spec
            .image
            .rsplit_once(':')
            .unwrap_or((spec.image.as_str(), "latest"));
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| unique_name(&spec.purpose));
        let mut image = GenericImage::new(image_name, tag);
        if let Some((stream, message)) = &spec.ready {
            image = image.with_wait_for(match stream {
                LogStream::Stdout => WaitFor::message_on_stdout(message),
                LogStream::Stderr => WaitFor::message_on_stderr(message),
            });
        }
        let mut request = image
            .with_container_name(&name)
            .with_startup_timeout(spec.startup_timeout);
        for (key, value) in labels() {
            request = request.with_label(key, value);
        }
        if !spec.cmd.is_empty() {
            request = request.with_cmd(spec.cmd.clone());
        }
        if let Some((network, _)) = &spec.network {
            request = request.with_network(network);
        }
        for (path, contents) in &spec.files {
            request = request.with_copy_to(path.clone(), contents.clone());
        }
        for &(host, container) in &spec.ports {
            request = request.with_mapped_port(host, ContainerPort::Tcp(container));
        }
        // testcontainers binds published ports on every interface: only
        // loopback here.
        let bindings = spec.ports.clone();
        request = request.with_host_config_modifier(move |config| {
            use testcontainers::bollard::models::PortBinding;
            config.port_bindings = Some(
                bindings
                    .iter()
                    .map(|&(host, container)| {
                        (
                            format!("{container}/tcp"),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".to_owned()),
                                host_port: Some(host.to_string()),
                            }]),
                        )
                    })
                    .collect(),
            );
        });
        let what = format!("starting container {name} ({})", spec.image);
        let started = block_on(
            &what,
            spec.startup_timeout + Duration::from_secs(30),
            async move {
                request
                    .start()
                    .await
                    .map_err(|e| Error::unavailable(error_chain(&e), None))
            },
        );
        let container = match started {
            Ok(c) => c,
            Err(e) => {
                // A container that was created but did not start (a taken
                // port, a timeout) is not removed by testcontainers.
                let _ = docker(&["rm", "-f", "-v", &name]);
                return Err(e.context(what));
            }
        };
        let started = TestContainer {
            id: container.id().to_owned(),
            container: Some(Arc::new(container)),
            name,
            ports: spec.ports,
        };
        if matches!(spec.network, Some((_, true))) && !started.ports.is_empty() {
            started.connect_named("bridge")?;
        }
        Ok(started)
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's name: its host name for the other containers on its
    /// network.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host port (on 127.0.0.1) that publishes `container_port`.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|&&(_, c)| c == container_port)
            .map(|&(h, _)| h)
    }

    /// Kills the container's process (SIGKILL, `docker kill`). The container
    /// stays, with its file system, for [`start_again`](Self::start_again).
    pub fn kill(&self) -> Result<()> {
        let state = docker(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.Paused}}",
            &self.id,
        ])?;
        if !state.starts_with("true") {
            return Ok(());
        }
        if state.ends_with("true") {
            // Under a cgroup v1 freezer a frozen process only dies once thawed.
            self.unpause()?;
        }
        match docker(&["kill", &self.id]) {
            // It died on its own meanwhile.
            Err(_) if !self.is_running()? => Ok(()),
            other => other.map(drop),
        }
    }

    /// Starts a killed container again, on the same host ports and with the
    /// same file system (anything it kept in memory only is gone). Returns
    /// once it runs; whether its server answers is for the caller to check.
    pub fn start_again(&self) -> Result<()> {
        let what = format!("starting container {} again", self.name);
        self.on_container(what, |c| async move { c.start().await })
    }

    /// Kills the container and starts it again ([`kill`](Self::kill), then
    /// [`start_again`](Self::start_again)).
    pub fn restart(&self) -> Result<()> {
        self.kill()?;
        self.start_again()
    }

    /// Freezes every process of the container (`docker pause`): connections
    /// stay open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        let what = format!("pausing container {}", self.name);
        self.on_container(what, |c| async move { c.pause().await })
    }

    /// Lets a paused container run again (`docker unpause`).
    pub fn unpause(&self) -> Result<()> {
        let what = format!("unpausing container {}", self.name);
        self.on_container(what, |c| async move { c.unpause().await })
    }

    /// Whether the container's process runs (a paused one does).
    pub fn is_running(&self) -> Result<bool> {
        Ok(docker(&["inspect", "--format", "{{.State.Running}}", &self.id])? == "true")
    }

    /// Cuts the container off from `network` (`docker network disconnect`):
    /// the containers there can no longer reach it, nor it them. Its
    /// published ports stay reachable if it also is on the default bridge
    /// (see [`ContainerSpec::network`]).
    pub fn disconnect(&self, network: &TestNetwork) -> Result<()> {
        docker(&["network", "disconnect", network.name(), &self.id]).map(drop)
    }

    /// Joins `network` again after [`disconnect`](Self::disconnect), under
    /// the same host name.
    pub fn connect(&self, network: &TestNetwork) -> Result<()> {
        self.connect_named(network.name())
    }

    fn connect_named(&self, network: &str) -> Result<()> {
        let mut args = vec!["network", "connect"];
        if network != "bridge" {
            // The default bridge has no DNS and takes no aliases.
            args.extend(["--alias", &self.name]);
        }
        args.extend([network, &self.id]);
        docker(&args).map(drop)
    }

    /// The container's address on `network` (empty while it is stopped or
    /// disconnected).
    pub fn ip_on(&self, network: &TestNetwork) -> Result<String> {
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            network.name()
        );
        docker(&["inspect", "--format", &format, &self.id])
    }

    /// The last `lines` lines of the container's output, for diagnostics.
    pub fn logs(&self, lines: usize) -> String {
        // docker logs writes the container's stderr to its own stderr.
        let tail = lines.to_string();
        match std::process::Command::new("docker")
            .args(["logs", "--tail", &tail, &self.id])
            .output()
        {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("(cannot read the logs of {}: {e})", self.name),
        }
    }

    /// Runs a testcontainers operation on the container, on the containers'
    /// runtime.
    fn on_container<F, Fut>(&self, what: String, op: F) -> Result<()>
    where
        F: FnOnce(Arc<ContainerAsync<GenericImage>>) -> Fut,
        Fut: Future<Output = testcontainers::core::error::Result<()>> + Send + 'static,
    {
        let container = self
            .container
            .clone()
            .ok_or_else(|| Error::unavailable(format!("container {} is gone", self.name), None))?;
        let fut = op(container);
        block_on(&what, OPERATION_TIMEOUT, async move {
            fut.await
                .map_err(|e| Error::unavailable(error_chain(&e), None))
        })
        .map_err(|e| e.context(what))
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let Some(container) = self.container.take() else {
            return;
        };
        let what = format!("removing container {}", self.name);
        // On the containers' runtime, where testcontainers' own clean-up
        // (when another handle still exists) also needs to run.
        let removed = block_on(&what, REMOVE_TIMEOUT, async move {
            match Arc::try_unwrap(container) {
                Ok(container) => container
                    .rm()
                    .await
                    .map_err(|e| Error::unavailable(error_chain(&e), None)),
                Err(shared) => {
                    drop(shared);
                    Ok(())
                }
            }
        });
        if let Err(e) = removed {
            // Last resort; the labels name what is left over otherwise.
            if docker(&["rm", "-f", "-v", &self.id]).is_err() {
                eprintln!("cannot remove test container {}: {e}", self.name);
            }
        }
    }
}

/// `e` and its sources, `: `-separated (each only once).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
