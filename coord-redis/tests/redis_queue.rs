//! Queued locks (fair locks, semaphores, read-write locks), `inspect` and
//! `list` on a real Redis server: the grant rule of coord-core's memory
//! backend, waking, tokens across a restart, corrupted stored values.

use std::sync::Arc;
use std::time::Duration;

use coord_core::lock::{HoldMode, LockInfo, QueueOutcome, StoredKind};
use coord_core::testkit::{LockHarness, within};
use coord_core::{
    AcquireOutcome, Error, FencingToken, LockBackend, LockClient, LockOwner, Settings, Wake,
};
use coord_redis::RedisBackend;
use coord_redis::testkit::{RedisHarness, RedisServer, command_calls};

const TTL: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(5);
/// How long the keys of a queue's full form may outlive its last lease (the
/// scripts' `KEY_PAD`, twice).
const KEYS_OUTLIVE_BY_MS: i64 = 2_000;

fn owner(name: &str) -> LockOwner {
    LockOwner::new("test", name).unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn granted(b: &RedisBackend, name: &str, o: &str, mode: HoldMode) -> FencingToken {
    match b.enqueue(name, &owner(o), mode, TTL).await.unwrap() {
        QueueOutcome::Granted(g) => {
            assert_eq!(g.ttl, TTL);
            g.token
        }
        other => panic!("expected {o} to be granted {name}, got {other:?}"),
    }
}

async fn queued(b: &RedisBackend, name: &str, o: &str, mode: HoldMode) -> u32 {
    match b.enqueue(name, &owner(o), mode, TTL).await.unwrap() {
        QueueOutcome::Queued {
            ahead,
            retry_after: Some(wait),
            fence: Some(_),
        } => {
            assert!(wait <= TTL, "{wait:?}");
            ahead
        }
        other => panic!("expected {o} to wait for {name}, got {other:?}"),
    }
}

/// Calls `enqueue` until granted (bounded): for an entry ahead whose lease
/// ends on its own, which no notification announces.
async fn granted_eventually(b: &RedisBackend, name: &str, o: &str, mode: HoldMode) -> FencingToken {
    within(LIMIT, "the entry is granted", async {
        loop {
            match b.enqueue(name, &owner(o), mode, TTL).await.unwrap() {
                QueueOutcome::Granted(g) => return g.token,
                QueueOutcome::Queued { retry_after, .. } => {
                    let wait = retry_after.unwrap_or(Duration::from_millis(10));
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
    })
    .await
}

fn key(h: &RedisHarness, name: &str, suffix: &str) -> String {
    format!("{}:lock:{{{name}}}{suffix}", h.settings().namespace)
}

#[tokio::test]
async fn fair_lock_grants_in_arrival_order_with_increasing_tokens() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let x = HoldMode::Exclusive;
    let mut last = granted(&b, "fifo", "a", x).await;
    for (i, o) in ["b", "c", "d"].iter().enumerate() {
        assert_eq!(queued(&b, "fifo", o, x).await, i as u32 + 1);
    }
    // Calling again keeps the place (and refreshes the lease).
    assert_eq!(queued(&b, "fifo", "c", x).await, 2);
    // The same owner again: the same grant.
    assert_eq!(
        granted(&b, "fifo", "a", x).await,
        last,
        "enqueue is idempotent"
    );
    let mut holder = "a";
    for next in ["b", "c", "d"] {
        b.dequeue("fifo", &owner(holder)).await.unwrap();
        // Only the head is granted; the ones behind still wait.
        if next != "d" {
            let behind = if next == "b" { "c" } else { "d" };
            assert!(queued(&b, "fifo", behind, x).await >= 1);
        }
        let token = granted(&b, "fifo", next, x).await;
        assert!(token > last, "{token} <= {last}");
        last = token;
        holder = next;
    }
    b.dequeue("fifo", &owner("d")).await.unwrap();
    assert!(matches!(
        b.dequeue("fifo", &owner("d")).await,
        Err(Error::NotHeld(_))
    ));
}

#[tokio::test]
async fn semaphore_admits_up_to_its_limit() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let s2 = HoldMode::Shared { limit: 2 };
    let t1 = granted(&b, "sem", "a", s2).await;
    let t2 = granted(&b, "sem", "b", s2).await;
    assert!(t2 > t1);
    assert_eq!(queued(&b, "sem", "c", s2).await, 2);
    assert_eq!(queued(&b, "sem", "d", s2).await, 3);
    b.dequeue("sem", &owner("a")).await.unwrap();
    let t3 = granted(&b, "sem", "c", s2).await;
    assert!(t3 > t2);
    // Two holders again: d still waits.
    assert_eq!(queued(&b, "sem", "d", s2).await, 2);
    // A shared limit of 0 is refused, not stored.
    assert!(matches!(
        b.enqueue("sem", &owner("e"), HoldMode::Shared { limit: 0 }, TTL)
            .await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn readers_share_and_a_writer_waits_for_them_and_blocks_later_readers() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let (r, w) = (HoldMode::READ, HoldMode::Exclusive);
    granted(&b, "rw", "r1", r).await;
    granted(&b, "rw", "r2", r).await;
    assert_eq!(queued(&b, "rw", "w", w).await, 2);
    // Fair: a reader arriving after the writer waits behind it.
    assert_eq!(queued(&b, "rw", "r3", r).await, 3);
    b.dequeue("rw", &owner("r1")).await.unwrap();
    assert_eq!(queued(&b, "rw", "w", w).await, 1);
    b.dequeue("rw", &owner("r2")).await.unwrap();
    let tw = granted(&b, "rw", "w", w).await;
    assert_eq!(queued(&b, "rw", "r3", r).await, 1);
    b.dequeue("rw", &owner("w")).await.unwrap();
    assert!(granted(&b, "rw", "r3", r).await > tw);
}

#[tokio::test]
async fn an_expired_waiter_is_purged_and_wakes_the_next() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let waiter = h.connect().await.unwrap();
    let x = HoldMode::Exclusive;
    granted(&b, "purge", "a", x).await;
    // A waiter that dies: a short lease it never refreshes.
    match b
        .enqueue("purge", &owner("dead"), x, Duration::from_millis(50))
        .await
        .unwrap()
    {
        QueueOutcome::Queued { ahead: 1, .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(queued(&b, "purge", "c", x).await, 2);
    // The release lets the (dead) waiter ahead of c in: it is the one woken.
    let mut events = waiter
        .subscribe_queue("purge", &owner("dead"))
        .await
        .unwrap();
    b.dequeue("purge", &owner("a")).await.unwrap();
    assert!(
        within(
            LIMIT,
            "the release is published to the next grantee",
            events.next()
        )
        .await
    );
    // Once the dead waiter's lease ends, the next call purges it and c is granted.
    granted_eventually(&waiter, "purge", "c", x).await;
    let info = b.list("purge").await.unwrap();
    assert_eq!(info.len(), 1);
    assert!(info[0].waiters.is_empty(), "{info:?}");
    assert_eq!(info[0].holders[0].owner, "test:c");
    // Its entry is gone: dequeue says so.
    assert!(matches!(
        b.dequeue("purge", &owner("dead")).await,
        Err(Error::NotHeld(_))
    ));
}

#[tokio::test]
async fn an_expired_holder_is_purged_and_the_next_is_granted() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let x = HoldMode::Exclusive;
    match b
        .enqueue("expire", &owner("a"), x, Duration::from_millis(100))
        .await
        .unwrap()
    {
        QueueOutcome::Granted(_) => {}
        other => panic!("{other:?}"),
    }
    match b.enqueue("expire", &owner("b"), x, TTL).await.unwrap() {
        QueueOutcome::Queued {
            ahead: 1,
            retry_after: Some(wait),
            ..
        } => assert!(wait <= Duration::from_millis(100), "{wait:?}"),
        other => panic!("{other:?}"),
    }
    granted_eventually(&b, "expire", "b", x).await;
    // The purged holder can neither renew nor release.
    assert!(matches!(
        b.renew_queued("expire", &owner("a"), TTL).await,
        Err(Error::NotHeld(_))
    ));
    assert!(matches!(
        b.dequeue("expire", &owner("a")).await,
        Err(Error::NotHeld(_))
    ));
}

#[tokio::test]
async fn a_waiter_leaving_moves_the_ones_behind_it_up_and_the_release_wakes_the_next() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let x = HoldMode::Exclusive;
    granted(&b, "leave", "a", x).await;
    assert_eq!(queued(&b, "leave", "b", x).await, 1);
    assert_eq!(queued(&b, "leave", "c", x).await, 2);
    let mut events = b.subscribe_queue("leave", &owner("c")).await.unwrap();
    // b leaving lets nobody in (a still holds): c moves up without a wake-up.
    b.dequeue("leave", &owner("b")).await.unwrap();
    assert_eq!(queued(&b, "leave", "c", x).await, 1);
    assert!(matches!(
        b.dequeue("leave", &owner("b")).await,
        Err(Error::NotHeld(_))
    ));
    b.dequeue("leave", &owner("a")).await.unwrap();
    assert!(within(LIMIT, "the release is published", events.next()).await);
    granted(&b, "leave", "c", x).await;
}

#[tokio::test]
async fn renew_queued_needs_a_granted_entry() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let x = HoldMode::Exclusive;
    match b
        .enqueue("renew", &owner("a"), x, Duration::from_millis(500))
        .await
        .unwrap()
    {
        QueueOutcome::Granted(_) => {}
        other => panic!("{other:?}"),
    }
    queued(&b, "renew", "b", x).await;
    b.renew_queued("renew", &owner("a"), TTL).await.unwrap();
    let info = b.list("renew").await.unwrap();
    let ttl = info[0].holders[0].ttl_remaining.unwrap();
    assert!(ttl > TTL / 2 && ttl <= TTL, "{ttl:?}");
    for who in ["b", "nobody"] {
        assert!(matches!(
            b.renew_queued("renew", &owner(who), TTL).await,
            Err(Error::NotHeld(_))
        ));
    }
}

#[tokio::test]
async fn force_release_removes_the_holders_and_keeps_the_waiters() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let s2 = HoldMode::Shared { limit: 2 };
    granted(&b, "force", "a", s2).await;
    let t = granted(&b, "force", "b", s2).await;
    queued(&b, "force", "c", s2).await;
    let mut events = b.subscribe_queue("force", &owner("c")).await.unwrap();
    assert_eq!(b.force_release_queued("force").await.unwrap(), 2);
    assert!(within(LIMIT, "the force release is published", events.next()).await);
    assert!(granted(&b, "force", "c", s2).await > t);
    assert_eq!(b.force_release_queued("force").await.unwrap(), 1);
    assert_eq!(b.force_release_queued("force").await.unwrap(), 0);
    assert_eq!(b.force_release_queued("never").await.unwrap(), 0);
}

#[tokio::test]
async fn queue_keys_go_with_the_last_entry_but_the_fence_stays() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let mut raw = raw(h.server.url()).await;
    let t1 = granted(&b, "gone", "a", HoldMode::Exclusive).await;
    // A lease lock of the same name is another lock.
    let lease = match b.try_acquire("gone", &owner("z"), TTL).await.unwrap() {
        AcquireOutcome::Granted(g) => g.token,
        other => panic!("the lease lock is independent of the queue: {other:?}"),
    };
    let full_form: Vec<String> = ["queue", "queue:lease", "queue:mode", "queue:token"]
        .iter()
        .map(|s| key(&h, "gone", &format!(":{s}")))
        .collect();
    let compact_form = key(&h, "gone", ":queue:solo");
    let pttl = |k: String| {
        let mut raw = raw.clone();
        async move {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&k)
                .query_async(&mut raw)
                .await
                .unwrap();
            ttl
        }
    };
    // The only entry, granted on arrival: the compact form alone.
    let ttl = pttl(compact_form.clone()).await;
    assert!(
        ttl > 0 && ttl <= TTL.as_millis() as i64,
        "{compact_form}: {ttl}"
    );
    for k in &full_form {
        assert_eq!(
            pttl(k.clone()).await,
            -2,
            "{k} exists next to the compact form"
        );
    }
    // A second entry turns it into the full form, expiring with the last lease.
    assert_eq!(queued(&b, "gone", "b", HoldMode::Exclusive).await, 1);
    assert_eq!(pttl(compact_form.clone()).await, -2);
    for k in &full_form {
        let ttl = pttl(k.clone()).await;
        let most = TTL.as_millis() as i64 + KEYS_OUTLIVE_BY_MS;
        assert!(ttl > 0 && ttl <= most, "{k}: {ttl}");
    }
    b.dequeue("gone", &owner("b")).await.unwrap();
    b.dequeue("gone", &owner("a")).await.unwrap();
    for k in full_form.iter().chain([&compact_form]) {
        let exists: bool = redis::cmd("EXISTS")
            .arg(k)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(!exists, "{k} outlived its queue");
    }
    let fence: u64 = redis::cmd("GET")
        .arg(key(&h, "gone", ":queue:fence"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(fence, t1.as_u64());
    assert!(granted(&b, "gone", "b", HoldMode::Exclusive).await > t1);
    // The lease lock is still held, with its own token.
    let info = b.inspect("gone").await.unwrap().unwrap();
    assert_eq!(info.holders[0].token, Some(lease));
}

#[tokio::test]
async fn a_compact_entry_keeps_its_token_owner_and_lease_when_the_queue_expands() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let s3 = HoldMode::Shared { limit: 3 };
    for (mode, second) in [(HoldMode::Exclusive, false), (s3, true)] {
        let name = format!("expand-{}", mode.encode());
        let t = granted(&b, &name, "a", mode).await;
        // A retry of the grant (a lost reply) gets the same token.
        assert_eq!(granted(&b, &name, "a", mode).await, t);
        b.renew_queued(&name, &owner("a"), TTL).await.unwrap();
        let info = b.list(&name).await.unwrap();
        assert_eq!(info.len(), 1, "{info:?}");
        let holder = &info[0].holders[0];
        assert_eq!(
            (holder.owner.as_str(), holder.token, holder.mode),
            ("test:a", Some(t), mode)
        );
        assert!(
            holder
                .ttl_remaining
                .is_some_and(|r| r <= TTL && r > TTL / 2)
        );
        // The next entry expands the queue: the first keeps all of it.
        let t2 = if second {
            granted(&b, &name, "b", mode).await
        } else {
            assert_eq!(queued(&b, &name, "b", mode).await, 1);
            granted(&b, &name, "a", mode).await
        };
        if second {
            assert!(t2 > t);
        } else {
            assert_eq!(t2, t, "a keeps its token in the full form");
        }
        let info = b.list(&name).await.unwrap();
        let first = &info[0].holders[0];
        assert_eq!((first.owner.as_str(), first.token), ("test:a", Some(t)));
        assert!(first.ttl_remaining.is_some_and(|r| r <= TTL && r > TTL / 2));
        b.renew_queued(&name, &owner("a"), TTL).await.unwrap();
        b.dequeue(&name, &owner("a")).await.unwrap();
        assert!(matches!(
            b.dequeue(&name, &owner("a")).await,
            Err(Error::NotHeld(_))
        ));
        if !second {
            assert!(granted(&b, &name, "b", mode).await > t);
        }
        b.dequeue(&name, &owner("b")).await.unwrap();
        assert!(b.list(&name).await.unwrap().is_empty());
        // Another owner's release, renewal or removal never touches a compact
        // entry.
        let t3 = granted(&b, &name, "c", mode).await;
        assert!(matches!(
            b.dequeue(&name, &owner("a")).await,
            Err(Error::NotHeld(_))
        ));
        assert!(matches!(
            b.renew_queued(&name, &owner("a"), TTL).await,
            Err(Error::NotHeld(_))
        ));
        assert_eq!(granted(&b, &name, "c", mode).await, t3);
        b.dequeue(&name, &owner("c")).await.unwrap();
    }
}

#[tokio::test]
async fn tokens_increase_across_a_restart_without_persistence() {
    let mut server = RedisServer::spawn().expect("redis-server must start for this test");
    let b = RedisBackend::connect(server.url(), &Settings::default())
        .await
        .unwrap();
    let x = HoldMode::Exclusive;
    let t1 = granted(&b, "restart", "a", x).await;
    b.dequeue("restart", &owner("a")).await.unwrap();
    let t2 = granted(&b, "restart", "b", x).await;
    assert!(t2 > t1);

    server.restart().unwrap();
    // The same backend reconnects (the first calls may see the dropped connection).
    let t3 = within(LIMIT, "the backend reconnects", async {
        loop {
            match b.enqueue("restart", &owner("c"), x, TTL).await {
                Ok(QueueOutcome::Granted(g)) => return g.token,
                Ok(other) => panic!("the queue should be empty after the restart: {other:?}"),
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await;
    assert!(
        t3 > t2,
        "token went backwards after a restart: {t3} <= {t2}"
    );
}

#[tokio::test]
async fn corrupted_stored_values_are_errors_and_grant_nothing() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let mut raw = raw(h.server.url()).await;
    let r = HoldMode::READ;

    // A mode ahead that does not decode: a shared entry is not granted. (A
    // second reader turns the queue into its full form, where modes are kept.)
    granted(&b, "mode", "a", r).await;
    granted(&b, "mode", "c", r).await;
    let _: () = redis::cmd("HSET")
        .arg(key(&h, "mode", ":queue:mode"))
        .arg("test:a")
        .arg("banana")
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = b.enqueue("mode", &owner("b"), r, TTL).await.unwrap_err();
    assert!(
        matches!(err, Error::Codec { .. }) && err.to_string().contains("banana"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // A granted entry keeps its grant (its mode is no longer needed) …
    let again = b.enqueue("mode", &owner("a"), r, TTL).await;
    assert!(matches!(again, Ok(QueueOutcome::Granted(_))), "{again:?}");
    // … but a waiting entry's own mode must decode.
    let _: () = redis::cmd("HSET")
        .arg(key(&h, "mode", ":queue:mode"))
        .arg("test:b")
        .arg("s0")
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = b.enqueue("mode", &owner("b"), r, TTL).await.unwrap_err();
    assert!(
        matches!(err, Error::Codec { .. }) && err.to_string().contains("s0"),
        "{err:?}"
    );
    let err = b.list("mode").await.unwrap_err();
    assert!(matches!(err, Error::Codec { .. }), "{err:?}");

    // A fence that is not a token.
    for bad in ["banana", "-5", "1.5", "9007199254740993"] {
        let _: () = redis::cmd("SET")
            .arg(key(&h, "fence", ":queue:fence"))
            .arg(bad)
            .query_async(&mut raw)
            .await
            .unwrap();
        let err = b
            .enqueue("fence", &owner("a"), HoldMode::Exclusive, TTL)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Codec { .. }) && err.to_string().contains(bad),
            "{bad}: {err:?}"
        );
        // Nothing was queued.
        assert!(b.list("fence").await.unwrap().is_empty());
    }

    // A granted entry's token that is not a token (in the full form, which a
    // waiter's arrival makes).
    granted(&b, "token", "a", HoldMode::Exclusive).await;
    queued(&b, "token", "b", HoldMode::Exclusive).await;
    let _: () = redis::cmd("HSET")
        .arg(key(&h, "token", ":queue:token"))
        .arg("test:a")
        .arg("x1")
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = b
        .enqueue("token", &owner("a"), HoldMode::Exclusive, TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Codec { .. }), "{err:?}");

    // A compact entry that does not decode: the next to arrive is refused, and
    // force_release clears it.
    for bad in ["banana", "test:a\0x\0", "test:a\0q\x007"] {
        let _: () = redis::cmd("SET")
            .arg(key(&h, "solo", ":queue:solo"))
            .arg(bad)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut raw)
            .await
            .unwrap();
        let err = b
            .enqueue("solo", &owner("b"), HoldMode::Exclusive, TTL)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Codec { .. }) && err.to_string().contains("entry"),
            "{bad:?}: {err:?}"
        );
        assert!(b.list("solo").await.is_err());
        assert_eq!(b.force_release_queued("solo").await.unwrap(), 1);
        assert!(b.list("solo").await.unwrap().is_empty());
    }
    granted(&b, "solo", "b", HoldMode::Exclusive).await;

    // A queue key of another type: refused, not granted.
    let wrong_type = |err: Error| {
        assert!(
            matches!(
                err,
                Error::Backend {
                    retryable: false,
                    ..
                }
            ) && err.to_string().contains("WRONGTYPE"),
            "{err:?}"
        );
    };
    let _: () = redis::cmd("SET")
        .arg(key(&h, "type", ":queue:mode"))
        .arg("x")
        .query_async(&mut raw)
        .await
        .unwrap();
    for err in [
        b.enqueue("type", &owner("a"), HoldMode::Exclusive, TTL)
            .await
            .unwrap_err(),
        b.dequeue("type", &owner("a")).await.unwrap_err(),
        b.renew_queued("type", &owner("a"), TTL).await.unwrap_err(),
        b.force_release_queued("type").await.unwrap_err(),
    ] {
        wrong_type(err);
    }
    let entries: bool = redis::cmd("EXISTS")
        .arg(key(&h, "type", ":queue"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!entries, "nothing is queued next to a key of another type");

    // The compact entry's key, and the fence, of another type (a list): the
    // general path reads them rather than asking their type first.
    for (name, suffix) in [("solo-type", ":queue:solo"), ("fence-type", ":queue:fence")] {
        let _: () = redis::cmd("RPUSH")
            .arg(key(&h, name, suffix))
            .arg("x")
            .query_async(&mut raw)
            .await
            .unwrap();
        wrong_type(
            b.enqueue(name, &owner("a"), HoldMode::Exclusive, TTL)
                .await
                .unwrap_err(),
        );
        let queued: bool = redis::cmd("EXISTS")
            .arg(key(&h, name, ":queue"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(!queued, "{suffix}: nothing is queued next to it");
        if suffix == ":queue:solo" {
            // The fast path's INCR of a fence that did not exist is undone
            // by deleting it, not by leaving a "0" (which does not decode).
            let fence: Option<String> = redis::cmd("GET")
                .arg(key(&h, name, ":queue:fence"))
                .query_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(fence, None, "nothing changed");
        }
    }
    for err in [
        b.dequeue("solo-type", &owner("a")).await.unwrap_err(),
        b.renew_queued("solo-type", &owner("a"), TTL)
            .await
            .unwrap_err(),
        b.force_release_queued("solo-type").await.unwrap_err(),
    ] {
        wrong_type(err);
    }

    // A lease lock's corrupted fence, as inspect reads it.
    let _: () = redis::cmd("SET")
        .arg(key(&h, "lease", ""))
        .arg("test:a")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(key(&h, "lease", ":fence"))
        .arg("pear")
        .query_async(&mut raw)
        .await
        .unwrap();
    let err = b.inspect("lease").await.unwrap_err();
    assert!(
        matches!(err, Error::Codec { .. }) && err.to_string().contains("pear"),
        "{err:?}"
    );
}

#[tokio::test]
async fn inspect_reads_the_lease_holder() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let other = h.connect().await.unwrap();
    assert_eq!(b.inspect("lease").await.unwrap(), None);
    let token = match b.try_acquire("lease", &owner("a"), TTL).await.unwrap() {
        AcquireOutcome::Granted(g) => g.token,
        other => panic!("{other:?}"),
    };
    // A refused attempt marks the holder's value; inspect shows the owner alone.
    assert!(matches!(
        other.try_acquire("lease", &owner("b"), TTL).await.unwrap(),
        AcquireOutcome::Held { .. }
    ));
    let info = b.inspect("lease").await.unwrap().unwrap();
    assert_eq!(info.name, "lease");
    assert_eq!(info.kind, StoredKind::Lease);
    assert!(info.waiters.is_empty());
    assert_eq!(info.holders.len(), 1);
    let holder = &info.holders[0];
    assert_eq!(holder.owner, "test:a");
    assert_eq!(holder.token, Some(token));
    assert_eq!(holder.mode, HoldMode::Exclusive);
    let ttl = holder.ttl_remaining.unwrap();
    assert!(ttl > TTL / 2 && ttl <= TTL, "{ttl:?}");
    b.release("lease", &owner("a")).await.unwrap();
    assert_eq!(b.inspect("lease").await.unwrap(), None);
    // A queue of the same name is not the lease lock.
    granted(&b, "lease", "q", HoldMode::Exclusive).await;
    assert_eq!(b.inspect("lease").await.unwrap(), None);
}

fn names(infos: &[LockInfo]) -> Vec<(&str, StoredKind)> {
    infos.iter().map(|i| (i.name.as_str(), i.kind)).collect()
}

#[tokio::test]
async fn list_reports_lease_locks_and_queues_under_a_prefix_sorted_by_name() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let lease = |name: &'static str| {
        let b = b.clone();
        async move {
            match b.try_acquire(name, &owner("l"), TTL).await.unwrap() {
                AcquireOutcome::Granted(g) => g.token,
                other => panic!("{other:?}"),
            }
        }
    };
    let tl = lease("app/b").await;
    lease("other/x").await;
    lease("app*/glob").await;
    let s2 = HoldMode::Shared { limit: 2 };
    let t1 = granted(&b, "app/a", "h1", s2).await;
    let t2 = granted(&b, "app/a", "h2", s2).await;
    queued(&b, "app/a", "w1", s2).await;
    queued(&b, "app/a", "w2", HoldMode::Exclusive).await;
    granted(&b, "app/b", "q", HoldMode::Exclusive).await;
    // An emptied queue is not listed.
    granted(&b, "app/c", "q", HoldMode::Exclusive).await;
    b.dequeue("app/c", &owner("q")).await.unwrap();

    let all = b.list("app/").await.unwrap();
    assert_eq!(
        names(&all),
        vec![
            ("app/a", StoredKind::Queue),
            ("app/b", StoredKind::Lease),
            ("app/b", StoredKind::Queue),
        ]
    );
    let a = &all[0];
    let holders: Vec<_> = a
        .holders
        .iter()
        .map(|h| (h.owner.as_str(), h.token, h.mode))
        .collect();
    assert_eq!(
        holders,
        vec![("test:h1", Some(t1), s2), ("test:h2", Some(t2), s2)]
    );
    let waiters: Vec<_> = a
        .waiters
        .iter()
        .map(|h| (h.owner.as_str(), h.token, h.mode))
        .collect();
    assert_eq!(
        waiters,
        vec![
            ("test:w1", None, s2),
            ("test:w2", None, HoldMode::Exclusive)
        ]
    );
    for e in a.holders.iter().chain(&a.waiters) {
        let ttl = e.ttl_remaining.unwrap();
        assert!(ttl > TTL / 2 && ttl <= TTL, "{ttl:?}");
    }
    assert_eq!(all[1].holders[0].token, Some(tl));
    assert_eq!(all[1].holders[0].owner, "test:l");

    // Glob characters in the prefix are literal.
    assert_eq!(
        names(&b.list("app*").await.unwrap()),
        vec![("app*/glob", StoredKind::Lease)]
    );
    assert_eq!(
        names(&b.list("").await.unwrap()),
        vec![
            ("app*/glob", StoredKind::Lease),
            ("app/a", StoredKind::Queue),
            ("app/b", StoredKind::Lease),
            ("app/b", StoredKind::Queue),
            ("other/x", StoredKind::Lease),
        ]
    );
    assert!(b.list("nothing/").await.unwrap().is_empty());
}

#[tokio::test]
async fn queues_and_list_work_on_a_cluster() {
    let h = RedisHarness::start_cluster().await;
    let b = h.connect().await.unwrap();
    let x = HoldMode::Exclusive;
    let mut expected = Vec::new();
    for i in 0..24 {
        let name = format!("spread/{i:02}");
        granted(&b, &name, "a", x).await;
        assert_eq!(queued(&b, &name, "b", x).await, 1);
        expected.push(name);
    }
    let mut events = b.subscribe_queue("spread/00", &owner("b")).await.unwrap();
    b.dequeue("spread/00", &owner("a")).await.unwrap();
    assert!(within(LIMIT, "the release is published", events.next()).await);
    granted(&b, "spread/00", "b", x).await;
    let listed = b.list("spread/").await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn long_queues_are_read_in_chunks() {
    // More entries than one command of the scripts takes (1000).
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let n = 1200;
    let mut last = FencingToken::new(0);
    for i in 0..n {
        let token = granted(&b, "many", &format!("r{i}"), HoldMode::READ).await;
        assert!(token > last);
        last = token;
    }
    assert_eq!(queued(&b, "many", "w", HoldMode::Exclusive).await, n);
    let info = b.list("many").await.unwrap();
    assert_eq!(info[0].holders.len(), n as usize);
    assert_eq!(info[0].holders[n as usize - 1].token, Some(last));
    assert_eq!(info[0].waiters.len(), 1);
    assert_eq!(b.force_release_queued("many").await.unwrap(), n as usize);
    assert!(granted(&b, "many", "w", HoldMode::Exclusive).await > last);
}

/// A release wakes only the waiters it lets in: with three waiters behind
/// one holder, the release wakes the first, not the two behind it.
#[tokio::test]
async fn a_release_wakes_only_the_next_grantee() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let x = HoldMode::Exclusive;
    granted(&b, "next", "a", x).await;
    for (who, ahead) in [("w1", 1), ("w2", 2), ("w3", 3)] {
        assert_eq!(queued(&b, "next", who, x).await, ahead);
    }
    let mut first = b.subscribe_queue("next", &owner("w1")).await.unwrap();
    let mut third = b.subscribe_queue("next", &owner("w3")).await.unwrap();
    b.dequeue("next", &owner("a")).await.unwrap();
    assert!(within(LIMIT, "the next grantee is woken", first.next()).await);
    granted(&b, "next", "w1", x).await;
    // w2 leaves: nobody is let in (w1 holds), so w3 is not woken; then w1
    // releases and w3, now first, is.
    b.dequeue("next", &owner("w2")).await.unwrap();
    b.dequeue("next", &owner("w1")).await.unwrap();
    assert!(within(LIMIT, "w3 is woken by w1's release", third.next()).await);
    granted(&b, "next", "w3", x).await;
}

#[tokio::test]
async fn a_release_grants_the_next_waiters_at_once_and_announces_their_tokens() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let mut raw = raw(h.server.url()).await;
    let x = HoldMode::Exclusive;
    let t1 = granted(&b, "handover", "a", x).await;
    // A waiter's answer carries the fence it saw: the holder's token.
    match b.enqueue("handover", &owner("w1"), x, TTL).await.unwrap() {
        QueueOutcome::Queued {
            ahead: 1,
            fence: Some(f),
            ..
        } => assert_eq!(f, t1),
        other => panic!("expected w1 to wait, got {other:?}"),
    }
    assert_eq!(queued(&b, "handover", "w2", x).await, 2);
    let mut w1 = b.subscribe_queue("handover", &owner("w1")).await.unwrap();
    let mut w2 = b.subscribe_queue("handover", &owner("w2")).await.unwrap();
    b.dequeue("handover", &owner("a")).await.unwrap();
    // w1 holds now, told its token, without asking again.
    let t2 = match within(LIMIT, "w1 is told its grant", w1.next_wake()).await {
        Some(Wake::Granted(t)) => t,
        other => panic!("expected a grant, got {other:?}"),
    };
    assert!(t2 > t1);
    let info = b.list("handover").await.unwrap();
    let holders: Vec<_> = info[0]
        .holders
        .iter()
        .map(|h| (h.owner.as_str(), h.token))
        .collect();
    assert_eq!(holders, [("test:w1", Some(t2))]);
    assert_eq!(info[0].waiters.len(), 1);
    // Every key of the queue still expires (the token hash was made anew by
    // the grant).
    for suffix in [":queue", ":queue:lease", ":queue:mode", ":queue:token"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key(&h, "handover", suffix))
            .query_async(&mut raw)
            .await
            .unwrap();
        let most = TTL.as_millis() as i64 + KEYS_OUTLIVE_BY_MS;
        assert!(ttl > 0 && ttl <= most, "{suffix}: {ttl}");
    }
    // Asking again (a waiter that missed the message) gives the same grant.
    assert_eq!(granted(&b, "handover", "w1", x).await, t2);
    // A semaphore: a release lets one waiter in, the next stays waiting.
    let s2 = HoldMode::Shared { limit: 2 };
    granted(&b, "permits", "a", s2).await;
    let t = granted(&b, "permits", "b", s2).await;
    queued(&b, "permits", "c", s2).await;
    queued(&b, "permits", "d", s2).await;
    let mut c = b.subscribe_queue("permits", &owner("c")).await.unwrap();
    b.dequeue("permits", &owner("a")).await.unwrap();
    match within(LIMIT, "c is told its grant", c.next_wake()).await {
        Some(Wake::Granted(tc)) => assert!(tc > t),
        other => panic!("expected a grant, got {other:?}"),
    }
    assert_eq!(queued(&b, "permits", "d", s2).await, 2);
    // A fence that does not decode grants nothing: the next waiter is woken
    // to ask, and its enqueue reports the fence.
    let _: () = redis::cmd("SET")
        .arg(key(&h, "handover", ":queue:fence"))
        .arg("pear")
        .query_async(&mut raw)
        .await
        .unwrap();
    b.dequeue("handover", &owner("w1")).await.unwrap();
    assert_eq!(
        within(LIMIT, "w2 is woken", w2.next_wake()).await,
        Some(Wake::Changed)
    );
    let err = b
        .enqueue("handover", &owner("w2"), x, TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Codec { .. }) && err.to_string().contains("pear"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_announced_grant_of_an_earlier_entry_is_not_taken_for_the_current_one() {
    // A waiter takes an announced grant only with a token above the fence of
    // its last answer: a message from an earlier entry of the same owner (a
    // recycled owner, a message delayed on the pub/sub connection) must not
    // make it believe it holds the lock.
    let h = RedisHarness::start().await;
    let backend: Arc<dyn LockBackend> = Arc::new(h.connect().await.unwrap());
    let locks = LockClient::new(backend.clone());
    let lock = locks.lock("stale").fair().ttl(TTL).build();
    let holder = lock.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire().await.unwrap() }
    });
    let waiting = within(LIMIT, "the waiter is queued", async {
        loop {
            let info = backend.list("stale").await.unwrap();
            if let Some(w) = info.first().and_then(|i| i.waiters.first()) {
                return w.owner.clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    // A stale announcement: the holder's token, no higher than the fence,
    // on the channel of the waiter's client (where grants are announced) and
    // on the queue's (which every waiter listens to).
    let queue_channel = key(&h, "stale", ":queue:released");
    let client_channel = format!("{queue_channel}:{}", waiting.split(':').next().unwrap());
    let mut raw = raw(h.server.url()).await;
    let stale = format!("{waiting}\0{}", holder.fencing_token().as_u64());
    for channel in [&client_channel, &queue_channel] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(&stale)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let held = holder.fencing_token();
    holder.release().await.unwrap();
    let guard = within(LIMIT, "the waiter is granted", waiter)
        .await
        .unwrap();
    assert!(
        guard.fencing_token() > held,
        "{:?} after {held:?}",
        guard.fencing_token()
    );
    let info = backend.list("stale").await.unwrap();
    assert_eq!(info[0].holders[0].token, Some(guard.fencing_token()));
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_grant_is_announced_to_the_grantees_client_only() {
    // Two clients wait behind a holder. A release announces its grant on the
    // channel of the grantee's client alone: the other client's connection
    // and the queue's channel (which every waiter listens to) get nothing.
    use futures::StreamExt;
    let h = RedisHarness::start().await;
    let clients: Vec<LockClient> = vec![
        LockClient::new(h.new_backend().await),
        LockClient::new(h.new_backend().await),
        LockClient::new(h.new_backend().await),
    ];
    let lock = |c: &LockClient| c.lock("announce").fair().ttl(TTL).build();
    let holder = lock(&clients[0]).acquire().await.unwrap();
    let backend = h.connect().await.unwrap();
    // The waiters' owners, in queue order (each queued before the next).
    let mut waiting = Vec::new();
    let mut waiters = Vec::new();
    for client in &clients[1..] {
        let l = lock(client);
        waiters.push(tokio::spawn(async move { l.acquire().await.unwrap() }));
        let n = waiting.len() + 1;
        let owners = within(LIMIT, "the waiter is queued", async {
            loop {
                let info = backend.list("announce").await.unwrap();
                let owners: Vec<String> = info
                    .first()
                    .map(|i| i.waiters.iter().map(|w| w.owner.clone()).collect())
                    .unwrap_or_default();
                if owners.len() == n {
                    return owners;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        waiting = owners;
    }
    let queue_channel = key(&h, "announce", ":queue:released");
    let channel_of = |owner: &str| format!("{queue_channel}:{}", owner.split(':').next().unwrap());
    let (first, second) = (channel_of(&waiting[0]), channel_of(&waiting[1]));
    assert_ne!(first, second, "two clients, two client ids");
    let mut listener = redis::Client::open(h.server.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    for channel in [&queue_channel, &first, &second] {
        listener.subscribe(channel).await.unwrap();
    }
    let mut messages = listener.on_message();
    let mut raw = raw(h.server.url()).await;
    let mut next = async || {
        let m = within(LIMIT, "a message", messages.next()).await.unwrap();
        let payload: String = m.get_payload().unwrap();
        (m.get_channel_name().to_owned(), payload)
    };

    holder.release().await.unwrap();
    let granted = within(LIMIT, "the first waiter is granted", waiters.remove(0))
        .await
        .unwrap();
    // A marker after the release: whatever the release published came first.
    let marker = "marker";
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&queue_channel)
        .arg(marker)
        .query_async(&mut raw)
        .await
        .unwrap();
    let grant = format!("{}\0{}", waiting[0], granted.fencing_token().as_u64());
    assert_eq!(next().await, (first.clone(), grant));
    assert_eq!(next().await, (queue_channel.clone(), marker.to_owned()));

    let token = granted.fencing_token();
    granted.release().await.unwrap();
    let last = within(LIMIT, "the second waiter is granted", waiters.remove(0))
        .await
        .unwrap();
    assert!(last.fencing_token() > token);
    let grant = format!("{}\0{}", waiting[1], last.fencing_token().as_u64());
    assert_eq!(next().await, (second.clone(), grant));
    last.release().await.unwrap();
}

#[tokio::test]
async fn a_handle_that_waited_last_time_listens_first_and_asks_once() {
    // A worker looping on a contended lock: its next wait costs one enqueue
    // (it listens before asking), and the release hands the lock over.
    // A server of its own: its command counts are this test's.
    let h = RedisHarness::on(RedisServer::spawn().expect("redis-server must start for this test"));
    let (a, b) = (h.new_backend().await, h.new_backend().await);
    let holder = LockClient::new(a).lock("loop").fair().ttl(TTL).build();
    let worker = LockClient::new(b.clone())
        .lock("loop")
        .fair()
        .ttl(TTL)
        .build();
    let mut conn = raw(h.server.url()).await;
    for round in 0..3 {
        let held = holder.acquire().await.unwrap();
        let enqueues = command_calls(&mut conn, "zrank").await;
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.acquire().await.unwrap() }
        });
        within(LIMIT, "the worker waits", async {
            while b
                .list("loop")
                .await
                .unwrap()
                .first()
                .is_none_or(|i| i.waiters.is_empty())
            {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let token = held.fencing_token();
        held.release().await.unwrap();
        let guard = within(LIMIT, "the worker is granted", waiting)
            .await
            .unwrap();
        assert!(guard.fencing_token() > token);
        let asked = command_calls(&mut conn, "zrank").await - enqueues;
        // The first wait asks twice (the second time once it listens).
        let expected = if round == 0 { 2 } else { 1 };
        assert_eq!(asked, expected, "round {round}");
        guard.release().await.unwrap();
    }
}

/// All commands the server has run (scripts' own calls included), by name.
async fn commands_run(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| !l.starts_with("info:") && !l.starts_with("config|"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap().split(',').next().unwrap();
            calls.parse::<u64>().unwrap()
        })
        .sum()
}

#[tokio::test]
async fn an_uncontended_hold_takes_the_fast_paths() {
    // The queue scripts' fast paths (the compact form of a queue whose only
    // entry was granted on arrival) run 5 + 3 commands, the EVALSHAs included,
    // about what a lease lock's do (4 + 3), where the general paths run about
    // 23 + 14: counted on a server of its own.
    let server = RedisServer::spawn().expect("redis-server must start for this test");
    let b = RedisBackend::connect(server.url(), &Settings::default())
        .await
        .unwrap();
    let mut conn = raw(server.url()).await;
    for (i, mode) in [HoldMode::Exclusive, HoldMode::Shared { limit: 3 }]
        .into_iter()
        .enumerate()
    {
        // Load the scripts first, so that no SCRIPT LOAD is counted.
        let name = format!("fast-{i}");
        granted(&b, &name, "a", mode).await;
        b.dequeue(&name, &owner("a")).await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let cycles = 10;
        let mut tokens = Vec::new();
        for _ in 0..cycles {
            tokens.push(granted(&b, &name, "a", mode).await);
            b.dequeue(&name, &owner("a")).await.unwrap();
        }
        let per_cycle = commands_run(&mut conn).await as f64 / cycles as f64;
        assert!(
            per_cycle <= 9.0,
            "{mode:?}: {per_cycle} commands per uncontended acquire + release"
        );
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
        // Nothing is left behind once the only entry went.
        let prefix = format!("{}:lock:{{{name}}}", Settings::default().namespace);
        let left: u64 = redis::cmd("EXISTS")
            .arg(format!("{prefix}:queue"))
            .arg(format!("{prefix}:queue:solo"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }
    // A release of an entry whose lease ended is refused on the fast path too.
    let name = "fast-expired";
    match b
        .enqueue(
            name,
            &owner("a"),
            HoldMode::Exclusive,
            Duration::from_millis(20),
        )
        .await
        .unwrap()
    {
        QueueOutcome::Granted(_) => {}
        other => panic!("expected a grant, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    let err = b.dequeue(name, &owner("a")).await.unwrap_err();
    assert!(matches!(err, Error::NotHeld(_)), "{err:?}");
}
