//! Service discovery end to end: three "billing" servers (real TCP
//! listeners) register themselves; a client routes calls to them with a
//! balancer, a breaker per instance and retries; one server dies and the
//! client routes around it; a graceful shutdown deregisters.
//!
//! ```text
//! cargo run --example discovery                                   # memory://
//! COORD_URL=redis://127.0.0.1:6379 cargo run --example discovery --features redis
//! COORD_URL=etcd://127.0.0.1:2379 cargo run --example discovery --features etcd
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use coord::Coord;
use coord::discovery::{DiscoveryEvent, ServiceInstance};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A tiny server: answers each line with its name.
async fn serve(name: String) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    if write
                        .write_all(format!("{name}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

/// One request: connect, send a line, read the answer.
async fn ask(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"hello\n").await?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await?;
    Ok(answer.trim().to_owned())
}

#[tokio::main]
async fn main() -> coord::Result<()> {
    // coord.toml / COORD_* as usual, with a short registration TTL so that
    // the crashed server's entry expires quickly in this demo.
    let mut settings = coord::Settings::load()?;
    settings.discovery.ttl = Duration::from_secs(3);
    let coord = Coord::builder().settings(settings).connect().await?;
    println!("backend: {}", coord.settings().url);
    let service = format!("billing-{}", std::process::id());

    // Three servers register themselves (two in our zone).
    let mut servers = Vec::new();
    for (i, zone) in ["eu-1a", "eu-1a", "eu-1b"].into_iter().enumerate() {
        let name = format!("billing-{i}");
        let (addr, task) = serve(name.clone()).await.expect("a local listener");
        let registration = coord
            .register(
                ServiceInstance::new(&service, &name, &addr)
                    .zone(zone)
                    .version("1.4.0"),
            )
            .await?;
        println!("registered {name} at {addr} in {zone}");
        servers.push((registration, task));
    }

    let watcher = coord.watch_service(&service).await?;
    let mut events = watcher.events();
    let billing = coord
        .service(&service)
        .local_zone("eu-1a")
        .max_attempts(3)
        .deadline(Duration::from_secs(2))
        .build()
        .await?;

    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..300 {
        let answer = billing
            .call(|endpoint| async move { ask(endpoint.addr()).await })
            .await
            .expect("a call");
        *answers.entry(answer).or_default() += 1;
    }
    println!("300 calls, local zone preferred: {answers:?}");

    // billing-0 dies without deregistering (a crash): its calls fail, the
    // client retries them on another instance and its breaker opens.
    let (crashed, task) = servers.remove(0);
    task.abort();
    crashed.abandon();
    answers.clear();
    let mut failed = 0;
    for _ in 0..300 {
        match billing
            .call(|endpoint| async move { ask(endpoint.addr()).await })
            .await
        {
            Ok(answer) => *answers.entry(answer).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    println!("300 calls after billing-0 crashed: {answers:?}, {failed} failed");
    println!("breakers: {:?}", billing.breaker_states());

    // Its registration expires within the TTL; watchers hear of it.
    let ttl = coord.settings().discovery.ttl;
    let removed = tokio::time::timeout(ttl + Duration::from_secs(2), async {
        loop {
            if let Ok(DiscoveryEvent::Removed(instance)) = events.recv().await {
                return instance.id;
            }
        }
    })
    .await;
    match removed {
        Ok(id) => println!("{id} expired from the registry within its TTL ({ttl:?})"),
        Err(_) => println!("billing-0 had not expired after {ttl:?} + 2 s"),
    }

    // Graceful shutdown: deregister first, so that callers stop picking us.
    coord.shutdown(Duration::from_secs(5)).await?;
    println!(
        "after shutdown: {} instance(s) registered",
        coord.discovery().instances(&service).await?.len()
    );
    Ok(())
}
