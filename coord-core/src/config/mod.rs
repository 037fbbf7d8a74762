//! The config center: versioned configuration in namespaces `app/env`, with
//! history, compare-and-set, rollback, diff, freezing, watches, templates,
//! client-side encrypted secrets and typed hot-reloaded handles.
//!
//! Not to be confused with the SDK's own connection settings
//! ([`Settings`](crate::Settings), `coord.toml`).

mod approval;
mod audit;
mod backend;
mod backup;
mod center;
mod figment_provider;
mod gray;
mod handle;
mod key;
mod promote;
mod record;
mod rules;
mod secret;
mod template;
mod value;
mod watch;

pub use approval::{Draft, DraftId, DraftStatus};
pub use audit::{AuditAction, AuditChange, AuditEntry, AuditFilter};
pub use backend::{
    ConfigBackend, ConfigNotice, ConfigNotices, ConfigWrite, StoredVersion, key_under,
};
pub use backup::{ExportFormat, ExportOptions, ImportReport};
pub use center::{ConfigCenter, MAX_CONFIG_VALUE_BYTES, Put, unified_diff};
pub use figment_provider::ConfigProvider;
pub use gray::{ClientIdentity, GrayRelease, GrayRule, Resolved};
pub use handle::{ConfigHandle, ConfigHandleBuilder, HandleEvent};
pub use key::{ConfigKey, MAX_CONFIG_KEY_LEN, RESERVED_PREFIX, namespace_of, validate_namespace};
pub use promote::{PromotionChange, PromotionPlan, RawValue};
pub use record::{VersionMeta, decode_version, encode_version};
pub use rules::{frozen_error, frozen_key, frozen_namespace, is_reserved_key, version_conflict};
pub use secret::{EnvKeyProvider, KEY_ENV, KeyProvider, OLD_KEYS_ENV, StaticKeys};
pub use value::ConfigValue;
pub use watch::ConfigWatch;
