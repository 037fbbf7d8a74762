//! The forwarding of a [`FaultProxy`](super::FaultProxy): the accept loop,
//! and each connection's two directions, which read the faults as bytes
//! pass.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Direction, NewConnections, ProxyStats, Socket, State, lock};

/// How many pieces a direction holds in flight (delayed or paced) before it
/// stops reading, pushing back on the sender as a full link would.
const IN_FLIGHT: usize = 64;

/// The largest read a connection forwards as one piece.
const CHUNK: usize = 16 * 1024;

/// Counts a connection open until dropped (also when its task is aborted).
struct OpenGuard(Arc<watch::Sender<ProxyStats>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.send_modify(|s| s.open -= 1);
    }
}

/// Accepts connections and runs each in a task of its own; dropping this
/// future (when the proxy is dropped) aborts them all.
pub(super) async fn accept_loop(
    upstream: SocketAddr,
    socket: Arc<Mutex<Option<Socket>>>,
    socket_changed: Arc<Notify>,
    state: watch::Receiver<State>,
    stats: Arc<watch::Sender<ProxyStats>>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accept = poll_fn(|cx| match &*lock(&socket) {
            Some(Socket::Listening(listener)) => listener.poll_accept(cx),
            _ => Poll::Pending,
        });
        let client = tokio::select! {
            accepted = accept => accepted,
            () = socket_changed.notified() => continue,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((client, _)) = client else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let State { faults, resets } = *state.borrow();
        stats.send_modify(|s| s.accepted += 1);
        match faults.new_connections {
            NewConnections::Forward => {}
            NewConnections::Close => {
                stats.send_modify(|s| s.dropped += 1);
                continue;
            }
            NewConnections::Reset | NewConnections::Refuse => {
                stats.send_modify(|s| s.dropped += 1);
                abort(&client);
                continue;
            }
        }
        stats.send_modify(|s| s.open += 1);
        let open = OpenGuard(stats.clone());
        let (state, stats) = (state.clone(), stats.clone());
        connections.spawn(async move {
            serve(client, upstream, state, resets, &stats).await;
            drop(open);
        });
    }
}

/// Makes the coming close of `stream` a reset (RST) instead of an end of
/// stream.
fn abort(stream: &TcpStream) {
    // A zero linger never blocks on close (tokio's deprecation is about
    // non-zero ones); `set_zero_linger` needs tokio 1.50, above our floor.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// One connection, until both directions ended, an error (then both sides
/// are reset) or a [`FaultProxy::reset_open`] after its acceptance.
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    resets: u64,
    stats: &watch::Sender<ProxyStats>,
) {
    let mut server = None;
    let mut reset = state.clone();
    let ended = tokio::select! {
        relayed = relay(&mut client, &mut server, upstream, state, stats) => relayed.is_ok(),
        // (Once the proxy is dropped this branch is off: its tasks are
        // aborted, closing the sockets.)
        Ok(_) = reset.wait_for(|s| s.resets != resets) => {
            stats.send_modify(|s| s.reset += 1);
            false
        }
    };
    if !ended {
        abort(&client);
        if let Some(server) = &server {
            abort(server);
        }
    }
}

/// Connects to `upstream` once the link is not a blackhole, then forwards
/// both directions until each has ended.
async fn relay(
    client: &mut TcpStream,
    server: &mut Option<TcpStream>,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    stats: &watch::Sender<ProxyStats>,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    if !swallow_while_blackholed(client, &mut state, stats).await? {
        return Ok(());
    }
    let connected = TcpStream::connect(upstream).await.inspect_err(|_| {
        stats.send_modify(|s| s.upstream_failures += 1);
    })?;
    let server = server.insert(connected);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::try_join!(
        pump(
            client_read,
            server_write,
            Direction::ClientToServer,
            state.clone(),
            stats
        ),
        pump(
            server_read,
            client_write,
            Direction::ServerToClient,
            state,
            stats
        ),
    )?;
    Ok(())
}

/// Reads and discards what the client sends while the link is a blackhole.
/// `false` when the client closed meanwhile (nothing to forward).
async fn swallow_while_blackholed(
    client: &mut TcpStream,
    state: &mut watch::Receiver<State>,
    stats: &watch::Sender<ProxyStats>,
) -> io::Result<bool> {
    let mut buf = vec![0; CHUNK];
    loop {
        if !state.borrow_and_update().faults.is_blackhole() {
            return Ok(true);
        }
        tokio::select! {
            read = client.read(&mut buf) => match read? {
                0 => return Ok(false),
                n => stats.send_modify(|s| s.swallowed_to_server += n as u64),
            },
            changed = state.changed() => if changed.is_err() {
                return Ok(false);
            },
        }
    }
}

/// Forwards one direction: a reader schedules each piece (latency, jitter)
/// and a writer delivers it at its time (bandwidth), both checking whether
/// the direction is swallowed. An end of stream is passed on once the
/// direction flows.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    dir: Direction,
    state: watch::Receiver<State>,
    stats: &watch::Sender<ProxyStats>,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let mut flows = state.clone();
    let read = async move {
        let mut last = Instant::now();
        loop {
            let mut buf = vec![0; CHUNK];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            let link = state.borrow().faults.link(dir);
            if link.swallow {
                count(stats, dir, true, n);
                continue;
            }
            buf.truncate(n);
            let jitter = fastrand::u128(..=link.jitter.as_nanos());
            let at = Instant::now() + link.latency + Duration::from_nanos(jitter as u64);
            last = last.max(at);
            if tx.send((last, buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async {
        let mut next_slot = Instant::now();
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            deliver(&mut to, &buf, dir, &flows, stats, &mut next_slot).await?;
        }
        if flows
            .wait_for(|s| !s.faults.link(dir).swallow)
            .await
            .is_ok()
        {
            to.shutdown().await?;
        }
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Writes `buf` unless the direction is swallowed now, paced by its
/// bandwidth limit (`next_slot` is when the next slice may go).
async fn deliver(
    to: &mut (impl AsyncWrite + Unpin),
    mut buf: &[u8],
    dir: Direction,
    state: &watch::Receiver<State>,
    stats: &watch::Sender<ProxyStats>,
    next_slot: &mut Instant,
) -> io::Result<()> {
    while !buf.is_empty() {
        let link = state.borrow().faults.link(dir);
        if link.swallow {
            count(stats, dir, true, buf.len());
            return Ok(());
        }
        let Some(rate) = link.bandwidth else {
            to.write_all(buf).await?;
            count(stats, dir, false, buf.len());
            return Ok(());
        };
        let slice = buf.len().min((rate / 50).max(1) as usize);
        let start = (*next_slot).max(Instant::now());
        if start > Instant::now() {
            tokio::time::sleep_until(start).await;
            // The faults may have changed while this slice waited.
            continue;
        }
        to.write_all(&buf[..slice]).await?;
        count(stats, dir, false, slice);
        *next_slot = start + Duration::from_secs_f64(slice as f64 / rate as f64);
        buf = &buf[slice..];
    }
    Ok(())
}

/// Counts `n` bytes of `dir`, delivered or swallowed.
fn count(stats: &watch::Sender<ProxyStats>, dir: Direction, swallowed: bool, n: usize) {
    let n = n as u64;
    stats.send_modify(|s| match (dir, swallowed) {
        (Direction::ServerToClient, false) => s.bytes_to_client += n,
        (Direction::ServerToClient, true) => s.swallowed_to_client += n,
        (_, false) => s.bytes_to_server += n,
        (_, true) => s.swallowed_to_server += n,
    });
}
