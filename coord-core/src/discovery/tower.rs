//! A [`tower::discover::Discover`] over a watched service (feature `tower`),
//! so that tower's balancers (`tower::balance::p2c::Balance`) can route to
//! the instances a [`ServiceWatcher`] sees.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::tower::discover::Change;
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::ReusableBoxFuture;

use super::instance::{InstanceStatus, ServiceInstance};
use super::watcher::{ServiceSnapshot, ServiceWatcher};
use crate::error::Error;

type Snapshots = watch::Receiver<Arc<ServiceSnapshot>>;
type Changed = (Result<(), watch::error::RecvError>, Snapshots);

/// A [`tower::discover::Discover`] over a watched service that owns its
/// watcher: dropping the stream stops the watch.
///
/// It starts with a [`Change::Insert`] for every routable instance of the
/// current snapshot, then follows the watcher:
///
/// - an instance is routable while its status is [`InstanceStatus::Up`];
///   `Draining` and `Down` instances are left out, like deregistered ones;
/// - the key of each service is the instance id;
/// - an instance that is deregistered, expires or stops being `Up` yields a
///   [`Change::Remove`] of its id;
/// - a new `Up` instance yields a [`Change::Insert`] of a service built by
///   `make_service`;
/// - an `Up` instance that changes in any way (address, weight, tags,
///   metadata, zone, version…) yields a fresh [`Change::Insert`] under the
///   same id, which tower's balancers treat as a replacement: the new
///   service takes the old one's place once it is ready, and the old one is
///   dropped (requests already sent on it complete).
///
/// Snapshots that arrive faster than the balancer polls are coalesced: the
/// changes yielded take the balancer from the last set it saw to the latest
/// one. While the backend is unreachable the watcher keeps its last snapshot
/// (marked stale), and so does this stream. Weights are not passed to the
/// balancer (tower's p2c balancer picks by load, not weight); build them
/// into the service if you need them.
///
/// The stream is `Send` and `Unpin`, never fails (its error type is
/// [`Error`] because tower's balancers need one), and waits for the
/// watcher's notifications rather than polling. This one never ends on its
/// own, since it keeps its watcher running; one made by [`discover_from`]
/// ends when the watcher it follows is dropped (tower's balancer then keeps
/// the last set of services it had).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::convert::Infallible;
/// use std::sync::Arc;
/// use coord_core::discovery::{DiscoveryClient, ServiceInstance, discover};
/// use coord_core::memory::MemoryBackend;
/// use tower::balance::p2c::Balance;
/// use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
/// use tower::{Service, ServiceExt, service_fn};
///
/// let discovery = DiscoveryClient::new(Arc::new(MemoryBackend::new()));
/// let _a = discovery.register(ServiceInstance::new("echo", "a", "10.0.0.1:80")).await?;
/// let _b = discovery.register(ServiceInstance::new("echo", "b", "10.0.0.2:80")).await?;
///
/// // One tower service per instance; a real one would connect to `addr`.
/// let endpoints = discover(discovery.watch("echo").await?, |instance| {
///     let addr = instance.addr.clone();
///     service_fn(move |request: String| {
///         let reply = format!("{addr} got {request}");
///         async move { Ok::<_, Infallible>(reply) }
///     })
/// });
/// let mut balancer = Balance::new(PendingRequestsDiscover::new(
///     endpoints,
///     CompleteOnResponse::default(),
/// ));
/// let reply = balancer.ready().await.unwrap().call("hi".to_owned()).await.unwrap();
/// assert!(reply.ends_with("got hi"), "{reply}");
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
pub struct TowerDiscover<S> {
    /// Kept running for as long as the stream lives (`discover`).
    _watcher: Option<ServiceWatcher>,
    /// The next snapshot notification (owns the receiver while waiting).
    changed: ReusableBoxFuture<'static, Changed>,
    /// The routable instances the consumer has been told about, by id.
    known: BTreeMap<String, ServiceInstance>,
    /// Changes computed but not yielded yet.
    pending: VecDeque<Pending>,
    make_service: Box<dyn Fn(&ServiceInstance) -> S + Send>,
    /// The watcher is gone: nothing more will come.
    ended: bool,
    _service: PhantomData<fn() -> S>,
}

#[derive(Debug)]
enum Pending {
    Insert(ServiceInstance),
    Remove(String),
}

/// A [`TowerDiscover`] over `watcher`'s service that keeps the watcher
/// running for as long as it lives; `make_service` builds the tower service
/// of each routable (`Up`) instance. See [`TowerDiscover`] for what it
/// yields.
pub fn discover<S, F>(watcher: ServiceWatcher, make_service: F) -> TowerDiscover<S>
where
    F: Fn(&ServiceInstance) -> S + Send + 'static,
{
    let mut discover = discover_from(&watcher, make_service);
    discover._watcher = Some(watcher);
    discover
}

/// A [`TowerDiscover`] that follows `watcher` without owning it: the stream
/// ends once the watcher is dropped. See [`TowerDiscover`] for what it
/// yields.
pub fn discover_from<S, F>(watcher: &ServiceWatcher, make_service: F) -> TowerDiscover<S>
where
    F: Fn(&ServiceInstance) -> S + Send + 'static,
{
    // Subscribed before the first read: a change made in between is then
    // either in the snapshot read or reported by the receiver.
    let mut snapshots = watcher.subscribe();
    let first = snapshots.borrow_and_update().clone();
    let mut discover = TowerDiscover {
        _watcher: None,
        changed: ReusableBoxFuture::new(next_snapshot(snapshots)),
        known: BTreeMap::new(),
        pending: VecDeque::new(),
        make_service: Box::new(make_service),
        ended: false,
        _service: PhantomData,
    };
    discover.follow(&first);
    discover
}

async fn next_snapshot(mut snapshots: Snapshots) -> Changed {
    let changed = snapshots.changed().await;
    (changed, snapshots)
}

impl<S> TowerDiscover<S> {
    /// Queues the changes from the instances already reported to `next`'s
    /// routable ones: removals first, then insertions and replacements.
    fn follow(&mut self, next: &ServiceSnapshot) {
        let routable = |i: &&ServiceInstance| i.status == InstanceStatus::Up;
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|id| next.get(id).filter(routable).is_none())
            .cloned()
            .collect();
        for id in gone {
            self.known.remove(&id);
            self.pending.push_back(Pending::Remove(id));
        }
        for instance in next.instances.iter().map(|i| &**i).filter(routable) {
            if self.known.get(&instance.id) != Some(instance) {
                self.known.insert(instance.id.clone(), instance.clone());
                self.pending.push_back(Pending::Insert(instance.clone()));
            }
        }
    }
}

impl<S> Stream for TowerDiscover<S> {
    type Item = Result<Change<String, S>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(next) = this.pending.pop_front() {
                let change = match next {
                    Pending::Insert(instance) => {
                        let service = (this.make_service)(&instance);
                        Change::Insert(instance.id, service)
                    }
                    Pending::Remove(id) => Change::Remove(id),
                };
                return Poll::Ready(Some(Ok(change)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let (changed, mut snapshots) = std::task::ready!(this.changed.poll(cx));
            if changed.is_err() {
                // The watcher is gone (its sender dropped); the completed
                // future is never polled again.
                this.ended = true;
                return Poll::Ready(None);
            }
            let next = snapshots.borrow_and_update().clone();
            this.changed.set(next_snapshot(snapshots));
            // If nothing routable changed, the loop polls the new future,
            // which registers the waker and returns `Pending`.
            this.follow(&next);
        }
    }
}

impl<S> fmt::Debug for TowerDiscover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerDiscover")
            .field("owns_watcher", &self._watcher.is_some())
            .field("known", &self.known.keys().collect::<Vec<_>>())
            .field("pending", &self.pending)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::DiscoveryClient;
    use crate::memory::MemoryBackend;
    use futures::StreamExt;
    use std::time::Duration;

    fn describe(change: Change<String, String>) -> String {
        match change {
            Change::Insert(id, svc) => format!("+{id}={svc}"),
            Change::Remove(id) => format!("-{id}"),
        }
    }

    async fn next(d: &mut TowerDiscover<String>) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), d.next())
            .await
            .expect("a change within 5 s")
            .map(|c| describe(c.unwrap()))
    }

    fn assert_send_unpin<T: Send + Unpin>(_: &T) {}

    #[tokio::test]
    async fn inserts_removes_and_replaces_by_id() {
        let discovery = DiscoveryClient::new(Arc::new(MemoryBackend::new()));
        let a = discovery
            .register(ServiceInstance::new("svc", "a", "10.0.0.1:80"))
            .await
            .unwrap();
        let _down = discovery
            .register(ServiceInstance::new("svc", "d", "10.0.0.4:80").status(InstanceStatus::Down))
            .await
            .unwrap();
        let watcher = discovery.watch("svc").await.unwrap();
        let mut d = discover_from(&watcher, |i| i.addr.clone());
        assert_send_unpin(&d);
        assert_eq!(next(&mut d).await.unwrap(), "+a=10.0.0.1:80");

        let b = discovery
            .register(ServiceInstance::new("svc", "b", "10.0.0.2:80"))
            .await
            .unwrap();
        assert_eq!(next(&mut d).await.unwrap(), "+b=10.0.0.2:80");

        // A changed instance is inserted again under its id.
        b.update(|i| i.addr = "10.0.0.3:80".to_owned())
            .await
            .unwrap();
        assert_eq!(next(&mut d).await.unwrap(), "+b=10.0.0.3:80");
        b.set_weight(7).await.unwrap();
        assert_eq!(next(&mut d).await.unwrap(), "+b=10.0.0.3:80");

        // Leaving `Up` removes it; coming back inserts it.
        b.set_status(InstanceStatus::Draining).await.unwrap();
        assert_eq!(next(&mut d).await.unwrap(), "-b");
        b.set_status(InstanceStatus::Up).await.unwrap();
        assert_eq!(next(&mut d).await.unwrap(), "+b=10.0.0.3:80");

        a.deregister().await.unwrap();
        assert_eq!(next(&mut d).await.unwrap(), "-a");

        // Nothing else is pending, and the stream waits rather than ending.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), d.next())
                .await
                .is_err()
        );
        drop(watcher);
        assert_eq!(next(&mut d).await, None);
        assert_eq!(next(&mut d).await, None);
    }
}
