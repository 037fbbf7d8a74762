-- list.lua: the latest version and record of each of N config keys of one namespace,
-- each pair read together (the caller found the keys with HKEYS and sends them in
-- chunks, so every key a script touches is declared).
--
-- KEYS[1]      the namespace's latest versions  `{ns}:cfg:{app/env}:latest`  (hash key -> n)
-- KEYS[1 + i]  key i's versions                 `{ns}:cfg:{app/env}:v:{key}` (hash n -> record)
-- ARGV[i]      key i, in full
--
-- Replies {n1, record1, n2, record2, …} in the order of the keys, with '0', '' for a key
-- that has no version (or whose latest record is gone).
-- Cost: two HGETs per key.

local out = {}
for i = 1, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local record = v and redis.call('HGET', KEYS[1 + i], v)
  if record then
    out[2 * i - 1] = v
    out[2 * i] = record
  else
    out[2 * i - 1] = '0'
    out[2 * i] = ''
  end
end
return out
