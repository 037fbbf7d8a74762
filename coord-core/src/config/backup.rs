//! Backup and restore: a namespace exported as a JSON or YAML document
//! (secrets stay encrypted), and such a document imported back, with a dry
//! run that only shows the diff.
//!
//! The document:
//!
//! ```text
//! format: coord-config/1
//! namespace: billing/prod
//! exported_ms: 1765000000000
//! exported_by: ann
//! keys:
//! - key: db/password
//!   versions:              # oldest first; without history only the latest
//!   - version: 4
//!     author: ann
//!     time_ms: 1765000000000
//!     message: rotate
//!     secret_key_id: prod1 # a secret: `base64` is its ciphertext
//!     base64: bePlwjNpo0n1…
//! - key: timeout
//!   versions:
//!   - version: 2
//!     author: bob
//!     time_ms: 1765000000000
//!     text: 5s
//! ```
//!
//! A version has `text` (UTF-8, not secret), `base64` (binary, or a
//! secret's ciphertext), or `deleted: true`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::audit::AuditAction;
use super::center::{ConfigCenter, now_ms};
use super::key::{ConfigKey, validate_namespace};
use super::promote::{PromotionChange, RawValue, changes_diff};
use super::record::VersionMeta;
use crate::error::{Error, Result};

const FORMAT: &str = "coord-config/1";

/// The text format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExportFormat {
    /// Pretty-printed JSON.
    #[default]
    Json,
    /// YAML (needs the `yaml` feature; [`Error::Unsupported`] without it).
    Yaml,
}

/// What [`ConfigCenter::export`] writes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Every stored version of every key (deletions included), not only
    /// the latest value of the live keys.
    pub history: bool,
    /// JSON or YAML.
    pub format: ExportFormat,
}

impl ExportOptions {
    /// The latest live values, as JSON.
    pub fn new() -> ExportOptions {
        ExportOptions::default()
    }

    /// With (or without) every version.
    #[must_use]
    pub fn history(mut self, history: bool) -> ExportOptions {
        self.history = history;
        self
    }

    /// In `format`.
    #[must_use]
    pub fn format(mut self, format: ExportFormat) -> ExportOptions {
        self.format = format;
        self
    }
}

/// What [`ConfigCenter::import`] changed (or, in a dry run, would change).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// A unified diff of every change (secrets and binary values as placeholders).
    pub diff: String,
    /// The full keys changed (or to change), sorted.
    pub changed: Vec<String>,
    /// The versions written, in the order of `changed` (empty in a dry run).
    pub versions: Vec<u64>,
    /// Whether nothing was written.
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    format: String,
    namespace: String,
    #[serde(default)]
    exported_ms: u64,
    #[serde(default)]
    exported_by: String,
    #[serde(default)]
    keys: Vec<KeyDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyDoc {
    key: String,
    versions: Vec<VersionDoc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VersionDoc {
    version: u64,
    #[serde(default)]
    author: String,
    #[serde(default)]
    time_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

impl VersionDoc {
    fn from_raw(raw: &RawValue) -> VersionDoc {
        let (text, base64) = match (raw.meta.deleted, raw.is_secret()) {
            (true, _) => (None, None),
            (false, false) => match std::str::from_utf8(&raw.stored) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(B64.encode(&raw.stored))),
            },
            (false, true) => (None, Some(B64.encode(&raw.stored))),
        };
        VersionDoc {
            version: raw.version,
            author: raw.meta.author.clone(),
            time_ms: raw.meta.time_ms,
            message: raw.meta.message.clone(),
            deleted: raw.meta.deleted,
            secret_key_id: raw.meta.secret_key_id.clone(),
            text,
            base64,
        }
    }

    fn into_raw(self, key: &str) -> Result<RawValue> {
        let bad =
            |why: String| Error::invalid(format!("import: {key} version {}: {why}", self.version));
        let stored = match (self.deleted, &self.text, &self.base64) {
            (true, None, None) => Bytes::new(),
            (false, Some(text), None) if self.secret_key_id.is_none() => {
                Bytes::from(text.clone().into_bytes())
            }
            (false, None, Some(b64)) => Bytes::from(
                B64.decode(b64)
                    .map_err(|e| bad(format!("base64 is not valid: {e}")))?,
            ),
            _ => {
                return Err(bad(
                    "a version has exactly one of `text` (not secret), `base64` or `deleted: true`"
                        .to_owned(),
                ));
            }
        };
        let meta = VersionMeta {
            author: self.author,
            message: self.message,
            time_ms: self.time_ms,
            crc32: crc32fast::hash(&stored),
            deleted: self.deleted,
            secret_key_id: if self.deleted {
                None
            } else {
                self.secret_key_id
            },
        };
        Ok(RawValue {
            version: self.version,
            meta,
            stored,
        })
    }
}

fn encode(doc: &Document, format: ExportFormat) -> Result<String> {
    match format {
        ExportFormat::Json => serde_json::to_string_pretty(doc)
            .map_err(|e| Error::codec(format!("export could not be encoded: {e}"), None)),
        ExportFormat::Yaml => yaml::to_string(doc),
    }
}

fn decode(text: &str) -> Result<Document> {
    let doc: Document = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("import: not a valid JSON export: {e}")))?
    } else {
        yaml::from_str(text)?
    };
    if doc.format != FORMAT {
        return Err(Error::invalid(format!(
            "import: format {:?} is not {FORMAT:?}",
            doc.format
        )));
    }
    Ok(doc)
}

#[cfg(feature = "yaml")]
mod yaml {
    use super::Document;
    use crate::error::{Error, Result};

    pub(super) fn to_string(doc: &Document) -> Result<String> {
        serde_saphyr::to_string(doc)
            .map_err(|e| Error::codec(format!("export could not be encoded as YAML: {e}"), None))
    }

    pub(super) fn from_str(text: &str) -> Result<Document> {
        serde_saphyr::from_str(text)
            .map_err(|e| Error::invalid(format!("import: not a valid YAML export: {e}")))
    }
}

#[cfg(not(feature = "yaml"))]
mod yaml {
    use super::Document;
    use crate::error::{Error, Result};

    fn unsupported() -> Error {
        Error::Unsupported(
            "YAML export and import need coord-core's `yaml` feature (JSON works without it)"
                .to_owned(),
        )
    }

    pub(super) fn to_string(_: &Document) -> Result<String> {
        Err(unsupported())
    }

    pub(super) fn from_str(_: &str) -> Result<Document> {
        Err(unsupported())
    }
}

impl ConfigCenter {
    /// Every stored version of `key`, newest first.
    async fn full_history(&self, key: &str) -> Result<Vec<super::backend::StoredVersion>> {
        let mut window = 256usize;
        loop {
            let batch = self.backend().config_history(key, window).await?;
            if batch.len() < window {
                return Ok(batch);
            }
            window = window.saturating_mul(4);
        }
    }

    /// Exports `namespace`'s configuration (not the center's own keys:
    /// audit log, drafts, gray releases, policy) as a document
    /// [`import`](Self::import) reads. Secrets are exported as stored:
    /// ciphertext and key id, never plain text.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use coord_core::config::{ConfigCenter, ExportOptions};
    /// use coord_core::memory::MemoryBackend;
    ///
    /// let center = ConfigCenter::new(Arc::new(MemoryBackend::new())).with_author("ann");
    /// center.put("billing/prod/timeout", "5s").await?;
    /// let backup = center.export("billing/prod", ExportOptions::new()).await?;
    ///
    /// let report = center.import("billing/staging", &backup, true).await?;
    /// assert_eq!(report.changed, ["billing/staging/timeout"]);
    /// assert!(center.get("billing/staging/timeout").await?.is_none(), "a dry run");
    /// center.import("billing/staging", &backup, false).await?;
    /// assert_eq!(center.get("billing/staging/timeout").await?.unwrap().as_str()?, "5s");
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn export(&self, namespace: &str, options: ExportOptions) -> Result<String> {
        validate_namespace(namespace)?;
        let mut keys = Vec::new();
        for (name, latest) in self.raw_latest(namespace).await? {
            let versions = if options.history {
                let key = format!("{namespace}/{name}");
                let mut all = self
                    .full_history(&key)
                    .await?
                    .iter()
                    .map(|s| RawValue::decode(&key, s))
                    .collect::<Result<Vec<_>>>()?;
                all.reverse();
                all.iter().map(VersionDoc::from_raw).collect()
            } else if latest.meta.deleted {
                continue;
            } else {
                vec![VersionDoc::from_raw(&latest)]
            };
            keys.push(KeyDoc {
                key: name,
                versions,
            });
        }
        let doc = Document {
            format: FORMAT.to_owned(),
            namespace: namespace.to_owned(),
            exported_ms: now_ms(),
            exported_by: self.author().to_owned(),
            keys,
        };
        encode(&doc, options.format)
    }

    /// Imports an [`export`](Self::export) (JSON or YAML) into `namespace`
    /// (the exported one or another): each key in the document gets the
    /// document's latest version of it, if different; keys not in the
    /// document are left alone. History is not replayed: only the latest
    /// version of each key is written, as a new version.
    ///
    /// With `dry_run`, nothing is written and the report shows what would
    /// change. Otherwise the changes are applied in one atomic write,
    /// compared-and-set against the versions just read ([`Error::Conflict`]
    /// if a key moved meanwhile: nothing is written). Refused where approval
    /// is required (a dry run is not). Secrets are written as exported: the
    /// target needs their key to read them.
    pub async fn import(&self, namespace: &str, text: &str, dry_run: bool) -> Result<ImportReport> {
        validate_namespace(namespace)?;
        let doc = decode(text)?;
        let target = self.raw_latest(namespace).await?;
        let mut changes = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for key_doc in doc.keys {
            let full = format!("{namespace}/{}", key_doc.key);
            ConfigKey::parse(&full).map_err(|e| e.context("import"))?;
            if !seen.insert(key_doc.key.clone()) {
                return Err(Error::invalid(format!(
                    "import: key {} appears twice in the document",
                    key_doc.key
                )));
            }
            let Some(latest) = key_doc.versions.into_iter().max_by_key(|v| v.version) else {
                continue;
            };
            let new = Some(latest.into_raw(&key_doc.key)?).filter(|v| !v.meta.deleted);
            let current = target.get(&key_doc.key);
            let old = current.filter(|v| !v.meta.deleted).cloned();
            let same = match (&old, &new) {
                (Some(a), Some(b)) => a.same_content(b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                changes.push(PromotionChange {
                    name: key_doc.key,
                    target_version: current.map_or(0, |v| v.version),
                    old,
                    new,
                });
            }
        }
        changes.sort_by(|a, b| a.name.cmp(&b.name));
        let source = format!("export of {}", doc.namespace);
        let report = ImportReport {
            diff: changes_diff(&changes, namespace, &source),
            changed: changes
                .iter()
                .map(|c| format!("{namespace}/{}", c.name))
                .collect(),
            versions: Vec::new(),
            dry_run,
        };
        if dry_run || changes.is_empty() {
            return Ok(report);
        }
        self.ensure_direct_writes(namespace, "import").await?;
        let written = self
            .apply_changes(
                namespace,
                &changes,
                AuditAction::Import,
                &format!("from an export of {}", doc.namespace),
                |c| match &c.new {
                    Some(v) => format!(
                        "imported from {}/{} version {} by {}{}",
                        doc.namespace,
                        c.name,
                        v.version,
                        v.meta.author,
                        if v.meta.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", v.meta.message)
                        }
                    ),
                    None => format!("imported from {}: deleted there", doc.namespace),
                },
            )
            .await?;
        Ok(ImportReport {
            versions: written.into_iter().map(|(_, v)| v).collect(),
            ..report
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_malformed_ones_are_invalid() {
        let raw = RawValue {
            version: 3,
            meta: VersionMeta {
                author: "ann".into(),
                secret_key_id: Some("k1".into()),
                ..VersionMeta::default()
            },
            stored: Bytes::from_static(b"\x01\x02sealed"),
        };
        let doc = VersionDoc::from_raw(&raw);
        assert!(doc.text.is_none() && doc.base64.is_some());
        let back = doc.into_raw("k").unwrap();
        assert!(back.same_content(&raw));
        let bad = VersionDoc {
            version: 1,
            author: String::new(),
            time_ms: 0,
            message: String::new(),
            deleted: false,
            secret_key_id: Some("k1".into()),
            text: Some("plain".into()),
            base64: None,
        };
        assert!(matches!(bad.into_raw("k"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            decode("{\"format\": \"x\", \"namespace\": \"a/b\"}"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
