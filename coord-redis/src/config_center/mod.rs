//! [`ConfigBackend`] for [`RedisBackend`]: the config center's versioned
//! store in a few hashes and a set per namespace, written by Lua scripts,
//! with change notices over pub/sub.
//!
//! Keys of namespace `app/env` under the backend's namespace `ns` (one hash
//! tag, `{app/env}`, so a cluster keeps a namespace in one slot and a script
//! may write several of its keys at once):
//! `ns:cfg:{app/env}:latest` (hash full key → latest version number),
//! `ns:cfg:{app/env}:v:{key}` (hash version number → record, one per key;
//! `{key}` is the full key) and `ns:cfg:{app/env}:frozen` (set of the frozen
//! scopes: the namespace itself and full keys). Every new version is
//! published as `key\0version` on `ns:cfg:{app/env}:changes`.
//!
//! Every version stays until [`config_compact`](ConfigBackend::config_compact);
//! the latest-version counters are never removed, so numbering continues.
//!
//! **Durability.** The config center's data lives only where Redis keeps
//! it: a server without persistence (or with RDB snapshots only) loses
//! every version written since its last save when it restarts, and version
//! numbers start again at 1. Run the config center's Redis with AOF
//! (`appendonly yes`, `appendfsync everysec` or `always`) and replicas.

mod read;
mod watch;
mod write;

use std::sync::LazyLock;

use bytes::Bytes;
use coord_core::config::{ConfigBackend, ConfigNotices, ConfigWrite, StoredVersion, namespace_of};
use coord_core::{ComponentHealth, Error, Result, async_trait};
use redis::Script;

use crate::backend::RedisBackend;

/// Redis caps a string (a record, a hash field's value) at 512 MiB.
const MAX_RECORD_BYTES: usize = 512 << 20;

/// The config scripts, loaded once per process.
struct ConfigScripts {
    append: Script,
    latest: Script,
    history: Script,
    list: Script,
    compact: Script,
}

static SCRIPTS: LazyLock<ConfigScripts> = LazyLock::new(|| ConfigScripts {
    append: Script::new(include_str!("scripts/append.lua")),
    latest: Script::new(include_str!("scripts/latest.lua")),
    history: Script::new(include_str!("scripts/history.lua")),
    list: Script::new(include_str!("scripts/list.lua")),
    compact: Script::new(include_str!("scripts/compact.lua")),
});

/// The Redis keys and channel of one config namespace.
#[derive(Debug)]
struct NamespaceKeys {
    /// `ns:cfg:{app/env}`, the start of every key.
    base: String,
    latest: String,
    frozen: String,
    channel: String,
}

impl NamespaceKeys {
    /// The hash of `key`'s versions.
    fn versions(&self, key: &str) -> String {
        format!("{}:v:{key}", self.base)
    }
}

impl RedisBackend {
    /// The keys of namespace `app/env`.
    fn config_keys(&self, namespace: &str) -> NamespaceKeys {
        let base = format!("{}:cfg:{{{namespace}}}", self.namespace());
        NamespaceKeys {
            latest: format!("{base}:latest"),
            frozen: format!("{base}:frozen"),
            channel: format!("{base}:changes"),
            base,
        }
    }

    /// The keys of the namespace of a full key, a prefix or a scope.
    fn config_keys_of(&self, key: &str) -> Result<NamespaceKeys> {
        namespace_of(key.trim_end_matches('/'))
            .map(|ns| self.config_keys(ns))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "config key or prefix {key:?} does not start with a namespace app/env"
                ))
            })
    }
}

/// A version number as a script replies it (a decimal string or an integer).
fn version_of(value: &redis::Value, script: &str) -> Result<u64> {
    let parsed = match value {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        redis::Value::BulkString(s) => std::str::from_utf8(s).ok().and_then(|s| s.parse().ok()),
        _ => None,
    };
    parsed.ok_or_else(|| crate::error::unexpected_reply(script, value))
}

/// A record as a script replies it.
fn record_of(value: redis::Value, script: &str) -> Result<Bytes> {
    match value {
        redis::Value::BulkString(s) => Ok(Bytes::from(s)),
        other => Err(crate::error::unexpected_reply(script, &other)),
    }
}

#[async_trait]
impl ConfigBackend for RedisBackend {
    fn config_backend_name(&self) -> &'static str {
        "redis"
    }

    fn max_record_bytes(&self) -> usize {
        MAX_RECORD_BYTES
    }

    async fn config_append(&self, namespace: &str, writes: &[ConfigWrite]) -> Result<Vec<u64>> {
        self.append_versions(namespace, writes).await
    }

    async fn config_latest(&self, key: &str) -> Result<Option<StoredVersion>> {
        self.latest_version(key).await
    }

    async fn config_version(&self, key: &str, version: u64) -> Result<Option<StoredVersion>> {
        self.one_version(key, version).await
    }

    async fn config_history(&self, key: &str, limit: usize) -> Result<Vec<StoredVersion>> {
        self.versions_newest_first(key, limit).await
    }

    async fn config_list(&self, prefix: &str) -> Result<Vec<(String, StoredVersion)>> {
        self.latest_under(prefix).await
    }

    async fn config_compact(&self, key: &str, keep_last: usize) -> Result<u64> {
        self.compact_versions(key, keep_last).await
    }

    async fn config_set_frozen(&self, scope: &str, frozen: bool) -> Result<()> {
        self.set_frozen(scope, frozen).await
    }

    async fn config_frozen(&self, namespace: &str) -> Result<Vec<String>> {
        self.frozen_scopes(namespace).await
    }

    async fn config_watch(&self, prefix: &str) -> Result<ConfigNotices> {
        self.watch_notices(prefix).await
    }

    async fn config_health(&self) -> ComponentHealth {
        self.ping().await
    }
}
