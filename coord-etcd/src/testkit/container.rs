//! etcd in a container of the locally built image: the command line of a
//! member.

use coord_core::Result;
use coord_core::testkit::containers::{
    ContainerSpec, LogStream, TestContainer, TestNetwork, require_image,
};

/// The image of the etcd containers (etcd 3.4 from Debian), built by
/// `bash .ci/build-images.sh`.
pub const ETCD_IMAGE: &str = "coord/etcd:local";

/// The client port inside an etcd container.
pub(crate) const CLIENT_PORT: u16 = 2379;

/// The peer port inside an etcd container.
pub(crate) const PEER_PORT: u16 = 2380;

/// One etcd member to start in a container.
pub(crate) struct MemberSpec<'a> {
    /// The member's etcd name.
    pub(crate) name: &'a str,
    /// The host its peers reach it at (its container name), or `127.0.0.1`
    /// for a single member.
    pub(crate) peer_host: &'a str,
    /// `name=http://host:2380,…` for every member.
    pub(crate) initial_cluster: &'a str,
    /// The loopback port publishing the client port.
    pub(crate) host_port: u16,
    /// Extra arguments (timeouts, a cluster token).
    pub(crate) extra: &'a [&'a str],
}

/// Starts `member` in a container (named `container_name` when given), on
/// `network` when given. With `wait_ready`, returns once etcd logs that it
/// serves clients, which a member of a cluster only does once a quorum
/// runs: start a cluster's members without it.
pub(crate) fn start_member(
    member: &MemberSpec<'_>,
    container_name: Option<&str>,
    network: Option<&TestNetwork>,
    wait_ready: bool,
) -> Result<TestContainer> {
    require_image(ETCD_IMAGE)?;
    let client = format!("http://127.0.0.1:{}", member.host_port);
    let listen_peer = if network.is_some() {
        format!("http://0.0.0.0:{PEER_PORT}")
    } else {
        format!("http://127.0.0.1:{PEER_PORT}")
    };
    let peer = format!("http://{}:{PEER_PORT}", member.peer_host);
    let mut cmd = vec![
        "etcd",
        "--name",
        member.name,
        "--data-dir",
        "/data/etcd",
        "--listen-client-urls",
        "http://0.0.0.0:2379",
        // What `member list` tells clients: the address the tests use.
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &listen_peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        member.initial_cluster,
        "--initial-cluster-state",
        "new",
    ];
    cmd.extend_from_slice(member.extra);
    let mut spec = ContainerSpec::new(ETCD_IMAGE, "etcd")
        .cmd(cmd)
        .publish(member.host_port, CLIENT_PORT);
    if let Some(name) = container_name {
        spec = spec.named(name);
    }
    if let Some(network) = network {
        spec = spec.network(network);
    }
    if wait_ready {
        spec = spec.ready_on(LogStream::Stderr, "ready to serve client requests");
    }
    TestContainer::start(spec)
}
