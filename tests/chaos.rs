//! The chaos suite: real servers (processes on loopback, containers for
//! network partitions) under faults, with workers of each lock kind
//! contending and writing through fencing, checked by the testkit's chaos
//! runner (`coord::testkit::chaos`).
//!
//! One test runs every scenario in turn (they would disturb each other's
//! timing on a small machine), prints the results table, writes it to
//! `target/chaos-results.md` (and into the README between its
//! `chaos-results` markers when `COORD_CHAOS_README=1`), then checks the
//! targets:
//!
//! * no violation (overlapping holds, fenced writes out of order, late
//!   loss signals) wherever the documentation promises it;
//! * every negative control caught by its checker;
//! * no lock left behind a TTL after the workers released;
//! * after each fault healed, grants again;
//! * Redlock with two of five servers down grants at least 99 % of
//!   uncontended acquisitions.
//!
//! `COORD_CHAOS_SECS` sets each scenario's length (default 9 s; 60 or more
//! for a local soak):
//!
//! ```text
//! COORD_CHAOS_SECS=60 cargo test -p coord-tests --test chaos -- --nocapture
//! ```
//!
//! and `COORD_CHAOS_ONLY=<text>` runs only the scenarios whose name has it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use coord::etcd::EtcdBackend;
use coord::etcd::testkit::EtcdCluster;
use coord::redis::testkit::RedlockHarness;
use coord::testkit::chaos::{self, ChaosKind, ChaosPlan, ScenarioReport};
use coord::{LockClient, Settings};

/// Settings for the workers' clients: requests bounded well inside the
/// locks' TTL, so that a fault shows up as errors rather than hangs.
fn settings() -> Settings {
    let mut s = Settings::default();
    s.connect_timeout = Duration::from_secs(1);
    s.request_timeout = Duration::from_millis(800);
    s
}

/// Runs a blocking fixture operation (kill, restart, pause) from async code.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn etcd_client(url: String) -> LockClient {
    let backend = EtcdBackend::connect(&url, &settings())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    LockClient::new(Arc::new(backend))
}

/// etcd, three members: the leader is killed, then restarted on its data.
async fn etcd_leader_killed(plan: &ChaosPlan) -> Vec<ScenarioReport> {
    let cluster = blocking(|| EtcdCluster::start(3)).expect("a 3-member etcd cluster must start");
    let url = cluster.url();
    let leader = Arc::new(std::sync::OnceLock::new());
    let inject = async {
        let i = cluster.leader().await.expect("the cluster has a leader");
        leader.set(i).ok();
        blocking(|| cluster.stop(i)).expect("kill the leader");
    };
    let heal = async {
        let i = *leader.get().expect("the fault ran first");
        blocking(|| cluster.restart(i)).expect("restart the old leader");
    };
    chaos::run_scenario(
        plan,
        "etcd: leader member killed",
        &ChaosKind::ALL,
        false,
        || etcd_client(url.clone()),
        inject,
        heal,
    )
    .await
}

/// etcd, three members: the leader is paused (SIGSTOP) for longer than the
/// locks' TTL, then resumed.
async fn etcd_member_paused(plan: &ChaosPlan) -> Vec<ScenarioReport> {
    assert!(
        plan.heal_at - plan.fault_at > plan.ttl,
        "the pause must outlast the TTL"
    );
    let cluster = blocking(|| EtcdCluster::start(3)).expect("a 3-member etcd cluster must start");
    let url = cluster.url();
    let paused = Arc::new(std::sync::OnceLock::new());
    let inject = async {
        let i = cluster.leader().await.expect("the cluster has a leader");
        paused.set(i).ok();
        cluster.pause(i).expect("pause the leader");
    };
    let heal = async {
        cluster
            .resume(*paused.get().expect("the fault ran first"))
            .expect("resume");
    };
    chaos::run_scenario(
        plan,
        "etcd: leader paused past the TTL",
        &ChaosKind::ALL,
        false,
        || etcd_client(url.clone()),
        inject,
        heal,
    )
    .await
}

/// The scenario whose uncontended grants must stay at 99 % or more: a
/// majority of three of five servers is still up.
const REDLOCK_TWO_DOWN: &str = "redlock (5 servers): two down";

/// Redlock over five servers: two are killed, then restarted (without
/// persistence). Redlock has lease locks and elections, no queued kinds.
async fn redlock_two_down(plan: &ChaosPlan) -> Vec<ScenarioReport> {
    let harness = tokio::sync::Mutex::new(RedlockHarness::start(5).await);
    let client = || async {
        let backend = harness
            .lock()
            .await
            .connect()
            .await
            .expect("connect to redlock");
        LockClient::new(Arc::new(backend))
    };
    let inject = async {
        let mut h = harness.lock().await;
        blocking(|| {
            h.stop(0).expect("stop server 0");
            h.stop(1).expect("stop server 1");
        });
    };
    let heal = async {
        let mut h = harness.lock().await;
        blocking(|| {
            h.restart(0).expect("restart server 0");
            h.restart(1).expect("restart server 1");
        });
    };
    chaos::run_scenario(
        plan,
        REDLOCK_TWO_DOWN,
        &[ChaosKind::Lease, ChaosKind::Election],
        false,
        client,
        inject,
        heal,
    )
    .await
}

/// Redlock over five servers: one restarts without persistence (its locks
/// vanish) while the others keep theirs.
async fn redlock_one_restarted(plan: &ChaosPlan) -> Vec<ScenarioReport> {
    let harness = tokio::sync::Mutex::new(RedlockHarness::start(5).await);
    let client = || async {
        let backend = harness
            .lock()
            .await
            .connect()
            .await
            .expect("connect to redlock");
        LockClient::new(Arc::new(backend))
    };
    let inject = async {
        let mut h = harness.lock().await;
        blocking(|| h.restart(2)).expect("restart server 2 without persistence");
    };
    chaos::run_scenario(
        plan,
        "redlock (5 servers): one restarted without persistence",
        &[ChaosKind::Lease, ChaosKind::Election],
        false,
        client,
        inject,
        async {},
    )
    .await
}

/// Runs `scenario`, printing its rows as they come.
async fn scenario<F: Future<Output = Vec<ScenarioReport>>>(
    all: &mut Vec<ScenarioReport>,
    name: &str,
    run: F,
) {
    if std::env::var("COORD_CHAOS_ONLY").is_ok_and(|only| !name.contains(only.as_str())) {
        return;
    }
    eprintln!("chaos: {name}...");
    let started = std::time::Instant::now();
    let reports = run.await;
    for r in &reports {
        eprintln!("  {}", r.row());
    }
    eprintln!(
        "chaos: {name} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    all.extend(reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_suite() {
    // RUST_LOG=coord_etcd=debug (for instance) shows what the clients did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let plan = ChaosPlan::from_env();
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    scenario(&mut all, "etcd leader killed", etcd_leader_killed(&plan)).await;
    scenario(&mut all, "etcd leader paused", etcd_member_paused(&plan)).await;
    scenario(&mut all, "redlock two down", redlock_two_down(&plan)).await;
    scenario(
        &mut all,
        "redlock one restarted",
        redlock_one_restarted(&plan),
    )
    .await;

    let how = format!(
        "Made by `cargo test -p coord-tests --test chaos` (COORD_CHAOS_SECS={}, {} workers per \
         kind, TTL {:?}, fault at {:?}, heal at {:?}); the whole suite took {:.0} s.",
        plan.duration.as_secs(),
        plan.workers,
        plan.ttl,
        plan.fault_at,
        plan.heal_at,
        started.elapsed().as_secs_f64()
    );
    let table = chaos::table(&all, &how);
    eprintln!("\n{table}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    std::fs::create_dir_all(&target).expect("target dir");
    std::fs::write(target.join("chaos-results.md"), &table).expect("write the results");
    if std::env::var("COORD_CHAOS_README").is_ok_and(|v| v == "1") {
        chaos::write_into_readme(&root.join("README.md"), &table).expect("README");
    }

    let mut failures = Vec::new();
    for r in &all {
        let what = format!("{} / {}", r.scenario, r.kind);
        for v in r.violations() {
            failures.push(format!("{what}: {v}"));
        }
        if !r.control_caught {
            failures.push(format!("{what}: the negative control was not caught"));
        }
        if r.left_after_ttl > 0 {
            failures.push(format!(
                "{what}: {} locks left behind a TTL later",
                r.left_after_ttl
            ));
        }
        if r.scenario == REDLOCK_TWO_DOWN {
            match r.uncontended_during_fault {
                Some((granted, tried)) if tried > 0 && granted * 100 >= tried * 99 => {}
                other => failures.push(format!(
                    "{what}: uncontended grants during the fault {other:?}, below 99 %"
                )),
            }
        }
        if r.next_grant_after_heal.is_none() {
            failures.push(format!("{what}: no grant after the heal"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
