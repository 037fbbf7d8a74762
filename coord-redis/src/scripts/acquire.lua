-- acquire.lua: one attempt to take a lease lock, handing out a fencing token.
--
-- KEYS[1]  the lock key  `{ns}:lock:{name}`        value = owner, expires after the TTL
-- KEYS[2]  the fence key `{ns}:lock:{name}:fence`  value = last token handed out, no TTL
-- ARGV[1]  the owner (`client_id:owner`)
-- ARGV[2]  the TTL in milliseconds (integer >= 1)
--
-- Returns one of (integers, not tables: a table reply costs the server noticeably more):
--   token >= 0     granted. When ARGV[1] already holds the lock the lease is extended
--                  and the current token is returned again (idempotent re-grant).
--   -2 - pttl < 0  held by someone else; pttl = remaining lease in ms (-1: no expiry),
--                  so -1 means "held, no expiry" and -252 "held for 250 ms more".
--   raw (string)   the fence key holds something that is not a token (corrupted);
--                  nothing was changed.
-- A fence key of another type is a WRONGTYPE error reply, again with nothing changed.
--
-- A new token is max(last + 1, server TIME in microseconds), like a hybrid logical
-- clock: tokens keep increasing even when a server without persistence restarts
-- and forgets the fence key, or restarts from an older snapshot of it.
--
-- Server work is what limits throughput, so the free path is three calls: the lock
-- is taken first (SET NX), then the server clock is read and the fence is read and
-- advanced in one SET GET (Redis >= 6.2). Writes in a script are not rolled back by
-- a later error, so a bad fence value is undone by hand (lock deleted, old value put
-- back) before returning.

-- Tokens are integers below 2^53 (exact in a Lua number, and written by Redis's
-- %.17g conversion of a Lua number without an exponent).
local function token_of(raw)
  local n = tonumber(raw)
  if n and n >= 0 and n == math.floor(n) and n < 9007199254740992 then
    return n
  end
  return nil
end

if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] then
    return -2 - redis.call('PTTL', KEYS[1])
  end
  local raw = redis.call('GET', KEYS[2])
  local current = raw and token_of(raw)
  if not current then
    return raw or ''
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return current
end

-- The lock is ours now.
local now = redis.call('TIME')
local token = now[1] * 1000000 + now[2]
local raw = redis.pcall('SET', KEYS[2], token, 'GET')
if raw then
  if type(raw) == 'table' then
    -- WRONGTYPE: the SET did not happen.
    redis.call('DEL', KEYS[1])
    return raw
  end
  local last = token_of(raw)
  if not last then
    redis.call('SET', KEYS[2], raw)
    redis.call('DEL', KEYS[1])
    return raw
  end
  if token <= last then
    token = last + 1
    redis.call('SET', KEYS[2], token)
  end
end
return token
