//! Approvals: a namespace may require that every change is proposed as a
//! draft and approved by another author before it is published.
//!
//! The policy is the reserved key `{app}/{env}/.coord/policy`; each draft
//! is the reserved key `{app}/{env}/.coord/drafts/{id}`, one version per
//! state (pending, then approved or rejected). A secret draft holds its
//! value encrypted, and publishing copies the ciphertext: the approver
//! needs no key.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::audit::{AuditAction, AuditEntry};
use super::backend::ConfigWrite;
use super::center::{ConfigCenter, Put, now_ms, unified_diff};
use super::key::{ConfigKey, namespace_of, validate_namespace};
use crate::error::{Error, Result};

const POLICY_KEY: &str = ".coord/policy";
const DRAFTS: &str = ".coord/drafts";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Policy {
    #[serde(default)]
    require_approval: bool,
}

/// A draft's id: its namespace and a random part, written `app/env/<16 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DraftId {
    namespace: String,
    id: String,
}

impl DraftId {
    /// Parses `app/env/<16 hex digits>` (what [`Display`](fmt::Display) writes).
    pub fn parse(s: &str) -> Result<DraftId> {
        let bad = || Error::invalid(format!("{s:?} is not a draft id (app/env/<16 hex digits>)"));
        let namespace = namespace_of(s).ok_or_else(bad)?;
        let id = s
            .get(namespace.len() + 1..)
            .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(bad)?;
        validate_namespace(namespace)?;
        Ok(DraftId {
            namespace: namespace.to_owned(),
            id: id.to_ascii_lowercase(),
        })
    }

    fn random(namespace: &str) -> DraftId {
        DraftId {
            namespace: namespace.to_owned(),
            id: format!("{:016x}", fastrand::u64(..)),
        }
    }

    /// The namespace the draft changes.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn key(&self) -> String {
        format!("{}/{DRAFTS}/{}", self.namespace, self.id)
    }
}

impl fmt::Display for DraftId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// Where a draft stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DraftStatus {
    /// Waiting for review; nothing is published.
    Pending,
    /// Approved and published.
    Approved {
        /// The approver.
        by: String,
        /// The version published.
        version: u64,
        /// When (milliseconds since the epoch).
        time_ms: u64,
    },
    /// Rejected (or withdrawn by its proposer); nothing was published.
    Rejected {
        /// Who rejected it.
        by: String,
        /// Why.
        reason: String,
        /// When (milliseconds since the epoch).
        time_ms: u64,
    },
}

/// A proposed change of one key, waiting for (or past) review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Draft {
    /// Its id.
    #[serde(skip, default = "placeholder_id")]
    pub id: DraftId,
    /// The full key it changes.
    pub key: String,
    /// The key's latest version when proposed: approving publishes only if
    /// the key is still there ([`Error::Conflict`] otherwise).
    pub base_version: u64,
    /// Who proposed it.
    pub proposer: String,
    /// When (milliseconds since the epoch).
    pub time_ms: u64,
    /// Why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// A deletion rather than a value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Where it stands.
    pub status: DraftStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_key_id: Option<String>,
    /// The value as stored, base64 (a secret's ciphertext).
    value: String,
}

fn placeholder_id() -> DraftId {
    DraftId {
        namespace: String::new(),
        id: String::new(),
    }
}

impl Draft {
    /// Whether the proposed value is a secret (stored encrypted).
    pub fn is_secret(&self) -> bool {
        self.secret_key_id.is_some()
    }

    /// Whether it still waits for review.
    pub fn is_pending(&self) -> bool {
        self.status == DraftStatus::Pending
    }

    fn stored(&self) -> Result<Bytes> {
        B64.decode(&self.value)
            .map(Bytes::from)
            .map_err(|e| Error::codec(format!("draft {} is corrupted: {e}", self.id), None))
    }
}

impl ConfigCenter {
    /// Makes `namespace` require approval (or not): while it does, `put`,
    /// `delete`, `rollback`, gray releases, promotion into it and import
    /// into it are refused with [`Error::InvalidArgument`], and changes go
    /// through [`propose`](Self::propose) and [`approve`](Self::approve).
    ///
    /// Authors are what each center was given
    /// ([`with_author`](Self::with_author)), and the policy itself can be
    /// changed by anyone (audited as [`AuditAction::Policy`]): this is a
    /// review workflow, not access control.
    pub async fn require_approval(&self, namespace: &str, required: bool) -> Result<()> {
        validate_namespace(namespace)?;
        let record = self.json_record(
            &Policy {
                require_approval: required,
            },
            "",
            false,
        )?;
        let entry = AuditEntry::new(self, AuditAction::Policy, namespace).message(format!(
            "approval {}",
            if required { "required" } else { "not required" }
        ));
        let writes = vec![
            ConfigWrite {
                key: format!("{namespace}/{POLICY_KEY}"),
                expected: None,
                record,
            },
            entry.write(self, namespace)?,
        ];
        self.append(namespace, writes).await.map(|_| ())
    }

    /// Whether `namespace` requires approval.
    pub async fn approval_required(&self, namespace: &str) -> Result<bool> {
        validate_namespace(namespace)?;
        Ok(self
            .read_json::<Policy>(&format!("{namespace}/{POLICY_KEY}"))
            .await?
            .and_then(|(_, p)| p)
            .is_some_and(|p| p.require_approval))
    }

    /// Refuses a direct write (`what`) to a namespace that requires approval.
    pub(crate) async fn ensure_direct_writes(&self, namespace: &str, what: &str) -> Result<()> {
        if self.approval_required(namespace).await? {
            return Err(Error::invalid(format!(
                "namespace {namespace} requires approval, so {what} is refused: propose the \
                 change (ConfigCenter::propose) and have another author approve it"
            )));
        }
        Ok(())
    }

    /// Proposes `value` for `key` as a draft; nothing is published until
    /// another author [approves](Self::approve) it.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use coord_core::config::ConfigCenter;
    /// use coord_core::memory::MemoryBackend;
    ///
    /// let store = Arc::new(MemoryBackend::new());
    /// let ann = ConfigCenter::new(store.clone()).with_author("ann");
    /// let bob = ConfigCenter::new(store).with_author("bob");
    /// ann.require_approval("billing/prod", true).await?;
    /// assert!(ann.put("billing/prod/timeout", "5s").await.is_err());
    ///
    /// let draft = ann.propose("billing/prod/timeout", "5s", "faster failover").await?;
    /// assert!(ann.get("billing/prod/timeout").await?.is_none(), "not yet published");
    /// assert!(ann.approve(&draft).await.is_err(), "no self-approval");
    /// assert_eq!(bob.approve(&draft).await?, 1);
    /// assert_eq!(ann.get("billing/prod/timeout").await?.unwrap().as_str()?, "5s");
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn propose(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        message: impl Into<String>,
    ) -> Result<DraftId> {
        self.propose_with(key, value, Put::new().message(message))
            .await
    }

    /// [`propose`](Self::propose) with options: a message, secrecy (the
    /// draft holds the value encrypted), and the version to base it on
    /// (default: the key's latest).
    pub async fn propose_with(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        options: Put,
    ) -> Result<DraftId> {
        let key = ConfigKey::parse(key)?;
        let (stored, secret_key_id) = self.seal(value.as_ref(), options.secret)?;
        self.create_draft(&key, options, false, stored, secret_key_id)
            .await
    }

    /// Proposes deleting `key`.
    pub async fn propose_delete(&self, key: &str, message: impl Into<String>) -> Result<DraftId> {
        let key = ConfigKey::parse(key)?;
        let options = Put::new().message(message);
        self.create_draft(&key, options, true, Bytes::new(), None)
            .await
    }

    async fn create_draft(
        &self,
        key: &ConfigKey,
        options: Put,
        deleted: bool,
        stored: Bytes,
        secret_key_id: Option<String>,
    ) -> Result<DraftId> {
        let base_version = match options.expected {
            Some(v) => v,
            None => self.latest_version(key.as_str()).await?,
        };
        let namespace = key.namespace();
        let mut draft = Draft {
            id: DraftId::random(namespace),
            key: key.as_str().to_owned(),
            base_version,
            proposer: self.author().to_owned(),
            time_ms: now_ms(),
            message: options.message,
            deleted,
            status: DraftStatus::Pending,
            secret_key_id,
            value: B64.encode(&stored),
        };
        // A new id on the (unlikely) collision with an existing draft.
        for attempt in 0..3 {
            if attempt > 0 {
                draft.id = DraftId::random(namespace);
            }
            let entry = AuditEntry::new(self, AuditAction::Draft, key.as_str())
                .message(format!("draft {}: {}", draft.id, draft.message));
            let writes = vec![
                ConfigWrite {
                    key: draft.id.key(),
                    expected: Some(0),
                    record: self.json_record(&draft, &draft.message, false)?,
                },
                entry.write(self, namespace)?,
            ];
            match self.append(namespace, writes).await {
                Ok(_) => return Ok(draft.id),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            expected: "a free draft id".to_owned(),
            actual: "three random ids already taken".to_owned(),
        })
    }

    /// The draft `id`, whatever its status.
    pub async fn draft(&self, id: &DraftId) -> Result<Draft> {
        self.read_draft(id).await.map(|(_, d)| d)
    }

    async fn read_draft(&self, id: &DraftId) -> Result<(u64, Draft)> {
        match self.read_json::<Draft>(&id.key()).await? {
            Some((revision, Some(mut draft))) => {
                draft.id = id.clone();
                Ok((revision, draft))
            }
            _ => Err(Error::NotFound(format!("no draft {id}"))),
        }
    }

    /// The pending drafts of `namespace`, oldest first.
    pub async fn drafts(&self, namespace: &str) -> Result<Vec<Draft>> {
        validate_namespace(namespace)?;
        let prefix = format!("{namespace}/{DRAFTS}");
        let mut out = Vec::new();
        for (key, stored) in self.backend().config_list(&prefix).await? {
            let Ok(id) = DraftId::parse(&format!(
                "{namespace}/{}",
                key.rsplit('/').next().unwrap_or_default()
            )) else {
                continue;
            };
            if let Some(mut draft) = self.parse_json::<Draft>(&key, &stored)?
                && draft.is_pending()
            {
                draft.id = id;
                out.push(draft);
            }
        }
        out.sort_by(|a, b| (a.time_ms, &a.id).cmp(&(b.time_ms, &b.id)));
        Ok(out)
    }

    /// The value a draft proposes (decrypted if a secret; empty for a deletion).
    pub fn draft_value(&self, draft: &Draft) -> Result<Bytes> {
        self.unseal(
            &draft.stored()?,
            draft.secret_key_id.as_deref(),
            &format!("draft {}", draft.id),
        )
    }

    /// A unified diff from the key's latest value to the draft's, for
    /// review. Secrets and binary values are shown as a placeholder.
    pub async fn draft_diff(&self, draft: &Draft) -> Result<String> {
        let key = ConfigKey::parse(&draft.key)?;
        let current = match self.backend().config_latest(key.as_str()).await? {
            Some(stored) => Some(super::promote::RawValue::decode(key.as_str(), &stored)?),
            None => None,
        };
        let old = current
            .filter(|c| !c.meta.deleted)
            .map(|c| c.display())
            .unwrap_or_default();
        let new = if draft.deleted {
            String::new()
        } else {
            super::promote::display_stored(&draft.stored()?, draft.secret_key_id.as_deref())
        };
        Ok(unified_diff(
            &old,
            &new,
            &format!("{} (latest)", draft.key),
            &format!("{} (draft {})", draft.key, draft.id),
        ))
    }

    /// Approves draft `id` and publishes it: a new version of its key, only
    /// if the key is still at the draft's base version ([`Error::Conflict`]
    /// otherwise: reject it and propose again). The approver must not be
    /// the proposer ([`Error::InvalidArgument`]: no self-approval). Returns
    /// the published version. The version's author is the proposer; the
    /// audit entry names the approver.
    pub async fn approve(&self, id: &DraftId) -> Result<u64> {
        let (revision, mut draft) = self.read_draft(id).await?;
        ensure_pending(&draft)?;
        if draft.proposer == self.author() {
            return Err(Error::invalid(format!(
                "draft {id} was proposed by {}: no self-approval, another author must approve it",
                draft.proposer
            )));
        }
        let key = ConfigKey::parse(&draft.key)?;
        let version = draft.base_version + 1;
        let message = if draft.message.is_empty() {
            format!("approved by {} (draft {id})", self.author())
        } else {
            format!(
                "{} (approved by {}, draft {id})",
                draft.message,
                self.author()
            )
        };
        let record = self
            .clone()
            .with_author(draft.proposer.clone())
            .record_stored(
                &draft.stored()?,
                &message,
                draft.secret_key_id.clone(),
                draft.deleted,
            )?;
        draft.status = DraftStatus::Approved {
            by: self.author().to_owned(),
            version,
            time_ms: now_ms(),
        };
        let entry = AuditEntry::new(self, AuditAction::Approve, key.as_str())
            .version(version)
            .message(format!("draft {id} by {}", draft.proposer));
        let writes = vec![
            ConfigWrite {
                key: key.as_str().to_owned(),
                expected: Some(draft.base_version),
                record,
            },
            ConfigWrite {
                key: id.key(),
                expected: Some(revision),
                record: self.json_record(&draft, "approved", false)?,
            },
            entry.write(self, key.namespace())?,
        ];
        self.append(key.namespace(), writes).await?;
        Ok(version)
    }

    /// Rejects draft `id` with a reason (its proposer may reject it too,
    /// to withdraw it). Nothing is published.
    pub async fn reject(&self, id: &DraftId, reason: impl Into<String>) -> Result<()> {
        let (revision, mut draft) = self.read_draft(id).await?;
        ensure_pending(&draft)?;
        let reason = reason.into();
        let entry = AuditEntry::new(self, AuditAction::Reject, &draft.key)
            .message(format!("draft {id} by {}: {reason}", draft.proposer));
        draft.status = DraftStatus::Rejected {
            by: self.author().to_owned(),
            reason,
            time_ms: now_ms(),
        };
        let writes = vec![
            ConfigWrite {
                key: id.key(),
                expected: Some(revision),
                record: self.json_record(&draft, "rejected", false)?,
            },
            entry.write(self, id.namespace())?,
        ];
        self.append(id.namespace(), writes).await.map(|_| ())
    }
}

fn ensure_pending(draft: &Draft) -> Result<()> {
    if draft.is_pending() {
        return Ok(());
    }
    Err(Error::Conflict {
        expected: format!("draft {} pending", draft.id),
        actual: match &draft.status {
            DraftStatus::Approved { by, version, .. } => {
                format!("approved by {by} as version {version}")
            }
            DraftStatus::Rejected { by, reason, .. } => format!("rejected by {by}: {reason}"),
            DraftStatus::Pending => "pending".to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_ids_round_trip_and_bad_ones_are_invalid() {
        let id = DraftId::random("a/b");
        assert_eq!(DraftId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(id.namespace(), "a/b");
        assert_eq!(id.key(), format!("a/b/.coord/drafts/{}", id.id));
        for bad in [
            "",
            "a/b",
            "a/b/xyz",
            "a/b/0123456789abcdeg",
            "a b/c/0123456789abcdef",
        ] {
            assert!(DraftId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
