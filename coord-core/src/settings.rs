//! SDK settings: `coord.toml`, then `COORD_*` environment variables, then code.

use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything the SDK can be configured with. Every field has a default, so
/// an empty `coord.toml` (or none) works.
///
/// ```
/// let settings = coord_core::Settings::load().unwrap();
/// assert_eq!(settings.lock.ttl, std::time::Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Settings {
    /// Which backend to use. Default `memory://`.
    pub url: String,
    /// Prefix of every key the SDK writes, so several apps can share a server.
    /// Default `coord`.
    pub namespace: String,
    /// Time allowed to open a connection. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for one request. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retry of retryable errors.
    pub retry: RetrySettings,
    /// Lock defaults.
    pub lock: LockSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            url: "memory://".to_owned(),
            namespace: "coord".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            retry: RetrySettings::default(),
            lock: LockSettings::default(),
        }
    }
}

/// Exponential backoff with jitter for retryable errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RetrySettings {
    /// First delay. Default 20 ms.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Most attempts after the first. Default 5.
    pub max_retries: usize,
    /// Total time spent sleeping between attempts at most. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            max_retries: 5,
            max_elapsed: Duration::from_secs(5),
        }
    }
}

/// Defaults of every lock built without explicit options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LockSettings {
    /// Lease TTL. Default 30 s. The watchdog renews at a third of it.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long `acquire()` waits at most; `None` waits forever. Default none.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Option<Duration>,
    /// Poll interval of a waiter when no notification arrives (fallback only).
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Whether guards renew their lease automatically. Default true.
    pub watchdog: bool,
}

impl Default for LockSettings {
    fn default() -> Self {
        LockSettings {
            ttl: Duration::from_secs(30),
            wait_timeout: None,
            poll_interval: Duration::from_secs(5),
            watchdog: true,
        }
    }
}

impl Settings {
    /// The defaults, then `coord.toml` in the working directory (if present),
    /// then `COORD_*` environment variables (`COORD_URL`,
    /// `COORD_LOCK__TTL=10s`: a double underscore separates levels).
    pub fn load() -> Result<Self> {
        Self::from_figment(Self::figment())
    }

    /// The figment [`Settings::load`] reads, to layer more providers on it.
    pub fn figment() -> Figment {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file("coord.toml"))
            .merge(Env::prefixed("COORD_").split("__"))
    }

    /// Extracts settings from any figment, with errors that name the field.
    pub fn from_figment(figment: Figment) -> Result<Self> {
        figment
            .extract()
            .map_err(|e| Error::invalid(format!("bad coord settings: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "coord.toml",
                "url = \"redis://127.0.0.1:6379\"\n[lock]\nttl = \"10s\"\npoll_interval = \"250ms\"\n",
            )?;
            jail.set_env("COORD_LOCK__TTL", "7s");
            let s = Settings::load().expect("settings load");
            assert_eq!(s.url, "redis://127.0.0.1:6379");
            assert_eq!(s.lock.ttl, Duration::from_secs(7));
            assert_eq!(s.lock.poll_interval, Duration::from_millis(250));
            assert_eq!(s.namespace, "coord");
            assert!(s.lock.watchdog);
            Ok(())
        });
    }

    #[test]
    fn bad_value_names_the_field() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COORD_LOCK__TTL", "soon");
            let err = Settings::load().unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)));
            assert!(err.to_string().to_lowercase().contains("lock.ttl"), "{err}");
            Ok(())
        });
    }
}
