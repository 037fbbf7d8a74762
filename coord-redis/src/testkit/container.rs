//! Redis in a container of the locally built image: the command line, and
//! the wait until a server answers (through a published port, accepting a
//! connection proves nothing: the engine's proxy accepts it first).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use coord_core::testkit::containers::{
    ContainerSpec, LogStream, TestContainer, TestNetwork, require_image,
};
use coord_core::{Error, Result};

/// The image of the Redis containers (Redis 7.0 from Debian), built by
/// `bash .ci/build-images.sh`.
pub const REDIS_IMAGE: &str = "coord/redis:local";

/// How long a Redis container may take to answer after it started.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis container (named `name` when given) listening on `port`
/// inside, published on 127.0.0.1:`host_port`, on `network` if given,
/// without persistence, with `extra` arguments. Returns once the server
/// answers a command.
pub(crate) fn start_redis(
    purpose: &str,
    name: Option<&str>,
    port: u16,
    host_port: u16,
    network: Option<&TestNetwork>,
    extra: &[&str],
) -> Result<TestContainer> {
    require_image(REDIS_IMAGE)?;
    let port_text = port.to_string();
    let mut cmd = vec![
        "redis-server",
        "--port",
        &port_text,
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    cmd.extend_from_slice(extra);
    let mut spec = ContainerSpec::new(REDIS_IMAGE, purpose)
        .cmd(cmd)
        .publish(host_port, port)
        .ready_on(LogStream::Stdout, "Ready to accept connections");
    if let Some(network) = network {
        spec = spec.network(network);
    }
    if let Some(name) = name {
        spec = spec.named(name);
    }
    let container = TestContainer::start(spec)?;
    wait_answering(host_port)?;
    Ok(container)
}

/// Waits (at most 30 s) until the Redis server behind 127.0.0.1:`port`
/// answers a command: any reply counts (`-NOAUTH` too), but `-LOADING`.
pub(crate) fn wait_answering(port: u16) -> Result<()> {
    wait_answering_within(port, ANSWER_TIMEOUT)
}

/// Like [`wait_answering`], at most `limit`.
pub(crate) fn wait_answering_within(port: u16, limit: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + limit;
    loop {
        let last = match ping(addr) {
            Ok(reply) if reply.starts_with('+') => return Ok(()),
            Ok(reply) if reply.starts_with('-') && !reply.starts_with("-LOADING") => return Ok(()),
            Ok(reply) => format!("replied {reply:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "the Redis container on {addr} did not answer within {limit:?} ({last})"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `PING` to `addr` and returns the first line of the reply.
fn ping(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply)?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a reply",
        ));
    }
    let text = String::from_utf8_lossy(&reply[..n]);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}
