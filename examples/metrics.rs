//! Prometheus metrics of coord, served on `/metrics`: registers coord's
//! metrics on your registry, takes a few locks, serves the registry over
//! HTTP for a while (and fetches it once itself, to show what a scrape sees).
//!
//! ```text
//! cargo run --example metrics                       # then: curl http://127.0.0.1:9898/metrics
//! METRICS_ADDR=127.0.0.1:9100 METRICS_SECONDS=60 cargo run --example metrics
//! ```

use std::time::Duration;

use coord::Coord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> coord::Result<()> {
    let registry = prometheus::Registry::new();
    let coord = Coord::builder().metrics(&registry).connect().await?;
    println!("backend: {}", coord.settings().url);
    for i in 0..5 {
        let guard = coord
            .lock(format!("examples/metrics/{}", i % 2))
            .build()
            .acquire()
            .await?;
        guard.release().await?;
    }

    let addr = std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9898".to_owned());
    let seconds: u64 = std::env::var("METRICS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| coord::Error::invalid(format!("cannot listen on {addr}: {e}")))?;
    println!("serving http://{addr}/metrics for {seconds} s (METRICS_SECONDS to change)");
    let server = tokio::spawn(serve(listener, registry));

    // What a scrape sees: fetch it once.
    let body = scrape(&addr).await?;
    println!("a scrape returns, among others:");
    for line in body
        .lines()
        .filter(|l| l.starts_with("coord_lock_operations_total"))
    {
        println!("  {line}");
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    server.abort();
    coord.shutdown(Duration::from_secs(5)).await
}

/// Answers every HTTP request with the registry in Prometheus text format.
async fn serve(listener: TcpListener, registry: prometheus::Registry) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let body = prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap_or_default();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

async fn scrape(addr: &str) -> coord::Result<String> {
    let io = |e: std::io::Error| coord::Error::unavailable(format!("scrape {addr}: {e}"), None);
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(io)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}
