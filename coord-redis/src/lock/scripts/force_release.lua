-- force_release.lua: deletes a lock whoever holds it (administration) and wakes waiters.
--
-- KEYS[1]  the lock key `{ns}:lock:{name}`
-- ARGV     none
--
-- Publishes an empty message on the channel KEYS[1] .. ':released' when a lock
-- was deleted. The fence key is kept, so the next grant's token is still higher.
-- Returns 1 when a lock existed (now deleted), else 0.
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', KEYS[1] .. ':released', '')
  return 1
end
return 0
