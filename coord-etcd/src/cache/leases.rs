//! Leases for cache TTLs: one per TTL bucket at a time, shared by every
//! entry written with a TTL of that bucket, and never kept alive, so its
//! entries go when it expires.
//!
//! A lease of bucket `b` seconds is granted for `b + slack` seconds
//! (`slack` = a tenth of `b`, at least one second) and used for writes
//! during its first `slack` seconds only: an entry written with TTL `t`
//! lives between `b ≥ t` and `b + slack` seconds. Constant writes of one
//! TTL so need a new lease every `slack` seconds, not one per key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use coord_core::Result;
use etcd_client::LeaseClient;
use tokio::time::Instant;

use crate::error::call;
use crate::lease::MIN_LEASE_SECS;

/// The leases of one client's caches, by TTL bucket.
pub(crate) struct CacheLeases {
    client: LeaseClient,
    timeout: Duration,
    /// Bucket → (lease id, when it stops taking new entries).
    current: Mutex<HashMap<u64, (i64, Instant)>>,
    granting: tokio::sync::Mutex<()>,
}

/// The bucket of a TTL: whole seconds, at least etcd's shortest lease.
fn bucket(ttl: Duration) -> u64 {
    let secs = ttl.as_nanos().div_ceil(1_000_000_000);
    u64::try_from(secs).unwrap_or(u64::MAX).max(MIN_LEASE_SECS)
}

fn slack(bucket: u64) -> u64 {
    (bucket / 10).max(1)
}

impl CacheLeases {
    pub(crate) fn new(client: LeaseClient, timeout: Duration) -> Self {
        CacheLeases {
            client,
            timeout,
            current: Mutex::new(HashMap::new()),
            granting: tokio::sync::Mutex::new(()),
        }
    }

    fn usable(&self, bucket: u64) -> Option<i64> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .get(&bucket)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(id, _)| *id)
    }

    /// A lease under which an entry lives at least `ttl`.
    pub(crate) async fn for_ttl(&self, ttl: Duration) -> Result<i64> {
        let bucket = bucket(ttl);
        if let Some(id) = self.usable(bucket) {
            return Ok(id);
        }
        let _granting = self.granting.lock().await;
        if let Some(id) = self.usable(bucket) {
            return Ok(id);
        }
        let slack = slack(bucket);
        let asked = Instant::now();
        let ttl_secs = i64::try_from(bucket + slack).unwrap_or(i64::MAX);
        let mut client = self.client.clone();
        let granted = call(
            "grant a cache lease",
            self.timeout,
            client.grant(ttl_secs, None),
        )
        .await?;
        let id = granted.id();
        // Counted from before the request: the lease surely lives `bucket`
        // more seconds for writes until then.
        let until = asked + Duration::from_secs(slack);
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bucket, (id, until));
        Ok(id)
    }

    /// Forgets `id` (etcd no longer knows it): the next write grants anew.
    pub(crate) fn forget(&self, id: i64) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (lease, _)| *lease != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_and_slack_is_a_tenth() {
        assert_eq!(bucket(Duration::from_millis(500)), MIN_LEASE_SECS);
        assert_eq!(bucket(Duration::from_millis(60_001)), 61);
        assert_eq!(slack(2), 1);
        assert_eq!(slack(300), 30);
    }
}
