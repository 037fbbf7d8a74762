//! Fenced resources: accept a write only with a fencing token at least as
//! new as the newest accepted so far, so a holder that lost its lock (a long
//! GC pause, a network partition, a force-release) cannot overwrite the
//! work of the holder after it.
//!
//! Two forms:
//! * [`FencedResource`], a value in this process guarded by the rule;
//! * [`FencedStore`], the rule as a compare-and-set on a key of a shared
//!   store: [`MemoryFencedStore`] here, and the Redis (Lua) and etcd (txn)
//!   recipes in their backend crates.
//!
//! ```
//! use coord_core::{FencingToken, fence::FencedResource};
//!
//! let balance = FencedResource::new(100);
//! balance.apply(FencingToken::new(7), |b| *b -= 10).unwrap();
//! // A holder with an older token is refused, and changes nothing.
//! assert!(balance.apply(FencingToken::new(6), |b| *b = 0).is_err());
//! assert_eq!(balance.read(|b| *b), 90);
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::lock::FencingToken;

/// The error of a write refused for carrying an older token than `newest`.
pub fn stale_token(what: &str, token: FencingToken, newest: FencingToken) -> Error {
    Error::Conflict {
        expected: format!("a fencing token >= {newest} for {what}"),
        actual: format!(
            "a write with token {token}, from a hold that has ended (released, expired or \
             lost: a newer holder has written since)"
        ),
    }
}

/// A value in this process that only accepts changes carrying a fencing
/// token at least as new as the newest one it has accepted. Equal tokens are
/// accepted: one holder writes many times under one grant.
#[derive(Debug, Default)]
pub struct FencedResource<T> {
    state: Mutex<(Option<FencingToken>, T)>,
}

impl<T> FencedResource<T> {
    /// A resource holding `value`, with no token seen yet.
    pub fn new(value: T) -> Self {
        FencedResource {
            state: Mutex::new((None, value)),
        }
    }

    /// Runs `change` on the value when `token` is at least the newest token
    /// seen (and records it); otherwise changes nothing and returns
    /// [`Error::Conflict`].
    pub fn apply<R>(&self, token: FencingToken, change: impl FnOnce(&mut T) -> R) -> Result<R> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(newest) = state.0
            && token < newest
        {
            return Err(stale_token("this resource", token, newest));
        }
        state.0 = Some(token);
        Ok(change(&mut state.1))
    }

    /// Reads the value.
    pub fn read<R>(&self, read: impl FnOnce(&T) -> R) -> R {
        read(&self.state.lock().unwrap_or_else(|e| e.into_inner()).1)
    }

    /// The newest token accepted so far.
    pub fn newest_token(&self) -> Option<FencingToken> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// A key-value store whose writes are fenced: `write` stores `value` under
/// `key` only when `token` is at least the newest token stored with `key`,
/// atomically (one compare-and-set). Implemented by [`MemoryFencedStore`],
/// `coord_redis::RedisFencedStore` and `coord_etcd::EtcdFencedStore`.
#[async_trait]
pub trait FencedStore: Send + Sync {
    /// Stores `value` under `key` with `token`, or returns
    /// [`Error::Conflict`] (changing nothing) when a newer token is stored.
    async fn write(&self, key: &str, token: FencingToken, value: &[u8]) -> Result<()>;

    /// The newest token and value stored under `key`.
    async fn read(&self, key: &str) -> Result<Option<(FencingToken, Vec<u8>)>>;
}

/// [`FencedStore`] in process memory.
#[derive(Debug, Default)]
pub struct MemoryFencedStore {
    values: Mutex<HashMap<String, (FencingToken, Vec<u8>)>>,
}

impl MemoryFencedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl FencedStore for MemoryFencedStore {
    async fn write(&self, key: &str, token: FencingToken, value: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::invalid("fenced store key is empty"));
        }
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((newest, _)) = values.get(key)
            && token < *newest
        {
            return Err(stale_token(key, token, *newest));
        }
        values.insert(key.to_owned(), (token, value.to_vec()));
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Option<(FencingToken, Vec<u8>)>> {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        Ok(values.get(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_tokens_are_refused_equal_ones_accepted() {
        let r = FencedResource::new(Vec::new());
        r.apply(FencingToken::new(5), |v| v.push(1)).unwrap();
        r.apply(FencingToken::new(5), |v| v.push(2)).unwrap();
        let err = r.apply(FencingToken::new(4), |v| v.push(3)).unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        r.apply(FencingToken::new(9), |v| v.push(4)).unwrap();
        assert_eq!(r.read(|v| v.clone()), vec![1, 2, 4]);
        assert_eq!(r.newest_token(), Some(FencingToken::new(9)));
    }

    #[tokio::test]
    async fn memory_store_keeps_the_newest_write() {
        let s = MemoryFencedStore::new();
        s.write("k", FencingToken::new(3), b"a").await.unwrap();
        assert!(s.write("k", FencingToken::new(2), b"b").await.is_err());
        s.write("other", FencingToken::new(1), b"c").await.unwrap();
        assert_eq!(
            s.read("k").await.unwrap(),
            Some((FencingToken::new(3), b"a".to_vec()))
        );
    }
}
