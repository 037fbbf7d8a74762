//! The stored form of a registration: the instance and its owner, shared by
//! every backend so that one backend's entries read the same everywhere.

use serde::{Deserialize, Serialize};

use super::instance::ServiceInstance;
use crate::error::{Error, Result};

#[derive(Serialize)]
struct RecordRef<'a> {
    owner: &'a str,
    instance: &'a ServiceInstance,
}

#[derive(Deserialize)]
struct Record {
    owner: String,
    instance: ServiceInstance,
}

/// Encodes `instance` registered by `owner` (JSON).
pub fn encode_record(instance: &ServiceInstance, owner: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(&RecordRef { owner, instance }).map_err(|e| Error::Codec {
        message: format!("instance {:?} could not be encoded: {e}", instance.id),
        source: Some(Box::new(e)),
    })
}

/// Decodes a stored registration into its owner and instance; a corrupted
/// entry is an [`Error::Codec`] naming `at`.
pub fn decode_record(bytes: &[u8], at: &str) -> Result<(String, ServiceInstance)> {
    serde_json::from_slice::<Record>(bytes)
        .map(|r| (r.owner, r.instance))
        .map_err(|e| Error::Codec {
            message: format!("registry entry {at} is not a registration: {e}"),
            source: Some(Box::new(e)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let i = ServiceInstance::new("s", "a", "127.0.0.1:1").tag("t");
        let bytes = encode_record(&i, "owner-1").unwrap();
        assert_eq!(decode_record(&bytes, "x").unwrap(), ("owner-1".into(), i));
        assert!(decode_record(b"[]", "x").is_err());
    }
}
