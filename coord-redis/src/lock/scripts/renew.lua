-- renew.lua: extends a lease, only for its owner.
--
-- KEYS[1]  the lock key `{ns}:lock:{name}`; its value is the owner, with a trailing
--          NUL byte once a waiter has been refused (see acquire.lua)
-- ARGV[1]  the owner (`client_id:owner`)
-- ARGV[2]  the new TTL in milliseconds (integer >= 1)
--
-- Returns 1 when ARGV[1] holds the lock (lease now ARGV[2] ms), else 0 (nothing changed).
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or holder == ARGV[1] .. '\0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
