//! coord's lock, cache and discovery conformance suites against a real etcd (spawned, or
//! `COORD_TEST_ETCD_ENDPOINTS`). Fails, never skips, when etcd cannot start.

coord_core::lock_conformance_tests!(etcd, coord_etcd::testkit::EtcdHarness::start().await);
coord_core::lock_kinds_conformance_tests!(etcd, coord_etcd::testkit::EtcdHarness::start().await);
coord_core::cache_conformance_tests!(etcd, coord_etcd::testkit::EtcdHarness::start().await);
// A server per case: the resync case restarts it (see `interrupt_watches`).
coord_core::discovery_conformance_tests!(
    etcd,
    coord_etcd::testkit::EtcdHarness::start_isolated().await
);
// A server per case: the resume case restarts it (see `interrupt_config_watches`).
coord_core::config_conformance_tests!(
    etcd,
    coord_etcd::testkit::EtcdHarness::start_isolated().await
);
