//! Config keys: `{app}/{env}/{key}`, where the namespace `{app}/{env}` is
//! the unit of freezing, promotion, approval and export.

use std::fmt;

use crate::error::{Error, Result};

/// The longest full key, in bytes.
pub const MAX_CONFIG_KEY_LEN: usize = 512;

/// The prefix (after the namespace) of the keys the config center keeps for
/// itself (audit log, drafts, gray releases). They are never frozen and
/// never listed as configuration.
pub const RESERVED_PREFIX: &str = ".coord/";

/// A validated config key: `{app}/{env}/{key}`. `app` and `env` are letters,
/// digits, `-`, `_` and `.`; `key` may contain `/` to nest (`db/url`).
///
/// ```
/// use coord_core::config::ConfigKey;
///
/// let key = ConfigKey::parse("billing/prod/db/url")?;
/// assert_eq!(key.app(), "billing");
/// assert_eq!(key.env(), "prod");
/// assert_eq!(key.name(), "db/url");
/// assert_eq!(key.namespace(), "billing/prod");
/// assert!(ConfigKey::parse("billing/prod").is_err());
/// # Ok::<_, coord_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigKey {
    full: String,
    app_end: usize,
    env_end: usize,
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ConfigKey {
    /// Parses and checks `app/env/key`.
    pub fn parse(full: &str) -> Result<ConfigKey> {
        Self::parse_inner(full, false)
    }

    /// Like [`parse`](Self::parse), also accepting the reserved keys
    /// (`app/env/.coord/…`) the config center writes itself.
    pub(crate) fn parse_reserved(full: &str) -> Result<ConfigKey> {
        Self::parse_inner(full, true)
    }

    fn parse_inner(full: &str, reserved: bool) -> Result<ConfigKey> {
        if full.len() > MAX_CONFIG_KEY_LEN {
            return Err(Error::invalid(format!(
                "config key is {} bytes, over the limit of {MAX_CONFIG_KEY_LEN}",
                full.len()
            )));
        }
        let mut parts = full.splitn(3, '/');
        let (app, env, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(e), Some(k)) => (a, e, k),
            _ => {
                return Err(Error::invalid(format!(
                    "config key {full:?} is not of the form app/env/key"
                )));
            }
        };
        if !segment_ok(app) || !segment_ok(env) {
            return Err(Error::invalid(format!(
                "config key {full:?}: app and env must be 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if name.is_empty()
            || name.starts_with('/')
            || name.ends_with('/')
            || name.contains("//")
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::invalid(format!(
                "config key {full:?}: the key part must be non-empty, without spaces, control \
                 characters, or empty '/' segments"
            )));
        }
        if name.starts_with(RESERVED_PREFIX) && !reserved {
            return Err(Error::invalid(format!(
                "config key {full:?}: keys under {RESERVED_PREFIX} are the config center's own"
            )));
        }
        Ok(ConfigKey {
            full: full.to_owned(),
            app_end: app.len(),
            env_end: app.len() + 1 + env.len(),
        })
    }

    /// The full key, `app/env/key`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The application.
    pub fn app(&self) -> &str {
        &self.full[..self.app_end]
    }

    /// The environment.
    pub fn env(&self) -> &str {
        &self.full[self.app_end + 1..self.env_end]
    }

    /// The key within its namespace.
    pub fn name(&self) -> &str {
        &self.full[self.env_end + 1..]
    }

    /// The namespace, `app/env`.
    pub fn namespace(&self) -> &str {
        &self.full[..self.env_end]
    }

    /// Whether this is one of the config center's own keys.
    pub fn is_reserved(&self) -> bool {
        self.name().starts_with(RESERVED_PREFIX)
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Checks a namespace `app/env`.
pub fn validate_namespace(namespace: &str) -> Result<()> {
    match namespace.split_once('/') {
        Some((app, env)) if segment_ok(app) && segment_ok(env) => Ok(()),
        _ => Err(Error::invalid(format!(
            "config namespace {namespace:?} is not of the form app/env (letters, digits, '-', '_', '.')"
        ))),
    }
}

/// The namespace (`app/env`) of a full key or a prefix of at least two segments.
pub fn namespace_of(key: &str) -> Option<&str> {
    let first = key.find('/')?;
    let second = key[first + 1..]
        .find('/')
        .map_or(key.len(), |i| first + 1 + i);
    Some(&key[..second])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_bad_ones_are_invalid_arguments() {
        let k = ConfigKey::parse("a/b/c/d").unwrap();
        assert_eq!(
            (k.app(), k.env(), k.name(), k.namespace()),
            ("a", "b", "c/d", "a/b")
        );
        for bad in [
            "",
            "a",
            "a/b",
            "a/b/",
            "/b/c",
            "a//c",
            "a/b/c//d",
            "a b/c/d",
            "a/b/c d",
            "a/b/.coord/x",
        ] {
            assert!(
                matches!(ConfigKey::parse(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert!(
            ConfigKey::parse_reserved("a/b/.coord/audit")
                .unwrap()
                .is_reserved()
        );
        assert_eq!(namespace_of("a/b/c/d"), Some("a/b"));
        assert_eq!(namespace_of("a/b"), Some("a/b"));
        assert_eq!(namespace_of("a"), None);
    }
}
