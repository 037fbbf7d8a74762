-- proclaim.lua: sets the value the holder of a lease lock proclaims (elections), only
-- for its holder, without a new grant.
--
-- KEYS[1]  the lock key  `{ns}:lock:{name}`; its value is the owner (plus a trailing NUL
--          byte once a waiter was refused)
-- KEYS[2]  the value key `{ns}:lock:{name}:value`: "<owner>\n<value>", no TTL
-- ARGV[1]  the owner (`client_id:owner`)
-- ARGV[2]  the value
--
-- Returns 1 when ARGV[1] holds the lock (the value is stored and observers are signalled
-- on the lock's channel `{ns}:lock:{name}:released`), else 0 (nothing changed).
-- inspect.lua shows a stored value only while its owner holds the lock.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or holder == ARGV[1] .. '\0' then
  redis.call('SET', KEYS[2], ARGV[1] .. '\n' .. ARGV[2])
  redis.call('PUBLISH', KEYS[1] .. ':released', '')
  return 1
end
return 0
