//! `etcd://` and `etcds://` URLs.

use std::fmt;

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
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(parse_userinfo(userinfo)?), hosts),
            None => (None, rest),
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
            .map(|(i, h)| parse_host(h, i))
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

fn parse_userinfo(userinfo: &str) -> Result<(String, String)> {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let user = percent_decode(user)?;
    if user.is_empty() {
        return Err(Error::invalid(
            "etcd URL has an '@' but no user name before it; write user:password@host",
        ));
    }
    Ok((user, percent_decode(password)?))
}

fn parse_host(host: &str, index: usize) -> Result<String> {
    let n = index + 1;
    if host.is_empty() {
        return Err(Error::invalid(format!(
            "endpoint {n} of the etcd URL is empty; separate endpoints with single commas"
        )));
    }
    let (name, port) = if let Some(bracketed) = host.strip_prefix('[') {
        let (name, after) = bracketed.split_once(']').ok_or_else(|| {
            Error::invalid(format!("endpoint {n} ({host:?}) has an unclosed '['"))
        })?;
        match after {
            "" => (format!("[{name}]"), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (format!("[{name}]"), Some(port)),
                None => {
                    return Err(Error::invalid(format!(
                        "endpoint {n} ({host:?}): expected ':port' after ']'"
                    )));
                }
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name.to_owned(), Some(port)),
            None => (host.to_owned(), None),
        }
    };
    if name.is_empty() || name == "[]" {
        return Err(Error::invalid(format!(
            "endpoint {n} ({host:?}) has a port but no host name"
        )));
    }
    if name.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(Error::invalid(format!(
            "endpoint {n} ({host:?}) is not a valid host name"
        )));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(Error::invalid(format!(
                    "endpoint {n} ({host:?}) has bad port {p:?}; give a number from 1 to 65535"
                )));
            }
        },
    };
    Ok(format!("{name}:{port}"))
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::invalid("etcd URL credentials contain a bad percent-escape")
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::invalid("etcd URL credentials are not UTF-8 once percent-decoded"))
}

/// The URL with any password replaced, for error messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{hosts}")
        }
        None => url.to_owned(),
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
