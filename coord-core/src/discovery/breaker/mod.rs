//! A circuit breaker, per service instance or on its own (after
//! resilience4j's `CircuitBreaker`).
//!
//! * **Closed**: calls go through and their outcomes fill a sliding window
//!   ([`BreakerWindow`]). Once the window holds at least `minimum_calls`
//!   calls, a failure share of at least `failure_rate` or a slow share of at
//!   least `slow_call_rate` opens the breaker. Rates are checked when a call
//!   is recorded.
//! * **Open**: calls are refused with [`Error::CircuitOpen`] for `open_for`.
//!   The breaker then becomes half-open lazily, when [`state`],
//!   [`permits`] or [`try_call`] next looks at it (or at the deadline
//!   itself, with [`with_auto_half_open`]).
//! * **Half-open**: `half_open_probes` probe calls are permitted. A failed
//!   probe opens the breaker again at once, for a fresh `open_for`. When all
//!   the probes have succeeded it closes with an empty window, unless their
//!   slow share reaches `slow_call_rate`, which opens it again. A probe
//!   permit dropped without an outcome (a cancelled call) frees its slot.
//!
//! Outcomes only count in the state they were permitted in: a call let
//! through while closed that ends after the breaker opened is counted in
//! [`stats`](CircuitBreaker::stats) and the metrics, but decides nothing.
//!
//! [`state`]: CircuitBreaker::state
//! [`permits`]: CircuitBreaker::permits
//! [`try_call`]: CircuitBreaker::try_call
//! [`with_auto_half_open`]: CircuitBreaker::with_auto_half_open

mod config;
mod notify;
mod permit;
mod state;
#[cfg(test)]
mod tests;
mod transition;
mod window;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use config::{BreakerConfig, BreakerWindow, MAX_HALF_OPEN_PROBES};
pub use permit::{BreakerError, BreakerPermit};
pub use state::{BreakerState, BreakerStats, BreakerTransition};

use crate::error::{Error, Result};
use crate::metrics::{BreakerSeries, Metrics};
use notify::Hooks;
use state::Word;
use window::Window;

/// A circuit breaker (see the [module docs](self) for its states). Cheap to
/// clone: clones share one breaker.
///
/// [`permits`](Self::permits) is lock-free, for a balancer's pick path;
/// recording an outcome takes a short lock on the window.
///
/// ```
/// use std::time::Duration;
/// use coord_core::Error;
/// use coord_core::discovery::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
///
/// let mut config = BreakerConfig::default();
/// config.minimum_calls = 4;
/// let breaker = CircuitBreaker::new("orders-1", config)?;
///
/// for _ in 0..4 {
///     let permit = breaker.try_call()?;
///     // ... the call fails after 5 ms:
///     permit.failure(Duration::from_millis(5));
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(!breaker.permits());
/// assert!(matches!(breaker.try_call(), Err(Error::CircuitOpen(_))));
/// assert_eq!(breaker.stats().rejected, 1);
/// # Ok::<_, Error>(())
/// ```
///
/// Or let [`call`](Self::call) take the permit, time the call and record it:
///
/// ```
/// # use coord_core::discovery::breaker::{BreakerConfig, BreakerError, CircuitBreaker};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let breaker = CircuitBreaker::new("orders-1", BreakerConfig::default())?;
/// let reply = breaker.call(async { Ok::<_, std::io::Error>("pong") }).await;
/// assert_eq!(reply.ok(), Some("pong"));
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    config: BreakerConfig,
    /// The origin of the nanosecond times below and of the window's.
    born: Instant,
    /// State, generation and free probe slots ([`Word`]); written under
    /// `inner`'s lock on transitions, slots taken and returned by CAS.
    word: AtomicU64,
    /// When an open breaker may half-open, in nanoseconds since `born`;
    /// stored before `word` on the transition to open.
    open_until_ns: AtomicU64,
    rejected: AtomicU64,
    auto_half_open: AtomicBool,
    inner: Mutex<Inner>,
    state_tx: watch::Sender<BreakerState>,
    hooks: Hooks,
    metrics: OnceLock<BreakerSeries>,
}

/// What the record path changes, under one lock.
struct Inner {
    state: BreakerState,
    generation: u32,
    window: Window,
    /// Probes of this half-open period that succeeded, and the slow ones.
    probes_ok: u32,
    probes_slow: u32,
    calls: u64,
    failures: u64,
    slow_calls: u64,
    transitions: u64,
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the `breaker` label of its metrics,
    /// and named in its errors). Fails if `config` does not
    /// [validate](BreakerConfig::validate).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Result<CircuitBreaker> {
        config.validate()?;
        let name = name.into();
        Ok(CircuitBreaker {
            shared: Arc::new(Shared {
                born: Instant::now(),
                word: AtomicU64::new(Word::new(0, BreakerState::Closed, 0).0),
                open_until_ns: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                auto_half_open: AtomicBool::new(false),
                inner: Mutex::new(Inner {
                    state: BreakerState::Closed,
                    generation: 0,
                    window: Window::new(config.window),
                    probes_ok: 0,
                    probes_slow: 0,
                    calls: 0,
                    failures: 0,
                    slow_calls: 0,
                    transitions: 0,
                }),
                state_tx: watch::Sender::new(BreakerState::Closed),
                hooks: Hooks::default(),
                metrics: OnceLock::new(),
                name,
                config,
            }),
        })
    }

    /// Exports the breaker's state, transitions and calls on `metrics`
    /// (`coord_breaker_*`, labelled `breaker="<name>"`). Attach once, before
    /// sharing the breaker; a second call keeps the first metrics. The
    /// series are removed from the registry when the last breaker of this
    /// name exporting them is dropped (a service client's breaker goes with
    /// its instance), so that instances that come and go leave no series
    /// behind.
    #[must_use]
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let name = self.shared.name.as_str();
        let m = metrics.breaker(name);
        let inner = self.lock();
        m.state.set(inner.state.gauge_value());
        if self.shared.metrics.set(m).is_err() {
            tracing::warn!(
                breaker = name,
                "breaker metrics attached twice; keeping the first"
            );
        }
        drop(inner);
        self
    }

    /// With `on`, an open breaker turns half-open when `open_for` has
    /// passed even if nobody asks, so that subscribers and
    /// [`on_change`](Self::on_change) hooks learn it on time: each opening
    /// spawns a timer on the current Tokio runtime (none outside one; the
    /// transition is then lazy). Routing that takes an instance out of the
    /// pick set when its breaker opens needs this to ever put it back.
    #[must_use]
    pub fn with_auto_half_open(self, on: bool) -> Self {
        self.shared.auto_half_open.store(on, Ordering::Relaxed);
        self
    }

    /// The name given to [`new`](Self::new).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The state now; an open breaker whose `open_for` has passed becomes
    /// half-open here.
    pub fn state(&self) -> BreakerState {
        self.current().state()
    }

    /// Whether [`try_call`](Self::try_call) would permit a call now: true
    /// when closed, or half-open with a probe slot free. Lock-free (an
    /// atomic load, and a clock read while open), except once per open
    /// period, when it is the first to see `open_for` passed and makes the
    /// breaker half-open. Does not count a rejection.
    #[inline]
    pub fn permits(&self) -> bool {
        let w = self.current();
        match w.state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => w.free() > 0,
        }
    }

    /// A permit for one call, to report its outcome on; or
    /// [`Error::CircuitOpen`] (counted as rejected) when the breaker is open
    /// or all its half-open probes are taken.
    pub fn try_call(&self) -> Result<BreakerPermit> {
        let mut w = self.current();
        loop {
            match w.state() {
                BreakerState::Closed => {
                    return Ok(BreakerPermit::new(self.clone(), w.generation(), false));
                }
                BreakerState::Open => return Err(self.reject(w)),
                BreakerState::HalfOpen if w.free() == 0 => return Err(self.reject(w)),
                BreakerState::HalfOpen => {
                    let taken = w.with_free(w.free() - 1);
                    match self.shared.word.compare_exchange_weak(
                        w.0,
                        taken.0,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(BreakerPermit::new(self.clone(), w.generation(), true)),
                        Err(actual) => w = Word(actual),
                    }
                }
            }
        }
    }

    /// Runs `call` if the breaker permits it, timing it from its first poll
    /// and recording `Ok` as a success and `Err` as a failure. Refused calls
    /// are [`BreakerError::Rejected`] and never polled; dropping the returned
    /// future mid-call counts as a cancelled call (nothing recorded).
    pub async fn call<T, E, F>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let permit = self.try_call().map_err(BreakerError::Rejected)?;
        let started = Instant::now();
        let result = call.await;
        permit.record(result.is_ok(), started.elapsed());
        result.map_err(BreakerError::Failed)
    }

    /// The latest state, for a listener that only needs that: the receiver
    /// may skip intermediate states if it falls behind. Like
    /// [`state`](Self::state), the value turns half-open lazily (see
    /// [`with_auto_half_open`](Self::with_auto_half_open)).
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.current();
        self.shared.state_tx.subscribe()
    }

    /// Calls `hook` with every later transition, in order, on the thread
    /// that caused it, after the breaker's lock is released (so the hook may
    /// use the breaker). Transitions of several threads are delivered one at
    /// a time by whichever thread is delivering. Keep hooks short; read
    /// [`state`](Self::state) after registering to learn where it starts.
    /// Hooks live as long as the breaker: one that holds a clone of what
    /// owns the breaker keeps both alive.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::sync::atomic::{AtomicBool, Ordering};
    /// # use coord_core::discovery::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("orders-1", BreakerConfig::default())?;
    /// let healthy = Arc::new(AtomicBool::new(true));
    /// let flag = healthy.clone();
    /// breaker.on_change(move |t| flag.store(t.to != BreakerState::Open, Ordering::Relaxed));
    /// # Ok::<_, coord_core::Error>(())
    /// ```
    pub fn on_change(&self, hook: impl Fn(BreakerTransition) + Send + Sync + 'static) {
        self.shared.hooks.add(Arc::new(hook));
    }

    /// When an open breaker becomes half-open; `None` unless open.
    pub fn open_until(&self) -> Option<Instant> {
        let w = Word(self.shared.word.load(Ordering::Acquire));
        (w.state() == BreakerState::Open).then(|| {
            let ns = self.shared.open_until_ns.load(Ordering::Relaxed);
            self.shared.born + Duration::from_nanos(ns)
        })
    }

    /// Counters since the breaker was created.
    pub fn stats(&self) -> BreakerStats {
        self.current();
        let inner = self.lock();
        BreakerStats {
            state: inner.state,
            calls: inner.calls,
            failures: inner.failures,
            slow_calls: inner.slow_calls,
            rejected: self.shared.rejected.load(Ordering::Relaxed),
            transitions: inner.transitions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.shared.born).as_nanos() as u64
    }

    /// The word, after turning an open breaker half-open if it is time.
    #[inline]
    fn current(&self) -> Word {
        let w = Word(self.shared.word.load(Ordering::Acquire));
        if w.state() != BreakerState::Open
            || self.nanos(Instant::now()) < self.shared.open_until_ns.load(Ordering::Relaxed)
        {
            return w;
        }
        self.half_open_if_due();
        Word(self.shared.word.load(Ordering::Acquire))
    }

    #[cold]
    fn half_open_if_due(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.state == BreakerState::Open
            && self.nanos(now) >= self.shared.open_until_ns.load(Ordering::Relaxed)
        {
            self.transition(&mut inner, BreakerState::HalfOpen, now, None);
            drop(inner);
            self.shared.hooks.deliver();
        }
    }

    fn reject(&self, w: Word) -> Error {
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.shared.metrics.get() {
            m.rejected.inc();
        }
        let name = &self.shared.name;
        if w.state() == BreakerState::Open {
            let left = self
                .open_until()
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or_default();
            let left = Duration::from_millis(left.as_millis() as u64);
            Error::CircuitOpen(format!(
                "circuit breaker \"{name}\" is open; it half-opens in {}",
                humantime_serde::re::humantime::format_duration(left)
            ))
        } else {
            Error::CircuitOpen(format!(
                "circuit breaker \"{name}\" is half-open and its {} probe calls are taken",
                self.shared.config.half_open_probes
            ))
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = Word(self.shared.word.load(Ordering::Acquire));
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &w.state())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}
