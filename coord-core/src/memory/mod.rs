//! The in-process backend: the embedded default, held to the same
//! conformance suite as Redis and etcd.

mod cache;
mod config;
mod lock;
mod queue;
mod registry;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub use lock::MemoryBackend;

/// Named in-process stores, so `memory://name` in two places of one process
/// reaches the same data.
fn registry() -> &'static Mutex<HashMap<String, MemoryBackend>> {
    static STORES: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl MemoryBackend {
    /// The process-wide store called `name` (`memory://name`; `memory://` is
    /// the store called `""`). Every call with the same name shares its data.
    pub fn named(name: &str) -> MemoryBackend {
        let mut stores = registry().lock().unwrap_or_else(|e| e.into_inner());
        stores.entry(name.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_stores_are_shared() {
        let a = MemoryBackend::named("shared-test");
        let b = MemoryBackend::named("shared-test");
        let c = MemoryBackend::named("other-test");
        assert!(a.same_store(&b));
        assert!(!a.same_store(&c));
    }

    #[allow(dead_code)]
    fn _send_sync(b: MemoryBackend) -> std::sync::Arc<dyn crate::LockBackend> {
        std::sync::Arc::new(b)
    }
}
