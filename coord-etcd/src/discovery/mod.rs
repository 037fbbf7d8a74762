//! [`RegistryBackend`] for [`EtcdBackend`]: one key per instance, attached
//! to a lease the client shares between all its registrations of one TTL
//! bucket, listed at one revision and watched from it.
//!
//! * Instance `id` of service `s` under namespace `ns` is the key
//!   `{ns}/discovery/{s}/{id}`; its value is the
//!   [record](coord_core::discovery::encode_record) (the instance and its
//!   owner, JSON). Service names have no `/` and ids none either, so the `/`
//!   after the service keeps `web` and `web-admin` apart and every key
//!   under a service's prefix is one of its instances.
//! * **Leases** ([`leases`]): one per client and TTL bucket (the TTL rounded
//!   up to whole seconds, at least etcd's minimum of 2 s), granted on first
//!   use and shared by every registration of that bucket, so 10,000
//!   instances of one client cost one lease and one keep-alive per period.
//!   Nothing keeps a lease alive on its own: the registrations' renewals do
//!   (the first renewal that finds the last keep-alive more than a third of
//!   the lease old sends one), so a process that dies loses its instances
//!   after their TTL. A registry lease is never shared with locks.
//!   [`LockBackend::close`](coord_core::LockBackend::close) revokes the
//!   registry's leases with the locks', removing the client's instances.
//! * **Writes** ([`write`](mod@write)): register is a plain put on the lease (the
//!   newest registration of an id wins); renew keeps the lease alive and
//!   reads the key to tell `Renewed`, `Missing` and `Replaced` apart;
//!   deregister deletes the key only while it holds the caller's record
//!   (a read, then a delete guarded by the key's mod revision); abandon
//!   moves the key to a lease of its own that nobody renews (the shared
//!   lease lives on for the client's other registrations).
//! * **Reads** ([`read`]): a service's listing is a range over its prefix,
//!   in pages of [`read::PAGE`] keys pinned to the first page's revision,
//!   so 10,000 instances list as one snapshot whose revision a watch can
//!   start from. A corrupted entry is **skipped** with a warning (one bad
//!   key must not hide a service's other instances), as on Redis.
//! * **Watches** ([`watch`]): from the listing's revision + 1 on the
//!   service's prefix; a compacted start revision or a watch etcd cancels
//!   is a [`RegistryEvent::Gap`](coord_core::discovery::RegistryEvent::Gap)
//!   (the watcher lists again), a lost connection ends the stream.

mod leases;
mod read;
mod watch;
mod write;

use std::time::Duration;

use coord_core::discovery::{
    RegistryBackend, RegistryEvents, RegistryListing, RenewOutcome, ServiceInstance,
};
use coord_core::{ComponentHealth, Result, async_trait};

use crate::backend::EtcdBackend;
use crate::lease::PooledLease;

impl EtcdBackend {
    /// The prefix of every key of the registry: `{namespace}/discovery/`.
    pub fn registry_root(&self) -> String {
        format!("{}discovery/", self.inner.prefix)
    }

    /// The prefix of the keys of `service`'s instances:
    /// `{namespace}/discovery/{service}/`; instance `id` is this followed by `id`.
    pub fn registry_prefix(&self, service: &str) -> String {
        format!("{}discovery/{service}/", self.inner.prefix)
    }

    /// The leases this client's registrations are attached to right now,
    /// at most one per TTL bucket however many instances it registered.
    pub fn registry_leases(&self) -> Vec<PooledLease> {
        self.inner.registry_leases.list()
    }

    fn instance_key(&self, service: &str, id: &str) -> String {
        let mut key = self.registry_prefix(service);
        key.push_str(id);
        key
    }
}

/// The end of the range of keys that start with `prefix` (which ends in
/// `/`): the same bytes with the `/` replaced by the next byte, `0`.
fn range_end(prefix: &str) -> String {
    debug_assert!(prefix.ends_with('/'));
    let mut end = prefix[..prefix.len() - 1].to_owned();
    end.push('0');
    end
}

#[async_trait]
impl RegistryBackend for EtcdBackend {
    fn registry_backend_name(&self) -> &'static str {
        "etcd"
    }

    async fn register(&self, instance: &ServiceInstance, owner: &str, ttl: Duration) -> Result<()> {
        self.registry_put(instance, owner, ttl).await
    }

    async fn renew_instance(
        &self,
        service: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<RenewOutcome> {
        self.registry_renew(service, id, owner, ttl).await
    }

    async fn deregister(&self, service: &str, id: &str, owner: &str) -> Result<bool> {
        self.registry_delete(service, id, owner).await
    }

    async fn abandon(&self, service: &str, id: &str, owner: &str, ttl: Duration) -> Result<()> {
        self.registry_abandon(service, id, owner, ttl).await
    }

    async fn services(&self) -> Result<Vec<String>> {
        self.registry_services().await
    }

    async fn list_instances(&self, service: &str) -> Result<RegistryListing> {
        self.registry_list(service).await
    }

    async fn watch_instances(&self, service: &str, revision: u64) -> Result<RegistryEvents> {
        self.registry_watch(service, revision).await
    }

    async fn registry_health(&self) -> ComponentHealth {
        self.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_the_slash() {
        assert_eq!(range_end("ns/discovery/web/"), "ns/discovery/web0");
        // `web-admin/…` sorts before `web/` and `web.x/…` before `web0`:
        // neither is inside `web`'s range.
        let (start, end) = ("ns/discovery/web/", range_end("ns/discovery/web/"));
        for other in ["ns/discovery/web-admin/a", "ns/discovery/web.x/a"] {
            assert!(!(start..end.as_str()).contains(&other), "{other}");
        }
        assert!((start..end.as_str()).contains(&"ns/discovery/web/a"));
    }
}
