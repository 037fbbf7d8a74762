//! What answers at an address: a diagnosis for connect errors, so that a
//! URL pointed at the wrong kind of server says so ("this does not look
//! like a Redis server") instead of showing a parse or HTTP/2 error.
//!
//! Only used after a connection attempt failed: it opens one plain TCP
//! connection, sends `PING\r\n` (an inline Redis command, and a malformed
//! HTTP request) and reads what comes back.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a [`probe`] found at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// Nothing listens (connection refused or unreachable).
    Unreachable(String),
    /// A Redis server (it answered `PING` in RESP).
    Redis,
    /// A Redis server that wants a password (`-NOAUTH`).
    RedisNeedsAuth,
    /// An HTTP/1 server; its status line.
    Http(String),
    /// It accepted the connection and closed it without answering (etcd
    /// does this to what is neither HTTP/1 nor HTTP/2).
    ClosedSilently,
    /// It accepted the connection and sent nothing within the timeout.
    Silent,
    /// It answered something else (the first bytes, escaped).
    Other(String),
}

impl Peer {
    /// A short description for messages: "answered like an HTTP server
    /// (HTTP/1.1 400 Bad Request)".
    pub fn describe(&self) -> String {
        match self {
            Peer::Unreachable(e) => format!("cannot be reached ({e})"),
            Peer::Redis => "answered like a Redis server".to_owned(),
            Peer::RedisNeedsAuth => "answered like a Redis server that needs a password".to_owned(),
            Peer::Http(status) => format!("answered like an HTTP server ({status})"),
            Peer::ClosedSilently => {
                "accepted the connection and closed it without answering".to_owned()
            }
            Peer::Silent => "accepted the connection but never answered".to_owned(),
            Peer::Other(bytes) => format!("answered {bytes}"),
        }
    }
}

/// Connects to `addr` (`host:port`), sends `PING\r\n` and classifies the
/// answer, all within `timeout`.
pub async fn probe(addr: &str, timeout: Duration) -> Peer {
    let attempt = async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => return Peer::Unreachable(e.to_string()),
        };
        if let Err(e) = stream.write_all(b"PING\r\n").await {
            return Peer::Unreachable(e.to_string());
        }
        let mut buf = [0u8; 64];
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => Peer::ClosedSilently,
            Ok(n) => classify(&buf[..n]),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Peer::Silent)
}

fn classify(reply: &[u8]) -> Peer {
    if reply.starts_with(b"+PONG") {
        return Peer::Redis;
    }
    if reply.starts_with(b"-NOAUTH") {
        return Peer::RedisNeedsAuth;
    }
    if reply.starts_with(b"-") {
        return Peer::Redis;
    }
    if reply.starts_with(b"HTTP/") {
        let line = reply
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(reply);
        return Peer::Http(String::from_utf8_lossy(line).into_owned());
    }
    Peer::Other(reply.escape_ascii().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(b"+PONG\r\n"), Peer::Redis);
        assert_eq!(
            classify(b"-NOAUTH Authentication required.\r\n"),
            Peer::RedisNeedsAuth
        );
        assert_eq!(
            classify(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"),
            Peer::Http("HTTP/1.1 400 Bad Request".to_owned())
        );
        assert!(matches!(classify(b"\x00\x00\x12\x04"), Peer::Other(_)));
    }

    #[tokio::test]
    async fn a_silent_listener_and_a_closing_one() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let keep = tokio::spawn(async move {
            let (s, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        assert_eq!(probe(&addr, Duration::from_millis(200)).await, Peer::Silent);
        keep.abort();

        let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closing.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (s, _) = closing.accept().await.unwrap();
            drop(s);
        });
        assert_eq!(
            probe(&addr, Duration::from_secs(2)).await,
            Peer::ClosedSilently
        );
    }
}
