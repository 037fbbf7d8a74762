-- Extends an owner's registration. After reap.lua.
-- KEYS: see reap.lua. ARGV[2] id, ARGV[3] owner, ARGV[4] TTL in milliseconds.
-- Returns 1 renewed, 0 missing (expired or removed), 2 held by another owner.
local now = now_ms()
reap(now)
local owner = redis.call('HGET', KEYS[2], ARGV[2])
if not owner then
  return 0
end
if owner ~= ARGV[3] then
  return 2
end
redis.call('ZADD', KEYS[3], 'XX', now + tonumber(ARGV[4]), ARGV[2])
return 1
