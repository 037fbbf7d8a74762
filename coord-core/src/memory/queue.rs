//! Queued locks (fair locks, semaphores, read-write locks) in process memory.

use foldhash::HashMap;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::lock::{
    FencingToken, HoldMode, HolderInfo, LockGrant, LockInfo, QueueOutcome, StoredKind,
};

/// One name's queue: entries in arrival order.
#[derive(Debug, Default)]
pub(super) struct Queue {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    owner: String,
    mode: HoldMode,
    expires: Instant,
    token: Option<u64>,
}

/// Every queue of a store, their fences and their listeners.
#[derive(Debug, Default)]
pub(super) struct Queues {
    queues: HashMap<String, Queue>,
    fences: HashMap<String, u64>,
    listeners: HashMap<String, broadcast::Sender<()>>,
}

impl Queues {
    /// Drops expired entries of `name`, waking waiters when any went.
    fn purge(&mut self, name: &str, now: Instant) {
        let Some(q) = self.queues.get_mut(name) else {
            return;
        };
        let before = q.entries.len();
        q.entries.retain(|e| e.expires > now);
        if q.entries.len() != before {
            self.changed(name);
        }
    }

    fn changed(&mut self, name: &str) {
        if self.queues.get(name).is_some_and(|q| q.entries.is_empty()) {
            self.queues.remove(name);
        }
        if let Some(tx) = self.listeners.get(name)
            && tx.send(()).is_err()
        {
            self.listeners.remove(name);
        }
    }

    pub(super) fn enqueue(
        &mut self,
        name: &str,
        owner: &str,
        mode: HoldMode,
        ttl: Duration,
        now: Instant,
    ) -> QueueOutcome {
        self.purge(name, now);
        let q = self.queues.entry(name.to_owned()).or_default();
        let pos = match q.entries.iter().position(|e| e.owner == owner) {
            Some(pos) => {
                q.entries[pos].expires = now + ttl;
                pos
            }
            None => {
                q.entries.push(Entry {
                    owner: owner.to_owned(),
                    mode,
                    expires: now + ttl,
                    token: None,
                });
                q.entries.len() - 1
            }
        };
        let (ahead, rest) = q.entries.split_at_mut(pos);
        let entry = &mut rest[0];
        if entry.token.is_none() && entry.mode.admits(ahead.iter().map(|e| &e.mode)) {
            let fence = self.fences.entry(name.to_owned()).or_insert(0);
            *fence += 1;
            entry.token = Some(*fence);
        }
        match entry.token {
            Some(token) => QueueOutcome::Granted(LockGrant {
                token: FencingToken::new(token),
                ttl,
            }),
            None => QueueOutcome::Queued {
                ahead: pos as u32,
                retry_after: ahead
                    .iter()
                    .map(|e| e.expires.saturating_duration_since(now))
                    .min(),
                fence: None,
            },
        }
    }

    pub(super) fn renew(
        &mut self,
        name: &str,
        owner: &str,
        ttl: Duration,
        now: Instant,
    ) -> Result<()> {
        self.purge(name, now);
        match self
            .queues
            .get_mut(name)
            .and_then(|q| q.entries.iter_mut().find(|e| e.owner == owner))
        {
            Some(e) if e.token.is_some() => {
                e.expires = now + ttl;
                Ok(())
            }
            _ => Err(not_held(name, owner)),
        }
    }

    pub(super) fn dequeue(&mut self, name: &str, owner: &str, now: Instant) -> Result<()> {
        self.purge(name, now);
        let q = self
            .queues
            .get_mut(name)
            .ok_or_else(|| not_held(name, owner))?;
        let pos = q
            .entries
            .iter()
            .position(|e| e.owner == owner)
            .ok_or_else(|| not_held(name, owner))?;
        q.entries.remove(pos);
        self.changed(name);
        Ok(())
    }

    pub(super) fn force_release(&mut self, name: &str, now: Instant) -> usize {
        self.purge(name, now);
        let Some(q) = self.queues.get_mut(name) else {
            return 0;
        };
        let before = q.entries.len();
        q.entries.retain(|e| e.token.is_none());
        let removed = before - q.entries.len();
        if removed > 0 {
            self.changed(name);
        }
        removed
    }

    pub(super) fn subscribe(&mut self, name: &str) -> broadcast::Receiver<()> {
        self.listeners
            .entry(name.to_owned())
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }

    pub(super) fn list(&mut self, prefix: &str, now: Instant) -> Vec<LockInfo> {
        let names: Vec<String> = self
            .queues
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for name in names {
            self.purge(&name, now);
            let Some(q) = self.queues.get(&name) else {
                continue;
            };
            let info = |e: &Entry| HolderInfo {
                owner: e.owner.clone(),
                token: e.token.map(FencingToken::new),
                mode: e.mode,
                ttl_remaining: Some(e.expires.saturating_duration_since(now)),
                value: None,
            };
            out.push(LockInfo {
                name: name.clone(),
                kind: StoredKind::Queue,
                holders: q
                    .entries
                    .iter()
                    .filter(|e| e.token.is_some())
                    .map(info)
                    .collect(),
                waiters: q
                    .entries
                    .iter()
                    .filter(|e| e.token.is_none())
                    .map(info)
                    .collect(),
            });
        }
        out
    }
}

fn not_held(name: &str, owner: &str) -> Error {
    Error::NotHeld(format!("queued lock {name:?} has no entry of {owner}"))
}
