//! The sentinels' `+switch-master` events: a task that stays subscribed
//! on one sentinel at a time and moves the [`MasterTracker`] to each new
//! master a sentinel announces. Every `master_check` it also asks that
//! sentinel which node is the master (`SENTINEL GET-MASTER-ADDR-BY-NAME`)
//! and follows the answer: an event can be missed (published while the
//! subscription was being set up again) and a move can fail (the new
//! master slow to answer), and a client whose old master is cut off from
//! the sentinels, but not from it, would otherwise go on writing there
//! until the partition heals. A sentinel that does not answer within
//! `connect_timeout` is left for the next one.

use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use redis::RedisError;
use redis::aio::MultiplexedConnection;
use tokio::sync::oneshot;
use tokio::time::{Instant, Interval, MissedTickBehavior};

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

/// The master `sentinel` names for `name`, unmapped; `None` when it knows
/// no such master.
async fn named_master(
    sentinel: &mut MultiplexedConnection,
    name: &str,
) -> redis::RedisResult<Option<RedisNode>> {
    let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(name)
        .query_async(sentinel)
        .await?;
    Ok(reply.map(|(host, port)| RedisNode { host, port }))
}

/// Whether a failed master check means the sentinel is unwell (no answer,
/// a broken connection): the listener then moves on to the next sentinel.
/// Any other failure is an answer the check cannot use (a refusal by the
/// sentinel's ACL, a reply of another shape), which another sentinel would
/// most likely give too: the check stops instead of reconnecting every
/// `master_check`.
fn sentinel_unwell(e: &RedisError) -> bool {
    e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The next tick of the master check, or never without one.
async fn next_check(check: &mut Option<Interval>) {
    match check {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Listens for `+switch-master` on one sentinel at a time, moving on to
/// the next when its connection ends or it stops answering the master
/// check. Signals `ready` once first subscribed; after a reconnect, looks
/// the master up (an event may have been missed meanwhile). Ends with the
/// tracker.
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
        let check_every = tracker.upgrade().and_then(|t| t.check_every());
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(SWITCH_MASTER).await?;
            let asker = match check_every {
                Some(_) => Some(client.get_multiplexed_async_connection().await?),
                None => None,
            };
            Ok::<_, RedisError>((pubsub, asker))
        })
        .await;
        let (pubsub, mut asker) = match subscribed {
            Ok(Ok(subscribed)) => subscribed,
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
        let mut check = check_every.map(|every| {
            let mut interval = tokio::time::interval_at(Instant::now() + every, every);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        let mut messages = pubsub.into_on_message();
        let why = loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break "the +switch-master subscription ended" };
                    let Some(t) = tracker.upgrade() else { return };
                    if let Some(node) = parse_switch(msg.get_payload_bytes(), &name) {
                        t.follow_announced(node).await;
                    }
                }
                () = next_check(&mut check) => {
                    let Some(asker) = asker.as_mut() else { continue };
                    match tokio::time::timeout(timeout, named_master(asker, &name)).await {
                        Ok(Ok(Some(node))) => {
                            let Some(t) = tracker.upgrade() else { return };
                            t.follow_announced(node).await;
                        }
                        // Not monitored (yet) by this sentinel: stay.
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) if sentinel_unwell(&e) => {
                            break "the sentinel failed the master check"
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(
                                sentinel = ?client.get_connection_info().addr(),
                                error = %e,
                                "the sentinel refuses SENTINEL GET-MASTER-ADDR-BY-NAME; the \
                                 master check stops (allow the command to the sentinel user, \
                                 or set master_check=off); failovers are still followed on \
                                 +switch-master and on failed requests"
                            );
                            check = None;
                        }
                        Err(_) => break "the sentinel did not answer the master check in time",
                    }
                }
            }
        };
        tracing::debug!(
            sentinel = ?client.get_connection_info().addr(),
            "{why}; subscribing on the next sentinel"
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

    #[test]
    fn only_a_silent_or_broken_sentinel_is_left_for_the_next() {
        use redis::ErrorKind;
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(sentinel_unwell(&io));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(sentinel_unwell(&timeout));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(sentinel_unwell(&refused));
        // An ACL refusal or an unexpected reply: the check stops instead.
        let noperm =
            RedisError::from((ErrorKind::Server(redis::ServerErrorKind::NoPerm), "NOPERM"));
        assert!(!sentinel_unwell(&noperm));
        let shape = RedisError::from((ErrorKind::UnexpectedReturnType, "not an address"));
        assert!(!sentinel_unwell(&shape));
    }
}
