//! The config conformance suite: every case runs unchanged on every backend.
//!
//! Each case takes a [`ConfigHarness`] and panics with a message on failure.
//! [`config_conformance_tests!`](crate::config_conformance_tests) expands
//! them into one named test per case, `conformance_config_<case>_<backend>`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{ConfigBackend, ConfigCenter, ConfigWrite, Put, StaticKeys};
use crate::error::Error;
use crate::testkit::within;

/// How the suite reaches the backend under test.
#[async_trait::async_trait]
pub trait ConfigHarness: Send + Sync + 'static {
    /// A new, independent client of the backend under test, sharing the
    /// store with every other client it made.
    async fn new_config_backend(&self) -> Arc<dyn ConfigBackend>;

    /// Breaks every open watch (drops the subscriber connections, restarts
    /// the server…) and returns once the backend answers again; `false` if
    /// the backend has no such fault (memory).
    async fn interrupt_config_watches(&self) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl ConfigHarness for crate::testkit::MemoryHarness {
    async fn new_config_backend(&self) -> Arc<dyn ConfigBackend> {
        Arc::new(self.store.clone())
    }
}

/// Every case's name, in the order the macro expands them.
pub const CASES: &[&str] = &[
    "put_then_get_round_trips",
    "versions_increase_per_key",
    "compare_and_set_conflicts",
    "delete_is_a_versioned_tombstone",
    "history_is_newest_first",
    "rollback_writes_the_old_content_as_a_new_version",
    "diff_is_unified",
    "list_returns_the_latest_live_keys_under_a_prefix",
    "compact_keeps_the_newest_versions",
    "freeze_refuses_writes",
    "multi_key_writes_are_all_or_nothing",
    "watch_delivers_every_version_in_order",
    "a_watch_resumes_after_its_channel_breaks",
    "secrets_are_never_stored_in_plain_text",
    "a_corrupted_version_is_a_codec_error",
    "bad_input_is_invalid_argument",
    "templates_resolve_and_report_cycles_and_missing_references",
    "a_typed_handle_reloads_and_refuses_invalid_versions",
    "figment_layers_the_remote_namespace",
    "health_reports_healthy",
];

const PROPAGATION: Duration = Duration::from_secs(10);

/// A namespace no other test uses.
fn unique_ns(case: &str) -> String {
    format!("conf{:08x}/{}", fastrand::u32(..), case.replace('_', "-"))
}

async fn center(h: &dyn ConfigHarness) -> ConfigCenter {
    ConfigCenter::new(h.new_config_backend().await)
        .with_author("tester")
        .with_keys(StaticKeys::new("k1", [42; 32]))
}

/// A value written reads back with its metadata.
pub async fn put_then_get_round_trips(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/db/url", unique_ns("rt"));
    assert!(c.get(&key).await.unwrap().is_none());
    let v = c
        .put_with(&key, "postgres://db:5432", Put::new().message("first"))
        .await
        .unwrap();
    assert_eq!(v, 1);
    let got = c.get(&key).await.unwrap().expect("the value");
    assert_eq!(got.as_str().unwrap(), "postgres://db:5432");
    assert_eq!(got.version, 1);
    assert_eq!(got.meta.author, "tester");
    assert_eq!(got.meta.message, "first");
    assert!(got.meta.time_ms > 0);
    let other = center(h).await;
    assert_eq!(
        other.get(&key).await.unwrap().unwrap().value,
        got.value,
        "another client reads it"
    );
}

/// Every write makes the next version of its key; keys count separately.
pub async fn versions_increase_per_key(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("ver");
    for i in 1..=5u64 {
        assert_eq!(c.put(&format!("{ns}/a"), format!("{i}")).await.unwrap(), i);
    }
    assert_eq!(c.put(&format!("{ns}/b"), "x").await.unwrap(), 1);
    assert_eq!(
        c.get_version(&format!("{ns}/a"), 3)
            .await
            .unwrap()
            .unwrap()
            .as_str()
            .unwrap(),
        "3"
    );
}

/// A write expecting another version than the latest is a `Conflict` and
/// changes nothing; expecting 0 creates only.
pub async fn compare_and_set_conflicts(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/k", unique_ns("cas"));
    assert_eq!(
        c.put_with(&key, "a", Put::new().expect_version(0))
            .await
            .unwrap(),
        1
    );
    let err = c
        .put_with(&key, "b", Put::new().expect_version(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(
        c.put_with(&key, "b", Put::new().expect_version(1))
            .await
            .unwrap(),
        2
    );
    let err = c
        .put_with(&key, "c", Put::new().expect_version(1))
        .await
        .unwrap_err();
    match err {
        Error::Conflict { actual, .. } => assert!(actual.contains('2'), "{actual}"),
        e => panic!("{e}"),
    }
    assert_eq!(c.get(&key).await.unwrap().unwrap().as_str().unwrap(), "b");
}

/// A delete is a version: the key reads as absent, history keeps it, and a
/// later write continues the numbering.
pub async fn delete_is_a_versioned_tombstone(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/k", unique_ns("del"));
    c.put(&key, "a").await.unwrap();
    assert_eq!(c.delete(&key).await.unwrap(), 2);
    assert!(c.get(&key).await.unwrap().is_none());
    let history = c.history(&key, 10).await.unwrap();
    assert!(history[0].is_deleted());
    assert_eq!(c.put(&key, "b").await.unwrap(), 3);
    assert_eq!(c.get(&key).await.unwrap().unwrap().as_str().unwrap(), "b");
}

/// History lists versions newest first, up to the limit.
pub async fn history_is_newest_first(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/k", unique_ns("hist"));
    for i in 1..=6 {
        c.put(&key, format!("v{i}")).await.unwrap();
    }
    let all: Vec<u64> = c
        .history(&key, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(all, [6, 5, 4, 3, 2, 1]);
    let two: Vec<String> = c
        .history(&key, 2)
        .await
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(two, ["v6", "v5"]);
}

/// A rollback is a new version holding the old content.
pub async fn rollback_writes_the_old_content_as_a_new_version(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/k", unique_ns("rb"));
    c.put(&key, "good").await.unwrap();
    c.put(&key, "bad").await.unwrap();
    assert_eq!(c.rollback(&key, 1).await.unwrap(), 3);
    let now = c.get(&key).await.unwrap().unwrap();
    assert_eq!(now.as_str().unwrap(), "good");
    assert!(
        now.meta.message.contains("rollback to version 1"),
        "{}",
        now.meta.message
    );
    assert!(matches!(
        c.rollback(&key, 99).await,
        Err(Error::NotFound(_))
    ));
}

/// `diff` is a unified diff between two versions.
pub async fn diff_is_unified(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/k", unique_ns("diff"));
    c.put(&key, "a = 1\nb = 2\nc = 3\n").await.unwrap();
    c.put(&key, "a = 1\nb = 20\nc = 3\n").await.unwrap();
    let diff = c.diff(&key, 1, 2).await.unwrap();
    assert!(diff.contains("-b = 2\n"), "{diff}");
    assert!(diff.contains("+b = 20\n"), "{diff}");
    assert!(diff.contains(&format!("--- {key}@1")), "{diff}");
}

/// `list` returns the latest value of each live key under a prefix, by
/// whole segments, sorted; deleted keys are left out.
pub async fn list_returns_the_latest_live_keys_under_a_prefix(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("list");
    c.put(&format!("{ns}/a"), "1").await.unwrap();
    c.put(&format!("{ns}/a"), "2").await.unwrap();
    c.put(&format!("{ns}/db/url"), "u").await.unwrap();
    c.put(&format!("{ns}/gone"), "x").await.unwrap();
    c.delete(&format!("{ns}/gone")).await.unwrap();
    c.put(&format!("{ns}x/other"), "no")
        .await
        .unwrap_or_default();
    let (app, env) = ns.split_once('/').unwrap();
    c.put(&format!("{app}/{env}-2/k"), "other env")
        .await
        .unwrap();
    let listed: Vec<(String, String)> = c
        .list(&ns)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.key.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        listed,
        [
            (format!("{ns}/a"), "2".to_owned()),
            (format!("{ns}/db/url"), "u".to_owned())
        ]
    );
    assert_eq!(c.list(&format!("{ns}/db")).await.unwrap().len(), 1);
}

/// `compact` drops old versions and keeps the newest.
pub async fn compact_keeps_the_newest_versions(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/k", unique_ns("compact"));
    for i in 1..=10 {
        c.put(&key, format!("v{i}")).await.unwrap();
    }
    assert_eq!(c.compact(&key, 3).await.unwrap(), 7);
    let left: Vec<u64> = c
        .history(&key, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(left, [10, 9, 8]);
    assert!(c.get_version(&key, 2).await.unwrap().is_none());
    assert_eq!(c.put(&key, "v11").await.unwrap(), 11, "numbering continues");
}

/// A frozen namespace or key refuses writes with `Frozen` until unfrozen.
pub async fn freeze_refuses_writes(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("freeze");
    let key = format!("{ns}/k");
    c.put(&key, "a").await.unwrap();
    c.freeze(&ns).await.unwrap();
    assert!(matches!(c.put(&key, "b").await, Err(Error::Frozen(_))));
    assert!(matches!(c.delete(&key).await, Err(Error::Frozen(_))));
    assert!(matches!(
        c.put(&format!("{ns}/new"), "b").await,
        Err(Error::Frozen(_))
    ));
    c.unfreeze(&ns).await.unwrap();
    c.freeze(&key).await.unwrap();
    assert!(matches!(c.put(&key, "b").await, Err(Error::Frozen(_))));
    c.put(&format!("{ns}/other"), "ok")
        .await
        .expect("only the key is frozen");
    c.unfreeze(&key).await.unwrap();
    assert_eq!(c.put(&key, "b").await.unwrap(), 2);
    assert_eq!(c.get(&key).await.unwrap().unwrap().as_str().unwrap(), "b");
}

/// Several writes to one namespace apply all or nothing.
pub async fn multi_key_writes_are_all_or_nothing(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("multi");
    c.put(&format!("{ns}/a"), "1").await.unwrap();
    let record = |v: &str| c.record(v.as_bytes(), "", false, false).unwrap();
    let writes = vec![
        ConfigWrite {
            key: format!("{ns}/a"),
            expected: Some(1),
            record: record("2"),
        },
        ConfigWrite {
            key: format!("{ns}/b"),
            expected: Some(5),
            record: record("x"),
        },
    ];
    let err = c.backend().config_append(&ns, &writes).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(
        c.get(&format!("{ns}/a")).await.unwrap().unwrap().version,
        1,
        "nothing applied"
    );
    assert!(c.get(&format!("{ns}/b")).await.unwrap().is_none());
    let writes = vec![
        ConfigWrite {
            key: format!("{ns}/a"),
            expected: Some(1),
            record: record("2"),
        },
        ConfigWrite {
            key: format!("{ns}/b"),
            expected: Some(0),
            record: record("x"),
        },
    ];
    assert_eq!(
        c.backend().config_append(&ns, &writes).await.unwrap(),
        [2, 1]
    );
}

/// 500 rapid writes reach a watcher in order, the last one included.
pub async fn watch_delivers_every_version_in_order(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("watch");
    let key = format!("{ns}/k");
    let mut watch = c.watch(&ns).await.unwrap();
    let writer = center(h).await;
    let k = key.clone();
    let writing = tokio::spawn(async move {
        for i in 1..=500 {
            writer.put(&k, format!("{i}")).await.unwrap();
        }
    });
    let mut expected = 1u64;
    within(
        PROPAGATION * 3,
        "every version reaches the watcher",
        async {
            while expected <= 500 {
                let v = watch.next().await.expect("open").expect("readable");
                assert_eq!(v.key, key);
                assert_eq!(v.version, expected, "in order, none skipped");
                assert_eq!(v.as_str().unwrap(), expected.to_string());
                expected += 1;
            }
        },
    )
    .await;
    writing.await.unwrap();
}

/// After its channel breaks, a watch delivers what was written meanwhile.
pub async fn a_watch_resumes_after_its_channel_breaks(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("resume");
    let mut watch = c.watch(&ns).await.unwrap();
    c.put(&format!("{ns}/a"), "1").await.unwrap();
    let first = within(PROPAGATION, "the first change", watch.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);
    let interrupted = h.interrupt_config_watches().await;
    let writer = center(h).await;
    writer.put(&format!("{ns}/a"), "2").await.unwrap();
    writer.put(&format!("{ns}/b"), "x").await.unwrap();
    let mut got = Vec::new();
    within(PROPAGATION, "the changes made across the break", async {
        while got.len() < 2 {
            let v = watch.next().await.unwrap().unwrap();
            got.push((v.key.clone(), v.version));
        }
    })
    .await;
    got.sort();
    assert_eq!(
        got,
        [(format!("{ns}/a"), 2), (format!("{ns}/b"), 1)],
        "interrupted: {interrupted}"
    );
}

/// A secret's stored bytes never hold its plain text; it reads back
/// decrypted; without its key it is a clear error.
pub async fn secrets_are_never_stored_in_plain_text(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let key = format!("{}/db/password", unique_ns("secret"));
    let plain = "correct horse battery staple";
    c.put_with(&key, plain, Put::new().secret()).await.unwrap();
    let raw = c
        .backend()
        .config_latest(&key)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert!(
        !raw.windows(plain.len()).any(|w| w == plain.as_bytes()),
        "plain text stored"
    );
    let got = c.get(&key).await.unwrap().unwrap();
    assert!(got.is_secret());
    assert_eq!(got.as_str().unwrap(), plain);
    let wrong =
        ConfigCenter::new(h.new_config_backend().await).with_keys(StaticKeys::new("k1", [1; 32]));
    assert!(matches!(wrong.get(&key).await, Err(Error::Codec { .. })));
    let unknown =
        ConfigCenter::new(h.new_config_backend().await).with_keys(StaticKeys::new("k2", [42; 32]));
    assert!(matches!(
        unknown.get(&key).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A version whose checksum fails is a `Codec` error naming it; the
/// previous version still reads.
pub async fn a_corrupted_version_is_a_codec_error(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("corrupt");
    let key = format!("{ns}/k");
    c.put(&key, "good").await.unwrap();
    let mut bad = c.record(b"evil", "", false, false).unwrap().to_vec();
    *bad.last_mut().unwrap() ^= 0xff;
    let write = ConfigWrite {
        key: key.clone(),
        expected: Some(1),
        record: Bytes::from(bad),
    };
    c.backend().config_append(&ns, &[write]).await.unwrap();
    let err = c.get(&key).await.unwrap_err();
    assert!(matches!(err, Error::Codec { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("{key} version 2")),
        "{err}"
    );
    assert_eq!(
        c.get_version(&key, 1)
            .await
            .unwrap()
            .unwrap()
            .as_str()
            .unwrap(),
        "good"
    );
}

/// Bad keys, prefixes, oversized values and non-text reads are clear errors.
pub async fn bad_input_is_invalid_argument(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("bad");
    for key in ["", "a", "a/b", "a/b/", "a b/c/d", &format!("{ns}/.coord/x")] {
        assert!(
            matches!(c.put(key, "v").await, Err(Error::InvalidArgument(_))),
            "{key:?}"
        );
        assert!(
            matches!(c.get(key).await, Err(Error::InvalidArgument(_))),
            "{key:?}"
        );
    }
    let huge = vec![b'x'; crate::config::MAX_CONFIG_VALUE_BYTES + 1];
    assert!(matches!(
        c.put(&format!("{ns}/huge"), &huge).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(
        c.get(&format!("{ns}/huge")).await.unwrap().is_none(),
        "nothing half-written"
    );
    c.put(&format!("{ns}/bin"), [0xff, 0xfe]).await.unwrap();
    let bin = c.get(&format!("{ns}/bin")).await.unwrap().unwrap();
    assert!(matches!(bin.as_str(), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        c.list("nope").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.freeze("x").await,
        Err(Error::InvalidArgument(_))
    ));
}

/// `${app/env/key}` and `${env:VAR}` resolve on read, nested; a cycle and a
/// missing reference are errors naming the chain; a malformed template is
/// an `InvalidArgument`.
pub async fn templates_resolve_and_report_cycles_and_missing_references(h: &dyn ConfigHarness) {
    let c = center(h).await;
    let ns = unique_ns("tmpl");
    // A variable nobody sets: its reference must be reported missing.
    let var = format!("COORD_TEST_TMPL_UNSET_{:08X}", fastrand::u32(..));
    c.put(&format!("{ns}/host"), "db.internal").await.unwrap();
    c.put(
        &format!("{ns}/url"),
        format!("postgres://${{{ns}/host}}:5432"),
    )
    .await
    .unwrap();
    c.put(
        &format!("{ns}/dsn"),
        format!("${{{ns}/url}}?sslmode=require $${{literal}}"),
    )
    .await
    .unwrap();
    let dsn = c.get_resolved(&format!("{ns}/dsn")).await.unwrap().unwrap();
    assert_eq!(
        dsn.as_str().unwrap(),
        "postgres://db.internal:5432?sslmode=require ${literal}"
    );
    let path = c.resolve("home=${env:PATH}").await.unwrap();
    assert!(path.starts_with("home=") && path.len() > 5);
    c.put(&format!("{ns}/a"), format!("${{{ns}/b}}"))
        .await
        .unwrap();
    c.put(&format!("{ns}/b"), format!("x${{{ns}/a}}"))
        .await
        .unwrap();
    let err = c.get_resolved(&format!("{ns}/a")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("{ns}/a → {ns}/b → {ns}/a")),
        "{err}"
    );
    c.put(&format!("{ns}/m"), format!("${{{ns}/missing}}"))
        .await
        .unwrap();
    let err = c.get_resolved(&format!("{ns}/m")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("{ns}/m → {ns}/missing")),
        "{err}"
    );
    let err = c.resolve(&format!("${{env:{var}}}")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    assert!(matches!(
        c.resolve("${unclosed").await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A typed handle follows its key: valid versions replace the value, an
/// invalid or undecodable one is refused (event) and the last good value kept.
pub async fn a_typed_handle_reloads_and_refuses_invalid_versions(h: &dyn ConfigHarness) {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Limits {
        max: u32,
    }
    let c = center(h).await;
    let key = format!("{}/limits", unique_ns("handle"));
    c.put(&key, r#"{"max": 10}"#).await.unwrap();
    let handle = c
        .handle::<Limits>(&key)
        .validate(|l| {
            if l.max > 0 {
                Ok(())
            } else {
                Err("max must be positive".into())
            }
        })
        .build()
        .await
        .unwrap();
    assert_eq!(handle.get().max, 10);
    let mut events = handle.events();
    let writer = center(h).await;
    writer.put(&key, r#"{"max": 20}"#).await.unwrap();
    let e = within(PROPAGATION, "the reload", events.recv())
        .await
        .unwrap();
    assert_eq!(e, crate::config::HandleEvent::Reloaded { version: 2 });
    assert_eq!(handle.get().max, 20);
    writer.put(&key, r#"{"max": 0}"#).await.unwrap();
    let e = within(PROPAGATION, "the refusal", events.recv())
        .await
        .unwrap();
    assert!(
        matches!(e, crate::config::HandleEvent::Refused { version: 3, ref reason } if reason.contains("positive")),
        "{e:?}"
    );
    writer.put(&key, "not json").await.unwrap();
    let e = within(PROPAGATION, "the refusal", events.recv())
        .await
        .unwrap();
    assert!(
        matches!(e, crate::config::HandleEvent::Refused { version: 4, .. }),
        "{e:?}"
    );
    assert_eq!(handle.get().max, 20, "the last good value is kept");
    assert_eq!(handle.version(), 2);
    writer.put(&key, r#"{"max": 30}"#).await.unwrap();
    let e = within(PROPAGATION, "the next reload", events.recv())
        .await
        .unwrap();
    assert_eq!(e, crate::config::HandleEvent::Reloaded { version: 5 });
    assert_eq!(*handle.get(), Limits { max: 30 });
    let missing = c.handle::<Limits>(&format!("{key}-none")).build().await;
    assert!(matches!(missing, Err(Error::NotFound(_))));
}

/// The remote namespace layers over defaults with figment: nested keys,
/// typed JSON values and plain strings.
pub async fn figment_layers_the_remote_namespace(h: &dyn ConfigHarness) {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct App {
        name: String,
        port: u16,
        debug: bool,
        db: Db,
    }
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Db {
        url: String,
        pool: u32,
    }
    let c = center(h).await;
    let ns = unique_ns("figment");
    c.put(&format!("{ns}/port"), "9090").await.unwrap();
    c.put(&format!("{ns}/db/url"), "postgres://remote")
        .await
        .unwrap();
    c.put(&format!("{ns}/debug"), "true").await.unwrap();
    let defaults = App {
        name: "api".into(),
        port: 8080,
        debug: false,
        db: Db {
            url: "sqlite://".into(),
            pool: 4,
        },
    };
    let remote = crate::config::ConfigProvider::load(&c, &ns).await.unwrap();
    let app: App = figment::Figment::from(figment::providers::Serialized::defaults(defaults))
        .merge(remote)
        .extract()
        .unwrap();
    assert_eq!(app.name, "api", "a default no layer overrides");
    assert_eq!(app.port, 9090);
    assert!(app.debug);
    assert_eq!(app.db.url, "postgres://remote");
    assert_eq!(app.db.pool, 4, "a nested default beside a remote value");
}

/// The backend answers a health probe.
pub async fn health_reports_healthy(h: &dyn ConfigHarness) {
    let health = h.new_config_backend().await.config_health().await;
    assert!(health.is_healthy(), "{health:?}");
}

pub use super::config_workflow::*;
