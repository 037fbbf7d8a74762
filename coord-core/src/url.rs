//! The parts of backend URLs that every backend shares: user info
//! (`user:password@`, percent-encoded), `host[:port]` with IPv6 brackets, and
//! redacting the password for logs and error messages.
//!
//! Each backend parses its own scheme, path and query and puts its own context
//! around these errors (with [`Error::context`]); what is the same for every
//! backend lives here once. Every error is an [`Error::InvalidArgument`] that
//! says what is wrong and never contains a password.
//!
//! ```
//! use coord_core::url::{HostPort, redact, split_userinfo};
//!
//! let url = "etcd://root:s%40cret@[::1]:2379";
//! let (userinfo, host) = split_userinfo(url.strip_prefix("etcd://").unwrap())?;
//! let userinfo = userinfo.unwrap();
//! assert_eq!((userinfo.user.as_str(), userinfo.password.as_deref()), ("root", Some("s@cret")));
//! let host = HostPort::parse(host, 2379)?;
//! assert_eq!((host.host.as_str(), host.port), ("::1", 2379));
//! assert_eq!(host.to_string(), "[::1]:2379");
//! assert_eq!(redact(url), "etcd://root:***@[::1]:2379");
//! # Ok::<_, coord_core::Error>(())
//! ```

use std::fmt;

use crate::{Error, Result};

/// `url` with the password (if any) replaced by `***`, for logs and error
/// messages: `redis://app:s3cret@h:6379` becomes `redis://app:***@h:6379`.
/// The user name stays. A URL without a scheme is redacted the same way.
/// The value of every query parameter whose name ends in `password`
/// (`?sentinel_password=…`) is replaced too.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (&url[..scheme.len() + 3], rest),
        None => ("", url),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let mut out = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}{user}:***@{hosts}"),
            None => format!("{scheme}{rest}"),
        },
        None => format!("{scheme}{rest}"),
    };
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().ends_with("password") => {
                    out.push_str(name);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    out
}

/// Decodes `%XX` escapes (as in URL user names and passwords); other
/// characters pass through. Fails when a `%` is not followed by two hex
/// digits or the decoded bytes are not UTF-8; the message does not repeat `s`.
pub fn percent_decode(s: &str) -> Result<String> {
    decode(s).map_err(|why| Error::invalid(format!("not valid percent-encoding: {why}")))
}

/// Parses a duration given in a URL's query (`500ms`, `2s`, `1m`), for the
/// parameter `key`; the error names the parameter and shows the format.
pub fn parse_duration(key: &str, value: &str) -> Result<std::time::Duration> {
    humantime_serde::re::humantime::parse_duration(value).map_err(|e| {
        Error::invalid(format!(
            "{key}={value:?} is not a duration ({e}); write it like 500ms, 2s or 1m"
        ))
    })
}

/// [`percent_decode`] with the reason it failed, so callers can say which part was bad.
fn decode(s: &str) -> std::result::Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("'%' must be followed by two hex digits (write a literal % as %25)")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "it is not UTF-8 once decoded")
}

/// The `user[:password]` before the `@` of a URL, percent-decoded. Its
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Userinfo {
    /// The user name; empty when the URL has `:password@` only.
    pub user: String,
    /// The password: `None` without a `:`, `Some("")` for `user:@`.
    pub password: Option<String>,
}

impl fmt::Debug for Userinfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Userinfo")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Splits `[user[:password]@]hosts` (a URL after its `scheme://`, without
/// path or query) at its last `@`, so an unencoded `@` in the password still
/// works, and percent-decodes user and password. Returns the user info, if
/// any, and the rest.
pub fn split_userinfo(authority: &str) -> Result<(Option<Userinfo>, &str)> {
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return Ok((None, authority));
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let bad = |part: &str, why: &str| {
        Error::invalid(format!("the {part} is not valid percent-encoding: {why}"))
    };
    let user = decode(user).map_err(|why| bad("user name", why))?;
    let password = password
        .map(|p| decode(p).map_err(|why| bad("password", why)))
        .transpose()?;
    Ok((Some(Userinfo { user, password }), hosts))
}

/// One `host[:port]` of a URL. IPv6 addresses are kept without their
/// brackets; `Display` puts them back (`[::1]:2379`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port, 1 to 65535.
    pub port: u16,
}

impl HostPort {
    /// Parses `host`, `host:port`, `[ipv6]` or `[ipv6]:port`; a missing port
    /// is `default_port`. Fails, saying what is wrong, on an empty host, an
    /// unclosed `[`, a character no host name has, or a port that is not a
    /// number from 1 to 65535.
    pub fn parse(s: &str, default_port: u16) -> Result<HostPort> {
        if s.is_empty() {
            return Err(Error::invalid(
                "empty host; give each host as host[:port], separated by single commas",
            ));
        }
        let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| {
                Error::invalid(format!(
                    "unclosed '[' in {s:?}; write an IPv6 address as [::1]:port"
                ))
            })?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => {
                        return Err(Error::invalid(format!(
                            "expected ':port' after ']' in {s:?}"
                        )));
                    }
                },
            }
        } else {
            match s.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(Error::invalid(format!(
                "empty host in {s:?}: a port but no host name"
            )));
        }
        if let Some(c) = host
            .chars()
            .find(|c| c.is_whitespace() || "/@[]".contains(*c))
        {
            return Err(Error::invalid(format!(
                "host {host:?} contains {c:?}, which is not allowed in a host name"
            )));
        }
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                Error::invalid(format!(
                    "bad port {p:?} in {s:?}; give a number from 1 to 65535"
                ))
            })?,
        };
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<impl fmt::Debug>) -> String {
        match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn durations_parse_and_bad_ones_name_their_parameter() {
        assert_eq!(
            parse_duration("k", "500ms").unwrap(),
            std::time::Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("k", "2s").unwrap(),
            std::time::Duration::from_secs(2)
        );
        for bad in ["", "5", "soon", "-1s"] {
            let m = invalid(parse_duration("master_check", bad));
            assert!(m.contains("master_check=") && m.contains("500ms"), "{m}");
        }
    }

    #[test]
    fn redact_hides_only_the_password() {
        for (url, redacted) in [
            ("redis://u:secret@h:1", "redis://u:***@h:1"),
            (
                "etcd://root:hunter2@h1:2379,h2",
                "etcd://root:***@h1:2379,h2",
            ),
            ("redis://:pw@h", "redis://:***@h"),
            ("redis://u:p@ss@h/0", "redis://u:***@h/0"),
            ("u:secret@h:6379", "u:***@h:6379"),
            ("redis://user@h", "redis://user@h"),
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("memory://", "memory://"),
            ("", ""),
            (
                "redis+sentinel://:pw@h1,h2/m?sentinel_password=s3&x=1",
                "redis+sentinel://:***@h1,h2/m?sentinel_password=***&x=1",
            ),
            (
                "redis+sentinel://h/m?Sentinel_Password=s3",
                "redis+sentinel://h/m?Sentinel_Password=***",
            ),
            (
                "redis+sentinel://h/m?sentinel_username=u",
                "redis+sentinel://h/m?sentinel_username=u",
            ),
            ("redis://h?a@b", "redis://h?a@b"),
        ] {
            assert_eq!(redact(url), redacted, "{url}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%3Aw%40x%25").unwrap(), "p:w@x%");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        assert_eq!(percent_decode("%C3%A9t%C3%A9").unwrap(), "été");
        assert_eq!(percent_decode("").unwrap(), "");
        for bad in ["%zz", "%4", "abc%", "%+1", "%-1"] {
            let m = invalid(percent_decode(bad));
            assert!(m.contains("two hex digits"), "{bad}: {m}");
        }
        let m = invalid(percent_decode("%FF"));
        assert!(m.contains("UTF-8"), "{m}");
    }

    #[test]
    fn userinfo_is_split_at_the_last_at_and_decoded() {
        assert_eq!(split_userinfo("h1:2379").unwrap(), (None, "h1:2379"));
        let (u, rest) = split_userinfo("u%40x:p:w@d@h1,h2").unwrap();
        let u = u.unwrap();
        assert_eq!(
            (u.user.as_str(), u.password.as_deref()),
            ("u@x", Some("p:w@d"))
        );
        assert_eq!(rest, "h1,h2");
        let (u, rest) = split_userinfo("user@").unwrap();
        assert_eq!((u.unwrap().password, rest), (None, ""));
        let (u, _) = split_userinfo(":only@h").unwrap();
        let u = u.unwrap();
        assert_eq!((u.user.as_str(), u.password.as_deref()), ("", Some("only")));
        assert!(!format!("{u:?}").contains("only"), "{u:?}");
    }

    #[test]
    fn bad_userinfo_says_which_part_without_the_password() {
        let m = invalid(split_userinfo("u%zz:pw@h"));
        assert!(
            m.contains("user name") && m.contains("percent-encoding"),
            "{m}"
        );
        let m = invalid(split_userinfo("u:hunter2%zz@h"));
        assert!(
            m.contains("password") && m.contains("percent-encoding"),
            "{m}"
        );
        assert!(!m.contains("hunter2"), "{m}");
    }

    #[test]
    fn host_ports_parse_with_default_port_and_ipv6() {
        for (s, host, port) in [
            ("h1", "h1", 2379),
            ("h1:1", "h1", 1),
            ("10.0.0.1:65535", "10.0.0.1", 65535),
            ("[::1]", "::1", 2379),
            ("[::1]:3", "::1", 3),
            ("[fe80::1%eth0]:7000", "fe80::1%eth0", 7000),
        ] {
            let hp = HostPort::parse(s, 2379).unwrap();
            assert_eq!((hp.host.as_str(), hp.port), (host, port), "{s}");
        }
        assert_eq!(
            HostPort::parse("[::1]:3", 1).unwrap().to_string(),
            "[::1]:3"
        );
        assert_eq!(HostPort::parse("h", 6379).unwrap().to_string(), "h:6379");
    }

    #[test]
    fn bad_host_ports_say_what_is_wrong() {
        for (s, says) in [
            ("", "empty host"),
            (":2379", "empty host"),
            (":2379", "no host name"),
            ("[]:2379", "empty host"),
            ("[::1:2379", "unclosed '['"),
            ("[::1]2379", "expected ':port' after ']'"),
            ("h1:notaport", "bad port \"notaport\""),
            ("h1:0", "bad port \"0\""),
            ("h1:70000", "bad port \"70000\""),
            ("h1:", "bad port \"\""),
            ("h1:1:2", "bad port \"1:2\""),
            ("[::1]:", "bad port"),
            ("h 1", "not allowed in a host name"),
            ("h/1:2", "not allowed in a host name"),
            ("h]:2", "not allowed in a host name"),
        ] {
            let m = invalid(HostPort::parse(s, 2379));
            assert!(m.contains(says), "{s:?}: {m}");
        }
    }
}
