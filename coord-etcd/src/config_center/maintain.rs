//! Compaction of a key's old versions, and freezing.

use coord_core::Result;
use etcd_client::{DeleteOptions, GetOptions};

use crate::backend::EtcdBackend;
use crate::error::call;

impl EtcdBackend {
    /// Deletes the versions of `key` older than its newest `keep_last` (at
    /// least 1) in one delete of their range. Versions are consecutive up to
    /// the latest, so they are those below `latest + 1 - keep_last`; the
    /// latest version's key is always kept (its marker holds its record too,
    /// but histories read versions' keys). A write racing with it only means
    /// more versions are kept.
    pub(super) async fn config_drop_old(&self, key: &str, keep_last: usize) -> Result<u64> {
        let what = "compact a config key's history";
        let layout = self.config_layout();
        let mut kv = self.inner.client.kv_client();
        let keep = u64::try_from(keep_last.max(1)).unwrap_or(u64::MAX);
        let Some(marker) = self
            .config_latest_marker(&mut kv, &layout, key, what)
            .await?
        else {
            return Ok(0);
        };
        let latest = marker.version;
        if latest <= keep {
            return Ok(0);
        }
        let first_kept = layout.version(key, latest - keep + 1);
        let options = DeleteOptions::new().with_range(first_kept);
        let delete = kv.delete(layout.versions(key).start, Some(options));
        let resp = call(what, self.inner.timeout, delete).await?;
        Ok(u64::try_from(resp.deleted()).unwrap_or(0))
    }

    /// Puts (frozen) or deletes (not) `scope`'s frozen marker.
    pub(super) async fn config_mark_frozen(&self, scope: &str, frozen: bool) -> Result<()> {
        let marker = self.config_layout().frozen(scope);
        let mut kv = self.inner.client.kv_client();
        if frozen {
            let put = kv.put(marker, "", None);
            call("freeze config", self.inner.timeout, put).await?;
        } else {
            let delete = kv.delete(marker, None);
            call("unfreeze config", self.inner.timeout, delete).await?;
        }
        Ok(())
    }

    /// The frozen scopes of `namespace` (itself and its keys), sorted.
    pub(super) async fn config_frozen_scopes(&self, namespace: &str) -> Result<Vec<String>> {
        let layout = self.config_layout();
        let range = layout.frozen_range(namespace);
        let options = GetOptions::new().with_range(range.end).with_keys_only();
        let mut kv = self.inner.client.kv_client();
        let get = kv.get(range.start, Some(options));
        let resp = call("list frozen config", self.inner.timeout, get).await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|m| layout.scope_of(m.key(), namespace))
            .map(str::to_owned)
            .collect())
    }
}
