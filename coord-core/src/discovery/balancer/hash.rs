//! The stable hash of sticky keys and ring points.

use xxhash_rust::xxh3::xxh3_64;

/// Hashes a request's sticky key (a user id, a session id) for
/// [`Picker::pick`](super::Picker::pick).
///
/// The hash is XXH3 64-bit with seed 0, a published algorithm: the same
/// bytes hash to the same value in every process, on every platform and in
/// every version of this crate, so every client routes a key to the same
/// endpoint. Services written in other languages can reproduce it with any
/// XXH3 library.
///
/// ```
/// use coord_core::discovery::balancer::hash_key;
///
/// assert_eq!(hash_key(b"customer-42"), hash_key(b"customer-42"));
/// assert_ne!(hash_key(b"customer-42"), hash_key(b"customer-43"));
/// ```
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The ring points `0..count` of the instance `id`: point `k` is
/// [`hash_key`] of the id's bytes followed by `k` as 4 little-endian bytes.
///
/// (Not XXH3 of the id seeded with `k`: for inputs of up to 8 bytes XXH3
/// mixes the seed in linearly, and the points of short ids like `a-1` and
/// `a-2` collide.)
pub(super) fn ring_points(id: &str, count: u32) -> impl Iterator<Item = u64> {
    let mut input = Vec::with_capacity(id.len() + 4);
    input.extend_from_slice(id.as_bytes());
    (0..count).map(move |k| {
        input.truncate(id.len());
        input.extend_from_slice(&k.to_le_bytes());
        hash_key(&input)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_standard_xxh3() {
        // Published XXH3_64bits test vector of the empty input.
        assert_eq!(hash_key(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn ring_points_are_the_hash_of_id_and_replica() {
        let points: Vec<u64> = ring_points("a-1", 3).collect();
        assert_eq!(points[0], hash_key(b"a-1\0\0\0\0"));
        assert_eq!(points[2], hash_key(b"a-1\x02\0\0\0"));
    }

    #[test]
    fn short_ids_do_not_share_points() {
        let mut points: Vec<u64> = (0..100)
            .flat_map(|i| ring_points(&format!("a-{i}"), 160).collect::<Vec<_>>())
            .collect();
        points.sort_unstable();
        points.dedup();
        assert_eq!(points.len(), 100 * 160);
    }
}
