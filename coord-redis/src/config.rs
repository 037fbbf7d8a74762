//! Where and how to connect: parsed from a `redis://`, `rediss://`,
//! `redis+cluster://` or `redis+sentinel://` URL.

use std::fmt;

use coord_core::url::{HostPort, redact, split_userinfo};
use coord_core::{Error, Result};

use crate::sentinel::{DEFAULT_SENTINEL_PORT, SentinelConfig};

/// The default Redis port.
pub const DEFAULT_PORT: u16 = 6379;

/// Whether the backend talks to one server, a Redis Cluster, or the master
/// a group of Redis Sentinels names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisMode {
    /// One server (or a primary behind a proxy): `redis://`, `rediss://`.
    Standalone,
    /// A Redis Cluster reached through its seed nodes: `redis+cluster://`,
    /// `rediss+cluster://`.
    Cluster,
    /// The master of a primary/replica set that Redis Sentinels monitor,
    /// found (and followed through failovers) by asking the sentinels:
    /// `redis+sentinel://`, `rediss+sentinel://`.
    Sentinel,
}

/// One server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisNode {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for RedisNode {
    /// `host:port`, with IPv6 hosts in brackets (`[::1]:6379`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { host, port } = self.clone();
        HostPort { host, port }.fmt(f)
    }
}

/// A parsed Redis URL. Its `Debug` never shows the password.
///
/// ```
/// use coord_redis::{RedisConfig, RedisMode};
///
/// let c = RedisConfig::from_url("redis://app:s3cret@10.0.0.5:6380/2").unwrap();
/// assert_eq!(c.mode, RedisMode::Standalone);
/// assert_eq!(c.nodes[0].port, 6380);
/// assert_eq!(c.db, 2);
/// assert!(!format!("{c:?}").contains("s3cret"));
///
/// let c = RedisConfig::from_url("redis+cluster://h1:7000,h2:7001").unwrap();
/// assert_eq!(c.nodes.len(), 2);
/// assert!(RedisConfig::from_url("redis://host:notaport").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Standalone, cluster or sentinel.
    pub mode: RedisMode,
    /// The server (standalone), the cluster's seed nodes or the sentinels;
    /// never empty.
    pub nodes: Vec<RedisNode>,
    /// ACL user name, if any (of the data nodes, not the sentinels).
    pub username: Option<String>,
    /// Password, if any (of the data nodes, not the sentinels).
    pub password: Option<String>,
    /// Database number (standalone and sentinel only). Default 0.
    pub db: i64,
    /// Whether to connect over TLS (`rediss://`; for `rediss+sentinel://`,
    /// to the sentinels and the data nodes alike).
    pub tls: bool,
    /// The master's name and the sentinels' credentials; `Some` exactly
    /// when `mode` is [`RedisMode::Sentinel`].
    pub sentinel: Option<SentinelConfig>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

impl RedisConfig {
    /// Parses `redis://[user[:pass]@]host[:port][/db]`, `rediss://…` (TLS),
    /// `redis+cluster://[user[:pass]@]h1[:port],h2[:port]` (also
    /// `rediss+cluster://`) or
    /// `redis+sentinel://[user[:pass]@]s1[:port],s2[:port]/<master-name>[/db][?sentinel_password=…]`
    /// (also `rediss+sentinel://`; sentinel port 26379 by default; see
    /// [`SentinelConfig`] for whose password is whose). User, password and
    /// master name may be percent-encoded.
    ///
    /// Malformed URLs give [`Error::InvalidArgument`] saying what is wrong;
    /// `rediss://` without the `tls` feature gives [`Error::Unsupported`].
    pub fn from_url(url: &str) -> Result<RedisConfig> {
        let in_url = || format!("bad redis URL {}", redact(url));
        let bad = |what: &str| Error::invalid(what).context(in_url());
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected redis://host:port"))?;
        let (mode, tls) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => (RedisMode::Standalone, false),
            "rediss" => (RedisMode::Standalone, true),
            "redis+cluster" => (RedisMode::Cluster, false),
            "rediss+cluster" => (RedisMode::Cluster, true),
            "redis+sentinel" => (RedisMode::Sentinel, false),
            "rediss+sentinel" => (RedisMode::Sentinel, true),
            other => {
                return Err(bad(&format!(
                    "unknown scheme {other:?}; use redis://, rediss://, redis+cluster:// or \
                     redis+sentinel://"
                )));
            }
        };
        if tls && !cfg!(feature = "tls") {
            return Err(Error::Unsupported(format!(
                "{scheme}:// needs TLS support: enable the `tls` feature of coord \
                 (or of coord-redis)"
            )));
        }
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = split_userinfo(authority).map_err(|e| e.context(in_url()))?;
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => (
                Some(u.user).filter(|u| !u.is_empty()),
                u.password.filter(|p| !p.is_empty()),
            ),
        };
        let default_port = match mode {
            RedisMode::Sentinel => DEFAULT_SENTINEL_PORT,
            _ => DEFAULT_PORT,
        };
        if hosts.is_empty() {
            return Err(bad(match mode {
                RedisMode::Sentinel => {
                    "no sentinel host; expected \
                     redis+sentinel://host1:26379,host2:26379/<master-name>"
                }
                _ => "no host; expected redis://host:port",
            }));
        }
        let nodes = hosts
            .split(',')
            .map(|h| {
                HostPort::parse(h, default_port)
                    .map(|HostPort { host, port }| RedisNode { host, port })
                    .map_err(|e| e.context(in_url()))
            })
            .collect::<Result<Vec<_>>>()?;
        if mode == RedisMode::Standalone && nodes.len() > 1 {
            return Err(bad(
                "several hosts given; use redis+cluster://h1:port,h2:port for a cluster",
            ));
        }
        if mode == RedisMode::Sentinel {
            let (sentinel, db) =
                SentinelConfig::parse(path, query).map_err(|e| e.context(in_url()))?;
            return Ok(RedisConfig {
                mode,
                nodes,
                username,
                password,
                db,
                tls,
                sentinel: Some(sentinel),
            });
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            // Silently ignored parameters would hide a mistake (a password
            // or database given there).
            let redacted = redact(&format!("x://?{query}"));
            return Err(bad(&format!(
                "query parameters are not supported here (got ?{}); give the database as \
                 the path (redis://host:6379/2) and credentials before the host \
                 (redis://user:password@host)",
                redacted.trim_start_matches("x://?")
            )));
        }
        let db = match path.trim_end_matches('/') {
            "" => 0,
            db => db
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| bad(&format!("database {db:?} is not a non-negative number")))?,
        };
        if mode == RedisMode::Cluster && db != 0 {
            return Err(bad("Redis Cluster has only database 0"));
        }
        Ok(RedisConfig {
            mode,
            nodes,
            username,
            password,
            db,
            tls,
            sentinel: None,
        })
    }

    /// The nodes as `host:port[,host:port…]`, for messages.
    pub fn addresses(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&n.to_string());
        }
        s
    }

    /// The `redis` crate's connection info of one node.
    pub(crate) fn connection_info(&self, node: &RedisNode) -> Result<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo;
        let addr = self.connection_addr(node);
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &self.password {
            redis_info = redis_info.set_password(p);
        }
        addr.into_connection_info()
            .map(|info| info.set_redis_settings(redis_info))
            .map_err(|e| Error::invalid(format!("redis address {node}: {e}")))
    }

    /// The `redis` crate's connection info of one sentinel: the sentinels'
    /// credentials, TLS as for the data nodes, database 0.
    pub(crate) fn sentinel_connection_info(
        &self,
        node: &RedisNode,
    ) -> Result<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo;
        let mut redis_info = redis::RedisConnectionInfo::default();
        if let Some(sentinel) = &self.sentinel {
            if let Some(u) = &sentinel.username {
                redis_info = redis_info.set_username(u);
            }
            if let Some(p) = &sentinel.password {
                redis_info = redis_info.set_password(p);
            }
        }
        self.connection_addr(node)
            .into_connection_info()
            .map(|info| info.set_redis_settings(redis_info))
            .map_err(|e| Error::invalid(format!("sentinel address {node}: {e}")))
    }

    pub(crate) fn connection_addr(&self, node: &RedisNode) -> redis::ConnectionAddr {
        #[cfg(feature = "tls")]
        if self.tls {
            return redis::ConnectionAddr::TcpTls {
                host: node.host.clone(),
                port: node.port,
                insecure: false,
                tls_params: None,
            };
        }
        redis::ConnectionAddr::Tcp(node.host.clone(), node.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_standalone_urls() {
        let c = RedisConfig::from_url("redis://127.0.0.1").unwrap();
        assert_eq!(
            c.nodes,
            vec![RedisNode {
                host: "127.0.0.1".into(),
                port: 6379
            }]
        );
        assert_eq!(
            (c.db, c.tls, c.username.as_deref(), c.password.as_deref()),
            (0, false, None, None)
        );

        let c = RedisConfig::from_url("redis://u%40x:p%3Aw@[::1]:7000/3").unwrap();
        assert_eq!(c.nodes[0].host, "::1");
        assert_eq!(c.nodes[0].port, 7000);
        assert_eq!(c.username.as_deref(), Some("u@x"));
        assert_eq!(c.password.as_deref(), Some("p:w"));
        assert_eq!(c.db, 3);
        assert_eq!(c.addresses(), "[::1]:7000");

        let c = RedisConfig::from_url("redis://:only-pass@localhost:6380/").unwrap();
        assert_eq!(c.username, None);
        assert_eq!(c.password.as_deref(), Some("only-pass"));
    }

    #[test]
    fn parses_cluster_urls() {
        let c = RedisConfig::from_url("redis+cluster://user:pw@h1:7000,h2,h3:7002").unwrap();
        assert_eq!(c.mode, RedisMode::Cluster);
        assert_eq!(c.addresses(), "h1:7000,h2:6379,h3:7002");
        assert_eq!(c.username.as_deref(), Some("user"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("127.0.0.1:6379", "expected redis://"),
            ("http://h:1", "unknown scheme"),
            ("redis://", "no host"),
            ("redis://h:abc", "port \"abc\""),
            ("redis://h:70000", "port \"70000\""),
            ("redis://h:0", "port \"0\""),
            ("redis://:1", "empty host"),
            ("redis://h/x", "database \"x\""),
            ("redis://h/-1", "database \"-1\""),
            ("redis://h1,h2", "several hosts"),
            ("redis+cluster://h1,,h2", "empty host"),
            ("redis+cluster://h1/2", "only database 0"),
            ("redis://[::1:6379", "unclosed"),
            ("redis://u:%zz@h", "percent-encoding"),
            ("redis+sentinel://", "no sentinel host"),
            ("redis+sentinel:///mymaster", "no sentinel host"),
            ("redis+sentinel://h1,h2", "no master name"),
            ("redis+sentinel://h1,h2/", "no master name"),
            ("redis+sentinel://h1:26379//0", "no master name"),
            ("redis+sentinel://h1/m/x", "database \"x\""),
            ("redis+sentinel://h1:x/m", "port \"x\""),
            ("redis+sentinel://h1,,h2/m", "empty host"),
            ("redis://h:6379?db=2", "query parameters are not supported"),
            ("redis+cluster://h1,h2?password=x", "?password=***"),
            (
                "redis+sentinel://h/m?sentinel_pasword=x",
                "sentinel_password",
            ),
        ] {
            match RedisConfig::from_url(url) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(needle), "{url}: {m}"),
                other => panic!("{url}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn parses_sentinel_urls() {
        let c = RedisConfig::from_url("redis+sentinel://h1,h2:26380,[::1]/mymaster").unwrap();
        assert_eq!(c.mode, RedisMode::Sentinel);
        assert_eq!(c.addresses(), "h1:26379,h2:26380,[::1]:26379");
        assert_eq!((c.db, c.tls, c.password.as_deref()), (0, false, None));
        let s = c.sentinel.as_ref().unwrap();
        assert_eq!(s.master_name, "mymaster");
        assert_eq!((s.username.as_deref(), s.password.as_deref()), (None, None));

        let c = RedisConfig::from_url(
            "REDIS+SENTINEL://app:pw@h1/mymaster/4?sentinel_username=sen&sentinel_password=spw",
        )
        .unwrap();
        assert_eq!(c.db, 4);
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("app"), Some("pw"))
        );
        let s = c.sentinel.as_ref().unwrap();
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("sen"), Some("spw"))
        );
        assert!(
            RedisConfig::from_url("redis://h")
                .unwrap()
                .sentinel
                .is_none()
        );
    }

    #[test]
    fn a_sentinel_password_stays_out_of_errors_and_debug() {
        let err = RedisConfig::from_url("redis+sentinel://h:bad/m?sentinel_password=hunter2")
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let c = RedisConfig::from_url("redis+sentinel://h/m?sentinel_password=hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn errors_and_debug_hide_the_password() {
        let err = RedisConfig::from_url("redis://u:hunter2@h:bad").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let c = RedisConfig::from_url("redis://u:hunter2@h").unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_is_unsupported() {
        match RedisConfig::from_url("rediss://h:6380") {
            Err(Error::Unsupported(m)) => assert!(m.contains("`tls` feature"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_with_the_feature_parses() {
        let c = RedisConfig::from_url("rediss://h:6380").unwrap();
        assert!(c.tls);
        let c = RedisConfig::from_url("rediss+sentinel://h/m").unwrap();
        assert!(c.tls && c.mode == RedisMode::Sentinel);
    }
}
