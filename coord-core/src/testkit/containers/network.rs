//! [`TestNetwork`]: a user-defined network for one test's containers.

use super::engine::{docker, engine};
use super::{label_args, unique_name, valid_name};
use crate::error::{Error, Result};

/// A user-defined bridge network, created for one test and removed on drop
/// (after the containers on it: drop them first). Containers on it reach
/// each other by name; [`TestContainer::disconnect`](super::TestContainer::disconnect)
/// cuts one off, [`connect`](super::TestContainer::connect) heals the cut.
#[derive(Debug)]
pub struct TestNetwork {
    name: String,
    internal: bool,
}

impl TestNetwork {
    /// A new network named after `purpose` (letters, digits and `-`).
    /// An `internal` one has no route out and publishes no ports: its
    /// containers publish theirs through the default bridge they also join
    /// (see [`ContainerSpec::network`](super::ContainerSpec::network)).
    pub fn create(purpose: &str, internal: bool) -> Result<TestNetwork> {
        if !valid_name(purpose) {
            return Err(Error::invalid(format!(
                "a network's purpose must be letters, digits and `-`, not {purpose:?}"
            )));
        }
        engine()?;
        let name = unique_name(purpose);
        let labels = label_args();
        let mut args = vec!["network", "create", "--driver", "bridge"];
        if internal {
            args.push("--internal");
        }
        args.extend(labels.iter().map(String::as_str));
        args.push(&name);
        docker(&args).map_err(|e| {
            e.context(format!(
                "cannot create the test network {name} (`docker network prune` frees the \
                 address pools of networks left behind)"
            ))
        })?;
        Ok(TestNetwork { name, internal })
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the network is internal (no route out, no published ports).
    pub fn is_internal(&self) -> bool {
        self.internal
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if let Err(e) = docker(&["network", "rm", &self.name]) {
            eprintln!("cannot remove test network {}: {e}", self.name);
        }
    }
}
