//! The fenced-store conformance suite: every [`FencedStore`] (memory, Redis,
//! etcd) must order writes by fencing token the same way.
//! [`fenced_store_conformance_tests!`](crate::fenced_store_conformance_tests)
//! expands the cases into tests named `conformance_fenced_<case>_<backend>`.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::fence::FencedStore;
use crate::lock::{FencingToken, LockClient};
use crate::testkit::{LockHarness, unique_name, within};

/// Every case's name, in the order the macro expands them.
pub const CASES: &[&str] = &[
    "newer_and_equal_tokens_accepted_older_refused",
    "concurrent_writers_leave_the_highest_token",
    "lock_tokens_fence_the_store",
];

/// A harness that also makes fenced stores on the backend under test.
#[async_trait::async_trait]
pub trait FencedStoreHarness: LockHarness {
    /// A new store handle (its own connection), sharing data with every
    /// other store and lock backend the harness made.
    async fn new_fenced_store(&self) -> Arc<dyn FencedStore>;
}

fn t(n: u64) -> FencingToken {
    FencingToken::new(n)
}

/// Newer and equal tokens are accepted, an older one is refused with
/// `Conflict` and changes nothing, over the whole u64 range; keys are
/// independent; an empty key is an invalid argument.
pub async fn newer_and_equal_tokens_accepted_older_refused(h: &dyn FencedStoreHarness) {
    let store = h.new_fenced_store().await;
    let key = unique_name("fenced");
    assert_eq!(store.read(&key).await.expect("read"), None);
    store
        .write(&key, t(5), b"first")
        .await
        .expect("first write");
    store
        .write(&key, t(5), b"again")
        .await
        .expect("equal token");
    store
        .write(&key, t(9), b"newer")
        .await
        .expect("newer token");
    let err = store.write(&key, t(8), b"stale").await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.read(&key).await.expect("read"),
        Some((t(9), b"newer".to_vec())),
        "a refused write changes nothing"
    );
    // Exact beyond a Lua number's 2^53.
    let big = (1u64 << 53) + 1;
    store.write(&key, t(big), b"big").await.expect("big token");
    let below = store.write(&key, t(big - 1), b"x").await;
    assert!(matches!(below, Err(Error::Conflict { .. })), "{below:?}");
    store
        .write(&key, t(u64::MAX), b"")
        .await
        .expect("max token");
    assert_eq!(
        store.read(&key).await.expect("read"),
        Some((t(u64::MAX), Vec::new()))
    );
    let other = unique_name("fenced");
    store
        .write(&other, t(1), b"other")
        .await
        .expect("another key is independent");
    let empty = store.write("", t(1), b"x").await;
    assert!(matches!(empty, Err(Error::InvalidArgument(_))), "{empty:?}");
}

/// 65 writers with random tokens over 8 store handles race on one key: the
/// highest token and its value are what is left.
pub async fn concurrent_writers_leave_the_highest_token(h: &dyn FencedStoreHarness) {
    let key = unique_name("fenced-race");
    let mut tokens: Vec<u64> = (0..64).map(|_| fastrand::u64(..) >> 1).collect();
    tokens.push(0);
    let max = *tokens.iter().max().expect("tokens");
    let mut tasks = Vec::new();
    for chunk in tokens.chunks(8) {
        let store = h.new_fenced_store().await;
        let (key, chunk) = (key.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for token in chunk {
                match store.write(&key, t(token), &token.to_be_bytes()).await {
                    Ok(()) | Err(Error::Conflict { .. }) => {}
                    Err(e) => panic!("write {token}: {e}"),
                }
            }
        }));
    }
    within(Duration::from_secs(30), "the writers finish", async {
        for task in tasks {
            task.await.expect("writer");
        }
    })
    .await;
    let store = h.new_fenced_store().await;
    assert_eq!(
        store.read(&key).await.expect("read"),
        Some((t(max), max.to_be_bytes().to_vec()))
    );
}

/// The recipe: writes carry the lock guard's token; after the lock changes
/// hands, the earlier holder's write is refused.
pub async fn lock_tokens_fence_the_store(h: &dyn FencedStoreHarness) {
    let store = h.new_fenced_store().await;
    let client = LockClient::new(h.new_backend().await);
    let name = unique_name("fenced-lock");
    let lock = client
        .lock(name.clone())
        .ttl(Duration::from_secs(10))
        .build();
    let first = lock.acquire().await.expect("first holder");
    let old = first.fencing_token();
    store
        .write(&name, old, b"one")
        .await
        .expect("first holder writes");
    first.release().await.expect("release");
    let second = lock.acquire().await.expect("second holder");
    store
        .write(&name, second.fencing_token(), b"two")
        .await
        .expect("second holder writes");
    let late = store.write(&name, old, b"late").await;
    assert!(matches!(late, Err(Error::Conflict { .. })), "{late:?}");
    second.release().await.expect("release");
    assert_eq!(
        store.read(&name).await.expect("read").expect("value").1,
        b"two"
    );
}

/// Expands the fenced-store suite into one `#[tokio::test]` per case, named
/// `conformance_fenced_<case>_<backend>`. `$harness` implements
/// [`FencedStoreHarness`].
#[macro_export]
macro_rules! fenced_store_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::fenced_store_conformance_tests!(@cases $backend, $harness,
            newer_and_equal_tokens_accepted_older_refused,
            concurrent_writers_leave_the_highest_token,
            lock_tokens_fence_the_store,
        );
    };
    (@cases $backend:ident, $harness:expr, $($case:ident),+ $(,)?) => {
        $crate::testkit::__pastey::paste! {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn [<conformance_fenced_ $case _ $backend>]() {
                    let harness = $harness;
                    $crate::testkit::fenced::$case(&harness).await;
                }
            )+
        }
    };
}
