//! The conformance suites of the lock kinds beyond the lease lock:
//! reentrant, fair, read-write, semaphore, leader election, multi-lock and
//! lock administration. Like [`lock`](crate::testkit::lock), every case runs
//! unchanged on every backend;
//! [`lock_kinds_conformance_tests!`](crate::lock_kinds_conformance_tests)
//! expands them into tests named `conformance_<kind>_<case>_<backend>`.

pub mod admin;
pub mod election;
pub mod fair;
pub mod multi;
pub mod reentrant;
pub mod rwlock;
pub mod semaphore;

use std::time::Duration;

use crate::lock::LockClient;
use crate::testkit::{LockHarness, within};

/// Every case's name (module path), in the order the macro expands them.
pub const CASES: &[&str] = &[
    "reentrant::counts_holds_per_owner",
    "reentrant::other_owner_blocks",
    "reentrant::count_survives_renewals",
    "reentrant::lost_reply_cleanup_spares_the_next_hold",
    "fair::grants_in_request_order",
    "fair::cancelled_waiter_leaves_the_queue",
    "fair::dead_waiter_is_purged",
    "fair::a_handle_that_waited_is_woken_again_on_its_next_waits",
    "fair::waiter_rides_out_a_failing_backend",
    "fair::lost_reply_is_asked_again_as_the_same_hold",
    "fair::waiter_gives_up_on_a_backend_that_keeps_failing",
    "fair::wait_timeout_ends_a_ride_out",
    "fair::cancelled_ride_out_gives_back_its_grant",
    "fair::hung_backend_cannot_hold_the_wait_past_its_timeout",
    "rwlock::readers_share_writer_excludes",
    "rwlock::writer_not_starved_by_readers",
    "semaphore::never_more_than_n_holders",
    "semaphore::each_permit_has_its_own_token",
    "election::one_leader_at_a_time",
    "election::new_leader_after_leader_dies",
    "election::observe_reports_changes",
    "election::observe_reports_every_term",
    "election::proclaim_changes_the_value_in_the_same_term",
    "multi::all_or_nothing",
    "multi::opposite_orders_do_not_deadlock",
    "multi::a_member_lost_while_waiting_fails_the_whole",
    "admin::list_shows_holders_and_waiters",
    "admin::force_release_refuses_old_holder_fenced_write",
    "admin::stats_count_acquisitions",
];

pub(crate) async fn client(h: &dyn LockHarness) -> LockClient {
    LockClient::new(h.new_backend().await)
}

/// A TTL short enough to wait out in a test, long enough for the backend.
pub(crate) fn short_ttl(c: &LockClient) -> Duration {
    c.capabilities().effective_ttl(Duration::from_millis(600))
}

/// Waits (bounded) until `client` has `n` acquisitions waiting.
pub(crate) async fn until_waiting(client: &LockClient, n: usize) {
    within(
        Duration::from_secs(20),
        &format!("{n} acquisitions are waiting"),
        async {
            while client.waiting() < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        },
    )
    .await;
}

/// Expands the lock-kind suites into one `#[tokio::test]` per case, named
/// `conformance_<kind>_<case>_<backend>`. `$harness` is an expression
/// (evaluated inside each test, so it may `.await`) implementing
/// [`LockHarness`].
#[macro_export]
macro_rules! lock_kinds_conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::lock_kinds_conformance_tests!(@cases $backend, $harness,
            reentrant::counts_holds_per_owner,
            reentrant::other_owner_blocks,
            reentrant::count_survives_renewals,
            reentrant::lost_reply_cleanup_spares_the_next_hold,
            fair::grants_in_request_order,
            fair::cancelled_waiter_leaves_the_queue,
            fair::dead_waiter_is_purged,
            fair::a_handle_that_waited_is_woken_again_on_its_next_waits,
            fair::waiter_rides_out_a_failing_backend,
            fair::lost_reply_is_asked_again_as_the_same_hold,
            fair::waiter_gives_up_on_a_backend_that_keeps_failing,
            fair::wait_timeout_ends_a_ride_out,
            fair::cancelled_ride_out_gives_back_its_grant,
            fair::hung_backend_cannot_hold_the_wait_past_its_timeout,
            rwlock::readers_share_writer_excludes,
            rwlock::writer_not_starved_by_readers,
            semaphore::never_more_than_n_holders,
            semaphore::each_permit_has_its_own_token,
            election::one_leader_at_a_time,
            election::new_leader_after_leader_dies,
            election::observe_reports_changes,
            election::observe_reports_every_term,
            election::proclaim_changes_the_value_in_the_same_term,
            multi::all_or_nothing,
            multi::opposite_orders_do_not_deadlock,
            multi::a_member_lost_while_waiting_fails_the_whole,
            admin::list_shows_holders_and_waiters,
            admin::force_release_refuses_old_holder_fenced_write,
            admin::stats_count_acquisitions,
        );
    };
    (@cases $backend:ident, $harness:expr, $($kind:ident :: $case:ident),+ $(,)?) => {
        $crate::testkit::__pastey::paste! {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn [<conformance_ $kind _ $case _ $backend>]() {
                    let harness = $harness;
                    $crate::testkit::kinds::$kind::$case(&harness).await;
                }
            )+
        }
    };
}
