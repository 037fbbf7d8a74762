//! Reading versions: one version, the latest, a history, a listing.
//!
//! A key's latest version is its latest marker, record included: one get.
//! Reads of more than one key are pinned to one revision, so they see one
//! state: a history is read at its marker's revision, a listing's pages at
//! its first page's revision. So is the record of a marker of the earlier
//! layout (the number alone), read from its version's key: a compaction of
//! old versions in between cannot hide it. Should etcd compact that
//! revision of its own history meanwhile, the read starts over. Answers may
//! hold many records, above etcd-client's default 4 MiB decoding limit, so
//! reads of more than one use a limit that fits a full page of the largest
//! value etcd takes.

use bytes::Bytes;
use coord_core::config::StoredVersion;
use coord_core::{Error, Result};
use etcd_client::{GetOptions, GetResponse, KvClient, Txn, TxnOp, TxnOpResponse};

use super::layout::{Layout, marker_contents};
use super::{ETCD_MAX_REQUEST_BYTES, MAX_TXN_OPS};
use crate::backend::EtcdBackend;
use crate::error::{call, deadline, map};

/// Records per request: a page of a history, of a listing's latest markers
/// (each holds a record), a transaction of gets of old markers' records.
const RECORD_PAGE: usize = MAX_TXN_OPS;

/// How many times a pinned read starts over after etcd compacted its revision.
const TRIES: usize = 3;

/// Whether etcd refused a read at a revision it compacted.
fn is_compacted(err: &etcd_client::Error) -> bool {
    err.to_string().contains("compacted")
}

/// The value of the first key of a range, as a record.
fn first_record(mut resp: GetResponse) -> Option<Bytes> {
    let kv = resp.take_kvs().into_iter().next()?;
    Some(Bytes::from(kv.into_key_value().1))
}

/// A key's latest marker as read.
pub(super) struct LatestMarker {
    /// The key's latest version.
    pub(super) version: u64,
    /// Its record; `None` for a marker of the earlier layout (the number
    /// alone), whose record is only in the version's key.
    pub(super) record: Option<Bytes>,
    /// The revision the marker was read at.
    pub(super) revision: i64,
}

/// The smallest key after `key`.
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

fn compacted_too_often(what: &str) -> Error {
    Error::backend(
        "etcd",
        format!("{what}: etcd compacted the revision of every try; try again"),
        true,
        None,
    )
}

impl EtcdBackend {
    /// A reader whose answers may hold a full page of the largest records
    /// (no value etcd holds is over its request limit, whatever wrote it).
    pub(super) fn config_reader(&self) -> KvClient {
        let limit = RECORD_PAGE * (ETCD_MAX_REQUEST_BYTES + 2048);
        self.inner
            .client
            .kv_client()
            .max_decoding_message_size(limit)
    }

    /// One range read at `revision` (0: now); `None` when etcd compacted it.
    async fn config_pinned_get(
        &self,
        kv: &mut KvClient,
        what: &str,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
        revision: i64,
    ) -> Result<Option<GetResponse>> {
        let options = options.with_revision(revision);
        match deadline(what, self.inner.timeout, kv.get(key, Some(options))).await? {
            Ok(resp) => Ok(Some(resp)),
            Err(e) if revision > 0 && is_compacted(&e) => Ok(None),
            Err(e) => Err(map(what, e)),
        }
    }

    /// `key`'s latest marker (one get); `None` for a key without versions.
    pub(super) async fn config_latest_marker(
        &self,
        kv: &mut KvClient,
        layout: &Layout,
        key: &str,
        what: &str,
    ) -> Result<Option<LatestMarker>> {
        let mut resp = call(what, self.inner.timeout, kv.get(layout.latest(key), None)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let Some(marker) = resp.take_kvs().into_iter().next() else {
            return Ok(None);
        };
        let (version, record) = marker_contents(key, marker.into_key_value().1)?;
        Ok(Some(LatestMarker {
            version,
            record,
            revision,
        }))
    }

    pub(super) async fn config_read_version(
        &self,
        key: &str,
        version: u64,
    ) -> Result<Option<StoredVersion>> {
        let mut kv = self.inner.client.kv_client();
        let get = kv.get(self.config_layout().version(key, version), None);
        let resp = call("read a config version", self.inner.timeout, get).await?;
        Ok(first_record(resp).map(|record| StoredVersion { version, record }))
    }

    pub(super) async fn config_read_latest(&self, key: &str) -> Result<Option<StoredVersion>> {
        let what = "read a config key's latest version";
        let layout = self.config_layout();
        let mut kv = self.inner.client.kv_client();
        for _ in 0..TRIES {
            let Some(marker) = self
                .config_latest_marker(&mut kv, &layout, key, what)
                .await?
            else {
                return Ok(None);
            };
            let LatestMarker {
                version,
                record,
                revision,
            } = marker;
            if let Some(record) = record {
                return Ok(Some(StoredVersion { version, record }));
            }
            // A marker of the earlier layout: the record is in the version's
            // key, read at the marker's revision.
            let at = layout.version(key, version);
            let Some(resp) = self
                .config_pinned_get(&mut kv, what, at, GetOptions::new(), revision)
                .await?
            else {
                continue;
            };
            return match first_record(resp) {
                Some(record) => Ok(Some(StoredVersion { version, record })),
                None => Err(Error::backend(
                    "etcd",
                    format!("{what}: {key}'s latest version {version} is missing"),
                    false,
                    None,
                )),
            };
        }
        Err(compacted_too_often(what))
    }

    pub(super) async fn config_read_history(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<StoredVersion>> {
        let what = "read a config key's history";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let layout = self.config_layout();
        let mut kv = self.config_reader();
        'tries: for _ in 0..TRIES {
            let Some(LatestMarker {
                version: latest,
                revision,
                ..
            }) = self
                .config_latest_marker(&mut kv, &layout, key, what)
                .await?
            else {
                return Ok(Vec::new());
            };
            // Versions are consecutive from the oldest kept to the latest, so
            // the newest `limit` are one ascending range (no sort: etcd would
            // read every version of the key to sort them).
            let oldest = latest
                .saturating_sub(u64::try_from(limit - 1).unwrap_or(u64::MAX))
                .max(1);
            let end = layout.versions(key).end;
            let mut start = layout.version(key, oldest).into_bytes();
            let mut versions = Vec::new();
            loop {
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(RECORD_PAGE as i64);
                let page = self.config_pinned_get(&mut kv, what, start, options, revision);
                let Some(mut resp) = page.await? else {
                    continue 'tries;
                };
                let more = resp.more();
                let kvs = resp.take_kvs();
                start = kvs.last().map(|last| after(last.key())).unwrap_or_default();
                for entry in kvs {
                    let (k, record) = entry.into_key_value();
                    if let Some(version) = super::layout::version_of(&k) {
                        versions.push(StoredVersion {
                            version,
                            record: Bytes::from(record),
                        });
                    }
                }
                if !more || start.is_empty() {
                    break;
                }
            }
            versions.reverse();
            versions.truncate(limit);
            return Ok(versions);
        }
        Err(compacted_too_often(what))
    }

    pub(super) async fn config_read_list(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, StoredVersion)>> {
        for _ in 0..TRIES {
            if let Some(listing) = self.config_list_once(prefix).await? {
                return Ok(listing);
            }
            tracing::debug!(
                prefix,
                "etcd compacted the revision of a config listing; listing again"
            );
        }
        Err(compacted_too_often("list config keys"))
    }

    /// One listing at one revision; `None` if etcd compacted it meanwhile.
    /// The records come with the latest markers, in the same pages; only
    /// markers of the earlier layout (the number alone) need their versions'
    /// keys read, in transactions of gets at the same revision.
    async fn config_list_once(&self, prefix: &str) -> Result<Option<Vec<(String, StoredVersion)>>> {
        let what = "list config keys";
        let layout = self.config_layout();
        let range = layout.latest_range(prefix);
        let mut kv = self.config_reader();
        let mut start = range.start.into_bytes();
        let mut revision = 0;
        // Each key under the prefix, its latest version and record (`None`:
        // to read from the version's key).
        let mut found: Vec<(String, u64, Option<Bytes>)> = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(range.end.clone())
                .with_limit(RECORD_PAGE as i64);
            let page = self.config_pinned_get(&mut kv, what, start, options, revision);
            let Some(mut resp) = page.await? else {
                return Ok(None);
            };
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let markers = resp.take_kvs();
            start = markers.last().map(|m| after(m.key())).unwrap_or_default();
            for marker in markers {
                let (etcd_key, value) = marker.into_key_value();
                if let Some(key) = layout.key_of_latest(&etcd_key, prefix) {
                    let (version, record) = marker_contents(key, value)?;
                    found.push((key.to_owned(), version, record));
                }
            }
            if !more || start.is_empty() {
                break;
            }
        }
        let old: Vec<usize> = (0..found.len()).filter(|i| found[*i].2.is_none()).collect();
        for chunk in old.chunks(RECORD_PAGE) {
            let at = GetOptions::new().with_revision(revision);
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|i| {
                    let (key, version, _) = &found[*i];
                    TxnOp::get(layout.version(key, *version), Some(at.clone()))
                })
                .collect();
            let txn = kv.txn(Txn::new().and_then(ops));
            let resp = match deadline(what, self.inner.timeout, txn).await? {
                Ok(resp) => resp,
                Err(e) if is_compacted(&e) => return Ok(None),
                Err(e) => return Err(map(what, e)),
            };
            for (i, answer) in chunk.iter().zip(resp.op_responses()) {
                if let TxnOpResponse::Get(get) = answer {
                    found[*i].2 = first_record(get);
                }
            }
        }
        let listing = found
            .into_iter()
            .filter_map(|(key, version, record)| match record {
                Some(record) => Some((key, StoredVersion { version, record })),
                None => {
                    tracing::warn!(
                        key,
                        version,
                        "skipped a config key whose latest version is missing"
                    );
                    None
                }
            })
            .collect();
        Ok(Some(listing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_after_a_key_is_the_key_and_a_nul() {
        assert_eq!(after(b"ab"), b"ab\0");
    }
}
