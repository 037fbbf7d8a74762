-- raise_fence.lua: raises a lock's fence to at least a given token (Redlock).
--
-- KEYS[1]  the fence key `{ns}:lock:{name}:fence`  value = last token handed out, no TTL
-- ARGV[1]  T, a token (decimal integer from 1 to 2^53 - 1): the highest token any
--          server of a Redlock majority handed out for this grant
--
-- Sets the fence to max(fence, T), so the next grant by this server hands out a token
-- above T (acquire.lua INCRs it). A missing fence (a server that lost its data) is set
-- to T. A fence already at or above T is left alone: tokens never go back.
--
-- Returns the fence after the call (an integer >= T), or, when the fence key holds
-- something that is not a token (corrupted), that raw value as a string, with nothing
-- changed. A fence key of another type is a WRONGTYPE error reply.
local t = tonumber(ARGV[1])
local raw = redis.call('GET', KEYS[1])
if raw then
  local current = string.match(raw, '^%d+$') and tonumber(raw)
  if not current then
    return raw
  end
  if current >= t then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return t
