//! Discovery on Redis under a server restart without persistence: the
//! registration notices the registry lost its instance and registers it
//! again, and a watcher lists again and ends up current.

use std::sync::Arc;
use std::time::Duration;

use coord_core::discovery::{DiscoveryClient, RegistrationEvent, ServiceInstance};
use coord_redis::testkit::RedisHarness;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_is_healed_by_reregistration_and_resync() {
    let mut harness = RedisHarness::start().await;
    let writer = DiscoveryClient::new(Arc::new(harness.connect().await.unwrap()));
    let reader = DiscoveryClient::new(Arc::new(harness.connect().await.unwrap()));
    let reg = writer
        .register_with_ttl(
            ServiceInstance::new("svc", "a", "127.0.0.1:1"),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let mut events = reg.events();
    let watcher = reader.watch("svc").await.unwrap();
    let mut snapshots = watcher.subscribe();
    tokio::time::timeout(WAIT, snapshots.wait_for(|s| s.instances.len() == 1))
        .await
        .unwrap()
        .unwrap();

    harness.server.restart().unwrap();

    let event = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.unwrap() {
                RegistrationEvent::Reregistered => return RegistrationEvent::Reregistered,
                RegistrationEvent::RenewFailed { .. } | RegistrationEvent::Recovered => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the registration notices within a renewal period or two");
    assert_eq!(event, RegistrationEvent::Reregistered);
    assert_eq!(reg.reregistrations(), 1);
    // The watcher's connection died with the server: it lists again and
    // sees the re-registered instance (at the new server's revision).
    tokio::time::timeout(
        WAIT,
        snapshots.wait_for(|s| s.instances.len() == 1 && !s.stale),
    )
    .await
    .expect("the watcher converges after the restart")
    .unwrap();
    let b = writer
        .register(ServiceInstance::new("svc", "b", "127.0.0.1:2"))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, snapshots.wait_for(|s| s.instances.len() == 2))
        .await
        .expect("the watcher follows changes after the restart")
        .unwrap();
    b.deregister().await.unwrap();
}
