//! The config center on Redis beyond the conformance suite: a large
//! namespace and a long history (the scripts' chunking), the center's own
//! keys under a freeze, and a server restart without persistence.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coord_core::Error;
use coord_core::config::{ConfigBackend, ConfigCenter, ConfigWrite, StoredVersion};
use coord_core::testkit::within;
use coord_redis::testkit::RedisHarness;

const WAIT: Duration = Duration::from_secs(15);

/// A write of an opaque record (the backend never decodes records).
fn write(key: &str, expected: Option<u64>, record: &str) -> ConfigWrite {
    ConfigWrite {
        key: key.to_owned(),
        expected,
        record: Bytes::from(record.to_owned()),
    }
}

/// 2,500 keys list sorted, whole (several `list.lua` chunks); 2,100
/// versions of one key, written in one call, compact to the newest five
/// (several `HDEL` batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_namespace_lists_whole_and_a_long_history_compacts() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let ns = "big/list";
    for batch in 0..5 {
        let writes: Vec<ConfigWrite> = (0..500)
            .map(|i| {
                let n = batch * 500 + i;
                write(&format!("{ns}/k{n:05}"), Some(0), &format!("r{n}"))
            })
            .collect();
        let versions = b.config_append(ns, &writes).await.unwrap();
        assert!(versions.iter().all(|v| *v == 1), "{versions:?}");
    }
    b.config_append("big/list-2", &[write("big/list-2/k", None, "x")])
        .await
        .unwrap();
    let listed = b.config_list(ns).await.unwrap();
    assert_eq!(listed.len(), 2500, "another namespace is not listed");
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0), "sorted by key");
    assert_eq!(
        listed[1234],
        (
            format!("{ns}/k01234"),
            StoredVersion {
                version: 1,
                record: Bytes::from("r1234")
            }
        )
    );
    assert_eq!(
        b.config_list(&format!("{ns}/k00007")).await.unwrap().len(),
        1
    );

    let key = format!("{ns}/hot");
    let writes: Vec<ConfigWrite> = (1..=2100)
        .map(|i| write(&key, None, &format!("v{i}")))
        .collect();
    let versions = b.config_append(ns, &writes).await.unwrap();
    assert_eq!(versions, (1..=2100).collect::<Vec<u64>>());
    assert_eq!(b.config_history(&key, 3).await.unwrap().len(), 3);
    assert_eq!(b.config_compact(&key, 5).await.unwrap(), 2095);
    let left: Vec<u64> = b
        .config_history(&key, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|s| s.version)
        .collect();
    assert_eq!(left, [2100, 2099, 2098, 2097, 2096]);
    assert_eq!(b.config_version(&key, 2095).await.unwrap(), None);
    assert_eq!(
        b.config_latest(&key).await.unwrap().unwrap().record,
        Bytes::from("v2100")
    );
    assert_eq!(b.config_compact(&key, 0).await.unwrap(), 4, "keeps one");
    assert_eq!(b.config_compact("big/list/none", 1).await.unwrap(), 0);
}

/// A freeze refuses a write of a frozen key even beside the center's own
/// keys (nothing is written), while those (`.coord/…`) are always written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_centers_own_keys_are_written_under_a_freeze() {
    let h = RedisHarness::start().await;
    let b = h.connect().await.unwrap();
    let ns = "app/prod";
    let key = format!("{ns}/k");
    let audit = format!("{ns}/.coord/audit");
    b.config_set_frozen(ns, true).await.unwrap();
    b.config_set_frozen(&key, true).await.unwrap();
    assert_eq!(
        b.config_frozen(ns).await.unwrap(),
        [ns.to_owned(), key.clone()]
    );
    assert!(b.config_frozen("app/dev").await.unwrap().is_empty());
    assert_eq!(
        b.config_append(ns, &[write(&audit, None, "a")])
            .await
            .unwrap(),
        [1]
    );
    let err = b
        .config_append(ns, &[write(&audit, None, "b"), write(&key, None, "v")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Frozen(m) if m.contains("namespace app/prod is frozen")),
        "{err}"
    );
    assert_eq!(
        b.config_latest(&audit).await.unwrap().unwrap().version,
        1,
        "all or nothing"
    );
    b.config_set_frozen(ns, false).await.unwrap();
    let err = b
        .config_append(ns, &[write(&key, None, "v")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Frozen(m) if m.contains("config key app/prod/k is frozen")),
        "{err}"
    );
    b.config_set_frozen(&key, false).await.unwrap();
    assert!(b.config_frozen(ns).await.unwrap().is_empty());
    assert_eq!(
        b.config_append(ns, &[write(&key, Some(0), "v")])
            .await
            .unwrap(),
        [1]
    );
    assert!(matches!(
        b.config_append(ns, &[write("app/dev/k", None, "v")]).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(b.config_append(ns, &[]).await.unwrap(), Vec::<u64>::new());
}

/// A server without persistence forgets the config center's data when it
/// restarts (hence: run it with AOF); a watch resumes on its own and
/// delivers what is written afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_empties_the_store_and_a_watch_resumes() {
    let mut harness = RedisHarness::start().await;
    let c = ConfigCenter::new(Arc::new(harness.connect().await.unwrap()));
    c.put("app/prod/a", "1").await.unwrap();
    c.put("app/prod/a", "2").await.unwrap();
    let mut watch = c.watch("app/prod").await.unwrap();
    c.put("app/prod/b", "x").await.unwrap();
    let seen = within(WAIT, "the write before the restart", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.key.as_str(), seen.version), ("app/prod/b", 1));

    harness.server.restart().unwrap();

    let after = within(WAIT, "redis answers again", async {
        loop {
            match c.get("app/prod/a").await {
                Ok(v) => return v,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(after.is_none(), "the store is empty after the restart");
    assert!(c.history("app/prod/a", 10).await.unwrap().is_empty());
    assert!(c.list("app/prod").await.unwrap().is_empty());

    c.put("app/prod/c", "after").await.unwrap();
    let next = within(WAIT, "the watch resumes", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.key.as_str(), next.version), ("app/prod/c", 1));
    assert_eq!(next.as_str().unwrap(), "after");

    // `b` was seen at version 1 before the restart: its new version 1 is
    // delivered too (the watch starts keys over when the store lost them).
    c.put("app/prod/b", "again").await.unwrap();
    let again = within(WAIT, "b's new first version", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.key.as_str(), again.version), ("app/prod/b", 1));
    assert_eq!(again.as_str().unwrap(), "again");
}
