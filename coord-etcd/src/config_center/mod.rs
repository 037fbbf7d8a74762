//! [`ConfigBackend`] for [`EtcdBackend`]: the config center's versions kept
//! as keys of their own, compare-and-set in one transaction per write.
//!
//! * **Layout** ([`layout`]): three trees under `{ns}/config/`, each with
//!   the full config key (`app/env/key`) right after its fixed name:
//!   * `latest/{key}` → the key's latest version number as decimal text, a
//!     newline, then that version's record, so a key's latest version is
//!     one get (markers written before records moved into them hold the
//!     number alone and stay readable: their record is read from the
//!     version's key);
//!   * `versions/{key}\0{version:020}` → the [record](coord_core::config::encode_version)
//!     of one version. Config keys never contain control characters, so the
//!     NUL ends the key: the versions of `a/b/db` are exactly the range
//!     `[versions/a/b/db\0, versions/a/b/db\x01)`, apart from those of
//!     `a/b/db/url`, and zero-padded numbers sort in version order;
//!   * `frozen/{scope}` → empty: `scope` (a namespace or a full key) is frozen.
//!
//!   The bookkeeping trees never share a key with configuration, so a config
//!   key may be named anything the key rules allow (`a/b/v/latest`
//!   included). History is kept **explicitly**: every version is a live key
//!   until [`config_compact`](ConfigBackend::config_compact) deletes it, so
//!   etcd's own compaction of its MVCC history loses nothing; the latest
//!   version is never compacted, and its record is in its marker as well.
//! * **Writes** ([`append`]): read the latest markers of the written keys
//!   and the namespace's frozen markers (one read transaction), check the
//!   freezes and the expected versions, then one transaction: compare each
//!   key's latest marker's modification revision with the one read (or its
//!   absence) and that no frozen marker of the namespace changed since, put
//!   each new version and the new latest markers. A transaction that lost a
//!   race is read and tried again, so `Conflict` and `Frozen` always
//!   describe what etcd holds. A record travels twice (its version's key
//!   and its key's marker), so the largest is about half of etcd's request
//!   limit; a request is checked against that limit before it is sent.
//! * **Reads** ([`read`]): a latest version is one get of its marker (a
//!   marker of the earlier layout: then its version at the marker's
//!   revision); a history is one ascending range over the newest versions
//!   (a descending sort would make etcd read the key's whole history
//!   first); a listing is a range over the latest tree in pages, records
//!   included, all at the first page's revision (a snapshot; started over
//!   if etcd compacts it meanwhile).
//! * **Watches** ([`watch`](mod@watch)): an etcd watch of the latest tree
//!   under the prefix, from now; each new latest marker is a
//!   [`ConfigNotice::Changed`](coord_core::config::ConfigNotice); a watch
//!   etcd cancels or fails is a `Gap`, a lost connection ends the stream.
//! * **Maintenance** ([`maintain`]): compaction deletes the oldest version
//!   keys in one delete of a range; freezing puts or deletes a marker.

mod append;
mod layout;
mod maintain;
mod read;
mod watch;

use coord_core::config::{ConfigBackend, ConfigNotices, ConfigWrite, StoredVersion};
use coord_core::{ComponentHealth, Result, async_trait};

use crate::backend::EtcdBackend;
use layout::Layout;

/// The most operations one transaction carries (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// etcd's default request limit (`--max-request-bytes`): no value it holds
/// is larger.
const ETCD_MAX_REQUEST_BYTES: usize = (3 << 20) / 2;

/// The largest request sent: etcd refuses requests over 1.5 MiB by default,
/// measured with the request's envelope.
const MAX_REQUEST_BYTES: usize = ETCD_MAX_REQUEST_BYTES - (64 << 10);

impl EtcdBackend {
    /// The root of the config center's keys: `{namespace}/config/`. Under
    /// it, `latest/{key}` holds a key's latest version number, a newline
    /// and that version's record,
    /// `versions/{key}\0{version:020}` each version's record and
    /// `frozen/{scope}` marks a frozen namespace or key.
    pub fn config_root(&self) -> String {
        self.config_layout().root().to_owned()
    }

    fn config_layout(&self) -> Layout {
        Layout::new(&self.inner.prefix)
    }
}

#[async_trait]
impl ConfigBackend for EtcdBackend {
    fn config_backend_name(&self) -> &'static str {
        "etcd"
    }

    fn max_record_bytes(&self) -> usize {
        append::max_record_bytes(&self.config_layout())
    }

    async fn config_append(&self, namespace: &str, writes: &[ConfigWrite]) -> Result<Vec<u64>> {
        self.config_append_versions(namespace, writes).await
    }

    async fn config_latest(&self, key: &str) -> Result<Option<StoredVersion>> {
        self.config_read_latest(key).await
    }

    async fn config_version(&self, key: &str, version: u64) -> Result<Option<StoredVersion>> {
        self.config_read_version(key, version).await
    }

    async fn config_history(&self, key: &str, limit: usize) -> Result<Vec<StoredVersion>> {
        self.config_read_history(key, limit).await
    }

    async fn config_list(&self, prefix: &str) -> Result<Vec<(String, StoredVersion)>> {
        self.config_read_list(prefix).await
    }

    async fn config_compact(&self, key: &str, keep_last: usize) -> Result<u64> {
        self.config_drop_old(key, keep_last).await
    }

    async fn config_set_frozen(&self, scope: &str, frozen: bool) -> Result<()> {
        self.config_mark_frozen(scope, frozen).await
    }

    async fn config_frozen(&self, namespace: &str) -> Result<Vec<String>> {
        self.config_frozen_scopes(namespace).await
    }

    async fn config_watch(&self, prefix: &str) -> Result<ConfigNotices> {
        self.config_watch_latest(prefix).await
    }

    async fn config_health(&self) -> ComponentHealth {
        self.ping().await
    }
}
