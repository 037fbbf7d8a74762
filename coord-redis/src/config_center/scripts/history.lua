-- history.lua: up to `limit` versions of one config key, newest first.
--
-- KEYS[1]  the namespace's latest versions  `{ns}:cfg:{app/env}:latest`  (hash key -> n)
-- KEYS[2]  the key's versions               `{ns}:cfg:{app/env}:v:{key}` (hash n -> record)
-- ARGV[1]  the full key
-- ARGV[2]  the limit (integer >= 0)
--
-- Replies {n, record, n - 1, record, …}: from the latest version down while the versions
-- are present (compaction drops the oldest, so the present ones are contiguous).
-- Cost: one HGET per version returned, plus two.

local limit = tonumber(ARGV[2])
local v = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
local out = {}
local count = 0
while v >= 1 and count < limit do
  local record = redis.call('HGET', KEYS[2], v)
  if not record then
    break
  end
  out[#out + 1] = tostring(v)
  out[#out + 1] = record
  count = count + 1
  v = v - 1
end
return out
