//! How typed values become bytes: JSON (the default, readable by any tool)
//! or postcard (compact binary).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The serialization of a cache's values. Every instance of one cache must
/// use the same codec: a value written with another is refused as a
/// [`Error::Codec`] naming both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CacheCodec {
    /// `serde_json`: readable with `redis-cli` or `etcdctl` (after the
    /// 8-byte header), the default.
    #[default]
    Json,
    /// `postcard`: compact binary, smaller and faster to decode.
    Postcard,
}

impl CacheCodec {
    /// The id stored in each value's header.
    pub(crate) fn id(self) -> u8 {
        match self {
            CacheCodec::Json => 1,
            CacheCodec::Postcard => 2,
        }
    }

    /// The codec of a header id.
    pub(crate) fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(CacheCodec::Json),
            2 => Some(CacheCodec::Postcard),
            _ => None,
        }
    }

    /// Encodes `value`.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            CacheCodec::Json => serde_json::to_vec(value)
                .map_err(|e| Error::codec("cannot encode the value as JSON", Some(e.into()))),
            CacheCodec::Postcard => postcard::to_stdvec(value)
                .map_err(|e| Error::codec("cannot encode the value with postcard", Some(e.into()))),
        }
    }

    /// Decodes a value encoded by [`CacheCodec::encode`] with this codec.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            CacheCodec::Json => serde_json::from_slice(bytes)
                .map_err(|e| Error::codec("cannot decode the JSON value", Some(e.into()))),
            CacheCodec::Postcard => postcard::from_bytes(bytes)
                .map_err(|e| Error::codec("cannot decode the postcard value", Some(e.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
    }

    #[test]
    fn both_codecs_round_trip_and_refuse_garbage() {
        let u = User {
            id: 7,
            name: "ada".into(),
        };
        for codec in [CacheCodec::Json, CacheCodec::Postcard] {
            let bytes = codec.encode(&u).unwrap();
            assert_eq!(codec.decode::<User>(&bytes).unwrap(), u);
            assert_eq!(CacheCodec::from_id(codec.id()), Some(codec));
            assert!(matches!(
                codec.decode::<User>(b"\xff\xfe"),
                Err(Error::Codec { .. })
            ));
        }
        assert!(
            CacheCodec::Postcard.encode(&u).unwrap().len()
                < CacheCodec::Json.encode(&u).unwrap().len()
        );
    }
}
