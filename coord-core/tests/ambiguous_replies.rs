//! A lost reply to an acquisition is "maybe acquired", never "not acquired":
//! retried, the same owner gets the same grant; given up, it is cleaned up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coord_core::memory::MemoryBackend;
use coord_core::{
    AcquireOutcome, Capabilities, ComponentHealth, Error, LockBackend, LockClient, LockOwner,
    ReleaseEvents, Result, RetryPolicy,
};

/// Applies every acquisition but loses the reply of the first `lose` ones.
#[derive(Debug)]
struct LosesReplies {
    inner: MemoryBackend,
    lose: AtomicUsize,
    releases: AtomicUsize,
}

#[coord_core::async_trait]
impl LockBackend for LosesReplies {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, n: &str, o: &LockOwner, ttl: Duration) -> Result<AcquireOutcome> {
        let outcome = self.inner.try_acquire(n, o, ttl).await?;
        if self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Timeout("injected: the reply was lost".into()));
        }
        Ok(outcome)
    }
    async fn renew(&self, n: &str, o: &LockOwner, ttl: Duration) -> Result<()> {
        self.inner.renew(n, o, ttl).await
    }
    async fn release(&self, n: &str, o: &LockOwner) -> Result<()> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.inner.release(n, o).await
    }
    async fn subscribe(&self, n: &str) -> Result<ReleaseEvents> {
        self.inner.subscribe(n).await
    }
    async fn force_release(&self, n: &str) -> Result<bool> {
        self.inner.force_release(n).await
    }
    async fn health(&self) -> ComponentHealth {
        self.inner.health().await
    }
}

fn backend(lose: usize) -> Arc<LosesReplies> {
    Arc::new(LosesReplies {
        inner: MemoryBackend::new(),
        lose: AtomicUsize::new(lose),
        releases: AtomicUsize::new(0),
    })
}

#[tokio::test]
async fn a_retried_acquisition_gets_the_grant_its_lost_reply_carried() {
    let b = backend(2);
    let client = LockClient::new(b.clone());
    let guard = client
        .lock("a")
        .build()
        .acquire()
        .await
        .expect("acquired on retry");
    assert_eq!(guard.fencing_token().as_u64(), 1, "one grant, not three");
    let other = LockClient::new(Arc::new(b.inner.clone()));
    assert!(
        other
            .lock("a")
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    guard.release().await.unwrap();
    assert!(
        other
            .lock("a")
            .build()
            .try_acquire()
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_given_up_acquisition_is_released_in_the_background() {
    let b = backend(1);
    let client = LockClient::builder(b.clone())
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let err = client.lock("g").build().acquire().await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    // The lock was in fact granted; the client must not leave it behind.
    let other = LockClient::new(Arc::new(b.inner.clone()));
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        other
            .lock("g")
            .poll_interval(Duration::from_secs(30))
            .build()
            .acquire(),
    )
    .await
    .expect("the orphaned grant was cleaned up")
    .unwrap();
    assert_eq!(b.releases.load(Ordering::SeqCst), 1);
    assert_eq!(client.held(), 0);
    got.release().await.unwrap();
}
