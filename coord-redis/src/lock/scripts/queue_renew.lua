-- queue_renew.lua: extends the lease of a granted queue entry (after queue_head.lua,
-- queue_renew_fast.lua and queue_common.lua).
--
-- KEYS[1..6]  Q, E, M, T, S, F of the queue (see queue_head.lua)
-- ARGV[1]     the owner (`client_id:owner`)
-- ARGV[2]     the new lease in milliseconds (integer >= 1)
--
-- Purges the entries whose lease ended first (waking the waiters when any went).
-- Returns 1 when the owner's entry is queued and granted (its lease now ends ARGV[2] ms
-- from now), 0 when it is absent or waiting (its lease unchanged), or a {'wrongtype', …}
-- reply of queue_head.lua.

local failed = prepare()
if failed then
  return failed
end
purge()
local renewed = 0
if redis.call('ZSCORE', Q, ARGV[1]) and redis.call('HEXISTS', T, ARGV[1]) == 1 then
  redis.call('ZADD', E, int(now_ms + tonumber(ARGV[2])), ARGV[1])
  renewed = 1
end
finish()
return renewed
