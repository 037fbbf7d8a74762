//! The config conformance cases of the workflows: audit, approvals, gray
//! release, promotion between environments, export and import.
//!
//! They are re-exported by [`config`](super::config), so
//! [`config_conformance_tests!`](crate::config_conformance_tests) runs them
//! with the rest of the config suite.

use std::time::Duration;

use crate::config::{
    AuditAction, AuditFilter, ClientIdentity, ConfigCenter, DraftStatus, ExportFormat,
    ExportOptions, GrayRule, Put, StaticKeys,
};
use crate::error::Error;
use crate::testkit::config::ConfigHarness;
use crate::testkit::within;

/// Every workflow case's name, in the order the macro expands them.
pub const WORKFLOW_CASES: &[&str] = &[
    "audit_entries_record_every_action",
    "a_refused_change_leaves_no_audit_entry",
    "approvals_require_another_author",
    "nothing_is_published_before_approval",
    "gray_release_resolves_by_id_label_and_percent",
    "gray_promote_and_abort",
    "promote_applies_the_diff_atomically",
    "export_import_round_trip",
];

/// A namespace no other test uses.
fn ns(case: &str) -> String {
    format!("wf{:08x}/{case}", fastrand::u32(..))
}

async fn as_author(h: &dyn ConfigHarness, author: &str) -> ConfigCenter {
    ConfigCenter::new(h.new_config_backend().await)
        .with_author(author)
        .with_keys(StaticKeys::new("k1", [42; 32]))
}

fn actions(log: &[crate::config::AuditEntry]) -> Vec<AuditAction> {
    log.iter().map(|e| e.action).collect()
}

/// Every action appends an entry (who, when, what, which key and version),
/// listed newest first and filtered by author, action, key, time and count.
pub async fn audit_entries_record_every_action(h: &dyn ConfigHarness) {
    let ann = as_author(h, "ann").await;
    let bob = as_author(h, "bob").await;
    let ns = ns("audit");
    let key = format!("{ns}/db/url");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ann.put_with(&key, "a", Put::new().message("first"))
        .await
        .unwrap();
    bob.put_with(&key, "b", Put::new().expect_version(1))
        .await
        .unwrap();
    ann.delete(&key).await.unwrap();
    bob.rollback(&key, 2).await.unwrap();
    ann.freeze(&ns).await.unwrap();
    ann.unfreeze(&ns).await.unwrap();
    ann.put_with(&format!("{ns}/pw"), "s3cret", Put::new().secret())
        .await
        .unwrap();
    let rotated = ConfigCenter::new(h.new_config_backend().await)
        .with_author("carol")
        .with_keys(StaticKeys::new("k1", [42; 32]).rotate("k2", [43; 32]));
    assert_eq!(rotated.rotate_secrets(&ns).await.unwrap(), 1);
    bob.compact(&key, 2).await.unwrap();

    let log = ann.audit(&ns, AuditFilter::new()).await.unwrap();
    assert_eq!(
        actions(&log),
        [
            AuditAction::Compact,
            AuditAction::Rotate,
            AuditAction::Put,
            AuditAction::Unfreeze,
            AuditAction::Freeze,
            AuditAction::Rollback,
            AuditAction::Delete,
            AuditAction::Put,
            AuditAction::Put,
        ],
        "newest first: {log:#?}"
    );
    let first = &log[8];
    assert_eq!(
        (first.who.as_str(), first.key.as_str(), first.version),
        ("ann", key.as_str(), Some(1))
    );
    assert_eq!(first.message, "first");
    assert!(first.time_ms >= before.saturating_sub(1000), "a time");
    assert_eq!((log[7].who.as_str(), log[7].version), ("bob", Some(2)));
    assert_eq!(log[6].version, Some(3), "the delete's version");
    assert_eq!(log[5].version, Some(4), "the rollback's version");
    assert_eq!(log[4].key, ns, "a namespace freeze names the namespace");
    assert_eq!(log[1].who, "carol");
    assert_eq!(log[1].changes.len(), 1, "the rotated key and its version");
    assert_eq!(log[1].changes[0].version, 2);
    assert!(log.windows(2).all(|w| w[0].seq > w[1].seq), "by position");

    let bobs = ann.audit(&ns, AuditFilter::new().who("bob")).await.unwrap();
    assert_eq!(
        actions(&bobs),
        [
            AuditAction::Compact,
            AuditAction::Rollback,
            AuditAction::Put
        ]
    );
    let puts = ann
        .audit(&ns, AuditFilter::new().action(AuditAction::Put))
        .await
        .unwrap();
    assert_eq!(puts.len(), 3);
    let about_pw = ann
        .audit(&ns, AuditFilter::new().key(format!("{ns}/pw")))
        .await
        .unwrap();
    assert_eq!(
        actions(&about_pw),
        [AuditAction::Rotate, AuditAction::Put],
        "a multi-key action matches each of its keys"
    );
    let two = ann
        .audit(&ns, AuditFilter::new().key(&key).limit(2))
        .await
        .unwrap();
    assert_eq!(actions(&two), [AuditAction::Compact, AuditAction::Rollback]);
    let future = ann
        .audit(&ns, AuditFilter::new().since_ms(u64::MAX / 2))
        .await
        .unwrap();
    assert!(future.is_empty());
    assert_eq!(
        ann.audit(&ns, AuditFilter::new().since_ms(before))
            .await
            .unwrap()
            .len(),
        9
    );
    assert!(
        rotated
            .list(&ns)
            .await
            .unwrap()
            .iter()
            .all(|v| !v.key.contains(".coord")),
        "the log is not configuration"
    );
    assert!(matches!(
        ann.audit("nope", AuditFilter::new()).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A change that is refused (a compare-and-set conflict, a frozen key)
/// writes no audit entry: entry and change are one atomic write.
pub async fn a_refused_change_leaves_no_audit_entry(h: &dyn ConfigHarness) {
    let c = as_author(h, "ann").await;
    let ns = ns("audit-atomic");
    let key = format!("{ns}/k");
    c.put(&key, "a").await.unwrap();
    assert!(matches!(
        c.put_with(&key, "b", Put::new().expect_version(7)).await,
        Err(Error::Conflict { .. })
    ));
    c.freeze(&key).await.unwrap();
    assert!(matches!(c.put(&key, "c").await, Err(Error::Frozen(_))));
    assert!(matches!(c.delete(&key).await, Err(Error::Frozen(_))));
    let log = c.audit(&ns, AuditFilter::new()).await.unwrap();
    assert_eq!(actions(&log), [AuditAction::Freeze, AuditAction::Put]);
    // Concurrent writers without expected versions: every version has
    // exactly one entry naming it.
    c.unfreeze(&key).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let writer = as_author(h, &format!("w{w}")).await;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                writer.put(&key, format!("{w}-{i}")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut versions: Vec<u64> = c
        .audit(&ns, AuditFilter::new().action(AuditAction::Put))
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.version)
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=41).collect::<Vec<_>>());
}

/// Where approval is required, direct writes are refused; a draft is
/// published only when another author approves it, compared-and-set
/// against the version it was based on; secrets stay encrypted in drafts.
pub async fn approvals_require_another_author(h: &dyn ConfigHarness) {
    let ann = as_author(h, "ann").await;
    let bob = as_author(h, "bob").await;
    let ns = ns("approval");
    let key = format!("{ns}/limit");
    ann.put(&key, "10").await.unwrap();
    assert!(!ann.approval_required(&ns).await.unwrap());
    ann.require_approval(&ns, true).await.unwrap();
    assert!(bob.approval_required(&ns).await.unwrap());
    for refused in [
        ann.put(&key, "11").await.map(|_| ()),
        ann.delete(&key).await.map(|_| ()),
        ann.rollback(&key, 1).await.map(|_| ()),
        ann.gray_publish(&key, "12", GrayRule::new().id("x"))
            .await
            .map(|_| ()),
    ] {
        let err = refused.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("propose"), "{err}");
    }

    let draft = ann.propose(&key, "20", "more headroom").await.unwrap();
    assert_eq!(draft.namespace(), ns);
    let err = ann.approve(&draft).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("self-approval"), "{err}");
    let pending = bob.draft(&draft).await.unwrap();
    assert_eq!(
        (pending.proposer.as_str(), pending.base_version),
        ("ann", 1)
    );
    assert!(bob.draft_diff(&pending).await.unwrap().contains("+20"));
    assert_eq!(bob.approve(&draft).await.unwrap(), 2);
    let now = ann.get(&key).await.unwrap().unwrap();
    assert_eq!((now.as_str().unwrap(), now.version), ("20", 2));
    assert_eq!(now.meta.author, "ann", "the proposer wrote it");
    assert!(now.meta.message.contains("approved by bob"));
    assert!(matches!(
        ann.draft(&draft).await.unwrap().status,
        DraftStatus::Approved { ref by, version: 2, .. } if by == "bob"
    ));
    assert!(
        matches!(bob.approve(&draft).await, Err(Error::Conflict { .. })),
        "approved once"
    );
    let log = ann
        .audit(&ns, AuditFilter::new().action(AuditAction::Approve))
        .await
        .unwrap();
    assert_eq!((log[0].who.as_str(), log[0].version), ("bob", Some(2)));

    // A secret draft holds ciphertext; the approver needs no key.
    let pw = format!("{ns}/password");
    let plain = "tr0ub4dor&3";
    let secret = ann
        .propose_with(&pw, plain, Put::new().secret().message("new password"))
        .await
        .unwrap();
    let drafts_raw = ann
        .backend()
        .config_list(&format!("{ns}/.coord/drafts"))
        .await
        .unwrap();
    assert!(
        drafts_raw
            .iter()
            .all(|(_, s)| !s.record.windows(plain.len()).any(|w| w == plain.as_bytes()))
    );
    let keyless = ConfigCenter::new(h.new_config_backend().await)
        .with_author("carol")
        .with_keys(StaticKeys::new("other", [1; 32]));
    assert_eq!(keyless.approve(&secret).await.unwrap(), 1);
    let got = bob.get(&pw).await.unwrap().unwrap();
    assert!(got.is_secret());
    assert_eq!(got.as_str().unwrap(), plain);

    // The key moved since the draft: approving conflicts, nothing changes.
    let stale = ann.propose(&key, "30", "").await.unwrap();
    ann.require_approval(&ns, false).await.unwrap();
    ann.put(&key, "25").await.unwrap();
    ann.require_approval(&ns, true).await.unwrap();
    assert!(matches!(
        bob.approve(&stale).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        ann.get(&key).await.unwrap().unwrap().as_str().unwrap(),
        "25"
    );
    bob.reject(&stale, "based on an old version").await.unwrap();
    assert!(matches!(
        ann.draft(&stale).await.unwrap().status,
        DraftStatus::Rejected { ref reason, .. } if reason == "based on an old version"
    ));
    assert!(bob.drafts(&ns).await.unwrap().is_empty());
    let deletion = ann.propose_delete(&key, "unused").await.unwrap();
    bob.approve(&deletion).await.unwrap();
    assert!(ann.get(&key).await.unwrap().is_none());
    assert!(matches!(
        bob.approve(&crate::config::DraftId::parse(&format!("{ns}/00000000deadbeef")).unwrap())
            .await,
        Err(Error::NotFound(_))
    ));
}

/// A pending draft changes nothing: readers and watchers see the old value
/// until approval, and a rejected draft is never published.
pub async fn nothing_is_published_before_approval(h: &dyn ConfigHarness) {
    let ann = as_author(h, "ann").await;
    let bob = as_author(h, "bob").await;
    let ns = ns("pending");
    let key = format!("{ns}/mode");
    ann.put(&key, "old").await.unwrap();
    ann.require_approval(&ns, true).await.unwrap();
    let mut watch = bob.watch(&ns).await.unwrap();
    let first = ann.propose(&key, "new", "switch").await.unwrap();
    let second = ann.propose(&key, "newer", "switch harder").await.unwrap();
    assert_eq!(
        bob.get(&key).await.unwrap().unwrap().as_str().unwrap(),
        "old"
    );
    assert_eq!(bob.list(&ns).await.unwrap().len(), 1);
    let pending: Vec<_> = bob
        .drafts(&ns)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(pending.len(), 2);
    assert!(pending.contains(&first) && pending.contains(&second));
    bob.reject(&second, "too much").await.unwrap();
    assert_eq!(bob.drafts(&ns).await.unwrap().len(), 1);
    assert_eq!(
        bob.get(&key).await.unwrap().unwrap().as_str().unwrap(),
        "old"
    );
    bob.approve(&first).await.unwrap();
    let seen = within(
        Duration::from_secs(10),
        "the approved version",
        watch.next(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (seen.as_str().unwrap(), seen.version),
        ("new", 2),
        "the first change a watcher sees is the approved one"
    );
    assert!(bob.drafts(&ns).await.unwrap().is_empty());
    assert!(matches!(
        bob.approve(&second).await,
        Err(Error::Conflict { .. })
    ));
}

/// A gray candidate reaches listed ids, clients with every rule label, and
/// a stable share of ids (within ±3 points over 10,000); others read the
/// published value.
pub async fn gray_release_resolves_by_id_label_and_percent(h: &dyn ConfigHarness) {
    let c = as_author(h, "ann").await;
    let ns = ns("gray");
    let key = format!("{ns}/pool/size");
    c.put(&key, "10").await.unwrap();
    let rule = GrayRule::new()
        .id("canary-1")
        .label("zone", "eu-1")
        .label("tier", "web")
        .percent(10.0);
    c.gray_publish(&key, "20", rule).await.unwrap();
    let read = |id: &str, labels: &[(&str, &str)]| {
        let mut client = ClientIdentity::new(id);
        for (k, v) in labels {
            client = client.label(*k, *v);
        }
        let c = c.clone();
        let key = key.clone();
        async move { c.get_for(&key, &client).await.unwrap().unwrap() }
    };
    let by_id = read("canary-1", &[]).await;
    assert!(by_id.gray);
    assert_eq!(by_id.value.as_str().unwrap(), "20");
    assert_eq!(by_id.value.version, 1, "based on the published version");
    let by_labels = read("x", &[("zone", "eu-1"), ("tier", "web"), ("os", "linux")]).await;
    assert_eq!(by_labels.value.as_str().unwrap(), "20");
    let release = c.gray(&key).await.unwrap().expect("in progress");
    // Find ids outside the percentage to check the label rule needs all labels.
    let outside: Vec<String> = (0..100)
        .map(|i| format!("host-{i}"))
        .filter(|id| !release.matches(&ClientIdentity::new(id.clone())))
        .take(2)
        .collect();
    let partial = read(&outside[0], &[("zone", "eu-1")]).await;
    assert!(!partial.gray);
    assert_eq!(partial.value.as_str().unwrap(), "10");
    assert_eq!(c.get(&key).await.unwrap().unwrap().as_str().unwrap(), "10");
    let hits = (0..10_000)
        .filter(|i| release.matches(&ClientIdentity::new(format!("client-{i}"))))
        .count();
    assert!(
        (700..=1300).contains(&hits),
        "{hits} of 10,000 ids matched 10 %"
    );
    // The same id resolves the same way every time, through get_for too.
    let inside = (0..1000)
        .map(|i| format!("host-{i}"))
        .find(|id| release.matches(&ClientIdentity::new(id.clone())))
        .unwrap();
    for _ in 0..3 {
        assert!(read(&inside, &[]).await.gray);
        assert!(!read(&outside[1], &[]).await.gray);
    }
    assert_eq!(c.gray_releases(&ns).await.unwrap().len(), 1);
    assert!(matches!(
        c.gray_publish(&key, "x", GrayRule::new()).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.gray_publish(&key, "x", GrayRule::new().percent(150.0))
            .await,
        Err(Error::InvalidArgument(_))
    ));
    // A secret key's candidate is stored encrypted.
    let pw = format!("{ns}/pw");
    c.put_with(&pw, "old-secret", Put::new().secret())
        .await
        .unwrap();
    c.gray_publish(&pw, "new-secret", GrayRule::new().id("a"))
        .await
        .unwrap();
    let raw = c
        .backend()
        .config_latest(&format!("{ns}/.coord/gray/pw"))
        .await
        .unwrap()
        .unwrap();
    assert!(!raw.record.windows(10).any(|w| w == b"new-secret"));
    let got = c
        .get_for(&pw, &ClientIdentity::new("a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value.as_str().unwrap(), "new-secret");
}

/// Promoting publishes the candidate to everyone as a normal version and
/// ends the release; aborting ends it; a key moved since the release makes
/// promotion a conflict; watchers of the gray releases see every change.
pub async fn gray_promote_and_abort(h: &dyn ConfigHarness) {
    let c = as_author(h, "ann").await;
    let ns = ns("gray-end");
    let key = format!("{ns}/flag");
    let me = ClientIdentity::new("me");
    c.put(&key, "off").await.unwrap();
    let mut gray_watch = c.watch_gray(&ns).await.unwrap();
    c.gray_publish(&key, "on", GrayRule::new().id("me"))
        .await
        .unwrap();
    let started = within(Duration::from_secs(10), "the release", gray_watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(!started.is_deleted());
    assert!(c.get_for(&key, &me).await.unwrap().unwrap().gray);
    c.gray_abort(&key).await.unwrap();
    let ended = within(Duration::from_secs(10), "the abort", gray_watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_deleted());
    let back = c.get_for(&key, &me).await.unwrap().unwrap();
    assert!(!back.gray);
    assert_eq!(back.value.as_str().unwrap(), "off");
    assert!(c.gray(&key).await.unwrap().is_none());
    assert!(matches!(c.gray_abort(&key).await, Err(Error::NotFound(_))));
    assert!(matches!(
        c.gray_promote(&key).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(c.get(&key).await.unwrap().unwrap().version, 1, "untouched");

    c.gray_publish(&key, "on", GrayRule::new().percent(5.0))
        .await
        .unwrap();
    assert_eq!(c.gray_promote(&key).await.unwrap(), 2);
    let everyone = c
        .get_for(&key, &ClientIdentity::new("anyone"))
        .await
        .unwrap()
        .unwrap();
    assert!(!everyone.gray);
    assert_eq!(
        (everyone.value.as_str().unwrap(), everyone.value.version),
        ("on", 2)
    );
    assert!(c.gray(&key).await.unwrap().is_none());

    c.gray_publish(&key, "maybe", GrayRule::new().id("me"))
        .await
        .unwrap();
    c.put(&key, "moved").await.unwrap();
    assert!(matches!(
        c.gray_promote(&key).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        c.get(&key).await.unwrap().unwrap().as_str().unwrap(),
        "moved"
    );
    assert!(c.gray(&key).await.unwrap().is_some(), "still in progress");
    let log = c.audit(&ns, AuditFilter::new().key(&key)).await.unwrap();
    assert!(actions(&log).contains(&AuditAction::GrayPromote));
    assert!(actions(&log).contains(&AuditAction::GrayAbort));
    assert_eq!(
        actions(&log)
            .iter()
            .filter(|a| **a == AuditAction::GrayPublish)
            .count(),
        3
    );
}

/// The plan shows every difference between two namespaces; applying it
/// changes the target in one atomic write, and a target that moved since
/// the plan (or is frozen) refuses the whole of it.
pub async fn promote_applies_the_diff_atomically(h: &dyn ConfigHarness) {
    let c = as_author(h, "ann").await;
    let app = format!("wf{:08x}", fastrand::u32(..));
    let (staging, prod) = (format!("{app}/staging"), format!("{app}/prod"));
    c.put(&format!("{staging}/same"), "1").await.unwrap();
    c.put(&format!("{prod}/same"), "1").await.unwrap();
    c.put(&format!("{staging}/changed"), "a = 2\n")
        .await
        .unwrap();
    c.put(&format!("{prod}/changed"), "a = 1\n").await.unwrap();
    c.put(&format!("{staging}/added"), "new").await.unwrap();
    c.put(&format!("{prod}/only-prod"), "x").await.unwrap();
    c.put_with(&format!("{staging}/pw"), "hunter2", Put::new().secret())
        .await
        .unwrap();

    let plan = c.promote_diff(&staging, &prod).await.unwrap();
    let names: Vec<&str> = plan.changes.iter().map(|ch| ch.name.as_str()).collect();
    assert_eq!(names, ["added", "changed", "only-prod", "pw"]);
    assert!(plan.changes[2].is_deletion());
    let diff = plan.diff();
    assert!(
        diff.contains("-a = 1\n") && diff.contains("+a = 2\n"),
        "{diff}"
    );
    assert!(diff.contains("+new"), "{diff}");
    assert!(!diff.contains("hunter2"), "secrets are not shown: {diff}");
    assert!(
        c.get(&format!("{prod}/added")).await.unwrap().is_none(),
        "a plan writes nothing"
    );

    // The target moves after the plan: nothing is applied.
    c.put(&format!("{prod}/changed"), "a = 3\n").await.unwrap();
    assert!(matches!(
        c.promote(&plan).await,
        Err(Error::Conflict { .. })
    ));
    assert!(c.get(&format!("{prod}/added")).await.unwrap().is_none());
    assert!(c.get(&format!("{prod}/pw")).await.unwrap().is_none());

    let mut plan = c.promote_diff(&staging, &prod).await.unwrap();
    plan.changes.retain(|ch| !ch.is_deletion());
    c.freeze(&prod).await.unwrap();
    assert!(matches!(c.promote(&plan).await, Err(Error::Frozen(_))));
    assert!(c.get(&format!("{prod}/added")).await.unwrap().is_none());
    c.unfreeze(&prod).await.unwrap();

    let written = c.promote(&plan).await.unwrap();
    assert_eq!(written.len(), 3);
    let get = |k: &str| {
        let c = c.clone();
        let k = format!("{prod}/{k}");
        async move {
            c.get(&k)
                .await
                .unwrap()
                .map(|v| v.as_str().unwrap().to_owned())
        }
    };
    assert_eq!(get("changed").await.as_deref(), Some("a = 2\n"));
    assert_eq!(get("added").await.as_deref(), Some("new"));
    assert_eq!(get("pw").await.as_deref(), Some("hunter2"));
    assert_eq!(
        get("only-prod").await.as_deref(),
        Some("x"),
        "deletion dropped"
    );
    assert!(
        c.get(&format!("{prod}/pw"))
            .await
            .unwrap()
            .unwrap()
            .is_secret()
    );
    let again = c.promote_diff(&staging, &prod).await.unwrap();
    assert_eq!(
        again
            .changes
            .iter()
            .map(|ch| ch.name.as_str())
            .collect::<Vec<_>>(),
        ["only-prod"],
        "a promoted secret compares equal"
    );
    let log = c
        .audit(&prod, AuditFilter::new().action(AuditAction::Promote))
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].changes.len(), 3);
    assert!(matches!(
        c.promote_diff(&prod, &prod).await,
        Err(Error::InvalidArgument(_))
    ));
    c.require_approval(&prod, true).await.unwrap();
    assert!(matches!(
        c.promote(&again).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// An export holds every key (and with history every version), secrets as
/// ciphertext only; a dry-run import shows the diff and writes nothing; an
/// import restores the latest values in one write.
pub async fn export_import_round_trip(h: &dyn ConfigHarness) {
    let c = as_author(h, "ann").await;
    let src = ns("export");
    let dst = ns("import");
    let plain = "correct horse battery staple";
    c.put(&format!("{src}/timeout"), "5s").await.unwrap();
    c.put(&format!("{src}/timeout"), "7s").await.unwrap();
    c.put(&format!("{src}/multi/line"), "a: 1\nb: [x, y]\n")
        .await
        .unwrap();
    c.put(&format!("{src}/bin"), [0u8, 0xff, 0x10])
        .await
        .unwrap();
    c.put_with(&format!("{src}/db/password"), plain, Put::new().secret())
        .await
        .unwrap();
    c.put(&format!("{src}/gone"), "x").await.unwrap();
    c.delete(&format!("{src}/gone")).await.unwrap();

    let mut formats = vec![ExportFormat::Json];
    if cfg!(feature = "yaml") {
        formats.push(ExportFormat::Yaml);
    }
    for format in formats {
        let text = c
            .export(&src, ExportOptions::new().format(format))
            .await
            .unwrap();
        assert!(!text.contains(plain), "plain text in the {format:?} export");
        assert!(text.contains("7s"), "{text}");
        if format == ExportFormat::Json {
            let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            let keys = doc["keys"].as_array().unwrap();
            assert_eq!(keys.len(), 4, "the live keys: {text}");
            assert!(
                keys.iter()
                    .all(|k| k["versions"].as_array().unwrap().len() == 1),
                "only the latest version without history: {text}"
            );
        }
        assert!(!text.contains(".coord"), "the center's own keys stay out");
        assert!(!text.contains("gone"), "{text}");

        let target = format!("{dst}-{format:?}").to_lowercase();
        c.put(&format!("{target}/timeout"), "1s").await.unwrap();
        c.put(&format!("{target}/extra"), "kept").await.unwrap();
        let dry = c.import(&target, &text, true).await.unwrap();
        assert!(dry.dry_run && dry.versions.is_empty());
        assert_eq!(
            dry.changed,
            ["bin", "db/password", "multi/line", "timeout"].map(|k| format!("{target}/{k}"))
        );
        assert!(
            dry.diff.contains("-1s") && dry.diff.contains("+7s"),
            "{}",
            dry.diff
        );
        assert!(!dry.diff.contains(plain));
        assert_eq!(
            c.get(&format!("{target}/timeout"))
                .await
                .unwrap()
                .unwrap()
                .version,
            1,
            "a dry run writes nothing"
        );
        assert!(c.get(&format!("{target}/bin")).await.unwrap().is_none());
        assert!(
            c.audit(&target, AuditFilter::new().action(AuditAction::Import))
                .await
                .unwrap()
                .is_empty()
        );

        let done = c.import(&target, &text, false).await.unwrap();
        assert_eq!(done.changed, dry.changed);
        assert_eq!(done.versions, [1, 1, 1, 2]);
        let read = |k: &str| {
            let c = c.clone();
            let k = format!("{target}/{k}");
            async move { c.get(&k).await.unwrap().unwrap() }
        };
        assert_eq!(read("timeout").await.as_str().unwrap(), "7s");
        assert_eq!(
            read("multi/line").await.as_str().unwrap(),
            "a: 1\nb: [x, y]\n"
        );
        assert_eq!(&read("bin").await.value[..], [0u8, 0xff, 0x10]);
        let pw = read("db/password").await;
        assert!(pw.is_secret());
        assert_eq!(pw.as_str().unwrap(), plain);
        assert_eq!(read("extra").await.as_str().unwrap(), "kept");
        let again = c.import(&target, &text, false).await.unwrap();
        assert!(again.changed.is_empty(), "{:?}", again.changed);
    }

    let history = c
        .export(&src, ExportOptions::new().history(true))
        .await
        .unwrap();
    assert!(
        history.contains("5s") && history.contains("gone"),
        "{history}"
    );
    assert!(!history.contains(plain));
    let restored = format!("{dst}-history");
    c.put(&format!("{restored}/gone"), "still here")
        .await
        .unwrap();
    let report = c.import(&restored, &history, false).await.unwrap();
    assert!(report.changed.contains(&format!("{restored}/gone")));
    assert!(
        c.get(&format!("{restored}/gone")).await.unwrap().is_none(),
        "deleted in the export's latest version"
    );
    assert_eq!(
        c.get(&format!("{restored}/timeout"))
            .await
            .unwrap()
            .unwrap()
            .as_str()
            .unwrap(),
        "7s"
    );
    for bad in ["", "{}", "{\"format\": \"other\", \"namespace\": \"a/b\"}"] {
        let err = c.import(&restored, bad, true).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_) | Error::Unsupported(_)),
            "{bad:?}: {err}"
        );
    }
    let reserved = r#"{"format": "coord-config/1", "namespace": "a/b",
        "keys": [{"key": ".coord/policy", "versions": [{"version": 1, "text": "x"}]}]}"#;
    assert!(matches!(
        c.import(&restored, reserved, false).await,
        Err(Error::InvalidArgument(_))
    ));
}
