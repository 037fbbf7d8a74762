//! The highest raft term a client has seen in etcd's answers, to tell the
//! answer of a deposed leader from a current one.
//!
//! A leader that was frozen (a paused process, a stalled VM) or cut off
//! without noticing can, in the moment after it comes back and before it
//! hears of the newer term, still answer a lease keep-alive as if it led
//! (etcd before 3.4.25 / 3.5.8 checks leadership only locally). The real
//! leader never saw that renewal and may have revoked the lease, deleting
//! its locks, while the client, trusting the answer, believes it still
//! holds them. Every etcd answer carries the raft term of the member that
//! gave it: a keep-alive answered at a term lower than one this client
//! already saw comes from such a deposed leader, and is not counted.

use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::ResponseHeader;

/// The highest raft term seen so far.
#[derive(Debug, Default)]
pub(crate) struct RaftTerms {
    highest: AtomicU64,
}

impl RaftTerms {
    /// Notes the term of an answer.
    pub(crate) fn observe(&self, header: Option<&ResponseHeader>) {
        if let Some(h) = header {
            self.highest.fetch_max(h.raft_term(), Ordering::AcqRel);
        }
    }

    /// The term of an answer older than the highest seen: the answer of a
    /// deposed leader. `None` when the answer is current (or has no header).
    pub(crate) fn stale(&self, header: Option<&ResponseHeader>) -> Option<(u64, u64)> {
        let term = header?.raft_term();
        let highest = self.highest.load(Ordering::Acquire);
        (term < highest).then_some((term, highest))
    }
}
