//! Leader election: three nodes campaign for one role; an observer prints
//! every term (`observe()`), and each node runs its leader work through
//! `Election::lead`, which campaigns again after each term, until stopped.
//!
//! ```text
//! cargo run --example election                                    # memory://
//! COORD_URL=redis://127.0.0.1:6379 cargo run --example election --features redis
//! COORD_URL=etcd://127.0.0.1:2379  cargo run --example election --features etcd
//! ```

use std::time::Duration;

use coord::Coord;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> coord::Result<()> {
    // Each node has its own connection, as separate processes would.
    let observer = Coord::builder().connect().await?;
    println!("backend: {}", observer.settings().url);
    let election = observer
        .election("examples/scheduler")
        .ttl(Duration::from_secs(10))
        .build();
    let mut terms = election.observe();
    let watch = tokio::spawn(async move {
        let mut leaders = 0;
        while let Some(change) = terms.next().await {
            match change? {
                Some(leader) => {
                    leaders += 1;
                    println!(
                        "  observer: {} leads (token {})",
                        leader.value, leader.token
                    );
                }
                None => println!("  observer: nobody leads"),
            }
            if leaders == 6 {
                break;
            }
        }
        Ok::<_, coord::Error>(())
    });

    let stop = CancellationToken::new();
    let mut nodes = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let coord = Coord::builder().connect().await?;
        let stop = stop.clone();
        nodes.push(tokio::spawn(async move {
            let election = coord
                .election("examples/scheduler")
                .ttl(Duration::from_secs(10))
                .build();
            // Lead for 200 ms per term, then step down and queue again.
            let terms = election
                .lead(node, stop, Duration::from_millis(200), |term| async move {
                    println!(
                        "{node}: leading, term {} (token {})",
                        term.number, term.token
                    );
                    tokio::select! {
                        _ = term.ended.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    Ok(())
                })
                .await?;
            coord.shutdown(Duration::from_secs(5)).await?;
            Ok::<_, coord::Error>((node, terms))
        }));
    }
    watch.await.expect("observer panicked")?;
    stop.cancel();
    for n in nodes {
        let (node, terms) = n.await.expect("node panicked")?;
        println!("{node} led {terms} term(s)");
    }
    observer.shutdown(Duration::from_secs(5)).await
}
