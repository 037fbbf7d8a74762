//! The config center: versioned reads and writes, history, rollback, diff,
//! compaction, freezing and watches over a [`ConfigBackend`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::audit::{AuditAction, AuditEntry};
use super::backend::{ConfigBackend, ConfigWrite, StoredVersion};
use super::key::{ConfigKey, namespace_of, validate_namespace};
use super::record::{VersionMeta, decode_version, encode_version};
use super::secret::{EnvKeyProvider, KeyProvider, decrypt, encrypt};
use super::value::ConfigValue;
use super::watch::ConfigWatch;
use crate::error::{Error, Result};

/// The longest value, in bytes (before encryption).
pub const MAX_CONFIG_VALUE_BYTES: usize = 1 << 20;

/// Options of one write: compare-and-set, a message, secrecy.
#[derive(Debug, Clone, Default)]
pub struct Put {
    pub(crate) expected: Option<u64>,
    pub(crate) message: String,
    pub(crate) secret: bool,
}

impl Put {
    /// A plain write.
    pub fn new() -> Put {
        Put::default()
    }

    /// Write only if the key's latest version is `version` (0: the key has
    /// none yet); otherwise [`Error::Conflict`].
    pub fn expect_version(mut self, version: u64) -> Put {
        self.expected = Some(version);
        self
    }

    /// Why (kept with the version, shown in history and audit).
    pub fn message(mut self, message: impl Into<String>) -> Put {
        self.message = message.into();
        self
    }

    /// Encrypt the value client-side (AES-256-GCM) with the center's key provider.
    pub fn secret(mut self) -> Put {
        self.secret = true;
        self
    }
}

/// Versioned configuration in namespaces `app/env`, on any backend.
///
/// Every write is recorded in the namespace's audit log
/// ([`audit`](Self::audit)) atomically with the change. A namespace can
/// require approval ([`require_approval`](Self::require_approval)): direct
/// writes are then refused and changes go through
/// [`propose`](Self::propose) and [`approve`](Self::approve).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::config::{ConfigCenter, Put};
/// use coord_core::memory::MemoryBackend;
///
/// let center = ConfigCenter::new(Arc::new(MemoryBackend::new())).with_author("ann");
/// let v1 = center.put("billing/prod/timeout", "5s").await?;
/// let v2 = center.put_with("billing/prod/timeout", "7s", Put::new().expect_version(v1).message("slower db")).await?;
/// assert_eq!(center.get("billing/prod/timeout").await?.unwrap().as_str()?, "7s");
/// assert!(center.put_with("billing/prod/timeout", "9s", Put::new().expect_version(v1)).await.is_err());
/// center.rollback("billing/prod/timeout", v1).await?;
/// assert_eq!(center.get("billing/prod/timeout").await?.unwrap().as_str()?, "5s");
/// println!("{}", center.diff("billing/prod/timeout", v1, v2).await?);
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ConfigCenter {
    backend: Arc<dyn ConfigBackend>,
    author: String,
    keys: Arc<dyn KeyProvider>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ConfigCenter {
    /// A center over `backend`, writing as author `"unknown"` and taking
    /// secret keys from the environment ([`EnvKeyProvider`]).
    pub fn new(backend: Arc<dyn ConfigBackend>) -> ConfigCenter {
        ConfigCenter {
            backend,
            author: "unknown".to_owned(),
            keys: Arc::new(EnvKeyProvider),
        }
    }

    /// The same center writing as `author` (kept with every version and audit entry).
    pub fn with_author(mut self, author: impl Into<String>) -> ConfigCenter {
        self.author = author.into();
        self
    }

    /// The same center encrypting and decrypting secrets with `keys`.
    pub fn with_keys(mut self, keys: impl KeyProvider) -> ConfigCenter {
        self.keys = Arc::new(keys);
        self
    }

    /// The author this center writes as.
    pub fn author(&self) -> &str {
        &self.author
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn ConfigBackend> {
        &self.backend
    }

    pub(crate) fn keys(&self) -> &dyn KeyProvider {
        &*self.keys
    }

    /// Encodes a version of `value` (encrypting it if `secret`).
    pub(crate) fn record(
        &self,
        value: &[u8],
        message: &str,
        secret: bool,
        deleted: bool,
    ) -> Result<Bytes> {
        let (stored, key_id) = self.seal(value, secret)?;
        self.record_stored(&stored, message, key_id, deleted)
    }

    /// Checks a value's size and encrypts it if `secret`: the bytes to
    /// store and the id of the key they are encrypted under.
    pub(crate) fn seal(&self, value: &[u8], secret: bool) -> Result<(Bytes, Option<String>)> {
        if value.len() > MAX_CONFIG_VALUE_BYTES {
            return Err(Error::invalid(format!(
                "config value is {} bytes, over the limit of {MAX_CONFIG_VALUE_BYTES}",
                value.len()
            )));
        }
        if secret {
            let (id, sealed) = encrypt(&*self.keys, value)?;
            Ok((Bytes::from(sealed), Some(id)))
        } else {
            Ok((Bytes::copy_from_slice(value), None))
        }
    }

    /// Decrypts bytes as stored (plain text unless `secret_key_id`).
    pub(crate) fn unseal(
        &self,
        stored: &Bytes,
        secret_key_id: Option<&str>,
        what: &str,
    ) -> Result<Bytes> {
        match secret_key_id {
            Some(id) => Ok(Bytes::from(decrypt(&*self.keys, id, stored, what)?)),
            None => Ok(stored.clone()),
        }
    }

    /// Encodes a center's own record (a JSON document under a reserved key).
    pub(crate) fn json_record<T: serde::Serialize>(
        &self,
        doc: &T,
        message: &str,
        deleted: bool,
    ) -> Result<Bytes> {
        let json = serde_json::to_vec(doc)
            .map_err(|e| Error::codec(format!("config record could not be encoded: {e}"), None))?;
        self.record_stored(&json, message, None, deleted)
    }

    /// Reads the latest version of a reserved key holding JSON: its version
    /// and document (`None` for a deletion), or `None` if never written.
    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(u64, Option<T>)>> {
        let Some(stored) = self.backend.config_latest(key).await? else {
            return Ok(None);
        };
        Ok(Some((stored.version, self.parse_json(key, &stored)?)))
    }

    /// Decodes a stored version of a reserved key holding JSON (`None` for
    /// a deletion).
    pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        stored: &StoredVersion,
    ) -> Result<Option<T>> {
        let value = self.decode(key, stored)?;
        if value.is_deleted() {
            return Ok(None);
        }
        serde_json::from_slice(&value.value).map(Some).map_err(|e| {
            Error::codec(
                format!("config {key} version {} is not valid: {e}", stored.version),
                None,
            )
        })
    }

    /// Encodes a version from bytes as stored (a secret's ciphertext under
    /// key `secret_key_id`), without encrypting: how drafts, gray releases,
    /// promotions and imports publish a secret without reading it.
    pub(crate) fn record_stored(
        &self,
        stored: &[u8],
        message: &str,
        secret_key_id: Option<String>,
        deleted: bool,
    ) -> Result<Bytes> {
        let meta = VersionMeta {
            author: self.author.clone(),
            message: message.to_owned(),
            time_ms: now_ms(),
            crc32: crc32fast::hash(stored),
            deleted,
            secret_key_id,
        };
        let record = encode_version(&meta, stored)?;
        if record.len() > self.backend.max_record_bytes() {
            return Err(Error::invalid(format!(
                "config value is {} bytes stored, over the {} backend's limit of {}",
                record.len(),
                self.backend.config_backend_name(),
                self.backend.max_record_bytes()
            )));
        }
        Ok(record)
    }

    /// Decodes (and decrypts) a stored version.
    pub(crate) fn decode(&self, key: &str, stored: &StoredVersion) -> Result<ConfigValue> {
        let (meta, value) = decode_version(&stored.record, key, stored.version)?;
        let value = self.unseal(
            &value,
            meta.secret_key_id.as_deref(),
            &format!("{key} version {}", stored.version),
        )?;
        Ok(ConfigValue {
            key: key.to_owned(),
            version: stored.version,
            value,
            meta,
        })
    }

    /// Appends writes to one namespace (all or nothing).
    pub(crate) async fn append(
        &self,
        namespace: &str,
        writes: Vec<ConfigWrite>,
    ) -> Result<Vec<u64>> {
        self.backend.config_append(namespace, &writes).await
    }

    /// The latest version of `key` (a deletion too), 0 if it has none.
    pub(crate) async fn latest_version(&self, key: &str) -> Result<u64> {
        Ok(self
            .backend
            .config_latest(key)
            .await?
            .map_or(0, |s| s.version))
    }

    /// The latest value of `key`; `None` if it was never written or its
    /// latest version is a deletion.
    pub async fn get(&self, key: &str) -> Result<Option<ConfigValue>> {
        let key = ConfigKey::parse(key)?;
        self.get_key(&key).await
    }

    pub(crate) async fn get_key(&self, key: &ConfigKey) -> Result<Option<ConfigValue>> {
        match self.backend.config_latest(key.as_str()).await? {
            Some(stored) => {
                let value = self.decode(key.as_str(), &stored)?;
                Ok((!value.is_deleted()).then_some(value))
            }
            None => Ok(None),
        }
    }

    /// Version `version` of `key` (a deletion too), unless compacted away.
    pub async fn get_version(&self, key: &str, version: u64) -> Result<Option<ConfigValue>> {
        let key = ConfigKey::parse(key)?;
        match self.backend.config_version(key.as_str(), version).await? {
            Some(stored) => self.decode(key.as_str(), &stored).map(Some),
            None => Ok(None),
        }
    }

    /// Writes a new version of `key`; returns its version number.
    pub async fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<u64> {
        self.put_with(key, value, Put::new()).await
    }

    /// [`put`](Self::put) with options (compare-and-set, message, secret).
    ///
    /// Without [`expect_version`](Put::expect_version) the write does not
    /// fail because others write the key meanwhile: it is made conditional
    /// on the latest version just read (so that its audit entry names the
    /// exact version) and tried again if that moved.
    ///
    /// In a namespace that [requires approval](Self::require_approval) this
    /// is refused with [`Error::InvalidArgument`]: use
    /// [`propose`](Self::propose).
    pub async fn put_with(&self, key: &str, value: impl AsRef<[u8]>, options: Put) -> Result<u64> {
        let key = ConfigKey::parse(key)?;
        let record = self.record(value.as_ref(), &options.message, options.secret, false)?;
        // The approval policy and (for a blind write) the latest version
        // are read at once: one round trip of wall time before the append.
        let base = self.check_and_base(&key, "put", options.expected).await?;
        self.write_audited_from(
            &key,
            options.expected,
            base,
            record,
            AuditAction::Put,
            &options.message,
        )
        .await
    }

    /// Deletes `key`: a new version that is a tombstone (history stays).
    pub async fn delete(&self, key: &str) -> Result<u64> {
        self.delete_with(key, Put::new()).await
    }

    /// [`delete`](Self::delete) with options (compare-and-set, message).
    /// Refused like [`put_with`](Self::put_with) where approval is required.
    pub async fn delete_with(&self, key: &str, options: Put) -> Result<u64> {
        let key = ConfigKey::parse(key)?;
        let record = self.record(b"", &options.message, false, true)?;
        // The approval policy and (for a blind write) the latest version
        // are read at once: one round trip of wall time before the append.
        let base = self
            .check_and_base(&key, "delete", options.expected)
            .await?;
        self.write_audited_from(
            &key,
            options.expected,
            base,
            record,
            AuditAction::Delete,
            &options.message,
        )
        .await
    }

    /// The latest value of every live key under `prefix` (a namespace
    /// `app/env` or deeper), sorted by key; deleted keys and the center's
    /// own keys are left out.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ConfigValue>> {
        check_prefix(prefix)?;
        let mut out = Vec::new();
        for (key, stored) in self.backend.config_list(prefix).await? {
            if ConfigKey::parse(&key).is_err() {
                continue;
            }
            let value = self.decode(&key, &stored)?;
            if !value.is_deleted() {
                out.push(value);
            }
        }
        Ok(out)
    }

    /// Up to `limit` versions of `key`, newest first (deletions included).
    pub async fn history(&self, key: &str, limit: usize) -> Result<Vec<ConfigValue>> {
        let key = ConfigKey::parse(key)?;
        self.backend
            .config_history(key.as_str(), limit)
            .await?
            .iter()
            .map(|s| self.decode(key.as_str(), s))
            .collect()
    }

    /// Writes the content of `version` again as a new version (a rollback
    /// is itself a version, with a message saying so). Refused like
    /// [`put_with`](Self::put_with) where approval is required.
    pub async fn rollback(&self, key: &str, version: u64) -> Result<u64> {
        let parsed = ConfigKey::parse(key)?;
        let old = self
            .get_version(key, version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("config {key} has no version {version}")))?;
        let message = format!("rollback to version {version}");
        let record = self.record(&old.value, &message, old.is_secret(), old.is_deleted())?;
        self.ensure_direct_writes(parsed.namespace(), "rollback")
            .await?;
        self.write_audited(&parsed, None, record, AuditAction::Rollback, &message)
            .await
    }

    /// A unified diff of `key` from version `from` to version `to` (text
    /// values; a deletion reads as empty).
    pub async fn diff(&self, key: &str, from: u64, to: u64) -> Result<String> {
        let missing = |v: u64| Error::NotFound(format!("config {key} has no version {v}"));
        let a = self
            .get_version(key, from)
            .await?
            .ok_or_else(|| missing(from))?;
        let b = self
            .get_version(key, to)
            .await?
            .ok_or_else(|| missing(to))?;
        Ok(unified_diff(
            a.as_str()?,
            b.as_str()?,
            &format!("{key}@{from}"),
            &format!("{key}@{to}"),
        ))
    }

    /// Drops all but the newest `keep_last` (at least 1) versions of `key`.
    pub async fn compact(&self, key: &str, keep_last: usize) -> Result<u64> {
        let key = ConfigKey::parse(key)?;
        let dropped = self.backend.config_compact(key.as_str(), keep_last).await?;
        let entry = AuditEntry::new(self, AuditAction::Compact, key.as_str()).message(format!(
            "kept the newest {}, dropped {dropped}",
            keep_last.max(1)
        ));
        self.append_audit(key.namespace(), entry).await?;
        Ok(dropped)
    }

    /// Freezes a namespace (`app/env`) or a key: writes are refused with
    /// [`Error::Frozen`] until [`unfreeze`](Self::unfreeze).
    pub async fn freeze(&self, scope: &str) -> Result<()> {
        self.set_frozen(scope, true).await
    }

    /// Lifts a [`freeze`](Self::freeze).
    pub async fn unfreeze(&self, scope: &str) -> Result<()> {
        self.set_frozen(scope, false).await
    }

    async fn set_frozen(&self, scope: &str, frozen: bool) -> Result<()> {
        check_scope(scope)?;
        self.backend.config_set_frozen(scope, frozen).await?;
        let action = if frozen {
            AuditAction::Freeze
        } else {
            AuditAction::Unfreeze
        };
        let namespace = namespace_of(scope).unwrap_or(scope);
        self.append_audit(namespace, AuditEntry::new(self, action, scope))
            .await
    }

    /// Re-encrypts the latest version of every secret in `namespace` under
    /// the key provider's current key (a new version each, in one atomic
    /// write); older versions stay readable while the provider still knows
    /// their keys. Returns how many secrets were re-encrypted. Allowed
    /// where approval is required: the values do not change.
    pub async fn rotate_secrets(&self, namespace: &str) -> Result<usize> {
        validate_namespace(namespace)?;
        let (current, _) = self.keys().current()?;
        let mut writes = Vec::new();
        let mut changes = Vec::new();
        for value in self.list(namespace).await? {
            if value
                .meta
                .secret_key_id
                .as_deref()
                .is_some_and(|id| id != current)
            {
                changes.push((value.key.clone(), value.version + 1));
                writes.push(ConfigWrite {
                    key: value.key.clone(),
                    expected: Some(value.version),
                    record: self.record(&value.value, "rotate the secret's key", true, false)?,
                });
            }
        }
        let n = writes.len();
        if n > 0 {
            let entry = AuditEntry::new(self, AuditAction::Rotate, namespace)
                .message(format!("re-encrypted {n} secrets under key {current:?}"))
                .changes(changes);
            writes.push(entry.write(self, namespace)?);
            self.append(namespace, writes).await?;
        }
        Ok(n)
    }

    /// Every change under `prefix` from now on, in version order per key.
    pub async fn watch(&self, prefix: &str) -> Result<ConfigWatch> {
        check_prefix(prefix)?;
        ConfigWatch::start(self.clone(), prefix).await
    }
}

/// A unified diff of two texts (3 lines of context).
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

fn check_prefix(prefix: &str) -> Result<()> {
    let trimmed = prefix.trim_end_matches('/');
    match trimmed.matches('/').count() {
        0 => Err(Error::invalid(format!(
            "config prefix {prefix:?} must name at least a namespace (app/env)"
        ))),
        1 => validate_namespace(trimmed),
        _ => ConfigKey::parse(trimmed).map(|_| ()),
    }
}

fn check_scope(scope: &str) -> Result<()> {
    if scope.matches('/').count() == 1 {
        validate_namespace(scope)
    } else {
        ConfigKey::parse(scope).map(|_| ())
    }
}
