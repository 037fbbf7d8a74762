//! Which members of an endpoint list are alive: `etcd://a,b,c` keeps working
//! with a member down, hung or killed mid-run.
//!
//! etcd-client balances requests over every endpoint it was given, and a
//! request routed to a dead member fails (`tcp connect error`) instead of
//! going to another; a hung member listed first stalls the connect. So the
//! backend probes every member on its own (one linearizable read each, in
//! parallel, bounded), connects the balanced client to the live ones only,
//! and keeps probing in the background, removing members that stop
//! answering from the balancer and adding back those that return. A single
//! endpoint is used as given, without probes.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use futures::future::join_all;

/// How often the members are probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The members of one client's endpoint list and which are in its balancer.
pub(crate) struct Members {
    urls: Vec<String>,
    options: ConnectOptions,
    /// The key a probe reads (count only).
    probe_key: String,
    probe_timeout: Duration,
    state: Mutex<State>,
}

struct State {
    /// One single-endpoint client per member, for probes (made on first use).
    probes: Vec<Option<Client>>,
    /// Whether each member is in the balanced client.
    in_balancer: Vec<bool>,
}

impl Members {
    pub(crate) fn new(
        urls: Vec<String>,
        options: ConnectOptions,
        probe_key: String,
        probe_timeout: Duration,
    ) -> Self {
        let n = urls.len();
        Members {
            urls,
            options,
            probe_key,
            probe_timeout,
            state: Mutex::new(State {
                probes: vec![None; n],
                in_balancer: vec![false; n],
            }),
        }
    }

    /// Whether there is more than one member to choose from.
    pub(crate) fn is_list(&self) -> bool {
        self.urls.len() > 1
    }

    /// Probes every member at once, each within `timeout`; `true` for the
    /// ones that answered a linearizable read.
    pub(crate) async fn probe_all(&self, timeout: Duration) -> Vec<bool> {
        join_all((0..self.urls.len()).map(|i| self.probe(i, timeout))).await
    }

    async fn probe(&self, i: usize, timeout: Duration) -> bool {
        let attempt = async {
            let cached = self.state().probes[i].clone();
            let client = match cached {
                Some(c) => c,
                None => {
                    let c = Client::connect([&self.urls[i]], Some(self.options.clone()))
                        .await
                        .ok()?;
                    self.state().probes[i] = Some(c.clone());
                    c
                }
            };
            let mut kv = client.kv_client();
            kv.get(
                self.probe_key.clone(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .ok()
        };
        matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(_)))
    }

    /// The URLs of the members in `alive`.
    pub(crate) fn urls_of(&self, alive: &[bool]) -> Vec<String> {
        self.urls
            .iter()
            .zip(alive)
            .filter(|(_, a)| **a)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Records that the balanced client was built with the members in `alive`.
    pub(crate) fn set_in_balancer(&self, alive: &[bool]) {
        self.state().in_balancer = alive.to_vec();
    }

    /// Probes every member and brings the balancer up to date: members that
    /// stopped answering are removed (never the last one), members that
    /// answer again are added.
    async fn refresh(&self, client: &Client) {
        let alive = self.probe_all(self.probe_timeout).await;
        let in_balancer = self.state().in_balancer.clone();
        let mut count = in_balancer.iter().filter(|b| **b).count();
        for (i, url) in self.urls.iter().enumerate() {
            if alive[i] && !in_balancer[i] && client.add_endpoint(url).await.is_ok() {
                tracing::info!(endpoint = %url, "etcd member answers again; using it");
                self.state().in_balancer[i] = true;
                count += 1;
            } else if !alive[i]
                && in_balancer[i]
                && count > 1
                && client.remove_endpoint(url).await.is_ok()
            {
                tracing::warn!(endpoint = %url, "etcd member does not answer; not using it until it does");
                self.state().in_balancer[i] = false;
                count -= 1;
            }
        }
    }

    /// Keeps the balancer up to date in the background while `members`
    /// lives (the backend holds it).
    pub(crate) fn watch(members: &Arc<Members>, client: Client) {
        let weak: Weak<Members> = Arc::downgrade(members);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(members) = weak.upgrade() else {
                    return;
                };
                members.refresh(&client).await;
            }
        });
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
