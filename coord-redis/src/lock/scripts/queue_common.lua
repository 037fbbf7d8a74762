-- queue_common.lua: the server clock and the helpers of the general path of the
-- queued-lock scripts (after queue_head.lua and the operation's fast path, before the
-- operation; see queue_head.lua for the keys and the replies).

local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now_us / 1000)

-- The next token after the fence value `fence`, or nil when it would reach
-- MAX_TOKEN: F + 1, raised to the server clock when it lags it by more than SLACK
-- (a hybrid logical clock, as in acquire.lua).
local function next_token(fence)
  local token = fence + 1
  if now_us - token > SLACK then
    token = now_us
  end
  if token >= MAX_TOKEN then
    return nil
  end
  return token
end

-- How long (ms) the keys of the full form outlive the last lease at most twice over
-- (see finish).
local KEY_PAD = 1000

-- Whether this call wrote a token into T (which may have made T anew, without expiry).
local tokens_written = false

-- Records `owner`'s token in T.
local function set_token(owner, token)
  redis.call('HSET', T, owner, token)
  tokens_written = true
end

-- Whether an entry was removed (the waiters are then woken, once per call).
local changed = false

-- A command of each type that reads a key's size: an integer reply, cheaper than
-- TYPE's status reply, and a WRONGTYPE error for a key of another type.
local SIZE_OF = { zset = 'ZCARD', hash = 'HLEN', string = 'STRLEN' }

-- nil when each of `keys` is absent or of type `types[i]`, else a message.
local function check_types(keys, types)
  for i, key in ipairs(keys) do
    local size = redis.pcall(SIZE_OF[types[i]], key)
    if type(size) ~= 'number' then
      local got = redis.call('TYPE', key)['ok']
      return 'WRONGTYPE ' .. key .. ' is a ' .. got .. ', not a ' .. types[i]
    end
  end
  return nil
end

local QUEUE_KEYS = { Q, E, M, T, S }
local QUEUE_TYPES = { 'zset', 'zset', 'hash', 'hash', 'string' }

-- The types of Q, E, M, T and, `with_solo`, S (prepare leaves S to expand_solo, whose
-- GET of S, before any write, checks its type).
local function check_queue_types(with_solo)
  if with_solo then
    return check_types(QUEUE_KEYS, QUEUE_TYPES)
  end
  return check_types({ Q, E, M, T }, QUEUE_TYPES)
end

-- Turns the compact entry S, if any, into the full form (see queue_head.lua): its
-- owner first in Q, its lease end (S's expiry) in E, its mode and token in M and T.
-- Returns nil, or a {'corrupt', …} reply when S does not decode, or a {'wrongtype', …}
-- one when S is not a string (nothing changed).
local function expand_solo()
  local raw = redis.pcall('GET', S)
  if not raw then
    return nil
  end
  if type(raw) == 'table' then
    return { 'wrongtype', 'WRONGTYPE ' .. S .. ' is a ' .. redis.call('TYPE', S)['ok'] .. ', not a string' }
  end
  local owner, mode, token = split_solo(raw)
  local ends = redis.call('PEXPIRETIME', S)
  if not owner or not decode_mode(mode) or not decode_token(token) or ends < 0 then
    return { 'corrupt', 'entry', S, raw }
  end
  redis.call('ZADD', Q, '1', owner)
  redis.call('ZADD', E, int(ends), owner)
  redis.call('HSET', M, owner, mode)
  redis.call('HSET', T, owner, token)
  for _, key in ipairs({ Q, E, M, T }) do
    redis.call('PEXPIREAT', key, int(ends))
  end
  redis.call('DEL', S)
  return nil
end

-- The start of every general path: the keys' types checked and the compact entry
-- expanded. Returns nil, or the reply that ends the script.
local function prepare()
  local bad_type = check_queue_types(false)
  if bad_type then
    return { 'wrongtype', bad_type }
  end
  return expand_solo()
end

-- `command key item…` over `items` in chunks; the replies concatenated.
local function chunked(command, key, items)
  local out = {}
  for i = 1, #items, CHUNK do
    local reply = redis.call(command, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
    if type(reply) == 'table' then
      for _, v in ipairs(reply) do
        out[#out + 1] = v
      end
    else
      out[#out + 1] = reply
    end
  end
  return out
end

-- Removes the entries of `owners`; returns how many were in the queue.
local function remove(owners)
  local removed = 0
  for _, n in ipairs(chunked('ZREM', Q, owners)) do
    removed = removed + n
  end
  if #owners > 0 then
    chunked('ZREM', E, owners)
    chunked('HDEL', M, owners)
    chunked('HDEL', T, owners)
  end
  if removed > 0 then
    changed = true
  end
  return removed
end

-- Drops the entries whose lease has ended.
local function purge()
  remove(redis.call('ZRANGEBYSCORE', E, '-inf', int(now_ms)))
end

-- How many entries from the head a wake-up looks at; beyond, it wakes everyone.
local WAKE_SCAN = 128
-- How many it reads at a time (an exclusive head needs 2).
local WAKE_PAGE = 8

-- The waiting entries (no token yet) that the queue now admits, in queue order, as
-- HoldMode::admits decides; nil to wake every waiter (a mode that does not decode, or
-- more admitted entries than WAKE_SCAN).
local function admitted_waiters()
  local wake = {}
  local ahead = 0
  for from = 0, WAKE_SCAN - 1, WAKE_PAGE do
    local owners = redis.call('ZRANGE', Q, int(from), int(from + WAKE_PAGE - 1))
    for _, owner in ipairs(owners) do
      local mode = decode_mode(redis.call('HGET', M, owner))
      if mode == nil then
        return nil
      end
      local admitted
      if mode == 0 then
        admitted = ahead == 0
      else
        -- (No exclusive entry is ahead: an admitted one ends the scan below.)
        admitted = ahead < mode
      end
      if not admitted then
        return wake
      end
      if redis.call('HEXISTS', T, owner) == 0 then
        wake[#wake + 1] = owner
      end
      if mode == 0 then
        -- An exclusive entry admitted is the only one: nothing behind it is.
        return wake
      end
      ahead = ahead + 1
    end
    if #owners < WAKE_PAGE then
      return wake
    end
  end
  return nil
end

-- Grants the waiting entries of `owners` (admitted, in queue order) the next tokens of
-- F, and returns the lines that announce them: `owner NUL token` each. Grants nothing
-- when F does not decode (or would overflow), and announces the owners alone then, so
-- that they ask, and their enqueue reports the fence.
local function grant_waiters(owners)
  local raw = redis.pcall('GET', F)
  local fence = 0
  if raw then
    fence = decode_token(raw)
  end
  local lines, last = {}, nil
  for i, owner in ipairs(owners) do
    local token = fence and next_token(fence)
    fence = token
    if token then
      set_token(owner, int(token))
      last = token
      lines[i] = owner .. '\0' .. int(token)
    else
      lines[i] = owner
    end
  end
  if last then
    redis.call('SET', F, int(last))
  end
  return lines
end

-- Publishes `lines` (one per admitted owner, from grant_waiters) on the channel of each
-- owner's client, `Q .. ':released:' .. client_id` (an owner is `client_id:owner`, and a
-- client id has no ':'), a client's lines in one message: only the connections of the
-- clients let in receive them, not every waiting client's.
local function announce(lines)
  local by_client, order = {}, {}
  for _, line in ipairs(lines) do
    local channel = Q .. ':released:' .. (string.match(line, '^([^:]*):') or '')
    if by_client[channel] then
      by_client[channel] = by_client[channel] .. '\n' .. line
    else
      by_client[channel] = line
      order[#order + 1] = channel
    end
  end
  for _, channel in ipairs(order) do
    redis.call('PUBLISH', channel, by_client[channel])
  end
end

-- Keeps the keys alive until the last lease ends, and up to 2 * KEY_PAD after (deleting
-- them once the queue is empty) and wakes the waiters that an entry's going let in. Called before every
-- reply of a script that may have changed the queue; `queued` when this call leaves an
-- entry in Q (so the queue is not empty).
local function finish(queued)
  if not queued and redis.call('ZCARD', Q) == 0 then
    redis.call('DEL', Q, E, M, T)
    return
  end
  if changed then
    local wake = admitted_waiters()
    if wake == nil then
      redis.call('PUBLISH', Q .. ':released', '')
    elseif #wake > 0 then
      announce(grant_waiters(wake))
    end
  end
  -- The four keys share one expiry, KEY_PAD after the end of the last lease, set
  -- again only when the last lease now ends after it or more than 2 * KEY_PAD before
  -- it (Q, E and M last as long as the queue has an entry, so M's expiry stands for
  -- the three), and T's alone when this call made T anew (it goes whenever no entry is
  -- granted: at every hand-over of an exclusive lock). The pad spares the four
  -- PEXPIREAT of nearly every arrival at a busy queue (each new entry's lease ends a
  -- little after the last one's).
  local last = redis.call('ZRANGE', E, '-1', '-1', 'WITHSCORES')
  if last[2] then
    local ends = tonumber(last[2])
    local expiry = redis.call('PEXPIRETIME', M)
    if ends > expiry or expiry > ends + 2 * KEY_PAD then
      local at = int(ends + KEY_PAD)
      for _, key in ipairs({ Q, E, M, T }) do
        redis.call('PEXPIREAT', key, at)
      end
    elseif tokens_written then
      -- T may be new (no expiry); else this sets the expiry it has.
      redis.call('PEXPIREAT', T, int(expiry))
    end
  end
end

