//! Reads: the latest version, one version, history and listing.

use coord_core::Result;
use coord_core::config::{StoredVersion, key_under};
use futures::{StreamExt, TryStreamExt};
use redis::Value;

use super::{SCRIPTS, record_of, version_of};
use crate::backend::RedisBackend;
use crate::error::{map_err, unexpected_reply};
use crate::lock::evalsha;

/// Keys per `list.lua` call: bounds one script's run time (two `HGET`s per
/// key) and reply, while 10,000 keys still take ten calls.
const LIST_CHUNK: usize = 1000;

/// The field of a key's versions hash that holds its latest version and
/// record, `{n}\n{record}`, so that a read of the latest is one `HGET`.
pub(super) const HEAD_FIELD: &str = "head";

/// Splits a head into its version and record.
fn parse_head(head: &[u8], key: &str) -> Result<StoredVersion> {
    let bad = || {
        coord_core::Error::codec(
            format!("config {key}: its head field is not `n\\nrecord`"),
            None,
        )
    };
    let at = head.iter().position(|b| *b == b'\n').ok_or_else(bad)?;
    let version = std::str::from_utf8(&head[..at])
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    Ok(StoredVersion {
        version,
        record: bytes::Bytes::copy_from_slice(&head[at + 1..]),
    })
}

/// `list.lua` calls in flight at once.
const LIST_CONCURRENCY: usize = 4;

impl RedisBackend {
    /// [`config_latest`](coord_core::config::ConfigBackend::config_latest):
    /// one plain `HGET` of the key's `head` field (`{n}\n{record}`, kept by
    /// `append.lua` beside the numbered versions); one `latest.lua` call for
    /// a key written before heads existed.
    pub(super) async fn latest_version(&self, key: &str) -> Result<Option<StoredVersion>> {
        let keys = self.config_keys_of(key)?;
        let mut conn = self.inner.conn.clone();
        let head: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(keys.versions(key))
            .arg(HEAD_FIELD)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))?;
        if let Some(head) = head {
            return parse_head(&head, key).map(Some);
        }
        let mut cmd = evalsha(&SCRIPTS.latest, 2);
        cmd.arg(&keys.latest).arg(keys.versions(key)).arg(key);
        let reply: Value = self.eval(&SCRIPTS.latest, &cmd).await?;
        match reply {
            Value::Nil => Ok(None),
            Value::Array(pair) => Ok(pairs(pair, "config latest")?.pop().flatten()),
            other => Err(unexpected_reply("config latest", &other)),
        }
    }

    /// [`config_version`](coord_core::config::ConfigBackend::config_version):
    /// one `HGET`.
    pub(super) async fn one_version(
        &self,
        key: &str,
        version: u64,
    ) -> Result<Option<StoredVersion>> {
        let keys = self.config_keys_of(key)?;
        let mut conn = self.inner.conn.clone();
        let record: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(keys.versions(key))
            .arg(version)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))?;
        Ok(record.map(|r| StoredVersion {
            version,
            record: r.into(),
        }))
    }

    /// [`config_history`](coord_core::config::ConfigBackend::config_history):
    /// one `history.lua` call.
    pub(super) async fn versions_newest_first(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<StoredVersion>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.config_keys_of(key)?;
        let mut cmd = evalsha(&SCRIPTS.history, 2);
        cmd.arg(&keys.latest)
            .arg(keys.versions(key))
            .arg(key)
            .arg(limit);
        let reply: Value = self.eval(&SCRIPTS.history, &cmd).await?;
        match reply {
            Value::Array(items) => Ok(pairs(items, "config history")?
                .into_iter()
                .flatten()
                .collect()),
            other => Err(unexpected_reply("config history", &other)),
        }
    }

    /// [`config_list`](coord_core::config::ConfigBackend::config_list): the
    /// namespace's keys (`HKEYS`), then their latest versions, each key's
    /// number and record read together, [`LIST_CHUNK`] keys per `list.lua`.
    pub(super) async fn latest_under(&self, prefix: &str) -> Result<Vec<(String, StoredVersion)>> {
        let keys = self.config_keys_of(prefix)?;
        let mut conn = self.inner.conn.clone();
        let mut names: Vec<String> = redis::cmd("HKEYS")
            .arg(&keys.latest)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))?;
        names.retain(|k| key_under(k, prefix));
        names.sort();
        let chunks: Vec<Vec<String>> = names.chunks(LIST_CHUNK).map(<[_]>::to_vec).collect();
        let keys = &keys;
        let found: Vec<Vec<(String, StoredVersion)>> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let mut cmd = evalsha(&SCRIPTS.list, 1 + chunk.len());
                cmd.arg(&keys.latest);
                for k in &chunk {
                    cmd.arg(keys.versions(k));
                }
                for k in &chunk {
                    cmd.arg(k);
                }
                let reply: Value = self.eval(&SCRIPTS.list, &cmd).await?;
                let Value::Array(items) = reply else {
                    return Err(unexpected_reply("config list", &reply));
                };
                if items.len() != 2 * chunk.len() {
                    return Err(unexpected_reply("config list", &Value::Array(items)));
                }
                Ok(chunk
                    .into_iter()
                    .zip(pairs(items, "config list")?)
                    .filter_map(|(k, stored)| stored.map(|s| (k, s)))
                    .collect())
            })
            .buffered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }
}

/// Decodes a flat reply `{n1, record1, n2, record2, …}`; version 0 stands
/// for a missing one.
fn pairs(items: Vec<Value>, script: &str) -> Result<Vec<Option<StoredVersion>>> {
    if !items.len().is_multiple_of(2) {
        return Err(unexpected_reply(script, &Value::Array(items)));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(version), Some(record)) = (items.next(), items.next()) {
        let version = version_of(&version, script)?;
        let record = record_of(record, script)?;
        out.push((version > 0).then_some(StoredVersion { version, record }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn flat_replies_parse_into_versions() {
        let got = pairs(
            vec![
                bulk("3"),
                bulk("r3"),
                bulk("0"),
                bulk(""),
                Value::Int(2),
                bulk("r2"),
            ],
            "t",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                Some(StoredVersion {
                    version: 3,
                    record: "r3".into()
                }),
                None,
                Some(StoredVersion {
                    version: 2,
                    record: "r2".into()
                }),
            ]
        );
        assert!(pairs(vec![bulk("1")], "t").is_err());
        assert!(pairs(vec![bulk("x"), bulk("r")], "t").is_err());
        assert!(pairs(vec![bulk("1"), Value::Nil], "t").is_err());
    }
}
