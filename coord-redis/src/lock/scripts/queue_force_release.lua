-- queue_force_release.lua: removes every granted entry of a queue, whoever holds it
-- (administration); the waiters stay, and are granted next with higher tokens (the
-- fence is not touched). Runs after queue_head.lua and
-- queue_common.lua.
--
-- KEYS[1..6]  Q, E, M, T, S, F of the queue (see queue_head.lua)
-- ARGV        none
--
-- Purges the entries whose lease ended first. When any entry went, grants the waiters
-- it lets in and announces them on their clients' channels (see queue_head.lua). Returns how many granted entries were removed (expired ones, purged,
-- are not counted), or a {'wrongtype', …} reply of queue_head.lua.

local bad_type = check_queue_types(true)
if bad_type then
  return { 'wrongtype', bad_type }
end
-- A compact entry is a granted one, and nobody waits behind it: it goes, even one
-- that does not decode (this is how an administrator clears one).
if redis.call('DEL', S) == 1 then
  return 1
end
purge()
local removed = remove(redis.call('HKEYS', T))
finish()
return removed
