//! The stored form of one config version: a small header, metadata (author,
//! time, message, checksum, whether it is a tombstone or a secret) and the
//! value's bytes. Shared by every backend, which store it as opaque bytes.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MAGIC: u8 = 0xCF;
const FORMAT: u8 = 1;

/// What a version says about itself, besides its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub struct VersionMeta {
    /// Who wrote it.
    pub author: String,
    /// Why (a commit message).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When, in milliseconds since the Unix epoch (the writer's clock).
    pub time_ms: u64,
    /// CRC32 of the stored value bytes.
    pub crc32: u32,
    /// A deletion (a tombstone: no value).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The id of the key the value is encrypted under (a secret), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_id: Option<String>,
}

/// Encodes one version: `[0xCF, 1, meta length (u32 BE), meta JSON, value]`.
pub fn encode_version(meta: &VersionMeta, value: &[u8]) -> Result<Bytes> {
    let meta = serde_json::to_vec(meta)
        .map_err(|e| Error::codec(format!("config metadata could not be encoded: {e}"), None))?;
    let mut out = BytesMut::with_capacity(6 + meta.len() + value.len());
    out.put_u8(MAGIC);
    out.put_u8(FORMAT);
    out.put_u32(meta.len() as u32);
    out.put_slice(&meta);
    out.put_slice(value);
    Ok(out.freeze())
}

/// Decodes one stored version of `key`, checking its checksum; a corrupted
/// one is an [`Error::Codec`] naming the key and version.
pub fn decode_version(record: &Bytes, key: &str, version: u64) -> Result<(VersionMeta, Bytes)> {
    let bad = |why: &str| {
        Error::codec(
            format!("config {key} version {version} is corrupted: {why}"),
            None,
        )
    };
    if record.len() < 6 || record[0] != MAGIC {
        return Err(bad("not a coord config record"));
    }
    if record[1] != FORMAT {
        return Err(bad(&format!("unknown format {}", record[1])));
    }
    let len = u32::from_be_bytes([record[2], record[3], record[4], record[5]]) as usize;
    if record.len() < 6 + len {
        return Err(bad("truncated"));
    }
    let meta: VersionMeta =
        serde_json::from_slice(&record[6..6 + len]).map_err(|e| bad(&e.to_string()))?;
    let value = record.slice(6 + len..);
    if crc32fast::hash(&value) != meta.crc32 {
        return Err(bad("checksum mismatch"));
    }
    Ok((meta, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_corruption_is_a_codec_error() {
        let meta = VersionMeta {
            author: "ann".into(),
            message: "m".into(),
            time_ms: 1,
            crc32: crc32fast::hash(b"value"),
            ..VersionMeta::default()
        };
        let record = encode_version(&meta, b"value").unwrap();
        let (back, value) = decode_version(&record, "a/b/c", 1).unwrap();
        assert_eq!(back, meta);
        assert_eq!(&value[..], b"value");
        let mut bad = record.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let err = decode_version(&Bytes::from(bad), "a/b/c", 3).unwrap_err();
        assert!(matches!(err, Error::Codec { .. }));
        assert!(err.to_string().contains("a/b/c version 3"), "{err}");
        assert!(decode_version(&Bytes::from_static(b"xx"), "k", 1).is_err());
    }
}
