//! The breaker's states, its transitions and its counters, and the one
//! atomic word that the lock-free paths read.

use std::fmt;

use tokio::time::Instant;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through; their outcomes fill the window.
    Closed,
    /// Calls are refused until `open_for` has passed.
    Open,
    /// A limited number of probe calls go through; their outcomes decide
    /// between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (the metrics' label values).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `coord_breaker_state` gauge: 0 closed, 1 open,
    /// 2 half-open.
    pub fn gauge_value(self) -> i64 {
        i64::from(self.bits())
    }

    fn bits(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_bits(bits: u8) -> BreakerState {
        match bits {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of state, as [`on_change`](super::CircuitBreaker::on_change)
/// hooks receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerTransition {
    /// The state left.
    pub from: BreakerState,
    /// The state entered.
    pub to: BreakerState,
    /// When (Tokio's clock, so paused time in tests).
    pub at: Instant,
}

/// Counters of a breaker since it was created, from
/// [`CircuitBreaker::stats`](super::CircuitBreaker::stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerStats {
    /// The state now.
    pub state: BreakerState,
    /// Calls recorded (permits that reported an outcome).
    pub calls: u64,
    /// Of those, the failed ones.
    pub failures: u64,
    /// Of those, the slow ones (failed or not).
    pub slow_calls: u64,
    /// Calls refused by [`try_call`](super::CircuitBreaker::try_call).
    pub rejected: u64,
    /// State changes.
    pub transitions: u64,
}

/// The state, its generation and the free probe slots in one `u64`, so that
/// taking or returning a probe slot is one compare-and-swap that fails if
/// the breaker has moved on. Bits 0..24: free probe slots; 24..26: state;
/// 32..64: generation (bumped by every transition, wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Word(pub(super) u64);

impl Word {
    const FREE_MASK: u64 = (1 << 24) - 1;

    pub(super) fn new(generation: u32, state: BreakerState, free: u32) -> Word {
        debug_assert!(u64::from(free) <= Self::FREE_MASK);
        Word(
            (u64::from(generation) << 32)
                | (u64::from(state.bits()) << 24)
                | (u64::from(free) & Self::FREE_MASK),
        )
    }

    pub(super) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub(super) fn state(self) -> BreakerState {
        BreakerState::from_bits(((self.0 >> 24) & 0b11) as u8)
    }

    pub(super) fn free(self) -> u32 {
        (self.0 & Self::FREE_MASK) as u32
    }

    /// This word with `free` free probe slots.
    pub(super) fn with_free(self, free: u32) -> Word {
        Word::new(self.generation(), self.state(), free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_round_trips() {
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            let w = Word::new(u32::MAX, state, 65_535);
            assert_eq!(
                (w.generation(), w.state(), w.free()),
                (u32::MAX, state, 65_535)
            );
            assert_eq!(w.with_free(2).free(), 2);
            assert_eq!(w.with_free(2).state(), state);
        }
    }
}
