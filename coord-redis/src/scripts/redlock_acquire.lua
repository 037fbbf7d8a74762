-- redlock_acquire.lua: one server's part of a Redlock acquisition: acquire.lua's attempt,
-- made only when this server process is the one the client checked and has left its
-- quarantine (sent after lease_acquire.lua, which defines `acquire`).
--
-- KEYS[1]  the boot record `{ns}:redlock:boot` ("<run_id> <start_us>", see redlock_boot.lua)
-- KEYS[2]  the lock key  `{ns}:lock:{name}`
-- KEYS[3]  the fence key `{ns}:lock:{name}:fence`
-- ARGV[1]  the quarantine in milliseconds (integer >= 0)
-- ARGV[2]  the run id the client last checked on this server
-- ARGV[3]  the owner, ARGV[4] the TTL in milliseconds, as in acquire.lua
--
-- Returns `acquire`'s reply (see lease_acquire.lua), or, with nothing changed, an error:
--   UNCHECKED ...     no boot record, or one of another run id: the server restarted (or
--                     was never checked) since the client's check; check it again
--   QUARANTINED <ms>  the process started less than the quarantine ago; <ms> are left
-- The check runs in the same script as the grant, so every request that reaches a
-- restarted process is refused, whatever the client's connection did meanwhile.
local record = redis.call('GET', KEYS[1])
local run_id, start
if record then
  run_id, start = string.match(record, '^(%x+) (%d+)$')
end
if not run_id or run_id ~= ARGV[2] then
  return redis.error_reply('UNCHECKED this server has no boot record of run ' .. ARGV[2] ..
    ': it restarted or was not checked')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local left = tonumber(start) + tonumber(ARGV[1]) * 1000 - now
if left > 0 then
  return redis.error_reply('QUARANTINED ' .. string.format('%.0f', math.ceil(left / 1000)))
end
return acquire(KEYS[2], KEYS[3], ARGV[3], ARGV[4])
