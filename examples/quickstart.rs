//! Takes a distributed lock, prints its fencing token, and shows two tasks
//! contending for it.
//!
//! ```text
//! cargo run --example quickstart                       # embedded memory backend
//! COORD_URL=redis://127.0.0.1:6379 cargo run --example quickstart --features redis
//! COORD_URL=etcd://127.0.0.1:2379  cargo run --example quickstart --features etcd
//! RUST_LOG=coord=debug cargo run --example quickstart     # with coord's tracing spans
//! ```

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coord::Coord;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> coord::Result<()> {
    // Settings come from coord.toml, then COORD_* variables (COORD_URL picks
    // the backend; memory:// when unset).
    let coord = Coord::builder().connect().await?;
    let health = coord.health().await;
    println!(
        "connected to {} ({:?}, round trip {:?})",
        // (Without the password, if the URL has one.)
        coord::url::redact(&coord.settings().url),
        health.status,
        health.latency.unwrap_or_default()
    );

    let lock = coord
        .lock("quickstart/orders-42")
        .ttl(Duration::from_secs(10))
        .wait_timeout(Duration::from_secs(30))
        .build();

    let guard = lock.acquire().await?;
    println!(
        "acquired {:?} with fencing token {} (renewed every {:?} until released)",
        guard.name(),
        guard.fencing_token(),
        guard.ttl() / 3
    );
    guard.release().await?;

    println!("two workers contend for the same lock:");
    let started = Instant::now();
    // The tokens in grant order (pushed while holding the lock).
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for worker in ["alice", "bob"] {
        let lock = lock.clone();
        let tokens = tokens.clone();
        workers.push(tokio::spawn(async move {
            for round in 1..=3 {
                let guard = lock.acquire().await?;
                println!(
                    "  {:>6.1?}  {worker:<5} holds it (round {round}, token {})",
                    started.elapsed(),
                    guard.fencing_token()
                );
                tokens.lock().unwrap().push(guard.fencing_token());
                // The protected work. Stop if the lock is lost meanwhile.
                tokio::select! {
                    lost = guard.lost() => return Err(lost),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                guard.release().await?;
                // Work outside the lock lets the other worker in.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            Ok::<_, coord::Error>(())
        }));
    }
    for w in workers {
        w.await.expect("worker task panicked")?;
    }
    coord.shutdown(Duration::from_secs(5)).await?;
    let tokens = tokens.lock().unwrap().clone();
    if tokens.windows(2).all(|w| w[0] < w[1]) {
        println!(
            "done: each of the {} grants had a larger token than the one before",
            tokens.len()
        );
        Ok(())
    } else {
        Err(coord::Error::Conflict {
            expected: "fencing tokens that increase with each grant".into(),
            actual: format!("{tokens:?}"),
        })
    }
}
