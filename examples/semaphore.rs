//! A semaphore: eight crawler tasks share three permits of one name, so at
//! most three fetches run at once across every process using that name.
//! Each permit has its own fencing token.
//!
//! ```text
//! cargo run --example semaphore                                   # memory://
//! COORD_URL=redis://127.0.0.1:6379 cargo run --example semaphore --features redis
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coord::Coord;

#[tokio::main]
async fn main() -> coord::Result<()> {
    let coord = Coord::builder().connect().await?;
    println!("backend: {}", coord.settings().url);
    let permits = coord
        .semaphore("examples/crawler", 3)
        .ttl(Duration::from_secs(10))
        .wait_timeout(Duration::from_secs(30))
        .build();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut crawlers = Vec::new();
    for page in 0..8 {
        let (permits, running, most) = (permits.clone(), running.clone(), most.clone());
        crawlers.push(tokio::spawn(async move {
            let permit = permits.acquire().await?;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            println!(
                "  {:>6.1?}  fetching page {page} ({now} running, permit token {})",
                started.elapsed(),
                permit.fencing_token()
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // the fetch
            running.fetch_sub(1, Ordering::SeqCst);
            permit.release().await
        }));
    }
    for c in crawlers {
        c.await.expect("crawler panicked")?;
    }
    println!(
        "done: at most {} fetches ran at once",
        most.load(Ordering::SeqCst)
    );
    coord.shutdown(Duration::from_secs(5)).await
}
