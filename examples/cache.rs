//! A two-level cache in front of a slow "database": two instances of one
//! cache (two services, say) share the backend; a write through one evicts
//! the other's in-process copy; a cold key is loaded once however many
//! tasks ask; a missing user is remembered as missing.
//!
//! ```text
//! cargo run --example cache                                   # memory://
//! COORD_URL=redis://127.0.0.1:6379 cargo run --example cache --features redis
//! COORD_URL=etcd://127.0.0.1:2379 cargo run --example cache --features etcd
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coord::Coord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// The slow source of truth: 50 ms per lookup, and it counts them.
async fn load_user(id: u64, lookups: &AtomicUsize) -> coord::Result<Option<User>> {
    lookups.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok((id < 1000).then(|| User {
        id,
        name: format!("user-{id}"),
    }))
}

#[tokio::main]
async fn main() -> coord::Result<()> {
    let coord = Coord::builder().connect().await?;
    println!("backend: {}", coord.settings().url);
    let name = format!("examples-users-{}", std::process::id());
    let service_a = coord
        .cache(&name)
        .ttl(Duration::from_secs(60))
        .build::<User>()?;
    let service_b = coord
        .cache(&name)
        .ttl(Duration::from_secs(60))
        .build::<User>()?;
    service_a.ready().await;
    service_b.ready().await;
    let lookups = Arc::new(AtomicUsize::new(0));

    // 100 concurrent requests for a cold key: one database lookup.
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, lookups) = (service_a.clone(), lookups.clone());
            tokio::spawn(
                async move { cache.get_or_load("user:7", || load_user(7, &lookups)).await },
            )
        })
        .collect();
    for t in tasks {
        t.await.expect("task")?;
    }
    println!(
        "100 concurrent reads of a cold key: {} database lookup(s) in {:?}",
        lookups.load(Ordering::SeqCst),
        started.elapsed()
    );

    // B reads it from the backend (L2), then from its own memory (L1).
    let user = service_b.get("user:7").await?.expect("stored by A's load");
    let started = Instant::now();
    service_b.get("user:7").await?;
    println!(
        "B read {} from L2, then from L1 in {:?}",
        user.name,
        started.elapsed()
    );

    // A renames the user: B's copy is evicted, its next read is fresh.
    service_a
        .set(
            "user:7",
            User {
                id: 7,
                name: "Ada".into(),
            },
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = service_b.get("user:7").await?.expect("present");
        if seen.name == "Ada" {
            println!("B sees A's write: {:?}", seen);
            break;
        }
        assert!(Instant::now() < deadline, "B never saw A's write");
        tokio::task::yield_now().await;
    }

    // A user that does not exist is looked up once, then remembered.
    let before = lookups.load(Ordering::SeqCst);
    for _ in 0..1000 {
        assert!(
            service_a
                .get_or_load("user:4242", || load_user(4242, &lookups))
                .await?
                .is_none()
        );
    }
    println!(
        "1000 reads of a missing user: {} database lookup(s)",
        lookups.load(Ordering::SeqCst) - before
    );
    println!("A's stats: {:?}", service_a.stats());
    println!("B's stats: {:?}", service_b.stats());
    service_a.delete("user:7").await?;
    service_a.delete("user:4242").await?;
    coord.shutdown(Duration::from_secs(5)).await
}
