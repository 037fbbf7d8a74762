//! A server process for tests: spawned on a loopback port, killed on drop.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a spawned server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A child server process (redis-server, etcd, ...) listening on a loopback
/// port. Killed on drop; can be stopped, restarted with the same command,
/// paused and resumed, for fault tests.
#[derive(Debug)]
pub struct ServerProcess {
    program: String,
    args: Vec<String>,
    port: u16,
    install_hint: String,
    child: Option<Child>,
}

impl ServerProcess {
    /// A TCP port on 127.0.0.1 that was free a moment ago.
    pub fn free_port() -> Result<u16> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::unavailable("cannot bind a loopback port", Some(e.into())))?;
        listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| Error::unavailable("cannot read a loopback port", Some(e.into())))
    }

    /// Runs `start` (which picks its ports with [`free_port`](Self::free_port)
    /// and spawns servers on them) up to three times while it fails because
    /// a server exited before listening, or the container engine could not
    /// publish a port: a port found free a moment earlier can be taken by
    /// another test's server before ours binds it. Any other failure, or the
    /// third, is returned.
    pub fn retry_port_races<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            match start() {
                Err(Error::Unavailable { message, .. })
                    if attempt < 3 && lost_its_port(&message) =>
                {
                    eprintln!(
                        "a test server exited before listening ({message}); trying other ports"
                    );
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Spawns `program args…` and waits until 127.0.0.1:`port` accepts TCP
    /// connections. A missing program is an [`Error::Unavailable`] whose
    /// message includes `install_hint`.
    pub fn spawn(
        program: &str,
        args: Vec<String>,
        port: u16,
        install_hint: &str,
    ) -> Result<ServerProcess> {
        let mut server = ServerProcess {
            program: program.to_owned(),
            args,
            port,
            install_hint: install_hint.to_owned(),
            child: None,
        };
        server.start()?;
        Ok(server)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server again with the same command (after [`stop`](Self::stop)),
    /// and waits until its port accepts connections.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::unavailable(
                    format!(
                        "cannot start `{}`: {e}. {}",
                        self.program, self.install_hint
                    ),
                    Some(e.into()),
                )
            })?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        let pid = self.pid();
        loop {
            // The port accepting is not enough: another test's server may
            // have taken the port between `free_port` and our bind, and then
            // ours exits (address in use) while theirs answers. So wait until
            // the listener is our child's (where /proc tells).
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && pid.and_then(|pid| listener_is_of(pid, self.port)) != Some(false)
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::unavailable(
                    format!(
                        "`{} {}` exited with {status} before listening on {addr}",
                        self.program,
                        self.args.join(" ")
                    ),
                    None,
                ));
            }
            if Instant::now() >= deadline {
                let _ = self.stop();
                return Err(Error::Timeout(format!(
                    "`{}` did not listen on {addr} within {START_TIMEOUT:?}",
                    self.program
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().map_err(|e| {
                Error::unavailable("cannot reap the server process", Some(e.into()))
            })?;
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::invalid("the server is not running"))?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| Error::unavailable("cannot run kill", Some(e.into())))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::unavailable(
                format!("kill -{sig} {pid} failed: {status}"),
                None,
            ))
        }
    }
}

/// Whether a start failed because its port was taken meanwhile: a process
/// that exited before listening, or an engine that could not publish it.
/// Whether the socket listening on TCP `port` belongs to process `pid`,
/// from Linux's /proc; `None` where /proc cannot tell (another system, no
/// listener found).
fn listener_is_of(pid: u32, port: u16) -> Option<bool> {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode.
            if let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
                && local.ends_with(&port_hex)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.to_string_lossy() == *i))
    }))
}

fn lost_its_port(message: &str) -> bool {
    [
        "before listening",
        "address already in use",
        "port is already allocated",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // A paused process still dies of SIGKILL.
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_races_are_retried_and_other_failures_are_not() {
        let exited =
            || Error::unavailable("`etcd` exited with 1 before listening on 127.0.0.1:1", None);
        let mut calls = 0;
        let r = ServerProcess::retry_port_races(|| {
            calls += 1;
            if calls < 3 { Err(exited()) } else { Ok(calls) }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: Result<()> = ServerProcess::retry_port_races(|| {
            calls += 1;
            Err(exited())
        });
        assert!(r.is_err());
        assert_eq!(calls, 3, "three attempts at most");
        let mut calls = 0;
        let r: Result<()> = ServerProcess::retry_port_races(|| {
            calls += 1;
            Err(Error::unavailable("not installed", None))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1, "other failures are not retried");
    }

    /// Another listener on the port (another test's server that took it
    /// first) is not taken for ours: ours exits, and that is reported as
    /// a lost port, which `retry_port_races` retries.
    #[test]
    fn another_process_on_the_port_is_not_taken_for_ours() {
        let theirs = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = theirs.local_addr().expect("addr").port();
        let err = ServerProcess::spawn("sleep", vec!["0.3".into()], port, "").unwrap_err();
        assert!(lost_its_port(&err.to_string()), "{err}");
    }

    #[test]
    fn missing_program_names_the_install_hint() {
        let port = ServerProcess::free_port().unwrap();
        let err = ServerProcess::spawn("coord-no-such-server", vec![], port, "apt-get install it")
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }));
        assert!(err.to_string().contains("apt-get install it"), "{err}");
    }

    #[test]
    fn a_program_that_exits_is_reported() {
        let port = ServerProcess::free_port().unwrap();
        let err = ServerProcess::spawn("true", vec![], port, "").unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
    }
}
