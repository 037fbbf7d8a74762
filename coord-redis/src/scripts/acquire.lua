-- acquire.lua: one attempt to take a lease lock, handing out a fencing token.
--
-- KEYS[1]  the lock key  `{ns}:lock:{name}`        value = owner, expires after the TTL;
--                                                   a trailing NUL byte marks "someone waits"
-- KEYS[2]  the fence key `{ns}:lock:{name}:fence`  value = last token handed out, no TTL
-- ARGV[1]  the owner (`client_id:owner`, never contains a NUL byte)
-- ARGV[2]  the TTL in milliseconds (integer >= 1)
--
-- Returns one of (integers, not tables: a table reply costs the server noticeably more):
--   token >= 1     granted. When ARGV[1] already holds the lock the lease is extended
--                  and the current token is returned again (idempotent re-grant).
--   -2 - pttl < 0  held by someone else; pttl = remaining lease in ms (-1: no expiry),
--                  so -1 means "held, no expiry" and -252 "held for 250 ms more".
--                  The holder's value is marked (trailing NUL) so its release wakes waiters.
--   raw (string)   the fence key holds something that is not a token (corrupted);
--                  nothing was changed.
-- A lock or fence key of another type is a WRONGTYPE error reply, with nothing changed.
--
-- The token is the fence counter, INCR'd on every grant, with the server clock as its
-- floor: when the fence is missing (first use, a restart without persistence, eviction)
-- it is seeded with the server TIME in microseconds, and every 16th token is raised to
-- TIME if the clock is ahead. A key is granted at most once per microsecond (every grant
-- is a script of its own), so the counter never overtakes the clock: a reseeded fence is
-- above every token handed out before, and after a restore from an older snapshot at most
-- 15 grants get tokens that are not above those handed out before the crash.
--
-- Server work limits throughput, so the free path is two calls: SET NX GET (which also
-- returns the holder on the busy path) and INCR. Every call replies with an integer or a
-- string: TIME, whose reply is a table, is paid only on the 16th grant.

-- Tokens stay below 2^53, exact in a Lua number.
local MAX_TOKEN = 9007199254740992

local holder = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if not holder then
  -- The lock is ours now.
  local token = redis.pcall('INCR', KEYS[2])
  if type(token) ~= 'number' then
    -- Not an integer (an error table): give the lock back, report the value.
    redis.call('DEL', KEYS[1])
    if string.find(token.err or '', 'WRONGTYPE', 1, true) then
      return token
    end
    return redis.call('GET', KEYS[2]) or ''
  end
  if token < 1 or token >= MAX_TOKEN then
    redis.call('DECR', KEYS[2])
    redis.call('DEL', KEYS[1])
    return redis.call('GET', KEYS[2])
  end
  if token == 1 or token % 16 == 0 then
    local time = redis.call('TIME')
    local now = time[1] * 1000000 + time[2]
    if now > token then
      token = now
      redis.call('SET', KEYS[2], token)
    end
  end
  return token
end

if holder == ARGV[1] or holder == ARGV[1] .. '\0' then
  -- Already ours (a retry after a lost reply): same token, fresh lease.
  local raw = redis.call('GET', KEYS[2])
  local token = tonumber(raw)
  if not token or token < 1 or token >= MAX_TOKEN or token ~= math.floor(token) then
    return raw or ''
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return token
end

if string.byte(holder, -1) ~= 0 then
  redis.call('APPEND', KEYS[1], '\0')
end
return -2 - redis.call('PTTL', KEYS[1])
