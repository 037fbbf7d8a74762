//! A client of a three-member etcd cluster goes on when one member is down,
//! hung or killed mid-run: `connect` succeeds every time, and calls are
//! served by the live members with no error reaching the caller.

use std::sync::Arc;
use std::time::Duration;

use coord_core::LockClient;
use coord_core::testkit::within;
use coord_etcd::testkit::EtcdCluster;
use coord_etcd::{EtcdBackend, Settings};
use tokio::time::Instant;

fn settings() -> Settings {
    let mut s = Settings::default();
    s.connect_timeout = Duration::from_secs(2);
    s.request_timeout = Duration::from_secs(1);
    s
}

/// Connects `times` times and takes and releases a lock through each client.
async fn connect_and_lock(cluster: &EtcdCluster, times: usize) {
    for round in 0..times {
        let start = Instant::now();
        let backend = EtcdBackend::connect(&cluster.url(), &settings())
            .await
            .unwrap_or_else(|e| panic!("connect #{round} failed: {e}"));
        assert!(
            start.elapsed() < settings().connect_timeout + Duration::from_millis(500),
            "connect #{round} took {:?}",
            start.elapsed()
        );
        let client = LockClient::new(Arc::new(backend));
        for i in 0..5 {
            let guard = client
                .lock(format!("cluster/{round}/{i}"))
                .ttl(Duration::from_secs(5))
                .build()
                .acquire()
                .await
                .unwrap_or_else(|e| panic!("acquire on connection #{round} failed: {e}"));
            guard
                .release()
                .await
                .unwrap_or_else(|e| panic!("release on connection #{round} failed: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_or_hung_does_not_fail_connect_or_calls() {
    let cluster = EtcdCluster::start(3).expect("a three-member etcd cluster");
    // The first member listed is down.
    cluster.stop(0).expect("kill member 0");
    connect_and_lock(&cluster, 10).await;
    cluster.restart(0).expect("restart member 0");
    // The first member listed is hung: it accepts connections, answers nothing.
    cluster.pause(0).expect("pause member 0");
    connect_and_lock(&cluster, 5).await;
    cluster.resume(0).expect("resume member 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_run_is_not_seen_by_callers() {
    let cluster = EtcdCluster::start(3).expect("a three-member etcd cluster");
    let backend = EtcdBackend::connect(&cluster.url(), &settings())
        .await
        .expect("connect");
    let client = LockClient::new(Arc::new(backend));
    let worker = {
        let client = client.clone();
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(4);
            let mut cycles = 0u32;
            while Instant::now() < end {
                let guard = client
                    .lock("cluster/mid-run")
                    .ttl(Duration::from_secs(5))
                    .build()
                    .acquire()
                    .await
                    .unwrap_or_else(|e| panic!("acquire #{cycles} failed: {e}"));
                guard
                    .release()
                    .await
                    .unwrap_or_else(|e| panic!("release #{cycles} failed: {e}"));
                cycles += 1;
            }
            cycles
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..cluster.len() {
        // Kill the member the cluster would miss most: try each until one
        // is down (any one of three is a minority).
        if cluster.stop(i).is_ok() {
            break;
        }
    }
    let cycles = within(Duration::from_secs(30), "the worker finishes", worker)
        .await
        .expect("no call failed");
    assert!(cycles > 10, "only {cycles} cycles");
}
