//! The testkit's TCP [`FaultProxy`] in front of a loopback echo server:
//! each fault observably happens, on connections already open as well as
//! new ones, and `heal()` restores traffic.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coord_core::testkit::{Direction, FaultProxy, NewConnections, ProxyFaults, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The bound of every wait that should end at once.
const WAIT: Duration = Duration::from_secs(5);

/// How long a test listens for bytes that must not come: the proxy's
/// counters already showed they were swallowed, this only catches a bug
/// that delivers them anyway.
const QUIET: Duration = Duration::from_millis(200);

/// An echo server that counts what it gets, reports how each connection
/// ended, and can push bytes to a client unasked.
struct Upstream {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: watch::Receiver<usize>,
    /// Bytes received, over all connections.
    received: watch::Receiver<usize>,
    /// How each connection ended: `Ok` for an end of stream.
    ends: mpsc::UnboundedReceiver<Result<(), io::ErrorKind>>,
    /// Bytes to push to the client of each connection, by acceptance order.
    pushes: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = watch::channel(0);
        let received_tx = Arc::new(watch::Sender::new(0));
        let received = received_tx.subscribe();
        let (ends_tx, ends) = mpsc::unbounded_channel();
        let pushes = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let pushes = pushes.clone();
            async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let (push_tx, push_rx) = mpsc::unbounded_channel();
                    pushes.lock().unwrap().push(push_tx);
                    accepted_tx.send_modify(|n| *n += 1);
                    let (received, ends) = (received_tx.clone(), ends_tx.clone());
                    tokio::spawn(async move {
                        let _ = ends.send(echo_server(conn, push_rx, &received).await);
                    });
                }
            }
        });
        Upstream {
            addr,
            accepted,
            received,
            ends,
            pushes,
            task,
        }
    }

    /// Has the server send `bytes` on its `i`-th connection.
    fn push(&self, i: usize, bytes: &[u8]) {
        self.pushes.lock().unwrap()[i].send(bytes.to_vec()).unwrap();
    }

    fn received(&self) -> usize {
        *self.received.borrow()
    }

    fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    async fn wait_received(&mut self, n: usize) {
        within(WAIT, &format!("the server receives {n} bytes"), async {
            self.received.wait_for(|r| *r >= n).await.unwrap();
        })
        .await;
    }

    async fn wait_accepted(&mut self, n: usize) {
        within(
            WAIT,
            &format!("the server accepts {n} connections"),
            async {
                self.accepted.wait_for(|a| *a >= n).await.unwrap();
            },
        )
        .await;
    }

    async fn next_end(&mut self) -> Result<(), io::ErrorKind> {
        within(WAIT, "a server connection ends", self.ends.recv())
            .await
            .unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server(
    mut conn: TcpStream,
    mut pushes: mpsc::UnboundedReceiver<Vec<u8>>,
    received: &watch::Sender<usize>,
) -> Result<(), io::ErrorKind> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        tokio::select! {
            read = conn.read(&mut buf) => match read.map_err(|e| e.kind())? {
                0 => return Ok(()),
                n => {
                    received.send_modify(|r| *r += n);
                    conn.write_all(&buf[..n]).await.map_err(|e| e.kind())?;
                }
            },
            Some(bytes) = pushes.recv() => conn.write_all(&bytes).await.map_err(|e| e.kind())?,
        }
    }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let conn = within(WAIT, "a client connects", TcpStream::connect(proxy.addr()))
        .await
        .expect("connect to the proxy");
    conn.set_nodelay(true).unwrap();
    conn
}

/// Sends `msg` and reads as many bytes back.
async fn echo(conn: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    conn.write_all(msg).await.unwrap();
    read_n(conn, msg.len()).await
}

async fn read_n(conn: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut reply = vec![0; n];
    within(WAIT, "the reply arrives", conn.read_exact(&mut reply))
        .await
        .expect("read the reply");
    reply
}

/// Asserts that nothing arrives on `conn` (and that it stays open) for [`QUIET`].
async fn assert_silent(conn: &mut TcpStream, what: &str) {
    let mut buf = [0; 64];
    if let Ok(read) = tokio::time::timeout(QUIET, conn.read(&mut buf)).await {
        panic!("{what}: expected silence, read {read:?}");
    }
}

async fn read_outcome(conn: &mut TcpStream) -> io::Result<usize> {
    let mut buf = [0; 64];
    within(
        WAIT,
        "the client reads an end or an error",
        conn.read(&mut buf),
    )
    .await
}

#[tokio::test]
async fn forwards_both_ways_and_counts() {
    let mut up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    assert_eq!(proxy.upstream(), up.addr);
    let mut conn = connect(&proxy).await;
    assert_eq!(echo(&mut conn, b"hello").await, b"hello");
    let stats = within(
        WAIT,
        "the reply is counted",
        proxy.wait_for_stats(|s| s.bytes_to_client == 5),
    )
    .await;
    assert_eq!(
        (stats.accepted, stats.open, stats.bytes_to_server),
        (1, 1, 5)
    );
    assert_eq!(stats.swallowed_to_server + stats.swallowed_to_client, 0);

    drop(conn);
    within(
        WAIT,
        "the connection is closed",
        proxy.wait_for_stats(|s| s.open == 0),
    )
    .await;
    assert_eq!(
        up.next_end().await,
        Ok(()),
        "the server saw an end of stream"
    );
}

#[tokio::test]
async fn latency_delays_an_open_connection_until_healed() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut conn = connect(&proxy).await;
    assert_eq!(echo(&mut conn, b"warm").await, b"warm");

    let one_way = Duration::from_millis(300);
    proxy.set_latency(Direction::ClientToServer, one_way, Duration::ZERO);
    let start = Instant::now();
    assert_eq!(echo(&mut conn, b"slow").await, b"slow");
    let rtt = start.elapsed();
    assert!(rtt >= one_way, "one delayed direction: {rtt:?}");

    proxy.set_latency(Direction::Both, one_way, Duration::ZERO);
    assert_eq!(proxy.faults().to_client.latency, one_way);
    let start = Instant::now();
    assert_eq!(echo(&mut conn, b"both").await, b"both");
    let rtt = start.elapsed();
    assert!(rtt >= 2 * one_way, "both directions delayed: {rtt:?}");

    proxy.heal();
    assert_eq!(proxy.faults(), ProxyFaults::default());
    let start = Instant::now();
    assert_eq!(echo(&mut conn, b"fast").await, b"fast");
    let rtt = start.elapsed();
    assert!(rtt < one_way, "healed, no delay is left: {rtt:?}");
}

#[tokio::test]
async fn jitter_keeps_the_byte_order() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut conn = connect(&proxy).await;
    let latency = Duration::from_millis(5);
    proxy.set_latency(Direction::Both, latency, Duration::from_millis(30));
    let start = Instant::now();
    let (mut read, mut write) = conn.split();
    let sent: Vec<u8> = (0u32..200).flat_map(u32::to_be_bytes).collect();
    let writer = async {
        for piece in sent.chunks(4) {
            write.write_all(piece).await.unwrap();
            // Apart, so that the proxy reads (and delays) them one by one.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let mut got = vec![0; sent.len()];
    let reader = within(WAIT, "every piece comes back", read.read_exact(&mut got));
    let ((), read) = tokio::join!(writer, reader);
    read.unwrap();
    assert_eq!(got, sent, "the pieces came back out of order");
    assert!(start.elapsed() >= 2 * latency);
}

#[tokio::test]
async fn bandwidth_limits_an_open_connection_until_healed() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut conn = connect(&proxy).await;
    assert_eq!(echo(&mut conn, b"warm").await, b"warm");

    // 10 kB at 20 kB/s: 25 slices of 400 bytes, the last one 480 ms in.
    proxy.set_bandwidth(Direction::ClientToServer, Some(20_000));
    let start = Instant::now();
    let data = vec![7; 10_000];
    assert_eq!(echo(&mut conn, &data).await, data);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "10 kB at 20 kB/s: {took:?}"
    );

    proxy.heal();
    // 100 kB would take 5 s at the limit.
    let start = Instant::now();
    let data = vec![9; 100_000];
    assert_eq!(echo(&mut conn, &data).await, data);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "healed, 100 kB: {took:?}");
}

#[tokio::test]
async fn new_connections_are_closed_reset_or_refused_until_healed() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut open = connect(&proxy).await;
    assert_eq!(echo(&mut open, b"open").await, b"open");

    proxy.set_new_connections(NewConnections::Close);
    let mut closed = connect(&proxy).await;
    assert_eq!(
        read_outcome(&mut closed).await.unwrap(),
        0,
        "closed at once"
    );

    proxy.set_new_connections(NewConnections::Reset);
    let mut reset = connect(&proxy).await;
    let read = read_outcome(&mut reset).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );

    proxy.set_new_connections(NewConnections::Refuse);
    let refused = within(WAIT, "a refused connect", TcpStream::connect(proxy.addr())).await;
    assert_eq!(
        refused.map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        echo(&mut open, b"still").await,
        b"still",
        "open connections are untouched"
    );
    let stats = proxy.stats();
    assert_eq!((stats.accepted, stats.dropped, stats.open), (3, 2, 1));
    assert_eq!(up.accepted(), 1, "no dropped connection reached the server");

    proxy.heal();
    let mut again = connect(&proxy).await;
    assert_eq!(echo(&mut again, b"again").await, b"again");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn reset_open_resets_both_sides_of_open_connections_only() {
    let mut up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    assert_eq!(echo(&mut a, b"a").await, b"a");
    assert_eq!(echo(&mut b, b"b").await, b"b");

    proxy.reset_open();
    for conn in [&mut a, &mut b] {
        let read = read_outcome(conn).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
    }
    for _ in 0..2 {
        assert_eq!(
            up.next_end().await,
            Err(io::ErrorKind::ConnectionReset),
            "the server side is reset too"
        );
    }
    let stats = within(
        WAIT,
        "both connections are gone",
        proxy.wait_for_stats(|s| s.open == 0),
    )
    .await;
    assert_eq!(stats.reset, 2);

    let mut later = connect(&proxy).await;
    assert_eq!(echo(&mut later, b"later").await, b"later");
}

#[tokio::test]
async fn a_blackhole_swallows_both_ways_and_closes_nothing() {
    let mut up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut open = connect(&proxy).await;
    assert_eq!(echo(&mut open, b"hello").await, b"hello");

    proxy.blackhole();
    open.write_all(b"lost").await.unwrap();
    up.push(0, b"event");
    within(
        WAIT,
        "both directions are swallowed",
        proxy.wait_for_stats(|s| s.swallowed_to_server == 4 && s.swallowed_to_client == 5),
    )
    .await;
    // A new connection is accepted and swallowed, without reaching the server.
    let mut new = connect(&proxy).await;
    new.write_all(b"also lost").await.unwrap();
    let stats = within(
        WAIT,
        "the new connection's bytes are swallowed",
        proxy.wait_for_stats(|s| s.swallowed_to_server == 13),
    )
    .await;
    assert_eq!((stats.accepted, stats.open), (2, 2), "{stats:?}");
    assert_eq!((stats.bytes_to_server, stats.bytes_to_client), (5, 5));
    assert_eq!(up.received(), 5);
    assert_eq!(up.accepted(), 1);
    assert_silent(&mut open, "the open connection").await;
    assert_silent(&mut new, "the new connection").await;

    proxy.heal();
    // What was swallowed is gone: only what is sent now comes back.
    assert_eq!(echo(&mut open, b"back").await, b"back");
    assert_eq!(echo(&mut new, b"hi").await, b"hi");
    up.wait_accepted(2).await;
    assert_eq!(up.received(), 5 + 4 + 2);
}

/// Bytes the proxy holds back (here by a bandwidth limit) when the
/// blackhole starts are swallowed, not delivered late.
#[tokio::test]
async fn bytes_held_back_are_swallowed_when_the_blackhole_starts() {
    let mut up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut conn = connect(&proxy).await;
    // 2 s worth at 1 kB/s, in slices of 20 bytes.
    proxy.set_bandwidth(Direction::ClientToServer, Some(1_000));
    conn.write_all(&[1; 2_000]).await.unwrap();
    up.wait_received(20).await;

    proxy.blackhole();
    let stats = within(
        WAIT,
        "every byte is delivered or swallowed",
        proxy.wait_for_stats(|s| s.bytes_to_server + s.swallowed_to_server == 2_000),
    )
    .await;
    assert!(stats.swallowed_to_server > 0, "{stats:?}");
    assert_eq!(up.received() as u64, stats.bytes_to_server);
    assert!(up.received() < 2_000);
}

#[tokio::test]
async fn a_half_open_link_swallows_one_direction() {
    let mut up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut conn = connect(&proxy).await;
    assert_eq!(echo(&mut conn, b"hello").await, b"hello");

    // Requests reach the server, replies never come back.
    proxy.half_open(Direction::ServerToClient);
    conn.write_all(b"req").await.unwrap();
    up.wait_received(5 + 3).await;
    within(
        WAIT,
        "the reply is swallowed",
        proxy.wait_for_stats(|s| s.swallowed_to_client == 3),
    )
    .await;
    assert_silent(&mut conn, "the swallowed reply").await;
    // New connections reach the server too.
    let _new = connect(&proxy).await;
    up.wait_accepted(2).await;

    // The reverse: the server's pushes arrive, nothing the client sends does.
    proxy.half_open(Direction::ClientToServer);
    assert!(!proxy.faults().to_client.swallow);
    up.push(0, b"event");
    assert_eq!(read_n(&mut conn, 5).await, b"event");
    conn.write_all(b"unheard").await.unwrap();
    within(
        WAIT,
        "the request is swallowed",
        proxy.wait_for_stats(|s| s.swallowed_to_server == 7),
    )
    .await;
    assert_eq!(up.received(), 5 + 3);

    proxy.heal();
    assert_eq!(echo(&mut conn, b"healed").await, b"healed");
}

#[tokio::test]
async fn an_end_of_stream_waits_for_the_link_to_flow() {
    let mut up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let mut conn = connect(&proxy).await;
    assert_eq!(echo(&mut conn, b"hello").await, b"hello");

    proxy.blackhole();
    conn.shutdown().await.unwrap();
    let quiet = tokio::time::timeout(QUIET, up.ends.recv()).await;
    assert!(quiet.is_err(), "the end passed the blackhole: {quiet:?}");

    proxy.heal();
    assert_eq!(up.next_end().await, Ok(()));
    assert_eq!(read_outcome(&mut conn).await.unwrap(), 0);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_port_and_connections() {
    let mut up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).unwrap();
    let addr = proxy.addr();
    let mut conn = connect(&proxy).await;
    assert_eq!(echo(&mut conn, b"hello").await, b"hello");

    drop(proxy);
    let refused = within(WAIT, "a connect after the drop", TcpStream::connect(addr)).await;
    assert_eq!(
        refused.map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(read_outcome(&mut conn).await.unwrap(), 0);
    assert_eq!(up.next_end().await, Ok(()));
}
