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
if #KEYS == 2 then
  return acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
end
-- A batch: one reply per lock, in order. A failed attempt's error becomes the pair
-- {'error', message}: an error element would make clients fail the whole array.
local replies = {}
for i = 1, #KEYS / 2 do
  local ok, reply = pcall(acquire, KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i - 1], ARGV[2 * i])
  if not ok or (type(reply) == 'table' and reply.err) then
    reply = { 'error', type(reply) == 'table' and reply.err or tostring(reply) }
  end
  replies[i] = reply
end
return replies
