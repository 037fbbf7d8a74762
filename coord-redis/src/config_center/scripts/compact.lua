-- compact.lua: drops all but the newest `keep` versions of one config key.
--
-- KEYS[1]  the key's versions  `{ns}:cfg:{app/env}:v:{key}` (hash n -> record)
-- ARGV[1]  how many versions to keep (integer >= 1)
--
-- Replies the number of versions dropped. The latest-version counter is not touched, so
-- numbering continues after the newest version.
-- Cost: one HKEYS, a sort of the version numbers, one HDEL per 1000 dropped.

local keep = tonumber(ARGV[1])
local versions = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  -- Only the numbered versions: the `head` field (the latest) always stays.
  if tonumber(field) then
    versions[#versions + 1] = field
  end
end
local n = #versions
if n <= keep then
  return 0
end
table.sort(versions, function(a, b)
  return tonumber(a) < tonumber(b)
end)
local drop = n - keep
local batch = {}
for i = 1, drop do
  batch[#batch + 1] = versions[i]
  if #batch == 1000 or i == drop then
    redis.call('HDEL', KEYS[1], unpack(batch))
    batch = {}
  end
end
return drop
