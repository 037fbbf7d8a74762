//! The lease-lock conformance suite on Redlock over three local servers.

coord_core::lock_conformance_tests!(
    redlock,
    coord_redis::testkit::RedlockHarness::start(3).await
);
