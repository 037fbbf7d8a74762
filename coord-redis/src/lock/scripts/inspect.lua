-- inspect.lua: the holder of a lease lock, read in one step (inspect and list).
--
-- KEYS[1]  the lock key  `{ns}:lock:{name}`        value = owner, plus a trailing NUL
--                                                   byte once a waiter was refused
-- KEYS[2]  the fence key `{ns}:lock:{name}:fence`  value = the holder's token (the last
--                                                   one handed out)
-- KEYS[3]  (elections only, optional) the value key `{ns}:lock:{name}:value`:
--          "<owner>\n<value>" (see proclaim.lua)
-- ARGV     none
--
-- Read-only. Returns nil when the lock is free, else {owner, fence, pttl}: the owner
-- without the NUL marker, the raw fence value (nil when absent; lock.rs decodes it, a
-- corrupted one is a codec error) and the remaining lease in ms (-1: no expiry), and
-- with KEYS[3] a fourth element: the value the holder proclaimed, when it did.
-- A key of another type is a WRONGTYPE error reply.
local holder = redis.call('GET', KEYS[1])
if not holder then
  return nil
end
if string.byte(holder, -1) == 0 then
  holder = string.sub(holder, 1, -2)
end
-- `or false`: a nil would end the array there (false is sent as a nil element).
local reply = { holder, redis.call('GET', KEYS[2]) or false, redis.call('PTTL', KEYS[1]) }
if KEYS[3] then
  local record = redis.call('GET', KEYS[3])
  if record and string.sub(record, 1, #holder + 1) == holder .. '\n' then
    reply[4] = string.sub(record, #holder + 2)
  end
end
return reply
