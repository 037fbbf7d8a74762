-- release.lua: deletes a lock, only for its owner, and wakes waiters.
--
-- KEYS[1]  the lock key `{ns}:lock:{name}`
-- ARGV[1]  the owner (`client_id:owner`)
--
-- Publishes an empty message on the channel KEYS[1] .. ':released'
-- (`{ns}:lock:{name}:released`) after deleting.
-- Returns 1 when ARGV[1] held the lock (now deleted), else 0 (nothing changed).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1] .. ':released', '')
  return 1
end
return 0
