//! [`RegistryBackend`] for [`RedisBackend`]: one Lua script per operation
//! over a service's four keys, change notifications over pub/sub carrying
//! the service's revision.
//!
//! Keys of service `s` under namespace `ns` (one hash tag, so a cluster
//! keeps them in one slot and the scripts may touch them together):
//! `ns:discovery:{s}:instances` (hash id → stored record),
//! `ns:discovery:{s}:owners` (hash id → owner), `ns:discovery:{s}:expiry`
//! (sorted set id → expiry in server milliseconds) and
//! `ns:discovery:{s}:revision`; the set `ns:discovery:services` names every
//! service ever registered. Every change bumps the revision and publishes
//! `rev\0put\0record` or `rev\0del\0id` on `ns:discovery:{s}:changes`, so a
//! watcher that misses a message sees the jump and lists again.
//!
//! Expiry is by the server's clock. Every script first reaps the service's
//! expired instances (publishing their removal), and watchers run the
//! reaper every [`SWEEP_EVERY`], so a dead process's instance disappears
//! within its TTL plus that period even when nobody writes.

use std::sync::LazyLock;
use std::time::Duration;

use coord_core::discovery::{
    RegistryBackend, RegistryChange, RegistryEvent, RegistryEvents, RegistryListing, RenewOutcome,
    ServiceInstance, decode_record, encode_record,
};
use coord_core::{ComponentHealth, Error, Result, async_trait};
use futures::StreamExt;
use redis::{Script, Value};

use crate::backend::RedisBackend;
use crate::error::map_err;
use crate::lock::{evalsha, ttl_ms};

/// How often a watch runs the reaper of its service.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

struct RegistryScripts {
    register: Script,
    renew: Script,
    deregister: Script,
    list: Script,
    sweep: Script,
}

static SCRIPTS: LazyLock<RegistryScripts> = LazyLock::new(|| {
    let with_reaper =
        |body: &str| Script::new(&format!("{}\n{body}", include_str!("scripts/reap.lua")));
    RegistryScripts {
        register: with_reaper(include_str!("scripts/register.lua")),
        renew: with_reaper(include_str!("scripts/renew.lua")),
        deregister: with_reaper(include_str!("scripts/deregister.lua")),
        list: with_reaper(include_str!("scripts/list.lua")),
        sweep: with_reaper(include_str!("scripts/sweep.lua")),
    }
});

/// The keys of one service.
struct ServiceKeys {
    instances: String,
    owners: String,
    expiry: String,
    revision: String,
    channel: String,
}

impl RedisBackend {
    fn service_keys(&self, service: &str) -> ServiceKeys {
        let base = format!("{}:discovery:{{{service}}}", self.namespace());
        ServiceKeys {
            instances: format!("{base}:instances"),
            owners: format!("{base}:owners"),
            expiry: format!("{base}:expiry"),
            revision: format!("{base}:revision"),
            channel: format!("{base}:changes"),
        }
    }

    fn services_key(&self) -> String {
        format!("{}:discovery:services", self.namespace())
    }

    /// An `EVALSHA` of a registry script with the service's keys and channel.
    fn registry_cmd(&self, script: &Script, keys: &ServiceKeys) -> redis::Cmd {
        let mut cmd = evalsha(script, 4);
        cmd.arg(&keys.instances)
            .arg(&keys.owners)
            .arg(&keys.expiry)
            .arg(&keys.revision)
            .arg(&keys.channel);
        cmd
    }

    /// Reaps `service`'s expired instances; returns its revision and live count.
    async fn sweep(&self, service: &str) -> Result<(u64, u64)> {
        let keys = self.service_keys(service);
        let cmd = self.registry_cmd(&SCRIPTS.sweep, &keys);
        let (rev, live): (String, u64) = self.eval(&SCRIPTS.sweep, &cmd).await?;
        Ok((parse_revision(&rev)?, live))
    }
}

fn parse_revision(s: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| Error::codec(format!("registry revision {s:?} is not a number"), None))
}

/// Parses a change message: `rev\0put\0record` or `rev\0del\0id`.
fn parse_change(payload: &[u8], channel: &str) -> Option<(u64, RegistryChange)> {
    let mut parts = payload.splitn(3, |b| *b == 0);
    let rev = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let op = parts.next()?;
    let rest = parts.next()?;
    let change = match op {
        b"put" => RegistryChange::Put(decode_record(rest, channel).ok()?.1),
        b"del" => RegistryChange::Removed {
            id: String::from_utf8(rest.to_vec()).ok()?,
        },
        _ => return None,
    };
    Some((rev, change))
}

#[async_trait]
impl RegistryBackend for RedisBackend {
    fn registry_backend_name(&self) -> &'static str {
        "redis"
    }

    async fn register(&self, instance: &ServiceInstance, owner: &str, ttl: Duration) -> Result<()> {
        let keys = self.service_keys(&instance.service);
        let record = encode_record(instance, owner)?;
        let mut cmd = self.registry_cmd(&SCRIPTS.register, &keys);
        cmd.arg(&instance.id)
            .arg(record)
            .arg(owner)
            .arg(ttl_ms(ttl));
        // The service's name joins the index at the same time (one round
        // trip of wall time): `services()` lists only names with live
        // instances, so the order of the two does not matter.
        let mut conn = self.inner.conn.clone();
        let services_key = self.services_key();
        let mut sadd = redis::cmd("SADD");
        sadd.arg(&services_key).arg(&instance.service);
        let indexed = async {
            sadd.query_async::<Value>(&mut conn)
                .await
                .map_err(|e| map_err(e, &self.inner.addr))
        };
        let (registered, indexed) =
            futures::join!(self.eval::<u64>(&SCRIPTS.register, &cmd), indexed);
        registered?;
        indexed?;
        Ok(())
    }

    async fn renew_instance(
        &self,
        service: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<RenewOutcome> {
        let keys = self.service_keys(service);
        let mut cmd = self.registry_cmd(&SCRIPTS.renew, &keys);
        cmd.arg(id).arg(owner).arg(ttl_ms(ttl));
        Ok(match self.eval::<i64>(&SCRIPTS.renew, &cmd).await? {
            1 => RenewOutcome::Renewed,
            2 => RenewOutcome::Replaced,
            _ => RenewOutcome::Missing,
        })
    }

    async fn deregister(&self, service: &str, id: &str, owner: &str) -> Result<bool> {
        let keys = self.service_keys(service);
        let mut cmd = self.registry_cmd(&SCRIPTS.deregister, &keys);
        cmd.arg(id).arg(owner);
        Ok(self.eval::<i64>(&SCRIPTS.deregister, &cmd).await? == 1)
    }

    async fn services(&self) -> Result<Vec<String>> {
        let mut conn = self.inner.conn.clone();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.services_key())
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, &self.inner.addr))?;
        names.sort();
        let live = futures::future::try_join_all(names.iter().map(|s| self.sweep(s))).await?;
        Ok(names
            .into_iter()
            .zip(live)
            .filter(|(_, (_, count))| *count > 0)
            .map(|(name, _)| name)
            .collect())
    }

    async fn list_instances(&self, service: &str) -> Result<RegistryListing> {
        let keys = self.service_keys(service);
        let cmd = self.registry_cmd(&SCRIPTS.list, &keys);
        let (rev, records): (String, Vec<Vec<u8>>) = self.eval(&SCRIPTS.list, &cmd).await?;
        let mut instances = Vec::with_capacity(records.len());
        for record in records {
            match decode_record(&record, &keys.instances) {
                Ok((_, instance)) => instances.push(instance),
                // One corrupted entry must not hide the service's other
                // instances: skipped, and said.
                Err(e) => tracing::warn!(error = %e, "skipped a corrupted registry entry"),
            }
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(RegistryListing {
            instances,
            revision: parse_revision(&rev)?,
        })
    }

    async fn watch_instances(&self, service: &str, revision: u64) -> Result<RegistryEvents> {
        let keys = self.service_keys(service);
        let messages = self.inner.pubsub.messages(keys.channel.clone()).await?;
        // Subscribed: anything after this read arrives as a message.
        let (current, _) = self.sweep(service).await?;
        let first_gap = current > revision;
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let state = WatchState {
            messages: Box::pin(messages),
            backend: self.clone(),
            service: service.to_owned(),
            channel: keys.channel,
            after: revision,
            gap: first_gap,
            tick,
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            if std::mem::take(&mut st.gap) {
                return Some((RegistryEvent::Gap, st));
            }
            loop {
                tokio::select! {
                    message = st.messages.next() => match message {
                        None => return None,
                        // Missed messages (a slow reader).
                        Some(None) => return Some((RegistryEvent::Gap, st)),
                        Some(Some(payload)) => {
                            let Some((rev, change)) = parse_change(&payload, &st.channel) else {
                                tracing::warn!(channel = %st.channel, "unreadable registry change message; listing again");
                                return Some((RegistryEvent::Gap, st));
                            };
                            // A jump is a missed message; a step back is a
                            // server that lost its data (a restart without
                            // persistence, a failover to a lagging replica).
                            // Either way: list again.
                            if rev != st.after + 1 {
                                return Some((RegistryEvent::Gap, st));
                            }
                            st.after = rev;
                            return Some((RegistryEvent::Changed { revision: rev, change }, st));
                        }
                    },
                    _ = st.tick.tick() => {
                        // The reaper's removals arrive as messages; a
                        // failure here shows up in the next list.
                        if let Err(e) = st.backend.sweep(&st.service).await {
                            tracing::debug!(error = %e, service = %st.service, "registry sweep failed");
                        }
                    }
                }
            }
        });
        Ok(RegistryEvents::new(stream))
    }

    async fn registry_health(&self) -> ComponentHealth {
        self.ping().await
    }
}

/// The change messages of one channel (`None` where some were missed).
type Messages = std::pin::Pin<Box<dyn futures::Stream<Item = Option<std::sync::Arc<[u8]>>> + Send>>;

struct WatchState {
    messages: Messages,
    backend: RedisBackend,
    service: String,
    channel: String,
    after: u64,
    gap: bool,
    tick: tokio::time::Interval,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_messages_parse() {
        let i = ServiceInstance::new("s", "a", "127.0.0.1:1");
        let mut put = b"7\0put\0".to_vec();
        put.extend(encode_record(&i, "o").unwrap());
        assert_eq!(parse_change(&put, "c"), Some((7, RegistryChange::Put(i))));
        assert_eq!(
            parse_change(b"8\0del\0a", "c"),
            Some((8, RegistryChange::Removed { id: "a".into() }))
        );
        assert_eq!(parse_change(b"x\0del\0a", "c"), None);
        assert_eq!(parse_change(b"9\0put\0{", "c"), None);
    }
}
