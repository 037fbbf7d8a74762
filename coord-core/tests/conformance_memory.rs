//! The lock conformance suite on the in-process memory backend.

coord_core::lock_conformance_tests!(memory, coord_core::testkit::MemoryHarness::new());
coord_core::lock_kinds_conformance_tests!(memory, coord_core::testkit::MemoryHarness::new());
coord_core::fenced_store_conformance_tests!(memory, coord_core::testkit::MemoryHarness::new());
coord_core::cache_conformance_tests!(memory, coord_core::testkit::MemoryHarness::new());
coord_core::discovery_conformance_tests!(memory, coord_core::testkit::MemoryHarness::new());
coord_core::config_conformance_tests!(memory, coord_core::testkit::MemoryHarness::new());
coord_core::cache_conformance_tests!(
    sharded_memory,
    coord_core::testkit::cache::ShardedCacheHarness::new(vec![
        Box::new(coord_core::testkit::MemoryHarness::new()),
        Box::new(coord_core::testkit::MemoryHarness::new()),
        Box::new(coord_core::testkit::MemoryHarness::new()),
    ])
);

/// The suite lists every case the macro runs.
#[test]
fn every_case_is_listed() {
    assert_eq!(coord_core::testkit::lock::CASES.len(), 25);
    assert_eq!(coord_core::testkit::kinds::CASES.len(), 29);
    assert_eq!(coord_core::testkit::fenced::CASES.len(), 3);
    assert_eq!(coord_core::testkit::cache::CASES.len(), 24);
    assert_eq!(coord_core::testkit::discovery::CASES.len(), 15);
    assert_eq!(coord_core::testkit::config::CASES.len(), 20);
    assert_eq!(coord_core::testkit::config::WORKFLOW_CASES.len(), 8);
}
