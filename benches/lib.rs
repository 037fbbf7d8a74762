//! Benchmarks of coord against the raw backend clients (see `lock.rs` and
//! `lock_kinds.rs`; run with `cargo bench -p coord-benches`): a package of
//! its own, so that building the facade's memory demo needs neither backend
//! client nor `protoc`.
