//! The container engine: the `docker` CLI with a deadline, whether an
//! engine answers, and whether a locally built image exists.

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What to run when an image is missing: the images are built offline from
/// Debian packages, never pulled.
pub const BUILD_IMAGES_HINT: &str = "run `bash .ci/build-images.sh` (it builds coord/redis:local \
     and coord/etcd:local from Debian packages; no registry is needed)";

/// How long one `docker` command may take before it is killed.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `docker info` may take to say whether an engine answers.
const INFO_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `docker args…` and returns its standard output, trimmed. A command
/// that fails, or takes longer than a minute (it is killed then), is an
/// [`Error::Unavailable`] carrying docker's own message.
pub fn docker(args: &[&str]) -> Result<String> {
    docker_within(args, DOCKER_TIMEOUT)
}

fn docker_within(args: &[&str], limit: Duration) -> Result<String> {
    let what = format!("docker {}", args.join(" "));
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::unavailable(
                format!(
                    "cannot run `{what}`: {e}. Install a container engine \
                     (`apt-get install --no-install-recommends docker.io`); the \
                     single-server fixtures need none with COORD_TEST_SERVERS=processes, \
                     the default"
                ),
                Some(e.into()),
            )
        })?;
    // Read both pipes on threads of their own so a chatty command cannot
    // block on a full pipe while we wait for it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                // Our own child: killed by its handle, then reaped.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(out.trim().to_owned()),
        Some(s) => Err(Error::unavailable(
            format!("`{what}` failed ({s}): {}", err.trim()),
            None,
        )),
        None => Err(Error::Timeout(format!(
            "`{what}` did not finish within {limit:?}; is the container engine overloaded or hung?"
        ))),
    }
}

/// The version of the container engine that answers `docker info`, or why
/// none does. Asked once per process.
pub fn engine() -> Result<String> {
    static ENGINE: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            docker_within(&["info", "--format", "{{.ServerVersion}}"], INFO_TIMEOUT)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| {
            Error::unavailable(
                format!(
                    "no container engine answers `docker info` ({e}); start one \
                     (`dockerd --storage-driver=overlay2 &`, as `.ci/run` does); the \
                     single-server fixtures need none with COORD_TEST_SERVERS=processes, \
                     the default"
                ),
                None,
            )
        })
}

/// Whether a container engine answers `docker info`.
pub fn engine_available() -> bool {
    engine().is_ok()
}

/// Whether `image` (`name:tag`) exists in the engine's local store.
pub fn image_exists(image: &str) -> bool {
    require_image(image).is_ok()
}

/// Checks that an engine answers and that `image` exists locally: the
/// fixtures never pull (no registry is reachable where the tests run), so a
/// missing image fails here, saying how to build it, rather than later with
/// a registry error.
pub fn require_image(image: &str) -> Result<()> {
    static FOUND: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let found = FOUND.get_or_init(Default::default);
    if found
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(image)
    {
        return Ok(());
    }
    engine()?;
    match docker(&["image", "inspect", "--format", "{{.Id}}", image]) {
        Ok(_) => {
            found
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(image.to_owned());
            Ok(())
        }
        Err(Error::Timeout(m)) => Err(Error::Timeout(m)),
        Err(_) => Err(Error::unavailable(
            format!("the container image {image} is missing: {BUILD_IMAGES_HINT}"),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_image_says_how_to_build_it() {
        let err = require_image("coord/no-such-image:local").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        if engine_available() {
            assert!(text.contains("bash .ci/build-images.sh"), "{text}");
        } else {
            assert!(text.contains("COORD_TEST_SERVERS=processes"), "{text}");
        }
    }

    #[test]
    fn a_failing_command_carries_dockers_message() {
        if !engine_available() {
            return; // Without an engine the error is the engine's, checked above.
        }
        let err = docker(&["inspect", "coord-no-such-container"]).unwrap_err();
        assert!(err.to_string().contains("coord-no-such-container"), "{err}");
    }
}
