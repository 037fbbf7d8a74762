//! Redlock's restart hazard, on five real servers: a lock held on exactly a
//! quorum, one of whose servers restarts empty while an idle client makes
//! concurrent attempts. The quarantine must keep the restarted server out of
//! every grant, including requests that were in flight when its connection
//! was re-established; the negative control (no quarantine) shows that the
//! test can fail.

use std::time::Duration;

use coord_core::testkit::{AuditedResource, Fencing};
use coord_core::{AcquireOutcome, LockBackend, LockOwner};
use coord_redis::testkit::RedlockHarness;
use coord_redis::{RedlockBackend, RedlockConfig};
use tokio::time::Instant;

const SERVERS: usize = 5;
/// The TTL of every hold: the Redlock's `max_ttl`, so the longest allowed.
const TTL: Duration = Duration::from_secs(2);

/// The safe defaults with a `max_ttl` a test can wait out.
fn safe_config() -> RedlockConfig {
    let mut c = RedlockConfig::default();
    c.max_ttl = TTL;
    c
}

/// The negative control: no quarantine at all.
fn unsafe_config() -> RedlockConfig {
    let mut c = safe_config();
    c.quarantine = Some(Duration::ZERO);
    c
}

fn owner(who: &str) -> LockOwner {
    LockOwner::new("redlock-restart", who).expect("owner")
}

/// Servers that `b` sees out of quarantine, waiting (bounded) until there
/// are at least `want`.
async fn ready_servers(b: &RedlockBackend, want: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // An attempt refreshes the backend's view of servers it had lost.
        let probe = owner("probe");
        if let Ok(AcquireOutcome::Granted(_)) = b.try_acquire("ready-probe", &probe, TTL).await {
            let _ = b.release("ready-probe", &probe).await;
        }
        let ready: Vec<usize> = (0..SERVERS)
            .filter(|&i| b.is_quarantined(i) == Some(false))
            .collect();
        if ready.len() >= want {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {want} servers out of quarantine after 20 s: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `reps` repetitions of the restart sequence with client B configured
/// by `b_config`; returns the fence audit's violations and how many of B's
/// attempts were granted while A's hold was valid.
async fn restart_while_held(reps: usize, b_config: RedlockConfig) -> (Vec<String>, usize) {
    let mut h = RedlockHarness::start(SERVERS).await;
    let mut a_config = safe_config();
    a_config.server_timeout = Duration::from_millis(200);
    let a = h.connect_with(a_config).await.expect("client A");
    let b = h.connect_with(b_config).await.expect("client B");
    // A fence audit per lock name of every write the holders make: A's hold,
    // B's grants, and A writing again while it still believes it holds it.
    let mut violations = Vec::new();
    let mut double_grants = 0;
    let a_owner = owner("a");
    let b_owner = owner("b");
    for rep in 0..reps {
        let ready = ready_servers(&a, 3).await;
        let _ = ready_servers(&b, 3).await;
        let holders = &ready[..3];
        let others: Vec<usize> = (0..SERVERS).filter(|i| !holders.contains(i)).collect();
        // 1. The others are paused, so A's locks land on exactly `holders`.
        for &i in &others {
            h.server(i).pause().expect("pause");
        }
        let names = [format!("n1-{rep}"), format!("n2-{rep}")];
        let resources = [
            AuditedResource::new(Fencing::Off),
            AuditedResource::new(Fencing::Off),
        ];
        let mut a_valid_until = Vec::new();
        for (name, resource) in names.iter().zip(&resources) {
            let start = Instant::now();
            match a.try_acquire(name, &a_owner, TTL).await {
                Ok(AcquireOutcome::Granted(g)) => {
                    resource
                        .write(&format!("a/{name}"), g.token)
                        .expect("unfenced write");
                    a_valid_until.push((name.clone(), g.token, start + g.ttl));
                }
                other => panic!("rep {rep}: A could not take {name}: {other:?}"),
            }
        }
        // 2. The others come back; one holder restarts empty.
        for &i in &others {
            h.server(i).resume().expect("resume");
        }
        h.restart(holders[2]).expect("restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 3. B, idle since before the restart, tries both names at once, and
        // again until A's holds end.
        let end = a_valid_until
            .iter()
            .map(|(_, _, t)| *t)
            .max()
            .expect("holds");
        let mut granted = [false, false];
        while Instant::now() < end {
            let (r1, r2) = tokio::join!(
                b.try_acquire(&names[0], &b_owner, TTL),
                b.try_acquire(&names[1], &b_owner, TTL)
            );
            for (k, r) in [r1, r2].into_iter().enumerate() {
                if let Ok(AcquireOutcome::Granted(g)) = r {
                    let (name, _, a_until) = &a_valid_until[k];
                    if Instant::now() < *a_until && !granted[k] {
                        granted[k] = true;
                        double_grants += 1;
                        resources[k]
                            .write(&format!("b/{name}"), g.token)
                            .expect("unfenced write");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A, whose hold was still valid when B was granted, writes again:
        // the audit sees the interleaving.
        for (k, (name, token, _)) in a_valid_until.iter().enumerate() {
            if granted[k] {
                resources[k]
                    .write(&format!("a/{name}"), *token)
                    .expect("unfenced write");
            }
        }
        for resource in &resources {
            violations.extend(resource.audit().violations());
        }
        for name in &names {
            let _ = a.release(name, &a_owner).await;
            let _ = b.release(name, &b_owner).await;
        }
    }
    (violations, double_grants)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_a_bare_quorum_never_grants_twice() {
    // COORD_TEST_REDLOCK_REPS=50 for a longer local run.
    let reps = std::env::var("COORD_TEST_REDLOCK_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let (violations, double_grants) = restart_while_held(reps, safe_config()).await;
    assert_eq!(
        double_grants, 0,
        "B was granted a lock A held: {violations:?}"
    );
    assert!(violations.is_empty(), "fence audit: {violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_quarantine_the_same_sequence_grants_twice() {
    let (violations, double_grants) = restart_while_held(2, unsafe_config()).await;
    assert!(
        double_grants > 0,
        "the negative control found no double grant: the test cannot fail"
    );
    assert!(!violations.is_empty(), "the audit missed the double grant");
}
