//! Property tests of the circuit breaker's closed state against a model:
//! over a count window, it opens exactly when the window holds at least
//! `minimum_calls` calls and their failure share reaches `failure_rate`,
//! and not before.

use std::collections::VecDeque;
use std::time::Duration;

use coord_core::discovery::breaker::{BreakerConfig, BreakerState, BreakerWindow, CircuitBreaker};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn opens_exactly_when_the_model_says(
        window in 1u32..40,
        minimum in 1u32..40,
        rate_pct in 1u32..=100,
        outcomes in proptest::collection::vec(any::<bool>(), 0..200),
    ) {
        let minimum = minimum.min(window);
        let mut config = BreakerConfig::default();
        config.window = BreakerWindow::Count(window);
        config.minimum_calls = minimum;
        config.failure_rate = f64::from(rate_pct) / 100.0;
        config.open_for = Duration::from_secs(3600);
        let breaker = CircuitBreaker::new("prop", config).unwrap();

        let mut model: VecDeque<bool> = VecDeque::new();
        for ok in outcomes {
            let permit = breaker.try_call().expect("closed until the model opens it");
            permit.record(ok, Duration::ZERO);
            model.push_back(ok);
            if model.len() > window as usize {
                model.pop_front();
            }
            let failures = model.iter().filter(|ok| !**ok).count() as f64;
            let opens = model.len() >= minimum as usize
                && failures / model.len() as f64 >= f64::from(rate_pct) / 100.0;
            if opens {
                prop_assert_eq!(breaker.state(), BreakerState::Open);
                prop_assert!(breaker.try_call().is_err(), "an open breaker refuses");
                prop_assert!(!breaker.permits());
                break;
            }
            prop_assert_eq!(breaker.state(), BreakerState::Closed);
            prop_assert!(breaker.permits());
        }
    }
}
