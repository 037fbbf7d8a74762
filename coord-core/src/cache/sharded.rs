//! `ShardedCacheBackend`: one cache over several independent servers, each
//! key on one of them by rendezvous hashing.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::try_join_all;

use crate::cache::backend::{CacheBackend, CacheEvents};
use crate::error::{Error, Result};
use crate::health::{ComponentHealth, HealthStatus};

/// A [`CacheBackend`] over several independent backends (several Redis
/// servers, say): each key lives on one shard, chosen by rendezvous
/// (highest random weight) hashing of the key and the shard's name. Adding
/// a shard to `n` moves about `1/(n+1)` of the keys (those the new shard
/// wins), and removing one moves only its own keys.
///
/// Multi-key calls are split by shard and sent to all of them at once.
/// Invalidations are watched on every shard; when one shard's stream ends
/// the merged stream ends too, so listeners resync.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::Arc;
/// use coord_core::cache::{CacheBackend, CacheBuilder, ShardedCacheBackend};
/// use coord_core::memory::MemoryBackend;
///
/// let shards: Vec<(String, Arc<dyn CacheBackend>)> = (0..3)
///     .map(|i| (format!("shard-{i}"), Arc::new(MemoryBackend::new()) as Arc<dyn CacheBackend>))
///     .collect();
/// let sharded = Arc::new(ShardedCacheBackend::new(shards)?);
/// let cache = CacheBuilder::new(sharded, "users").build::<String>()?;
/// cache.set("42", "Ada".into()).await?;
/// assert_eq!(cache.get("42").await?.as_deref().map(String::as_str), Some("Ada"));
/// # Ok::<_, coord_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct ShardedCacheBackend {
    shards: Vec<Shard>,
}

#[derive(Debug)]
struct Shard {
    name: String,
    seed: u64,
    backend: Arc<dyn CacheBackend>,
}

fn hash_of(seed: u64, key: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(seed).hash_one(key)
}

impl ShardedCacheBackend {
    /// A backend over `shards`, each named (the name, not the position,
    /// decides which keys it holds: keep names stable, e.g. `host:port`).
    /// Fails with [`Error::InvalidArgument`] when empty or when two names
    /// repeat.
    pub fn new(shards: Vec<(String, Arc<dyn CacheBackend>)>) -> Result<Self> {
        if shards.is_empty() {
            return Err(Error::invalid("a sharded cache needs at least one shard"));
        }
        let mut names: Vec<&str> = shards.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                "two shards of a sharded cache have the same name",
            ));
        }
        Ok(ShardedCacheBackend {
            shards: shards
                .into_iter()
                .map(|(name, backend)| Shard {
                    seed: hash_of(0x636f_6f72_6421, &name),
                    name,
                    backend,
                })
                .collect(),
        })
    }

    /// The index of the shard that holds `key` of `cache`.
    pub fn shard_of(&self, cache: &str, key: &str) -> usize {
        let mut best = (0, 0u64);
        for (i, shard) in self.shards.iter().enumerate() {
            let weight = hash_of(shard.seed ^ hash_of(1, cache), key);
            if i == 0 || weight > best.1 {
                best = (i, weight);
            }
        }
        best.0
    }

    /// The shards' names, in order.
    pub fn shard_names(&self) -> Vec<&str> {
        self.shards.iter().map(|s| s.name.as_str()).collect()
    }

    /// `items` grouped by shard: (shard, positions in `items`).
    fn group<T>(
        &self,
        cache: &str,
        items: &[T],
        key: impl Fn(&T) -> &str,
    ) -> Vec<(usize, Vec<usize>)> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.shards.len()];
        for (pos, item) in items.iter().enumerate() {
            groups[self.shard_of(cache, key(item))].push(pos);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect()
    }
}

#[async_trait]
impl CacheBackend for ShardedCacheBackend {
    fn cache_backend_name(&self) -> &'static str {
        self.shards[0].backend.cache_backend_name()
    }

    fn max_value_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.backend.max_value_bytes())
            .min()
            .unwrap_or(0)
    }

    async fn get_many(&self, cache: &str, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let groups = self.group(cache, keys, |k| k);
        let calls = groups.iter().map(|(shard, positions)| {
            let shard_keys: Vec<&str> = positions.iter().map(|p| keys[*p]).collect();
            async move {
                self.shards[*shard]
                    .backend
                    .get_many(cache, &shard_keys)
                    .await
            }
        });
        let replies = try_join_all(calls).await?;
        let mut out = vec![None; keys.len()];
        for ((_, positions), values) in groups.iter().zip(replies) {
            for (pos, value) in positions.iter().zip(values) {
                out[*pos] = value;
            }
        }
        Ok(out)
    }

    async fn set_many(
        &self,
        cache: &str,
        entries: &[(&str, Bytes)],
        ttl: Duration,
        origin: &str,
    ) -> Result<()> {
        let groups = self.group(cache, entries, |(k, _)| k);
        let calls = groups.iter().map(|(shard, positions)| {
            let part: Vec<(&str, Bytes)> = positions.iter().map(|p| entries[*p].clone()).collect();
            async move {
                self.shards[*shard]
                    .backend
                    .set_many(cache, &part, ttl, origin)
                    .await
            }
        });
        try_join_all(calls).await.map(|_| ())
    }

    async fn delete_many(&self, cache: &str, keys: &[&str], origin: &str) -> Result<usize> {
        let groups = self.group(cache, keys, |k| k);
        let calls = groups.iter().map(|(shard, positions)| {
            let part: Vec<&str> = positions.iter().map(|p| keys[*p]).collect();
            async move {
                self.shards[*shard]
                    .backend
                    .delete_many(cache, &part, origin)
                    .await
            }
        });
        Ok(try_join_all(calls).await?.into_iter().sum())
    }

    async fn fill(
        &self,
        cache: &str,
        key: &str,
        value: Bytes,
        ttl: Duration,
        origin: &str,
    ) -> Result<bool> {
        self.shards[self.shard_of(cache, key)]
            .backend
            .fill(cache, key, value, ttl, origin)
            .await
    }

    async fn exists(&self, cache: &str, key: &str) -> Result<bool> {
        self.shards[self.shard_of(cache, key)]
            .backend
            .exists(cache, key)
            .await
    }

    async fn watch(&self, cache: &str) -> Result<CacheEvents> {
        let streams = try_join_all(self.shards.iter().map(|s| s.backend.watch(cache))).await?;
        // Each shard's events, then one `None` when it ends: the first end
        // ends the merged stream (a shard's invalidations may be lost).
        let tagged = streams.into_iter().map(|events| {
            futures::stream::unfold(Some(events), |state| async move {
                let mut events = state?;
                match events.next().await {
                    Some(event) => Some((Some(event), Some(events))),
                    None => Some((None, None)),
                }
            })
            .boxed()
        });
        let merged = futures::stream::select_all(tagged)
            .take_while(|e| futures::future::ready(e.is_some()))
            .filter_map(futures::future::ready);
        Ok(CacheEvents::new(merged))
    }

    async fn cache_health(&self) -> ComponentHealth {
        let reports =
            futures::future::join_all(self.shards.iter().map(|s| s.backend.cache_health())).await;
        let worst = reports
            .iter()
            .map(|r| r.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        let latency = reports.iter().filter_map(|r| r.latency).max();
        let problems: Vec<String> = reports
            .iter()
            .zip(&self.shards)
            .filter(|(r, _)| r.status != HealthStatus::Healthy)
            .map(|(r, s)| {
                format!(
                    "shard {}: {}",
                    s.name,
                    r.detail.as_deref().unwrap_or("unhealthy")
                )
            })
            .collect();
        ComponentHealth {
            name: format!("sharded {}", self.cache_backend_name()),
            // One shard down leaves the others serving: degraded, not down.
            status: if worst == HealthStatus::Unhealthy && problems.len() < self.shards.len() {
                HealthStatus::Degraded
            } else {
                worst
            },
            latency,
            detail: (!problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBackend;

    fn shards(n: usize) -> Vec<(String, Arc<dyn CacheBackend>)> {
        (0..n)
            .map(|i| {
                let b: Arc<dyn CacheBackend> = Arc::new(MemoryBackend::new());
                (format!("10.0.0.{i}:6379"), b)
            })
            .collect()
    }

    /// Adding a fourth shard moves about a quarter of the keys, all of
    /// them to the new shard; removing it moves them back.
    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one_keys() {
        let three = ShardedCacheBackend::new(shards(3)).unwrap();
        let four = ShardedCacheBackend::new(shards(4)).unwrap();
        let keys: Vec<String> = (0..20_000).map(|i| format!("user:{i}")).collect();
        let mut moved = 0;
        let mut per_shard = [0usize; 4];
        for k in &keys {
            let (before, after) = (three.shard_of("c", k), four.shard_of("c", k));
            per_shard[after] += 1;
            if before != after {
                moved += 1;
                assert_eq!(after, 3, "a moved key goes to the new shard");
            }
        }
        let fraction = moved as f64 / keys.len() as f64;
        assert!(
            (0.22..=0.28).contains(&fraction),
            "moved {fraction:.3} of the keys"
        );
        for n in per_shard {
            let share = n as f64 / keys.len() as f64;
            assert!((0.22..=0.28).contains(&share), "a shard holds {share:.3}");
        }
    }

    #[test]
    fn empty_or_repeated_shards_are_refused() {
        assert!(ShardedCacheBackend::new(Vec::new()).is_err());
        let mut s = shards(2);
        s[1].0 = s[0].0.clone();
        assert!(ShardedCacheBackend::new(s).is_err());
    }
}
