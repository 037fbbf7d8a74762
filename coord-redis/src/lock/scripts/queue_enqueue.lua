-- queue_enqueue.lua: one step of a queued acquisition (after queue_head.lua,
-- queue_enqueue_fast.lua and queue_common.lua).
--
-- KEYS[1..6]  Q, E, M, T, S, F of the queue (see queue_head.lua)
-- ARGV[1]     the owner (`client_id:owner`, never contains a NUL byte)
-- ARGV[2]     its hold mode as HoldMode::encode writes it (`x` or `s<limit>`); used
--             only when the owner is not queued yet (a queued entry keeps its mode)
-- ARGV[3]     the lease in milliseconds (integer >= 1)
--
-- Purges the entries whose lease ended (waking the waiters when any went), then adds
-- the owner at the tail of the queue, or refreshes the lease of its entry to ARGV[3] ms
-- from now. The entry is granted when its mode admits the entries ahead of it, granted
-- or waiting (HoldMode::admits: an exclusive entry must be first; a shared entry of
-- limit L must have no exclusive entry and fewer than L entries ahead); it then gets
-- the next token of F, once: later calls return the same token.
--
-- The token is a hybrid logical clock in microseconds, like acquire.lua's: F + 1,
-- raised to the server clock when it lags it by more than SLACK, so tokens keep
-- increasing across a restart of a server without persistence.
--
-- Returns
--   token (an integer >= 1)      the entry holds the lock (or a permit) with this token
--   {'queued', ahead, wait_ms, fence}
--                                it waits behind `ahead` entries; the first lease of
--                                the queue (so no later than the first ahead of it)
--                                ends in `wait_ms` ms; `fence` is F as this call
--                                found it (0 when absent): a grant of this entry that a
--                                later removal announces has a higher token
--   or a {'wrongtype', …} / {'corrupt', …} reply of queue_head.lua. A corrupted fence
--   changes nothing; a corrupted mode ahead grants nothing.

-- owner, mode_arg, ttl_arg and ttl are locals of queue_enqueue_fast.lua, which runs first.

-- F first (prepare may write): a key of another type changes nothing.
local raw_fence = redis.pcall('GET', F)
if type(raw_fence) == 'table' then
  return { 'wrongtype', 'WRONGTYPE ' .. F .. ' is a ' .. redis.call('TYPE', F)['ok'] .. ', not a string' }
end
local failed = prepare()
if failed then
  return failed
end
local fence = 0
if raw_fence then
  fence = decode_token(raw_fence)
  if not fence then
    return { 'corrupt', 'fence', F, raw_fence or '' }
  end
end

purge()
local expires = int(now_ms + ttl)
local pos = redis.call('ZRANK', Q, owner)
local mode
if pos then
  -- Already granted: the same token again, and a fresh lease.
  local raw_token = redis.call('HGET', T, owner)
  if raw_token then
    local token = decode_token(raw_token)
    if not token then
      finish(true)
      return { 'corrupt', 'token', T .. ' ' .. owner, raw_token }
    end
    redis.call('ZADD', E, expires, owner)
    finish(true)
    return token
  end
  local raw_mode = redis.call('HGET', M, owner)
  mode = decode_mode(raw_mode)
  if not mode then
    finish(true)
    return { 'corrupt', 'mode', M .. ' ' .. owner, raw_mode or '' }
  end
  redis.call('ZADD', E, expires, owner)
else
  mode = decode_mode(mode_arg)
  if not mode then
    finish()
    return { 'corrupt', 'mode', 'ARGV[2]', mode_arg }
  end
  local last = redis.call('ZRANGE', Q, '-1', '-1', 'WITHSCORES')
  local seq = 1
  if last[2] then
    seq = tonumber(last[2]) + 1
  end
  redis.call('ZADD', Q, int(seq), owner)
  redis.call('ZADD', E, expires, owner)
  redis.call('HSET', M, owner, mode_arg)
  pos = redis.call('ZCARD', Q) - 1
end

local admitted
if mode == 0 then
  admitted = pos == 0
elseif pos >= mode then
  admitted = false
else
  -- Every mode ahead is read (and must decode) before a shared entry is granted.
  admitted = true
  if pos > 0 then
    local ahead = redis.call('ZRANGE', Q, '0', int(pos - 1))
    local modes = chunked('HMGET', M, ahead)
    for i = 1, #ahead do
      local m = decode_mode(modes[i])
      if not m then
        finish(true)
        return { 'corrupt', 'mode', M .. ' ' .. ahead[i], modes[i] or '' }
      end
      if m == 0 then
        admitted = false
      end
    end
  end
end

if admitted then
  local token = next_token(fence)
  if not token then
    finish(true)
    return { 'corrupt', 'fence', F, raw_fence or '' }
  end
  redis.call('SET', F, int(token))
  set_token(owner, int(token))
  finish(true)
  return token
end

-- The first lease of the queue to end: no later than the first ahead of the entry
-- (one read, where each lease ahead would be one argument more).
local first = redis.call('ZRANGE', E, '0', '0', 'WITHSCORES')
local wait_ms = (tonumber(first[2]) or now_ms) - now_ms
finish(true)
return { 'queued', pos, math.max(wait_ms, 0), fence }
