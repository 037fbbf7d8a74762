-- append.lua: appends one version to each of N keys of one config namespace, all or
-- nothing, and announces each new version.
--
-- KEYS[1]      the namespace's latest versions  `{ns}:cfg:{app/env}:latest`  (hash key -> n)
-- KEYS[2]      the namespace's frozen scopes    `{ns}:cfg:{app/env}:frozen`  (set)
-- KEYS[2 + i]  write i's versions               `{ns}:cfg:{app/env}:v:{key}` (hash n -> record)
-- ARGV[1]      the namespace `app/env`
-- ARGV[2]      the namespace's change channel   `{ns}:cfg:{app/env}:changes`
-- ARGV[4i - 1 .. 4i + 2], for write i:
--              the full key; the expected latest version ('' = any, '0' = none yet);
--              'r' when the key is one of the config center's own (`app/env/.coord/…`,
--              never frozen), else ''; the record.
--
-- Every write is checked (freeze, expected version, the stored types) before anything
-- is written, so a refusal changes nothing. Replies:
--   {'ok', n1, n2, …}                      the new version of each write, in order
--   {'frozen', 'namespace' | 'key', key}   the namespace or the key is frozen
--   {'conflict', key, expected, actual}    the key's latest version is `actual`
--   {'corrupt', redis key, what}           a key holds something this script did not
--                                          write (another type, a non-integer latest)
-- Each new version is published as `key\0n` on the channel.
--
-- Each write also sets the versions hash's `head` field to `n\nrecord` (the latest
-- version and its record), so that reading the latest is one plain HGET.
--
-- Cost: per write one HGET, at most one SISMEMBER and one TYPE to check, then one
-- HINCRBY, one HSET (the numbered version and the head: one copy of the record) and
-- one PUBLISH.

local ns_frozen = redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1
local function type_ok(key, wanted)
  local t = redis.call('TYPE', key).ok
  return t == 'none' or t == wanted
end
if not type_ok(KEYS[1], 'hash') then
  return { 'corrupt', KEYS[1], 'not a hash' }
end
if not type_ok(KEYS[2], 'set') then
  return { 'corrupt', KEYS[2], 'not a set' }
end

local n = #KEYS - 2
for i = 1, n do
  local key = ARGV[4 * i - 1]
  local expected = ARGV[4 * i]
  if ARGV[4 * i + 1] ~= 'r' then
    if ns_frozen then
      return { 'frozen', 'namespace', key }
    end
    if redis.call('SISMEMBER', KEYS[2], key) == 1 then
      return { 'frozen', 'key', key }
    end
  end
  local actual = redis.call('HGET', KEYS[1], key) or '0'
  if not string.match(actual, '^%d+$') then
    return { 'corrupt', KEYS[1], 'the latest version of ' .. key .. ' is ' .. actual }
  end
  if expected ~= '' and expected ~= actual then
    return { 'conflict', key, expected, actual }
  end
  if not type_ok(KEYS[2 + i], 'hash') then
    return { 'corrupt', KEYS[2 + i], 'not a hash' }
  end
end

local versions = { 'ok' }
for i = 1, n do
  local v = redis.call('HINCRBY', KEYS[1], ARGV[4 * i - 1], 1)
  redis.call('HSET', KEYS[2 + i], v, ARGV[4 * i + 2], 'head', v .. '\n' .. ARGV[4 * i + 2])
  versions[i + 1] = v
end
for i = 1, n do
  redis.call('PUBLISH', ARGV[2], ARGV[4 * i - 1] .. '\0' .. versions[i + 1])
end
return versions
