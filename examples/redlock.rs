//! Redlock: one lease lock over several independent Redis servers, safe
//! while a minority of them is down, with fencing tokens.
//!
//! Give the servers in `REDLOCK_URLS` (comma-separated); without it, the
//! example starts three local `redis-server` processes on free loopback
//! ports (the testkit fixture) and stops one of them midway.
//!
//! ```text
//! cargo run --example redlock --features redis,testkit
//! REDLOCK_URLS=redis://h1:6379,redis://h2:6379,redis://h3:6379 cargo run --example redlock --features redis,testkit
//! ```

use std::sync::Arc;
use std::time::Duration;

use coord::redis::testkit::RedisServer;
use coord::redis::{RedlockBackend, RedlockConfig};
use coord::{LockClient, Settings};

#[tokio::main]
async fn main() -> coord::Result<()> {
    let mut local = Vec::new();
    let urls: Vec<String> = match std::env::var("REDLOCK_URLS") {
        Ok(list) => list.split(',').map(|u| u.trim().to_owned()).collect(),
        Err(_) => {
            println!("REDLOCK_URLS unset: starting three local redis-server processes");
            for _ in 0..3 {
                local.push(RedisServer::spawn()?);
            }
            local.iter().map(|s| s.url().to_owned()).collect()
        }
    };
    let mut config = RedlockConfig::default();
    config.max_ttl = Duration::from_secs(30);
    if !local.is_empty() {
        // Fresh servers that never held a lock: no restart quarantine needed.
        config.quarantine = Some(Duration::ZERO);
    }
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let backend = RedlockBackend::connect(&refs, &Settings::default(), config).await?;
    println!(
        "Redlock over {} servers, quorum {}",
        refs.len(),
        backend.quorum()
    );
    let client = LockClient::new(Arc::new(backend));
    let lock = client
        .lock("examples/redlock")
        .ttl(Duration::from_secs(10))
        .build();

    let guard = lock.acquire().await?;
    println!(
        "granted: token {}, valid for {:?} (the TTL less the time to reach a quorum and the clock drift allowance)",
        guard.fencing_token(),
        guard.ttl()
    );
    guard.release().await?;

    if let Some(server) = local.last_mut() {
        server.stop()?;
        println!("stopped one server; a majority is still up");
        let guard = lock.acquire().await?;
        println!("granted again: token {}", guard.fencing_token());
        guard.release().await?;
    }
    client.shutdown().await
}
