//! [`FaultProxy`]: a loopback TCP proxy in front of a real server (Redis,
//! etcd, anything on TCP) whose link faults a test switches at runtime:
//! latency and jitter, a bandwidth limit, new connections closed, reset or
//! refused, open connections reset, a blackhole and a half-open link.
//!
//! Every switch takes effect at once on the connections already open, not
//! only on new ones: each connection reads the faults from a
//! [`watch`] channel as bytes pass, and waits on it where it must. The
//! forwarding itself is in [`relay`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

mod relay;

/// The listener's backlog.
const BACKLOG: u32 = 1024;

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the server (requests).
    ClientToServer,
    /// From the server to the client (replies, pushed events).
    ServerToClient,
    /// Both directions.
    Both,
}

/// The faults of one direction of every connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkFaults {
    /// Added to every byte's trip.
    pub latency: Duration,
    /// Up to this much more, drawn at random for each read; bytes keep
    /// their order (a piece never overtakes an earlier one).
    pub jitter: Duration,
    /// At most this many bytes per second (at least 1), paced in slices of
    /// a fiftieth of a second's worth.
    pub bandwidth: Option<u64>,
    /// The bytes are read and discarded: nothing passes, nothing is closed.
    /// Swallowed bytes are gone for good (a real partition would have TCP
    /// resend them), so a protocol stream that loses some is broken until
    /// its client reconnects. An end of stream waits until the direction
    /// flows again.
    pub swallow: bool,
}

/// What happens to a connection the proxy accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NewConnections {
    /// Forwarded to the server (the default).
    #[default]
    Forward,
    /// Accepted, then closed at once (the client reads an end of stream).
    Close,
    /// Accepted, then reset at once (the client reads `ConnectionReset`).
    Reset,
    /// Refused: the proxy stops listening (keeping its port bound), so
    /// connecting fails with `ConnectionRefused`. Connections still in the
    /// accept queue when the switch happens are reset.
    Refuse,
}

/// Every fault of a [`FaultProxy`]; the default is a healthy link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyFaults {
    /// The client-to-server direction.
    pub to_server: LinkFaults,
    /// The server-to-client direction.
    pub to_client: LinkFaults,
    /// What happens to new connections.
    pub new_connections: NewConnections,
}

impl ProxyFaults {
    /// The faults of one direction (`Both` reads the client-to-server one).
    fn link(&self, dir: Direction) -> LinkFaults {
        match dir {
            Direction::ServerToClient => self.to_client,
            Direction::ClientToServer | Direction::Both => self.to_server,
        }
    }

    fn links_mut(&mut self, dir: Direction) -> impl Iterator<Item = &mut LinkFaults> {
        let (to_server, to_client) = match dir {
            Direction::ClientToServer => (true, false),
            Direction::ServerToClient => (false, true),
            Direction::Both => (true, true),
        };
        [
            to_server.then_some(&mut self.to_server),
            to_client.then_some(&mut self.to_client),
        ]
        .into_iter()
        .flatten()
    }

    /// Both directions swallowed: new connections get no upstream.
    fn is_blackhole(&self) -> bool {
        self.to_server.swallow && self.to_client.swallow
    }
}

/// What a [`FaultProxy`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now (including blackholed ones).
    pub open: u64,
    /// Connections closed or reset as they were accepted.
    pub dropped: u64,
    /// Open connections reset by [`FaultProxy::reset_open`].
    pub reset: u64,
    /// Connections reset because the server could not be reached.
    pub upstream_failures: u64,
    /// Bytes delivered to the server.
    pub bytes_to_server: u64,
    /// Bytes delivered to clients.
    pub bytes_to_client: u64,
    /// Bytes from clients that were swallowed.
    pub swallowed_to_server: u64,
    /// Bytes from the server that were swallowed.
    pub swallowed_to_client: u64,
}

/// What every connection watches: the faults, and how many times open
/// connections were told to reset.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    faults: ProxyFaults,
    resets: u64,
}

/// The proxy's socket: listening, or bound only (refusing connections while
/// keeping the port).
#[derive(Debug)]
enum Socket {
    Listening(TcpListener),
    Bound(TcpSocket),
}

/// A TCP proxy on 127.0.0.1 in front of one upstream server (Redis, etcd,
/// anything on TCP), whose link faults a test switches at runtime. Every
/// switch takes effect at once on the connections already open, not only
/// on new ones. Dropping it closes its port and aborts its connections.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use coord_core::testkit::FaultProxy;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio::net::{TcpListener, TcpStream};
///
/// // An echo server stands in for Redis or etcd.
/// let server = TcpListener::bind("127.0.0.1:0").await?;
/// let upstream = server.local_addr()?;
/// tokio::spawn(async move {
///     while let Ok((mut conn, _)) = server.accept().await {
///         tokio::spawn(async move {
///             let (mut r, mut w) = conn.split();
///             let _ = tokio::io::copy(&mut r, &mut w).await;
///         });
///     }
/// });
///
/// let proxy = FaultProxy::start(upstream)?;
/// let mut client = TcpStream::connect(proxy.addr()).await?;
/// let mut reply = [0; 4];
/// client.write_all(b"ping").await?;
/// client.read_exact(&mut reply).await?;
/// assert_eq!(&reply, b"ping");
///
/// proxy.blackhole(); // the open connection goes silent, and stays open
/// client.write_all(b"lost").await?;
/// proxy.wait_for_stats(|s| s.swallowed_to_server == 4).await; // read, discarded
/// let silent = tokio::time::timeout(Duration::from_millis(200), client.read(&mut reply)).await;
/// assert!(silent.is_err(), "nothing comes back through a blackhole");
///
/// proxy.heal(); // what was swallowed is gone; what is sent now goes through
/// client.write_all(b"back").await?;
/// client.read_exact(&mut reply).await?;
/// assert_eq!(&reply, b"back");
/// assert_eq!(proxy.stats().swallowed_to_server, 4);
/// # Ok::<_, std::io::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    stats: Arc<watch::Sender<ProxyStats>>,
    /// `None` once dropped. Every switch holds this lock, so the listener
    /// always matches the latest faults.
    socket: Arc<Mutex<Option<Socket>>>,
    /// Wakes the acceptor when `socket` changes.
    socket_changed: Arc<Notify>,
    runtime: tokio::runtime::Handle,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy listening on a free port of 127.0.0.1 that forwards
    /// every connection to `upstream`, with no fault. Must be called within
    /// a Tokio runtime, where its tasks run.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("FaultProxy::start needs a runtime: {e}")))?;
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let listener = socket.listen(BACKLOG)?;
        let addr = listener.local_addr()?;
        let state = watch::Sender::new(State::default());
        let stats = Arc::new(watch::Sender::new(ProxyStats::default()));
        let socket = Arc::new(Mutex::new(Some(Socket::Listening(listener))));
        let socket_changed = Arc::new(Notify::new());
        let acceptor = runtime.spawn(relay::accept_loop(
            upstream,
            socket.clone(),
            socket_changed.clone(),
            state.subscribe(),
            stats.clone(),
        ));
        Ok(FaultProxy {
            addr,
            upstream,
            state,
            stats,
            socket,
            socket_changed,
            runtime,
            acceptor,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The faults in force.
    pub fn faults(&self) -> ProxyFaults {
        self.state.borrow().faults
    }

    /// Replaces every fault at once.
    ///
    /// # Panics
    ///
    /// When the proxy starts listening again (after [`NewConnections::Refuse`])
    /// and cannot: its port was taken meanwhile.
    pub fn set_faults(&self, faults: ProxyFaults) {
        self.update(|s| s.faults = faults);
    }

    /// Delays the bytes of `dir` by `latency` plus up to `jitter` (drawn per
    /// read), keeping their order. Bytes already on their way keep their
    /// delivery time.
    pub fn set_latency(&self, dir: Direction, latency: Duration, jitter: Duration) {
        self.update(|s| {
            for link in s.faults.links_mut(dir) {
                link.latency = latency;
                link.jitter = jitter;
            }
        });
    }

    /// Limits `dir` to `bytes_per_second` (at least 1), or lifts the limit
    /// with `None`.
    pub fn set_bandwidth(&self, dir: Direction, bytes_per_second: Option<u64>) {
        self.update(|s| {
            for link in s.faults.links_mut(dir) {
                link.bandwidth = bytes_per_second.map(|b| b.max(1));
            }
        });
    }

    /// Sets what happens to new connections; open ones are not touched.
    ///
    /// # Panics
    ///
    /// Like [`set_faults`](Self::set_faults).
    pub fn set_new_connections(&self, new: NewConnections) {
        self.update(|s| s.faults.new_connections = new);
    }

    /// Resets (RST) every connection open now, on both sides: the client
    /// and the server read `ConnectionReset`. Later connections are not
    /// affected.
    pub fn reset_open(&self) {
        self.update(|s| s.resets += 1);
    }

    /// Accepts and swallows: open connections stop forwarding in both
    /// directions (what arrives is read and discarded, nothing is closed),
    /// and new connections are accepted and swallowed the same way, without
    /// a connection to the server until the link flows again.
    pub fn blackhole(&self) {
        self.half_open(Direction::Both);
    }

    /// Swallows `swallowed` (read and discarded, nothing closed) while the
    /// other direction flows. `half_open(Direction::ServerToClient)` is the
    /// classic half-open link: requests reach the server (which acts on
    /// them), replies never come back. `ClientToServer` is the reverse: the
    /// server's pushes arrive, nothing the client sends does. `Both` is
    /// [`blackhole`](Self::blackhole).
    pub fn half_open(&self, swallowed: Direction) {
        self.update(|s| {
            for link in s.faults.links_mut(Direction::Both) {
                link.swallow = false;
            }
            for link in s.faults.links_mut(swallowed) {
                link.swallow = true;
            }
        });
    }

    /// Clears every fault: open connections flow again (bytes swallowed
    /// meanwhile stay lost), new connections are forwarded, and a refusing
    /// proxy listens again on its port.
    ///
    /// # Panics
    ///
    /// Like [`set_faults`](Self::set_faults).
    pub fn heal(&self) {
        self.set_faults(ProxyFaults::default());
    }

    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        *self.stats.borrow()
    }

    /// Waits until the counters satisfy `ready` (woken by every change, no
    /// polling), and returns them. Unbounded: wrap it in a timeout.
    pub async fn wait_for_stats(&self, mut ready: impl FnMut(&ProxyStats) -> bool) -> ProxyStats {
        let mut rx = self.stats.subscribe();
        // The sender lives in `self`, so the channel cannot close meanwhile.
        let stats = rx.wait_for(|s| ready(s)).await.map(|s| *s);
        stats.unwrap_or_else(|_| self.stats())
    }

    /// Changes the state, then makes the socket match the new
    /// [`NewConnections`], under the socket's lock so concurrent switches
    /// cannot leave them apart.
    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut socket = lock(&self.socket);
        let mut refuse = false;
        self.state.send_modify(|s| {
            change(s);
            refuse = s.faults.new_connections == NewConnections::Refuse;
        });
        let Some(current) = socket.take() else {
            return;
        };
        *socket = Some(match (current, refuse) {
            (Socket::Listening(listener), true) => {
                drop(listener);
                Socket::Bound(self.bind().unwrap_or_else(|e| {
                    panic!("the fault proxy cannot keep its port {}: {e}", self.addr)
                }))
            }
            (Socket::Bound(socket), false) => {
                let _runtime = self.runtime.enter();
                Socket::Listening(socket.listen(BACKLOG).unwrap_or_else(|e| {
                    panic!("the fault proxy cannot listen on {} again: {e}", self.addr)
                }))
            }
            (same, _) => same,
        });
        drop(socket);
        self.socket_changed.notify_one();
    }

    /// A socket bound to the proxy's address, not listening.
    fn bind(&self) -> io::Result<TcpSocket> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        Ok(socket)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Closes the port now; the connections go with the acceptor's tasks.
        drop(lock(&self.socket).take());
        self.acceptor.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
