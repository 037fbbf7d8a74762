-- acquire.lua: one attempt to take a lease lock, handing out a fencing token.
--
-- KEYS[1]  the lock key  `{ns}:lock:{name}`        value = owner, expires after the TTL
-- KEYS[2]  the fence key `{ns}:lock:{name}:fence`  value = last token handed out, no TTL
-- ARGV[1]  the owner (`client_id:owner`)
-- ARGV[2]  the TTL in milliseconds (integer >= 1)
--
-- Returns one of:
--   {1, token}   granted. When ARGV[1] already holds the lock the lease is extended
--                and the current token is returned again (idempotent re-grant).
--   {0, pttl}    held by someone else; pttl = remaining lease in ms (-1: no expiry).
--   {-1, value}  the fence key holds something that is not a token (corrupted);
--                nothing was changed.
--
-- A new token is max(last + 1, server TIME in microseconds), like a hybrid logical
-- clock: tokens keep increasing even when a server without persistence restarts
-- and forgets the fence key.
local holder = redis.call('GET', KEYS[1])
if holder then
  if holder ~= ARGV[1] then
    return {0, redis.call('PTTL', KEYS[1])}
  end
  local raw = redis.call('GET', KEYS[2])
  local current = raw and tonumber(raw)
  if not current then
    return {-1, raw or ''}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, current}
end

local raw = redis.call('GET', KEYS[2])
local last = 0
if raw then
  last = tonumber(raw)
  -- Tokens are integers below 2^53 (exact in a Lua number).
  if not last or last < 0 or last ~= math.floor(last) or last >= 9007199254740992 then
    return {-1, raw}
  end
end
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
if token <= last then
  token = last + 1
end
redis.call('SET', KEYS[2], string.format('%d', token))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, token}
