//! A lock holder whose link to the server is blackholed by a [`FaultProxy`]:
//! the scenario every backend's fault tests run against a real server.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::lock::{FencingToken, LockBackend, LockClient};
use crate::retry::RetryPolicy;
use crate::testkit::{AuditedResource, FaultProxy, Fencing, LOSS_MARGIN, unique_name, within};

/// How the holder's client of [`blackholed_holder_is_refused_by_fencing`]
/// gets its link back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AfterHeal {
    /// The proxy heals and its open connections flow again: the client must
    /// recover on the connection it has.
    Flow,
    /// The proxy heals and resets the connections it kept open, so the
    /// client must reconnect. For a client whose connection cannot survive
    /// the bytes the blackhole swallowed for good (a real partition
    /// swallows nothing: TCP resends the bytes): a multiplexed connection
    /// that pairs replies with requests by their order, and keeps using the
    /// connection after a timeout, hands each later reply to an earlier,
    /// abandoned request. (coord's Redis backend gives such a connection up
    /// after a timeout, and is tested with [`AfterHeal::Flow`].)
    ResetConnections,
}

/// What [`blackholed_holder_is_refused_by_fencing`] measured, from the
/// moment the link was blackholed.
#[derive(Debug)]
#[non_exhaustive]
pub struct BlackholedHolderReport {
    /// Until the holder's guard was at risk.
    pub at_risk_after: Duration,
    /// Until the holder's guard was lost.
    pub lost_after: Duration,
    /// How long a call through the blackholed link took to fail.
    pub failed_call_took: Duration,
    /// The failed call's error.
    pub failed_call: Error,
    /// Until the direct client was granted the lock.
    pub contender_granted_after: Duration,
    /// The tokens of the holder, the contender and the holder again after
    /// the heal.
    pub tokens: [FencingToken; 3],
}

/// A holder reaching the server through `proxy` (its client `proxied`)
/// holds a lease lock with fencing; then the link is blackholed. Checks:
///
/// * the holder's guard is at risk while still held, then lost, each
///   within the TTL (and [`LOSS_MARGIN`]) of the cut;
/// * a call through the blackholed client fails within `request_timeout`
///   (and a second of slack) instead of hanging;
/// * a contender on `direct` (another client, straight to the server) is
///   granted the lock within the TTL and a second of the cut (no renewal
///   reaches the server after it), with a greater token;
/// * the holder's late write with its old token is refused by fencing and
///   the [`FenceAudit`](crate::testkit::FenceAudit) stays clean;
/// * once the link heals (and, with [`AfterHeal::ResetConnections`], the
///   proxy resets its open connections), the holder's client works again:
///   it is granted the lock after the contender releases it.
///
/// The holder's client does not retry (its renewals fail after one
/// `request_timeout`, which is what makes the guard at risk before its
/// lease runs out); `ttl` should leave room for that (a few seconds).
pub async fn blackholed_holder_is_refused_by_fencing(
    proxy: &FaultProxy,
    proxied: Arc<dyn LockBackend>,
    direct: Arc<dyn LockBackend>,
    ttl: Duration,
    request_timeout: Duration,
    after_heal: AfterHeal,
) -> BlackholedHolderReport {
    let name = unique_name("blackholed-holder");
    let poll = Duration::from_millis(100);
    let holder = LockClient::builder(proxied.clone())
        .retry(RetryPolicy::none())
        .build()
        .expect("a lock client");
    let lock = holder
        .lock(name.clone())
        .ttl(ttl)
        .poll_interval(poll)
        .build();
    let guard = within(
        Duration::from_secs(30),
        "the holder acquires through the proxy",
        lock.acquire(),
    )
    .await
    .expect("the holder acquires a free lock");
    let old = guard.fencing_token();
    let resource = AuditedResource::new(Fencing::On);
    resource
        .write("holder", old)
        .expect("the holder's write before the cut is accepted");

    proxy.blackhole();
    let cut = Instant::now();
    let contender = tokio::spawn({
        let lock = LockClient::new(direct)
            .lock(name.clone())
            .ttl(ttl)
            .poll_interval(poll)
            .build();
        async move { lock.acquire().await }
    });

    within(
        ttl,
        "the blackholed holder's guard is at risk",
        guard.at_risk(),
    )
    .await;
    let at_risk_after = cut.elapsed();
    assert!(
        guard.is_at_risk() && guard.is_held(),
        "at risk before the lease runs out, not lost at once ({at_risk_after:?} after the cut)"
    );

    let started = Instant::now();
    let failed_call = within(
        request_timeout + Duration::from_secs(1),
        "a call through the blackholed link fails",
        proxied.inspect(&name),
    )
    .await
    .expect_err("nothing answers through a blackhole");
    let failed_call_took = started.elapsed();

    within(
        (cut + ttl + LOSS_MARGIN).saturating_duration_since(Instant::now()),
        "the blackholed holder's guard is lost",
        guard.lost(),
    )
    .await;
    let lost_after = cut.elapsed();
    assert!(!guard.is_held());

    let second = within(
        (cut + ttl + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
        "the direct client is granted the lock after the holder's lease",
        contender,
    )
    .await
    .expect("the contender's task")
    .expect("the contender acquires");
    let contender_granted_after = cut.elapsed();
    let new = second.fencing_token();
    assert!(new > old, "{new} after {old}");
    resource
        .write("contender", new)
        .expect("the contender's write is accepted");
    let late = resource.write("holder", old);
    assert!(
        matches!(late, Err(Error::Conflict { .. })),
        "the old holder's write must be refused: {late:?}"
    );
    let audit = resource.audit();
    assert_eq!(
        audit.violations(),
        Vec::<String>::new(),
        "{:?}",
        audit.writes()
    );

    proxy.heal();
    if after_heal == AfterHeal::ResetConnections {
        proxy.reset_open();
    }
    drop(guard);
    second.release().await.expect("the contender releases");
    let again = within(
        Duration::from_secs(20),
        "the holder's client is granted the lock again once the link heals",
        async {
            loop {
                match lock.acquire().await {
                    Ok(guard) => break guard,
                    Err(e) if e.is_retryable() => tokio::time::sleep(poll).await,
                    Err(e) => panic!("acquire after the heal: {e}"),
                }
            }
        },
    )
    .await;
    let newest = again.fencing_token();
    assert!(newest > new, "{newest} after {new}");
    resource
        .write("holder-again", newest)
        .expect("the holder's write after the heal is accepted");
    again.release().await.expect("release after the heal");
    BlackholedHolderReport {
        at_risk_after,
        lost_after,
        failed_call_took,
        failed_call,
        contender_granted_after,
        tokens: [old, new, newest],
    }
}
