-- queue_enqueue_fast.lua: the fast path of queue_enqueue.lua (after queue_head.lua,
-- before queue_common.lua and queue_enqueue.lua, which use its locals owner,
-- mode_arg, ttl_arg and ttl). KEYS, ARGV and replies: see queue_enqueue.lua. Returns from the
-- script only when it grants; otherwise the general path runs.

local owner, mode_arg, ttl_arg = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ttl_arg)

-- An empty queue (none of its keys exists) grants its first entry at once, in the
-- compact form (S, see queue_head.lua): EXISTS, INCR of the fence, SET NX of S with the
-- token in it, PEXPIRETIME, as few commands as a lease lock's grant, with no TIME (the
-- server clock is read as S's PEXPIRETIME minus its TTL). The owner's own compact entry
-- (a retry after a lost reply) is granted again with its token and a fresh lease.
-- Anything else returns nil and takes the general path below: a queue in the full form,
-- another owner's compact entry (which the general path expands), and anything unusual
-- (a key of another type, a fence or mode that does not decode), which the general path
-- reports. On the way out nothing is left changed (the fence's INCR is undone, and a
-- fence it made is deleted).
local function undo_incr(token)
  if token == 1 then
    redis.call('DEL', F)
  else
    redis.call('DECR', F)
  end
end

local function grant_solo()
  if not decode_mode(mode_arg) or redis.call('EXISTS', Q, E, M, T) ~= 0 then
    return nil
  end
  local token = redis.pcall('INCR', F)
  if type(token) ~= 'number' or token < 1 or token >= MAX_TOKEN then
    if type(token) == 'number' then
      undo_incr(token)
    end
    return nil
  end
  local prefix = owner .. '\0' .. mode_arg .. '\0'
  local held = redis.pcall('SET', S, prefix .. int(token), 'NX', 'PX', ttl_arg, 'GET')
  if held then
    -- S was there already (or is of another type): nothing granted.
    undo_incr(token)
    if type(held) ~= 'string' or not solo_of(held, owner) then
      return nil
    end
    local again = decode_token(select(3, split_solo(held)))
    if again then
      redis.call('PEXPIRE', S, ttl_arg)
    end
    return again
  end
  -- The hybrid logical clock of acquire.lua, in token units (microseconds).
  local now = (redis.call('PEXPIRETIME', S) - ttl) * 1000
  if now - token > SLACK then
    redis.call('INCRBY', F, int(now - token))
    token = now
    redis.call('SET', S, prefix .. int(token), 'KEEPTTL')
  end
  return token
end

local fast = grant_solo()
if fast then
  return fast
end
