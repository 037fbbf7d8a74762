//! Appending versions: one read transaction, the checks, then one
//! compare-and-put transaction, read and tried again when another writer
//! changed the keys (or the namespace's freezes) in between.
//!
//! The write transaction compares each written key's latest marker with
//! the one read by its modification revision (`create_revision == 0` for a
//! key without versions: the marker holds its record too, so its value is
//! no cheap compare) and the namespace's frozen markers with the read's
//! revision (none modified since: one compare over their range); it puts
//! each new version and each key's new latest marker (the number and the
//! record of the key's last write). Its size: `writes + keys` operations
//! and `keys + 1` compares, so an append takes at most [`MAX_WRITES`]
//! writes; each record is in it at most twice.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use bytes::Bytes;
use coord_core::config::{
    ConfigWrite, MAX_CONFIG_KEY_LEN, frozen_error, is_reserved_key, namespace_of, version_conflict,
};
use coord_core::{Error, Result};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

use super::layout::{Layout, marker_value, marker_version};
use super::{MAX_REQUEST_BYTES, MAX_TXN_OPS};
use crate::backend::EtcdBackend;
use crate::error::call;

/// The most writes one append carries: each puts two keys (its version and
/// its key's latest marker) in one transaction of at most [`MAX_TXN_OPS`]
/// operations.
pub(super) const MAX_WRITES: usize = MAX_TXN_OPS / 2;

/// How many times an append reads again and retries after losing a race.
const TRIES: u32 = 16;

/// The longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// What the read before a write found.
struct Seen {
    /// The latest version of each written key (0: none yet).
    latest: Vec<u64>,
    /// The modification revision of each written key's latest marker (0:
    /// none yet).
    markers: Vec<i64>,
    /// The frozen scopes of the namespace.
    frozen: Vec<String>,
    /// The revision of the read.
    revision: i64,
}

/// Bytes a request spends besides its writes: the frozen markers' compare
/// and the request's envelope.
fn fixed_overhead(layout: &Layout) -> usize {
    1024 + 2 * layout.root().len()
}

/// Bytes a request spends on one write besides its record: the version's
/// key (with its number), the latest marker's key put (with the version
/// line before the record) and compared (with a revision), their framing.
fn write_overhead(layout: &Layout, key_len: usize) -> usize {
    3 * (layout.root().len() + "versions/".len() + key_len + 21) + 64
}

/// The largest record one write of the longest key may carry: a record is
/// sent twice, as its version's value and in its key's latest marker, so
/// about half of etcd's request limit (a record of exactly this size is
/// taken).
pub(super) fn max_record_bytes(layout: &Layout) -> usize {
    (MAX_REQUEST_BYTES - fixed_overhead(layout) - write_overhead(layout, MAX_CONFIG_KEY_LEN)) / 2
}

/// The size of an append's write transaction, at most: each record counted
/// twice (a key written twice in one append has one marker, holding the
/// last record only).
fn request_bytes(layout: &Layout, writes: &[ConfigWrite]) -> usize {
    let writes: usize = writes
        .iter()
        .map(|w| 2 * w.record.len() + write_overhead(layout, w.key.len()))
        .sum();
    fixed_overhead(layout) + writes
}

/// A pause of about `backoff` (between half and one and a half of it), so
/// writers that lost a race to each other do not meet again.
fn jittered(backoff: Duration) -> Duration {
    let nanos = u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX).max(1);
    let random = RandomState::new().hash_one(nanos) % nanos;
    Duration::from_nanos(nanos / 2 + random)
}

impl EtcdBackend {
    pub(super) async fn config_append_versions(
        &self,
        namespace: &str,
        writes: &[ConfigWrite],
    ) -> Result<Vec<u64>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(w) = writes
            .iter()
            .find(|w| namespace_of(&w.key) != Some(namespace))
        {
            return Err(Error::invalid(format!(
                "config key {} is not in namespace {namespace}",
                w.key
            )));
        }
        if writes.len() > MAX_WRITES {
            return Err(Error::invalid(format!(
                "an atomic config write on etcd takes at most {MAX_WRITES} keys (one transaction \
                 of at most {MAX_TXN_OPS} operations, etcd's default --max-txn-ops); this one has {}",
                writes.len()
            )));
        }
        let layout = self.config_layout();
        let max = max_record_bytes(&layout);
        if let Some(w) = writes.iter().find(|w| w.record.len() > max) {
            return Err(Error::invalid(format!(
                "config {} is {} bytes stored, over the etcd backend's limit of {max}",
                w.key,
                w.record.len()
            )));
        }
        let size = request_bytes(&layout, writes);
        if size > MAX_REQUEST_BYTES {
            return Err(Error::invalid(format!(
                "a config write of {size} bytes is over etcd's request limit ({MAX_REQUEST_BYTES} \
                 bytes with room for the request); write fewer or smaller values per call"
            )));
        }
        // The distinct keys in order of first write; `slot` maps each write
        // to its key (a key written twice gets two versions).
        let mut keys: Vec<&str> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let slot: Vec<usize> = writes
            .iter()
            .map(|w| {
                *index.entry(w.key.as_str()).or_insert_with(|| {
                    keys.push(&w.key);
                    keys.len() - 1
                })
            })
            .collect();
        let guarded = writes.iter().any(|w| !is_reserved_key(&w.key, namespace));
        let mut backoff = Duration::from_millis(1);
        for attempt in 1..=TRIES {
            let seen = self
                .config_read_for_append(&layout, namespace, &keys)
                .await?;
            for (w, s) in writes.iter().zip(&slot) {
                if let Some(e) = frozen_error(&w.key, namespace, |scope| {
                    seen.frozen.iter().any(|s| s == scope)
                }) {
                    return Err(e);
                }
                let actual = seen.latest[*s];
                if let Some(expected) = w.expected
                    && expected != actual
                {
                    return Err(version_conflict(&w.key, expected, actual));
                }
            }
            let (txn, versions) =
                write_txn(&layout, namespace, writes, &keys, &slot, &seen, guarded);
            let mut kv = self.inner.client.kv_client();
            let resp = call("write config versions", self.inner.timeout, kv.txn(txn)).await?;
            if resp.succeeded() {
                return Ok(versions);
            }
            tracing::debug!(
                namespace,
                attempt,
                "a config write lost a race to another writer; reading again"
            );
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        Err(Error::backend(
            "etcd",
            format!(
                "write config in {namespace}: other writers changed its keys or freezes during \
                 each of {TRIES} tries; try again"
            ),
            true,
            None,
        ))
    }

    /// The latest versions of `keys` (and their markers' revisions) and the
    /// frozen scopes of `namespace`, in one read transaction. The markers
    /// come with their records (etcd reads no part of a value), so the
    /// answer may be large.
    async fn config_read_for_append(
        &self,
        layout: &Layout,
        namespace: &str,
        keys: &[&str],
    ) -> Result<Seen> {
        let frozen = layout.frozen_range(namespace);
        let mut ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::get(layout.latest(k), None))
            .collect();
        let markers = GetOptions::new().with_range(frozen.end).with_keys_only();
        ops.push(TxnOp::get(frozen.start, Some(markers)));
        let mut kv = self.config_reader();
        let what = "read config keys before writing";
        let resp = call(what, self.inner.timeout, kv.txn(Txn::new().and_then(ops))).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let answers = resp.op_responses();
        if revision <= 0 || answers.len() != keys.len() + 1 {
            return Err(Error::backend(
                "etcd",
                format!("{what}: etcd answered a read transaction incompletely"),
                false,
                None,
            ));
        }
        let mut seen = Seen {
            latest: Vec::with_capacity(keys.len()),
            markers: Vec::with_capacity(keys.len()),
            frozen: Vec::new(),
            revision,
        };
        for (i, answer) in answers.iter().enumerate() {
            let TxnOpResponse::Get(get) = answer else {
                continue;
            };
            if let Some(key) = keys.get(i) {
                let (version, revision) = match get.kvs().first() {
                    None => (0, 0),
                    Some(marker) => (marker_version(key, marker.value())?, marker.mod_revision()),
                };
                seen.latest.push(version);
                seen.markers.push(revision);
            } else {
                seen.frozen = get
                    .kvs()
                    .iter()
                    .filter_map(|m| layout.scope_of(m.key(), namespace))
                    .map(str::to_owned)
                    .collect();
            }
        }
        Ok(seen)
    }
}

/// The write transaction of one try and the versions it appends.
fn write_txn(
    layout: &Layout,
    namespace: &str,
    writes: &[ConfigWrite],
    keys: &[&str],
    slot: &[usize],
    seen: &Seen,
    guarded: bool,
) -> (Txn, Vec<u64>) {
    let mut next = seen.latest.clone();
    // The record of each key's last write, for its marker (slots are
    // numbered in order of first write).
    let mut newest: Vec<&Bytes> = Vec::with_capacity(keys.len());
    let mut versions = Vec::with_capacity(writes.len());
    let mut ops = Vec::with_capacity(writes.len() + keys.len());
    for (w, s) in writes.iter().zip(slot) {
        next[*s] += 1;
        versions.push(next[*s]);
        match newest.get_mut(*s) {
            Some(record) => *record = &w.record,
            None => newest.push(&w.record),
        }
        let record = w.record.to_vec();
        ops.push(TxnOp::put(layout.version(&w.key, next[*s]), record, None));
    }
    for ((key, version), record) in keys.iter().zip(&next).zip(newest) {
        let marker = marker_value(*version, record);
        ops.push(TxnOp::put(layout.latest(key), marker, None));
    }
    // Each marker as read: absent, or not modified since.
    let mut compares: Vec<Compare> = keys
        .iter()
        .zip(&seen.markers)
        .map(|(key, revision)| match revision {
            0 => Compare::create_revision(layout.latest(key), CompareOp::Equal, 0),
            r => Compare::mod_revision(layout.latest(key), CompareOp::Equal, *r),
        })
        .collect();
    if guarded {
        // No frozen marker of the namespace put since the read (an empty
        // range compares as revision 0).
        let frozen = layout.frozen_range(namespace);
        compares.push(
            Compare::mod_revision(frozen.start, CompareOp::Less, seen.revision + 1)
                .with_range(frozen.end),
        );
    }
    (Txn::new().when(compares).and_then(ops), versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_record_fits_a_request() {
        let layout = Layout::new("coord/");
        let max = max_record_bytes(&layout);
        assert!(
            max > 700 << 10,
            "a value of 700 KiB fits, with its metadata"
        );
        let write = |len: usize| ConfigWrite {
            key: format!("a/b/{}", "k".repeat(MAX_CONFIG_KEY_LEN - 4)),
            expected: None,
            record: vec![0; len].into(),
        };
        assert!(request_bytes(&layout, &[write(max)]) <= MAX_REQUEST_BYTES);
        assert!(request_bytes(&layout, &[write(max + 1)]) > MAX_REQUEST_BYTES);
    }

    #[test]
    fn pauses_are_jittered_around_the_backoff() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(10));
            assert!(d >= Duration::from_millis(5) && d < Duration::from_millis(15));
        }
    }
}
