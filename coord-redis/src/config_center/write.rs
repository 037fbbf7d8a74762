//! Writes: appending versions (freeze and compare-and-set checked in one
//! script), compaction and freezing.

use coord_core::config::{
    ConfigWrite, frozen_key, frozen_namespace, is_reserved_key, key_under, namespace_of,
    version_conflict,
};
use coord_core::{Error, Result};
use redis::Value;

use super::{NamespaceKeys, SCRIPTS, version_of};
use crate::backend::RedisBackend;
use crate::error::{map_err, unexpected_reply};
use crate::lock::evalsha;

impl RedisBackend {
    /// [`config_append`](coord_core::config::ConfigBackend::config_append):
    /// one `append.lua` call over the namespace's keys.
    pub(super) async fn append_versions(
        &self,
        namespace: &str,
        writes: &[ConfigWrite],
    ) -> Result<Vec<u64>> {
        for w in writes {
            if namespace_of(&w.key) != Some(namespace) {
                return Err(Error::invalid(format!(
                    "config key {} is not in namespace {namespace}",
                    w.key
                )));
            }
        }
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.config_keys(namespace);
        let mut cmd = evalsha(&SCRIPTS.append, 2 + writes.len());
        cmd.arg(&keys.latest).arg(&keys.frozen);
        for w in writes {
            cmd.arg(keys.versions(&w.key));
        }
        cmd.arg(namespace).arg(&keys.channel);
        for w in writes {
            let expected = w.expected.map(|v| v.to_string()).unwrap_or_default();
            let reserved = if is_reserved_key(&w.key, namespace) {
                "r"
            } else {
                ""
            };
            cmd.arg(&w.key)
                .arg(expected)
                .arg(reserved)
                .arg(w.record.as_ref());
        }
        let reply: Value = self.eval(&SCRIPTS.append, &cmd).await?;
        parse_append(reply, namespace, writes.len())
    }

    /// [`config_compact`](coord_core::config::ConfigBackend::config_compact).
    pub(super) async fn compact_versions(&self, key: &str, keep_last: usize) -> Result<u64> {
        let keys = self.config_keys_of(key)?;
        let mut cmd = evalsha(&SCRIPTS.compact, 1);
        cmd.arg(keys.versions(key)).arg(keep_last.max(1));
        self.eval(&SCRIPTS.compact, &cmd).await
    }

    /// [`config_set_frozen`](coord_core::config::ConfigBackend::config_set_frozen):
    /// `SADD` or `SREM` on the scope's namespace's frozen set.
    pub(super) async fn set_frozen(&self, scope: &str, frozen: bool) -> Result<()> {
        let keys = self.config_keys_of(scope)?;
        let mut conn = self.inner.conn.clone();
        redis::cmd(if frozen { "SADD" } else { "SREM" })
            .arg(&keys.frozen)
            .arg(scope)
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))?;
        Ok(())
    }

    /// [`config_frozen`](coord_core::config::ConfigBackend::config_frozen):
    /// the namespace's frozen set, sorted.
    pub(super) async fn frozen_scopes(&self, namespace: &str) -> Result<Vec<String>> {
        let NamespaceKeys { frozen, .. } = self.config_keys_of(namespace)?;
        let mut conn = self.inner.conn.clone();
        let mut scopes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&frozen)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))?;
        scopes.retain(|s| key_under(s, namespace));
        scopes.sort();
        Ok(scopes)
    }
}

/// Decodes `append.lua`'s reply (see the script's header) for `n` writes.
fn parse_append(reply: Value, namespace: &str, n: usize) -> Result<Vec<u64>> {
    let bad = |reply: &Value| unexpected_reply("config append", reply);
    let Value::Array(items) = &reply else {
        return Err(bad(&reply));
    };
    let text = |i: usize| match items.get(i) {
        Some(Value::BulkString(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    };
    match text(0).as_deref() {
        Some("ok") if items.len() == n + 1 => items[1..]
            .iter()
            .map(|v| version_of(v, "config append"))
            .collect(),
        Some("frozen") => match (text(1).as_deref(), text(2)) {
            (Some("namespace"), Some(key)) => Err(frozen_namespace(namespace, &key)),
            (Some("key"), Some(key)) => Err(frozen_key(&key)),
            _ => Err(bad(&reply)),
        },
        Some("conflict") => match (text(1), text(2), text(3)) {
            (Some(key), Some(expected), Some(actual)) => {
                Err(version_conflict(&key, expected, actual))
            }
            _ => Err(bad(&reply)),
        },
        Some("corrupt") => match (text(1), text(2)) {
            (Some(key), Some(what)) => Err(Error::codec(
                format!(
                    "redis key {key} of config namespace {namespace} holds something coord \
                     did not write ({what}); nothing was written"
                ),
                None,
            )),
            _ => Err(bad(&reply)),
        },
        _ => Err(bad(&reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn append_replies_parse() {
        let ok = Value::Array(vec![bulk("ok"), Value::Int(3), Value::Int(1)]);
        assert_eq!(parse_append(ok, "a/b", 2).unwrap(), [3, 1]);
        let frozen = Value::Array(vec![bulk("frozen"), bulk("namespace"), bulk("a/b/k")]);
        let err = parse_append(frozen, "a/b", 1).unwrap_err();
        assert!(
            matches!(&err, Error::Frozen(m) if m == "namespace a/b is frozen; unfreeze it to write a/b/k"),
            "{err}"
        );
        let frozen = Value::Array(vec![bulk("frozen"), bulk("key"), bulk("a/b/k")]);
        assert!(matches!(
            parse_append(frozen, "a/b", 1),
            Err(Error::Frozen(m)) if m == "config key a/b/k is frozen; unfreeze it to write"
        ));
        let conflict = Value::Array(vec![bulk("conflict"), bulk("a/b/k"), bulk("0"), bulk("2")]);
        match parse_append(conflict, "a/b", 1) {
            Err(Error::Conflict { expected, actual }) => {
                assert_eq!(expected, "a/b/k at version 0");
                assert_eq!(actual, "version 2");
            }
            other => panic!("{other:?}"),
        }
        let corrupt = Value::Array(vec![bulk("corrupt"), bulk("x"), bulk("not a hash")]);
        assert!(matches!(
            parse_append(corrupt, "a/b", 1),
            Err(Error::Codec { .. })
        ));
        for odd in [
            Value::Nil,
            Value::Array(vec![bulk("ok"), Value::Int(1)]),
            Value::Array(vec![bulk("what")]),
        ] {
            assert!(parse_append(odd, "a/b", 2).is_err());
        }
    }
}
