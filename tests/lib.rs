//! Integration tests of the `coord` facade against real servers (see
//! `facade.rs`): a package of its own, so that building the facade's memory
//! demo needs neither backend client nor `protoc`.
