//! Where the config center keeps its data in etcd's key space: the latest,
//! versions and frozen trees under `{ns}/config/` (see the module docs),
//! and what a latest marker holds.
//!
//! A latest marker's value is the key's latest version number as decimal
//! text, a newline, then that version's record (opaque bytes, newlines
//! included: only the first newline separates), so one get of the marker
//! is a key's whole latest version. Markers written before records moved
//! into them hold the number alone; they stay readable, their record being
//! only in the version's key.

use bytes::Bytes;
use coord_core::config::key_under;
use coord_core::{Error, Result};

/// The keys of one backend's config center.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    root: String,
}

/// A range of etcd keys, `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Range {
    pub(super) start: String,
    pub(super) end: String,
}

/// The range of every key that is `base` or starts with `base/` (and a few
/// others, such as `base-x`, that callers filter out with [`key_under`]):
/// `0` is the byte after `/`.
fn segment_range(base: String) -> Range {
    let mut end = base.clone();
    end.push('0');
    Range { start: base, end }
}

impl Layout {
    /// The layout under the backend's key namespace `prefix` (empty, or
    /// ending in `/`).
    pub(super) fn new(prefix: &str) -> Layout {
        Layout {
            root: format!("{prefix}config/"),
        }
    }

    /// `{ns}/config/`.
    pub(super) fn root(&self) -> &str {
        &self.root
    }

    /// The marker holding `key`'s latest version number and record (see
    /// [`marker_value`]).
    pub(super) fn latest(&self, key: &str) -> String {
        format!("{}latest/{key}", self.root)
    }

    /// The range of the latest markers of the keys under `prefix` (a
    /// superset: filter with [`key_of_latest`](Self::key_of_latest)).
    pub(super) fn latest_range(&self, prefix: &str) -> Range {
        let prefix = prefix.trim_end_matches('/');
        segment_range(format!("{}latest/{prefix}", self.root))
    }

    /// The config key of a latest marker, if it is one under `prefix` (by
    /// whole segments).
    pub(super) fn key_of_latest<'a>(&self, etcd_key: &'a [u8], prefix: &str) -> Option<&'a str> {
        let key = std::str::from_utf8(etcd_key)
            .ok()?
            .strip_prefix(self.root.as_str())?
            .strip_prefix("latest/")?;
        key_under(key, prefix).then_some(key)
    }

    /// The key of version `version` of `key`.
    pub(super) fn version(&self, key: &str, version: u64) -> String {
        debug_assert!(!key.contains('\0'), "config keys are validated by core");
        format!("{}versions/{key}\0{version:020}", self.root)
    }

    /// The range of every version of `key`, in version order.
    pub(super) fn versions(&self, key: &str) -> Range {
        debug_assert!(!key.contains('\0'), "config keys are validated by core");
        Range {
            start: format!("{}versions/{key}\0", self.root),
            end: format!("{}versions/{key}\u{1}", self.root),
        }
    }

    /// A frozen scope's marker.
    pub(super) fn frozen(&self, scope: &str) -> String {
        format!("{}frozen/{scope}", self.root)
    }

    /// The range of the frozen markers of `namespace` and its keys (a
    /// superset: filter with [`scope_of`](Self::scope_of)).
    pub(super) fn frozen_range(&self, namespace: &str) -> Range {
        segment_range(self.frozen(namespace.trim_end_matches('/')))
    }

    /// The scope of a frozen marker, if it is `namespace` or one of its keys.
    pub(super) fn scope_of<'a>(&self, etcd_key: &'a [u8], namespace: &str) -> Option<&'a str> {
        let scope = std::str::from_utf8(etcd_key)
            .ok()?
            .strip_prefix(self.root.as_str())?
            .strip_prefix("frozen/")?;
        key_under(scope, namespace).then_some(scope)
    }
}

/// The version number a version key ends with (after its NUL).
pub(super) fn version_of(etcd_key: &[u8]) -> Option<u64> {
    let at = etcd_key.iter().rposition(|b| *b == 0)?;
    parse_version(&etcd_key[at + 1..])
}

/// A version number stored as decimal text.
fn parse_version(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The value of a latest marker: `version` as decimal text, a newline, the
/// version's record.
pub(super) fn marker_value(version: u64, record: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(21 + record.len());
    value.extend_from_slice(version.to_string().as_bytes());
    value.push(b'\n');
    value.extend_from_slice(record);
    value
}

/// A latest marker's version and where its record starts in it: after the
/// first newline; `None` for a marker of the number alone (the earlier
/// layout, whose record is only in the version's key). `None` altogether
/// when the number is not one.
pub(super) fn split_marker(marker: &[u8]) -> Option<(u64, Option<usize>)> {
    match marker.iter().position(|b| *b == b'\n') {
        Some(at) => Some((parse_version(&marker[..at])?, Some(at + 1))),
        None => Some((parse_version(marker)?, None)),
    }
}

/// A latest marker that is no number followed by a record (written by
/// something else): an [`Error::Codec`].
fn bad_marker(key: &str, marker: &[u8]) -> Error {
    let shown = &marker[..marker.len().min(64)];
    Error::codec(
        format!(
            "config {key}: its latest version marker {:?} does not start with a version number",
            String::from_utf8_lossy(shown)
        ),
        None,
    )
}

/// The version a latest marker of `key` holds (either format).
pub(super) fn marker_version(key: &str, marker: &[u8]) -> Result<u64> {
    split_marker(marker)
        .map(|(version, _)| version)
        .ok_or_else(|| bad_marker(key, marker))
}

/// The version and the record a latest marker of `key` holds, the record a
/// slice of the marker's value (no copy); `None` for a marker of the
/// earlier layout (the number alone).
pub(super) fn marker_contents(key: &str, marker: Vec<u8>) -> Result<(u64, Option<Bytes>)> {
    let (version, at) = split_marker(&marker).ok_or_else(|| bad_marker(key, &marker))?;
    Ok((version, at.map(|at| Bytes::from(marker).slice(at..))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trees_cannot_be_confused() {
        let l = Layout::new("ns/");
        assert_eq!(l.latest("a/b/k"), "ns/config/latest/a/b/k");
        assert_eq!(
            l.version("a/b/k", 7),
            "ns/config/versions/a/b/k\x0000000000000000000007"
        );
        assert_eq!(l.frozen("a/b"), "ns/config/frozen/a/b");
        assert_eq!(version_of(l.version("a/b/k", 7).as_bytes()), Some(7));
        assert_eq!(
            version_of(l.version("a/b/k", u64::MAX).as_bytes()),
            Some(u64::MAX)
        );
        // A key named like the bookkeeping stays in its tree.
        assert_eq!(l.latest("a/b/v/latest"), "ns/config/latest/a/b/v/latest");
        assert_eq!(
            l.key_of_latest(b"ns/config/latest/a/b/v/latest", "a/b"),
            Some("a/b/v/latest")
        );
        assert_eq!(l.key_of_latest(b"ns/config/versions/a/b/k", "a/b"), None);
    }

    #[test]
    fn ranges_hold_whole_segments_and_versions_sort() {
        let l = Layout::new("");
        let db = l.versions("a/b/db");
        let inside = |k: &str, r: &Range| (r.start.as_str()..r.end.as_str()).contains(&k);
        assert!(inside(&l.version("a/b/db", 1), &db));
        assert!(!inside(&l.version("a/b/db/url", 1), &db), "a nested key");
        assert!(!inside(&l.version("a/b/db-x", 1), &db));
        assert!(l.version("a/b/db", 9) < l.version("a/b/db", 10));
        let latest = l.latest_range("a/b/");
        assert_eq!(latest.start, "config/latest/a/b");
        assert!(inside(&l.latest("a/b/db/url"), &latest));
        assert!(!inside(&l.latest("a/bc/k"), &latest));
        // In the range but not under the prefix: filtered out.
        assert!(inside(&l.latest("a/b-x/k"), &latest));
        assert_eq!(l.key_of_latest(b"config/latest/a/b-x/k", "a/b"), None);
        let frozen = l.frozen_range("a/b");
        assert!(inside(&l.frozen("a/b"), &frozen));
        assert!(inside(&l.frozen("a/b/k"), &frozen));
        assert_eq!(l.scope_of(b"config/frozen/a/b/k", "a/b"), Some("a/b/k"));
        assert_eq!(l.scope_of(b"config/frozen/a/b.x", "a/b"), None);
        assert_eq!(parse_version(b"12"), Some(12));
        assert_eq!(parse_version(b"x"), None);
        assert!(matches!(
            marker_version("a/b/k", b"x"),
            Err(Error::Codec { .. })
        ));
    }

    #[test]
    fn markers_hold_the_version_and_its_record_and_old_ones_stay_readable() {
        // The record is opaque: newlines and digits in it change nothing.
        let record = b"\n12\nrecord\n";
        let value = marker_value(12, record);
        assert_eq!(value, b"12\n\n12\nrecord\n");
        assert_eq!(split_marker(&value), Some((12, Some(3))));
        assert_eq!(marker_version("a/b/k", &value).unwrap(), 12);
        let (version, got) = marker_contents("a/b/k", value).unwrap();
        assert_eq!((version, got.as_deref()), (12, Some(&record[..])));
        // An empty record is one, not an old marker.
        let (version, got) = marker_contents("a/b/k", marker_value(u64::MAX, b"")).unwrap();
        assert_eq!((version, got.as_deref()), (u64::MAX, Some(&b""[..])));
        // A marker of the earlier layout: the number alone.
        assert_eq!(split_marker(b"7"), Some((7, None)));
        assert_eq!(marker_version("a/b/k", b"7").unwrap(), 7);
        assert_eq!(marker_contents("a/b/k", b"7".to_vec()).unwrap(), (7, None));
        // Anything else is a codec error.
        for bad in [&b""[..], b"x", b"x\n7", b"\n7", b"7 \nr"] {
            assert_eq!(split_marker(bad), None, "{bad:?}");
            assert!(matches!(
                marker_contents("a/b/k", bad.to_vec()),
                Err(Error::Codec { .. })
            ));
        }
    }
}
