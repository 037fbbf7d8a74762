//! The breaker's state machine under Tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_millis(150);
const OPEN_FOR: Duration = Duration::from_secs(10);

/// A window of 10 calls, opening at 50% failures (or 100% slow) from 5
/// calls on, 2 probes.
fn config() -> BreakerConfig {
    BreakerConfig {
        window: BreakerWindow::Count(10),
        minimum_calls: 5,
        slow_call_duration: Duration::from_millis(100),
        open_for: OPEN_FOR,
        half_open_probes: 2,
        ..BreakerConfig::default()
    }
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new("b", config()).unwrap()
}

fn calls(b: &CircuitBreaker, ok: bool, latency: Duration, n: usize) {
    for _ in 0..n {
        b.try_call().unwrap().record(ok, latency);
    }
}

fn open(b: &CircuitBreaker) {
    calls(b, false, FAST, 5);
    assert_eq!(b.state(), BreakerState::Open);
}

fn recorder(b: &CircuitBreaker) -> Arc<Mutex<Vec<(BreakerState, BreakerState)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    b.on_change(move |t| sink.lock().unwrap().push((t.from, t.to)));
    seen
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_minimum_calls_even_if_all_fail() {
    let b = breaker();
    calls(&b, false, FAST, 4);
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(b.permits());
    let stats = b.stats();
    assert_eq!((stats.calls, stats.failures, stats.transitions), (4, 4, 0));
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate() {
    let b = breaker();
    calls(&b, true, FAST, 3);
    calls(&b, false, FAST, 2);
    assert_eq!(b.state(), BreakerState::Closed, "2 of 5 is under 50%");
    calls(&b, false, FAST, 1);
    assert_eq!(b.state(), BreakerState::Open, "3 of 6 is 50%");
    assert_eq!(b.open_until(), Some(Instant::now() + OPEN_FOR));
    assert_eq!(b.stats().transitions, 1);
}

#[tokio::test(start_paused = true)]
async fn the_count_window_keeps_only_the_last_calls() {
    let b = breaker();
    calls(&b, true, FAST, 10);
    calls(&b, false, FAST, 4);
    assert_eq!(b.state(), BreakerState::Closed, "4 of the last 10 failed");
    calls(&b, false, FAST, 1);
    assert_eq!(b.state(), BreakerState::Open, "5 of the last 10 (of 15)");
}

#[tokio::test(start_paused = true)]
async fn opens_on_the_slow_call_rate() {
    // Default slow_call_rate 1.0: one fast call keeps it closed.
    let b = breaker();
    calls(&b, true, SLOW, 4);
    calls(&b, true, FAST, 1);
    calls(&b, true, SLOW, 9);
    assert_eq!(b.state(), BreakerState::Closed, "9 of the last 10 slow");
    calls(&b, true, SLOW, 1);
    assert_eq!(b.state(), BreakerState::Open, "10 of 10 slow");

    let mut c = config();
    c.slow_call_rate = 0.6;
    let b = CircuitBreaker::new("b", c).unwrap();
    calls(&b, true, FAST, 2);
    calls(&b, true, SLOW, 2);
    assert_eq!(b.state(), BreakerState::Closed);
    calls(&b, true, SLOW, 1);
    assert_eq!(b.state(), BreakerState::Open, "3 of 5 slow");
    let stats = b.stats();
    assert_eq!((stats.slow_calls, stats.failures), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn rejects_while_open_and_counts_rejections() {
    let b = breaker();
    open(&b);
    advance(Duration::from_secs(4)).await;
    assert!(!b.permits());
    let err = b.try_call().unwrap_err();
    assert!(matches!(err, Error::CircuitOpen(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("\"b\" is open"), "{message}");
    assert!(message.contains("half-opens in 6s"), "{message}");
    assert!(b.try_call().is_err());
    let stats = b.stats();
    assert_eq!((stats.rejected, stats.calls), (2, 5));
}

#[tokio::test(start_paused = true)]
async fn half_opens_after_open_for_with_exactly_the_probes() {
    let b = breaker();
    open(&b);
    advance(OPEN_FOR - Duration::from_millis(1)).await;
    assert!(!b.permits());
    assert_eq!(b.state(), BreakerState::Open);
    advance(Duration::from_millis(1)).await;
    assert!(b.permits(), "half-open, probes free");
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.open_until(), None);
    let first = b.try_call().unwrap();
    let second = b.try_call().unwrap();
    assert!(first.is_probe() && second.is_probe());
    assert!(!b.permits());
    let err = b.try_call().unwrap_err();
    assert!(err.to_string().contains("probe calls are taken"), "{err}");
    assert_eq!(b.stats().rejected, 1);
    drop((first, second));
}

#[tokio::test(start_paused = true)]
async fn probes_all_succeeding_close_it_with_an_empty_window() {
    let b = breaker();
    open(&b);
    advance(OPEN_FOR).await;
    let probes = [b.try_call().unwrap(), b.try_call().unwrap()];
    for p in probes {
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p.success(FAST);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // The five failures that opened it are forgotten.
    calls(&b, false, FAST, 4);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_probes_reopen_it_at_the_slow_call_rate() {
    let b = breaker();
    open(&b);
    advance(OPEN_FOR).await;
    calls(&b, true, SLOW, 2);
    assert_eq!(b.state(), BreakerState::Open, "every probe was slow");
    advance(OPEN_FOR).await;
    calls(&b, true, SLOW, 1);
    calls(&b, true, FAST, 1);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_it_for_a_fresh_open_for() {
    let b = breaker();
    open(&b);
    advance(OPEN_FOR).await;
    let late = b.try_call().unwrap();
    advance(Duration::from_secs(1)).await;
    b.try_call().unwrap().failure(FAST);
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.open_until(), Some(Instant::now() + OPEN_FOR));
    // The other probe of that half-open period decides nothing any more.
    late.success(FAST);
    assert_eq!(b.state(), BreakerState::Open);
    advance(OPEN_FOR - Duration::from_millis(1)).await;
    assert!(!b.permits());
    advance(Duration::from_millis(1)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.stats().transitions, 4);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_permit_frees_its_probe_slot_without_counting() {
    let b = breaker();
    open(&b);
    advance(OPEN_FOR).await;
    let kept = b.try_call().unwrap();
    let cancelled = b.try_call().unwrap();
    assert!(!b.permits());
    drop(cancelled);
    assert!(b.permits());
    let again = b.try_call().unwrap();
    assert_eq!(b.stats().calls, 5, "the cancelled call is not recorded");
    kept.success(FAST);
    again.success(FAST);
    assert_eq!(b.state(), BreakerState::Closed);
    // A permit of an earlier period returns nothing to a later one.
    open(&b);
    advance(OPEN_FOR).await;
    let stale = b.try_call().unwrap();
    stale.failure(FAST);
    advance(OPEN_FOR).await;
    let old = b.try_call().unwrap();
    b.try_call().unwrap().failure(FAST);
    advance(OPEN_FOR).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    drop(old);
    let _a = b.try_call().unwrap();
    let _b = b.try_call().unwrap();
    assert!(!b.permits(), "still two slots");
}

#[tokio::test(start_paused = true)]
async fn a_closed_permit_that_ends_after_opening_decides_nothing() {
    let b = breaker();
    let slow = b.try_call().unwrap();
    open(&b);
    slow.failure(FAST);
    assert_eq!(b.stats().calls, 6);
    advance(OPEN_FOR).await;
    let p = b.try_call().unwrap();
    drop(b.try_call().unwrap());
    p.success(FAST);
    assert_eq!(b.state(), BreakerState::HalfOpen, "one of two probes done");
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_old_calls() {
    let mut c = config();
    c.window = BreakerWindow::Time(Duration::from_secs(10));
    let b = CircuitBreaker::new("b", c).unwrap();
    calls(&b, false, FAST, 4);
    advance(Duration::from_secs(10)).await;
    calls(&b, false, FAST, 1);
    assert_eq!(b.state(), BreakerState::Closed, "the first four have left");
    advance(Duration::from_secs(5)).await;
    calls(&b, false, FAST, 4);
    assert_eq!(b.state(), BreakerState::Open, "five failures within 10 s");
}

#[tokio::test(start_paused = true)]
async fn subscribers_and_hooks_see_every_transition_in_order() {
    use BreakerState::{Closed, HalfOpen, Open};
    let b = breaker();
    let seen = recorder(&b);
    let mut rx = b.subscribe();
    assert_eq!(*rx.borrow_and_update(), Closed);
    let mut latest = Vec::new();
    let mut step = |rx: &mut watch::Receiver<BreakerState>| {
        assert!(rx.has_changed().unwrap());
        latest.push(*rx.borrow_and_update());
    };
    open(&b);
    step(&mut rx);
    advance(OPEN_FOR).await;
    b.try_call().unwrap().failure(FAST);
    assert_eq!(*rx.borrow(), Open, "half-open then open again");
    rx.borrow_and_update();
    advance(OPEN_FOR).await;
    assert!(b.permits());
    step(&mut rx);
    calls(&b, true, FAST, 2);
    step(&mut rx);
    assert_eq!(latest, [Open, HalfOpen, Closed]);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
    assert_eq!(b.stats().transitions, 5);
}

#[tokio::test(start_paused = true)]
async fn a_hook_may_use_the_breaker() {
    let b = breaker();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (inner, sink) = (b.clone(), seen.clone());
    b.on_change(move |t| {
        // Reads the state and records a call (ignored while open).
        sink.lock()
            .unwrap()
            .push((t.to, inner.state(), inner.stats().transitions));
        if let Ok(p) = inner.try_call() {
            drop(p);
        }
    });
    open(&b);
    assert_eq!(
        *seen.lock().unwrap(),
        [(BreakerState::Open, BreakerState::Open, 1)]
    );
}

#[tokio::test(start_paused = true)]
async fn auto_half_open_turns_half_open_on_time() {
    let b = breaker().with_auto_half_open(true);
    let mut rx = b.subscribe();
    open(&b);
    rx.borrow_and_update();
    let opened = Instant::now();
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow(), BreakerState::HalfOpen);
    assert_eq!(Instant::now() - opened, OPEN_FOR);
}

#[tokio::test(start_paused = true)]
async fn call_times_records_and_rejects() {
    let b = breaker();
    let ok = b
        .call(async {
            tokio::time::sleep(SLOW).await;
            Ok::<_, Error>(1)
        })
        .await;
    assert_eq!(ok.unwrap(), 1);
    assert_eq!(b.stats().slow_calls, 1, "timed by call()");
    for _ in 0..4 {
        let failed = b
            .call(async { Err::<(), _>(Error::NotFound("x".into())) })
            .await;
        assert!(matches!(
            failed,
            Err(BreakerError::Failed(Error::NotFound(_)))
        ));
    }
    assert_eq!(b.state(), BreakerState::Open, "4 of 5 failed");
    let rejected = b.call(async { Ok::<_, Error>(()) }).await.unwrap_err();
    assert!(rejected.is_rejected());
    let e: Error = rejected.into();
    assert!(matches!(e, Error::CircuitOpen(_)));
}

#[tokio::test(start_paused = true)]
async fn concurrent_probes_never_exceed_the_limit() {
    let mut c = config();
    c.half_open_probes = 7;
    let b = CircuitBreaker::new("b", c).unwrap();
    open(&b);
    advance(OPEN_FOR).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let permits = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10 {
                    if let Ok(p) = b.try_call() {
                        permits.lock().unwrap().push(p);
                    }
                }
            });
        }
    });
    assert_eq!(permits.lock().unwrap().len(), 7);
    assert_eq!(b.stats().rejected, 33);
}

#[test]
fn metrics_are_exported_on_the_registry() {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let b = breaker().with_metrics(metrics);
    let text = || {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
    };
    assert!(text().contains(r#"coord_breaker_state{breaker="b"} 0"#));
    calls(&b, true, FAST, 1);
    calls(&b, true, SLOW, 1);
    calls(&b, false, SLOW, 3);
    assert!(b.try_call().is_err());
    let text = text();
    for line in [
        r#"coord_breaker_state{breaker="b"} 1"#,
        r#"coord_breaker_transitions_total{breaker="b",from="closed",to="open"} 1"#,
        r#"coord_breaker_calls_total{breaker="b",outcome="success"} 1"#,
        r#"coord_breaker_calls_total{breaker="b",outcome="slow"} 1"#,
        r#"coord_breaker_calls_total{breaker="b",outcome="failure"} 3"#,
        r#"coord_breaker_calls_total{breaker="b",outcome="rejected"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

/// A dropped breaker's series leave the registry once no other breaker of
/// the same name exports them (instances that come and go, each with its
/// own breaker, would otherwise pile up series for ever).
#[test]
fn a_dropped_breakers_series_leave_the_registry() {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let series = |name: &str| {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let label = format!(r#"breaker="{name}""#);
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .count()
    };
    let b = breaker().with_metrics(metrics.clone());
    let twin = breaker().with_metrics(metrics.clone());
    let other = CircuitBreaker::new("other", config())
        .unwrap()
        .with_metrics(metrics.clone());
    calls(&b, true, FAST, 1);
    calls(&b, true, SLOW, 1);
    calls(&b, false, SLOW, 3);
    assert!(b.try_call().is_err());
    // The state, the four outcomes and the closed-to-open transition.
    assert_eq!(series("b"), 6);
    drop(b);
    assert_eq!(series("b"), 6, "the twin still exports them");
    drop(twin);
    assert_eq!(series("b"), 0, "no breaker named b is left");
    assert_eq!(series("other"), 5, "another breaker's series stay");
    // A breaker of the name made again exports afresh.
    let again = breaker().with_metrics(metrics);
    assert!(again.try_call().is_ok());
    assert_eq!(series("b"), 5);
    drop((again, other));
    assert_eq!(series("other"), 0);
}

#[test]
fn invalid_configs_are_refused() {
    type Spoil = fn(&mut BreakerConfig);
    let cases: [(&str, Spoil); 9] = [
        ("failure_rate", |c| c.failure_rate = 0.0),
        ("failure_rate", |c| c.failure_rate = f64::NAN),
        ("slow_call_rate", |c| c.slow_call_rate = 1.01),
        ("window", |c| c.window = BreakerWindow::Count(0)),
        ("window", |c| c.window = BreakerWindow::Time(Duration::ZERO)),
        ("minimum_calls", |c| c.minimum_calls = 101),
        ("open_for", |c| c.open_for = Duration::ZERO),
        ("half_open_probes", |c| c.half_open_probes = 0),
        ("slow_call_duration", |c| {
            c.slow_call_duration = Duration::ZERO
        }),
    ];
    for (field, spoil) in cases {
        let mut c = BreakerConfig::default();
        spoil(&mut c);
        let err = CircuitBreaker::new("b", c).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    assert!(BreakerConfig::default().validate().is_ok());
}

#[test]
fn the_config_deserializes_with_humantime_durations() {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    let c: BreakerConfig = Figment::from(Toml::string(
        r#"
        failure_rate = 0.25
        slow_call_duration = "500ms"
        window = { time = "30s" }
        open_for = "1m"
        "#,
    ))
    .extract()
    .unwrap();
    assert_eq!(c.failure_rate, 0.25);
    assert_eq!(c.slow_call_duration, Duration::from_millis(500));
    assert_eq!(c.window, BreakerWindow::Time(Duration::from_secs(30)));
    assert_eq!(c.open_for, Duration::from_secs(60));
    assert_eq!(c.minimum_calls, 20, "defaults fill the rest");
    let c: BreakerConfig = Figment::from(Toml::string("window = { count = 50 }"))
        .extract()
        .unwrap();
    assert_eq!(c.window, BreakerWindow::Count(50));
    assert!(
        Figment::from(Toml::string("failure_ratio = 0.5"))
            .extract::<BreakerConfig>()
            .is_err()
    );
}
