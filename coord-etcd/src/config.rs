//! `etcd://` and `etcds://` URLs.

use std::fmt;

use coord_core::url::{HostPort, redact, split_userinfo};
use coord_core::{Error, Result};

/// The port etcd clients use when a URL names none.
pub const DEFAULT_PORT: u16 = 2379;

/// Where and how to reach an etcd cluster, parsed from a URL:
/// `etcd://[user:password@]host1:2379,host2:2379` (plain) or `etcds://…` (TLS,
/// needs the `tls` feature).
///
/// ```
/// let config = coord_etcd::EtcdConfig::from_url("etcd://root:secret@10.0.0.1:2379,10.0.0.2").unwrap();
/// assert_eq!(config.endpoints(), ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
/// assert_eq!(config.user(), Some("root"));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// `host:port` of every endpoint, in the order given.
    pub hosts: Vec<String>,
    /// Whether to connect over TLS (`etcds://`).
    pub tls: bool,
    /// User name and password for etcd's authentication, when given.
    pub credentials: Option<(String, String)>,
}

impl EtcdConfig {
    /// Parses an `etcd://` or `etcds://` URL. Hosts are separated by commas;
    /// a host without a port gets 2379; IPv6 hosts go in brackets
    /// (`[::1]:2379`); user and password may be percent-encoded.
    pub fn from_url(url: &str) -> Result<Self> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("etcds://") {
            (true, rest)
        } else {
            return Err(Error::invalid(format!(
                "etcd URL {:?} must start with etcd:// or etcds://",
                redact(url)
            )));
        };
        if tls && !cfg!(feature = "tls") {
            return Err(Error::Unsupported(
                "etcds:// needs TLS support: enable the `tls` feature of coord".to_owned(),
            ));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains(['/', '?', '#']) {
            return Err(Error::invalid(format!(
                "etcd URL {:?} must not have a path or query; give only [user:password@]host:port,host:port",
                redact(url)
            )));
        }
        let in_url = || format!("etcd URL {:?}", redact(url));
        let (userinfo, hosts) = split_userinfo(rest).map_err(|e| e.context(in_url()))?;
        let credentials = match userinfo {
            Some(u) if u.user.is_empty() => {
                return Err(Error::invalid(
                    "etcd URL has an '@' but no user name before it; write user:password@host",
                ));
            }
            Some(u) => Some((u.user, u.password.unwrap_or_default())),
            None => None,
        };
        if hosts.is_empty() {
            return Err(Error::invalid(format!(
                "etcd URL {:?} names no host; give at least one, e.g. etcd://127.0.0.1:2379",
                redact(url)
            )));
        }
        let hosts = hosts
            .split(',')
            .enumerate()
            .map(|(i, h)| {
                HostPort::parse(h, DEFAULT_PORT)
                    .map(|h| h.to_string())
                    .map_err(|e| e.context(format!("{}, endpoint {}", in_url(), i + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EtcdConfig {
            hosts,
            tls,
            credentials,
        })
    }

    /// The endpoints as etcd-client takes them (`http://host:port` or `https://…`).
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.hosts
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .collect()
    }

    /// The user name, when credentials were given.
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(u, _)| u.as_str())
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("hosts", &self.hosts)
            .field("tls", &self.tls)
            .field("user", &self.user())
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_endpoints_and_credentials() {
        let c = EtcdConfig::from_url("etcd://u%40x:p%3Aw@h1:1,h2,[::1]:3/").unwrap();
        assert_eq!(c.hosts, ["h1:1", "h2:2379", "[::1]:3"]);
        assert_eq!(
            c.endpoints(),
            ["http://h1:1", "http://h2:2379", "http://[::1]:3"]
        );
        assert_eq!(c.credentials, Some(("u@x".to_owned(), "p:w".to_owned())));
        assert!(!c.tls);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("p:w") && debug.contains("redacted"),
            "{debug}"
        );
    }

    #[test]
    fn single_endpoint_without_credentials() {
        let c = EtcdConfig::from_url("etcd://127.0.0.1:23790").unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:23790"]);
        assert_eq!(c.credentials, None);
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        for (url, says) in [
            ("etcd://", "no host"),
            ("etcd://user:pw@", "no host"),
            ("etcd://h1:notaport", "bad port"),
            ("etcd://h1:0", "bad port"),
            ("etcd://h1:70000", "bad port"),
            ("etcd://h1:2379,,h2:2379", "empty"),
            ("etcd://h1:2379,", "empty"),
            ("etcd://:2379", "no host name"),
            ("redis://h1:6379", "must start with"),
            ("h1:2379", "must start with"),
            ("etcd://h1:2379/path", "path"),
            ("etcd://[::1:2379", "unclosed"),
            ("etcd://:pw@h1", "no user"),
        ] {
            match EtcdConfig::from_url(url) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(says), "{url}: {m}"),
                other => panic!("{url}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_do_not_leak_passwords() {
        let err = EtcdConfig::from_url("etcd://root:hunter2@h1:x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = EtcdConfig::from_url("etcd://root:hunter2@h1/x").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_needs_the_feature() {
        match EtcdConfig::from_url("etcds://h1:2379") {
            Err(Error::Unsupported(m)) => assert!(m.contains("`tls` feature"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_uses_https() {
        let c = EtcdConfig::from_url("etcds://h1:2379").unwrap();
        assert!(c.tls);
        assert_eq!(c.endpoints(), ["https://h1:2379"]);
    }
}
