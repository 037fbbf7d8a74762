-- lease_acquire.lua: the function `acquire(lock, fence, owner, ttl)`, one attempt to take a
-- lease lock, handing out a fencing token, and `dispatch`, which runs a script's attempt
-- once or over a batch. Not a script on its own: acquire.lua and redlock_acquire.lua are
-- each sent with this file in front of them.
--
-- lock     the lock key  `{ns}:lock:{name}`        value = owner, expires after the TTL;
--                                                   a trailing NUL byte marks "someone waits"
-- fence    the fence key `{ns}:lock:{name}:fence`  value = last token handed out, no TTL
-- owner    the owner (`client_id:owner`, never contains a NUL byte)
-- ttl      the TTL in milliseconds (integer >= 1)
--
-- A grant of an election's lock (name `election/…`) is published on the lock's channel
-- `{ns}:lock:{name}:released`, so that observers see every new leader at once.
--
-- Returns one of (integers: a table reply costs the server more):
--   token >= 1     granted. When `owner` already holds the lock the lease is extended
--                  and the current token is returned again (idempotent re-grant).
--   -2 - pttl < 0  held by someone else; pttl = remaining lease in ms (-1: no expiry),
--                  so -1 means "held, no expiry" and -252 "held for 250 ms more".
--                  The holder's value is marked (trailing NUL) so its release wakes waiters.
--   raw (string)   the fence key holds something that is not a token (corrupted);
--                  nothing was changed.
-- A lock or fence key of another type is a WRONGTYPE error reply, with nothing changed.
--
-- The token is a hybrid logical clock in microsecond units: the fence counter, INCR'd on
-- every grant, and raised to the server clock (read as the new lease's PEXPIRETIME minus
-- its TTL: an integer reply, where TIME's table reply costs the server noticeably more)
-- whenever it has fallen more than SLACK behind it. The counter never runs more than
-- 1 ms ahead of the clock, as a key is granted fewer than 1000 times a millisecond (at
-- most once per script call: a granted key stays held for the rest of the call). So a
-- fence that was lost (restart without persistence, eviction) or comes back older (restore
-- of an older RDB/AOF, failover to a lagging replica) is raised above every token handed
-- out before, provided the outage (last grant before it to first grant after) lasted more
-- than SLACK + 1 ms and the server clocks agree to within the outage. A clock that steps
-- back never lowers a token.
--
-- Server work limits throughput, so the free path is three integer-reply calls: SET NX GET
-- (which also returns the holder on the busy path), INCR and PEXPIRETIME (once per script
-- call, so once per batch), plus an INCRBY at most once per SLACK per lock.

-- Tokens stay below 2^53, exact in a Lua number.
local MAX_TOKEN = 9007199254740992
-- 10 ms, in token units (microseconds).
local SLACK = 10000

-- The server clock in token units, read once per script call (a batch's grants share it).
local now = nil

-- Set by redlock_acquire.lua: the clock is read in steps of STEP microseconds, and a
-- fence is raised to the step whenever it is behind it. Independent servers that read
-- their clocks a few microseconds apart then hand out the same token unless a step
-- boundary falls between their readings, so Redlock seldom has to raise the fences of
-- the servers below the highest token (a round trip). nil: the plain rule above.
local STEP = nil

local function acquire(lock, fence, owner, ttl)
  local holder = redis.call('SET', lock, owner, 'NX', 'PX', ttl, 'GET')
  if not holder then
    -- The lock is ours now.
    local token = redis.pcall('INCR', fence)
    if type(token) ~= 'number' then
      -- Not an integer (an error table): give the lock back, report the value.
      redis.call('DEL', lock)
      if string.find(token.err or '', 'WRONGTYPE', 1, true) then
        return token
      end
      return redis.call('GET', fence) or ''
    end
    if token < 1 or token >= MAX_TOKEN then
      redis.call('DECR', fence)
      redis.call('DEL', lock)
      return redis.call('GET', fence)
    end
    if not now then
      now = (redis.call('PEXPIRETIME', lock) - ttl) * 1000
    end
    if STEP then
      local step = now - now % STEP
      if step > token then
        redis.call('INCRBY', fence, step - token)
        token = step
      end
    elseif now - token > SLACK then
      redis.call('INCRBY', fence, now - token)
      token = now
    end
    if string.find(lock, ':lock:{election/', 1, true) then
      redis.call('PUBLISH', lock .. ':released', '')
    end
    return token
  end

  if holder == owner or holder == owner .. '\0' then
    -- Already ours (a retry after a lost reply): same token, fresh lease.
    local raw = redis.call('GET', fence)
    local token = raw and string.match(raw, '^%d+$') and tonumber(raw)
    if not token or token < 1 or token >= MAX_TOKEN then
      return raw or ''
    end
    redis.call('PEXPIRE', lock, ttl)
    return token
  end

  if string.byte(holder, -1) ~= 0 then
    redis.call('APPEND', lock, '\0')
  end
  return -2 - redis.call('PTTL', lock)
end

-- Runs `attempt(k, a)` for each call of the script: one call when KEYS holds `keys` keys,
-- else a batch of #KEYS / keys calls (see batch.rs), the i-th with its keys from
-- KEYS[k + 1] and its `args` arguments from ARGV[a + 1] (k = keys * (i - 1),
-- a = args * (i - 1)). Returns the one reply, or for a batch an array of the replies in
-- order, a failed call's error as the pair {'error', message}: an error element would
-- make clients fail the whole array.
local function dispatch(keys, args, attempt)
  if #KEYS == keys then
    return attempt(0, 0)
  end
  local replies = {}
  for i = 1, #KEYS / keys do
    local ok, reply = pcall(attempt, keys * (i - 1), args * (i - 1))
    if not ok or (type(reply) == 'table' and reply.err) then
      reply = { 'error', type(reply) == 'table' and reply.err or tostring(reply) }
    end
    replies[i] = reply
  end
  return replies
end
