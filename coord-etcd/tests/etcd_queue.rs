//! Queued locks (fair locks, semaphores, read-write locks), `inspect` and
//! `list` on a real etcd: create-revision order and tokens, the grant rule,
//! dead waiters, targeted wake-ups, corrupted entries.

use std::time::Duration;

use coord_core::lock::{HoldMode, QueueOutcome, StoredKind};
use coord_core::testkit::{unique_name, within};
use coord_core::{AcquireOutcome, Error, LockBackend, LockOwner, ReleaseEvents};
use coord_etcd::EtcdBackend;
use coord_etcd::testkit::EtcdHarness;
use etcd_client::GetOptions;
use futures::FutureExt;

const TTL: Duration = Duration::from_secs(10);
const WAKE: Duration = Duration::from_secs(5);
const X: HoldMode = HoldMode::Exclusive;

fn owner(o: &str) -> LockOwner {
    LockOwner::new("queuetest", o).unwrap()
}

async fn enqueue(b: &EtcdBackend, name: &str, o: &LockOwner, mode: HoldMode) -> QueueOutcome {
    b.enqueue(name, o, mode, TTL).await.unwrap()
}

/// Enqueues and expects a grant; returns the token.
async fn granted(b: &EtcdBackend, name: &str, o: &LockOwner, mode: HoldMode) -> u64 {
    match enqueue(b, name, o, mode).await {
        QueueOutcome::Granted(g) => {
            assert!(g.ttl > Duration::ZERO && g.ttl <= TTL, "{:?}", g.ttl);
            g.token.as_u64()
        }
        q => panic!("expected {o} to be granted {name}, got {q:?}"),
    }
}

/// Enqueues and expects to wait behind `ahead` entries.
async fn queued(b: &EtcdBackend, name: &str, o: &LockOwner, mode: HoldMode, ahead: u32) {
    match enqueue(b, name, o, mode).await {
        QueueOutcome::Queued { ahead: a, .. } => assert_eq!(a, ahead, "{o} on {name}"),
        g => panic!("expected {o} to wait on {name}, got {g:?}"),
    }
}

/// The stored entries of queue `name`: (key, create revision, lease).
async fn entries(b: &EtcdBackend, name: &str) -> Vec<(String, i64, i64)> {
    let mut kv = b.client().kv_client();
    let resp = kv
        .get(b.queue_prefix(name), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_owned(),
                kv.create_revision(),
                kv.lease(),
            )
        })
        .collect()
}

async fn create_revision(b: &EtcdBackend, name: &str, o: &LockOwner) -> u64 {
    let key = b.queue_key(name, o);
    let all = entries(b, name).await;
    let (_, rev, _) = all
        .iter()
        .find(|(k, _, _)| *k == key)
        .unwrap_or_else(|| panic!("no entry of {o} in {all:?}"));
    u64::try_from(*rev).unwrap()
}

/// Whether the stream has a signal ready now (used only to check that a
/// stream has NOT been signalled after an event that surely reached it).
fn signalled_now(events: &mut ReleaseEvents) -> bool {
    events.next().now_or_never() == Some(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_lock_grants_in_request_order_with_create_revision_tokens() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-fifo");
    let owners: Vec<_> = (0..4).map(|i| owner(&format!("fifo{i}"))).collect();
    let first = granted(&b, &name, &owners[0], X).await;
    assert_eq!(first, create_revision(&b, &name, &owners[0]).await);
    for (i, o) in owners.iter().enumerate().skip(1) {
        queued(&b, &name, o, X, i as u32).await;
    }
    // Idempotent: asking again keeps the place and the token.
    assert_eq!(granted(&b, &name, &owners[0], X).await, first);
    queued(&b, &name, &owners[2], X, 2).await;
    assert_eq!(entries(&b, &name).await.len(), 4);

    let mut last = first;
    for i in 0..owners.len() {
        b.dequeue(&name, &owners[i]).await.unwrap();
        if let Some(next) = owners.get(i + 1) {
            let token = granted(&b, &name, next, X).await;
            assert!(token > last, "{token} after {last}");
            assert_eq!(token, create_revision(&b, &name, next).await);
            last = token;
            for (j, later) in owners.iter().enumerate().skip(i + 2) {
                queued(&b, &name, later, X, (j - i - 1) as u32).await;
            }
        }
    }
    assert!(entries(&b, &name).await.is_empty());
}

/// The index of the last entry of etcd's raft log (every write, and every
/// transaction that could write, appends one).
async fn raft_index(b: &EtcdBackend) -> u64 {
    let mut m = b.client().maintenance_client();
    m.status().await.unwrap().raft_index()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_asking_again_appends_nothing_to_the_raft_log() {
    // Its own server: the raft log counts every other test's writes too.
    let h = EtcdHarness::start_isolated().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-reask");
    let (holder, waiter) = (owner("reask-h"), owner("reask-w"));
    granted(&b, &name, &holder, X).await;
    queued(&b, &name, &waiter, X, 1).await;
    let before = raft_index(&b).await;
    for _ in 0..20 {
        queued(&b, &name, &waiter, X, 1).await;
    }
    let appended = raft_index(&b).await - before;
    // A transaction with a put in one branch goes through raft (and its WAL
    // sync) even when it only reads: once per ask, 20 here, before.
    assert!(
        appended < 5,
        "{appended} raft entries for 20 asks of a waiter"
    );
    // The answers still follow the queue.
    b.dequeue(&name, &holder).await.unwrap();
    let token = granted(&b, &name, &waiter, X).await;
    assert_eq!(token, create_revision(&b, &name, &waiter).await);
    b.dequeue(&name, &waiter).await.unwrap();
    assert!(entries(&b, &name).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_grants_at_most_its_limit() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-semaphore");
    let permits = HoldMode::Shared { limit: 2 };
    let [a, c, d] = ["a", "c", "d"].map(owner);
    let ta = granted(&b, &name, &a, permits).await;
    let tc = granted(&b, &name, &c, permits).await;
    assert!(tc > ta);
    queued(&b, &name, &d, permits, 2).await;
    b.renew_queued(&name, &a, TTL).await.unwrap();
    assert!(matches!(
        b.renew_queued(&name, &d, TTL).await,
        Err(Error::NotHeld(_))
    ));
    // Any permit released lets the first waiter in.
    b.dequeue(&name, &a).await.unwrap();
    let td = granted(&b, &name, &d, permits).await;
    assert!(td > tc);
    b.renew_queued(&name, &d, TTL).await.unwrap();
    assert_eq!(b.force_release_queued(&name).await.unwrap(), 2);
    assert!(entries(&b, &name).await.is_empty());
    assert!(matches!(
        b.renew_queued(&name, &d, TTL).await,
        Err(Error::NotHeld(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_a_writer_waits_for_them_and_blocks_later_readers() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-rw");
    let [r1, r2, w, r3] = ["r1", "r2", "w", "r3"].map(owner);
    granted(&b, &name, &r1, HoldMode::READ).await;
    granted(&b, &name, &r2, HoldMode::READ).await;
    queued(&b, &name, &w, X, 2).await;
    // Fair: a reader arriving behind a waiting writer waits too.
    queued(&b, &name, &r3, HoldMode::READ, 3).await;
    b.dequeue(&name, &r1).await.unwrap();
    queued(&b, &name, &w, X, 1).await;
    b.dequeue(&name, &r2).await.unwrap();
    let tw = granted(&b, &name, &w, X).await;
    queued(&b, &name, &r3, HoldMode::READ, 1).await;
    b.dequeue(&name, &w).await.unwrap();
    assert!(granted(&b, &name, &r3, HoldMode::READ).await > tw);
    b.dequeue(&name, &r3).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_giving_up_leaves_the_queue() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-dequeue");
    let [a, w1, w2] = ["a", "w1", "w2"].map(owner);
    granted(&b, &name, &a, X).await;
    queued(&b, &name, &w1, X, 1).await;
    queued(&b, &name, &w2, X, 2).await;
    b.dequeue(&name, &w1).await.unwrap();
    assert!(matches!(
        b.dequeue(&name, &w1).await,
        Err(Error::NotHeld(_))
    ));
    assert!(matches!(
        b.dequeue(&name, &owner("never")).await,
        Err(Error::NotHeld(_))
    ));
    queued(&b, &name, &w2, X, 1).await;
    b.dequeue(&name, &a).await.unwrap();
    granted(&b, &name, &w2, X).await;
    b.dequeue(&name, &w2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_clients_entries_vanish_and_unblock_the_next() {
    let h = EtcdHarness::start().await;
    let holder = h.connect().await.unwrap();
    let dead_waiter = h.connect().await.unwrap();
    let live = h.connect().await.unwrap();
    let name = unique_name("queue-dead");
    let [a, d, l] = ["a", "d", "l"].map(owner);
    granted(&holder, &name, &a, X).await;
    queued(&dead_waiter, &name, &d, X, 1).await;
    queued(&live, &name, &l, X, 2).await;
    let mut events = live.subscribe_queue(&name, &l).await.unwrap();

    // The waiter's process dies: its lease goes, and its entry with it.
    dead_waiter.close().await;
    within(
        WAKE,
        "the dead predecessor wakes the next waiter",
        events.next(),
    )
    .await;
    queued(&live, &name, &l, X, 1).await;
    let listed = live.list(&name).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].waiters.len(), 1, "{listed:?}");
    assert_eq!(listed[0].waiters[0].owner, l.as_str());

    // Then the holder's process dies.
    holder.close().await;
    within(WAKE, "the dead holder wakes the next waiter", events.next()).await;
    granted(&live, &name, &l, X).await;
    live.dequeue(&name, &l).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_the_next_waiter_only() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let other = h.connect().await.unwrap();
    let name = unique_name("queue-wake");
    let [h0, a, w1, w2] = ["h0", "a", "w1", "w2"].map(owner);
    granted(&b, &name, &h0, X).await;
    queued(&b, &name, &a, X, 1).await;
    queued(&other, &name, &w1, X, 2).await;
    queued(&other, &name, &w2, X, 3).await;
    let mut e1 = other.subscribe_queue(&name, &w1).await.unwrap();
    let mut e2 = other.subscribe_queue(&name, &w2).await.unwrap();

    // `a` gives up: that may grant w1 (its predecessor), not w2.
    b.dequeue(&name, &a).await.unwrap();
    assert!(within(WAKE, "w1 is woken", e1.next()).await);
    queued(&other, &name, &w1, X, 1).await;
    assert!(
        !signalled_now(&mut e2),
        "w2 was woken by a removal two ahead"
    );

    // w1 gives up: now w2 is woken, once, by its predecessor's removal
    // (had it been woken by a's removal too, that signal would be first in
    // its stream and the second would follow at once).
    other.dequeue(&name, &w1).await.unwrap();
    assert!(within(WAKE, "w2 is woken", e2.next()).await);
    queued(&other, &name, &w2, X, 1).await;
    assert!(!signalled_now(&mut e2), "w2 was woken twice");

    // The same subscription follows the new predecessor: the holder.
    b.dequeue(&name, &h0).await.unwrap();
    assert!(within(WAKE, "w2 is woken by the holder", e2.next()).await);
    granted(&other, &name, &w2, X).await;
    other.dequeue(&name, &w2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_when_grantable_or_absent_signals_at_once() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-sub-now");
    let a = owner("a");
    let mut absent = b.subscribe_queue(&name, &a).await.unwrap();
    assert!(within(WAKE, "an absent entry signals", absent.next()).await);
    assert!(!within(WAKE, "then the stream ends", absent.next()).await);
    // Granted already (a reader behind readers): signals at once too.
    granted(&b, &name, &a, HoldMode::READ).await;
    let mut now = b.subscribe_queue(&name, &a).await.unwrap();
    assert!(within(WAKE, "a grantable entry signals", now.next()).await);
    b.dequeue(&name, &a).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_and_reader_waiters_watch_what_blocks_them() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    // A permit waiter wakes on any release ahead of it.
    let name = unique_name("queue-sub-permits");
    let permits = HoldMode::Shared { limit: 2 };
    let [p1, p2, p3] = ["p1", "p2", "p3"].map(owner);
    granted(&b, &name, &p1, permits).await;
    granted(&b, &name, &p2, permits).await;
    queued(&b, &name, &p3, permits, 2).await;
    let mut events = b.subscribe_queue(&name, &p3).await.unwrap();
    b.dequeue(&name, &p1).await.unwrap();
    assert!(within(WAKE, "a permit waiter is woken", events.next()).await);
    granted(&b, &name, &p3, permits).await;

    // A reader behind a writer wakes when the writer leaves.
    let name = unique_name("queue-sub-reader");
    let [r1, w, r2] = ["r1", "w", "r2"].map(owner);
    granted(&b, &name, &r1, HoldMode::READ).await;
    queued(&b, &name, &w, X, 1).await;
    queued(&b, &name, &r2, HoldMode::READ, 2).await;
    let mut events = b.subscribe_queue(&name, &r2).await.unwrap();
    b.dequeue(&name, &w).await.unwrap();
    assert!(within(WAKE, "a reader is woken by the writer", events.next()).await);
    granted(&b, &name, &r2, HoldMode::READ).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_waiter_wakes_only_on_the_release_that_admits_it() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let other = h.connect().await.unwrap();
    let name = unique_name("queue-permit-count");
    let permits = HoldMode::Shared { limit: 2 };
    let [p1, p2, w1, w2] = ["p1", "p2", "w1", "w2"].map(owner);
    granted(&b, &name, &p1, permits).await;
    granted(&b, &name, &p2, permits).await;
    queued(&other, &name, &w1, permits, 2).await;
    queued(&other, &name, &w2, permits, 3).await;
    let mut e1 = other.subscribe_queue(&name, &w1).await.unwrap();
    let mut e2 = other.subscribe_queue(&name, &w2).await.unwrap();

    // p1 leaves: that admits w1, not w2 (two are still ahead of it).
    b.dequeue(&name, &p1).await.unwrap();
    assert!(within(WAKE, "w1 is woken", e1.next()).await);
    granted(&other, &name, &w1, permits).await;
    queued(&other, &name, &w2, permits, 2).await;
    assert!(
        !signalled_now(&mut e2),
        "w2 was woken by a release that does not admit it"
    );

    // p2 leaves: one is left ahead of w2, and the same subscription wakes it.
    b.dequeue(&name, &p2).await.unwrap();
    assert!(within(WAKE, "w2 is woken", e2.next()).await);
    granted(&other, &name, &w2, permits).await;
    other.dequeue(&name, &w1).await.unwrap();
    other.dequeue(&name, &w2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_list_report_holders_tokens_and_waiters() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let other = h.connect().await.unwrap();
    let base = unique_name("queue-list");
    let (lease_name, queue_name) = (format!("{base}/a"), format!("{base}/b"));
    let [a, s1, s2, s3] = ["a", "s1", "s2", "s3"].map(owner);

    assert_eq!(b.inspect(&lease_name).await.unwrap(), None);
    let AcquireOutcome::Granted(lease) = b.try_acquire(&lease_name, &a, TTL).await.unwrap() else {
        panic!("the lease lock is free");
    };
    // A queued lock of the same name is another lock.
    let same_name_token = granted(&b, &lease_name, &a, X).await;
    let info = b.inspect(&lease_name).await.unwrap().expect("held");
    assert_eq!(info.kind, StoredKind::Lease);
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].owner, a.as_str());
    assert_eq!(info.holders[0].token, Some(lease.token));
    assert!(info.holders[0].ttl_remaining.is_some_and(|t| t <= TTL));
    // Another client sees the holder too.
    let seen = other.inspect(&lease_name).await.unwrap().expect("held");
    assert_eq!(seen.holders[0].token, Some(lease.token));

    let permits = HoldMode::Shared { limit: 2 };
    let t1 = granted(&b, &queue_name, &s1, permits).await;
    let t2 = granted(&other, &queue_name, &s2, permits).await;
    queued(&other, &queue_name, &s3, permits, 2).await;

    let listed = other.list(&base).await.unwrap();
    let names: Vec<_> = listed.iter().map(|i| (i.name.as_str(), i.kind)).collect();
    assert_eq!(
        names,
        [
            (lease_name.as_str(), StoredKind::Lease),
            (lease_name.as_str(), StoredKind::Queue),
            (queue_name.as_str(), StoredKind::Queue),
        ]
    );
    assert_eq!(listed[0].holders[0].token, Some(lease.token));
    assert_eq!(
        listed[1].holders[0].token.map(|t| t.as_u64()),
        Some(same_name_token)
    );
    let q = &listed[2];
    let holders: Vec<_> = q
        .holders
        .iter()
        .map(|h| (h.owner.as_str(), h.token.map(|t| t.as_u64()), h.mode))
        .collect();
    assert_eq!(
        holders,
        [
            (s1.as_str(), Some(t1), permits),
            (s2.as_str(), Some(t2), permits)
        ]
    );
    assert_eq!(q.waiters.len(), 1);
    assert_eq!(q.waiters[0].owner, s3.as_str());
    assert_eq!(q.waiters[0].token, None);
    for holder in q.holders.iter().chain(&q.waiters) {
        let ttl = holder.ttl_remaining.expect("the lease's TTL is known");
        assert!(ttl <= TTL, "{ttl:?}");
    }
    // The prefix filters; nothing matches another prefix.
    assert_eq!(other.list(&queue_name).await.unwrap().len(), 1);
    assert!(other.list(&format!("{base}/zzz")).await.unwrap().is_empty());

    b.release(&lease_name, &a).await.unwrap();
    assert_eq!(b.inspect(&lease_name).await.unwrap(), None);
    assert_eq!(b.force_release_queued(&queue_name).await.unwrap(), 2);
    let t3 = granted(&other, &queue_name, &s3, permits).await;
    assert!(t3 > t2);
    b.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_stored_mode_is_a_codec_error() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-corrupt");
    let [bad, a] = ["bad", "a"].map(owner);
    let mut kv = b.client().kv_client();
    kv.put(b.queue_key(&name, &bad), "s0", None).await.unwrap();

    let codec = |r: Result<_, Error>| matches!(r, Err(Error::Codec { .. }));
    assert!(codec(b.enqueue(&name, &a, X, TTL).await.map(|_| ())));
    assert!(codec(b.list(&name).await.map(|_| ())));
    assert!(codec(b.subscribe_queue(&name, &a).await.map(|_| ())));
    assert!(codec(b.force_release_queued(&name).await.map(|_| ())));
    // Nothing was lost: the entry is still there for an operator to see.
    assert_eq!(entries(&b, &name).await.len(), 2);
    kv.delete(b.queue_key(&name, &bad), None).await.unwrap();
    granted(&b, &name, &a, X).await;
    b.dequeue(&name, &a).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ttl_moves_the_entry_to_that_leases_bucket() {
    let h = EtcdHarness::start().await;
    let b = h.connect().await.unwrap();
    let name = unique_name("queue-rebucket");
    let a = owner("a");
    let token = granted(&b, &name, &a, X).await;
    let before = entries(&b, &name).await[0].2;
    let longer = Duration::from_secs(20);
    match b.enqueue(&name, &a, X, longer).await.unwrap() {
        QueueOutcome::Granted(g) => assert_eq!(g.token.as_u64(), token),
        q => panic!("{q:?}"),
    }
    let after = entries(&b, &name).await[0].2;
    assert_ne!(before, after, "the entry moved to the 20 s lease");
    assert!(b.leases().iter().any(|l| l.id == after));
    b.renew_queued(&name, &a, longer).await.unwrap();
    b.dequeue(&name, &a).await.unwrap();
}

/// Waits (bounded) until queue `name` lists `waiters` waiting entries.
async fn until_waiting(b: &EtcdBackend, name: &str, waiters: usize) {
    within(WAKE, "the waiter is queued", async {
        loop {
            let listed = b.list(name).await.unwrap();
            if listed
                .iter()
                .any(|i| i.name == name && i.waiters.len() == waiters)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_locks_through_the_client_grant_in_request_order() {
    let h = EtcdHarness::start().await;
    let clients: Vec<_> = [
        h.connect().await.unwrap(),
        h.connect().await.unwrap(),
        h.connect().await.unwrap(),
    ]
    .into_iter()
    .map(|b| coord_core::LockClient::new(std::sync::Arc::new(b)))
    .collect();
    let probe = h.connect().await.unwrap();
    let name = unique_name("queue-client");
    let lock = |i: usize| clients[i].lock(&name).fair().ttl(TTL).build();
    let first = lock(0).acquire().await.unwrap();
    let second = tokio::spawn({
        let l = lock(1);
        async move { l.acquire().await }
    });
    until_waiting(&probe, &name, 1).await;
    let third = tokio::spawn({
        let l = lock(2);
        async move { l.acquire().await }
    });
    until_waiting(&probe, &name, 2).await;

    let t1 = first.fencing_token();
    first.release().await.unwrap();
    let second = within(WAKE, "the second is granted", second)
        .await
        .unwrap()
        .unwrap();
    assert!(second.fencing_token() > t1);
    assert!(!third.is_finished(), "the third was granted out of turn");
    let t2 = second.fencing_token();
    second.release().await.unwrap();
    let third = within(WAKE, "the third is granted", third)
        .await
        .unwrap()
        .unwrap();
    assert!(third.fencing_token() > t2);
    third.release().await.unwrap();
    assert!(probe.list(&name).await.unwrap().is_empty());
}
