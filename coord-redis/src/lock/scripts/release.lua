-- release.lua: deletes a lock, only for its owner, and wakes waiters if any.
--
-- KEYS[1]  the lock key `{ns}:lock:{name}`; its value is the owner, with a trailing
--          NUL byte once a waiter has been refused (see acquire.lua)
-- ARGV[1]  the owner (`client_id:owner`)
-- A batch of N releases (see batch.rs) repeats the pattern: KEYS[i] and ARGV[i] are the
-- i-th release's, and the reply is an array of the N replies below, the pair
-- {'error', message} standing in for a release that failed.
--
-- When a waiter was refused while the lock was held, publishes an empty message on
-- the channel KEYS[1] .. ':released' (`{ns}:lock:{name}:released`) after deleting;
-- a lock nobody waited for is released without a PUBLISH, except an election's
-- (name `election/…`), whose observers listen without marking the lock.
-- Returns, for one release, 1 when ARGV[1] held the lock (now deleted), else 0
-- (nothing changed).
local function release(lock, owner)
  local holder = redis.call('GET', lock)
  if holder == owner then
    redis.call('DEL', lock)
    if string.find(lock, ':lock:{election/', 1, true) then
      redis.call('PUBLISH', lock .. ':released', '')
    end
    return 1
  end
  if holder == owner .. '\0' then
    redis.call('DEL', lock)
    redis.call('PUBLISH', lock .. ':released', '')
    return 1
  end
  return 0
end

if #KEYS == 1 then
  return release(KEYS[1], ARGV[1])
end
-- A batch: one reply per lock, in order; a failed release's error as {'error', message}.
local replies = {}
for i = 1, #KEYS do
  local ok, reply = pcall(release, KEYS[i], ARGV[i])
  if not ok then
    reply = { 'error', type(reply) == 'table' and reply.err or tostring(reply) }
  end
  replies[i] = reply
end
return replies
