//! What a breaker is configured with, and what it accepts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most probe calls a half-open breaker may permit.
pub const MAX_HALF_OPEN_PROBES: u32 = 65_535;

/// How a [`CircuitBreaker`](super::CircuitBreaker) decides: the rates that
/// open it, over which window, and how it tries again. Every field has a
/// default, so an empty table deserializes to [`BreakerConfig::default`].
/// The defaults are smaller and quicker than resilience4j's (which waits
/// for 100 calls and stays open a minute), to suit one breaker per instance.
///
/// In TOML:
///
/// ```toml
/// failure_rate = 0.5
/// slow_call_rate = 0.8
/// slow_call_duration = "500ms"
/// window = { time = "30s" }   # or { count = 100 }
/// minimum_calls = 20
/// open_for = "10s"
/// half_open_probes = 3
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// The breaker opens when at least this share of the calls in the
    /// window failed (`failures / calls >= failure_rate`), in `(0, 1]`.
    /// Default 0.5.
    pub failure_rate: f64,
    /// The breaker opens when at least this share of the calls in the
    /// window were slow, in `(0, 1]`. Default 1.0: only when every call in
    /// the window was slow, which keeps slowness alone from opening it
    /// unless the instance has stopped answering in time altogether.
    pub slow_call_rate: f64,
    /// A call taking this long or longer is slow (whether it succeeded or
    /// failed). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// Which calls the rates are computed over. Default the last 100 calls.
    pub window: BreakerWindow,
    /// Fewer calls than this in the window never open the breaker, however
    /// many failed. Default 20.
    pub minimum_calls: u32,
    /// How long the breaker stays open before it lets probe calls through
    /// (half-open). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// How many probe calls a half-open breaker permits. A failed probe opens
    /// it again at once; once this many probes have succeeded it closes,
    /// unless their slow share reaches [`slow_call_rate`](Self::slow_call_rate),
    /// which opens it again. At most [`MAX_HALF_OPEN_PROBES`]. Default 3.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: Duration::from_secs(2),
            window: BreakerWindow::default(),
            minimum_calls: 20,
            open_for: Duration::from_secs(10),
            half_open_probes: 3,
        }
    }
}

/// The sliding window a breaker computes its rates over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum BreakerWindow {
    /// The last `n` calls (`{ count = 100 }`).
    Count(u32),
    /// The calls that ended in the last `duration` (`{ time = "30s" }`),
    /// counted in buckets: one per second for windows of 10 s to 60 s,
    /// a tenth of the window below 10 s and a sixtieth above 60 s. A call
    /// leaves the window when its whole bucket has, so the window spans
    /// between `duration - bucket` and `duration`.
    Time(#[serde(with = "humantime_serde")] Duration),
}

impl Default for BreakerWindow {
    fn default() -> Self {
        BreakerWindow::Count(100)
    }
}

fn rate(name: &str, value: f64) -> Result<()> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "breaker {name} must be in (0, 1], got {value}"
        )))
    }
}

impl BreakerConfig {
    /// Checks that the breaker can work with it: rates in `(0, 1]`, a
    /// non-empty window at least `minimum_calls` long (a count window), and
    /// non-zero `slow_call_duration`, `open_for` and `half_open_probes`.
    ///
    /// ```
    /// use coord_core::discovery::breaker::BreakerConfig;
    /// let mut config = BreakerConfig::default();
    /// config.failure_rate = 1.5;
    /// assert!(config.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        rate("failure_rate", self.failure_rate)?;
        rate("slow_call_rate", self.slow_call_rate)?;
        match self.window {
            BreakerWindow::Count(0) => {
                return Err(Error::invalid("breaker window must hold at least one call"));
            }
            BreakerWindow::Count(n) if self.minimum_calls > n => {
                return Err(Error::invalid(format!(
                    "breaker minimum_calls ({}) exceeds its window of {n} calls, \
                     so it could never open",
                    self.minimum_calls
                )));
            }
            BreakerWindow::Time(d) if d.is_zero() => {
                return Err(Error::invalid(
                    "breaker time window must be longer than zero",
                ));
            }
            _ => {}
        }
        if self.slow_call_duration.is_zero() {
            return Err(Error::invalid(
                "breaker slow_call_duration must be longer than zero",
            ));
        }
        if self.open_for.is_zero() {
            return Err(Error::invalid("breaker open_for must be longer than zero"));
        }
        if self.half_open_probes == 0 || self.half_open_probes > MAX_HALF_OPEN_PROBES {
            return Err(Error::invalid(format!(
                "breaker half_open_probes must be in 1..={MAX_HALF_OPEN_PROBES}, got {}",
                self.half_open_probes
            )));
        }
        Ok(())
    }
}
