//! Promotion between environments: the diff of two namespaces as a plan,
//! then the plan applied to the target in one atomic write, each key
//! compared-and-set against the version the plan saw.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::audit::{AuditAction, AuditEntry};
use super::backend::{ConfigWrite, StoredVersion};
use super::center::{ConfigCenter, unified_diff};
use super::key::{ConfigKey, validate_namespace};
use super::record::{VersionMeta, decode_version};
use crate::error::{Error, Result};

/// One version as stored: its metadata and bytes, a secret's still
/// encrypted (promotion and export copy secrets without reading them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawValue {
    /// Its version in the namespace it was read from.
    pub version: u64,
    /// Author, time, message, tombstone and secret marks.
    pub meta: VersionMeta,
    /// The bytes as stored (a secret's ciphertext).
    pub stored: Bytes,
}

impl RawValue {
    pub(crate) fn decode(key: &str, stored: &StoredVersion) -> Result<RawValue> {
        let (meta, bytes) = decode_version(&stored.record, key, stored.version)?;
        Ok(RawValue {
            version: stored.version,
            meta,
            stored: bytes,
        })
    }

    /// Whether the value is a secret (stored encrypted).
    pub fn is_secret(&self) -> bool {
        self.meta.secret_key_id.is_some()
    }

    /// The value for display: text as is; a secret or a binary value as a
    /// placeholder.
    pub fn display(&self) -> String {
        display_stored(&self.stored, self.meta.secret_key_id.as_deref())
    }

    /// Whether two versions hold the same content (for a secret: the same
    /// ciphertext under the same key, so one promoted unchanged compares
    /// equal and one written again differs).
    pub(crate) fn same_content(&self, other: &RawValue) -> bool {
        self.meta.deleted == other.meta.deleted
            && self.meta.secret_key_id == other.meta.secret_key_id
            && self.stored == other.stored
    }
}

/// Bytes as stored, for display (see [`RawValue::display`]).
pub(crate) fn display_stored(stored: &[u8], secret_key_id: Option<&str>) -> String {
    match (secret_key_id, std::str::from_utf8(stored)) {
        (Some(id), _) => format!(
            "<secret: {} encrypted bytes under key {id:?}, crc32 {:08x}>\n",
            stored.len(),
            crc32fast::hash(stored)
        ),
        (None, Ok(text)) => text.to_owned(),
        (None, Err(_)) => format!(
            "<binary: {} bytes, crc32 {:08x}>\n",
            stored.len(),
            crc32fast::hash(stored)
        ),
    }
}

/// One key a promotion (or an import) changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PromotionChange {
    /// The key within the namespaces (`db/url`).
    pub name: String,
    /// The target key's latest version when planned (a deletion too; 0: it
    /// has none). The change applies only if the key is still there.
    pub target_version: u64,
    /// The target's live value, if any.
    pub old: Option<RawValue>,
    /// The value to write; `None` deletes the target key.
    pub new: Option<RawValue>,
}

impl PromotionChange {
    /// Whether the change deletes the target key.
    pub fn is_deletion(&self) -> bool {
        self.new.is_none()
    }

    fn diff(&self, to: &str, from: &str) -> String {
        let show = |v: &Option<RawValue>| v.as_ref().map(RawValue::display).unwrap_or_default();
        let old_name = match &self.old {
            Some(v) => format!("{to}/{}@{}", self.name, v.version),
            None => format!("{to}/{} (absent)", self.name),
        };
        let new_name = match &self.new {
            Some(v) => format!("{from}/{}@{}", self.name, v.version),
            None => format!("{from}/{} (absent: deleted)", self.name),
        };
        unified_diff(&show(&self.old), &show(&self.new), &old_name, &new_name)
    }
}

/// What [`ConfigCenter::promote`] would change in `to` to make it match
/// `from`: every key whose live value differs, sorted by name. Keys live in
/// `to` but not in `from` are deleted; drop such changes
/// (`plan.changes.retain(|c| !c.is_deletion())`) to only add and update.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PromotionPlan {
    /// The source namespace.
    pub from: String,
    /// The target namespace.
    pub to: String,
    /// The changes, by key name.
    pub changes: Vec<PromotionChange>,
}

impl PromotionPlan {
    /// A unified diff of every change, target first (secrets and binary
    /// values as placeholders).
    pub fn diff(&self) -> String {
        changes_diff(&self.changes, &self.to, &self.from)
    }

    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

pub(crate) fn changes_diff(changes: &[PromotionChange], to: &str, from: &str) -> String {
    changes.iter().map(|c| c.diff(to, from)).collect()
}

impl ConfigCenter {
    /// The latest version of every configuration key of `namespace` (not
    /// the center's own), deletions included, by name.
    pub(crate) async fn raw_latest(&self, namespace: &str) -> Result<BTreeMap<String, RawValue>> {
        let mut out = BTreeMap::new();
        for (key, stored) in self.backend().config_list(namespace).await? {
            let Ok(parsed) = ConfigKey::parse(&key) else {
                continue;
            };
            out.insert(parsed.name().to_owned(), RawValue::decode(&key, &stored)?);
        }
        Ok(out)
    }

    /// The plan to make namespace `to` match namespace `from`; nothing is
    /// written. Review [`PromotionPlan::diff`], then
    /// [`promote`](Self::promote) it.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use coord_core::config::ConfigCenter;
    /// use coord_core::memory::MemoryBackend;
    ///
    /// let center = ConfigCenter::new(Arc::new(MemoryBackend::new())).with_author("ann");
    /// center.put("billing/staging/timeout", "7s").await?;
    /// center.put("billing/prod/timeout", "5s").await?;
    /// let plan = center.promote_diff("billing/staging", "billing/prod").await?;
    /// assert!(plan.diff().contains("+7s"));
    /// center.promote(&plan).await?;
    /// assert_eq!(center.get("billing/prod/timeout").await?.unwrap().as_str()?, "7s");
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn promote_diff(&self, from: &str, to: &str) -> Result<PromotionPlan> {
        validate_namespace(from)?;
        validate_namespace(to)?;
        if from == to {
            return Err(Error::invalid(format!(
                "cannot promote namespace {from} into itself"
            )));
        }
        let source = self.raw_latest(from).await?;
        let target = self.raw_latest(to).await?;
        let live = |m: &BTreeMap<String, RawValue>, name: &str| {
            m.get(name).filter(|v| !v.meta.deleted).cloned()
        };
        let mut names: Vec<&String> = source.keys().chain(target.keys()).collect();
        names.sort();
        names.dedup();
        let mut changes = Vec::new();
        for name in names {
            let new = live(&source, name);
            let old = live(&target, name);
            let same = match (&old, &new) {
                (Some(a), Some(b)) => a.same_content(b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                changes.push(PromotionChange {
                    name: name.clone(),
                    target_version: target.get(name).map_or(0, |v| v.version),
                    old,
                    new,
                });
            }
        }
        Ok(PromotionPlan {
            from: from.to_owned(),
            to: to.to_owned(),
            changes,
        })
    }

    /// Applies `plan` to its target namespace in one atomic write: every
    /// change or none. A target key that moved since the plan was made is
    /// an [`Error::Conflict`] (make a new plan); a frozen target is
    /// [`Error::Frozen`]; a target that requires approval refuses it.
    /// Secrets are copied as stored (the target must know their key).
    /// Returns each written key and its new version.
    pub async fn promote(&self, plan: &PromotionPlan) -> Result<Vec<(String, u64)>> {
        validate_namespace(&plan.from)?;
        validate_namespace(&plan.to)?;
        self.ensure_direct_writes(&plan.to, "promote").await?;
        self.apply_changes(
            &plan.to,
            &plan.changes,
            AuditAction::Promote,
            &format!("from {}", plan.from),
            |c| match &c.new {
                Some(v) => format!(
                    "promoted from {}/{} version {}{}",
                    plan.from,
                    c.name,
                    v.version,
                    suffix(&v.meta.message)
                ),
                None => format!("promoted from {}: deleted there", plan.from),
            },
        )
        .await
    }

    /// Writes `changes` to `namespace` in one append with one audit entry.
    pub(crate) async fn apply_changes(
        &self,
        namespace: &str,
        changes: &[PromotionChange],
        action: AuditAction,
        summary: &str,
        message: impl Fn(&PromotionChange) -> String,
    ) -> Result<Vec<(String, u64)>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut writes = Vec::with_capacity(changes.len() + 1);
        let mut written = Vec::with_capacity(changes.len());
        for change in changes {
            let key = ConfigKey::parse(&format!("{namespace}/{}", change.name))?;
            let record = match &change.new {
                Some(v) => self.record_stored(
                    &v.stored,
                    &message(change),
                    v.meta.secret_key_id.clone(),
                    false,
                )?,
                None => self.record_stored(b"", &message(change), None, true)?,
            };
            written.push((key.as_str().to_owned(), change.target_version + 1));
            writes.push(ConfigWrite {
                key: key.as_str().to_owned(),
                expected: Some(change.target_version),
                record,
            });
        }
        let entry = AuditEntry::new(self, action, namespace)
            .message(format!("{summary}: {} keys", changes.len()))
            .changes(written.clone());
        writes.push(entry.write(self, namespace)?);
        self.append(namespace, writes).await?;
        Ok(written)
    }
}

fn suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(stored: &'static [u8], key_id: Option<&str>) -> RawValue {
        RawValue {
            version: 1,
            meta: VersionMeta {
                secret_key_id: key_id.map(str::to_owned),
                ..VersionMeta::default()
            },
            stored: Bytes::from_static(stored),
        }
    }

    #[test]
    fn secrets_and_binary_values_display_as_placeholders() {
        assert_eq!(raw(b"a = 1\n", None).display(), "a = 1\n");
        assert!(
            raw(b"\xff\xfe", None)
                .display()
                .starts_with("<binary: 2 bytes")
        );
        let secret = raw(b"sealed", Some("k1")).display();
        assert!(secret.starts_with("<secret: 6 encrypted bytes under key \"k1\""));
        assert!(raw(b"x", None).same_content(&raw(b"x", None)));
        assert!(!raw(b"x", None).same_content(&raw(b"x", Some("k1"))));
    }
}
