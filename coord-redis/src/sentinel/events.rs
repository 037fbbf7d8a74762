//! The sentinels' `+switch-master` events: a task that stays subscribed
//! on one sentinel at a time and moves the [`MasterTracker`] to each new
//! master a sentinel announces.

use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use redis::RedisError;
use tokio::sync::oneshot;

use crate::config::RedisNode;
use crate::sentinel::master::MasterTracker;

/// The channel on which sentinels announce a new master.
const SWITCH_MASTER: &str = "+switch-master";

/// Backoff of the listener when no sentinel can be subscribed to.
const MIN_LISTEN_DELAY: Duration = Duration::from_millis(50);
const MAX_LISTEN_DELAY: Duration = Duration::from_secs(2);

/// The new master's address in a `+switch-master` message
/// (`<name> <old-ip> <old-port> <new-ip> <new-port>`), when it is about
/// the master `name`.
fn parse_switch(payload: &[u8], name: &str) -> Option<RedisNode> {
    let text = std::str::from_utf8(payload).ok()?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [n, _, _, host, port] if *n == name => Some(RedisNode {
            host: (*host).to_owned(),
            port: port.parse().ok()?,
        }),
        _ => None,
    }
}

/// Listens for `+switch-master` on one sentinel at a time, moving on to
/// the next when its connection ends. Signals `ready` once first
/// subscribed; after a reconnect, looks the master up (an event may have
/// been missed meanwhile). Ends with the tracker.
pub(super) async fn listen(
    tracker: Weak<MasterTracker>,
    sentinels: Vec<redis::Client>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut delay = MIN_LISTEN_DELAY;
    let mut next = 0usize;
    let mut failed_in_a_row = 0usize;
    loop {
        let Some((timeout, name)) = tracker
            .upgrade()
            .map(|t| (t.timeout(), t.name().to_owned()))
        else {
            return;
        };
        let client = &sentinels[next % sentinels.len()];
        next = next.wrapping_add(1);
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(SWITCH_MASTER).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            other => {
                tracing::debug!(
                    sentinel = ?client.get_connection_info().addr(),
                    error = ?other.map(|r| r.err()),
                    "cannot subscribe to +switch-master; trying the next sentinel"
                );
                failed_in_a_row += 1;
                if failed_in_a_row >= sentinels.len() {
                    failed_in_a_row = 0;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_LISTEN_DELAY);
                }
                continue;
            }
        };
        failed_in_a_row = 0;
        delay = MIN_LISTEN_DELAY;
        match ready.take() {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => {
                let Some(t) = tracker.upgrade() else { return };
                let seen = t.current().generation;
                t.follow(seen).await;
            }
        }
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Some(t) = tracker.upgrade() else { return };
            if let Some(node) = parse_switch(msg.get_payload_bytes(), &name) {
                t.follow_announced(node).await;
            }
        }
        tracing::debug!(
            sentinel = ?client.get_connection_info().addr(),
            "the +switch-master subscription ended; subscribing on the next sentinel"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_messages_parse() {
        let node = parse_switch(b"mymaster 127.0.0.1 7001 127.0.0.1 7002", "mymaster");
        assert_eq!(
            node,
            Some(RedisNode {
                host: "127.0.0.1".into(),
                port: 7002
            })
        );
        assert_eq!(
            parse_switch(b"other 127.0.0.1 7001 127.0.0.1 7002", "mymaster"),
            None
        );
        assert_eq!(parse_switch(b"mymaster 127.0.0.1 7001", "mymaster"), None);
        assert_eq!(parse_switch(b"mymaster h 1 h notaport", "mymaster"), None);
        assert_eq!(parse_switch(b"\xff", "mymaster"), None);
    }
}
