//! The version an etcd member reports, and the known server faults of that
//! version that change what a lock can promise.
//!
//! One matters to locks: before 3.4.31 and 3.5.13, a leader that stalls (a
//! paused process, a VM freeze, a long fsync) past the lease TTLs revokes
//! **every** lease when it comes back, through the new leader, even the
//! leases the new leader has just renewed ([etcd-io/etcd#15247], fixed by
//! [etcd-io/etcd#16822]). The locks on those leases end at once, while their
//! holders still count on the time their last renewal guaranteed; the next
//! acquirer is granted at once. No client can prevent it: the revocation is
//! a committed raft entry. Fencing tokens keep writes safe (the new holder's
//! token is higher), so fence what you protect, or upgrade etcd.
//!
//! [etcd-io/etcd#15247]: https://github.com/etcd-io/etcd/issues/15247
//! [etcd-io/etcd#16822]: https://github.com/etcd-io/etcd/pull/16822

use std::fmt;

/// A version reported by an etcd member (`major.minor.patch`; a suffix such
/// as `-rc.1` is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EtcdVersion {
    /// The major version (3).
    pub major: u32,
    /// The minor version.
    pub minor: u32,
    /// The patch version.
    pub patch: u32,
}

impl EtcdVersion {
    /// Parses `3.4.23` (or `3.5.0-rc.1`); `None` for anything else.
    pub fn parse(s: &str) -> Option<EtcdVersion> {
        let core = s.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next()??);
        if parts.next().is_some() {
            return None;
        }
        Some(EtcdVersion {
            major,
            minor,
            patch,
        })
    }

    /// Whether this version can revoke leases early after a leader stall
    /// (etcd-io/etcd#15247): every release before 3.4.31, 3.5.0 to 3.5.12.
    /// Locks on such a server can end before their holders notice; fenced
    /// writes stay safe.
    pub fn revokes_leases_after_a_stall(&self) -> bool {
        match (self.major, self.minor) {
            (0..=2, _) => true,
            (3, 0..=3) => true,
            (3, 4) => self.patch < 31,
            (3, 5) => self.patch < 13,
            _ => false,
        }
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The warning logged once per connection to a server with that fault.
pub(crate) fn stall_revocation_warning(version: EtcdVersion) -> String {
    format!(
        "etcd {version} revokes every lease when a leader that stalled past the lease TTLs \
         comes back (etcd-io/etcd#15247, fixed in 3.4.31 and 3.5.13): locks can then end \
         before their holders notice. Fence what the locks protect (fencing tokens stay \
         safe) or upgrade etcd"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        let v = |s| EtcdVersion::parse(s);
        assert_eq!(
            v("3.4.23"),
            Some(EtcdVersion {
                major: 3,
                minor: 4,
                patch: 23
            })
        );
        assert_eq!(
            v("v3.5.0-rc.1").map(|v| v.to_string()),
            Some("3.5.0".into())
        );
        assert_eq!(v("3.6"), None);
        assert_eq!(v("3.6.1.2"), None);
        assert_eq!(v("not a version"), None);
        assert_eq!(v(""), None);
    }

    #[test]
    fn the_stall_revocation_fault_is_known_by_version() {
        let affected = |s| {
            EtcdVersion::parse(s)
                .unwrap()
                .revokes_leases_after_a_stall()
        };
        for s in ["3.3.27", "3.4.0", "3.4.23", "3.4.30", "3.5.0", "3.5.12"] {
            assert!(affected(s), "{s} has the fault");
        }
        for s in ["3.4.31", "3.4.37", "3.5.13", "3.5.17", "3.6.0", "4.0.0"] {
            assert!(!affected(s), "{s} has the fix");
        }
    }
}
