//! What a read returns: one version of a key, its value in plain text (a
//! secret decrypted) and its metadata.

use bytes::Bytes;

use super::record::VersionMeta;
use crate::error::{Error, Result};

/// One version of a config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValue {
    /// The full key, `app/env/key`.
    pub key: String,
    /// The version number (1, 2, …).
    pub version: u64,
    /// The value (decrypted if it is a secret; empty for a deletion).
    pub value: Bytes,
    /// Author, time, message, checksum, tombstone and secret marks.
    pub meta: VersionMeta,
}

impl ConfigValue {
    /// The value as UTF-8 text; [`Error::InvalidArgument`] when it is not.
    pub fn as_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.value).map_err(|e| {
            Error::invalid(format!(
                "config {} version {} is not UTF-8 text: {e}",
                self.key, self.version
            ))
        })
    }

    /// Whether this version is a deletion.
    pub fn is_deleted(&self) -> bool {
        self.meta.deleted
    }

    /// Whether the value is stored encrypted.
    pub fn is_secret(&self) -> bool {
        self.meta.secret_key_id.is_some()
    }
}
