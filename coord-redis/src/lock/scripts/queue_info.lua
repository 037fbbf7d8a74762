-- queue_info.lua: the entries of a queue, for `list` (after queue_head.lua and
-- queue_common.lua).
--
-- KEYS[1..6]  Q, E, M, T, S, F of the queue (see queue_head.lua)
-- ARGV        none
--
-- Purges the entries whose lease ended first (waking the waiters when any went), as
-- every queue operation does, so an expired entry is never listed.
-- Returns a flat array, four items per entry in queue order:
--   owner, mode (raw, or nil), token (raw, or nil when waiting),
--   remaining lease in ms (integer >= 0, or -1 when the entry has no lease)
-- queue.rs decodes the raw values (a corrupted one is a codec error). Or a
-- {'wrongtype', …} reply of queue_head.lua.

local failed = prepare()
if failed then
  return failed
end
purge()
local owners = redis.call('ZRANGE', Q, '0', '-1')
local reply = {}
if #owners > 0 then
  local modes = chunked('HMGET', M, owners)
  local tokens = chunked('HMGET', T, owners)
  local leases = chunked('ZMSCORE', E, owners)
  for i, owner in ipairs(owners) do
    local ends = tonumber(leases[i])
    reply[#reply + 1] = owner
    reply[#reply + 1] = modes[i]
    reply[#reply + 1] = tokens[i]
    reply[#reply + 1] = ends and math.max(ends - now_ms, 0) or -1
  end
end
finish()
return reply
