//! `EtcdBackend`: one client of an etcd cluster and its shared leases.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coord_core::{Capabilities, ComponentHealth, Error, LockOwner, Result, Settings};
use etcd_client::{Client, ConnectOptions, GetOptions};
use tracing::Instrument;

use crate::config::EtcdConfig;
use crate::error::{call, deadline, is_refused, map};
use crate::lease::{LeasePool, MIN_LEASE_SECS, PooledLease};
use crate::members::Members;
use crate::server_version::{EtcdVersion, stall_revocation_warning};

/// A client of an etcd cluster implementing coord's backend traits. Cheap to
/// clone; clones share the connection and the leases.
///
/// The holder of lock `name` is the key `{namespace}/lock/{name}\0{owner}`
/// (see [`lock_key`](Self::lock_key)); the fencing token is its create revision. All locks of one client with the same TTL (rounded up to
/// whole seconds) share one etcd lease, kept alive by the lock watchdog's
/// renewals, like a session of etcd's `concurrency` package.
#[derive(Clone)]
pub struct EtcdBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: EtcdConfig,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) leases: LeasePool,
    /// The leases of service registrations, one per TTL bucket, kept alive
    /// by the registrations' renewals (apart from the locks' so that a lost
    /// lock never takes registrations with it).
    pub(crate) registry_leases: LeasePool,
    /// The leases of cache TTLs (never kept alive).
    pub(crate) cache_leases: crate::cache::leases::CacheLeases,
    /// The members of the endpoint list, probed in the background while
    /// this lives.
    _members: Arc<Members>,
    /// The locks this client holds: lock prefix → the hold.
    holds: Mutex<HashMap<String, Held>>,
    pub(crate) caps: Capabilities,
}

impl EtcdBackend {
    /// Connects to the cluster of an `etcd://[user:password@]h1:2379,h2:2379`
    /// (or `etcds://`, with the `tls` feature) URL, using the connect and
    /// request timeouts and the key namespace of `settings`. Makes one
    /// request to check that etcd answers.
    pub async fn connect(url: &str, settings: &Settings) -> Result<EtcdBackend> {
        let config = EtcdConfig::from_url(url)?;
        EtcdBackend::connect_with(config, settings).await
    }

    /// Connects with an already parsed configuration.
    pub async fn connect_with(config: EtcdConfig, settings: &Settings) -> Result<EtcdBackend> {
        let span = tracing::info_span!("coord.etcd.connect", endpoints = ?config.hosts);
        connect(config, settings).instrument(span).await
    }

    /// The configuration this client was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// The etcd-client connection, to run your own requests on it.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The leases this client holds right now, at most one per TTL bucket.
    pub fn leases(&self) -> Vec<PooledLease> {
        self.inner.leases.list()
    }

    /// The prefix of the keys of lock `name`: `{namespace}/lock/{name}` and a
    /// NUL byte. Lock names never contain NUL, so no other lock's keys
    /// (such as those of `{name}/sub`) start with it. At most one key with
    /// this prefix exists at a time, the holder's ([`lock_key`](Self::lock_key)).
    pub fn lock_prefix(&self, name: &str) -> String {
        LockKeys::new(&self.inner.prefix, name).prefix
    }

    /// The key `owner` creates while it holds lock `name`:
    /// [`lock_prefix`](Self::lock_prefix) followed by the owner's stored form
    /// (`client_id:owner`). Its create revision is the fencing token; its
    /// value is empty.
    pub fn lock_key(&self, name: &str, owner: &LockOwner) -> String {
        LockKeys::new(&self.inner.prefix, name).holder(owner)
    }

    pub(crate) fn lock_keys(&self, name: &str) -> LockKeys {
        LockKeys::new(&self.inner.prefix, name)
    }

    /// The version of the etcd member that answers (one round trip).
    ///
    /// Versions before 3.4.31 and 3.5.13 can end locks early after a leader
    /// stall ([`EtcdVersion::revokes_leases_after_a_stall`]); `connect` logs a
    /// warning when it meets one.
    pub async fn server_version(&self) -> Result<EtcdVersion> {
        let mut client = self.inner.client.clone();
        let status = call("read the etcd version", self.inner.timeout, client.status()).await?;
        EtcdVersion::parse(status.version()).ok_or_else(|| {
            Error::codec(
                format!("etcd reported an unreadable version {:?}", status.version()),
                None,
            )
        })
    }

    /// One timed round trip (a linearizable read, so a cluster without a
    /// leader reports unhealthy).
    pub async fn ping(&self) -> ComponentHealth {
        let span = tracing::debug_span!("coord.etcd.health");
        async {
            let start = Instant::now();
            let mut kv = self.inner.client.kv_client();
            let probe = kv.get(
                format!("{}health", self.inner.prefix),
                Some(GetOptions::new().with_count_only()),
            );
            match call("health check", self.inner.timeout, probe).await {
                Ok(_) => ComponentHealth::healthy("etcd", start.elapsed()),
                Err(e) => {
                    tracing::debug!(error = %e, "etcd is unhealthy");
                    ComponentHealth::unhealthy("etcd", e.to_string())
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Records that `owner` holds `key` on `lease` (of TTL bucket `bucket`).
    pub(crate) fn hold(&self, key: &str, owner: &str, bucket: u64, lease: i64) {
        let held = Held {
            owner: owner.to_owned(),
            bucket,
            lease,
        };
        holds(&self.inner.holds).insert(key.to_owned(), held);
    }

    /// The TTL bucket of the lease `owner`'s lock on `key` was granted with.
    pub(crate) fn held_bucket(&self, key: &str, owner: &str) -> Option<u64> {
        self.held(key, owner).map(|h| h.bucket)
    }

    /// `owner`'s hold of `key`, if this client has it.
    pub(crate) fn held(&self, key: &str, owner: &str) -> Option<Held> {
        holds(&self.inner.holds)
            .get(key)
            .filter(|h| h.owner == owner)
            .cloned()
    }

    pub(crate) fn forget_all(&self) {
        holds(&self.inner.holds).clear();
    }

    pub(crate) fn forget(&self, key: &str, owner: Option<&str>) {
        let mut holds = holds(&self.inner.holds);
        if owner.is_none_or(|owner| holds.get(key).is_some_and(|h| h.owner == owner)) {
            holds.remove(key);
        }
    }
}

/// The keys of one lock. Holder keys are `prefix + owner`; `prefix` ends in
/// NUL, so the range `[prefix, end)` (`end` = the prefix with its NUL
/// replaced by `\x01`) holds exactly the keys that start with it.
#[derive(Debug, Clone)]
pub(crate) struct LockKeys {
    pub(crate) prefix: String,
    pub(crate) end: String,
}

impl LockKeys {
    pub(crate) fn new(namespace: &str, name: &str) -> LockKeys {
        debug_assert!(!name.contains('\0'), "lock names are validated by core");
        LockKeys {
            prefix: format!("{namespace}lock/{name}\0"),
            end: format!("{namespace}lock/{name}\u{1}"),
        }
    }

    /// The key `owner` holds the lock with.
    pub(crate) fn holder(&self, owner: &LockOwner) -> String {
        let mut key = String::with_capacity(self.prefix.len() + owner.as_str().len());
        key.push_str(&self.prefix);
        key.push_str(owner.as_str());
        key
    }
}

async fn connect(config: EtcdConfig, settings: &Settings) -> Result<EtcdBackend> {
    let timeout = settings.request_timeout;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.connect_timeout)
        .with_timeout(timeout)
        // etcd answers pings on idle connections with GOAWAY, so only
        // while streams (watches, keep-alives) are open.
        .with_keep_alive(Duration::from_secs(10), timeout)
        .with_keep_alive_while_idle(false);
    if let Some((user, password)) = &config.credentials {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    #[cfg(feature = "tls")]
    if config.tls {
        options = options.with_tls(etcd_client::TlsOptions::new().with_enabled_roots());
    }
    let endpoints = config.endpoints();
    let unavailable = |e: Error| match e {
        Error::Unavailable { source, .. } => Error::unavailable(
            format!(
                "cannot reach etcd at {}: check that etcd is running and reachable",
                endpoints.join(", ")
            ),
            source,
        ),
        Error::Timeout(_) => Error::unavailable(
            format!(
                "no answer from etcd at {} within {:?}: check that etcd is running and reachable",
                endpoints.join(", "),
                settings.connect_timeout
            ),
            None,
        ),
        other => other,
    };
    // One deadline for the whole connection: the connect and the first
    // request (Client::connect opens connections lazily).
    let wait = settings.connect_timeout.max(Duration::from_millis(1));
    let until = tokio::time::Instant::now() + wait;
    let left = || until.saturating_duration_since(tokio::time::Instant::now());
    let prefix = match settings.namespace.trim_end_matches('/') {
        "" => String::new(),
        ns => format!("{ns}/"),
    };
    let probe_timeout = settings.request_timeout.min(Duration::from_secs(1));
    let members = Arc::new(Members::new(
        endpoints.clone(),
        options.clone(),
        format!("{prefix}health"),
        probe_timeout,
    ));
    let attempt = async {
        // With several members, connect to those that answer (a member
        // down or hung must not fail or stall the connect).
        // A cluster electing a leader (its leader just died) answers no
        // linearizable read for a moment: probe again until the deadline.
        let mut connect_to = endpoints.clone();
        if members.is_list() {
            loop {
                let alive = members.probe_all(probe_timeout.min(left() / 2)).await;
                if alive.iter().any(|a| *a) {
                    connect_to = members.urls_of(&alive);
                    members.set_in_balancer(&alive);
                    break;
                }
                if left() < Duration::from_millis(300) {
                    members.set_in_balancer(&vec![true; endpoints.len()]);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let client = call(
            "connect to etcd",
            left(),
            Client::connect(connect_to, Some(options)),
        )
        .await
        .map_err(unavailable)?;
        let mut kv = client.kv_client();
        loop {
            let probe = kv.get(
                format!("{prefix}health"),
                Some(GetOptions::new().with_count_only()),
            );
            match deadline("reach etcd", left(), probe)
                .await
                .map_err(unavailable)?
            {
                Ok(_) => return Ok(client),
                Err(e) => {
                    // Nothing listens there: say so now, as for Redis.
                    let refused = !members.is_list() && is_refused(&e);
                    let e = map("reach etcd", e);
                    // A leader election passes; anything else is an answer.
                    if refused || !e.is_retryable() || left() < Duration::from_millis(200) {
                        return Err(unavailable(e));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    let client = match attempt.await {
        Ok(client) => client,
        Err(e) => return Err(explain_connect_error(e, &config, left()).await),
    };
    if members.is_list() {
        Members::watch(&members, client.clone());
    }
    tracing::debug!("connected to etcd");
    warn_of_known_server_faults(client.clone(), timeout);
    let mut caps = Capabilities::new("etcd");
    caps.linearizable = true;
    caps.fencing = true;
    caps.fair_ordering = true;
    caps.native_ttl = true;
    caps.watch = true;
    caps.min_ttl = Duration::from_secs(MIN_LEASE_SECS);
    caps.distributed = true;
    Ok(EtcdBackend {
        inner: Arc::new(Inner {
            leases: LeasePool::new(client.lease_client(), timeout),
            registry_leases: LeasePool::new(client.lease_client(), timeout),
            cache_leases: crate::cache::leases::CacheLeases::new(client.lease_client(), timeout),
            client,
            _members: members,
            config,
            prefix,
            timeout,
            holds: Mutex::new(HashMap::new()),
            caps,
        }),
    })
}

/// Makes a failed connection's error say what answers at the first
/// endpoint when that is clearly not etcd (a Redis server, another
/// protocol), within what is `left` of the connect timeout.
async fn explain_connect_error(e: Error, config: &EtcdConfig, left: Duration) -> Error {
    use coord_core::probe::{Peer, probe};
    let Some(host) = config.hosts.first() else {
        return e;
    };
    if config.tls || left.is_zero() {
        return e;
    }
    let peer = probe(host, left.min(Duration::from_secs(2))).await;
    match peer {
        // Another server answered: trying again cannot help.
        Peer::Redis | Peer::RedisNeedsAuth | Peer::Other(_) | Peer::Http(_) => Error::backend(
            "etcd",
            format!(
                "etcd at {host} {}: this does not look like an etcd server; check the URL's \
                 host and port (etcd listens on 2379 by default, Redis on 6379)",
                peer.describe()
            ),
            false,
            Some(Box::new(e) as _),
        ),
        _ => e,
    }
}

/// A hold of this client: its owner, the TTL bucket of its lease, and that
/// lease (a hold lost with its lease revokes that lease, never a newer one
/// of the same bucket that other holds are on).
#[derive(Debug, Clone)]
pub(crate) struct Held {
    owner: String,
    pub(crate) bucket: u64,
    pub(crate) lease: i64,
}

fn holds(m: &Mutex<HashMap<String, Held>>) -> MutexGuard<'_, HashMap<String, Held>> {
    // Every update is a single insert or remove, so a panicked holder leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("config", &self.inner.config)
            .field("prefix", &self.inner.prefix)
            .field("leases", &self.inner.leases)
            .finish_non_exhaustive()
    }
}

/// Asks the server's version in the background (a connect is not delayed)
/// and warns, once per process, when that version has a fault that changes
/// what locks promise ([`EtcdVersion::revokes_leases_after_a_stall`]).
fn warn_of_known_server_faults(mut client: Client, timeout: Duration) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let Ok(status) = call("read the etcd version", timeout, client.status()).await else {
            return;
        };
        match EtcdVersion::parse(status.version()) {
            Some(v) if v.revokes_leases_after_a_stall() => {
                if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!(version = %v, "etcd version with a known lease fault (warned before)");
                } else {
                    tracing::warn!("{}", stall_revocation_warning(v));
                }
            }
            Some(v) => tracing::debug!(version = %v, "etcd version"),
            None => tracing::debug!(version = status.version(), "unreadable etcd version"),
        }
    });
}
