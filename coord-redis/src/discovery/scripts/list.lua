-- Lists a service's live instances. After reap.lua.
-- KEYS: see reap.lua. No more ARGV.
-- Returns { revision, { record, ... } }.
reap(now_ms())
local rev = redis.call('GET', KEYS[4]) or '0'
return { rev, redis.call('HVALS', KEYS[1]) }
