-- release.lua: deletes a lock, only for its owner, and wakes waiters if any.
--
-- KEYS[1]  the lock key `{ns}:lock:{name}`; its value is the owner, with a trailing
--          NUL byte once a waiter has been refused (see acquire.lua)
-- ARGV[1]  the owner (`client_id:owner`)
--
-- When a waiter was refused while the lock was held, publishes an empty message on
-- the channel KEYS[1] .. ':released' (`{ns}:lock:{name}:released`) after deleting;
-- a lock nobody waited for is released without a PUBLISH.
-- Returns 1 when ARGV[1] held the lock (now deleted), else 0 (nothing changed).
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if holder == ARGV[1] .. '\0' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1] .. ':released', '')
  return 1
end
return 0
