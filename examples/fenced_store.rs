//! Fencing: a holder that stalls past its lease (a GC pause, a frozen VM)
//! and writes late is refused by the fenced store, because a newer holder
//! already wrote with a higher token.
//!
//! ```text
//! cargo run --example fenced_store                                # memory://
//! COORD_URL=redis://127.0.0.1:6379 cargo run --example fenced_store --features redis
//! ```

use std::time::Duration;

use coord::{Coord, Error};

#[tokio::main]
async fn main() -> coord::Result<()> {
    let coord = Coord::builder().connect().await?;
    println!("backend: {}", coord.settings().url);
    let store = coord.fenced_store();
    let lock = coord
        .lock("examples/report")
        .ttl(Duration::from_secs(2))
        .watchdog(false) // the stalled holder does not renew
        .build();

    let stalled = lock.acquire().await?;
    println!("holder A has the lock, token {}", stalled.fencing_token());
    println!("holder A stalls past its 2 s lease...");
    stalled.lost().await;

    let fresh = lock.acquire().await?;
    println!("holder B has the lock, token {}", fresh.fencing_token());
    store
        .write("examples/report", fresh.fencing_token(), b"B's report")
        .await?;
    println!("holder B wrote its report");

    match store
        .write(
            "examples/report",
            stalled.fencing_token(),
            b"A's late report",
        )
        .await
    {
        Err(e @ Error::Conflict { .. }) => println!("holder A's late write was refused: {e}"),
        other => panic!("a stale write must be refused, got {other:?}"),
    }
    let (token, value) = store.read("examples/report").await?.expect("written");
    println!(
        "stored: {:?} (token {token})",
        String::from_utf8_lossy(&value)
    );
    fresh.release().await?;
    coord.shutdown(Duration::from_secs(5)).await
}
