-- latest.lua: the latest version of one config key and its record, read together.
--
-- KEYS[1]  the namespace's latest versions  `{ns}:cfg:{app/env}:latest`  (hash key -> n)
-- KEYS[2]  the key's versions               `{ns}:cfg:{app/env}:v:{key}` (hash n -> record)
-- ARGV[1]  the full key
--
-- Replies {n, record}, or nil when the key has no version (or its latest record is gone).
-- Cost: two HGETs.

local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then
  return false
end
local record = redis.call('HGET', KEYS[2], v)
if not record then
  return false
end
return { v, record }
