//! Safety under faults: [`FenceAudit`], a checker of the writes a fenced
//! resource accepted, and the workloads the backends' fault tests share.
//!
//! The audit sees only **accepted** writes, in acceptance order, each as
//! (hold, token), where a *hold* names one grant of the lock (one holder's
//! one acquisition). With fencing, the accepted writes of successive holds
//! never interleave and their tokens never go backwards, whatever happened
//! to the locks (a restart that forgot them, a paused server, a paused
//! holder). Without fencing, a holder that lost its lock and writes late
//! breaks both rules, and the audit says so:
//!
//! ```
//! use coord_core::FencingToken;
//! use coord_core::testkit::{AuditedResource, Fencing};
//!
//! let t = FencingToken::new;
//! for (fencing, clean) in [(Fencing::On, true), (Fencing::Off, false)] {
//!     let r = AuditedResource::new(fencing);
//!     r.write("a#1", t(1)).unwrap();
//!     r.write("b#2", t(2)).unwrap(); // a lost its lock; b got it
//!     let late = r.write("a#1", t(1)); // a, paused meanwhile, writes late
//!     assert_eq!(late.is_ok(), !clean);
//!     assert_eq!(r.audit().violations().is_empty(), clean);
//! }
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::fence::FencedResource;
use crate::lock::{FencingToken, LockClient};
use crate::testkit::{Fault, FaultyLockBackend, LockHarness, LockOp, unique_name, within};

/// Records every write a fenced resource accepted, as (hold, token), in
/// acceptance order, and reports two kinds of violation:
///
/// * **went backwards**: a token lower than one accepted before it;
/// * **interleaving**: the writes of a hold resume after another hold has
///   written (A's writes, then B's, then A's again); and a new hold whose
///   first token is not greater than every earlier hold's (two grants
///   sharing a token).
///
/// A *hold* is one grant: name it so that two acquisitions never share a
/// name, for instance `"{holder}/{round}"`. Call [`record`](Self::record)
/// from inside the resource's critical section (as [`AuditedResource`]
/// does), so the order recorded is the order of acceptance.
#[derive(Debug)]
pub struct FenceAudit {
    state: Mutex<AuditState>,
    accepted: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct AuditState {
    writes: Vec<(String, FencingToken)>,
    newest: Option<FencingToken>,
    /// The hold that wrote last.
    current: Option<String>,
    /// Holds after whose writes another hold has written.
    finished: HashSet<String>,
    violations: Vec<String>,
}

impl Default for FenceAudit {
    fn default() -> Self {
        FenceAudit {
            state: Mutex::default(),
            accepted: watch::Sender::new(0),
        }
    }
}

impl FenceAudit {
    /// An audit with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the resource accepted a write of `hold` carrying `token`.
    pub fn record(&self, hold: &str, token: FencingToken) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.writes.len() + 1;
        if let Some(newest) = s.newest
            && token < newest
        {
            s.violations.push(format!(
                "went backwards: write #{n} by {hold} carries token {token}, after token \
                 {newest} was accepted"
            ));
        }
        if s.current.as_deref() != Some(hold) {
            if s.finished.contains(hold) {
                let last = s.current.clone().unwrap_or_default();
                s.violations.push(format!(
                    "interleaving: write #{n} by {hold} (token {token}) was accepted after \
                     {last} had written since {hold}'s earlier writes"
                ));
            } else if let Some(newest) = s.newest
                && token == newest
            {
                s.violations.push(format!(
                    "shared token: write #{n} by the new hold {hold} carries token {token}, \
                     not greater than the token {newest} of an earlier hold"
                ));
            }
            if let Some(previous) = s.current.replace(hold.to_owned()) {
                s.finished.insert(previous);
            }
        }
        s.newest = s.newest.max(Some(token));
        s.writes.push((hold.to_owned(), token));
        drop(s);
        self.accepted.send_modify(|count| *count += 1);
    }

    /// How many accepted writes were recorded.
    pub fn accepted(&self) -> u64 {
        *self.accepted.borrow()
    }

    /// Waits until at least `n` accepted writes were recorded.
    pub async fn wait_for_accepted(&self, n: u64) {
        let mut rx = self.accepted.subscribe();
        // The sender lives in `self`, so the channel cannot close meanwhile.
        let _ = rx.wait_for(|count| *count >= n).await;
    }

    /// Every accepted write, in order.
    pub fn writes(&self) -> Vec<(String, FencingToken)> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writes
            .clone()
    }

    /// Every violation found so far.
    pub fn violations(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .violations
            .clone()
    }
}

/// Whether an [`AuditedResource`] checks fencing tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// A write with an older token than the newest accepted is refused
    /// ([`FencedResource`]).
    On,
    /// Every write is accepted: the negative control, which shows that the
    /// audit fails when fencing is missing.
    Off,
}

/// A counter that holders increment, fenced or not, with a [`FenceAudit`]
/// of its accepted writes (recorded inside the resource's critical section,
/// so in acceptance order).
#[derive(Debug)]
pub struct AuditedResource {
    fencing: Fencing,
    fenced: FencedResource<u64>,
    unfenced: Mutex<u64>,
    audit: FenceAudit,
}

impl AuditedResource {
    /// A resource at 0, with nothing recorded.
    pub fn new(fencing: Fencing) -> Self {
        AuditedResource {
            fencing,
            fenced: FencedResource::new(0),
            unfenced: Mutex::new(0),
            audit: FenceAudit::new(),
        }
    }

    /// One write of `hold` with `token`: recorded and applied when accepted;
    /// [`Error::Conflict`] (nothing recorded or changed) when fencing refuses it.
    pub fn write(&self, hold: &str, token: FencingToken) -> Result<()> {
        match self.fencing {
            Fencing::On => self.fenced.apply(token, |n| {
                self.audit.record(hold, token);
                *n += 1;
            }),
            Fencing::Off => {
                let mut n = self.unfenced.lock().unwrap_or_else(|e| e.into_inner());
                self.audit.record(hold, token);
                *n += 1;
                Ok(())
            }
        }
    }

    /// The value: the number of accepted writes.
    pub fn value(&self) -> u64 {
        match self.fencing {
            Fencing::On => self.fenced.read(|n| *n),
            Fencing::Off => *self.unfenced.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// The audit of the accepted writes.
    pub fn audit(&self) -> &FenceAudit {
        &self.audit
    }
}

/// How long after its lease's TTL a holder may take to learn the lock is
/// lost (a renewal refused, or its validity passing), on a busy machine.
pub const LOSS_MARGIN: Duration = Duration::from_secs(3);

/// Several holders, each with its own [`LockClient`], taking one lease lock
/// in rounds: acquire, then `writes_per_round` times (some `work`, then one
/// write carrying the guard's fencing token to a shared [`AuditedResource`]),
/// then release. A holder stops its round as soon as `guard.lost()`
/// resolves, and a holder whose write is refused must see `lost()` resolve
/// within the TTL and [`LOSS_MARGIN`] (the test fails otherwise).
///
/// Backend errors while acquiring (a server restarting or paused) are
/// retried after the poll interval until `deadline`.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The lock's name.
    pub lock: String,
    /// Rounds per holder.
    pub rounds: usize,
    /// Writes per round.
    pub writes_per_round: usize,
    /// The work before each write.
    pub work: Duration,
    /// The lease TTL.
    pub ttl: Duration,
    /// The waiters' poll interval (and the pause between failed acquisitions).
    pub poll_interval: Duration,
    /// How long the whole workload may take.
    pub deadline: Duration,
}

impl Workload {
    /// A workload on a fresh lock: 2 rounds of 5 writes, 10 ms of work each,
    /// a 1 s TTL, a 50 ms poll interval and a 60 s deadline.
    pub fn new() -> Self {
        Workload {
            lock: unique_name("fenced-workload"),
            rounds: 2,
            writes_per_round: 5,
            work: Duration::from_millis(10),
            ttl: Duration::from_secs(1),
            poll_interval: Duration::from_millis(50),
            deadline: Duration::from_secs(60),
        }
    }

    /// Runs one holder per client until each has done its rounds.
    pub async fn run(
        &self,
        clients: Vec<LockClient>,
        resource: Arc<AuditedResource>,
    ) -> WorkloadReport {
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let (w, resource) = (self.clone(), resource.clone());
                tokio::spawn(async move { w.holder(format!("holder{i}"), client, &resource).await })
            })
            .collect();
        let mut report = WorkloadReport::default();
        within(self.deadline, "every holder finishes its rounds", async {
            for task in tasks {
                match task.await {
                    Ok(r) => report.add(&r),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => panic!("a holder task was cancelled: {e}"),
                }
            }
        })
        .await;
        report
    }

    async fn holder(
        &self,
        id: String,
        client: LockClient,
        resource: &AuditedResource,
    ) -> WorkloadReport {
        let lock = client
            .lock(self.lock.clone())
            .ttl(self.ttl)
            .poll_interval(self.poll_interval)
            .build();
        let mut report = WorkloadReport::default();
        for round in 0..self.rounds {
            let guard = loop {
                match lock.acquire().await {
                    Ok(guard) => break guard,
                    Err(e) if e.is_retryable() => {
                        report.errors += 1;
                        // A backoff between attempts while the server is away.
                        tokio::time::sleep(self.poll_interval).await;
                    }
                    Err(e) => panic!("{id}: acquire failed: {e}"),
                }
            };
            let token = guard.fencing_token();
            let hold = format!("{id}/round{round}/token{token}");
            let mut lost = false;
            for _ in 0..self.writes_per_round {
                tokio::select! {
                    biased;
                    e = guard.lost() => {
                        report.losses.push(format!("{hold}: {e}"));
                        lost = true;
                        break;
                    }
                    () = tokio::time::sleep(self.work) => {}
                }
                match resource.write(&hold, token) {
                    Ok(()) => report.accepted += 1,
                    Err(Error::Conflict { .. }) => {
                        report.refused += 1;
                        // A newer holder has written: this one's lease is gone,
                        // and it must learn so.
                        let e = within(
                            guard.ttl() + LOSS_MARGIN,
                            &format!("{hold}, refused by fencing, observes the loss of its lock"),
                            guard.lost(),
                        )
                        .await;
                        report.losses.push(format!("{hold} (refused): {e}"));
                        lost = true;
                        break;
                    }
                    Err(e) => panic!("{hold}: unexpected write error {e}"),
                }
            }
            if lost {
                assert!(!guard.is_held(), "{hold}: lost, but still held");
                report.lost += 1;
            }
            match guard.release().await {
                Ok(()) => {}
                Err(Error::NotHeld(_)) => report.released_not_held += 1,
                Err(_) => report.errors += 1,
            }
            report.rounds += 1;
        }
        report
    }
}

impl Default for Workload {
    fn default() -> Self {
        Self::new()
    }
}

/// What the holders of a [`Workload`] saw, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadReport {
    /// Rounds done.
    pub rounds: u64,
    /// Writes accepted.
    pub accepted: u64,
    /// Writes refused by fencing (each holder observed its loss afterwards).
    pub refused: u64,
    /// Rounds that ended with `guard.lost()` resolved.
    pub lost: u64,
    /// Releases answered with [`Error::NotHeld`]: the lease was gone.
    pub released_not_held: u64,
    /// Backend errors (acquisitions retried, releases failed).
    pub errors: u64,
    /// Why each lost round's lock was lost (`hold: reason`).
    pub losses: Vec<String>,
}

impl WorkloadReport {
    fn add(&mut self, other: &WorkloadReport) {
        self.rounds += other.rounds;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.lost += other.lost;
        self.released_not_held += other.released_not_held;
        self.errors += other.errors;
        self.losses.extend(other.losses.iter().cloned());
    }
}

/// What [`paused_holder`] saw.
#[derive(Debug)]
pub struct PausedHolderReport {
    /// The paused holder's token.
    pub stale_token: FencingToken,
    /// The late write of the paused holder, after the others had written.
    pub late_write: Result<()>,
    /// Whether the paused holder's `guard.lost()` resolved afterwards (and
    /// `is_held()` was false).
    pub observed_loss: bool,
    /// What the other holders saw.
    pub others: WorkloadReport,
    /// Every accepted write, in order.
    pub writes: Vec<(String, FencingToken)>,
    /// The audit's violations.
    pub violations: Vec<String>,
}

/// A holder stalls past its TTL (a GC pause) between two writes; another
/// holder gets the lock meanwhile and writes; then the stalled holder
/// resumes and writes with its old token.
///
/// The first holder's client goes through a [`FaultyLockBackend`] whose
/// renewals fail during the stall (the whole process stands still, its
/// watchdog too); its task awaits the other holders (2 clients, one round of
/// 3 writes each, [`Workload`]) and so resumes only after they wrote. With
/// [`Fencing::On`] the late write must be refused and the audit stay clean;
/// with [`Fencing::Off`] the audit must report it.
pub async fn paused_holder(
    h: &dyn LockHarness,
    ttl: Duration,
    fencing: Fencing,
) -> PausedHolderReport {
    let resource = Arc::new(AuditedResource::new(fencing));
    let others = Workload {
        lock: unique_name("paused-holder"),
        rounds: 1,
        writes_per_round: 3,
        work: Duration::from_millis(5),
        ttl,
        ..Workload::new()
    };
    let stalled = Arc::new(FaultyLockBackend::new(h.new_backend().await));
    let client = LockClient::new(stalled.clone());
    let guard = within(
        Duration::from_secs(30),
        "the first holder acquires",
        client.lock(others.lock.clone()).ttl(ttl).build().acquire(),
    )
    .await
    .expect("the first holder acquires a free lock");
    let token = guard.fencing_token();
    let hold = format!("paused/token{token}");
    for _ in 0..2 {
        resource
            .write(&hold, token)
            .expect("the first holder's writes before the stall are accepted");
    }

    // The stall: nothing of this holder runs, not even its watchdog, until
    // the others have taken the lock (after its lease ran out) and written.
    stalled.inject(LockOp::Renew, Fault::Unavailable);
    let clients = vec![
        LockClient::new(h.new_backend().await),
        LockClient::new(h.new_backend().await),
    ];
    let others_report = others.run(clients, resource.clone()).await;
    stalled.clear();

    // It resumes where it was: writing, with the token of its lost grant.
    let late_write = resource.write(&hold, token);
    within(
        ttl + LOSS_MARGIN,
        "the paused holder observes the loss of its lock",
        guard.lost(),
    )
    .await;
    let observed_loss = !guard.is_held();
    // Its lock is gone (or someone else's): NotHeld is the expected answer.
    let _ = guard.release().await;
    PausedHolderReport {
        stale_token: token,
        late_write,
        observed_loss,
        others: others_report,
        writes: resource.audit().writes(),
        violations: resource.audit().violations(),
    }
}

/// The paused-holder scenario with fencing on, checked the same way on every
/// backend: the late write is refused, the audit stays clean, the paused
/// holder observes `lost()`, and every later write carries a newer token.
pub async fn paused_holder_is_refused_by_fencing(
    h: &dyn LockHarness,
    ttl: Duration,
) -> PausedHolderReport {
    let r = within(
        Duration::from_secs(30),
        "the scenario ends",
        paused_holder(h, ttl, Fencing::On),
    )
    .await;
    assert_eq!(r.violations, Vec::<String>::new(), "{:?}", r.writes);
    assert!(
        matches!(r.late_write, Err(Error::Conflict { .. })),
        "{:?}",
        r.late_write
    );
    assert!(r.observed_loss, "the paused holder must see lost()");
    // Its 2 writes before the stall, then 2 holders × 3 writes.
    assert_eq!(r.others.accepted, 6, "{:?}", r.others);
    assert_eq!(r.writes.len(), 8);
    assert!(r.writes[2..].iter().all(|(_, t)| *t > r.stale_token));
    r
}

/// The negative control: the same scenario without fencing must make the
/// audit report the late write, proving the checker can fail.
pub async fn unfenced_paused_holder_breaks_the_audit(
    h: &dyn LockHarness,
    ttl: Duration,
) -> PausedHolderReport {
    let r = within(
        Duration::from_secs(30),
        "the scenario ends",
        paused_holder(h, ttl, Fencing::Off),
    )
    .await;
    assert!(r.late_write.is_ok(), "nothing refuses it without fencing");
    assert!(r.observed_loss);
    assert!(
        r.violations.iter().any(|v| v.starts_with("interleaving")),
        "{:?}",
        r.violations
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> FencingToken {
        FencingToken::new(n)
    }

    #[test]
    fn successive_holds_with_growing_tokens_are_clean() {
        let a = FenceAudit::new();
        a.record("a", t(1));
        a.record("a", t(1));
        a.record("b", t(3));
        a.record("c", t(7));
        a.record("c", t(7));
        assert_eq!(a.violations(), Vec::<String>::new());
        assert_eq!(a.accepted(), 5);
        assert_eq!(a.writes()[2], ("b".to_owned(), t(3)));
    }

    #[test]
    fn a_token_going_backwards_is_a_violation() {
        let a = FenceAudit::new();
        a.record("a", t(5));
        a.record("b", t(4));
        let v = a.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].starts_with("went backwards") && v[0].contains("b"),
            "{v:?}"
        );
    }

    #[test]
    fn a_hold_resuming_after_another_is_a_violation() {
        let a = FenceAudit::new();
        a.record("a", t(5));
        a.record("b", t(6));
        a.record("a", t(5));
        let v = a.violations();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].starts_with("went backwards"), "{v:?}");
        assert!(
            v[1].starts_with("interleaving") && v[1].contains("after b"),
            "{v:?}"
        );
        // Interleaving alone (equal tokens, as two holds sharing a grant would).
        let a = FenceAudit::new();
        a.record("a", t(5));
        a.record("b", t(5));
        a.record("a", t(5));
        let v = a.violations();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].starts_with("shared token"), "{v:?}");
        assert!(v[1].starts_with("interleaving"), "{v:?}");
    }

    #[test]
    fn fencing_refuses_the_stale_write_and_records_only_accepted_ones() {
        let r = AuditedResource::new(Fencing::On);
        r.write("a", t(1)).unwrap();
        r.write("b", t(2)).unwrap();
        let err = r.write("a", t(1)).unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
        assert_eq!(r.value(), 2);
        assert_eq!(r.audit().accepted(), 2);
        assert_eq!(r.audit().violations(), Vec::<String>::new());
    }

    #[test]
    fn without_fencing_the_audit_fails() {
        let r = AuditedResource::new(Fencing::Off);
        r.write("a", t(1)).unwrap();
        r.write("b", t(2)).unwrap();
        r.write("a", t(1)).unwrap();
        assert_eq!(r.value(), 3);
        assert!(!r.audit().violations().is_empty());
    }

    #[tokio::test]
    async fn waiting_for_accepted_writes_is_woken_by_them() {
        let r = Arc::new(AuditedResource::new(Fencing::On));
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.audit().wait_for_accepted(3).await })
        };
        for i in 0..3 {
            r.write("a", t(i)).unwrap();
        }
        within(Duration::from_secs(5), "the waiter wakes", waiter)
            .await
            .unwrap();
        // Already reached: returns at once.
        r.audit().wait_for_accepted(2).await;
    }
}
