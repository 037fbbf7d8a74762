//! The chaos runner: workers of each lock kind (lease, fair, semaphore,
//! election) contend for one lock per kind, each with a client of its own
//! (like separate processes), writing with their fencing tokens to an
//! audited resource, while a fault is injected and healed. Afterwards it
//! checks what they saw ([`ScenarioReport`]):
//!
//! * **overlaps**: a hold granted while another worker still believed it
//!   held (the earliest of its release, its `lost()` signal and the end of
//!   its guard's validity): more than one at once for exclusive kinds, more
//!   than the permits for a semaphore;
//! * **the fence audit** of the accepted writes: tokens going backwards,
//!   interleaved holds ([`FenceAudit`]);
//! * **late losses**: `lost()` resolving after a newer grant;
//! * the time from the fault (and from the heal) to the next grant, and the
//!   locks left behind once every worker released.
//!
//! Each kind also runs a **negative control** in the same run: before the
//! workers start, a control worker (a client of its own, like the others)
//! is granted the lock, gives it back, and goes on believing it holds it
//! for a while (a worker that outlives its hold), then writes with its old
//! token. The overlap checker must report its belief against the real
//! grants the others got meanwhile, and the fenced resource must refuse its
//! write (exclusive kinds). Its hold and write count in no other column.
//!
//! The run's length comes from `COORD_CHAOS_SECS` (default
//! [`ChaosPlan::DEFAULT_SECS`]): the fault comes at a third of it and is
//! healed at two thirds.

mod holds;
mod report;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::lock::{FencingToken, LockClient};
use crate::testkit::{AuditedResource, FenceAudit, Fencing, LOSS_MARGIN};

pub use holds::{Hold, HoldEnd, LATE_LOSS_TOLERANCE, late_losses, overlaps};
pub use report::{README_MARKERS, ScenarioReport, table, write_into_readme};

/// A lock kind the chaos workers contend for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosKind {
    /// A lease lock.
    Lease,
    /// A fair (queued) lock.
    Fair,
    /// A semaphore of this many permits.
    Semaphore(u32),
    /// A leader election (campaign, lead, resign).
    Election,
}

impl ChaosKind {
    /// The four kinds the suite runs: lease, fair, a semaphore of 2 permits,
    /// election.
    pub const ALL: [ChaosKind; 4] = [
        ChaosKind::Lease,
        ChaosKind::Fair,
        ChaosKind::Semaphore(2),
        ChaosKind::Election,
    ];

    /// How it is named in reports.
    pub fn label(&self) -> String {
        match self {
            ChaosKind::Lease => "lease".into(),
            ChaosKind::Fair => "fair".into(),
            ChaosKind::Semaphore(n) => format!("semaphore({n})"),
            ChaosKind::Election => "election".into(),
        }
    }

    /// How many holds may be held at once.
    fn capacity(&self) -> usize {
        match self {
            ChaosKind::Semaphore(n) => *n as usize,
            _ => 1,
        }
    }
}

/// The timing and size of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// How long the workers run.
    pub duration: Duration,
    /// When (from the start) the fault is injected.
    pub fault_at: Duration,
    /// When (from the start) it is healed.
    pub heal_at: Duration,
    /// The locks' TTL.
    pub ttl: Duration,
    /// Workers per kind, each with its own client.
    pub workers: usize,
    /// Writes per hold.
    pub writes_per_hold: usize,
    /// The work before each write.
    pub work: Duration,
    /// How long one acquisition may wait.
    pub wait_timeout: Duration,
}

impl ChaosPlan {
    /// The default run length in seconds (CI); `COORD_CHAOS_SECS` sets
    /// another (60 or more for a local soak).
    pub const DEFAULT_SECS: u64 = 9;

    /// A plan of `secs` seconds: the fault at a third, the heal at two
    /// thirds, a 2 s TTL, 3 workers per kind, 3 writes of 20 ms per hold.
    pub fn new(secs: u64) -> ChaosPlan {
        let duration = Duration::from_secs(secs.max(3));
        ChaosPlan {
            duration,
            fault_at: duration / 3,
            heal_at: duration * 2 / 3,
            ttl: Duration::from_secs(2),
            workers: 3,
            writes_per_hold: 3,
            work: Duration::from_millis(20),
            wait_timeout: Duration::from_secs(3),
        }
    }

    /// [`ChaosPlan::new`] with `COORD_CHAOS_SECS` seconds, or
    /// [`DEFAULT_SECS`](Self::DEFAULT_SECS).
    pub fn from_env() -> ChaosPlan {
        let secs = std::env::var("COORD_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(Self::DEFAULT_SECS);
        ChaosPlan::new(secs)
    }
}

/// What one worker saw.
#[derive(Debug, Default)]
struct WorkerLog {
    holds: Vec<Hold>,
    failed: u64,
    refused: u64,
}

/// Runs one scenario: `workers` workers per kind of `kinds`, each with a
/// client from `new_client` (called once per worker, plus once for the
/// inspection of leftovers), `inject` at [`ChaosPlan::fault_at`] and `heal`
/// at [`ChaosPlan::heal_at`], given what `inject` returned (the member it
/// killed, say). Lock names are unique per run. Set
/// `overlaps_allowed` where the backend's documentation says a fault can
/// hand one lock to two holders (fencing must still refuse the stale one).
pub async fn run_scenario<C, CF, I, T, H, HF>(
    plan: &ChaosPlan,
    scenario: &str,
    kinds: &[ChaosKind],
    overlaps_allowed: bool,
    new_client: C,
    inject: I,
    heal: H,
) -> Vec<ScenarioReport>
where
    C: Fn() -> CF,
    CF: Future<Output = LockClient>,
    I: Future<Output = T>,
    H: FnOnce(T) -> HF,
    HF: Future<Output = ()>,
{
    let prefix = format!("chaos/{:08x}", fastrand::u32(..));
    let mut clients = Vec::new();
    for _ in 0..kinds.len() * plan.workers {
        clients.push(new_client().await);
    }
    let inspector = new_client().await;
    let prober = new_client().await;
    // The negative controls' grants, before the workers contend.
    let mut control_grants = Vec::new();
    for kind in kinds {
        let name = format!("{prefix}/{}", kind.label());
        control_grants.push(control_grant(plan, *kind, &name, new_client().await).await);
    }
    let origin = Instant::now();
    let stop_at = origin + plan.duration;
    let resources: Vec<Arc<AuditedResource>> = kinds
        .iter()
        .map(|kind| {
            // Permits write side by side: only exclusive kinds are fenced.
            let fencing = if kind.capacity() == 1 {
                Fencing::On
            } else {
                Fencing::Off
            };
            Arc::new(AuditedResource::new(fencing))
        })
        .collect();
    let mut tasks = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        for w in 0..plan.workers {
            let client = clients[k * plan.workers + w].clone();
            let (plan, kind, resource) = (plan.clone(), *kind, resources[k].clone());
            let name = format!("{prefix}/{}", kind.label());
            tasks.push(tokio::spawn(async move {
                worker(&plan, kind, w, &name, client, &resource, stop_at).await
            }));
        }
    }
    // The negative controls' beliefs, while the workers start.
    let controls: Vec<_> = kinds
        .iter()
        .zip(control_grants)
        .enumerate()
        .map(|(k, (kind, grant))| {
            let (plan, exclusive, resource) =
                (plan.clone(), kind.capacity() == 1, resources[k].clone());
            tokio::spawn(async move {
                let (token, granted_at) = grant?;
                Some(believe(&plan, token, granted_at, &resource, exclusive).await)
            })
        })
        .collect();
    // Uncontended acquisitions of a lock of its own while the fault lasts.
    let probe = {
        let lock = prober
            .lock(format!("{prefix}/probe"))
            .ttl(plan.ttl)
            .wait_timeout(plan.ttl)
            .build();
        let (from, until) = (origin + plan.fault_at, origin + plan.heal_at);
        tokio::spawn(async move {
            tokio::time::sleep_until(from).await;
            let (mut granted, mut tried) = (0u64, 0u64);
            while Instant::now() < until {
                tried += 1;
                if let Ok(Ok(guard)) = tokio::time::timeout(lock.ttl() * 2, lock.acquire()).await {
                    granted += 1;
                    let _ = guard.release().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (granted, tried)
        })
    };
    // The fault and the heal, on the plan's schedule.
    tokio::time::sleep_until(origin + plan.fault_at).await;
    let fault_at = Instant::now();
    tracing::info!(scenario, "chaos: injecting the fault");
    let injected = inject.await;
    tokio::time::sleep_until((origin + plan.heal_at).max(Instant::now())).await;
    let heal_at = Instant::now();
    tracing::info!(scenario, "chaos: healing");
    heal(injected).await;
    let mut logs: Vec<Vec<WorkerLog>> = kinds.iter().map(|_| Vec::new()).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let log = match tokio::time::timeout(plan.duration + plan.ttl * 4 + LOSS_MARGIN, task).await
        {
            Ok(Ok(log)) => log,
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("{scenario}: a chaos worker was cancelled: {e}"),
            Err(_) => panic!("{scenario}: a chaos worker did not finish"),
        };
        logs[i / plan.workers].push(log);
    }
    let ran = origin.elapsed();
    let uncontended = probe.await.ok();
    let mut control_runs = Vec::new();
    for control in controls {
        control_runs.push(control.await.ok().flatten());
    }
    // Locks left behind once every worker released, and a TTL later.
    let left = |client: LockClient, prefix: String| async move {
        // A few tries: the inspector's link may have just been healed.
        let mut last = None;
        for _ in 0..10 {
            match client.admin().list(&prefix).await {
                Ok(locks) => return locks.iter().map(|l| l.holders.len()).sum::<usize>(),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{prefix}: cannot list the locks left behind: {last:?}")
    };
    let left_at_end = left(inspector.clone(), prefix.clone()).await;
    let left_after_ttl = if left_at_end > 0 {
        tokio::time::sleep(plan.ttl + LOSS_MARGIN).await;
        left(inspector.clone(), prefix.clone()).await
    } else {
        0
    };
    let mut reports = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let worker_logs = &logs[k];
        let holds: Vec<Hold> = worker_logs
            .iter()
            .flat_map(|l| l.holds.iter().cloned())
            .collect();
        let first_after = |t: Instant| {
            holds
                .iter()
                .filter(|h| h.granted_at >= t)
                .map(|h| h.granted_at - t)
                .min()
        };
        let exclusive = kind.capacity() == 1;
        let audit = resources[k].audit();
        let report = ScenarioReport {
            scenario: scenario.to_owned(),
            kind: kind.label(),
            duration: ran,
            acquisitions: holds.len() as u64,
            failed_acquisitions: worker_logs.iter().map(|l| l.failed).sum(),
            overlaps: overlaps(&holds, kind.capacity(), origin),
            audit_violations: if exclusive {
                audit.violations()
            } else {
                Vec::new()
            },
            late_losses: if exclusive {
                late_losses(&holds)
            } else {
                Vec::new()
            },
            refused_writes: worker_logs.iter().map(|l| l.refused).sum(),
            next_grant_after_fault: first_after(fault_at),
            next_grant_after_heal: first_after(heal_at),
            left_at_end,
            left_after_ttl,
            overlaps_allowed,
            uncontended_during_fault: uncontended,
            control_caught: control_caught(
                &holds,
                kind.capacity(),
                control_runs[k].as_ref(),
                origin,
            ),
        };
        reports.push(report);
    }
    reports
}

/// The worker id of a control worker's hold.
const CONTROL_WORKER: usize = usize::MAX;

/// What a control worker did: its hold (as it believed it) and whether the
/// resource refused its late write (`None`: no write, a shared kind).
#[derive(Debug)]
struct ControlRun {
    hold: Hold,
    stale_write_refused: Option<bool>,
}

/// A control worker's grant, before the workers contend: granted the
/// lock, it gives it back at once (and then, in [`believe`], goes on as if
/// it held it). Its token and grant time; `None` if not granted within a
/// TTL.
async fn control_grant(
    plan: &ChaosPlan,
    kind: ChaosKind,
    name: &str,
    client: LockClient,
) -> Option<(FencingToken, Instant)> {
    let wait = plan.ttl;
    let held = match kind {
        ChaosKind::Lease => client.lock(name).ttl(plan.ttl),
        ChaosKind::Fair => client.lock(name).ttl(plan.ttl).fair(),
        ChaosKind::Semaphore(n) => client.lock(name).ttl(plan.ttl).semaphore(n),
        ChaosKind::Election => {
            let election = client.election(name).ttl(plan.ttl).build();
            let leader = tokio::time::timeout(wait, election.campaign("control"))
                .await
                .ok()?
                .ok()?;
            let granted_at = Instant::now();
            let token = leader.fencing_token();
            let _ = leader.resign().await;
            return Some((token, granted_at));
        }
    }
    .wait_timeout(wait)
    .build()
    .acquire()
    .await
    .ok()?;
    let granted_at = Instant::now();
    let token = held.fencing_token();
    let _ = held.release().await;
    Some((token, granted_at))
}

/// The control's belief after its release: it goes on "holding" for a
/// fifth of the TTL (the workers are granted meanwhile), then (`write`)
/// writes with `token` once a newer token has written (waiting at most a
/// TTL for one).
async fn believe(
    plan: &ChaosPlan,
    token: FencingToken,
    granted_at: Instant,
    resource: &AuditedResource,
    write: bool,
) -> ControlRun {
    tokio::time::sleep(plan.ttl / 5).await;
    let stale_write_refused = if write {
        let deadline = Instant::now() + plan.ttl;
        while Instant::now() < deadline
            && !resource.audit().writes().iter().any(|(_, t)| *t > token)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Some(matches!(
            resource.write("negative-control", token),
            Err(Error::Conflict { .. })
        ))
    } else {
        None
    };
    ControlRun {
        hold: Hold {
            worker: CONTROL_WORKER,
            token,
            granted_at,
            believed_until: Instant::now(),
            lost_at: None,
            end: HoldEnd::Released,
        },
        stale_write_refused,
    }
}

/// Whether the checkers caught the control: its belief overlaps real
/// grants (more overlaps with its hold than without), and the resource
/// refused its late write where there is one.
fn control_caught(
    holds: &[Hold],
    capacity: usize,
    control: Option<&ControlRun>,
    origin: Instant,
) -> bool {
    let Some(control) = control else {
        return false;
    };
    let mut with_control = holds.to_vec();
    with_control.push(control.hold.clone());
    let overlap_caught =
        overlaps(&with_control, capacity, origin).len() > overlaps(holds, capacity, origin).len();
    overlap_caught && control.stale_write_refused != Some(false)
}

/// The holder-death rows' control (they run two holds, no control
/// worker): whether the checkers catch an overlap and a stale write
/// injected into the run's own data: a copy of a recorded hold moved into
/// the middle of another worker's hold, and a replay of the accepted writes
/// followed by a write with the first token.
fn negative_control(holds: &[Hold], capacity: usize, audit: &FenceAudit, origin: Instant) -> bool {
    let Some(victim) = holds.iter().max_by_key(|h| h.believed_until - h.granted_at) else {
        return false;
    };
    let mut injected: Vec<Hold> = holds.to_vec();
    let middle = victim.granted_at + (victim.believed_until - victim.granted_at) / 2;
    for extra in 0..capacity {
        injected.push(Hold {
            worker: usize::MAX - extra,
            token: FencingToken::new(u64::MAX - extra as u64),
            granted_at: middle,
            believed_until: victim.believed_until,
            lost_at: None,
            end: HoldEnd::Released,
        });
    }
    let overlap_caught = !overlaps(&injected, capacity, origin).is_empty();
    let replay = FenceAudit::new();
    let writes = audit.writes();
    for (hold, token) in &writes {
        replay.record(hold, *token);
    }
    let stale_caught = match writes.first() {
        Some((_, first)) if writes.iter().any(|(_, t)| t > first) => {
            replay.record("negative-control/stale", *first);
            !replay.violations().is_empty()
        }
        // Semaphores keep no audit; a run with one token has nothing older.
        _ => capacity > 1 || writes.is_empty(),
    };
    overlap_caught && stale_caught
}

/// One worker: acquire, write with the token, release, until `stop_at`.
async fn worker(
    plan: &ChaosPlan,
    kind: ChaosKind,
    id: usize,
    name: &str,
    client: LockClient,
    resource: &AuditedResource,
    stop_at: Instant,
) -> WorkerLog {
    let mut log = WorkerLog::default();
    let lock = match kind {
        ChaosKind::Lease => Some(client.lock(name).ttl(plan.ttl)),
        ChaosKind::Fair => Some(client.lock(name).ttl(plan.ttl).fair()),
        ChaosKind::Semaphore(n) => Some(client.lock(name).ttl(plan.ttl).semaphore(n)),
        ChaosKind::Election => None,
    }
    .map(|b| b.wait_timeout(plan.wait_timeout).build());
    let election = client.election(name).ttl(plan.ttl).build();
    let mut round = 0u64;
    while Instant::now() < stop_at {
        round += 1;
        let wait = plan.wait_timeout.min(stop_at - Instant::now());
        // One grant: its token, a loss future and its validity, and a release.
        let acquired = match &lock {
            Some(lock) => tokio::time::timeout(wait + plan.ttl, lock.acquire())
                .await
                .map(|r| r.map(Held::Guard)),
            None => tokio::time::timeout(wait, election.campaign(format!("worker-{id}")))
                .await
                .map(|r| r.map(Held::Leader)),
        };
        let held = match acquired {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                log.failed += 1;
                tracing::debug!(worker = id, error = %e, "chaos: acquisition failed");
                // A short backoff while the backend is away.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                log.failed += 1;
                continue;
            }
        };
        let granted_at = Instant::now();
        let token = held.token();
        let hold_name = format!("worker{id}/round{round}/token{token}");
        let mut lost_at = None;
        for _ in 0..plan.writes_per_hold {
            tokio::select! {
                biased;
                _ = held.lost() => {
                    lost_at = Some(Instant::now());
                    break;
                }
                () = tokio::time::sleep(plan.work) => {}
            }
            match resource.write(&hold_name, token) {
                Ok(()) => {}
                Err(Error::Conflict { .. }) => {
                    log.refused += 1;
                    // A newer holder wrote: this hold must learn it is lost.
                    let limit = plan.ttl + LOSS_MARGIN;
                    if tokio::time::timeout(limit, held.lost()).await.is_err() {
                        panic!(
                            "{hold_name}: refused by fencing, but lost() did not resolve within {limit:?}"
                        );
                    }
                    lost_at = Some(Instant::now());
                    break;
                }
                Err(e) => panic!("{hold_name}: unexpected write error {e}"),
            }
        }
        let ended_at = lost_at.unwrap_or_else(Instant::now);
        let believed_until = ended_at.min(held.valid_until());
        if lost_at.is_none() {
            // Released (or already gone: the release says so, harmlessly).
            let _ = tokio::time::timeout(plan.ttl, held.release()).await;
        }
        log.holds.push(Hold {
            worker: id,
            token,
            granted_at,
            believed_until,
            lost_at,
            end: if lost_at.is_some() {
                HoldEnd::Lost
            } else {
                HoldEnd::Released
            },
        });
    }
    log
}

/// A grant of either shape.
enum Held {
    Guard(crate::lock::LockGuard),
    Leader(crate::lock::Leadership),
}

impl Held {
    fn token(&self) -> FencingToken {
        match self {
            Held::Guard(g) => g.fencing_token(),
            Held::Leader(l) => l.fencing_token(),
        }
    }

    async fn lost(&self) -> Error {
        match self {
            Held::Guard(g) => g.lost().await,
            Held::Leader(l) => l.lost().await,
        }
    }

    fn valid_until(&self) -> Instant {
        match self {
            Held::Guard(g) => g.valid_until(),
            Held::Leader(l) => l.guard().valid_until(),
        }
    }

    async fn release(self) {
        let _ = match self {
            Held::Guard(g) => g.release().await,
            Held::Leader(l) => l.resign().await,
        };
    }
}

/// A holder's process dies while another waits (give a semaphore one
/// permit, so that the waiter must wait): `holder` (a client whose
/// link `kill` cuts for good, as a crashed process's would be) takes the
/// lock of `kind`, `waiter` starts waiting for it, then `kill` runs. Reports
/// the time from the death to the waiter's grant (the target is at most
/// the TTL and a second), and as an overlap a grant before the dead
/// holder's validity ended.
pub async fn holder_death<K>(
    plan: &ChaosPlan,
    scenario: &str,
    kind: ChaosKind,
    holder: LockClient,
    waiter: LockClient,
    kill: K,
) -> ScenarioReport
where
    K: Future<Output = ()>,
{
    let name = format!("chaos/{:08x}/death-{}", fastrand::u32(..), kind.label());
    let acquire = |client: &LockClient, who: &str| {
        let (client, who, name) = (client.clone(), who.to_owned(), name.clone());
        let ttl = plan.ttl;
        async move {
            match kind {
                ChaosKind::Election => client
                    .election(&name)
                    .ttl(ttl)
                    .build()
                    .campaign(who)
                    .await
                    .map(Held::Leader),
                _ => {
                    let builder = client.lock(&name).ttl(ttl).wait_forever();
                    let builder = match kind {
                        ChaosKind::Fair => builder.fair(),
                        ChaosKind::Semaphore(n) => builder.semaphore(n),
                        _ => builder,
                    };
                    builder.build().acquire().await.map(Held::Guard)
                }
            }
        }
    };
    let origin = Instant::now();
    let held = acquire(&holder, "doomed")
        .await
        .expect("the holder acquires");
    let waiting = tokio::spawn(acquire(&waiter, "successor"));
    // Let the waiter queue up behind the holder.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "{scenario}: the waiter got in while the lock was held"
    );
    kill.await;
    let died = Instant::now();
    let limit = plan.ttl + LOSS_MARGIN;
    let lost = tokio::time::timeout(limit, held.lost()).await.is_ok();
    let lost_at = Instant::now();
    let next = tokio::time::timeout(plan.ttl * 3 + LOSS_MARGIN, waiting).await;
    let granted_at = Instant::now();
    let successor = match next {
        Ok(Ok(Ok(held))) => Some(held),
        _ => None,
    };
    let dead_hold = Hold {
        worker: 0,
        token: held.token(),
        granted_at: origin,
        believed_until: held.valid_until().min(lost_at),
        lost_at: lost.then_some(lost_at),
        end: HoldEnd::Lost,
    };
    let mut holds = vec![dead_hold];
    let mut audit_violations = Vec::new();
    if let Some(s) = &successor {
        holds.push(Hold {
            worker: 1,
            token: s.token(),
            granted_at,
            believed_until: granted_at,
            lost_at: None,
            end: HoldEnd::Released,
        });
        if s.token() <= held.token() {
            audit_violations.push(format!(
                "the successor's token {} is not above the dead holder's {}",
                s.token(),
                held.token()
            ));
        }
    }
    if !lost {
        audit_violations.push(format!(
            "the dead holder was not told of the loss within {limit:?}"
        ));
    }
    let audit = FenceAudit::new();
    for h in &holds {
        audit.record(&format!("worker{}", h.worker), h.token);
    }
    let report = ScenarioReport {
        scenario: scenario.to_owned(),
        kind: kind.label(),
        duration: origin.elapsed(),
        acquisitions: holds.len() as u64,
        failed_acquisitions: u64::from(successor.is_none()),
        overlaps: overlaps(&holds, 1, origin),
        audit_violations,
        next_grant_after_fault: successor.as_ref().map(|_| granted_at - died),
        next_grant_after_heal: successor.as_ref().map(|_| granted_at - died),
        overlaps_allowed: false,
        control_caught: negative_control(&holds, 1, &audit, origin),
        ..ScenarioReport::default()
    };
    if let Some(s) = successor {
        s.release().await;
    }
    report
}
