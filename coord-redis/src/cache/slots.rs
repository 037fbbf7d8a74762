//! Multi-key cache calls on a Redis Cluster: keys grouped by hash slot (the
//! redis crate's own [`Slot::for_key`], CRC16 of the key or of its
//! `{hash tag}`), and a connection that sends a pipeline to the master of
//! one given slot.
//!
//! A pipeline of one slot's writes and the cache's `PUBLISH` cannot go
//! through the cluster client's ordinary pipeline routing: that routes
//! `PUBLISH` by its channel as if it were a key, sees two slots and refuses
//! the pipeline ("crossed slots") before sending it. The server itself takes
//! `PUBLISH` (which has no key) inside any slot's `MULTI`/`EXEC`.

use std::collections::HashMap;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The positions of `keys` grouped by hash slot: one group per distinct
/// slot, in the order each slot first appears, each group's positions
/// ascending (so a group keeps the caller's order of its keys).
pub(super) fn group_by_slot<K: AsRef<[u8]>>(keys: &[K]) -> Vec<(Slot, Vec<usize>)> {
    let mut index: HashMap<Slot, usize> = HashMap::new();
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let slot = Slot::for_key(key);
        let g = *index.entry(slot).or_insert_with(|| {
            groups.push((slot, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    groups
}

/// A cluster connection whose pipelines all go to the master of one slot
/// (single commands keep the client's own routing).
pub(super) struct SlotConn {
    conn: ClusterConnection,
    route: Route,
}

impl SlotConn {
    /// Pipelines on `conn` go to the master serving `slot`.
    pub(super) fn new(conn: ClusterConnection, slot: Slot) -> SlotConn {
        SlotConn {
            conn,
            route: Route::with_slot(slot, SlotAddr::Master),
        }
    }
}

impl redis::aio::ConnectionLike for SlotConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let route = SingleNodeRoutingInfo::SpecificNode(self.route);
        Box::pin(
            self.conn
                .route_pipeline(pipeline.clone(), offset, count, route),
        )
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_hash_slots() {
        // The values `CLUSTER KEYSLOT` gives.
        assert_eq!(Some(Slot::for_key("foo")), Slot::new(12182));
        assert_eq!(Slot::for_key("ns:cache:c:{foo}:x"), Slot::for_key("foo"));
    }

    #[test]
    fn groups_follow_slots_and_keep_the_order() {
        let keys = ["a", "b", "{t}x", "a", "c", "{t}y"];
        let groups = group_by_slot(&keys);
        let mut seen: Vec<usize> = groups.iter().flat_map(|(_, g)| g.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
        for (slot, positions) in &groups {
            assert!(positions.windows(2).all(|w| w[0] < w[1]));
            assert!(positions.iter().all(|&i| Slot::for_key(keys[i]) == *slot));
        }
        // The same key, and keys sharing a hash tag, share a group.
        let group_of = |i: usize| groups.iter().position(|(_, g)| g.contains(&i));
        assert_eq!(group_of(0), group_of(3));
        assert_eq!(group_of(2), group_of(5));
        // One group per distinct slot.
        let distinct: std::collections::HashSet<_> = keys.iter().map(Slot::for_key).collect();
        assert_eq!(groups.len(), distinct.len());
    }
}
