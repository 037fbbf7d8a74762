//! Redis Sentinel: `redis+sentinel://` (and `rediss+sentinel://`) URLs.
//!
//! ```text
//! redis+sentinel://[user:password@]s1[:26379],s2[:26379],…/<master-name>[/<db>][?sentinel_password=…&sentinel_username=…&master_check=1s&replica_ack=on]
//! ```
//!
//! The hosts are the **sentinels** (port 26379 by default); the path names
//! the master as the sentinels monitor it (`sentinel monitor <name> …`),
//! then optionally the database. `user:password@` authenticates to the
//! **master** (and to whichever replica replaces it); the sentinels get no
//! credentials unless `sentinel_password` (and `sentinel_username` for an
//! ACL user) are given, since a sentinel without a password refuses `AUTH`.
//! `rediss+sentinel://` uses TLS to the sentinels and the data nodes alike.
//! See [`SentinelConfig`].
//!
//! # Finding and following the master
//!
//! On connect, every sentinel is asked at once for the master (`SENTINEL
//! MASTER <name>`, skipping an answer that flags it down), and the node
//! they name must answer `ROLE` as a master; all within `connect_timeout`.
//! Sentinels in containers or behind NAT name addresses only their own
//! network reaches: map them to ones this process reaches with the
//! [`address_map`](coord_core::Settings::address_map) setting
//! (`"redis-a:6379" = "127.0.0.1:16379"`), which applies to every master
//! named later too. Then the backend follows the master:
//!
//! * a task stays subscribed to `+switch-master` on one sentinel (the next
//!   one if that connection drops) and moves the connections to the new
//!   master the moment a sentinel announces it;
//! * the same task asks that sentinel which node is the master every
//!   `master_check` (1 s by default; `?master_check=250ms` in the URL sets
//!   another, `?master_check=off` none) and follows the answer, so a missed
//!   event or a move that failed is caught within that time even while the
//!   old master still takes this client's writes (cut off from the
//!   sentinels, not from the client); a sentinel that does not answer
//!   within `connect_timeout` is left for the next one;
//! * a request refused by a demoted master (`READONLY`) or failing to reach
//!   it makes the backend ask the sentinels again, and a refused request
//!   is sent once more to the new master (it was not applied);
//! * the pub/sub connection (lock wake-ups, cache invalidations, registry
//!   and config notices) is closed on a move: every stream on it ends, and
//!   each consumer subscribes again, now on the new master, treating the
//!   end as a gap (caches flush L1, watchers list or compare again, lock
//!   waiters try at once).
//!
//! Requests during the failover itself fail with retryable errors
//! (`Unavailable`, or `READONLY` as a retryable `Backend` error) until the
//! sentinels have promoted a replica: about `down-after-milliseconds` plus
//! the election and promotion for a dead master. A `SENTINEL FAILOVER` is
//! followed within about a round trip of the announcement.
//!
//! # What a failover does to locks
//!
//! Redis replicates asynchronously, so the promoted replica may not have
//! received the last writes of the old master. A lock's writes (grants,
//! renewals, releases, proclaimed values, fenced writes) therefore count
//! only once a replica has acknowledged them (`replica_ack`, on by default;
//! see [`SentinelConfig::replica_ack`]): each script is sent with `WAIT 1`
//! and `ROLE` in the same round trip, and a master that lists a replica but
//! got no acknowledgement within half the `request_timeout` (at most 1 s)
//! answers with a retryable [`Unavailable`](coord_core::Error::Unavailable)
//! error instead: a master the sentinels' partition cut off from its
//! replicas, while they promote one, grants nothing for as long as it lists
//! them. Without that check, two masters handed out the same lock during
//! the partition, with tokens from clocks that agree, once even equal ones.
//! What is left:
//!
//! * **a lock grant can be lost** when the master listed no replica
//!   (nothing to wait for: its replicas were gone, or a cut-off master's
//!   replica links had closed before its clients moved), when the replica
//!   that acknowledged is not the one promoted, or with `replica_ack=off`:
//!   a holder acquired on the old master,
//!   the grant did not reach the replica, and after the failover another
//!   client acquires the same lock. For a while **two holders overlap**,
//!   each believing it holds the lock (the first learns otherwise at its
//!   next renewal, which the new master refuses: its guard becomes lost);
//! * **fencing tokens still increase**: a token is a hybrid logical clock
//!   (the fence counter raised to the server clock), so the new master
//!   hands out tokens above every token the old master gave, as long as
//!   the outage lasts more than about 11 ms and the servers' clocks agree
//!   to within it. A resource that accepts only writes whose token is not
//!   lower than the last one it saw (`RedisFencedStore`, or your own)
//!   refuses the stale holder, so the overlap cannot corrupt it;
//! * a `SENTINEL FAILOVER` does not stop the old master at once: it keeps
//!   accepting writes, as a master, until the sentinels demote it some
//!   seconds later, and those writes are then discarded. Clients that have
//!   moved write to the new master only.
//!
//! So [`capabilities`](coord_core::LockBackend::capabilities) report
//! `linearizable: false`; fence the writes that matter, or use etcd.

mod config;
mod connection;
mod events;
mod lookup;
mod master;
mod replica_ack;

pub use config::{DEFAULT_MASTER_CHECK, DEFAULT_SENTINEL_PORT, SentinelConfig};
pub(crate) use connection::SentinelConnection;
pub(crate) use master::MasterTracker;
pub(crate) use replica_ack::{ReplicaAck, eval_acked};
