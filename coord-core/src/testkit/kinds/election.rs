//! Leader election: one leader at a time, a new one when it dies.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::lock::LockClient;
use crate::testkit::kinds::{client, short_ttl};
use crate::testkit::{
    ExclusionChecker, Fault, FaultyLockBackend, LockHarness, LockOp, unique_name, within,
};

/// Five candidates, each on its own client, campaign and resign ten times:
/// the checker never sees two leaders, terms' tokens increase, and
/// `leader()` shows the current leader.
pub async fn one_leader_at_a_time(h: &dyn LockHarness) {
    let name = unique_name("election-one");
    let checker = Arc::new(ExclusionChecker::new());
    let mut tasks = Vec::new();
    for i in 0..5 {
        let election = client(h)
            .await
            .election(name.clone())
            .ttl(Duration::from_secs(30))
            .build();
        let checker = checker.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let me = format!("candidate-{i}");
                let term = election.campaign(me.clone()).await.expect("campaign");
                checker.enter(term.fencing_token());
                let leader = election
                    .leader()
                    .await
                    .expect("leader")
                    .expect("someone leads");
                assert_eq!(leader.value, me);
                assert_eq!(leader.token, term.fencing_token());
                checker.exit(term.fencing_token());
                term.resign().await.expect("resign");
            }
        }));
    }
    within(Duration::from_secs(120), "all candidates finish", async {
        for t in tasks {
            t.await.expect("candidate");
        }
    })
    .await;
    assert_eq!(checker.violations(), Vec::<String>::new());
    assert_eq!(checker.entries(), 50);
}

/// The leader's client dies without resigning (it stops reaching the
/// backend): a waiting candidate is elected within ttl + 2 s, and the old
/// leader sees its leadership lost.
pub async fn new_leader_after_leader_dies(h: &dyn LockHarness) {
    let name = unique_name("election-dies");
    let faulty = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    let doomed = LockClient::new(faulty.clone());
    let ttl = short_ttl(&doomed);
    let first = doomed.election(name.clone()).ttl(ttl).build();
    let term = first.campaign("doomed").await.expect("first leader");
    let second = client(h).await.election(name.clone()).ttl(ttl).build();
    let waiting = {
        let second = second.clone();
        tokio::spawn(async move {
            let t = second.campaign("successor").await;
            (t, Instant::now())
        })
    };
    // The leader's process dies: nothing it sends arrives any more.
    for op in [LockOp::Renew, LockOp::Release, LockOp::TryAcquire] {
        faulty.inject(op, Fault::Unavailable);
    }
    let died = Instant::now();
    let lost = within(
        ttl + Duration::from_secs(2),
        "the old leader sees the loss",
        term.lost(),
    )
    .await;
    assert!(matches!(lost, crate::Error::LockLost(_)), "{lost}");
    let (new_term, at) = within(
        ttl + Duration::from_secs(10),
        "a new leader is elected",
        waiting,
    )
    .await
    .expect("task");
    let new_term = new_term.expect("successor leads");
    let took = at - died;
    assert!(
        took <= ttl + Duration::from_secs(2),
        "new leader after {took:?} (ttl {ttl:?})"
    );
    assert!(new_term.fencing_token() > term.fencing_token());
    let leader = second
        .leader()
        .await
        .expect("leader")
        .expect("someone leads");
    assert_eq!(leader.value, "successor");
    std::mem::forget(term); // its process is dead: no resign
    new_term.resign().await.expect("resign");
}

/// `observe()` yields the current leader (none), then each new term.
pub async fn observe_reports_changes(h: &dyn LockHarness) {
    let name = unique_name("election-observe");
    let c = client(h).await;
    let election = c
        .election(name.clone())
        .ttl(Duration::from_secs(30))
        .poll_interval(Duration::from_millis(100))
        .build();
    let mut changes = Box::pin(election.observe());
    macro_rules! next {
        ($s:expr) => {
            within(
                Duration::from_secs(10),
                "a leadership change is observed",
                StreamExt::next(&mut $s),
            )
        };
    }
    let first: Option<crate::lock::LeaderInfo> =
        next!(changes).await.expect("stream").expect("read");
    assert!(first.is_none(), "nobody leads yet");
    let term = election.campaign("a").await.expect("campaign");
    let seen = next!(changes)
        .await
        .expect("stream")
        .expect("read")
        .expect("a leads");
    assert_eq!(
        (seen.value.as_str(), seen.token),
        ("a", term.fencing_token())
    );
    term.resign().await.expect("resign");
    let gone = next!(changes).await.expect("stream").expect("read");
    assert!(
        gone.is_none(),
        "nobody leads after the resignation: {gone:?}"
    );
    let other = client(h)
        .await
        .election(name)
        .ttl(Duration::from_secs(30))
        .build();
    let term = other.campaign("b").await.expect("campaign");
    let seen = next!(changes)
        .await
        .expect("stream")
        .expect("read")
        .expect("b leads");
    assert_eq!(seen.value, "b");
    assert_eq!(seen.client_id, other_client_id(&term));
    term.resign().await.expect("resign");
}

/// Four terms of 300 ms each, handed from one candidate (each on its own
/// client) to the next, with a poll interval far longer than a term:
/// `observe()` reports every leader, in order. Its stream needs no pinning.
pub async fn observe_reports_every_term(h: &dyn LockHarness) {
    let name = unique_name("election-every-term");
    let observer = client(h)
        .await
        .election(name.clone())
        .ttl(Duration::from_secs(30))
        .poll_interval(Duration::from_secs(60))
        .build();
    let mut changes = observer.observe();
    let first = within(Duration::from_secs(10), "the first reading", changes.next())
        .await
        .expect("stream")
        .expect("read");
    assert!(first.is_none(), "nobody leads yet: {first:?}");
    let mut candidates = Vec::new();
    for _ in 0..4 {
        candidates.push(
            client(h)
                .await
                .election(name.clone())
                .ttl(Duration::from_secs(30))
                .build(),
        );
    }
    let terms = tokio::spawn(async move {
        for (i, candidate) in candidates.into_iter().enumerate() {
            let term = candidate
                .campaign(format!("leader-{i}"))
                .await
                .expect("campaign");
            tokio::time::sleep(Duration::from_millis(300)).await;
            term.resign().await.expect("resign");
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let change = within(
            Duration::from_secs(10),
            "the next term is observed",
            changes.next(),
        )
        .await
        .expect("stream")
        .expect("read");
        if let Some(leader) = change {
            seen.push(leader.value);
        }
    }
    assert_eq!(seen, ["leader-0", "leader-1", "leader-2", "leader-3"]);
    terms.await.expect("terms");
}

/// `proclaim()` changes the leader's value without a new term: same
/// token, `leader()` shows it, observers see it; after resigning it is
/// `NotHeld`.
pub async fn proclaim_changes_the_value_in_the_same_term(h: &dyn LockHarness) {
    let name = unique_name("election-proclaim");
    let c = client(h).await;
    let election = c
        .election(name.clone())
        .ttl(Duration::from_secs(30))
        .poll_interval(Duration::from_secs(60))
        .build();
    let mut changes = election.observe();
    let first = within(Duration::from_secs(10), "the first reading", changes.next())
        .await
        .expect("stream")
        .expect("read");
    assert!(first.is_none());
    let mut term = election.campaign("starting").await.expect("campaign");
    let seen = within(Duration::from_secs(10), "the new leader", changes.next())
        .await
        .expect("stream")
        .expect("read")
        .expect("a leader");
    assert_eq!(seen.value, "starting");
    term.proclaim("ready at 10.0.0.1:8080")
        .await
        .expect("proclaim");
    assert_eq!(term.value(), "ready at 10.0.0.1:8080");
    let leader = election.leader().await.expect("leader").expect("a leader");
    assert_eq!(leader.value, "ready at 10.0.0.1:8080");
    assert_eq!(leader.token, term.fencing_token(), "no new term");
    let seen = within(
        Duration::from_secs(10),
        "the proclaimed value",
        changes.next(),
    )
    .await
    .expect("stream")
    .expect("read")
    .expect("a leader");
    assert_eq!(seen.value, "ready at 10.0.0.1:8080");
    assert_eq!(seen.token, term.fencing_token());
    // Another candidate's campaign shows its own value, not the old one.
    let token = term.fencing_token();
    let guard_owner = term.guard().owner().clone();
    term.resign().await.expect("resign");
    let next = client(h)
        .await
        .election(name)
        .ttl(Duration::from_secs(30))
        .build()
        .campaign("successor")
        .await
        .expect("campaign");
    let leader = election.leader().await.expect("leader").expect("a leader");
    assert_eq!(leader.value, "successor");
    assert!(leader.token > token);
    assert!(matches!(
        c.backend()
            .proclaim(election.lock_name(), &guard_owner, "late")
            .await,
        Err(crate::error::Error::NotHeld(_))
    ));
    next.resign().await.expect("resign");
}

fn other_client_id(term: &crate::lock::Leadership) -> String {
    term.guard().owner().client_id().to_owned()
}
