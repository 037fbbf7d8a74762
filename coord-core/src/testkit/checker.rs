//! A shared checker that fails on overlapping holders or fencing tokens going backwards.

use std::sync::Mutex;

use crate::lock::FencingToken;

/// Records entries into and exits from a critical section. Any overlap, or a
/// token not greater than the previous holder's, is recorded as a violation.
#[derive(Debug, Default)]
pub struct ExclusionChecker {
    state: Mutex<CheckerState>,
}

#[derive(Debug, Default)]
struct CheckerState {
    inside: Option<FencingToken>,
    last: Option<FencingToken>,
    entries: u64,
    violations: Vec<String>,
}

impl ExclusionChecker {
    /// A checker with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// A holder with `token` enters the critical section.
    pub fn enter(&self, token: FencingToken) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.entries += 1;
        if let Some(other) = s.inside {
            s.violations.push(format!(
                "token {token} entered while token {other} was inside"
            ));
        }
        if let Some(last) = s.last
            && token <= last
        {
            s.violations.push(format!(
                "token {token} is not greater than the previous {last}"
            ));
        }
        s.inside = Some(token);
        s.last = Some(token);
    }

    /// The holder with `token` leaves.
    pub fn exit(&self, token: FencingToken) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.inside == Some(token) {
            s.inside = None;
        }
    }

    /// How many entries were recorded.
    pub fn entries(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).entries
    }

    /// Every violation seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .violations
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_backwards_tokens_are_caught() {
        let c = ExclusionChecker::new();
        c.enter(FencingToken::new(1));
        c.exit(FencingToken::new(1));
        c.enter(FencingToken::new(2));
        assert!(c.violations().is_empty());
        c.enter(FencingToken::new(3)); // overlaps 2
        c.exit(FencingToken::new(3));
        c.enter(FencingToken::new(3)); // not increasing
        assert_eq!(c.violations().len(), 2, "{:?}", c.violations());
        assert_eq!(c.entries(), 4);
    }
}
