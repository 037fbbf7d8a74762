//! The write rules every config backend applies the same way, with the
//! same errors: reserved keys, freezes, version conflicts.

use super::key::RESERVED_PREFIX;
use crate::error::Error;

/// Whether `key` is one of the config center's own keys in `namespace`
/// (`app/env/.coord/…`): never frozen.
pub fn is_reserved_key(key: &str, namespace: &str) -> bool {
    key.strip_prefix(namespace)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| name.starts_with(RESERVED_PREFIX))
}

/// The error of a write to `key` refused because `namespace` is frozen.
pub fn frozen_namespace(namespace: &str, key: &str) -> Error {
    Error::Frozen(format!(
        "namespace {namespace} is frozen; unfreeze it to write {key}"
    ))
}

/// The error of a write refused because `key` itself is frozen.
pub fn frozen_key(key: &str) -> Error {
    Error::Frozen(format!("config key {key} is frozen; unfreeze it to write"))
}

/// Whether a write to `key` is refused by a freeze (`frozen` says whether a
/// scope is frozen): the namespace first, then the key; reserved keys never.
pub fn frozen_error(key: &str, namespace: &str, frozen: impl Fn(&str) -> bool) -> Option<Error> {
    if is_reserved_key(key, namespace) {
        None
    } else if frozen(namespace) {
        Some(frozen_namespace(namespace, key))
    } else if frozen(key) {
        Some(frozen_key(key))
    } else {
        None
    }
}

/// The error of a write to `key` expecting version `expected` where the
/// latest is `actual`.
pub fn version_conflict(
    key: &str,
    expected: impl std::fmt::Display,
    actual: impl std::fmt::Display,
) -> Error {
    Error::Conflict {
        expected: format!("{key} at version {expected}"),
        actual: format!("version {actual}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys_are_never_frozen_and_the_namespace_comes_first() {
        assert!(is_reserved_key("a/b/.coord/audit", "a/b"));
        assert!(!is_reserved_key("a/b/x/.coord/audit", "a/b"));
        assert!(!is_reserved_key("a/b/.coordx", "a/b"));
        assert!(frozen_error("a/b/.coord/audit", "a/b", |_| true).is_none());
        let all = frozen_error("a/b/k", "a/b", |_| true).unwrap();
        assert!(all.to_string().contains("namespace a/b is frozen"), "{all}");
        let key = frozen_error("a/b/k", "a/b", |s| s == "a/b/k").unwrap();
        assert!(
            key.to_string().contains("config key a/b/k is frozen"),
            "{key}"
        );
        assert!(frozen_error("a/b/k", "a/b", |_| false).is_none());
    }
}
