//! Caches: the backend trait, the stored-value envelope and the typed
//! two-level cache every backend shares.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use coord_core::cache::MultiLevelCache;
//! use coord_core::memory::MemoryBackend;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User { name: String }
//!
//! let users = MultiLevelCache::<User>::builder(Arc::new(MemoryBackend::new()), "users").build()?;
//! users.set("42", User { name: "Ada".into() }).await?;
//! assert_eq!(users.get("42").await?.unwrap().name, "Ada");
//! # Ok::<_, coord_core::Error>(()) }).unwrap();
//! ```

mod backend;
mod builder;
mod codec;
mod envelope;
mod multi_level;
mod sharded;
mod stats;

pub use backend::{
    CacheBackend, CacheEvent, CacheEvents, MAX_CACHE_KEY_LEN, MAX_CACHE_NAME_LEN, MAX_CACHE_TTL,
    MIN_CACHE_TTL, decode_invalidation, encode_invalidation, validate_cache_key,
    validate_cache_name, validate_cache_ttl,
};
pub use builder::CacheBuilder;
pub use codec::CacheCodec;
pub use multi_level::{CacheNotice, MultiLevelCache, WarmReport};
pub use sharded::ShardedCacheBackend;
pub use stats::CacheStats;
