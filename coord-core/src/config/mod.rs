//! The config center: versioned configuration in namespaces `app/env`, with
//! history, compare-and-set, rollback, diff, freezing, watches, templates,
//! client-side encrypted secrets and typed hot-reloaded handles.
//!
//! Not to be confused with the SDK's own connection settings
//! ([`Settings`](crate::Settings), `coord.toml`).

mod backend;
mod center;
mod figment_provider;
mod handle;
mod key;
mod record;
mod secret;
mod template;
mod value;
mod watch;

pub use backend::{
    ConfigBackend, ConfigNotice, ConfigNotices, ConfigWrite, StoredVersion, key_under,
};
pub use figment_provider::ConfigProvider;
pub use handle::{ConfigHandle, ConfigHandleBuilder, HandleEvent};
pub use center::{ConfigCenter, MAX_CONFIG_VALUE_BYTES, Put, unified_diff};
pub use key::{ConfigKey, MAX_CONFIG_KEY_LEN, RESERVED_PREFIX, namespace_of, validate_namespace};
pub use record::{VersionMeta, decode_version, encode_version};
pub use secret::{EnvKeyProvider, KEY_ENV, KeyProvider, OLD_KEYS_ENV, StaticKeys};
pub use value::ConfigValue;
pub use watch::ConfigWatch;
