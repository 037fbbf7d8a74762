//! [`EtcdFencedStore`]: the fenced-store recipe on etcd, a compare-and-set
//! transaction on the key's mod revision.

use coord_core::fence::{FencedStore, stale_token};
use coord_core::{Error, FencingToken, Result};
use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};

use crate::backend::EtcdBackend;
use crate::error::call;

/// Width of the token header of a stored value: `u64::MAX` has 20 digits.
const TOKEN_DIGITS: usize = 20;

/// How many compare-and-set attempts a write makes before giving up: each
/// failed attempt means another writer changed the key in between.
const MAX_ATTEMPTS: usize = 16;

/// A key-value store on etcd whose writes are fenced: a write carrying an
/// older fencing token than the one stored with the key is refused with
/// [`Error::Conflict`], so a holder that lost its lock (a long GC pause, a
/// partition, an expired lease) cannot overwrite the work of the holder after it.
///
/// Each key is the etcd key `{namespace}/fenced/{key}`, whose value is the
/// token as 20 decimal digits (zero-padded) followed by the value's bytes. A
/// write reads the stored token from the answer of a transaction
/// `If(mod_revision(key) == expected) Then(Put) Else(Get)`: it starts by
/// expecting no key, and when the compare fails it checks the token it got
/// back and tries again with that revision (at most 16 times; a write
/// still racing after that fails with a retryable error). So a first write
/// is one round trip, a later one two. Equal tokens are accepted (one
/// holder writes many times under one grant).
///
/// With the etcd backend's locks the token is the lock key's create
/// revision, which only grows, across holders, clients and server restarts.
///
/// ```no_run
/// use std::time::Duration;
/// use coord_etcd::{EtcdBackend, EtcdFencedStore, LockClient, Settings};
/// use coord_core::FencedStore;
/// # use std::sync::Arc;
///
/// # async fn run() -> coord_etcd::Result<()> {
/// let backend = EtcdBackend::connect("etcd://127.0.0.1:2379", &Settings::default()).await?;
/// let store = EtcdFencedStore::new(&backend);
/// let client = LockClient::new(Arc::new(backend));
///
/// let guard = client.lock("orders/42").ttl(Duration::from_secs(10)).build().acquire().await?;
/// // Refused with `Error::Conflict` (and nothing written) once a holder with a
/// // newer token has written: this holder then lost the lock and must stop.
/// store.write("orders/42/state", guard.fencing_token(), b"shipped").await?;
/// let (token, value) = store.read("orders/42/state").await?.expect("written");
/// assert!(token >= guard.fencing_token() && !value.is_empty());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EtcdFencedStore {
    backend: EtcdBackend,
}

impl EtcdFencedStore {
    /// A fenced store on `backend`'s connection, with keys under its namespace.
    pub fn new(backend: &EtcdBackend) -> Self {
        EtcdFencedStore {
            backend: backend.clone(),
        }
    }

    /// The etcd key that holds `key`: `{namespace}/fenced/{key}`.
    pub fn etcd_key(&self, key: &str) -> String {
        format!("{}fenced/{key}", self.backend.inner.prefix)
    }

    fn checked_key(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            return Err(Error::invalid("fenced key is empty"));
        }
        Ok(self.etcd_key(key))
    }
}

#[coord_core::async_trait]
impl FencedStore for EtcdFencedStore {
    async fn write(&self, key: &str, token: FencingToken, value: &[u8]) -> Result<()> {
        let etcd_key = self.checked_key(key)?;
        let encoded = encode(token, value);
        let timeout = self.backend.inner.timeout;
        let mut kv = self.backend.inner.client.kv_client();
        // The mod revision the key is expected to have; 0: absent.
        let mut expected = 0;
        for _ in 0..MAX_ATTEMPTS {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    etcd_key.as_str(),
                    CompareOp::Equal,
                    expected,
                )])
                .and_then([TxnOp::put(etcd_key.as_str(), encoded.as_slice(), None)])
                .or_else([TxnOp::get(etcd_key.as_str(), None)]);
            let resp = call("write a fenced key", timeout, kv.txn(txn)).await?;
            if resp.succeeded() {
                return Ok(());
            }
            match current(&resp)? {
                Some(stored) => {
                    let (newest, _) = decode(&etcd_key, stored.value())?;
                    if token < newest {
                        return Err(stale_token(key, token, newest));
                    }
                    expected = stored.mod_revision();
                }
                // Deleted in between: expect it absent.
                None => expected = 0,
            }
        }
        Err(Error::backend(
            "etcd",
            format!(
                "fenced write of {etcd_key:?}: the key changed {MAX_ATTEMPTS} times while \
                 writing; try again"
            ),
            true,
            None,
        ))
    }

    async fn read(&self, key: &str) -> Result<Option<(FencingToken, Vec<u8>)>> {
        let etcd_key = self.checked_key(key)?;
        let mut kv = self.backend.inner.client.kv_client();
        let resp = call(
            "read a fenced key",
            self.backend.inner.timeout,
            kv.get(etcd_key.as_str(), None),
        )
        .await?;
        match resp.kvs().first() {
            Some(stored) => {
                let (token, value) = decode(&etcd_key, stored.value())?;
                Ok(Some((token, value.to_vec())))
            }
            None => Ok(None),
        }
    }
}

/// The key read by the `Else` branch of a failed write, if it exists.
fn current(resp: &TxnResponse) -> Result<Option<KeyValue>> {
    match resp.op_responses().into_iter().next() {
        Some(TxnOpResponse::Get(get)) => Ok(get.kvs().first().cloned()),
        _ => Err(Error::backend(
            "etcd",
            "unexpected answer to the fenced write transaction: no read of the key",
            false,
            None,
        )),
    }
}

/// The stored form: the token as 20 zero-padded decimal digits, then the value.
fn encode(token: FencingToken, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TOKEN_DIGITS + value.len());
    out.extend_from_slice(format!("{:020}", token.as_u64()).as_bytes());
    out.extend_from_slice(value);
    out
}

/// The token and value of a stored form, or [`Error::Codec`].
fn decode<'a>(etcd_key: &str, stored: &'a [u8]) -> Result<(FencingToken, &'a [u8])> {
    let token = stored
        .get(..TOKEN_DIGITS)
        .filter(|digits| digits.iter().all(u8::is_ascii_digit))
        .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<u64>().ok());
    match token {
        Some(token) => Ok((FencingToken::new(token), &stored[TOKEN_DIGITS..])),
        None => {
            let shown: String = String::from_utf8_lossy(&stored[..stored.len().min(64)]).into();
            Err(Error::codec(
                format!(
                    "fenced key {etcd_key:?} holds {shown:?}, which does not start with a \
                     fencing token (20 decimal digits); it was changed outside coord"
                ),
                None,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        for (token, value) in [
            (0, &b""[..]),
            (7, b"hello"),
            (u64::MAX, b"00000000000000000000"),
        ] {
            let stored = encode(FencingToken::new(token), value);
            assert_eq!(stored.len(), TOKEN_DIGITS + value.len());
            let (t, v) = decode("k", &stored).unwrap();
            assert_eq!((t.as_u64(), v), (token, value));
        }
        assert_eq!(
            &encode(FencingToken::new(42), b"x")[..],
            b"00000000000000000042x"
        );
    }

    #[test]
    fn malformed_stored_forms_are_codec_errors() {
        for bad in [
            &b""[..],
            b"banana",
            b"0000000000000000004",
            b"-0000000000000000042",
            b"99999999999999999999",
        ] {
            let err = decode("ns/fenced/k", bad).unwrap_err();
            assert!(matches!(err, Error::Codec { .. }), "{bad:?}: {err:?}");
            assert!(err.to_string().contains("ns/fenced/k"), "{err}");
        }
    }
}
