-- Registers (or replaces) an instance. After reap.lua.
-- KEYS: see reap.lua. ARGV[2] id, ARGV[3] stored record, ARGV[4] owner,
-- ARGV[5] TTL in milliseconds.
-- Returns the new revision.
local now = now_ms()
reap(now)
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[2])
local rev = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[1], rev .. '\0put\0' .. ARGV[3])
return rev
