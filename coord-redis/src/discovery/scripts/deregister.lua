-- Removes an owner's registration. After reap.lua.
-- KEYS: see reap.lua. ARGV[2] id, ARGV[3] owner.
-- Returns 1 removed, 0 not there or held by another owner.
reap(now_ms())
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] then
  return 0
end
remove(ARGV[2])
return 1
