//! Secrets: values encrypted client-side with AES-256-GCM under a key from
//! a [`KeyProvider`], so the store never holds their plain text.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

use crate::error::{Error, Result};

/// The environment variable [`EnvKeyProvider`] reads the current key from:
/// `id:base64-of-32-bytes` (or just the base64, with id `default`).
pub const KEY_ENV: &str = "COORD_CONFIG_KEY";

/// The environment variable [`EnvKeyProvider`] reads older keys from
/// (comma-separated `id:base64`), so versions encrypted before a rotation
/// stay readable.
pub const OLD_KEYS_ENV: &str = "COORD_CONFIG_OLD_KEYS";

/// Where encryption keys come from: the current one for new secrets, any
/// known one (by id) for reading old versions.
pub trait KeyProvider: Send + Sync + fmt::Debug + 'static {
    /// The id and bytes of the key new secrets are encrypted under.
    fn current(&self) -> Result<(String, [u8; 32])>;

    /// The key with this id.
    fn key(&self, id: &str) -> Result<[u8; 32]>;
}

/// Keys given in code: a current one and older ones.
#[derive(Clone)]
pub struct StaticKeys {
    current: String,
    keys: HashMap<String, [u8; 32]>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeys")
            .field("current", &self.current)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StaticKeys {
    /// `key` (32 bytes) under `id` is the current key.
    pub fn new(id: impl Into<String>, key: [u8; 32]) -> StaticKeys {
        let id = id.into();
        StaticKeys {
            keys: HashMap::from([(id.clone(), key)]),
            current: id,
        }
    }

    /// Also knows `key` under `id` (an older key, for reading old versions).
    pub fn with_old(mut self, id: impl Into<String>, key: [u8; 32]) -> StaticKeys {
        self.keys.insert(id.into(), key);
        self
    }

    /// Makes `id` (with `key`) the current key, keeping the others readable.
    pub fn rotate(mut self, id: impl Into<String>, key: [u8; 32]) -> StaticKeys {
        let id = id.into();
        self.keys.insert(id.clone(), key);
        self.current = id;
        self
    }
}

impl KeyProvider for StaticKeys {
    fn current(&self) -> Result<(String, [u8; 32])> {
        Ok((self.current.clone(), self.keys[&self.current]))
    }

    fn key(&self, id: &str) -> Result<[u8; 32]> {
        self.keys.get(id).copied().ok_or_else(|| missing_key(id))
    }
}

fn missing_key(id: &str) -> Error {
    Error::invalid(format!(
        "no encryption key with id {id:?}: add it to the key provider ({OLD_KEYS_ENV} for the \
         environment provider) to read secrets written under it"
    ))
}

/// Keys from the environment: [`KEY_ENV`] (current) and [`OLD_KEYS_ENV`].
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvKeyProvider;

fn parse_key(entry: &str, var: &str) -> Result<(String, [u8; 32])> {
    let (id, b64) = entry
        .trim()
        .split_once(':')
        .unwrap_or(("default", entry.trim()));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Error::invalid(format!("{var}: key {id:?} is not base64: {e}")))?;
    let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
        Error::invalid(format!(
            "{var}: key {id:?} is {} bytes; AES-256 needs 32 (generate one with `openssl rand -base64 32`)",
            b.len()
        ))
    })?;
    Ok((id.to_owned(), key))
}

impl KeyProvider for EnvKeyProvider {
    fn current(&self) -> Result<(String, [u8; 32])> {
        let value = std::env::var(KEY_ENV).map_err(|_| {
            Error::invalid(format!(
                "secrets need an encryption key: set {KEY_ENV}=<id>:<base64 of 32 bytes> \
                 (e.g. `prod1:$(openssl rand -base64 32)`) or give the config center a KeyProvider"
            ))
        })?;
        parse_key(&value, KEY_ENV)
    }

    fn key(&self, id: &str) -> Result<[u8; 32]> {
        if let Ok((current, key)) = self.current()
            && current == id
        {
            return Ok(key);
        }
        if let Ok(old) = std::env::var(OLD_KEYS_ENV) {
            for entry in old.split(',').filter(|e| !e.trim().is_empty()) {
                let (kid, key) = parse_key(entry, OLD_KEYS_ENV)?;
                if kid == id {
                    return Ok(key);
                }
            }
        }
        Err(missing_key(id))
    }
}

/// Encrypts `plain` under the provider's current key: `nonce (12) || ciphertext`.
pub(crate) fn encrypt(keys: &dyn KeyProvider, plain: &[u8]) -> Result<(String, Vec<u8>)> {
    let (id, key) = keys.current()?;
    let cipher = Aes256Gcm::new(&key.into());
    let nonce_bytes: [u8; 12] = std::array::from_fn(|_| fastrand::u8(..));
    let nonce = Nonce::from(nonce_bytes);
    let sealed = cipher
        .encrypt(&nonce, plain)
        .map_err(|_| Error::codec("secret could not be encrypted", None))?;
    let mut out = Vec::with_capacity(12 + sealed.len());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&sealed);
    Ok((id, out))
}

/// Decrypts what [`encrypt`] made under key `id`.
pub(crate) fn decrypt(
    keys: &dyn KeyProvider,
    id: &str,
    sealed: &[u8],
    what: &str,
) -> Result<Vec<u8>> {
    let key = keys.key(id)?;
    if sealed.len() < 12 + 16 {
        return Err(Error::codec(format!("secret {what} is truncated"), None));
    }
    let cipher = Aes256Gcm::new(&key.into());
    let nonce = Nonce::from(<[u8; 12]>::try_from(&sealed[..12]).expect("12 bytes"));
    cipher.decrypt(&nonce, &sealed[12..]).map_err(|_| {
        Error::codec(
            format!(
                "secret {what} could not be decrypted with key {id:?}: the key is wrong or the value was altered"
            ),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_a_wrong_key_is_a_clear_error() {
        let keys = StaticKeys::new("k1", [7; 32]);
        let (id, sealed) = encrypt(&keys, b"hunter2").unwrap();
        assert_eq!(id, "k1");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(decrypt(&keys, "k1", &sealed, "x").unwrap(), b"hunter2");
        let wrong = StaticKeys::new("k1", [8; 32]);
        assert!(matches!(
            decrypt(&wrong, "k1", &sealed, "x"),
            Err(Error::Codec { .. })
        ));
        assert!(matches!(
            decrypt(&keys, "k9", &sealed, "x"),
            Err(Error::InvalidArgument(_))
        ));
        let rotated = keys.rotate("k2", [9; 32]);
        assert_eq!(decrypt(&rotated, "k1", &sealed, "x").unwrap(), b"hunter2");
        assert_eq!(rotated.current().unwrap().0, "k2");
    }

    #[test]
    fn env_keys_parse() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(
            parse_key(&format!("p1:{b64}"), "X").unwrap(),
            ("p1".into(), [1; 32])
        );
        assert_eq!(parse_key(&b64, "X").unwrap().0, "default");
        assert!(parse_key("p1:abc", "X").is_err());
    }
}
