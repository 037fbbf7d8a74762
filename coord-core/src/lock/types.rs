//! Values shared by every lock kind and backend.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Who holds a lock: the client's id plus a logical owner inside that client.
///
/// Backends store its [`Display`](fmt::Display) form (`client_id:owner`) and
/// compare it on release and renew, so nobody releases someone else's lock.
#[derive(Clone, Eq)]
pub struct LockOwner {
    full: Arc<str>,
    split: usize,
}

impl std::hash::Hash for LockOwner {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Equal owners have equal strings (`split` follows from the string
        // for owners that compare equal).
        self.full.hash(state);
    }
}

impl PartialEq for LockOwner {
    fn eq(&self, other: &Self) -> bool {
        // A hold compared with its own owner (the common case) shares the
        // string: no byte comparison.
        Arc::ptr_eq(&self.full, &other.full)
            || (self.split == other.split && self.full == other.full)
    }
}

impl LockOwner {
    /// An owner made of a client id (no `:` allowed) and a logical owner.
    /// Neither may contain a NUL byte (backends use it as a marker).
    pub fn new(client_id: &str, owner: &str) -> Result<Self> {
        if client_id.is_empty() || client_id.contains([':', '\0']) {
            return Err(Error::invalid(format!(
                "client id {client_id:?} must be non-empty and contain no ':' or NUL byte"
            )));
        }
        if owner.is_empty() || owner.contains('\0') {
            return Err(Error::invalid(format!(
                "lock owner {owner:?} must be non-empty and contain no NUL byte"
            )));
        }
        Ok(LockOwner {
            full: format!("{client_id}:{owner}").into(),
            split: client_id.len(),
        })
    }

    /// An owner unique to one acquisition: the client id plus a random suffix.
    pub fn unique(client_id: &str) -> Self {
        let owner = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        LockOwner {
            full: format!("{client_id}:{owner}").into(),
            split: client_id.len(),
        }
    }

    /// An owner unique to one grant that still shows a logical owner:
    /// `client_id:logical#<random>`. Used where one logical owner may ask
    /// again while the cleanup of its earlier attempt is still in flight
    /// (reentrant locks, queued kinds, elections), so that cleanup can never
    /// end the newer hold.
    pub fn tagged(client_id: &str, logical: &str) -> Result<Self> {
        let owner = format!("{logical}#{:016x}", fastrand::u64(..));
        LockOwner::new(client_id, &owner)
    }

    /// The logical owner of a [`LockOwner::tagged`] owner (the part before
    /// the last `#`), or the whole owner part.
    pub fn logical(&self) -> &str {
        let owner = self.owner();
        owner.rsplit_once('#').map_or(owner, |(logical, _)| logical)
    }

    /// Parses the stored form `client_id:owner`.
    pub fn parse(stored: &str) -> Result<Self> {
        match stored.split_once(':') {
            Some((client, owner)) => LockOwner::new(client, owner),
            None => Err(Error::codec(
                format!("stored lock owner {stored:?} is not of the form client_id:owner"),
                None,
            )),
        }
    }

    /// The client id part.
    pub fn client_id(&self) -> &str {
        &self.full[..self.split]
    }

    /// The logical owner part.
    pub fn owner(&self) -> &str {
        &self.full[self.split + 1..]
    }

    /// The stored form, `client_id:owner`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for LockOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for LockOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockOwner({})", self.full)
    }
}

/// A number handed out with every grant of a lock, strictly increasing per
/// lock name across holders, clients and server restarts. Pass it to the
/// resource you protect; the resource refuses writes carrying an older token.
///
/// How far "strictly increasing" reaches depends on the backend (see its
/// docs): etcd's revisions survive everything etcd survives; Redis tokens are
/// a hybrid logical clock that stays increasing across restarts, restores of
/// older data and failovers as long as the outage lasts longer than about
/// 11 ms and the servers' clocks agree to within the outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with this value.
    pub const fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// Its value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a backend returns for a granted lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockGrant {
    /// The fencing token of this grant.
    pub token: FencingToken,
    /// The TTL the backend applied (at least the backend's minimum TTL).
    pub ttl: Duration,
}

/// The answer to one acquisition attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The caller holds the lock now.
    Granted(LockGrant),
    /// Someone else holds it.
    Held {
        /// How long the current holder's lease still runs, when the backend
        /// knows: a waiter retries no later than that even without a
        /// notification (the holder may have died).
        retry_after: Option<Duration>,
    },
}

/// The longest lock name accepted, in bytes.
pub const MAX_LOCK_NAME_LEN: usize = 1024;

/// The shortest TTL a lock (or election, or queued entry) may have.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// Checks a lock name and TTL the way every backend needs them: one rule
/// for locks of every kind and for elections (whose name is checked the
/// same way, before its `election/` prefix is added).
pub fn validate_lock_request(name: &str, ttl: Duration) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("lock name is empty"));
    }
    if name.len() > MAX_LOCK_NAME_LEN {
        return Err(Error::invalid(format!(
            "lock name is {} bytes; the limit is {MAX_LOCK_NAME_LEN}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::invalid("lock name contains a NUL byte"));
    }
    if ttl.is_zero() {
        return Err(Error::invalid(
            "lock TTL is zero; give a positive TTL such as 10s",
        ));
    }
    if ttl < MIN_TTL {
        return Err(Error::invalid(format!(
            "lock TTL {ttl:?} is below {MIN_TTL:?}, the shortest any backend keeps; give a TTL such as 10s"
        )));
    }
    if ttl > Duration::from_secs(365 * 24 * 3600) {
        return Err(Error::invalid(format!(
            "lock TTL {ttl:?} is longer than a year"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_round_trips() {
        let o = LockOwner::new("c1", "worker:7").unwrap();
        assert_eq!(o.client_id(), "c1");
        assert_eq!(o.owner(), "worker:7");
        assert_eq!(LockOwner::parse(o.as_str()).unwrap(), o);
        assert!(LockOwner::new("a:b", "x").is_err());
        assert!(LockOwner::new("a", "").is_err());
        assert!(matches!(
            LockOwner::parse("nocolon"),
            Err(Error::Codec { .. })
        ));
    }

    #[test]
    fn owners_and_client_ids_reject_nul_bytes() {
        // Backends use a NUL byte as a marker next to the stored owner.
        assert!(matches!(
            LockOwner::new("test", "a\0"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            LockOwner::new("te\0st", "a"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn tagged_owners_differ_and_keep_the_logical_owner() {
        let a = LockOwner::tagged("c", "node#1").unwrap();
        let b = LockOwner::tagged("c", "node#1").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.logical(), "node#1");
        assert_eq!(LockOwner::parse(a.as_str()).unwrap().logical(), "node#1");
    }

    #[test]
    fn unique_owners_differ() {
        let a = LockOwner::unique("c");
        let b = LockOwner::unique("c");
        assert_ne!(a, b);
        assert_eq!(a.client_id(), "c");
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let ok = Duration::from_secs(1);
        assert!(validate_lock_request("a", ok).is_ok());
        for (name, ttl) in [
            ("", ok),
            ("a", Duration::ZERO),
            ("a\0b", ok),
            (&"x".repeat(MAX_LOCK_NAME_LEN + 1)[..], ok),
        ] {
            assert!(matches!(
                validate_lock_request(name, ttl),
                Err(Error::InvalidArgument(_))
            ));
        }
    }
}
