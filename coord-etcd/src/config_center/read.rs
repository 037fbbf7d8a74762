//! Reading versions: one version, the latest, a history, a listing.
//!
//! Reads of more than one key are pinned to one revision, so they see one
//! state: a latest version is read at its marker's revision (a compaction
//! of old versions in between cannot hide it), a listing's pages and
//! records at its first page's revision. Should etcd compact that revision
//! of its own history meanwhile, the read starts over. Answers may hold
//! many records of up to [`max_record_bytes`], above etcd-client's default
//! 4 MiB decoding limit, so reads use a limit that fits a full page of them.

use bytes::Bytes;
use coord_core::config::StoredVersion;
use coord_core::{Error, Result};
use etcd_client::{GetOptions, GetResponse, KvClient, Txn, TxnOp, TxnOpResponse};

use super::MAX_TXN_OPS;
use super::append::max_record_bytes;
use super::layout::{Layout, marker_version};
use crate::backend::EtcdBackend;
use crate::error::{call, deadline, map};

/// Latest markers per page of a listing (each a few bytes).
const MARKER_PAGE: i64 = 1000;

/// Records per request: a page of a history, a transaction of a listing's gets.
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
    /// A reader whose answers may hold a full page of the largest records.
    fn config_reader(&self) -> KvClient {
        let limit = RECORD_PAGE * (max_record_bytes(&self.config_layout()) + 2048);
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

    /// `key`'s latest version number and the revision it was read at;
    /// `None` for a key without versions.
    pub(super) async fn config_latest_marker(
        &self,
        kv: &mut KvClient,
        layout: &Layout,
        key: &str,
        what: &str,
    ) -> Result<Option<(u64, i64)>> {
        let resp = call(what, self.inner.timeout, kv.get(layout.latest(key), None)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        match resp.kvs().first() {
            Some(marker) => Ok(Some((marker_version(key, marker.value())?, revision))),
            None => Ok(None),
        }
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
            let Some((version, revision)) = self
                .config_latest_marker(&mut kv, &layout, key, what)
                .await?
            else {
                return Ok(None);
            };
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
            let Some((latest, revision)) = self
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
    async fn config_list_once(&self, prefix: &str) -> Result<Option<Vec<(String, StoredVersion)>>> {
        let what = "list config keys";
        let layout = self.config_layout();
        let range = layout.latest_range(prefix);
        let mut kv = self.config_reader();
        let mut start = range.start.into_bytes();
        let mut revision = 0;
        let mut latest: Vec<(String, u64)> = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(range.end.clone())
                .with_limit(MARKER_PAGE);
            let page = self.config_pinned_get(&mut kv, what, start, options, revision);
            let Some(resp) = page.await? else {
                return Ok(None);
            };
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for marker in resp.kvs() {
                if let Some(key) = layout.key_of_latest(marker.key(), prefix) {
                    latest.push((key.to_owned(), marker_version(key, marker.value())?));
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => start = after(last.key()),
                _ => break,
            }
        }
        let mut listing = Vec::with_capacity(latest.len());
        for chunk in latest.chunks(RECORD_PAGE) {
            let at = GetOptions::new().with_revision(revision);
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, version)| TxnOp::get(layout.version(key, *version), Some(at.clone())))
                .collect();
            let txn = kv.txn(Txn::new().and_then(ops));
            let resp = match deadline(what, self.inner.timeout, txn).await? {
                Ok(resp) => resp,
                Err(e) if is_compacted(&e) => return Ok(None),
                Err(e) => return Err(map(what, e)),
            };
            for ((key, version), answer) in chunk.iter().zip(resp.op_responses()) {
                let TxnOpResponse::Get(get) = answer else {
                    continue;
                };
                match first_record(get) {
                    Some(record) => listing.push((
                        key.clone(),
                        StoredVersion {
                            version: *version,
                            record,
                        },
                    )),
                    None => tracing::warn!(
                        key,
                        version,
                        "skipped a config key whose latest version is missing"
                    ),
                }
            }
        }
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
