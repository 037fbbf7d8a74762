//! Container fixtures: servers in containers of locally built images, for
//! what plain processes cannot do — several etcd members or Redis nodes on
//! a network of their own, and real network partitions between them.
//!
//! The images (`coord/redis:local`, `coord/etcd:local`) are built offline
//! from Debian packages by `bash .ci/build-images.sh`; nothing is pulled. A
//! missing image or engine fails with a message saying what to run, never
//! with a registry error, and never skips a test.
//!
//! Ports are published on 127.0.0.1 only, on host ports chosen by the
//! fixture, so a container started again keeps its address; the tests
//! connect through loopback.
//!
//! Which single-server fixtures use containers: [`ServerMode::select`] —
//! `COORD_TEST_SERVERS=containers` asks for them; local processes otherwise
//! (`COORD_TEST_SERVERS=processes`, the default). Processes are the default
//! because containers start in about a second where a process takes
//! milliseconds: the whole suite, which starts hundreds of servers, runs
//! 4–6 minutes longer in containers. The cluster fixtures
//! (`EtcdContainerCluster`, `RedisReplicaSet`) always use containers.
//!
//! Every container and network carries the label `coord.testkit` (and
//! `coord.testkit.run=$COORD_TEST_RUN_ID` when that is set), so anything a
//! killed test process left behind can be found:
//! `docker ps -a --filter label=coord.testkit`.

mod container;
mod engine;
mod network;
mod runtime;

use std::sync::atomic::{AtomicU64, Ordering};

pub use container::{ContainerSpec, LogStream, TestContainer};
pub use engine::{
    BUILD_IMAGES_HINT, docker, engine, engine_available, image_exists, require_image,
};
pub use network::TestNetwork;

use crate::error::{Error, Result};

/// The environment variable choosing how the single-server fixtures run
/// their servers: `processes` (local binaries) or `containers`.
pub const SERVERS_ENV: &str = "COORD_TEST_SERVERS";

/// The environment variable whose value labels every container and network
/// the fixtures create (`coord.testkit.run=…`), so that a CI run can remove
/// exactly what it left behind.
pub const RUN_ID_ENV: &str = "COORD_TEST_RUN_ID";

/// How a fixture runs the server it manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// A local binary as a child process (`redis-server`, `etcd`).
    Processes,
    /// A container of a locally built image.
    Containers,
}

impl ServerMode {
    /// The mode for a server of `image`, from `COORD_TEST_SERVERS`:
    /// `containers` (which then requires an engine and the image, and fails
    /// saying how to get them), or `processes`, also when unset or empty.
    /// Any other value is an [`Error::InvalidArgument`].
    pub fn select(image: &str) -> Result<ServerMode> {
        Self::parse(&std::env::var(SERVERS_ENV).unwrap_or_default(), image)
    }

    fn parse(value: &str, image: &str) -> Result<ServerMode> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "processes" | "process" => Ok(ServerMode::Processes),
            "containers" | "container" => {
                require_image(image)?;
                Ok(ServerMode::Containers)
            }
            other => Err(Error::invalid(format!(
                "{SERVERS_ENV} must be `processes` or `containers`, not `{other}`"
            ))),
        }
    }
}

/// The labels of everything the fixtures create.
fn labels() -> Vec<(String, String)> {
    let mut labels = vec![
        ("coord.testkit".to_owned(), "1".to_owned()),
        (
            "coord.testkit.pid".to_owned(),
            std::process::id().to_string(),
        ),
    ];
    if let Ok(run) = std::env::var(RUN_ID_ENV)
        && !run.trim().is_empty()
    {
        labels.push(("coord.testkit.run".to_owned(), run.trim().to_owned()));
    }
    labels
}

/// [`labels`] as `docker … --label k=v` arguments.
fn label_args() -> Vec<String> {
    labels()
        .into_iter()
        .flat_map(|(k, v)| ["--label".to_owned(), format!("{k}={v}")])
        .collect()
}

/// Whether `name` is usable in a container's or network's name: letters,
/// digits and `-`, not empty.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `coord-{purpose}-{pid}-{n}-{random}`: a container or network name unique
/// among concurrent test processes and what earlier ones left behind.
pub fn unique_name(purpose: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "coord-{purpose}-{}-{}-{:04x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u16(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_parsed_and_bad_values_are_refused() {
        assert_eq!(
            ServerMode::parse("processes", "coord/redis:local").unwrap(),
            ServerMode::Processes
        );
        assert_eq!(
            ServerMode::parse(" ", "coord/redis:local").unwrap(),
            ServerMode::Processes,
            "processes by default"
        );
        let err = ServerMode::parse("vms", "coord/redis:local").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains(SERVERS_ENV), "{err}");
        // Containers of a missing image: the build script, not a registry error.
        let err = ServerMode::parse("containers", "coord/no-such-image:local").unwrap_err();
        assert!(
            err.to_string().contains("build-images.sh")
                || err.to_string().contains("container engine"),
            "{err}"
        );
    }

    #[test]
    fn names_are_unique() {
        assert_ne!(unique_name("x"), unique_name("x"));
        assert!(unique_name("etcd").starts_with("coord-etcd-"));
    }
}
