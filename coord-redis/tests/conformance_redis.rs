//! The lock and cache conformance suites on a real Redis server (spawned, or
//! `COORD_TEST_REDIS_URL`). Fails when no server can be started.

coord_core::lock_conformance_tests!(redis, coord_redis::testkit::RedisHarness::start().await);
coord_core::lock_kinds_conformance_tests!(redis, coord_redis::testkit::RedisHarness::start().await);
coord_core::discovery_conformance_tests!(redis, coord_redis::testkit::RedisHarness::start().await);
coord_core::config_conformance_tests!(redis, coord_redis::testkit::RedisHarness::start().await);
coord_core::cache_conformance_tests!(redis, coord_redis::testkit::RedisHarness::start().await);
coord_core::cache_conformance_tests!(
    sharded_redis,
    coord_core::testkit::cache::ShardedCacheHarness::new(vec![
        Box::new(coord_redis::testkit::RedisHarness::start().await),
        Box::new(coord_redis::testkit::RedisHarness::start().await),
    ])
);
