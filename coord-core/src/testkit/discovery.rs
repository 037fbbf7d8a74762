//! The discovery conformance suite: every case runs unchanged on every backend.
//!
//! Each case takes a [`DiscoveryHarness`] and panics with a message on
//! failure. [`discovery_conformance_tests!`](crate::discovery_conformance_tests)
//! expands them into one named test per case,
//! `conformance_discovery_<case>_<backend>`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::discovery::{
    DiscoveryClient, DiscoveryEvent, InstanceStatus, Registration, RegistrationEvent,
    RegistryBackend, ServiceInstance, ServiceSnapshot, ServiceWatcher,
};
use crate::error::Error;
use crate::testkit::within;

/// How the suite reaches the backend under test.
#[async_trait::async_trait]
pub trait DiscoveryHarness: Send + Sync + 'static {
    /// A new, independent client of the backend under test (its own
    /// connections and, on etcd, its own lease), sharing the registry with
    /// every other client it made.
    async fn new_registry_backend(&self) -> Arc<dyn RegistryBackend>;

    /// Breaks every open watch of the backend (drops the subscriber
    /// connections, restarts the server, compacts the history…) and returns
    /// once the backend answers again; `false` if the backend has no such
    /// fault (memory).
    async fn interrupt_watches(&self) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl DiscoveryHarness for crate::testkit::MemoryHarness {
    async fn new_registry_backend(&self) -> Arc<dyn RegistryBackend> {
        Arc::new(self.store.clone())
    }
}

/// Every case's name, in the order the macro expands them.
pub const CASES: &[&str] = &[
    "register_then_list",
    "deregister_removes_the_instance",
    "watchers_see_register_and_deregister",
    "a_crashed_clients_instance_expires_within_its_ttl",
    "an_abandoned_instance_expires_while_its_client_renews_others",
    "status_weight_and_metadata_changes_propagate",
    "a_thousand_instances_register_and_list",
    "the_newest_registration_of_an_id_wins",
    "bad_input_is_invalid_argument",
    "services_are_isolated",
    "a_watch_started_during_writes_misses_nothing",
    "deregister_all_removes_every_registration",
    "a_watcher_resyncs_after_its_watch_breaks",
    "a_dropped_registration_is_removed",
    "health_reports_healthy",
];

/// How long a change may take to reach a watcher in a test.
const PROPAGATION: Duration = Duration::from_secs(5);

/// A service name no other test uses.
fn unique_service(case: &str) -> String {
    format!(
        "conf-{}-{:012x}",
        case.replace('_', "-"),
        fastrand::u64(..) >> 16
    )
}

fn instance(service: &str, id: &str, port: u16) -> ServiceInstance {
    ServiceInstance::new(service, id, format!("127.0.0.1:{port}"))
}

async fn client(h: &dyn DiscoveryHarness) -> DiscoveryClient {
    DiscoveryClient::new(h.new_registry_backend().await)
        .with_ttl(Duration::from_secs(5))
        .expect("ttl")
}

/// Waits until the watcher's snapshot satisfies `check`.
async fn until(watcher: &ServiceWatcher, what: &str, check: impl Fn(&ServiceSnapshot) -> bool) {
    let mut rx = watcher.subscribe();
    within(PROPAGATION, what, rx.wait_for(|s| check(s)))
        .await
        .expect("the watcher runs");
}

fn ids(s: &ServiceSnapshot) -> Vec<&str> {
    s.instances.iter().map(|i| i.id.as_str()).collect()
}

/// A registered instance is listed, with every field, and its service too.
pub async fn register_then_list(h: &dyn DiscoveryHarness) {
    let d = client(h).await;
    let svc = unique_service("list");
    let full = instance(&svc, "a", 8080)
        .tag("grpc")
        .metadata("k", "v")
        .zone("z1")
        .datacenter("dc1")
        .version("1.2.3")
        .weight(7);
    let _a = d.register(full.clone()).await.expect("register a");
    let _b = d
        .register(instance(&svc, "b", 8081))
        .await
        .expect("register b");
    let listed = d.instances(&svc).await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0], full, "every field round-trips");
    assert_eq!(listed[1].id, "b");
    assert!(d.services().await.expect("services").contains(&svc));
}

/// `deregister` removes the instance at once and says whether it was there.
pub async fn deregister_removes_the_instance(h: &dyn DiscoveryHarness) {
    let d = client(h).await;
    let svc = unique_service("dereg");
    let a = d.register(instance(&svc, "a", 1)).await.expect("register");
    assert!(a.deregister().await.expect("deregister"));
    assert!(d.instances(&svc).await.expect("list").is_empty());
    assert!(!d.services().await.expect("services").contains(&svc));
}

/// A watcher on another client sees registrations and deregistrations, in
/// order, as events and in its snapshot.
pub async fn watchers_see_register_and_deregister(h: &dyn DiscoveryHarness) {
    let writer = client(h).await;
    let reader = client(h).await;
    let svc = unique_service("watch");
    let watcher = reader.watch(&svc).await.expect("watch");
    let mut events = watcher.events();
    let a = writer
        .register(instance(&svc, "a", 1))
        .await
        .expect("register");
    until(&watcher, "the watcher sees a", |s| ids(s) == ["a"]).await;
    a.deregister().await.expect("deregister");
    until(&watcher, "the watcher sees a go", |s| {
        s.instances.is_empty()
    })
    .await;
    let first = within(PROPAGATION, "an event", events.recv())
        .await
        .expect("event");
    assert!(
        matches!(first, DiscoveryEvent::Added(ref i) if i.id == "a"),
        "{first:?}"
    );
    let second = within(PROPAGATION, "an event", events.recv())
        .await
        .expect("event");
    assert!(
        matches!(second, DiscoveryEvent::Removed(ref i) if i.id == "a"),
        "{second:?}"
    );
}

/// An instance whose client stops renewing (a crash) disappears from
/// watchers within its TTL plus one second.
pub async fn a_crashed_clients_instance_expires_within_its_ttl(h: &dyn DiscoveryHarness) {
    let ttl = Duration::from_secs(2);
    let crashed = DiscoveryClient::new(h.new_registry_backend().await);
    let reader = client(h).await;
    let svc = unique_service("crash");
    let watcher = reader.watch(&svc).await.expect("watch");
    let reg = crashed
        .register_with_ttl(instance(&svc, "a", 1), ttl)
        .await
        .expect("register");
    until(&watcher, "the watcher sees a", |s| s.instances.len() == 1).await;
    abandon_until(reg, &watcher, ttl, &[]).await;
    assert!(reader.instances(&svc).await.expect("list").is_empty());
}

/// Abandons `reg` and waits until `watcher` lists just `left`: within the
/// TTL plus one second.
async fn abandon_until(reg: Registration, watcher: &ServiceWatcher, ttl: Duration, left: &[&str]) {
    let stopped = Instant::now();
    reg.abandon();
    let mut rx = watcher.subscribe();
    within(
        ttl + Duration::from_secs(1),
        "the abandoned instance expires (TTL + 1 s)",
        rx.wait_for(|s| ids(s) == left),
    )
    .await
    .expect("the watcher runs");
    assert!(stopped.elapsed() <= ttl + Duration::from_secs(1));
}

/// An abandoned registration expires within its TTL even while the same
/// client keeps other registrations of the same TTL alive (a backend that
/// shares one lease between them must not let their renewals keep it).
pub async fn an_abandoned_instance_expires_while_its_client_renews_others(
    h: &dyn DiscoveryHarness,
) {
    let ttl = Duration::from_secs(2);
    let d = DiscoveryClient::new(h.new_registry_backend().await);
    let reader = client(h).await;
    let svc = unique_service("abandon");
    let watcher = reader.watch(&svc).await.expect("watch");
    let abandoned = d
        .register_with_ttl(instance(&svc, "a", 1), ttl)
        .await
        .expect("register a");
    let kept = d
        .register_with_ttl(instance(&svc, "b", 2), ttl)
        .await
        .expect("register b");
    until(&watcher, "the watcher sees a and b", |s| {
        s.instances.len() == 2
    })
    .await;
    abandon_until(abandoned, &watcher, ttl, &["b"]).await;
    // b outlives a's expiry by more than its own TTL: it is still renewed.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let listed = reader.instances(&svc).await.expect("list");
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["b"],
        "only the abandoned instance expired"
    );
    assert!(kept.deregister().await.expect("deregister b"));
}

/// Status, weight and metadata changes reach watchers; an invalid change is
/// refused and changes nothing.
pub async fn status_weight_and_metadata_changes_propagate(h: &dyn DiscoveryHarness) {
    let writer = client(h).await;
    let reader = client(h).await;
    let svc = unique_service("update");
    let watcher = reader.watch(&svc).await.expect("watch");
    let reg = writer
        .register(instance(&svc, "a", 1))
        .await
        .expect("register");
    reg.set_status(InstanceStatus::Draining)
        .await
        .expect("status");
    reg.set_weight(42).await.expect("weight");
    reg.set_metadata("color", "blue").await.expect("metadata");
    until(&watcher, "the watcher sees every change", |s| {
        s.get("a").is_some_and(|i| {
            i.status == InstanceStatus::Draining
                && i.weight == 42
                && i.metadata.get("color").map(String::as_str) == Some("blue")
        })
    })
    .await;
    reg.set_status(InstanceStatus::Up).await.expect("status up");
    let err = reg
        .set_weight(0)
        .await
        .expect_err("weight 0 on an Up instance");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(
        reg.instance().weight,
        42,
        "a refused change changes nothing"
    );
    until(&watcher, "the watcher sees Up", |s| {
        s.get("a")
            .is_some_and(|i| i.status == InstanceStatus::Up && i.weight == 42)
    })
    .await;
}

/// 1000 instances of one service register and list, and a watcher holds all.
pub async fn a_thousand_instances_register_and_list(h: &dyn DiscoveryHarness) {
    let d = client(h).await;
    let svc = unique_service("many");
    let watcher = d.watch(&svc).await.expect("watch");
    let regs = futures::future::try_join_all((0..1000u16).map(|n| {
        let d = d.clone();
        let svc = svc.clone();
        async move {
            d.register(instance(&svc, &format!("i-{n:04}"), 1000 + n))
                .await
        }
    }))
    .await
    .expect("register 1000");
    let listed = d.instances(&svc).await.expect("list");
    assert_eq!(listed.len(), 1000);
    assert!(listed.windows(2).all(|w| w[0].id < w[1].id), "sorted by id");
    until(&watcher, "the watcher holds 1000", |s| {
        s.instances.len() == 1000
    })
    .await;
    drop(regs);
}

/// Two clients registering one id: the newest wins, the older one is told
/// it was replaced, and its deregistration does not remove the newer entry.
pub async fn the_newest_registration_of_an_id_wins(h: &dyn DiscoveryHarness) {
    let first = client(h).await;
    let second = client(h).await;
    let svc = unique_service("dup");
    let old = first.register(instance(&svc, "a", 1)).await.expect("first");
    let mut old_events = old.events();
    let new = second
        .register(instance(&svc, "a", 2))
        .await
        .expect("second");
    let listed = first.instances(&svc).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].addr, "127.0.0.1:2",
        "the newest registration wins"
    );
    let event = within(
        Duration::from_secs(10),
        "the older registration notices it was replaced (at its next renewal)",
        old_events.recv(),
    )
    .await
    .expect("event");
    assert_eq!(event, RegistrationEvent::Replaced);
    assert!(
        !old.deregister().await.expect("old deregister"),
        "not its entry any more"
    );
    assert_eq!(
        first.instances(&svc).await.expect("list").len(),
        1,
        "the newer entry stays"
    );
    assert!(new.deregister().await.expect("new deregister"));
}

/// Bad instances, names and TTLs are `InvalidArgument`, and store nothing.
pub async fn bad_input_is_invalid_argument(h: &dyn DiscoveryHarness) {
    let d = client(h).await;
    let svc = unique_service("bad");
    let bad = [
        ServiceInstance::new("", "a", "127.0.0.1:1"),
        ServiceInstance::new(format!("{svc}/x"), "a", "127.0.0.1:1"),
        ServiceInstance::new(format!("{{{svc}}}"), "a", "127.0.0.1:1"),
        ServiceInstance::new(&svc, "", "127.0.0.1:1"),
        ServiceInstance::new(&svc, "a", "not an address"),
        ServiceInstance::new(&svc, "a", "127.0.0.1:1").weight(0),
        ServiceInstance::new(&svc, "a", "127.0.0.1:1").metadata("k", "v".repeat(20_000)),
    ];
    for i in bad {
        let err = d.register(i.clone()).await.expect_err("refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{i:?}: {err}");
    }
    let err = d
        .register_with_ttl(instance(&svc, "a", 1), Duration::ZERO)
        .await
        .expect_err("zero TTL");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    for name in ["", "a/b", "a:b", "{a}"] {
        assert!(
            matches!(d.instances(name).await, Err(Error::InvalidArgument(_))),
            "{name:?}"
        );
        assert!(
            matches!(d.watch(name).await, Err(Error::InvalidArgument(_))),
            "{name:?}"
        );
    }
    assert!(
        d.instances(&svc).await.expect("list").is_empty(),
        "nothing stored"
    );
}

/// Services never see each other's instances, even when one name is a
/// prefix of the other.
pub async fn services_are_isolated(h: &dyn DiscoveryHarness) {
    let d = client(h).await;
    let svc = unique_service("iso");
    let longer = format!("{svc}-admin");
    let dotted = format!("{svc}.x");
    let watcher = d.watch(&svc).await.expect("watch");
    let _a = d.register(instance(&svc, "a", 1)).await.expect("a");
    let _b = d.register(instance(&longer, "b", 2)).await.expect("b");
    let _c = d.register(instance(&dotted, "c", 3)).await.expect("c");
    assert_eq!(ids_of(&d.instances(&svc).await.expect("list")), ["a"]);
    assert_eq!(ids_of(&d.instances(&longer).await.expect("list")), ["b"]);
    assert_eq!(ids_of(&d.instances(&dotted).await.expect("list")), ["c"]);
    until(&watcher, "the watcher sees a", |s| ids(s) == ["a"]).await;
    let services = d.services().await.expect("services");
    for s in [&svc, &longer, &dotted] {
        assert!(services.contains(s), "{s} in {services:?}");
    }
    assert_eq!(
        ids(&watcher.snapshot()),
        ["a"],
        "no other service leaked in"
    );
}

fn ids_of(v: &[ServiceInstance]) -> Vec<&str> {
    v.iter().map(|i| i.id.as_str()).collect()
}

/// A watcher started while another client keeps writing ends up with
/// exactly what the registry holds.
pub async fn a_watch_started_during_writes_misses_nothing(h: &dyn DiscoveryHarness) {
    let writer = client(h).await;
    let reader = client(h).await;
    let svc = unique_service("race");
    let w = writer.clone();
    let s = svc.clone();
    let writing = tokio::spawn(async move {
        let mut regs = Vec::new();
        for n in 0..200u16 {
            let r = w
                .register(instance(&s, &format!("i-{n:03}"), 1000 + n))
                .await?;
            if n % 3 == 0 {
                r.deregister().await?;
            } else {
                regs.push(r);
            }
        }
        Ok::<_, Error>(regs)
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let watcher = reader.watch(&svc).await.expect("watch");
    let regs = writing.await.expect("writer").expect("writes");
    let expected: Vec<String> = regs.iter().map(|r| r.instance().id).collect();
    let mut rx = watcher.subscribe();
    within(
        PROPAGATION,
        "the watcher converges on the registry",
        rx.wait_for(|s| s.instances.iter().map(|i| i.id.clone()).collect::<Vec<_>>() == expected),
    )
    .await
    .expect("the watcher runs");
}

/// `deregister_all` (what `Coord::shutdown` calls) removes every live
/// registration of the client.
pub async fn deregister_all_removes_every_registration(h: &dyn DiscoveryHarness) {
    let d = client(h).await;
    let svc = unique_service("all");
    let regs = vec![
        d.register(instance(&svc, "a", 1)).await.expect("a"),
        d.register(instance(&svc, "b", 2)).await.expect("b"),
    ];
    d.deregister_all().await.expect("deregister all");
    assert!(d.instances(&svc).await.expect("list").is_empty());
    drop(regs);
}

/// After its watch breaks (a dropped connection, a server restart, a
/// compaction), a watcher lists again and ends up current, including
/// changes made while it was cut off.
pub async fn a_watcher_resyncs_after_its_watch_breaks(h: &dyn DiscoveryHarness) {
    let writer = client(h).await;
    let reader = client(h).await;
    let svc = unique_service("resync");
    let watcher = reader.watch(&svc).await.expect("watch");
    let a = writer.register(instance(&svc, "a", 1)).await.expect("a");
    until(&watcher, "the watcher sees a", |s| ids(s) == ["a"]).await;
    let interrupted = h.interrupt_watches().await;
    let _b = writer.register(instance(&svc, "b", 2)).await.expect("b");
    a.deregister().await.expect("deregister a");
    until(&watcher, "the watcher converges after the break", |s| {
        ids(s) == ["b"] && !s.stale
    })
    .await;
    let _c = writer.register(instance(&svc, "c", 3)).await.expect("c");
    until(&watcher, "the watcher follows new changes", |s| {
        ids(s) == ["b", "c"]
    })
    .await;
    let _ = interrupted;
}

/// Dropping a registration removes its instance without waiting for the TTL.
pub async fn a_dropped_registration_is_removed(h: &dyn DiscoveryHarness) {
    let d = client(h).await;
    let svc = unique_service("drop");
    let watcher = d.watch(&svc).await.expect("watch");
    let reg = d.register(instance(&svc, "a", 1)).await.expect("register");
    until(&watcher, "the watcher sees a", |s| s.instances.len() == 1).await;
    drop(reg);
    let mut rx = watcher.subscribe();
    within(
        Duration::from_secs(2),
        "the dropped registration is removed (well before its 5 s TTL)",
        rx.wait_for(|s| s.instances.is_empty()),
    )
    .await
    .expect("the watcher runs");
}

/// The registry answers a health probe.
pub async fn health_reports_healthy(h: &dyn DiscoveryHarness) {
    let backend = h.new_registry_backend().await;
    let health = backend.registry_health().await;
    assert!(health.is_healthy(), "{health:?}");
}
