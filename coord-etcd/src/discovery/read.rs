//! Listing a service's instances and the services.
//!
//! Both read in pages of [`PAGE`] keys: etcd-client refuses answers over
//! 4 MiB by default, and a page of records of up to
//! [`MAX_INSTANCE_BYTES`] each needs more, so pages are read with a
//! decoding limit that fits a full page of the largest records. A
//! listing's pages after the first are read at the first page's revision:
//! the listing is one snapshot, and a watch from its revision misses
//! nothing. Should etcd compact that revision between two pages, the
//! listing starts over.

use coord_core::discovery::{
    MAX_INSTANCE_BYTES, RegistryListing, ServiceInstance, decode_record, validate_instance_id,
    validate_service_name,
};
use coord_core::{Error, Result};
use etcd_client::{GetOptions, GetResponse, KvClient};

use super::range_end;
use crate::backend::EtcdBackend;
use crate::error::{deadline, map};

/// Keys per page.
pub(super) const PAGE: i64 = 1000;

/// The largest answer a page may be: a page of the largest records, with
/// room for their keys and owners.
const MAX_PAGE_BYTES: usize = PAGE as usize * (MAX_INSTANCE_BYTES + 1024);

/// How many times a listing starts over after etcd compacted the revision
/// it was reading at.
const LIST_TRIES: usize = 3;

impl EtcdBackend {
    fn registry_reader(&self) -> KvClient {
        self.inner
            .client
            .kv_client()
            .max_decoding_message_size(MAX_PAGE_BYTES)
    }

    /// Reads up to [`PAGE`] keys of `[start, end)` at `revision` (0: now);
    /// `None` if etcd compacted `revision` meanwhile.
    async fn page(
        &self,
        kv: &mut KvClient,
        what: &str,
        start: Vec<u8>,
        end: &str,
        revision: i64,
        keys_only: bool,
    ) -> Result<Option<GetResponse>> {
        let mut options = GetOptions::new()
            .with_range(end)
            .with_limit(PAGE)
            .with_revision(revision);
        if keys_only {
            options = options.with_keys_only();
        }
        match deadline(what, self.inner.timeout, kv.get(start, Some(options))).await? {
            Ok(resp) => Ok(Some(resp)),
            Err(e) if revision > 0 && e.to_string().contains("compacted") => Ok(None),
            Err(e) => Err(map(what, e)),
        }
    }

    pub(super) async fn registry_list(&self, service: &str) -> Result<RegistryListing> {
        for _ in 0..LIST_TRIES {
            if let Some(listing) = self.list_once(service).await? {
                return Ok(listing);
            }
            tracing::debug!(
                service,
                "etcd compacted the revision of a listing; listing again"
            );
        }
        Err(Error::backend(
            "etcd",
            format!("list {service}: etcd compacted the history under every listing; try again"),
            true,
            None,
        ))
    }

    /// One listing at one revision; `None` if that revision was compacted
    /// before its last page was read.
    async fn list_once(&self, service: &str) -> Result<Option<RegistryListing>> {
        let prefix = self.registry_prefix(service);
        let end = range_end(&prefix);
        let mut kv = self.registry_reader();
        let mut start = prefix.clone().into_bytes();
        let mut revision = 0;
        let mut instances = Vec::new();
        loop {
            let what = "list a service";
            let page = self.page(&mut kv, what, start, &end, revision, false);
            let Some(resp) = page.await? else {
                return Ok(None);
            };
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for entry in resp.kvs() {
                if let Some(instance) = instance_of(entry.key(), entry.value(), &prefix, service) {
                    instances.push(instance);
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => start = after(last.key()),
                _ => break,
            }
        }
        let revision = u64::try_from(revision)
            .ok()
            .filter(|r| *r > 0)
            .ok_or_else(|| Error::backend("etcd", "a listing without a revision", false, None))?;
        Ok(Some(RegistryListing {
            instances,
            revision,
        }))
    }

    /// The services with at least one key: pages of keys only, each
    /// starting after the last service seen (its other keys are skipped).
    pub(super) async fn registry_services(&self) -> Result<Vec<String>> {
        let root = self.registry_root();
        let end = range_end(&root);
        let mut kv = self.registry_reader();
        let mut start = root.clone().into_bytes();
        let mut names: Vec<String> = Vec::new();
        loop {
            let what = "list the services";
            // Not pinned to a revision: never compacted.
            let page = self.page(&mut kv, what, start, &end, 0, true);
            let Some(resp) = page.await? else { break };
            for entry in resp.kvs() {
                if let Some(name) = service_of(entry.key(), &root)
                    && names.last().is_none_or(|last| last != name)
                {
                    names.push(name.to_owned());
                }
            }
            let Some(last) = resp.kvs().last() else { break };
            if !resp.more() {
                break;
            }
            start = after(last.key());
            if let Some(name) = service_of(last.key(), &root) {
                // Past every key of `name`: `{root}{name}0` (`0` follows `/`).
                let skip = format!("{root}{name}0").into_bytes();
                start = start.max(skip);
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// The smallest key after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The service of a registry key `{root}{service}/{id}`, if it is one.
fn service_of<'a>(key: &'a [u8], root: &str) -> Option<&'a str> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(root)?;
    let (service, id) = rest.split_once('/')?;
    (validate_service_name(service).is_ok() && validate_instance_id(id).is_ok()).then_some(service)
}

/// The id of a key under a service's `prefix`, if it is an instance's key.
pub(super) fn id_of<'a>(key: &'a [u8], prefix: &str) -> Option<&'a str> {
    let id = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    validate_instance_id(id).is_ok().then_some(id)
}

/// The instance stored at `key`; `None`, with a warning, for a key that is
/// not an instance's or a value that is not its record.
pub(super) fn instance_of(
    key: &[u8],
    value: &[u8],
    prefix: &str,
    service: &str,
) -> Option<ServiceInstance> {
    let at = String::from_utf8_lossy(key);
    let Some(id) = id_of(key, prefix) else {
        tracing::warn!(key = %at, "skipped a key that is no instance's under a service's prefix");
        return None;
    };
    match decode_record(value, &at) {
        Ok((_, instance)) if instance.id == id && instance.service == service => Some(instance),
        Ok((_, instance)) => {
            tracing::warn!(
                key = %at,
                service = %instance.service,
                id = %instance.id,
                "skipped a registry entry stored under another instance's key"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "skipped a corrupted registry entry");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_into_services_and_ids() {
        let root = "ns/discovery/";
        assert_eq!(service_of(b"ns/discovery/web/a", root), Some("web"));
        assert_eq!(
            service_of(b"ns/discovery/web-admin/a", root),
            Some("web-admin")
        );
        assert_eq!(service_of(b"ns/discovery/web", root), None, "no id");
        assert_eq!(service_of(b"ns/discovery/web/", root), None, "empty id");
        assert_eq!(service_of(b"ns/discovery/a:b/x", root), None, "not a name");
        assert_eq!(service_of(b"ns/discovery/web/a/b", root), None, "not an id");
        assert_eq!(
            id_of(b"ns/discovery/web/i-1", "ns/discovery/web/"),
            Some("i-1")
        );
        assert_eq!(id_of(b"ns/discovery/web/x/y", "ns/discovery/web/"), None);
        assert_eq!(after(b"ab"), b"ab\0");
    }

    #[test]
    fn only_a_matching_record_is_an_instance() {
        let prefix = "ns/discovery/web/";
        let i = ServiceInstance::new("web", "a", "127.0.0.1:1");
        let record = coord_core::discovery::encode_record(&i, "o").unwrap();
        assert_eq!(
            instance_of(b"ns/discovery/web/a", &record, prefix, "web"),
            Some(i)
        );
        assert_eq!(
            instance_of(b"ns/discovery/web/b", &record, prefix, "web"),
            None
        );
        assert_eq!(
            instance_of(b"ns/discovery/web/a", b"garbage", prefix, "web"),
            None
        );
    }
}
