//! The Sentinel parts of a `redis+sentinel://` URL: the master's name (the
//! path), the database after it, and the sentinels' own credentials (query
//! parameters).

use std::fmt;
use std::time::Duration;

use coord_core::url::{parse_duration, percent_decode};
use coord_core::{Error, Result};

/// The default port of a Redis Sentinel.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// How often the backend asks a sentinel which node is the master, unless
/// the URL says otherwise (`?master_check=…`): once a second, as
/// Redisson's `scanInterval`.
pub const DEFAULT_MASTER_CHECK: Duration = Duration::from_secs(1);

/// The query parameters a `redis+sentinel://` URL takes, for messages.
const PARAMETERS: &str = "sentinel_username, sentinel_password, master_check and replica_ack";

/// What a `redis+sentinel://` URL says beyond the sentinels' addresses.
/// Its `Debug` never shows the password.
///
/// The URL's `user:password@` is for the master (and every replica that
/// may replace it): the data nodes. Sentinels are asked without
/// credentials unless the URL gives `?sentinel_password=…` (and, for an
/// ACL user, `&sentinel_username=…`), since a sentinel configured without
/// a password refuses an `AUTH`. Give both when both need one, even when
/// they are the same password.
///
/// The backend hears of a failover from the sentinels' `+switch-master`
/// events, and also asks the sentinel it listens to which node is the
/// master every [`master_check`](Self::master_check) (default
/// [`DEFAULT_MASTER_CHECK`]; `?master_check=250ms` sets another,
/// `?master_check=off` none): a missed event, a move that failed, or a
/// sentinel that stopped answering is caught within that time, even by a
/// client whose old master still accepts its writes (cut off from the
/// sentinels, not from the client).
///
/// A lock's write (grant, renewal, release, fenced write) counts only once
/// a replica has acknowledged it ([`replica_ack`](Self::replica_ack), on by
/// default; `?replica_ack=off` turns it off): a master cut off from its
/// replicas (whose sentinels are promoting one of them) then refuses to
/// hand out locks the new master would not know of.
///
/// ```
/// use coord_redis::{RedisConfig, RedisMode};
///
/// let c = RedisConfig::from_url(
///     "redis+sentinel://:data-pw@s1:26379,s2/orders/2?sentinel_password=sentinel-pw",
/// )
/// .unwrap();
/// assert_eq!(c.mode, RedisMode::Sentinel);
/// assert_eq!(c.addresses(), "s1:26379,s2:26379");
/// assert_eq!((c.password.as_deref(), c.db), (Some("data-pw"), 2));
/// let sentinel = c.sentinel.as_ref().unwrap();
/// assert_eq!(sentinel.master_name, "orders");
/// assert_eq!(sentinel.password.as_deref(), Some("sentinel-pw"));
/// assert!(!format!("{c:?}").contains("-pw"));
/// assert_eq!(sentinel.master_check, Some(coord_redis::DEFAULT_MASTER_CHECK));
/// assert!(sentinel.replica_ack);
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under
    /// (`sentinel monitor <name> …` in their configuration).
    pub master_name: String,
    /// The ACL user to authenticate to the sentinels as
    /// (`sentinel_username=`), if any.
    pub username: Option<String>,
    /// The sentinels' password (`sentinel_password=`), if any.
    pub password: Option<String>,
    /// How often the backend asks the sentinel it listens to which node is
    /// the master (`master_check=`; `None` for `off`).
    pub master_check: Option<Duration>,
    /// Whether a lock's writes (grants, renewals, releases, proclaimed
    /// values, fenced writes) must be acknowledged by a replica
    /// (`replica_ack=`, `on` by default, or `off`). Each such script is
    /// followed by `WAIT 1` and `ROLE` in the same round trip; when no
    /// replica acknowledged it within half the `request_timeout` (at most
    /// 1 s) while the master lists replicas, the call fails with a
    /// retryable [`Error::Unavailable`] and the caller does not take the
    /// write as done (an acquisition releases what it was granted; the
    /// write itself stays on that master until the sentinels demote it). A
    /// master that lists no replica has nothing to wait for: a replica
    /// that connects later receives the write in its first sync. Queued
    /// locks' waiters ask for their grant instead of taking the release's
    /// announcement, so that a hand-over counts only once acknowledged
    /// too. The data nodes' ACL user needs `WAIT` and `ROLE`.
    pub replica_ack: bool,
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("master_check", &self.master_check)
            .field("replica_ack", &self.replica_ack)
            .finish()
    }
}

impl SentinelConfig {
    /// Parses the path (`<master-name>[/<db>]`, after the hosts' `/`) and
    /// the query (without its `?`) of a `redis+sentinel://` URL. Returns
    /// the configuration and the database number (0 when not given).
    pub(crate) fn parse(path: &str, query: Option<&str>) -> Result<(SentinelConfig, i64)> {
        let path = path.trim_end_matches('/');
        let (name, db) = match path.split_once('/') {
            Some((name, db)) => (name, Some(db)),
            None => (path, None),
        };
        if name.is_empty() {
            return Err(Error::invalid(
                "no master name; give the name the sentinels monitor the master under, \
                 e.g. redis+sentinel://host:26379/mymaster",
            ));
        }
        let master_name = percent_decode(name).map_err(|e| e.context("the master name"))?;
        if let Some(c) = master_name
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid(format!(
                "master name {master_name:?} contains {c:?}; Sentinel master names have no \
                 spaces or control characters"
            )));
        }
        let db = match db {
            None => 0,
            Some(db) => db.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                Error::invalid(format!(
                    "database {db:?} is not a non-negative number; the path is \
                     /<master-name>[/<db>]"
                ))
            })?,
        };
        let mut config = SentinelConfig {
            master_name,
            username: None,
            password: None,
            master_check: Some(DEFAULT_MASTER_CHECK),
            replica_ack: true,
        };
        let mut check_given = false;
        let mut ack_given = false;
        for pair in query.unwrap_or_default().split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "master_check" {
                if std::mem::replace(&mut check_given, true) {
                    return Err(Error::invalid(format!("query parameter {key} given twice")));
                }
                config.master_check = parse_master_check(value)?;
                continue;
            }
            if key == "replica_ack" {
                if std::mem::replace(&mut ack_given, true) {
                    return Err(Error::invalid(format!("query parameter {key} given twice")));
                }
                config.replica_ack = match value {
                    "on" => true,
                    "off" => false,
                    other => {
                        return Err(Error::invalid(format!(
                            "replica_ack={other} is neither on nor off"
                        )));
                    }
                };
                continue;
            }
            let slot = match key {
                "sentinel_username" => &mut config.username,
                "sentinel_password" => &mut config.password,
                other => {
                    return Err(Error::invalid(format!(
                        "unknown query parameter {other:?}; redis+sentinel:// URLs take \
                         {PARAMETERS}"
                    )));
                }
            };
            if slot.is_some() {
                return Err(Error::invalid(format!("query parameter {key} given twice")));
            }
            let value = percent_decode(value).map_err(|e| e.context(key))?;
            *slot = Some(value).filter(|v| !v.is_empty());
        }
        Ok((config, db))
    }
}

/// `master_check=`'s value: a duration of at least 10 ms, or `off`.
fn parse_master_check(value: &str) -> Result<Option<Duration>> {
    if value == "off" {
        return Ok(None);
    }
    let every = parse_duration("master_check", value)?;
    if every < Duration::from_millis(10) {
        return Err(Error::invalid(format!(
            "master_check={value} is below 10 ms; give a duration like 1s, or off for no \
             check"
        )));
    }
    Ok(Some(every))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_parse() {
        let (c, db) = SentinelConfig::parse("mymaster", None).unwrap();
        assert_eq!((c.master_name.as_str(), db), ("mymaster", 0));
        assert_eq!((c.username, c.password), (None, None));

        let (c, db) = SentinelConfig::parse(
            "my%2Dmaster/3/",
            Some("sentinel_username=sen&sentinel_password=p%26w"),
        )
        .unwrap();
        assert_eq!((c.master_name.as_str(), db), ("my-master", 3));
        assert_eq!(c.username.as_deref(), Some("sen"));
        assert_eq!(c.password.as_deref(), Some("p&w"));

        let (c, _) = SentinelConfig::parse("m", Some("sentinel_password=")).unwrap();
        assert_eq!(c.password, None, "an empty password is none");
        assert_eq!(c.master_check, Some(DEFAULT_MASTER_CHECK));

        let (c, _) = SentinelConfig::parse("m", Some("master_check=250ms")).unwrap();
        assert_eq!(c.master_check, Some(Duration::from_millis(250)));
        let (c, _) = SentinelConfig::parse("m", Some("master_check=off")).unwrap();
        assert_eq!(c.master_check, None);
        assert!(c.replica_ack, "on by default");
        let (c, _) = SentinelConfig::parse("m", Some("replica_ack=off")).unwrap();
        assert!(!c.replica_ack);
        let (c, _) = SentinelConfig::parse("m", Some("replica_ack=on")).unwrap();
        assert!(c.replica_ack);
    }

    #[test]
    fn bad_paths_and_queries_say_what_is_wrong() {
        for (path, query, needle) in [
            ("", None, "no master name"),
            ("/2", None, "no master name"),
            ("m/x", None, "database \"x\""),
            ("m/-1", None, "database \"-1\""),
            ("m%zz", None, "master name"),
            ("m\tx", None, "no spaces"),
            (
                "m",
                Some("password=x"),
                "unknown query parameter \"password\"",
            ),
            (
                "m",
                Some("sentinel_password=a&sentinel_password=b"),
                "twice",
            ),
            ("m", Some("sentinel_password=%zz"), "sentinel_password"),
            ("m", Some("master_check=soon"), "500ms"),
            ("m", Some("master_check=1ms"), "below 10 ms"),
            ("m", Some("master_check=0s"), "below 10 ms"),
            ("m", Some("master_check=1s&master_check=off"), "twice"),
            ("m", Some("replica_ack=yes"), "neither on nor off"),
            ("m", Some("replica_ack=on&replica_ack=off"), "twice"),
        ] {
            match SentinelConfig::parse(path, query) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(needle), "{path:?}: {m}"),
                other => panic!("{path:?} {query:?}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let (c, _) = SentinelConfig::parse("m", Some("sentinel_password=hunter2")).unwrap();
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("<redacted>"),
            "{dbg}"
        );
    }
}
