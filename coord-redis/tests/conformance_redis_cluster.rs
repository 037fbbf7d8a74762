//! The lock conformance suite through the cluster client (`redis+cluster://`),
//! on a one-node Redis Cluster (or `COORD_TEST_REDIS_CLUSTER_URL`).

coord_core::lock_conformance_tests!(
    redis_cluster,
    coord_redis::testkit::RedisHarness::start_cluster().await
);
