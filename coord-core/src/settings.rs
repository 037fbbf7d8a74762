//! SDK settings: `coord.toml`, then `COORD_*` environment variables, then code.

use std::collections::BTreeMap;
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
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Cache connections.
    pub cache: CacheSettings,
    /// Service registration defaults.
    pub discovery: DiscoverySettings,
    /// Addresses a server names that this process must reach another way:
    /// `"host:port" = "host:port"`, or `"host" = "host"` (the port kept).
    /// Applied to the master a Redis Sentinel names (`redis+sentinel://`),
    /// for sentinels and data nodes behind NAT or in containers, which
    /// announce addresses only their own network can reach (Redisson's
    /// `NatMapper`). A `host:port` entry wins over a `host` entry. Default
    /// empty.
    ///
    /// ```toml
    /// [address_map]
    /// "redis-a:6379" = "127.0.0.1:16379"
    /// "redis-b" = "10.0.0.12"
    /// ```
    pub address_map: BTreeMap<String, String>,
}

/// Shows the URL with its passwords replaced by `***`
/// ([`redact`](crate::url::redact)), so settings can be logged.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &crate::url::redact(&self.url))
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("lock", &self.lock)
            .field("cache", &self.cache)
            .field("discovery", &self.discovery)
            .field("address_map", &self.address_map)
            .finish()
    }
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
            cache: CacheSettings::default(),
            discovery: DiscoverySettings::default(),
            address_map: BTreeMap::new(),
        }
    }
}

/// Exponential backoff with jitter for retryable errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Total time of the retries at most (the sleeps between attempts, and
    /// the attempts after the first); also how long a waiting lock
    /// acquisition keeps asking a backend that fails, before it gives up.
    /// Default 5 s.
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
#[serde(default, deny_unknown_fields)]
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

/// How caches reach their backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheSettings {
    /// Redis (standalone): with N > 0, cache traffic goes over a pool of N
    /// connections of its own (`deadpool-redis`) instead of the shared
    /// multiplexed connection, so that a large value cannot delay the small
    /// requests queued behind it on one connection. Default 0 (the shared
    /// connection): measured on loopback, a pooled call costs one more round
    /// trip (the pool checks each connection with a `PING` before handing
    /// it out), and beside 1 MiB values small reads were no faster pooled
    /// (p99 3.8 ms both ways; the single-threaded server is the bottleneck).
    pub redis_pool_size: usize,
}

/// Service registration defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DiscoverySettings {
    /// How long a registered instance outlives its process (renewed every
    /// third of it). Default 10 s; 1 s to 24 h.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            ttl: crate::discovery::DEFAULT_REGISTRATION_TTL,
        }
    }
}

/// Every settings key, dotted: what `coord.toml` and `COORD_*` may set.
pub const SETTINGS_KEYS: &[&str] = &[
    "url",
    "namespace",
    "connect_timeout",
    "request_timeout",
    "retry.initial_backoff",
    "retry.max_backoff",
    "retry.max_retries",
    "retry.max_elapsed",
    "lock.ttl",
    "lock.wait_timeout",
    "lock.poll_interval",
    "lock.watchdog",
    "cache.redis_pool_size",
    "discovery.ttl",
    "address_map",
];

/// The prefix of the environment variables the settings read.
const ENV_PREFIX: &str = "COORD_";

impl Settings {
    /// The defaults, then `coord.toml` in the working directory (if present),
    /// then `COORD_*` environment variables (`COORD_URL`,
    /// `COORD_LOCK__TTL=10s`: a double underscore separates levels;
    /// `COORD_TEST_*` belong to the testkit and are not settings).
    ///
    /// Strict: an unknown key in either place (`conect_timeout`,
    /// `COORD_LOCK_TTL` with one underscore) is refused, naming the closest
    /// valid key; so is a zero or sub-millisecond `lock.ttl`, a zero timeout
    /// or poll interval, and an empty URL or namespace.
    pub fn load() -> Result<Self> {
        Self::from_figment(Self::figment())
    }

    /// The figment [`Settings::load`] reads, to layer more providers on it.
    pub fn figment() -> Figment {
        let figment = Figment::from(Serialized::defaults(Settings::default()));
        // The working directory's coord.toml, if any, by its absolute path:
        // `Toml::file` would search the parents for a relative one.
        let figment = match std::env::current_dir() {
            Ok(dir) => figment.merge(Toml::file(dir.join("coord.toml"))),
            Err(_) => figment,
        };
        figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                .split("__"),
        )
    }

    /// Extracts settings from any figment, with errors that name the field
    /// (and, for an unknown key, the closest valid one), then checks them
    /// ([`Settings::validate`]).
    pub fn from_figment(figment: Figment) -> Result<Self> {
        let settings: Settings = figment.extract().map_err(settings_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work: a zero or sub-millisecond
    /// lock TTL, zero timeouts or poll interval, an empty URL or namespace.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("lock.poll_interval", self.lock.poll_interval),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(Error::invalid(format!(
                    "bad coord settings: {key} is 0s; give a positive duration such as 5s"
                )));
            }
        }
        if self.lock.ttl < crate::lock::MIN_TTL {
            return Err(Error::invalid(format!(
                "bad coord settings: lock.ttl is {:?}; give a TTL of at least {:?}, such as 30s",
                self.lock.ttl,
                crate::lock::MIN_TTL
            )));
        }
        if !(crate::discovery::MIN_REGISTRATION_TTL..=crate::discovery::MAX_REGISTRATION_TTL)
            .contains(&self.discovery.ttl)
        {
            return Err(Error::invalid(format!(
                "bad coord settings: discovery.ttl is {:?}; give a TTL from 1s to 24h, such as 10s",
                self.discovery.ttl
            )));
        }
        if self.lock.wait_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid(
                "bad coord settings: lock.wait_timeout is 0s; leave it out to wait forever, \
                 or give a positive duration",
            ));
        }
        if self.url.trim().is_empty() {
            return Err(Error::invalid(
                "bad coord settings: url is empty; use memory://, redis://host:6379 or etcd://host:2379",
            ));
        }
        if self.namespace.is_empty() {
            return Err(Error::invalid(
                "bad coord settings: namespace is empty; every key needs a prefix (default \"coord\")",
            ));
        }
        for (from, to) in &self.address_map {
            if split_address(from).is_none() || split_address(to).is_none() {
                return Err(Error::invalid(format!(
                    "bad coord settings: address_map entry {from:?} = {to:?}; write \
                     \"host:port\" = \"host:port\" or \"host\" = \"host\""
                )));
            }
        }
        Ok(())
    }

    /// Where to reach `host:port`, which a server named (see
    /// [`address_map`](Self::address_map)): the mapped address, or the
    /// same one when no entry matches.
    ///
    /// ```
    /// let mut s = coord_core::Settings::default();
    /// s.address_map.insert("redis-a:6379".into(), "127.0.0.1:16379".into());
    /// s.address_map.insert("redis-b".into(), "10.0.0.12".into());
    /// assert_eq!(s.map_address("redis-a", 6379), ("127.0.0.1".to_owned(), 16379));
    /// assert_eq!(s.map_address("redis-b", 6380), ("10.0.0.12".to_owned(), 6380));
    /// assert_eq!(s.map_address("redis-c", 6379), ("redis-c".to_owned(), 6379));
    /// ```
    pub fn map_address(&self, host: &str, port: u16) -> (String, u16) {
        let to = self
            .address_map
            .get(
                &crate::url::HostPort {
                    host: host.to_owned(),
                    port,
                }
                .to_string(),
            )
            .or_else(|| self.address_map.get(host));
        match to.and_then(|to| split_address(to)) {
            Some((h, p)) => (h, p.unwrap_or(port)),
            None => (host.to_owned(), port),
        }
    }
}

/// `host` or `host:port` (`[ipv6]:port`) as host and port (`None`: no
/// port given); `None` when it does not parse.
fn split_address(address: &str) -> Option<(String, Option<u16>)> {
    let parsed = crate::url::HostPort::parse(address.trim(), 0).ok()?;
    Some((parsed.host, (parsed.port != 0).then_some(parsed.port)))
}

/// A figment error as [`Error::InvalidArgument`]; an unknown key names the
/// closest valid one (and its environment variable, when it came from one).
fn settings_error(error: figment::Error) -> Error {
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| {
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            let source = source_of(e.metadata.as_ref());
            match &e.kind {
                figment::error::Kind::UnknownField(field, _) => {
                    let mut path: Vec<&str> = e.path.iter().map(String::as_str).collect();
                    if path.last() != Some(&field.as_str()) {
                        path.push(field);
                    }
                    unknown_key(&path.join("."), from_env, &source)
                }
                // figment's own text names the key with its profile
                // (`default.lock.ttl`), which coord does not use.
                kind if !e.path.is_empty() => {
                    format!("{kind} for `{}` in {source}", e.path.join("."))
                }
                // A file that does not parse: say which file.
                _ if e.metadata.is_some() => format!("{source}: {e}"),
                _ => e.to_string(),
            }
        })
        .collect();
    Error::invalid(format!("bad coord settings: {}", messages.join("; ")))
}

/// Where a setting came from, for messages: a file's path, else the
/// provider's name (`environment variable(s)`, `TOML source string`).
fn source_of(metadata: Option<&figment::Metadata>) -> String {
    match metadata {
        Some(m) => match &m.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ => m.name.to_string(),
        },
        None => "the settings".to_owned(),
    }
}

/// The message for an unknown settings key (`dotted`, as figment saw it,
/// from `source`).
fn unknown_key(dotted: &str, from_env: bool, source: &str) -> String {
    let env_name = |key: &str| format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase());
    // An environment variable with single underscores (COORD_LOCK_TTL)
    // arrives as `lock_ttl`: compare with '.' and '_' alike.
    let flat = |k: &str| k.replace(['.', '_'], "");
    let closest = SETTINGS_KEYS
        .iter()
        .map(|k| {
            let d =
                strsim::levenshtein(dotted, k).min(strsim::levenshtein(&flat(dotted), &flat(k)));
            (d, *k)
        })
        .min()
        .filter(|(d, _)| *d <= dotted.len().max(3) / 2)
        .map(|(_, k)| k);
    let (shown, hint) = if from_env {
        (
            env_name(dotted),
            closest.map(|k| format!("; did you mean {} (`{k}`)?", env_name(k))),
        )
    } else {
        (
            format!("`{dotted}` in {source}"),
            closest.map(|k| format!("; did you mean `{k}`?")),
        )
    };
    format!(
        "unknown setting {shown}{}",
        hint.unwrap_or_else(|| format!("; the settings are {}", SETTINGS_KEYS.join(", ")))
    )
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {

    #[test]
    fn debug_hides_the_url_passwords() {
        let settings = Settings {
            url: "redis+sentinel://app:s3cret@h1,h2/main?sentinel_password=hush".into(),
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hush"),
            "{shown}"
        );
        assert!(shown.contains("app:***@h1,h2/main"), "{shown}");
    }

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
    fn a_file_that_does_not_parse_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("coord.toml", "url = \"memory://\n")?;
            let err = Settings::load().unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)));
            let msg = err.to_string();
            assert!(
                msg.contains("coord.toml") && msg.contains("TOML parse error"),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_closest() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("coord.toml", "conect_timeout = \"2s\"\n")?;
            let err = Settings::load().unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)));
            let msg = err.to_string();
            assert!(
                msg.contains("conect_timeout") && msg.contains("`connect_timeout`"),
                "{msg}"
            );

            jail.create_file("coord.toml", "[lock]\nttll = \"2s\"\n")?;
            let msg = Settings::load().unwrap_err().to_string();
            assert!(
                msg.contains("lock.ttll") && msg.contains("`lock.ttl`"),
                "{msg}"
            );

            jail.create_file("coord.toml", "")?;
            jail.set_env("COORD_LOCK_TTL", "7s");
            let msg = Settings::load().unwrap_err().to_string();
            assert!(
                msg.contains("COORD_LOCK_TTL") && msg.contains("COORD_LOCK__TTL"),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn address_maps_load_from_the_file_and_bad_entries_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "coord.toml",
                "[address_map]\n\"redis-a:6379\" = \"127.0.0.1:16379\"\n\"redis-b\" = \"[::1]\"\n",
            )?;
            let s = Settings::load().expect("settings load");
            assert_eq!(s.map_address("redis-a", 6379), ("127.0.0.1".into(), 16379));
            assert_eq!(s.map_address("redis-a", 6380), ("redis-a".into(), 6380));
            assert_eq!(s.map_address("redis-b", 7000), ("::1".into(), 7000));
            for bad in ["127.0.0.1:notaport", "", "a b"] {
                jail.create_file(
                    "coord.toml",
                    &format!("[address_map]\n\"redis-a:6379\" = {bad:?}\n"),
                )?;
                let msg = Settings::load().unwrap_err().to_string();
                assert!(
                    msg.contains("address_map") && msg.contains("redis-a:6379"),
                    "{msg}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn testkit_variables_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COORD_TEST_REDIS_URL", "redis://127.0.0.1:1");
            assert!(Settings::load().is_ok());
            Ok(())
        });
    }

    #[test]
    fn values_that_cannot_work_are_refused_at_load() {
        for (key, value) in [
            ("COORD_LOCK__TTL", "0s"),
            ("COORD_LOCK__TTL", "500us"),
            ("COORD_CONNECT_TIMEOUT", "0s"),
            ("COORD_LOCK__POLL_INTERVAL", "0ms"),
            ("COORD_NAMESPACE", ""),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env(key, value);
                let err = Settings::load().unwrap_err();
                assert!(
                    matches!(err, Error::InvalidArgument(_)),
                    "{key}={value}: {err}"
                );
                Ok(())
            });
        }
    }

    #[test]
    fn settings_keys_list_every_field() {
        let mut every = Settings::default();
        every.lock.wait_timeout = Some(Duration::from_secs(1));
        let figment = Figment::from(Serialized::defaults(every));
        let mut keys = Vec::new();
        fn walk(prefix: &str, dict: &figment::value::Dict, keys: &mut Vec<String>) {
            for (k, v) in dict {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    // A map of free-form keys is one setting.
                    figment::value::Value::Dict(_, d) if key != "address_map" => {
                        walk(&key, d, keys)
                    }
                    _ => keys.push(key),
                }
            }
        }
        let data = figment::Provider::data(&figment).expect("data");
        for dict in data.values() {
            walk("", dict, &mut keys);
        }
        keys.sort();
        let mut listed: Vec<String> = SETTINGS_KEYS.iter().map(|k| (*k).to_owned()).collect();
        listed.sort();
        assert_eq!(keys, listed);
    }

    #[test]
    fn only_the_working_directorys_file_is_read() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("coord.toml", "conect_timeout = \"2s\"\n")?;
            let below = jail.directory().join("service");
            std::fs::create_dir(&below).expect("a subdirectory");
            jail.change_dir(&below)?;
            // The parent's coord.toml (a typo in it) is not read.
            let s = Settings::load().expect("no coord.toml here: the defaults");
            assert_eq!(s.url, Settings::default().url);
            Ok(())
        });
    }

    #[test]
    fn errors_name_where_the_setting_came_from() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("coord.toml", "conect_timeout = \"2s\"\n")?;
            let msg = Settings::load().unwrap_err().to_string();
            let path = jail.directory().join("coord.toml");
            assert!(msg.contains(&path.display().to_string()), "{msg}");

            jail.create_file("coord.toml", "[lock]\nttl = 10\n")?;
            let msg = Settings::load().unwrap_err().to_string();
            assert!(
                msg.contains("`lock.ttl`") && !msg.contains("default.lock.ttl"),
                "{msg}"
            );

            // A provider of the application's own, not coord.toml.
            let figment = Figment::from(Serialized::defaults(Settings::default()))
                .merge(Toml::string("conect_timeout = \"2s\""));
            let msg = Settings::from_figment(figment).unwrap_err().to_string();
            assert!(
                msg.contains("`conect_timeout` in TOML source string"),
                "{msg}"
            );
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
