//! The stored form of a cache value: an 8-byte header, then the payload.
//!
//! ```text
//! byte 0     0xC0, the magic byte
//! byte 1     the format version (1)
//! byte 2     the codec (1 JSON, 2 postcard)
//! byte 3     flags: bit 0 the payload is lz4-compressed, bit 1 "known absent"
//!            (a negative entry, no payload)
//! bytes 4-7  CRC32 of the payload as stored, little-endian
//! bytes 8-   the payload
//! ```
//!
//! A value that fails any check (too short, another magic or version,
//! another codec, a checksum mismatch, a bad compressed block) is an
//! [`Error::Codec`] naming the key, never data.

use bytes::Bytes;

use crate::cache::codec::CacheCodec;
use crate::error::{Error, Result};

const MAGIC: u8 = 0xC0;
const VERSION: u8 = 1;
const HEADER: usize = 8;
const COMPRESSED: u8 = 1;
const ABSENT: u8 = 2;

/// The largest size a compressed payload may claim to expand to.
const MAX_EXPANDED: usize = 512 << 20;

/// What a stored value holds once its header checks out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opened {
    /// The encoded value.
    Payload(Vec<u8>),
    /// A negative entry: the key is known not to exist.
    Absent,
}

/// Wraps an encoded value (compressed when longer than `compress_above`).
pub(crate) fn seal(payload: &[u8], codec: CacheCodec, compress_above: usize) -> Bytes {
    let (flags, body) = if payload.len() > compress_above {
        let packed = lz4_flex::compress_prepend_size(payload);
        if packed.len() < payload.len() {
            (COMPRESSED, packed)
        } else {
            (0, payload.to_vec())
        }
    } else {
        (0, payload.to_vec())
    };
    frame(codec, flags, &body)
}

/// A negative entry.
pub(crate) fn seal_absent(codec: CacheCodec) -> Bytes {
    frame(codec, ABSENT, &[])
}

fn frame(codec: CacheCodec, flags: u8, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&[MAGIC, VERSION, codec.id(), flags]);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Checks and unwraps the stored value of `key`.
pub(crate) fn open(key: &str, stored: &[u8], codec: CacheCodec) -> Result<Opened> {
    let bad = |what: String| Error::codec(format!("cache value of key {key:?}: {what}"), None);
    if stored.len() < HEADER {
        return Err(bad(format!(
            "{} bytes, shorter than the {HEADER}-byte header: not written by coord",
            stored.len()
        )));
    }
    if stored[0] != MAGIC {
        return Err(bad(
            "no coord header (wrong magic byte): not written by coord".into(),
        ));
    }
    if stored[1] != VERSION {
        return Err(bad(format!(
            "format version {} (this build reads {VERSION}): written by another coord version",
            stored[1]
        )));
    }
    match CacheCodec::from_id(stored[2]) {
        Some(c) if c == codec => {}
        Some(c) => {
            return Err(bad(format!(
                "written with codec {c:?}, read with {codec:?}: every instance of a cache must use one codec"
            )));
        }
        None => return Err(bad(format!("unknown codec id {}", stored[2]))),
    }
    let flags = stored[3];
    let crc = u32::from_le_bytes([stored[4], stored[5], stored[6], stored[7]]);
    let body = &stored[HEADER..];
    if crc32fast::hash(body) != crc {
        return Err(bad(
            "checksum mismatch: the stored value is corrupted".into()
        ));
    }
    if flags & ABSENT != 0 {
        return Ok(Opened::Absent);
    }
    if flags & COMPRESSED == 0 {
        return Ok(Opened::Payload(body.to_vec()));
    }
    let claimed = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(usize::MAX);
    if claimed > MAX_EXPANDED {
        return Err(bad(format!("compressed payload claims {claimed} bytes")));
    }
    lz4_flex::decompress_size_prepended(body)
        .map(Opened::Payload)
        .map_err(|e| bad(format!("bad compressed payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_values_round_trip() {
        let small = b"{\"id\":1}".to_vec();
        let sealed = seal(&small, CacheCodec::Json, 64);
        assert_eq!(sealed.len(), HEADER + small.len());
        assert_eq!(
            open("k", &sealed, CacheCodec::Json).unwrap(),
            Opened::Payload(small)
        );

        let large = vec![b'a'; 10_000];
        let sealed = seal(&large, CacheCodec::Json, 64);
        assert!(sealed.len() < 1_000, "compressed: {}", sealed.len());
        assert_eq!(
            open("k", &sealed, CacheCodec::Json).unwrap(),
            Opened::Payload(large)
        );

        let absent = seal_absent(CacheCodec::Postcard);
        assert_eq!(
            open("k", &absent, CacheCodec::Postcard).unwrap(),
            Opened::Absent
        );
    }

    #[test]
    fn corrupted_or_foreign_values_are_codec_errors_naming_the_key() {
        let mut sealed = seal(b"hello", CacheCodec::Json, 64).to_vec();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        let err = open("user:1", &sealed, CacheCodec::Json).unwrap_err();
        assert!(matches!(err, Error::Codec { .. }));
        assert!(err.to_string().contains("user:1"), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");

        for foreign in [
            &b""[..],
            b"plain text value",
            b"\xc0\x09\x01\x00\x00\x00\x00\x00",
        ] {
            assert!(matches!(
                open("k", foreign, CacheCodec::Json),
                Err(Error::Codec { .. })
            ));
        }
        let json = seal(b"1", CacheCodec::Json, 64);
        let err = open("k", &json, CacheCodec::Postcard).unwrap_err();
        assert!(err.to_string().contains("one codec"), "{err}");

        // A compressed block claiming a huge size is refused before allocating.
        let mut body = (u32::MAX).to_le_bytes().to_vec();
        body.extend_from_slice(b"xx");
        let bomb = frame(CacheCodec::Json, COMPRESSED, &body);
        assert!(matches!(
            open("k", &bomb, CacheCodec::Json),
            Err(Error::Codec { .. })
        ));
    }
}
