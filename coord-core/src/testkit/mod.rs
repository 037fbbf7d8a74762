//! The conformance testkit: one suite per primitive, run unchanged against
//! every backend, plus helpers to run real servers in tests and a TCP
//! [`FaultProxy`] to put faults between clients and those servers.
//!
//! A backend crate's test file is one line:
//!
//! ```text
//! coord_core::lock_conformance_tests!(redis, coord_redis::testkit::RedisHarness::start().await);
//! ```
//!
//! which expands to one `#[tokio::test]` per case, named
//! `conformance_lock_<case>_<backend>`.
//!
//! Servers for the tests: [`ServerProcess`] runs a local binary;
//! [`containers`] runs servers in containers of locally built images (for
//! networks of several servers and partitions between them). The backend
//! crates' fixtures choose between the two by `COORD_TEST_SERVERS`
//! (`processes`, the default, or `containers`).

mod blackholed_holder;
pub mod cache;
pub mod chaos;
mod checker;
pub mod config;
pub mod config_workflow;
pub mod containers;
pub mod discovery;
mod fault_proxy;
mod faults;
mod fence_audit;
pub mod fenced;
pub mod kinds;
pub mod lock;
mod outage;
mod process;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use blackholed_holder::{
    AfterHeal, BlackholedHolderReport, blackholed_holder_is_refused_by_fencing,
};
pub use checker::ExclusionChecker;
pub use fault_proxy::{Direction, FaultProxy, LinkFaults, NewConnections, ProxyFaults, ProxyStats};
pub use faults::{Fault, FaultyLockBackend, LockOp};
pub use fence_audit::{
    AuditedResource, FenceAudit, Fencing, LOSS_MARGIN, PausedHolderReport, Workload,
    WorkloadReport, paused_holder, paused_holder_is_refused_by_fencing,
    unfenced_paused_holder_breaks_the_audit,
};
pub use outage::waiters_ride_out_a_server_outage;
pub use process::ServerProcess;

#[doc(hidden)]
pub use pastey as __pastey;

use crate::lock::LockBackend;
use crate::memory::MemoryBackend;

/// How the suite reaches the backend under test.
#[async_trait::async_trait]
pub trait LockHarness: Send + Sync + 'static {
    /// A new, independent client of the backend under test (its own
    /// connections), sharing the store with every other client it made.
    async fn new_backend(&self) -> Arc<dyn LockBackend>;
}

/// The memory backend under the suite: one store, a handle per client.
#[derive(Debug, Default)]
pub struct MemoryHarness {
    store: MemoryBackend,
    fenced: Arc<crate::fence::MemoryFencedStore>,
}

impl MemoryHarness {
    /// A harness over a fresh store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl LockHarness for MemoryHarness {
    async fn new_backend(&self) -> Arc<dyn LockBackend> {
        Arc::new(self.store.clone())
    }
}

#[async_trait::async_trait]
impl cache::CacheHarness for MemoryHarness {
    async fn new_cache_backend(&self) -> Arc<dyn crate::cache::CacheBackend> {
        Arc::new(self.store.clone())
    }

    async fn new_lock_backend(&self) -> Option<Arc<dyn LockBackend>> {
        Some(Arc::new(self.store.clone()))
    }
}

#[async_trait::async_trait]
impl fenced::FencedStoreHarness for MemoryHarness {
    async fn new_fenced_store(&self) -> Arc<dyn crate::fence::FencedStore> {
        self.fenced.clone()
    }
}

/// A name no other test uses, so cases never see each other's keys.
pub fn unique_name(case: &str) -> String {
    format!("conformance/{case}/{:016x}", fastrand::u64(..))
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting until {what}"),
    }
}

/// Expands the config conformance suite into one `#[tokio::test]` per case,
/// named `conformance_config_<case>_<backend>`. `$harness` is an expression
/// (evaluated inside each test, so it may `.await`) whose value implements
/// [`config::ConfigHarness`].
#[macro_export]
macro_rules! config_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::config_conformance_tests!(@cases $backend, $harness,
            put_then_get_round_trips,
            versions_increase_per_key,
            compare_and_set_conflicts,
            delete_is_a_versioned_tombstone,
            history_is_newest_first,
            rollback_writes_the_old_content_as_a_new_version,
            diff_is_unified,
            list_returns_the_latest_live_keys_under_a_prefix,
            compact_keeps_the_newest_versions,
            freeze_refuses_writes,
            multi_key_writes_are_all_or_nothing,
            watch_delivers_every_version_in_order,
            a_watch_resumes_after_its_channel_breaks,
            secrets_are_never_stored_in_plain_text,
            a_corrupted_version_is_a_codec_error,
            bad_input_is_invalid_argument,
            templates_resolve_and_report_cycles_and_missing_references,
            a_typed_handle_reloads_and_refuses_invalid_versions,
            figment_layers_the_remote_namespace,
            health_reports_healthy,
            audit_entries_record_every_action,
            a_refused_change_leaves_no_audit_entry,
            approvals_require_another_author,
            nothing_is_published_before_approval,
            gray_release_resolves_by_id_label_and_percent,
            gray_promote_and_abort,
            promote_applies_the_diff_atomically,
            export_import_round_trip,
        );
    };
    (@cases $backend:ident, $harness:expr, $($case:ident),+ $(,)?) => {
        $crate::testkit::__pastey::paste! {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn [<conformance_config_ $case _ $backend>]() {
                    let harness = $harness;
                    $crate::testkit::config::$case(&harness).await;
                }
            )+
        }
    };
}

/// Expands the discovery conformance suite into one `#[tokio::test]` per
/// case, named `conformance_discovery_<case>_<backend>`. `$harness` is an
/// expression (evaluated inside each test, so it may `.await`) whose value
/// implements [`discovery::DiscoveryHarness`].
#[macro_export]
macro_rules! discovery_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::discovery_conformance_tests!(@cases $backend, $harness,
            register_then_list,
            deregister_removes_the_instance,
            watchers_see_register_and_deregister,
            a_crashed_clients_instance_expires_within_its_ttl,
            an_abandoned_instance_expires_while_its_client_renews_others,
            status_weight_and_metadata_changes_propagate,
            a_thousand_instances_register_and_list,
            the_newest_registration_of_an_id_wins,
            bad_input_is_invalid_argument,
            services_are_isolated,
            a_watch_started_during_writes_misses_nothing,
            deregister_all_removes_every_registration,
            a_watcher_resyncs_after_its_watch_breaks,
            a_dropped_registration_is_removed,
            health_reports_healthy,
        );
    };
    (@cases $backend:ident, $harness:expr, $($case:ident),+ $(,)?) => {
        $crate::testkit::__pastey::paste! {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn [<conformance_discovery_ $case _ $backend>]() {
                    let harness = $harness;
                    $crate::testkit::discovery::$case(&harness).await;
                }
            )+
        }
    };
}

/// Expands the cache conformance suite into one `#[tokio::test]` per case,
/// named `conformance_cache_<case>_<backend>`. `$harness` is an expression
/// (evaluated inside each test, so it may `.await`) whose value implements
/// [`cache::CacheHarness`].
#[macro_export]
macro_rules! cache_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::cache_conformance_tests!(@cases $backend, $harness,
            missing_key_is_none,
            set_then_get_round_trips,
            get_many_is_in_order,
            overwrite_replaces_the_value,
            delete_removes_and_reports,
            exists_follows_the_value,
            values_expire_after_their_ttl,
            caches_are_namespaced,
            bad_input_is_invalid_argument,
            a_write_invalidates_other_instances,
            a_delete_invalidates_other_instances,
            concurrent_loads_share_one_flight,
            loads_are_single_flight_across_processes,
            warm_loads_missing_keys_with_progress,
            refresh_ahead_reloads_hot_keys_before_expiry,
            a_load_does_not_overwrite_a_write_made_meanwhile,
            a_bloom_filter_turns_away_unknown_keys,
            a_failed_load_fails_every_waiter_and_is_not_cached,
            a_panicking_loader_is_an_error,
            not_found_is_remembered,
            a_corrupted_value_is_a_codec_error_and_a_miss,
            a_codec_mismatch_is_a_clear_error,
            large_values_are_stored_compressed,
            health_reports_healthy,
        );
    };
    (@cases $backend:ident, $harness:expr, $($case:ident),+ $(,)?) => {
        $crate::testkit::__pastey::paste! {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn [<conformance_cache_ $case _ $backend>]() {
                    let harness = $harness;
                    $crate::testkit::cache::$case(&harness).await;
                }
            )+
        }
    };
}

/// Expands the lock conformance suite into one `#[tokio::test]` per case,
/// named `conformance_lock_<case>_<backend>`. `$harness` is an expression
/// (evaluated inside each test, so it may `.await`) whose value implements
/// [`LockHarness`].
#[macro_export]
macro_rules! lock_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::lock_conformance_tests!(@cases $backend, $harness,
            mutual_exclusion,
            mutual_exclusion_within_one_client,
            fencing_tokens_strictly_increase,
            non_owner_release_and_renew_refused,
            renew_after_expiry_refused,
            lost_fires_when_lock_removed,
            wait_timeout_returns_timeout,
            waiter_woken_by_release,
            waiter_listens_again_when_notifications_end,
            dropped_guard_is_released,
            bad_input_is_invalid_argument,
            try_acquire_reports_busy,
            reacquire_by_same_owner_is_idempotent,
            shutdown_releases_held_locks,
            unanswered_release_goes_on_in_the_background,
            background_release_is_sent_again_until_answered,
            acquisition_dropped_in_flight_gives_its_grant_back,
            grant_after_shutdown_is_given_back,
            waiter_rides_out_a_failing_backend,
            lost_reply_is_asked_again_as_the_same_hold,
            waiter_gives_up_on_a_backend_that_keeps_failing,
            wait_timeout_ends_a_ride_out,
            cancelled_ride_out_gives_back_its_grant,
            hung_backend_cannot_hold_the_wait_past_its_timeout,
            health_reports_healthy,
        );
    };
    (@cases $backend:ident, $harness:expr, $($case:ident),+ $(,)?) => {
        $crate::testkit::__pastey::paste! {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn [<conformance_lock_ $case _ $backend>]() {
                    let harness = $harness;
                    $crate::testkit::lock::$case(&harness).await;
                }
            )+
        }
    };
}
