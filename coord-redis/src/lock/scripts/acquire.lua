-- acquire.lua: attempts to take lease locks (sent after lease_acquire.lua, which defines
-- `acquire` and documents its replies).
--
-- KEYS[1]  the lock key  `{ns}:lock:{name}`
-- KEYS[2]  the fence key `{ns}:lock:{name}:fence`
-- ARGV[1]  the owner (`client_id:owner`, never contains a NUL byte)
-- ARGV[2]  the TTL in milliseconds (integer >= 1)
-- A batch of N attempts (see batch.rs) repeats the pattern: KEYS[2i-1], KEYS[2i],
-- ARGV[2i-1], ARGV[2i] are the i-th attempt's.
--
-- Returns, for one attempt, `acquire`'s reply; for a batch, an array of the N replies,
-- the pair {'error', message} standing in for an attempt that failed.
return dispatch(2, 2, function(k, a)
  return acquire(KEYS[k + 1], KEYS[k + 2], ARGV[a + 1], ARGV[a + 2])
end)
