-- queue_enqueue_fast.lua: the fast path of queue_enqueue.lua (after queue_head.lua,
-- before queue_common.lua and queue_enqueue.lua, which use its locals F, owner,
-- mode_arg and ttl). KEYS, ARGV and replies: see queue_enqueue.lua. Returns from the
-- script only when it grants; otherwise the general path runs.

local F = KEYS[5]
local owner, mode_arg, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])

-- The fast path of an empty queue (none of its four keys exists): the entry is
-- granted at once, in 12 commands instead of about 22 (no type checks, purge or
-- wake-up scan are needed on keys that do not exist). Anything unusual (a fence
-- of another type or that does not decode, a mode that does not decode) returns
-- nil and takes the general path below, which reports it.
local function grant_in_empty_queue()
  if redis.call('EXISTS', Q, E, M, T) ~= 0 or not decode_mode(mode_arg) then
    return nil
  end
  local raw_fence = redis.pcall('GET', F)
  if type(raw_fence) == 'table' then
    return nil
  end
  local fence = 0
  if raw_fence then
    fence = decode_token(raw_fence)
    if not fence then
      return nil
    end
  end
  local token = next_token(fence)
  if not token then
    return nil
  end
  local expires = int(now_ms + ttl)
  redis.call('ZADD', Q, 1, owner)
  redis.call('ZADD', E, expires, owner)
  redis.call('HSET', M, owner, mode_arg)
  redis.call('HSET', T, owner, int(token))
  redis.call('SET', F, int(token))
  for _, key in ipairs({ Q, E, M, T }) do
    redis.call('PEXPIREAT', key, expires)
  end
  return { 'granted', token }
end

local fast = grant_in_empty_queue()
if fast then
  return fast
end
