//! Release notifications: one dedicated pub/sub connection per backend,
//! opened lazily, fanned out to per-channel broadcast senders.
//!
//! * The first subscriber of a channel sends `SUBSCRIBE` and waits for the
//!   server's confirmation; later ones share it. When the last one leaves,
//!   the channel stays subscribed for [`LINGER`] (up to [`MAX_IDLE`] idle
//!   channels), so that a client that waits for the same lock again and
//!   again (a worker looping on a contended lock) joins it without a round
//!   trip; then `UNSUBSCRIBE` is sent. Both happen under one async mutex, so
//!   an unsubscribe never races a new subscribe of the same channel.
//! * When the connection dies every stream ends (waiters fall back to
//!   polling) and the next `subscribe` opens a new connection.
//! * Behind Sentinel the connection goes to the current master, and is
//!   closed (ending every stream) when the backend moves to a new master,
//!   so that each consumer subscribes again there: messages published on
//!   the new master never reach a connection left on the old one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coord_core::{Error, FencingToken, ReleaseEvents, Result, Wake};
use futures::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::error::map_err;
use crate::sentinel::MasterTracker;

/// Messages a slow reader may fall behind by before it sees `Lagged` (a
/// lock waiter is still woken; a cache listener resyncs, flushing its L1).
const CHANNEL_CAPACITY: usize = 256;

/// How long a channel nobody listens to any more stays subscribed.
const LINGER: Duration = Duration::from_secs(5);

/// The most channels that linger at once; beyond, the last listener's
/// leaving unsubscribes at once.
const MAX_IDLE: usize = 1024;

/// Where the pub/sub connection goes.
#[derive(Debug)]
pub(crate) enum Nodes {
    /// The configured node(s), tried in order.
    Fixed(Vec<redis::Client>),
    /// The master a `redis+sentinel://` backend follows now.
    Sentinel(Arc<MasterTracker>),
}

/// The pub/sub side of a backend, shared by its clones.
#[derive(Debug)]
pub(crate) struct PubSubHub {
    nodes: Nodes,
    addr: String,
    timeout: Duration,
    /// The live connection; the mutex serializes (un)subscribes.
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

/// One pub/sub connection and its subscriptions.
#[derive(Debug)]
struct Live {
    sink: PubSubSink,
    /// Channel → its sender and how many streams share it. Cleared (which
    /// ends every stream) when the connection dies.
    channels: Mutex<Channels>,
    dispatcher: JoinHandle<()>,
}

/// The messages of one channel, as their payloads.
type Payloads = broadcast::Sender<Arc<[u8]>>;

#[derive(Debug, Default)]
struct Channels {
    dead: bool,
    map: HashMap<String, Joined>,
    /// How many channels of `map` nobody listens to (lingering).
    idle: usize,
    /// The last `Joined::idle_since` handed out.
    last_idle: u64,
}

/// One subscribed channel.
#[derive(Debug)]
struct Joined {
    tx: Payloads,
    /// How many streams share it; 0 while it lingers.
    refs: usize,
    /// Which lingering spell it is in (its unsubscribe is for that one only).
    idle_since: u64,
    /// When its last listener left (the start of the lingering spell).
    idle_at: tokio::time::Instant,
    /// Whether a task waits to unsubscribe it once it has lingered
    /// [`LINGER`]: one per channel, however often it is left meanwhile (a
    /// task per leaving kept one timer per hand-over of a contended lock
    /// alive for the whole [`LINGER`]).
    sweeping: bool,
}

impl Live {
    fn channels(&self) -> MutexGuard<'_, Channels> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.channels().dead
    }

    /// Marks the connection dead and ends every stream on it.
    fn kill(&self) {
        let mut channels = self.channels();
        channels.dead = true;
        channels.map.clear();
        channels.idle = 0;
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

impl PubSubHub {
    pub(crate) fn new(nodes: Nodes, addr: String, timeout: Duration) -> Self {
        PubSubHub {
            nodes,
            addr,
            timeout,
            live: tokio::sync::Mutex::new(None),
        }
    }

    /// Release signals of `channels` (one stream of the messages of all of
    /// them), subscribed (and confirmed) on return. With `only`, a message
    /// wakes this stream only when it is empty or names `only` on one of its
    /// lines (the queue scripts publish the owners they let in, each with the
    /// token it was granted when they could grant it: [`Wake::Granted`]).
    /// Without `grants`, such a grant wakes the waiter to ask for it
    /// ([`Wake::Changed`]), as a grant that must be acknowledged by a replica
    /// is confirmed by the waiter's own call.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        channels: Vec<String>,
        only: Option<String>,
        grants: bool,
    ) -> Result<ReleaseEvents> {
        let mut streams = Vec::with_capacity(channels.len());
        for channel in channels {
            let (rx, guard) = self.join(channel).await?;
            streams.push(Self::wakes(rx, guard, only.clone(), grants));
        }
        Ok(ReleaseEvents::with_grants(until_one_ends(streams)))
    }

    /// The wake-ups of one joined channel (see [`subscribe`](Self::subscribe)).
    fn wakes(
        rx: broadcast::Receiver<Arc<[u8]>>,
        guard: Subscription,
        only: Option<String>,
        grants: bool,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = Wake> + Send>> {
        Box::pin(futures::stream::unfold(
            (rx, guard, only),
            move |(mut rx, guard, only)| async move {
                loop {
                    match rx.recv().await {
                        Ok(payload) => {
                            if let Some(mut wake) = wake_of(&payload, only.as_deref()) {
                                if !grants {
                                    wake = Wake::Changed;
                                }
                                return Some((wake, (rx, guard, only)));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Wake::Changed, (rx, guard, only)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }

    /// The messages of `channel`, subscribed (and confirmed) on return:
    /// each payload, or `None` where messages were missed (a slow reader).
    /// The stream ends when the connection dies.
    pub(crate) async fn messages(
        self: &Arc<Self>,
        channel: String,
    ) -> Result<impl futures::Stream<Item = Option<Arc<[u8]>>> + Send + 'static> {
        let (rx, guard) = self.join(channel).await?;
        Ok(futures::stream::unfold(
            (rx, guard),
            |(mut rx, guard)| async move {
                match rx.recv().await {
                    Ok(payload) => Some((Some(payload), (rx, guard))),
                    Err(broadcast::error::RecvError::Lagged(_)) => Some((None, (rx, guard))),
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            },
        ))
    }

    /// Joins `channel`: subscribes on the live connection (opening one if
    /// needed) when this is its first stream, and waits for the server's
    /// confirmation. The guard leaves the channel when dropped.
    async fn join(
        self: &Arc<Self>,
        channel: String,
    ) -> Result<(broadcast::Receiver<Arc<[u8]>>, Subscription)> {
        let mut slot = self.live.lock().await;
        let live = match slot.as_ref() {
            Some(live) if !live.is_dead() => live.clone(),
            _ => {
                *slot = None;
                let live = self.connect().await?;
                *slot = Some(live.clone());
                live
            }
        };
        let (rx, first) = {
            let mut channels = live.channels();
            let Channels { map, idle, .. } = &mut *channels;
            match map.get_mut(&channel) {
                Some(joined) => {
                    if joined.refs == 0 {
                        *idle -= 1;
                    }
                    joined.refs += 1;
                    (joined.tx.subscribe(), false)
                }
                None => {
                    // Registered before SUBSCRIBE so no message after the
                    // confirmation can reach the dispatcher unrouted.
                    let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                    let joined = Joined {
                        tx,
                        refs: 1,
                        idle_since: 0,
                        idle_at: tokio::time::Instant::now(),
                        sweeping: false,
                    };
                    map.insert(channel.clone(), joined);
                    (rx, true)
                }
            }
        };
        // Made before the SUBSCRIBE is awaited: a caller that gives up
        // meanwhile (a dropped future) leaves the channel through it, rather
        // than keep it subscribed for the connection's lifetime.
        let guard = Subscription {
            hub: self.clone(),
            live: Arc::downgrade(&live),
            channel: Some(channel.clone()),
        };
        if first {
            let mut sink = live.sink.clone();
            let confirmed = match tokio::time::timeout(self.timeout, sink.subscribe(&channel)).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(map_err(e, &self.addr)),
                Err(_) => Err(Error::Timeout(format!(
                    "redis at {} did not confirm SUBSCRIBE {channel} in {:?}",
                    self.addr, self.timeout
                ))),
            };
            if let Err(e) = confirmed {
                // The connection is in doubt: drop it (its other streams end
                // and their waiters poll); the next subscribe opens a new one.
                live.kill();
                *slot = None;
                return Err(e);
            }
        }
        drop(slot);
        Ok((rx, guard))
    }

    /// Drops the connection (and ends every stream).
    pub(crate) async fn close(&self) {
        if let Some(live) = self.live.lock().await.take() {
            live.kill();
        }
    }

    async fn connect(&self) -> Result<Arc<Live>> {
        let master;
        let (clients, moved): (&[redis::Client], _) = match &self.nodes {
            Nodes::Fixed(clients) => (clients, None),
            Nodes::Sentinel(tracker) => {
                // Watched from before the master is read: a move after
                // this point closes the new connection.
                let moved = tracker.changes();
                master = [tracker.client_of(&tracker.current().node)?];
                (&master, Some(moved))
            }
        };
        let mut last_err = None;
        for client in clients {
            let attempt = tokio::time::timeout(self.timeout, client.get_async_pubsub()).await;
            match attempt {
                Ok(Ok(pubsub)) => return Ok(self.start(pubsub, moved)),
                Ok(Err(e)) => last_err = Some(map_err(e, &self.addr)),
                Err(_) => {
                    last_err = Some(Error::unavailable(
                        format!(
                            "opening a pub/sub connection to redis at {} took longer than {:?}; \
                             check that redis-server is running and reachable",
                            self.addr, self.timeout
                        ),
                        None,
                    ))
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::invalid("no redis node to subscribe on")))
    }

    /// Starts dispatching the messages of `pubsub`, until it ends or
    /// `moved` (the master generation of a Sentinel backend) changes.
    fn start(&self, pubsub: redis::aio::PubSub, moved: Option<watch::Receiver<u64>>) -> Arc<Live> {
        let (sink, mut stream) = pubsub.split();
        let mut moved = moved;
        Arc::new_cyclic(|weak: &std::sync::Weak<Live>| {
            let weak = weak.clone();
            let dispatcher = tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        msg = stream.next() => msg,
                        () = master_moved(&mut moved) => {
                            tracing::debug!(
                                "the master moved; ending the pub/sub streams so they \
                                 subscribe on the new master"
                            );
                            None
                        }
                    };
                    let Some(msg) = msg else { break };
                    let Some(live) = weak.upgrade() else { return };
                    let channels = live.channels();
                    if let Some(Joined { tx, .. }) = channels.map.get(msg.get_channel_name()) {
                        // No receiver left is fine: the entry goes when its
                        // last stream is dropped.
                        let _ = tx.send(Arc::from(msg.get_payload_bytes()));
                    }
                }
                tracing::debug!("redis pub/sub connection ended; waiters fall back to polling");
                if let Some(live) = weak.upgrade() {
                    live.kill();
                }
            });
            Live {
                sink,
                channels: Mutex::new(Channels::default()),
                dispatcher,
            }
        })
    }

    /// One stream of `channel` on `live` has gone.
    async fn leave(&self, live: std::sync::Weak<Live>, channel: String) {
        let slot = self.live.lock().await;
        let Some(live) = live.upgrade() else { return };
        if !slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &live))
        {
            return;
        }
        let lingering = {
            let mut channels = live.channels();
            let Channels {
                map,
                idle,
                last_idle,
                ..
            } = &mut *channels;
            match map.get_mut(&channel) {
                Some(joined) if joined.refs > 1 => {
                    joined.refs -= 1;
                    return;
                }
                Some(joined) if joined.refs == 1 && *idle < MAX_IDLE => {
                    joined.refs = 0;
                    *last_idle += 1;
                    joined.idle_since = *last_idle;
                    joined.idle_at = tokio::time::Instant::now();
                    *idle += 1;
                    if joined.sweeping {
                        // The task waiting for it sees this spell.
                        return;
                    }
                    joined.sweeping = true;
                    Some((*last_idle, joined.idle_at))
                }
                Some(joined) if joined.refs == 1 => {
                    map.remove(&channel);
                    None
                }
                _ => return,
            }
        };
        drop(slot);
        let (slot, live) = match lingering {
            Some((since, at)) => match self.linger(live, &channel, since, at).await {
                Some(still) => still,
                None => return,
            },
            None => (self.live.lock().await, live),
        };
        if !slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &live))
        {
            return;
        }
        let mut sink = live.sink.clone();
        match tokio::time::timeout(self.timeout, sink.unsubscribe(&channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%channel, error = %e, "UNSUBSCRIBE failed"),
            Err(_) => tracing::debug!(%channel, "UNSUBSCRIBE timed out"),
        }
        drop(slot);
    }

    /// Waits until `channel`, idle since its spell `since` began at `at`,
    /// has lingered [`LINGER`] with nobody back, and removes it then (the
    /// caller unsubscribes, holding the returned lock). Waits again while
    /// it is left anew; `None` when it is listened to again (the next leaving
    /// waits for it) or gone. The connection is not kept alive meanwhile: a
    /// closed backend's connection goes.
    async fn linger<'a>(
        &'a self,
        live: Arc<Live>,
        channel: &str,
        mut since: u64,
        mut at: tokio::time::Instant,
    ) -> Option<(tokio::sync::MutexGuard<'a, Option<Arc<Live>>>, Arc<Live>)> {
        let weak = Arc::downgrade(&live);
        drop(live);
        loop {
            tokio::time::sleep_until(at + LINGER).await;
            let live = weak.upgrade()?;
            let slot = self.live.lock().await;
            if !slot
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, &live))
            {
                return None;
            }
            let mut channels = live.channels();
            let joined = channels.map.get_mut(channel)?;
            if joined.refs > 0 {
                joined.sweeping = false;
                return None;
            }
            if joined.idle_since != since {
                // Left again since: wait for this spell's end.
                (since, at) = (joined.idle_since, joined.idle_at);
                continue;
            }
            channels.map.remove(channel);
            channels.idle -= 1;
            drop(channels);
            return Some((slot, live));
        }
    }
}

/// Resolves when the master generation watched by `moved` changes; never
/// without one.
async fn master_moved(moved: &mut Option<watch::Receiver<u64>>) {
    let changed = match moved {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

/// What a message with `payload` tells a stream that listens for `only`:
/// always [`Wake::Changed`] without `only` or for an empty message; else,
/// for a line `only` (a waiter let in), `Changed`, and for a line `only NUL
/// token` (a waiter let in and granted), `Granted(token)`; `None` when no
/// line names `only`.
fn wake_of(payload: &[u8], only: Option<&str>) -> Option<Wake> {
    let owner = match only {
        None => return Some(Wake::Changed),
        Some(_) if payload.is_empty() => return Some(Wake::Changed),
        Some(owner) => owner.as_bytes(),
    };
    payload.split(|b| *b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(owner)?;
        match rest {
            [] => Some(Wake::Changed),
            [0, token @ ..] => Some(
                std::str::from_utf8(token)
                    .ok()
                    .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|t| t.parse::<u64>().ok())
                    .map_or(Wake::Changed, |t| Wake::Granted(FencingToken::new(t))),
            ),
            _ => None,
        }
    })
}

/// The items of `streams` as they come, ending as soon as one of them ends.
/// The channels of one subscription are joined one after the other: a
/// connection that dies between two joins ends the streams of the first
/// while the next ones live on a new connection, and a merge that went on
/// would leave its waiter deaf to the ended channels for the rest of its
/// wait. Ended, the subscription is made anew (or the waiter polls).
fn until_one_ends<S>(streams: Vec<S>) -> impl futures::Stream<Item = S::Item> + Send + 'static
where
    S: futures::Stream + Unpin + Send + 'static,
    S::Item: Send + 'static,
{
    let ends = streams
        .into_iter()
        .map(|s| s.map(Some).chain(futures::stream::iter([None])));
    futures::stream::select_all(ends)
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready)
}

/// Held by each stream; leaves the channel when the stream is dropped.
#[derive(Debug)]
struct Subscription {
    hub: Arc<PubSubHub>,
    live: std::sync::Weak<Live>,
    channel: Option<String>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(channel) = self.channel.take() else {
            return;
        };
        if self.live.strong_count() == 0 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let hub = self.hub.clone();
            let live = self.live.clone();
            rt.spawn(async move { hub.leave(live, channel).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{until_one_ends, wake_of};
    use coord_core::{FencingToken, Wake};
    use futures::StreamExt;

    #[tokio::test]
    async fn a_subscription_ends_when_one_of_its_channels_ends() {
        // One channel ended (its connection died between two joins) while
        // the other lives on: the merged stream must end, so that the waiter
        // subscribes again rather than stay deaf to the first channel.
        let limit = std::time::Duration::from_secs(5);
        let (_live_tx, live_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let ended = futures::stream::iter([1u32]).boxed();
        let merged = until_one_ends(vec![stream_of(live_rx), ended]);
        let seen: Vec<u32> = tokio::time::timeout(limit, merged.collect())
            .await
            .expect("the merge ends with its first channel");
        assert_eq!(seen, [1]);

        // Both alive: it delivers from both, and ends when one ends.
        let (tx1, rx1) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let (tx2, rx2) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut merged = Box::pin(until_one_ends(vec![stream_of(rx1), stream_of(rx2)]));
        tx1.send(1).unwrap();
        tx2.send(2).unwrap();
        let mut got = vec![merged.next().await.unwrap(), merged.next().await.unwrap()];
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        drop(tx2);
        let next = tokio::time::timeout(limit, merged.next()).await;
        assert_eq!(next.expect("the merge ends"), None);
        drop(tx1);
    }

    fn stream_of(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<u32>,
    ) -> futures::stream::BoxStream<'static, u32> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    #[test]
    fn a_queue_waiter_wakes_only_when_named_or_for_everyone() {
        let changed = Some(Wake::Changed);
        assert_eq!(wake_of(b"", None), changed);
        assert_eq!(wake_of(b"c:a", None), changed);
        assert_eq!(
            wake_of(b"", Some("c:a")),
            changed,
            "an empty message wakes everyone"
        );
        assert_eq!(wake_of(b"c:a", Some("c:a")), changed);
        assert_eq!(wake_of(b"c:b\nc:a", Some("c:a")), changed);
        assert_eq!(wake_of(b"c:b\nc:ab", Some("c:a")), None, "whole lines only");
        assert_eq!(wake_of(b"c:b", Some("c:a")), None);
    }

    #[test]
    fn a_line_with_a_token_is_a_grant_of_the_owner_it_names() {
        let granted = |t| Some(Wake::Granted(FencingToken::new(t)));
        assert_eq!(wake_of(b"c:a\x0042", Some("c:a")), granted(42));
        assert_eq!(wake_of(b"c:b\x007\nc:a\x0043", Some("c:a")), granted(43));
        assert_eq!(wake_of(b"c:ab\x0042", Some("c:a")), None, "another owner");
        assert_eq!(wake_of(b"c:a\x0042", None), Some(Wake::Changed));
        // A token that does not parse still wakes the owner, to ask again.
        for bad in [
            &b"c:a\x00"[..],
            b"c:a\x00x1",
            b"c:a\x00-1",
            b"c:a\x0099999999999999999999",
        ] {
            assert_eq!(wake_of(bad, Some("c:a")), Some(Wake::Changed), "{bad:?}");
        }
    }
}
