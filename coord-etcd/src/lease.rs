//! Leases shared by every lock of one client, one per TTL bucket, like the
//! session of etcd's `concurrency` package.
//!
//! Nothing here keeps a lease alive on its own: the lock watchdog's
//! `renew()` calls do, so a client that stops renewing really loses its locks
//! after their TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use coord_core::{Error, Result};
use etcd_client::{LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use tokio::time::Instant;

use crate::error::{call, deadline, is_lease_not_found, map};
use crate::raft_term::RaftTerms;

/// The shortest lease etcd grants (its minimum TTL is 1.5 × the election timeout).
pub(crate) const MIN_LEASE_SECS: u64 = 2;

/// A lease of the pool, as [`EtcdBackend::leases`](crate::EtcdBackend::leases) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PooledLease {
    /// etcd's lease id.
    pub id: i64,
    /// The TTL etcd granted.
    pub ttl: Duration,
}

/// How long a background revocation keeps trying while etcd does not answer.
const REVOKE_RETRY_FOR: Duration = Duration::from_secs(300);

/// The longest pause between two tries of a background revocation: etcd's
/// return is noticed within about this long.
const REVOKE_RETRY_MAX_DELAY: Duration = Duration::from_millis(500);

/// The TTL bucket (whole seconds, at least [`MIN_LEASE_SECS`]) of a lock TTL.
pub(crate) fn bucket(ttl: Duration) -> u64 {
    let secs = ttl.as_nanos().div_ceil(1_000_000_000);
    u64::try_from(secs).unwrap_or(u64::MAX).max(MIN_LEASE_SECS)
}

/// One shared lease.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) id: i64,
    pub(crate) ttl: Duration,
    /// A lower bound of when etcd expires the lease: the instant before the
    /// last successful grant or keep-alive request was sent, plus the TTL.
    alive_until: Mutex<Instant>,
    /// The keep-alive stream, opened on first use. Its lock also coalesces
    /// concurrent keep-alives.
    keeper: tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

impl Lease {
    pub(crate) fn alive_until(&self) -> Instant {
        *lock(&self.alive_until)
    }

    fn set_alive_until(&self, until: Instant) {
        let mut a = lock(&self.alive_until);
        *a = (*a).max(until);
    }

    /// How long the lease surely lives from `now`.
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        self.alive_until().saturating_duration_since(now)
    }
}

/// Whether a keep-alive found the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    Alive,
    Gone,
}

/// The leases of one client, keyed by TTL bucket.
pub(crate) struct LeasePool {
    client: LeaseClient,
    timeout: Duration,
    leases: Mutex<HashMap<u64, Arc<Lease>>>,
    /// Serialises grants, so concurrent first acquisitions share one lease.
    granting: tokio::sync::Mutex<()>,
    /// The highest raft term seen, to refuse keep-alives of a deposed leader.
    terms: RaftTerms,
}

impl LeasePool {
    pub(crate) fn new(client: LeaseClient, timeout: Duration) -> Self {
        LeasePool {
            client,
            timeout,
            leases: Mutex::new(HashMap::new()),
            granting: tokio::sync::Mutex::new(()),
            terms: RaftTerms::default(),
        }
    }

    /// Notes the raft term of an answer about this pool's leases or the
    /// keys on them (see [`RaftTerms`]).
    pub(crate) fn observe(&self, header: Option<&etcd_client::ResponseHeader>) {
        self.terms.observe(header);
    }

    /// The bucket's lease if the pool has one.
    pub(crate) fn get(&self, bucket: u64) -> Option<Arc<Lease>> {
        lock(&self.leases).get(&bucket).cloned()
    }

    /// The bucket's lease, alive for at least `min_remaining` from `now`:
    /// kept alive first when it would not be, granted when there is none or
    /// etcd no longer knows it. In steady use this makes no request.
    pub(crate) async fn fresh(
        &self,
        bucket: u64,
        now: Instant,
        min_remaining: Duration,
    ) -> Result<Arc<Lease>> {
        if let Some(lease) = self.get(bucket) {
            if lease.remaining(now) >= min_remaining {
                return Ok(lease);
            }
            if lease.remaining(now).is_zero() {
                // Its guaranteed life ran out: every hold on it is lost (its
                // guards were or will be told so). Never bring it back, even
                // if etcd restored it after a restart: its keys would live on
                // as holds nobody has. Revoke it (deleting them) and start
                // a new lease.
                self.discard(&lease);
                self.revoke_in_background(lease.id);
                return self.grant(bucket).await;
            }
            match self.keep_alive(&lease, now + min_remaining).await? {
                KeepAlive::Alive => return Ok(lease),
                KeepAlive::Gone => self.discard(&lease),
            }
        }
        self.grant(bucket).await
    }

    /// Grants a new lease for `bucket` unless another task just did.
    pub(crate) async fn grant(&self, bucket: u64) -> Result<Arc<Lease>> {
        let _granting = self.granting.lock().await;
        if let Some(lease) = self.get(bucket)
            && lease.remaining(Instant::now()) > Duration::ZERO
        {
            return Ok(lease);
        }
        let secs = i64::try_from(bucket).unwrap_or(i64::MAX);
        let sent_at = Instant::now();
        let mut client = self.client.clone();
        let resp = call("grant a lease", self.timeout, client.grant(secs, None)).await?;
        self.terms.observe(resp.header());
        let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0).max(1));
        let lease = Arc::new(Lease {
            id: resp.id(),
            ttl,
            alive_until: Mutex::new(sent_at + ttl),
            keeper: tokio::sync::Mutex::new(None),
        });
        tracing::debug!(lease = lease.id, ttl = ?ttl, "granted an etcd lease");
        lock(&self.leases).insert(bucket, lease.clone());
        Ok(lease)
    }

    /// Forgets a lease etcd no longer knows (unless it was replaced already).
    pub(crate) fn discard(&self, lease: &Lease) {
        let mut leases = lock(&self.leases);
        leases.retain(|_, l| l.id != lease.id);
    }

    /// Makes sure `lease` lives at least until `needed_until`: sends a
    /// keep-alive unless an earlier one (possibly another task's, which this
    /// call waits for instead of sending its own) already guarantees it.
    pub(crate) async fn keep_alive(
        &self,
        lease: &Lease,
        needed_until: Instant,
    ) -> Result<KeepAlive> {
        if lease.alive_until() >= needed_until {
            return Ok(KeepAlive::Alive);
        }
        let mut keeper = lease.keeper.lock().await;
        if lease.alive_until() >= needed_until {
            return Ok(KeepAlive::Alive);
        }
        let now = Instant::now();
        let sent_at = now;
        let result = tokio::time::timeout(
            self.timeout,
            self.keep_alive_once(&mut keeper, lease.id, lease.ttl),
        )
        .await;
        match result {
            Ok(Ok(Some(ttl))) => {
                lease.set_alive_until(sent_at + ttl);
                Ok(KeepAlive::Alive)
            }
            Ok(Ok(None)) => {
                *keeper = None;
                tracing::debug!(lease = lease.id, "etcd lease has expired");
                Ok(KeepAlive::Gone)
            }
            Ok(Err(e)) => {
                *keeper = None;
                Err(e)
            }
            Err(_) => {
                // A late answer would be read as the next one's: start afresh.
                *keeper = None;
                Err(Error::Timeout(format!(
                    "keep-alive of etcd lease {:x}: no answer within {:?}",
                    lease.id, self.timeout
                )))
            }
        }
    }

    /// One keep-alive request on the open stream, or on a new one. `None`
    /// when etcd no longer knows the lease.
    async fn keep_alive_once(
        &self,
        keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
        id: i64,
        ttl: Duration,
    ) -> Result<Option<Duration>> {
        // A broken stream or a deposed leader's answer: once more on a new
        // stream (which may reach another member), then the error.
        let mut last = String::new();
        for _ in 0..2 {
            let (mut k, mut stream) = match keeper.take() {
                Some(open) => open,
                None => {
                    let mut client = self.client.clone();
                    match client.keep_alive(id).await {
                        // Opening the stream sent one keep-alive and checked
                        // its answer, but keeps its header: the renewal
                        // counted is the next one, whose raft term is checked.
                        Ok(open) => open,
                        Err(e) if is_lease_not_found(&e) => return Ok(None),
                        Err(e) => return Err(map("keep an etcd lease alive", e)),
                    }
                }
            };
            let answer = match k.keep_alive().await {
                Ok(()) => stream.message().await,
                Err(e) => Err(e),
            };
            let resp = match answer {
                Ok(Some(resp)) => resp,
                // The stream broke (server restart, connection reset).
                Ok(None) | Err(_) => {
                    last = format!("the keep-alive stream of etcd lease {id:x} broke");
                    continue;
                }
            };
            if let Some((term, highest)) = self.terms.stale(resp.header()) {
                // A deposed leader's answer: the current leader may have
                // revoked the lease already. Not a renewal.
                tracing::debug!(
                    lease = id,
                    term,
                    highest,
                    "a deposed etcd leader answered a keep-alive"
                );
                last = format!(
                    "keep-alive of etcd lease {id:x} answered at raft term {term}, older \
                     than term {highest} already seen (a deposed leader); not counted as a \
                     renewal"
                );
                continue;
            }
            self.terms.observe(resp.header());
            if resp.ttl() <= 0 {
                return Ok(None);
            }
            *keeper = Some((k, stream));
            return Ok(Some(
                Duration::from_secs(resp.ttl().unsigned_abs()).min(ttl),
            ));
        }
        Err(Error::unavailable(last, None))
    }

    /// Revokes lease `id` in the background (its keys go with it), retrying
    /// until etcd answers, for up to [`REVOKE_RETRY_FOR`]: a lease whose
    /// holds were lost is often revoked while etcd is down, and etcd restores
    /// leases with a fresh TTL when it comes back, so a revocation given up
    /// too early would leave the lost holds' keys blocking the name for one
    /// more TTL. Past that bound the lease expires with its TTL, as nobody
    /// keeps it alive.
    pub(crate) fn revoke_in_background(&self, id: i64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (mut client, timeout) = (self.client.clone(), self.timeout);
        handle.spawn(async move {
            let give_up = Instant::now() + REVOKE_RETRY_FOR;
            let mut delay = Duration::from_millis(50);
            loop {
                let error = match deadline("revoke a lease", timeout, client.revoke(id)).await {
                    Ok(Ok(_)) => {
                        tracing::debug!(lease = id, "revoked a lost etcd lease and its keys");
                        return;
                    }
                    Ok(Err(e)) if is_lease_not_found(&e) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                if Instant::now() + delay > give_up {
                    tracing::warn!(lease = id, error = %error, "could not revoke a lost etcd lease; it expires with its TTL");
                    return;
                }
                tracing::debug!(lease = id, error = %error, "could not revoke a lost etcd lease yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(REVOKE_RETRY_MAX_DELAY);
            }
        });
    }

    /// The pool's leases.
    pub(crate) fn list(&self) -> Vec<PooledLease> {
        let mut v: Vec<_> = lock(&self.leases)
            .values()
            .map(|l| PooledLease {
                id: l.id,
                ttl: l.ttl,
            })
            .collect();
        v.sort_by_key(|l| l.ttl);
        v
    }

    /// Revokes every lease of the pool (their keys go with them).
    pub(crate) async fn revoke_all(&self) {
        let leases: Vec<_> = lock(&self.leases).drain().map(|(_, l)| l).collect();
        for lease in leases {
            let mut client = self.client.clone();
            if let Err(e) = call("revoke a lease", self.timeout, client.revoke(lease.id)).await {
                tracing::debug!(lease = lease.id, error = %e, "could not revoke an etcd lease; it expires with its TTL");
            }
        }
    }
}

impl std::fmt::Debug for LeasePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasePool")
            .field("leases", &self.list())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent even if a holder panicked: every update is one assignment.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_to_whole_seconds_of_at_least_two() {
        assert_eq!(bucket(Duration::from_millis(1)), 2);
        assert_eq!(bucket(Duration::from_secs(2)), 2);
        assert_eq!(bucket(Duration::from_millis(2001)), 3);
        assert_eq!(bucket(Duration::from_secs(10)), 10);
        assert_eq!(bucket(Duration::from_millis(9500)), 10);
    }
}
