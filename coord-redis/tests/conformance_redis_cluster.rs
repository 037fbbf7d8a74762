//! The lock and cache conformance suites through the cluster client (`redis+cluster://`),
//! on a local three-master Redis Cluster (or `COORD_TEST_REDIS_CLUSTER_URL`):
//! locks hash to slots on different nodes, and releases published on one node
//! reach subscribers connected to another.

coord_core::lock_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
coord_core::lock_kinds_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
coord_core::cache_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
