//! Leader election on a lease lock: the leader is the holder of the lock
//! `election/<name>`, its announced value is the lock's logical owner.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use coord_core::{LockClient, memory::MemoryBackend};
//!
//! let client = LockClient::new(Arc::new(MemoryBackend::new()));
//! let election = client.election("billing").build();
//! let leadership = election.campaign("node-1 http://10.0.0.1:8080").await?;
//! let leader = election.leader().await?.expect("someone leads");
//! assert_eq!(leader.value, "node-1 http://10.0.0.1:8080");
//! assert_eq!(leader.token, leadership.fencing_token());
//! tokio::select! {
//!     lost = leadership.lost() => eprintln!("no longer leader: {lost}"),
//!     _ = async { /* lead */ } => {}
//! }
//! leadership.resign().await?;
//! assert!(election.leader().await?.is_none());
//! # Ok::<_, coord_core::Error>(()) }).unwrap();
//! ```

use std::time::Duration;

use futures::stream::BoxStream;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::lock::backend::ReleaseEvents;
use crate::lock::client::LockClient;
use crate::lock::guard::LockGuard;
use crate::lock::handle::{Lock, RESUBSCRIBE_AFTER};
use crate::lock::types::{FencingToken, LockOwner};

/// The prefix of election locks' names.
pub const ELECTION_PREFIX: &str = "election/";

/// Options of an [`Election`]; start from [`LockClient::election`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ElectionBuilder {
    client: LockClient,
    name: String,
    ttl: Duration,
    poll_interval: Duration,
}

impl ElectionBuilder {
    pub(crate) fn new(client: LockClient, name: String) -> Self {
        ElectionBuilder {
            ttl: client.shared.defaults.ttl,
            poll_interval: Duration::from_secs(1),
            client,
            name,
        }
    }

    /// The leader's lease: a leader whose process dies is replaced within
    /// about this long (default: the client's lock TTL).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often [`Election::observe`] looks at the leader when no
    /// notification arrives (default 1 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The election.
    pub fn build(self) -> Election {
        Election {
            name_len: self.name.len(),
            lock_name: format!("{ELECTION_PREFIX}{}", self.name),
            client: self.client,
            ttl: self.ttl,
            poll_interval: self.poll_interval,
        }
    }
}

/// A leader election among the clients of one backend.
#[derive(Debug, Clone)]
pub struct Election {
    client: LockClient,
    /// The length of the election's own name (the end of `lock_name`).
    name_len: usize,
    lock_name: String,
    ttl: Duration,
    poll_interval: Duration,
}

/// Who leads, as [`Election::leader`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's client id.
    pub client_id: String,
    /// The value it announced in [`Election::campaign`].
    pub value: String,
    /// The fencing token of its term: higher for every later term.
    pub token: FencingToken,
    /// How long its lease still runs, when the backend can tell.
    pub ttl_remaining: Option<Duration>,
}

impl LeaderInfo {
    fn same_term(&self, other: &LeaderInfo) -> bool {
        self.client_id == other.client_id && self.value == other.value && self.token == other.token
    }
}

impl Election {
    /// The name of the lock behind the election (`election/<name>`).
    pub fn lock_name(&self) -> &str {
        &self.lock_name
    }

    /// The election's own name, as given to [`LockClient::election`].
    pub fn name(&self) -> &str {
        &self.lock_name[self.lock_name.len() - self.name_len..]
    }

    /// Checks the election's name and TTL by the rule of lock names.
    fn check(&self) -> Result<()> {
        crate::lock::types::validate_lock_request(self.name(), self.ttl).map_err(|e| match e {
            Error::InvalidArgument(m) => {
                Error::InvalidArgument(format!("election: {}", m.replacen("lock ", "", 1)))
            }
            other => other,
        })
    }

    /// The lock of one candidacy: its owner is `value#<random>`, so every
    /// campaign is a candidate of its own (a second campaign never returns
    /// the same term twice, and the cleanup of a failed one never ends a
    /// later term).
    fn lock(&self, value: &str) -> Lock {
        self.client
            .lock(self.lock_name.clone())
            .ttl(self.ttl)
            .owner(format!("{value}#{:016x}", fastrand::u64(..)))
            .wait_forever()
            .build()
    }

    /// Waits until this client leads with `value` (no NUL byte; it is shown
    /// to everyone by [`Election::leader`]). Every call is a candidate of its
    /// own, even with the same value.
    pub async fn campaign(&self, value: impl Into<String>) -> Result<Leadership> {
        let value = value.into();
        self.check()?;
        check_value(&value, "campaign")?;
        let guard = self.lock(&value).acquire().await?;
        Ok(Leadership { guard, value })
    }

    /// Becomes leader with `value` only if nobody leads now.
    pub async fn try_campaign(&self, value: impl Into<String>) -> Result<Option<Leadership>> {
        let value = value.into();
        self.check()?;
        check_value(&value, "campaign")?;
        let guard = self.lock(&value).try_acquire().await?;
        Ok(guard.map(|guard| Leadership { guard, value }))
    }

    /// The current leader, if any (one round trip).
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        self.check()?;
        let info = self.client.backend().inspect(&self.lock_name).await?;
        let Some(holder) = info.and_then(|i| i.holders.into_iter().next()) else {
            return Ok(None);
        };
        let owner = LockOwner::parse(&holder.owner)?;
        let token = holder.token.ok_or_else(|| {
            Error::codec(
                format!(
                    "election {:?}: the leader has no fencing token",
                    self.lock_name
                ),
                None,
            )
        })?;
        Ok(Some(LeaderInfo {
            client_id: owner.client_id().to_owned(),
            value: holder
                .value
                .clone()
                .unwrap_or_else(|| owner.logical().to_owned()),
            token,
            ttl_remaining: holder.ttl_remaining,
        }))
    }

    /// A stream of leadership changes: the current leader (or `None`) first,
    /// then every change of term, in order. Woken by the backend's change
    /// notifications ([`LockBackend::subscribe_changes`]: every grant and
    /// release of the election's lock), at the leader's lease end, and at the
    /// poll interval at the latest, so a term is seen even when it is
    /// shorter than the poll interval (a term shorter than one read of the
    /// leader may still be missed). A failed read is yielded as an error and
    /// the stream goes on. The stream is boxed: no pinning needed.
    ///
    /// Observing starts when the stream is first polled, not when it is
    /// made: to see every term from some point on (a test, a dashboard
    /// started before the candidates), await its first item, the current
    /// leader, before that point, as below.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use futures::StreamExt;
    /// # let client = coord_core::LockClient::new(std::sync::Arc::new(coord_core::memory::MemoryBackend::new()));
    /// let election = client.election("scheduler").build();
    /// let mut changes = election.observe();
    /// assert!(changes.next().await.unwrap()?.is_none()); // nobody leads yet
    /// let term = election.campaign("node-1").await?;
    /// assert_eq!(changes.next().await.unwrap()?.unwrap().value, "node-1");
    /// # term.resign().await?;
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    ///
    /// [`LockBackend::subscribe_changes`]: crate::LockBackend::subscribe_changes
    pub fn observe(&self) -> BoxStream<'static, Result<Option<LeaderInfo>>> {
        if let Err(e) = self.check() {
            return Box::pin(futures::stream::once(async move { Err(e) }));
        }
        struct State {
            election: Election,
            last: Option<Option<LeaderInfo>>,
            /// The notification channel, when listening.
            events: Option<ReleaseEvents>,
            /// When the channel was opened, or last failed to open.
            listened_at: Option<Instant>,
            wake: Option<Instant>,
        }
        let state = State {
            election: self.clone(),
            last: None,
            events: None,
            listened_at: None,
            wake: None,
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(wake) = s.wake.take() {
                    match s.events.as_mut() {
                        Some(events) => tokio::select! {
                            alive = events.next() => if !alive { s.events = None },
                            _ = tokio::time::sleep_until(wake) => {}
                        },
                        None => tokio::time::sleep_until(wake).await,
                    }
                }
                // (Re)subscribe, unless the channel failed or ended within
                // RESUBSCRIBE_AFTER: then poll until that has passed, so a
                // failing channel cannot make this loop spin.
                let may_listen = s
                    .listened_at
                    .is_none_or(|at| at.elapsed() >= RESUBSCRIBE_AFTER);
                if s.events.is_none() && may_listen {
                    s.listened_at = Some(Instant::now());
                    s.events = s
                        .election
                        .client
                        .backend()
                        .subscribe_changes(&s.election.lock_name)
                        .await
                        .ok();
                }
                let mut wake = Instant::now() + s.election.poll_interval;
                let now = match s.election.leader().await {
                    Ok(now) => now,
                    Err(e) => {
                        s.wake = Some(wake);
                        return Some((Err(e), s));
                    }
                };
                if let Some(left) = now.as_ref().and_then(|l| l.ttl_remaining) {
                    wake = wake.min(Instant::now() + left + Duration::from_millis(1));
                }
                s.wake = Some(wake);
                let changed = match (&s.last, &now) {
                    (None, _) => true,
                    (Some(Some(a)), Some(b)) => !a.same_term(b),
                    (Some(a), b) => a.is_some() != b.is_some(),
                };
                if changed {
                    s.last = Some(now.clone());
                    return Some((Ok(now), s));
                }
            }
        });
        Box::pin(stream)
    }
}

/// This client's term as leader. Watch [`Leadership::lost`]; pass
/// [`Leadership::fencing_token`] to what the leader writes.
#[derive(Debug)]
#[must_use = "dropping the leadership resigns it"]
pub struct Leadership {
    guard: LockGuard,
    value: String,
}

impl Leadership {
    /// The value announced for this term.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The term's fencing token.
    pub fn fencing_token(&self) -> FencingToken {
        self.guard.fencing_token()
    }

    /// Whether this client still leads (not lost, within its lease).
    pub fn is_leader(&self) -> bool {
        self.guard.is_held()
    }

    /// Resolves when leadership is lost, like [`LockGuard::lost`].
    pub async fn lost(&self) -> Error {
        self.guard.lost().await
    }

    /// Changes the value this leader announces, without a new election:
    /// same term, same fencing token; [`Election::leader`] shows the new
    /// value and observers see the change. [`Error::NotHeld`] when this
    /// client no longer leads. The value must not contain a NUL byte.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let client = coord_core::LockClient::new(std::sync::Arc::new(coord_core::memory::MemoryBackend::new()));
    /// let election = client.election("api").build();
    /// let mut term = election.campaign("node-1 starting").await?;
    /// term.proclaim("node-1 ready at 10.0.0.1:8080").await?;
    /// let leader = election.leader().await?.expect("a leader");
    /// assert_eq!(leader.value, "node-1 ready at 10.0.0.1:8080");
    /// assert_eq!(leader.token, term.fencing_token());
    /// # Ok::<_, coord_core::Error>(()) }).unwrap();
    /// ```
    pub async fn proclaim(&mut self, value: impl Into<String>) -> Result<()> {
        let value = value.into();
        check_value(&value, "proclaimed")?;
        let client = &self.guard.shared.client;
        let name = &self.guard.shared.name;
        let owner = &self.guard.shared.owner;
        client
            .call("proclaim", client.backend.proclaim(name, owner, &value))
            .await?;
        self.value = value;
        Ok(())
    }

    /// Steps down now, so another candidate is elected at once.
    pub async fn resign(self) -> Result<()> {
        self.guard.release().await
    }

    /// The guard of the lock behind the term.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }
}

/// A leader's value (`what`: campaign or proclaimed) carries no NUL byte:
/// it is stored in the lock's owner, where a NUL byte is a separator.
fn check_value(value: &str, what: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "election: a {what} value contains a NUL byte; use text without one"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::memory::MemoryBackend;
    use crate::{Error, LockClient};

    /// A value with a NUL byte is refused as the caller's value, not as
    /// the lock owner coord builds from it.
    #[tokio::test]
    async fn a_campaign_value_with_a_nul_byte_is_refused_by_name() {
        let client = LockClient::new(Arc::new(MemoryBackend::new()));
        let election = client.election("nul").build();
        let err = election.campaign("a\0b").await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("campaign value"), "{err}");
        let err = election.try_campaign("a\0b").await.unwrap_err();
        assert!(err.to_string().contains("campaign value"), "{err}");
        let mut term = election.campaign("ok").await.unwrap();
        let err = term.proclaim("x\0y").await.unwrap_err();
        assert!(err.to_string().contains("proclaimed value"), "{err}");
    }
}
