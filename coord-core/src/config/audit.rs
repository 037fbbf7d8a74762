//! The audit log: who did what to which key and version, when. Entries are
//! versions of the reserved key `{app}/{env}/.coord/audit`, written in the
//! same all-or-nothing append as the change they describe.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::backend::ConfigWrite;
use super::center::{ConfigCenter, now_ms};
use super::key::{ConfigKey, validate_namespace};
use crate::error::{Error, Result};

/// The reserved key (after the namespace) holding the audit log.
pub(crate) const AUDIT_KEY: &str = ".coord/audit";

/// What an audited action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditAction {
    /// A new version written by [`ConfigCenter::put`].
    Put,
    /// A deletion (a tombstone version).
    Delete,
    /// A rollback to an older version's content.
    Rollback,
    /// A namespace or key frozen.
    Freeze,
    /// A freeze lifted.
    Unfreeze,
    /// Old versions of a key dropped.
    Compact,
    /// Secrets re-encrypted under the current key.
    Rotate,
    /// The namespace's approval policy changed.
    Policy,
    /// A change proposed as a draft.
    Draft,
    /// A draft approved and published.
    Approve,
    /// A draft rejected (or withdrawn).
    Reject,
    /// A gray release started or replaced.
    GrayPublish,
    /// A gray release published to everyone.
    GrayPromote,
    /// A gray release dropped.
    GrayAbort,
    /// Changes promoted from another namespace.
    Promote,
    /// An export imported.
    Import,
    /// An action this version of the SDK does not know (written by a newer one).
    #[serde(other)]
    Other,
}

impl AuditAction {
    /// The action's name as stored (`put`, `gray_promote`…).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Put => "put",
            AuditAction::Delete => "delete",
            AuditAction::Rollback => "rollback",
            AuditAction::Freeze => "freeze",
            AuditAction::Unfreeze => "unfreeze",
            AuditAction::Compact => "compact",
            AuditAction::Rotate => "rotate",
            AuditAction::Policy => "policy",
            AuditAction::Draft => "draft",
            AuditAction::Approve => "approve",
            AuditAction::Reject => "reject",
            AuditAction::GrayPublish => "gray_publish",
            AuditAction::GrayPromote => "gray_promote",
            AuditAction::GrayAbort => "gray_abort",
            AuditAction::Promote => "promote",
            AuditAction::Import => "import",
            AuditAction::Other => "other",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key written by a multi-key action, and the version it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditChange {
    /// The full key.
    pub key: String,
    /// The version written.
    pub version: u64,
}

/// One entry of the audit log.
///
/// `who` is the author the acting [`ConfigCenter`] was given
/// ([`ConfigCenter::with_author`]): self-declared, not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Who acted.
    pub who: String,
    /// When, in milliseconds since the Unix epoch (the actor's clock).
    pub time_ms: u64,
    /// What was done.
    pub action: AuditAction,
    /// The full key acted on, or the namespace for namespace-wide actions.
    pub key: String,
    /// The version written to `key`, when the action wrote one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Why, or what else there is to know (a draft id, a rule, a source).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Every key a multi-key action wrote (promote, import, rotate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<AuditChange>,
    /// The entry's position in the log (the audit key's version), filled in
    /// when read.
    #[serde(skip)]
    pub seq: u64,
}

impl AuditEntry {
    /// An entry by `center`'s author, now.
    pub(crate) fn new(center: &ConfigCenter, action: AuditAction, key: &str) -> AuditEntry {
        AuditEntry {
            who: center.author().to_owned(),
            time_ms: now_ms(),
            action,
            key: key.to_owned(),
            version: None,
            message: String::new(),
            changes: Vec::new(),
            seq: 0,
        }
    }

    pub(crate) fn version(mut self, version: u64) -> AuditEntry {
        self.version = Some(version);
        self
    }

    pub(crate) fn message(mut self, message: impl Into<String>) -> AuditEntry {
        self.message = message.into();
        self
    }

    pub(crate) fn changes(
        mut self,
        changes: impl IntoIterator<Item = (String, u64)>,
    ) -> AuditEntry {
        self.changes = changes
            .into_iter()
            .map(|(key, version)| AuditChange { key, version })
            .collect();
        self
    }

    /// The write appending this entry to `namespace`'s log (whatever its
    /// latest version: the log never conflicts).
    pub(crate) fn write(&self, center: &ConfigCenter, namespace: &str) -> Result<ConfigWrite> {
        Ok(ConfigWrite {
            key: format!("{namespace}/{AUDIT_KEY}"),
            expected: None,
            record: center.json_record(self, "", false)?,
        })
    }

    fn concerns(&self, key: &str) -> bool {
        self.key == key || self.changes.iter().any(|c| c.key == key)
    }
}

/// Which audit entries [`ConfigCenter::audit`] returns: all by default.
///
/// ```
/// use coord_core::config::{AuditAction, AuditFilter};
///
/// let filter = AuditFilter::new().who("ann").action(AuditAction::Put).limit(20);
/// # let _ = filter;
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AuditFilter {
    /// Only entries by this author.
    pub who: Option<String>,
    /// Only entries of this action.
    pub action: Option<AuditAction>,
    /// Only entries about this full key (as the key acted on, or among a
    /// multi-key action's changes).
    pub key: Option<String>,
    /// Only entries at or after this time (milliseconds since the epoch).
    pub since_ms: Option<u64>,
    /// At most this many entries (the newest).
    pub limit: Option<usize>,
}

impl AuditFilter {
    /// Every entry.
    pub fn new() -> AuditFilter {
        AuditFilter::default()
    }

    /// Only entries by `who`.
    #[must_use]
    pub fn who(mut self, who: impl Into<String>) -> AuditFilter {
        self.who = Some(who.into());
        self
    }

    /// Only entries of `action`.
    #[must_use]
    pub fn action(mut self, action: AuditAction) -> AuditFilter {
        self.action = Some(action);
        self
    }

    /// Only entries about the full key `key`.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> AuditFilter {
        self.key = Some(key.into());
        self
    }

    /// Only entries at or after `since_ms`.
    #[must_use]
    pub fn since_ms(mut self, since_ms: u64) -> AuditFilter {
        self.since_ms = Some(since_ms);
        self
    }

    /// At most `limit` entries, the newest.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> AuditFilter {
        self.limit = Some(limit);
        self
    }

    fn accepts(&self, e: &AuditEntry) -> bool {
        self.who.as_ref().is_none_or(|w| *w == e.who)
            && self.action.is_none_or(|a| a == e.action)
            && self.key.as_ref().is_none_or(|k| e.concerns(k))
            && self.since_ms.is_none_or(|t| e.time_ms >= t)
    }
}

/// How many times a write without an expected version is tried when other
/// writers keep moving its key (see [`ConfigCenter::write_audited`]).
const BLIND_WRITE_ATTEMPTS: u32 = 32;

/// How far back in time (beyond `since_ms`) the log is read, for entries
/// written by clocks that run behind.
const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

impl ConfigCenter {
    /// The audit log of `namespace`, newest first, filtered.
    ///
    /// Every write of the center (put, delete, rollback, secret rotation,
    /// drafts and approvals, gray releases, promotion, import) appends its
    /// entry in the same atomic write as the change, so a change is never
    /// without its entry and a refused change has none. Freezing, unfreezing
    /// and compaction, which are not versions, append theirs just after.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use coord_core::config::{AuditAction, AuditFilter, ConfigCenter};
    /// use coord_core::memory::MemoryBackend;
    ///
    /// let center = ConfigCenter::new(Arc::new(MemoryBackend::new())).with_author("ann");
    /// center.put("billing/prod/timeout", "5s").await?;
    /// center.delete("billing/prod/timeout").await?;
    /// let log = center.audit("billing/prod", AuditFilter::new()).await?;
    /// assert_eq!(log[0].action, AuditAction::Delete);
    /// assert_eq!((log[1].who.as_str(), log[1].version), ("ann", Some(1)));
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn audit(&self, namespace: &str, filter: AuditFilter) -> Result<Vec<AuditEntry>> {
        validate_namespace(namespace)?;
        let key = format!("{namespace}/{AUDIT_KEY}");
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut window = 64usize;
        loop {
            let batch = self.backend().config_history(&key, window).await?;
            let exhausted = batch.len() < window;
            let mut out = Vec::new();
            let mut older_than_since = false;
            for stored in &batch {
                let value = self.decode(&key, stored)?;
                let mut entry: AuditEntry = serde_json::from_slice(&value.value).map_err(|e| {
                    Error::codec(
                        format!(
                            "audit entry {key} version {} is not valid: {e}",
                            stored.version
                        ),
                        None,
                    )
                })?;
                entry.seq = stored.version;
                if let Some(since) = filter.since_ms
                    && entry.time_ms.saturating_add(CLOCK_SKEW_MS) < since
                {
                    older_than_since = true;
                    break;
                }
                if filter.accepts(&entry) {
                    out.push(entry);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if exhausted || older_than_since {
                return Ok(out);
            }
            window = window.saturating_mul(4);
        }
    }

    /// Drops all but the newest `keep_last` (at least 1) entries of
    /// `namespace`'s audit log; returns how many were dropped.
    pub async fn compact_audit(&self, namespace: &str, keep_last: usize) -> Result<u64> {
        validate_namespace(namespace)?;
        self.backend()
            .config_compact(&format!("{namespace}/{AUDIT_KEY}"), keep_last)
            .await
    }

    /// Appends `record` as the next version of `key` together with its
    /// audit entry, in one atomic write.
    ///
    /// With `expected`, the write is a compare-and-set. Without, the latest
    /// version is read and the write made conditional on it, so that the
    /// audit entry names the exact version written; a concurrent writer
    /// moving the key in between makes it try again (up to
    /// [`BLIND_WRITE_ATTEMPTS`] times).
    pub(crate) async fn write_audited(
        &self,
        key: &ConfigKey,
        expected: Option<u64>,
        record: Bytes,
        action: AuditAction,
        message: &str,
    ) -> Result<u64> {
        self.write_audited_from(key, expected, None, record, action, message)
            .await
    }

    /// Checks that `namespace` takes direct writes and, for a blind write
    /// (`expected` is `None`), reads the key's latest version, both at once;
    /// the version to pass to [`write_audited_from`](Self::write_audited_from).
    pub(crate) async fn check_and_base(
        &self,
        key: &ConfigKey,
        what: &str,
        expected: Option<u64>,
    ) -> Result<Option<u64>> {
        let latest = async {
            match expected {
                Some(_) => Ok(None),
                None => self.latest_version(key.as_str()).await.map(Some),
            }
        };
        let (allowed, base) =
            futures::join!(self.ensure_direct_writes(key.namespace(), what), latest);
        allowed?;
        base
    }

    /// [`write_audited`](Self::write_audited) whose first attempt of a blind
    /// write uses `first_base`, a latest version read already.
    pub(crate) async fn write_audited_from(
        &self,
        key: &ConfigKey,
        expected: Option<u64>,
        mut first_base: Option<u64>,
        record: Bytes,
        action: AuditAction,
        message: &str,
    ) -> Result<u64> {
        let namespace = key.namespace();
        let mut attempt = 0;
        loop {
            let base = match (expected, first_base.take()) {
                (Some(v), _) => v,
                (None, Some(v)) => v,
                (None, None) => self.latest_version(key.as_str()).await?,
            };
            let entry = AuditEntry::new(self, action, key.as_str())
                .version(base + 1)
                .message(message);
            let writes = vec![
                ConfigWrite {
                    key: key.as_str().to_owned(),
                    expected: Some(base),
                    record: record.clone(),
                },
                entry.write(self, namespace)?,
            ];
            match self.append(namespace, writes).await {
                Ok(versions) => return Ok(versions[0]),
                Err(Error::Conflict { .. })
                    if expected.is_none() && attempt + 1 < BLIND_WRITE_ATTEMPTS =>
                {
                    attempt += 1;
                    let jitter = fastrand::u64(0..(1u64 << attempt.min(6)));
                    tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends `entry` on its own (for actions that write no version).
    pub(crate) async fn append_audit(&self, namespace: &str, entry: AuditEntry) -> Result<()> {
        let write = entry.write(self, namespace)?;
        self.append(namespace, vec![write]).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_serialize_in_snake_case_and_unknown_ones_read_as_other() {
        for action in [
            AuditAction::GrayPromote,
            AuditAction::Put,
            AuditAction::Other,
        ] {
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{action}\""));
        }
        let back: AuditAction = serde_json::from_str("\"launch_rockets\"").unwrap();
        assert_eq!(back, AuditAction::Other);
    }

    #[test]
    fn filters_match_keys_among_changes() {
        let e = AuditEntry {
            who: "ann".into(),
            time_ms: 10,
            action: AuditAction::Promote,
            key: "a/b".into(),
            version: None,
            message: String::new(),
            changes: vec![AuditChange {
                key: "a/b/k".into(),
                version: 3,
            }],
            seq: 1,
        };
        assert!(AuditFilter::new().key("a/b/k").accepts(&e));
        assert!(AuditFilter::new().key("a/b").accepts(&e));
        assert!(!AuditFilter::new().key("a/b/x").accepts(&e));
        assert!(!AuditFilter::new().who("bob").accepts(&e));
        assert!(!AuditFilter::new().since_ms(11).accepts(&e));
        assert!(AuditFilter::new().action(AuditAction::Promote).accepts(&e));
    }
}
