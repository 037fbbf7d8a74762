//! The config backend trait: append-only versions per key, compare-and-set
//! on the latest version, freezing, and change notifications.

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::error::Result;
use crate::health::ComponentHealth;

/// One stored version of a key: its number and its record (see
/// [`encode_version`](super::encode_version)), opaque to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// The version number: 1 for the first write of a key, then +1 per write.
    pub version: u64,
    /// The encoded record.
    pub record: Bytes,
}

/// One write of [`ConfigBackend::config_append`]: a record for `key`,
/// appended only if the key's latest version is `expected` (0: the key
/// has no version yet; `None`: whatever it is).
#[derive(Debug, Clone)]
pub struct ConfigWrite {
    /// The full key, `app/env/key`.
    pub key: String,
    /// The latest version the writer expects.
    pub expected: Option<u64>,
    /// The encoded record.
    pub record: Bytes,
}

/// What a config watch yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigNotice {
    /// `key` has a new latest version.
    Changed {
        /// The full key.
        key: String,
        /// Its new latest version.
        version: u64,
    },
    /// Notices may have been missed: the watcher must compare the latest
    /// versions of its prefix with what it has seen.
    Gap,
}

/// A stream of [`ConfigNotice`]s under one prefix. It ends when the
/// backend loses the channel; the watcher then watches again and compares.
pub struct ConfigNotices {
    inner: Pin<Box<dyn Stream<Item = ConfigNotice> + Send>>,
}

impl ConfigNotices {
    /// Wraps a backend's stream.
    pub fn new(stream: impl Stream<Item = ConfigNotice> + Send + 'static) -> Self {
        ConfigNotices {
            inner: Box::pin(stream),
        }
    }

    /// The next notice, or `None` when the stream has ended.
    pub async fn next(&mut self) -> Option<ConfigNotice> {
        self.inner.next().await
    }
}

impl fmt::Debug for ConfigNotices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigNotices")
    }
}

/// A versioned key-value store for the config center. Implemented by the
/// same backend values that serve locks, caches and discovery.
///
/// Keys are full (`app/env/key`, validated by the caller); the namespace
/// `app/env` is the unit of atomic multi-key writes and of freezing. Keys
/// whose part after the namespace starts with `.coord/` are the config
/// center's own and are never frozen. History is kept explicitly (every
/// version is stored until [`config_compact`](Self::config_compact)), never
/// through the backend's own compactable history.
#[async_trait]
pub trait ConfigBackend: Send + Sync + fmt::Debug + 'static {
    /// The backend's name (`memory`, `redis`, `etcd`).
    fn config_backend_name(&self) -> &'static str;

    /// The largest record, in bytes, one write may carry (etcd's request
    /// limit; Redis caps strings at 512 MiB).
    fn max_record_bytes(&self) -> usize;

    /// Appends one version to each write's key, all or nothing, every key in
    /// `namespace`; returns the new version numbers in order. Refuses with
    /// [`Error::Frozen`](crate::Error::Frozen) when the namespace or a key
    /// is frozen, and with [`Error::Conflict`](crate::Error::Conflict)
    /// (expected and actual latest versions) when a write's `expected` does
    /// not match. Notifies watchers of each key.
    async fn config_append(&self, namespace: &str, writes: &[ConfigWrite]) -> Result<Vec<u64>>;

    /// The latest version of `key`.
    async fn config_latest(&self, key: &str) -> Result<Option<StoredVersion>>;

    /// Version `version` of `key`, unless compacted away.
    async fn config_version(&self, key: &str, version: u64) -> Result<Option<StoredVersion>>;

    /// Up to `limit` versions of `key`, newest first.
    async fn config_history(&self, key: &str, limit: usize) -> Result<Vec<StoredVersion>>;

    /// The latest version of every key under `prefix` (a namespace `app/env`
    /// or deeper, with or without a trailing `/`; whole segments match),
    /// sorted by key.
    async fn config_list(&self, prefix: &str) -> Result<Vec<(String, StoredVersion)>>;

    /// Drops all but the newest `keep_last` versions of `key` (at least 1 is
    /// kept); returns how many were dropped.
    async fn config_compact(&self, key: &str, keep_last: usize) -> Result<u64>;

    /// Freezes (or unfreezes) `scope`: a namespace `app/env` or a full key.
    async fn config_set_frozen(&self, scope: &str, frozen: bool) -> Result<()>;

    /// The frozen scopes under `namespace` (the namespace itself and keys).
    async fn config_frozen(&self, namespace: &str) -> Result<Vec<String>>;

    /// Notices of new versions of keys under `prefix`, from now on.
    async fn config_watch(&self, prefix: &str) -> Result<ConfigNotices>;

    /// One round trip to the server.
    async fn config_health(&self) -> ComponentHealth;
}

/// Whether `key` is under `prefix` by whole segments (`a/b` covers `a/b/c`
/// but not `a/bc/d`).
pub fn key_under(key: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    key == prefix || (key.starts_with(prefix) && key.as_bytes().get(prefix.len()) == Some(&b'/'))
}
