//! Registrations under faults, on the memory backend behind a switch that
//! makes it unreachable: re-registration after an outage longer than the
//! TTL (event and metric), and the registering side's health check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coord_core::discovery::{
    DiscoveryClient, HealthCheck, InstanceStatus, RegistrationEvent, RegistryBackend,
    RegistryEvents, RegistryListing, RenewOutcome, ServiceInstance,
};
use coord_core::memory::MemoryBackend;
use coord_core::{ComponentHealth, Error, Metrics, Result, async_trait};

const WAIT: Duration = Duration::from_secs(10);

/// The memory registry, with every call failing while `down` is set.
#[derive(Debug, Default)]
struct Switchable {
    inner: MemoryBackend,
    down: AtomicBool,
}

impl Switchable {
    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::Unavailable {
                message: "switched off".into(),
                source: None,
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl RegistryBackend for Switchable {
    fn registry_backend_name(&self) -> &'static str {
        "switchable"
    }
    async fn register(&self, i: &ServiceInstance, owner: &str, ttl: Duration) -> Result<()> {
        self.check()?;
        self.inner.register(i, owner, ttl).await
    }
    async fn renew_instance(
        &self,
        s: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<RenewOutcome> {
        self.check()?;
        self.inner.renew_instance(s, id, owner, ttl).await
    }
    async fn deregister(&self, s: &str, id: &str, owner: &str) -> Result<bool> {
        self.check()?;
        self.inner.deregister(s, id, owner).await
    }
    async fn services(&self) -> Result<Vec<String>> {
        self.check()?;
        self.inner.services().await
    }
    async fn list_instances(&self, s: &str) -> Result<RegistryListing> {
        self.check()?;
        self.inner.list_instances(s).await
    }
    async fn watch_instances(&self, s: &str, revision: u64) -> Result<RegistryEvents> {
        self.check()?;
        self.inner.watch_instances(s, revision).await
    }
    async fn registry_health(&self) -> ComponentHealth {
        self.inner.registry_health().await
    }
}

async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<RegistrationEvent>,
) -> RegistrationEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the registration is alive")
}

#[tokio::test]
async fn an_instance_lost_in_an_outage_registers_again_and_says_so() {
    let store = MemoryBackend::new();
    let flaky = Arc::new(Switchable {
        inner: store.clone(),
        down: AtomicBool::new(false),
    });
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let d = DiscoveryClient::new(flaky.clone()).with_metrics(metrics);
    let observer = DiscoveryClient::new(Arc::new(store));
    let reg = d
        .register_with_ttl(
            ServiceInstance::new("svc", "a", "127.0.0.1:1"),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let mut events = reg.events();
    let watcher = observer.watch("svc").await.unwrap();
    let mut snapshots = watcher.subscribe();
    flaky.down.store(true, Ordering::SeqCst);
    assert!(matches!(
        next_event(&mut events).await,
        RegistrationEvent::RenewFailed { .. }
    ));
    tokio::time::timeout(WAIT, snapshots.wait_for(|s| s.instances.is_empty()))
        .await
        .expect("the instance expires during the outage")
        .unwrap();
    flaky.down.store(false, Ordering::SeqCst);
    assert_eq!(
        next_event(&mut events).await,
        RegistrationEvent::Reregistered
    );
    assert_eq!(next_event(&mut events).await, RegistrationEvent::Recovered);
    tokio::time::timeout(WAIT, snapshots.wait_for(|s| s.instances.len() == 1))
        .await
        .expect("the instance is back")
        .unwrap();
    assert_eq!(reg.reregistrations(), 1);
    let counted: f64 = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "coord_registration_events_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == "reregistered"))
        .map(|m| m.get_counter().get_value())
        .sum();
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn the_registering_side_health_check_marks_the_instance_down_and_up() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let d = DiscoveryClient::new(Arc::new(MemoryBackend::new()));
    let reg = d
        .register(ServiceInstance::new("svc", "a", addr.to_string()))
        .await
        .unwrap();
    let mut events = reg.events();
    reg.health_check(
        HealthCheck::tcp()
            .interval(Duration::from_millis(20))
            .fall(2)
            .rise(2),
    );
    let watcher = d.watch("svc").await.unwrap();
    let mut snapshots = watcher.subscribe();
    drop(listener);
    assert_eq!(
        next_event(&mut events).await,
        RegistrationEvent::HealthChanged { healthy: false }
    );
    tokio::time::timeout(
        WAIT,
        snapshots.wait_for(|s| {
            s.instances
                .first()
                .is_some_and(|i| i.status == InstanceStatus::Down)
        }),
    )
    .await
    .expect("watchers see it Down")
    .unwrap();
    let _back = tokio::net::TcpListener::bind(addr).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        RegistrationEvent::HealthChanged { healthy: true }
    );
    tokio::time::timeout(
        WAIT,
        snapshots.wait_for(|s| {
            s.instances
                .first()
                .is_some_and(|i| i.status == InstanceStatus::Up)
        }),
    )
    .await
    .expect("watchers see it Up again")
    .unwrap();
}

/// A shutdown's `deregister_all` leaves an abandoned registration to expire
/// (as a crashed process would), and removes the others.
#[tokio::test]
async fn deregister_all_leaves_an_abandoned_registration_to_expire() {
    let store = MemoryBackend::new();
    let d = DiscoveryClient::new(Arc::new(store.clone()));
    let ttl = Duration::from_secs(2);
    let a = d
        .register_with_ttl(ServiceInstance::new("abandon-all", "a", "127.0.0.1:1"), ttl)
        .await
        .unwrap();
    let _b = d
        .register_with_ttl(ServiceInstance::new("abandon-all", "b", "127.0.0.1:2"), ttl)
        .await
        .unwrap();
    a.abandon();
    d.deregister_all().await.unwrap();
    let ids = |listing: RegistryListing| {
        listing
            .instances
            .into_iter()
            .map(|i| i.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.list_instances("abandon-all").await.unwrap()),
        ["a"],
        "b deregistered, a left to expire"
    );
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert!(ids(store.list_instances("abandon-all").await.unwrap()).is_empty());
}
