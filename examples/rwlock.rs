//! A read-write lock: readers share it, a writer has it alone and is not
//! starved by a stream of readers.
//!
//! ```text
//! cargo run --example rwlock                                      # memory://
//! COORD_URL=etcd://127.0.0.1:2379 cargo run --example rwlock --features etcd
//! ```

use std::time::{Duration, Instant};

use coord::Coord;

#[tokio::main]
async fn main() -> coord::Result<()> {
    let coord = Coord::builder().connect().await?;
    println!("backend: {}", coord.settings().url);
    let name = "examples/catalog";
    let started = Instant::now();
    let mut tasks = Vec::new();
    for reader in 0..4 {
        let lock = coord.lock(name).read().ttl(Duration::from_secs(10)).build();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20 * reader)).await;
            let guard = lock.acquire().await?;
            println!("  {:>6.1?}  reader {reader} reads", started.elapsed());
            tokio::time::sleep(Duration::from_millis(150)).await;
            guard.release().await
        }));
    }
    let writer = coord
        .lock(name)
        .write()
        .ttl(Duration::from_secs(10))
        .build();
    tasks.push(tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let guard = writer.acquire().await?;
        println!(
            "  {:>6.1?}  writer writes alone (token {})",
            started.elapsed(),
            guard.fencing_token()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        guard.release().await
    }));
    for t in tasks {
        t.await.expect("task panicked")?;
    }
    coord.shutdown(Duration::from_secs(5)).await
}
