//! Gray (canary) releases: a candidate value of a key served only to the
//! clients a rule selects (by id, by labels, or a stable percentage), until
//! it is promoted to everyone or aborted.
//!
//! The candidate and its rule are the reserved key
//! `{app}/{env}/.coord/gray/{key}`; promoting or aborting writes a deletion
//! of it. [`ConfigCenter::get_for`] reads the rule on every call, so a
//! client re-resolves simply by calling it again, for instance on each item
//! of [`ConfigCenter::watch_gray`] and of an ordinary watch of the key.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::audit::{AuditAction, AuditEntry};
use super::backend::ConfigWrite;
use super::center::{ConfigCenter, Put, now_ms};
use super::key::{ConfigKey, validate_namespace};
use super::record::VersionMeta;
use super::value::ConfigValue;
use super::watch::ConfigWatch;
use crate::discovery::balancer::hash_key;
use crate::error::{Error, Result};

const GRAY: &str = ".coord/gray";

/// Which clients get a gray release's candidate: a client matches if its
/// id is listed, or it carries every listed label with the same value, or
/// its id falls in the first `percent` of a stable hash.
///
/// The percentage uses [`hash_key`] (XXH3) of `"{key name}/{client id}"`
/// into 10,000 buckets: the same client is in or out on every call and in
/// every process, and different keys select different clients.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct GrayRule {
    /// Labels a client must all carry, with these values (ignored if empty).
    pub labels: BTreeMap<String, String>,
    /// Client ids that match.
    pub ids: BTreeSet<String>,
    /// The share of all client ids that match, 0 to 100.
    pub percent: f64,
}

impl GrayRule {
    /// A rule that matches no one yet.
    pub fn new() -> GrayRule {
        GrayRule::default()
    }

    /// Also matches the client `id`.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> GrayRule {
        self.ids.insert(id.into());
        self
    }

    /// Clients must carry label `name` = `value` (with every other label given).
    #[must_use]
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> GrayRule {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// Also matches `percent` (0 to 100) of all client ids.
    #[must_use]
    pub fn percent(mut self, percent: f64) -> GrayRule {
        self.percent = percent;
        self
    }

    fn check(&self) -> Result<()> {
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(Error::invalid(format!(
                "gray rule percent {} is not between 0 and 100",
                self.percent
            )));
        }
        if self.ids.is_empty() && self.labels.is_empty() && self.percent == 0.0 {
            return Err(Error::invalid(
                "gray rule matches no client: give ids, labels or a percent",
            ));
        }
        Ok(())
    }

    /// Whether `client` gets the candidate of the key named `name` (the key
    /// within its namespace, `db/url`).
    pub fn matches(&self, name: &str, client: &ClientIdentity) -> bool {
        if self.ids.contains(&client.id) {
            return true;
        }
        if !self.labels.is_empty()
            && self
                .labels
                .iter()
                .all(|(k, v)| client.labels.get(k) == Some(v))
        {
            return true;
        }
        self.percent > 0.0 && bucket(name, &client.id) < (self.percent * 100.0).round() as u64
    }
}

/// The client's bucket for key `name`, 0 to 9,999.
fn bucket(name: &str, id: &str) -> u64 {
    let hash = hash_key(format!("{name}/{id}").as_bytes());
    ((u128::from(hash) * 10_000) >> 64) as u64
}

/// Who is asking, for [`ConfigCenter::get_for`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientIdentity {
    /// A stable id of the client (an instance id, a host name).
    pub id: String,
    /// Its labels (`zone`, `version`, `tenant`…).
    pub labels: BTreeMap<String, String>,
}

impl ClientIdentity {
    /// A client with this id and no labels.
    pub fn new(id: impl Into<String>) -> ClientIdentity {
        ClientIdentity {
            id: id.into(),
            labels: BTreeMap::new(),
        }
    }

    /// With label `name` = `value`.
    #[must_use]
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> ClientIdentity {
        self.labels.insert(name.into(), value.into());
        self
    }
}

/// A gray release in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GrayRelease {
    /// The full key.
    #[serde(skip)]
    pub key: String,
    /// Who gets the candidate.
    pub rule: GrayRule,
    /// The key's latest version when released: promoting publishes only if
    /// the key is still there.
    pub based_on: u64,
    /// Who released it.
    pub author: String,
    /// When (milliseconds since the epoch).
    pub time_ms: u64,
    /// Why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The release's revision (the reserved key's version), filled in when read.
    #[serde(skip)]
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_key_id: Option<String>,
    /// The candidate as stored, base64 (a secret's ciphertext).
    value: String,
}

impl GrayRelease {
    /// Whether the candidate is a secret.
    pub fn is_secret(&self) -> bool {
        self.secret_key_id.is_some()
    }

    /// Whether `client` gets the candidate.
    pub fn matches(&self, client: &ClientIdentity) -> bool {
        let name = ConfigKey::parse(&self.key)
            .map(|k| k.name().to_owned())
            .unwrap_or_default();
        self.rule.matches(&name, client)
    }

    fn stored(&self) -> Result<Bytes> {
        B64.decode(&self.value).map(Bytes::from).map_err(|e| {
            Error::codec(
                format!("gray release of {} is corrupted: {e}", self.key),
                None,
            )
        })
    }
}

/// What [`ConfigCenter::get_for`] resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolved {
    /// The value. For a gray candidate, `version` is the published version
    /// the release is based on and `meta` is the candidate's.
    pub value: ConfigValue,
    /// Whether it is a gray release's candidate rather than the published value.
    pub gray: bool,
}

fn gray_key(key: &ConfigKey) -> String {
    format!("{}/{GRAY}/{}", key.namespace(), key.name())
}

impl ConfigCenter {
    /// Starts (or replaces) a gray release of `key`: clients `rule` selects
    /// get `value` from [`get_for`](Self::get_for), everyone else the
    /// published value. The candidate is encrypted if the published value is
    /// a secret. Refused where approval is required.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use coord_core::config::{ClientIdentity, ConfigCenter, GrayRule};
    /// use coord_core::memory::MemoryBackend;
    ///
    /// let center = ConfigCenter::new(Arc::new(MemoryBackend::new())).with_author("ann");
    /// center.put("shop/prod/pool", "10").await?;
    /// center.gray_publish("shop/prod/pool", "20", GrayRule::new().label("zone", "eu-1")).await?;
    /// let eu = ClientIdentity::new("web-7").label("zone", "eu-1");
    /// let us = ClientIdentity::new("web-8").label("zone", "us-1");
    /// assert_eq!(center.get_for("shop/prod/pool", &eu).await?.unwrap().value.as_str()?, "20");
    /// assert_eq!(center.get_for("shop/prod/pool", &us).await?.unwrap().value.as_str()?, "10");
    /// center.gray_promote("shop/prod/pool").await?;
    /// assert_eq!(center.get("shop/prod/pool").await?.unwrap().as_str()?, "20");
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn gray_publish(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        rule: GrayRule,
    ) -> Result<()> {
        self.gray_publish_with(key, value, rule, Put::new()).await
    }

    /// [`gray_publish`](Self::gray_publish) with options: a message,
    /// secrecy (also implied by a secret published value), and the
    /// published version to base it on (default: the latest).
    pub async fn gray_publish_with(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        rule: GrayRule,
        options: Put,
    ) -> Result<()> {
        let key = ConfigKey::parse(key)?;
        rule.check()?;
        self.ensure_direct_writes(key.namespace(), "a gray release")
            .await?;
        let latest = self.backend().config_latest(key.as_str()).await?;
        let (based_on, published_secret) = match &latest {
            Some(stored) => {
                let raw = super::promote::RawValue::decode(key.as_str(), stored)?;
                (raw.version, raw.is_secret() && !raw.meta.deleted)
            }
            None => (0, false),
        };
        let based_on = options.expected.unwrap_or(based_on);
        let (stored, secret_key_id) =
            self.seal(value.as_ref(), options.secret || published_secret)?;
        let release = GrayRelease {
            key: key.as_str().to_owned(),
            rule,
            based_on,
            author: self.author().to_owned(),
            time_ms: now_ms(),
            message: options.message,
            revision: 0,
            secret_key_id,
            value: B64.encode(&stored),
        };
        let entry = AuditEntry::new(self, AuditAction::GrayPublish, key.as_str()).message(format!(
            "on version {based_on}: ids {:?}, labels {:?}, {}%{}",
            release.rule.ids,
            release.rule.labels,
            release.rule.percent,
            if release.message.is_empty() {
                String::new()
            } else {
                format!(": {}", release.message)
            }
        ));
        let writes = vec![
            ConfigWrite {
                key: gray_key(&key),
                expected: None,
                record: self.json_record(&release, &release.message, false)?,
            },
            entry.write(self, key.namespace())?,
        ];
        self.append(key.namespace(), writes).await.map(|_| ())
    }

    /// The gray release of `key` in progress, if any.
    pub async fn gray(&self, key: &str) -> Result<Option<GrayRelease>> {
        let key = ConfigKey::parse(key)?;
        Ok(self.read_gray(&key).await?.map(|(_, r)| r))
    }

    async fn read_gray(&self, key: &ConfigKey) -> Result<Option<(u64, GrayRelease)>> {
        match self.read_json::<GrayRelease>(&gray_key(key)).await? {
            Some((revision, Some(mut release))) => {
                release.key = key.as_str().to_owned();
                release.revision = revision;
                Ok(Some((revision, release)))
            }
            _ => Ok(None),
        }
    }

    /// The value of `key` for `client`: a gray release's candidate if its
    /// rule selects the client, the published value otherwise (`None` if
    /// there is neither). Reads the rule on every call.
    pub async fn get_for(&self, key: &str, client: &ClientIdentity) -> Result<Option<Resolved>> {
        let parsed = ConfigKey::parse(key)?;
        let (release, published) =
            futures::try_join!(self.read_gray(&parsed), self.get_key(&parsed))?;
        if let Some((_, release)) = release
            && release.rule.matches(parsed.name(), client)
        {
            let stored = release.stored()?;
            let value = self.unseal(
                &stored,
                release.secret_key_id.as_deref(),
                &format!("gray release of {key}"),
            )?;
            let meta = VersionMeta {
                author: release.author.clone(),
                message: release.message.clone(),
                time_ms: release.time_ms,
                crc32: crc32fast::hash(&stored),
                deleted: false,
                secret_key_id: release.secret_key_id.clone(),
            };
            return Ok(Some(Resolved {
                value: ConfigValue {
                    key: key.to_owned(),
                    version: release.based_on,
                    value,
                    meta,
                },
                gray: true,
            }));
        }
        Ok(published.map(|value| Resolved { value, gray: false }))
    }

    /// Publishes `key`'s gray candidate to everyone (a normal new version,
    /// written only if the key is still at the version the release was
    /// based on: [`Error::Conflict`] otherwise) and ends the release, in one
    /// atomic write. Returns the new version. Refused where approval is
    /// required.
    pub async fn gray_promote(&self, key: &str) -> Result<u64> {
        let parsed = ConfigKey::parse(key)?;
        self.ensure_direct_writes(parsed.namespace(), "a gray promotion")
            .await?;
        let (revision, release) = self
            .read_gray(&parsed)
            .await?
            .ok_or_else(|| no_release(key))?;
        let version = release.based_on + 1;
        let message = format!(
            "gray release promoted{}",
            if release.message.is_empty() {
                String::new()
            } else {
                format!(": {}", release.message)
            }
        );
        let entry = AuditEntry::new(self, AuditAction::GrayPromote, key).version(version);
        let writes = vec![
            ConfigWrite {
                key: key.to_owned(),
                expected: Some(release.based_on),
                record: self.record_stored(
                    &release.stored()?,
                    &message,
                    release.secret_key_id.clone(),
                    false,
                )?,
            },
            self.end_gray(&parsed, revision, "promoted")?,
            entry.write(self, parsed.namespace())?,
        ];
        self.append(parsed.namespace(), writes).await?;
        Ok(version)
    }

    /// Ends `key`'s gray release without publishing it: every client gets
    /// the published value again.
    pub async fn gray_abort(&self, key: &str) -> Result<()> {
        let parsed = ConfigKey::parse(key)?;
        let (revision, _) = self
            .read_gray(&parsed)
            .await?
            .ok_or_else(|| no_release(key))?;
        let entry = AuditEntry::new(self, AuditAction::GrayAbort, key);
        let writes = vec![
            self.end_gray(&parsed, revision, "aborted")?,
            entry.write(self, parsed.namespace())?,
        ];
        self.append(parsed.namespace(), writes).await.map(|_| ())
    }

    fn end_gray(&self, key: &ConfigKey, revision: u64, why: &str) -> Result<ConfigWrite> {
        Ok(ConfigWrite {
            key: gray_key(key),
            expected: Some(revision),
            record: self.record_stored(b"", why, None, true)?,
        })
    }

    /// The gray releases in progress in `namespace`, by key.
    pub async fn gray_releases(&self, namespace: &str) -> Result<Vec<GrayRelease>> {
        validate_namespace(namespace)?;
        let prefix = format!("{namespace}/{GRAY}/");
        let mut out = Vec::new();
        for (reserved, stored) in self.backend().config_list(&prefix).await? {
            let Some(name) = reserved.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(key) = ConfigKey::parse(&format!("{namespace}/{name}")) else {
                continue;
            };
            if let Some(mut release) = self.parse_json::<GrayRelease>(&reserved, &stored)? {
                release.key = key.as_str().to_owned();
                release.revision = stored.version;
                out.push(release);
            }
        }
        Ok(out)
    }

    /// Every change of the gray releases under `namespace` (start, replace,
    /// promote, abort), for clients to call [`get_for`](Self::get_for)
    /// again. Each item is a version of the reserved key
    /// `{namespace}/.coord/gray/{key}`; a deletion means the release ended.
    pub async fn watch_gray(&self, namespace: &str) -> Result<ConfigWatch> {
        validate_namespace(namespace)?;
        ConfigWatch::start_inner(self.clone(), &format!("{namespace}/{GRAY}"), true).await
    }
}

fn no_release(key: &str) -> Error {
    Error::NotFound(format!("config {key} has no gray release in progress"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_id_labels_and_a_stable_percent() {
        let rule = GrayRule::new()
            .id("a")
            .label("zone", "eu")
            .label("tier", "web");
        assert!(rule.matches("k", &ClientIdentity::new("a")));
        let eu_web = ClientIdentity::new("b")
            .label("zone", "eu")
            .label("tier", "web")
            .label("extra", "x");
        assert!(rule.matches("k", &eu_web));
        assert!(!rule.matches("k", &ClientIdentity::new("b").label("zone", "eu")));
        let ten = GrayRule::new().percent(10.0);
        let hits = (0..10_000)
            .filter(|i| ten.matches("k", &ClientIdentity::new(format!("client-{i}"))))
            .count();
        assert!((700..=1300).contains(&hits), "{hits}");
        let c = ClientIdentity::new("client-1");
        assert_eq!(ten.matches("k", &c), ten.matches("k", &c), "stable");
        assert!(GrayRule::new().percent(100.0).matches("k", &c));
        assert!(GrayRule::new().check().is_err());
        assert!(GrayRule::new().percent(f64::NAN).check().is_err());
        assert!(GrayRule::new().percent(101.0).check().is_err());
    }
}
