//! How a breaker moves: recording outcomes, deciding, and the transitions
//! themselves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::state::Word;
use super::window::Totals;
use super::{BreakerState, BreakerTransition, CircuitBreaker, Inner};

impl CircuitBreaker {
    /// Records the outcome of a call permitted in generation `generation`.
    pub(super) fn record(&self, generation: u32, failed: bool, latency: Duration) {
        let config = &self.shared.config;
        let slow = latency >= config.slow_call_duration;
        if let Some(m) = self.shared.metrics.get() {
            match (failed, slow) {
                (true, _) => m.failure.inc(),
                (false, true) => m.slow.inc(),
                (false, false) => m.success.inc(),
            }
        }
        let mut inner = self.lock();
        let now = Instant::now();
        inner.calls += 1;
        inner.failures += u64::from(failed);
        inner.slow_calls += u64::from(slow);
        if generation != inner.generation {
            return;
        }
        let next = match inner.state {
            BreakerState::Closed => {
                let at = self.nanos(now);
                inner.window.record(at, failed, slow);
                let totals = inner.window.totals(at);
                self.tripped(totals)
                    .map(|reason| (BreakerState::Open, Some(reason)))
            }
            BreakerState::HalfOpen if failed => {
                Some((BreakerState::Open, Some("a probe call failed".to_owned())))
            }
            BreakerState::HalfOpen => {
                inner.probes_ok += 1;
                inner.probes_slow += u32::from(slow);
                let probes = config.half_open_probes;
                (inner.probes_ok >= probes).then(|| {
                    let slow_rate = f64::from(inner.probes_slow) / f64::from(probes);
                    if slow_rate >= config.slow_call_rate {
                        let reason = format!(
                            "{} of {probes} probe calls took {:?} or longer",
                            inner.probes_slow, config.slow_call_duration
                        );
                        (BreakerState::Open, Some(reason))
                    } else {
                        (BreakerState::Closed, None)
                    }
                })
            }
            BreakerState::Open => None,
        };
        if let Some((to, reason)) = next {
            self.transition(&mut inner, to, now, reason.as_deref());
            drop(inner);
            self.shared.hooks.deliver();
        }
    }

    /// Why the closed window's `totals` open the breaker, if they do.
    fn tripped(&self, totals: Totals) -> Option<String> {
        let config = &self.shared.config;
        if totals.calls == 0 || totals.calls < config.minimum_calls {
            return None;
        }
        let calls = f64::from(totals.calls);
        if f64::from(totals.failures) / calls >= config.failure_rate {
            return Some(format!(
                "{} of the last {} calls failed",
                totals.failures, totals.calls
            ));
        }
        (f64::from(totals.slow) / calls >= config.slow_call_rate).then(|| {
            format!(
                "{} of the last {} calls took {:?} or longer",
                totals.slow, totals.calls, config.slow_call_duration
            )
        })
    }

    /// Moves to `to`: a new generation, an empty window and tally, the
    /// atomic word, the watch, the metrics, and a transition queued for the
    /// hooks (delivered by the caller once the lock is released).
    pub(super) fn transition(
        &self,
        inner: &mut Inner,
        to: BreakerState,
        now: Instant,
        reason: Option<&str>,
    ) {
        let s = &self.shared;
        let from = inner.state;
        inner.state = to;
        inner.generation = inner.generation.wrapping_add(1);
        inner.window.clear();
        inner.probes_ok = 0;
        inner.probes_slow = 0;
        inner.transitions += 1;
        let free = if to == BreakerState::HalfOpen {
            s.config.half_open_probes
        } else {
            0
        };
        if to == BreakerState::Open {
            let until = self
                .nanos(now)
                .saturating_add(s.config.open_for.as_nanos() as u64);
            s.open_until_ns.store(until, Ordering::Relaxed);
        }
        s.word
            .store(Word::new(inner.generation, to, free).0, Ordering::Release);
        if let Some(m) = s.metrics.get() {
            m.state.set(to.gauge_value());
            m.transition(from.as_str(), to.as_str());
        }
        s.state_tx.send_replace(to);
        s.hooks.push(BreakerTransition { from, to, at: now });
        match reason {
            Some(reason) => {
                tracing::warn!(breaker = %s.name, %from, %to, reason, "circuit breaker state changed")
            }
            None => tracing::info!(breaker = %s.name, %from, %to, "circuit breaker state changed"),
        }
        if to == BreakerState::Open
            && s.auto_half_open.load(Ordering::Relaxed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let breaker = Arc::downgrade(&self.shared);
            let at = now + s.config.open_for;
            runtime.spawn(async move {
                tokio::time::sleep_until(at).await;
                if let Some(shared) = breaker.upgrade() {
                    CircuitBreaker { shared }.state();
                }
            });
        }
    }

    /// Returns a probe slot taken in generation `generation`, unless the
    /// breaker has left that half-open period.
    pub(super) fn release_probe(&self, generation: u32) {
        let mut w = Word(self.shared.word.load(Ordering::Acquire));
        while w.state() == BreakerState::HalfOpen && w.generation() == generation {
            let freed = w.with_free(w.free() + 1);
            match self.shared.word.compare_exchange_weak(
                w.0,
                freed.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => w = Word(actual),
            }
        }
    }
}
