//! The tower adapter end to end: tower's p2c balancer over
//! `discovery::discover`, sending real TCP requests to servers the test
//! starts, following deregistrations and new registrations.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use coord_core::discovery::{DiscoveryClient, ServiceInstance, TowerDiscover, discover};
use coord_core::memory::MemoryBackend;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Service, ServiceExt};

const WAIT: Duration = Duration::from_secs(10);

/// A line server answering each request line with `<name> <line>`.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(name: &'static str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let reply = format!("{name} {line}\n");
                        if write.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            name,
            addr,
            served,
            task,
        }
    }

    fn instance(&self) -> ServiceInstance {
        ServiceInstance::new("echo", self.name, self.addr.to_string())
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tower service for one instance: a TCP connection per request, one
/// line out, one line back.
#[derive(Clone, Debug)]
struct TcpLine {
    addr: String,
}

impl Service<String> for TcpLine {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<String>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: String) -> Self::Future {
        let addr = self.addr.clone();
        Box::pin(async move {
            let mut socket = TcpStream::connect(&addr).await?;
            socket.write_all(format!("{request}\n").as_bytes()).await?;
            let mut reply = String::new();
            BufReader::new(socket).read_line(&mut reply).await?;
            Ok(reply.trim_end().to_owned())
        })
    }
}

type Balancer =
    Balance<PendingRequestsDiscover<TowerDiscover<TcpLine>, CompleteOnResponse>, String>;

/// Sends `n` requests through the balancer; replies counted by server name.
async fn send(balancer: &mut Balancer, n: usize) -> BTreeMap<String, usize> {
    let mut answered = BTreeMap::new();
    for i in 0..n {
        let request = format!("req-{i}");
        let reply = tokio::time::timeout(WAIT, async {
            balancer
                .ready()
                .await
                .expect("balancer ready")
                .call(request.clone())
                .await
                .expect("request answered")
        })
        .await
        .expect("request answered in time");
        let (name, echoed) = reply.split_once(' ').expect("`<name> <line>`");
        assert_eq!(echoed, request);
        *answered.entry(name.to_owned()).or_insert(0) += 1;
    }
    answered
}

/// Polls the balancer (which applies pending discovery changes) until it
/// holds `n` services; fails after [`WAIT`].
async fn until_len(balancer: &mut Balancer, n: usize) {
    tokio::time::timeout(WAIT, async {
        loop {
            balancer.ready().await.expect("balancer ready");
            if balancer.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the balancer did not reach {n} services in {WAIT:?}"));
}

#[tokio::test]
async fn p2c_balances_over_a_watched_service_and_follows_changes() {
    let discovery = DiscoveryClient::new(Arc::new(MemoryBackend::new()));
    let servers = [
        Server::start("s1").await,
        Server::start("s2").await,
        Server::start("s3").await,
    ];
    let mut registrations = Vec::new();
    for server in &servers {
        registrations.push(discovery.register(server.instance()).await.unwrap());
    }

    let endpoints = discover(discovery.watch("echo").await.unwrap(), |instance| TcpLine {
        addr: instance.addr.clone(),
    });
    let mut balancer: Balancer = Balance::new(PendingRequestsDiscover::new(
        endpoints,
        CompleteOnResponse::default(),
    ));

    // All three, from the first snapshot; p2c spreads the requests.
    let answered = send(&mut balancer, 300).await;
    assert_eq!(balancer.len(), 3);
    for server in &servers {
        let n = answered.get(server.name).copied().unwrap_or(0);
        assert!(n > 0, "{} answered nothing: {answered:?}", server.name);
        assert_eq!(server.served(), n, "{}", server.name);
    }
    assert_eq!(answered.values().sum::<usize>(), 300);

    // s1 leaves (its server keeps running): once the balancer has the
    // change, nothing goes to it.
    let s1 = registrations.remove(0);
    assert!(s1.deregister().await.unwrap());
    until_len(&mut balancer, 2).await;
    let s1_served = servers[0].served();
    let answered = send(&mut balancer, 150).await;
    assert!(!answered.contains_key("s1"), "{answered:?}");
    assert_eq!(servers[0].served(), s1_served);
    assert!(answered.contains_key("s2") && answered.contains_key("s3"));

    // A new server joins and takes traffic.
    let s4 = Server::start("s4").await;
    let _r4 = discovery.register(s4.instance()).await.unwrap();
    until_len(&mut balancer, 3).await;
    let answered = send(&mut balancer, 150).await;
    assert!(answered.get("s4").copied().unwrap_or(0) > 0, "{answered:?}");
    assert_eq!(s4.served(), answered["s4"]);
    assert!(!answered.contains_key("s1"), "{answered:?}");
    assert_eq!(servers[0].served(), s1_served);
}
