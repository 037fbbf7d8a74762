-- queue_common.lua: helpers of the queued-lock scripts (fair locks, semaphores,
-- read-write locks). Not a script of its own: queue.rs prepends it to each of
-- queue_enqueue.lua, queue_renew.lua, queue_dequeue.lua, queue_force_release.lua and
-- queue_info.lua, so every operation stays one EVALSHA.
--
-- KEYS (the same first four in every queue script; all share the `{name}` hash tag of
-- the lease lock of the same name, but never collide with its keys: a queued lock and a
-- lease lock with the same name are different locks):
-- KEYS[1]  Q  `{ns}:lock:{name}:queue`        ZSET owner -> arrival sequence (queue order)
-- KEYS[2]  E  `{ns}:lock:{name}:queue:lease`  ZSET owner -> end of its lease (server ms)
-- KEYS[3]  M  `{ns}:lock:{name}:queue:mode`   HASH owner -> hold mode (`x` or `s<limit>`)
-- KEYS[4]  T  `{ns}:lock:{name}:queue:token`  HASH owner -> fencing token, once granted
-- These four expire together at the end of the last lease (PEXPIREAT) and are deleted
-- when the queue empties. A removal of an entry that lets waiting entries in publishes
-- their owners, one per line, on the channel `{ns}:lock:{name}:queue:released`
-- (Q .. ':released'): only those waiters wake (an empty message wakes every waiter).
--
-- A stored value the scripts cannot use makes them reply (tables, not error replies, so
-- queue.rs can tell a corrupted value from a failed request):
--   {'wrongtype', message}         a key of another type; nothing was changed
--   {'corrupt', what, where, raw}  the `what` (mode, token, fence or lease) stored at
--                                  `where` (a key, or `key owner` for an entry's field)
--                                  is `raw`, which does not decode; nothing was granted

local Q, E, M, T = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- Tokens stay below 2^53, exact in a Lua number.
local MAX_TOKEN = 9007199254740992
-- 10 ms, in token units (microseconds): see acquire.lua's hybrid logical clock.
local SLACK = 10000
-- The most arguments one command gets from unpack (Lua's C stack is limited).
local CHUNK = 1000

local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now_ms = math.floor(now_us / 1000)

-- Whether an entry was removed (the waiters are then woken, once per call).
local changed = false

-- An integer as a command argument, never in exponent form.
local function int(n)
  return string.format('%.0f', n)
end

-- nil when every key is absent or of its type, else a message.
local function check_types(expected)
  for _, pair in ipairs(expected) do
    local got = redis.call('TYPE', pair[1])['ok']
    if got ~= 'none' and got ~= pair[2] then
      return 'WRONGTYPE ' .. pair[1] .. ' is a ' .. got .. ', not a ' .. pair[2]
    end
  end
  return nil
end

local function check_queue_types()
  return check_types({ { Q, 'zset' }, { E, 'zset' }, { M, 'hash' }, { T, 'hash' } })
end

-- A stored hold mode: 0 for exclusive (`x`), the limit for shared (`s<limit>`,
-- 1 <= limit < 2^32), nil when it does not decode (as HoldMode::decode).
local function decode_mode(raw)
  if raw == 'x' then
    return 0
  end
  local digits = type(raw) == 'string' and string.match(raw, '^s(%d+)$')
  if digits then
    local limit = tonumber(digits)
    if limit and limit >= 1 and limit <= 4294967295 then
      return limit
    end
  end
  return nil
end

-- A stored token or fence value, nil when it is not an integer in [1, 2^53).
local function decode_token(raw)
  local n = type(raw) == 'string' and string.match(raw, '^%d+$') and tonumber(raw)
  if n and n >= 1 and n < MAX_TOKEN then
    return n
  end
  return nil
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

-- The waiting entries (no token yet) that the queue now admits, in queue order, as
-- HoldMode::admits decides; nil to wake every waiter (a mode that does not decode, or
-- more admitted entries than WAKE_SCAN).
local function admitted_waiters()
  local owners = redis.call('ZRANGE', Q, 0, WAKE_SCAN - 1)
  local wake = {}
  local ahead, exclusive_ahead = 0, false
  for _, owner in ipairs(owners) do
    local mode = decode_mode(redis.call('HGET', M, owner))
    if mode == nil then
      return nil
    end
    local admitted
    if mode == 0 then
      admitted = ahead == 0
    else
      admitted = not exclusive_ahead and ahead < mode
    end
    if not admitted then
      return wake
    end
    if redis.call('HEXISTS', T, owner) == 0 then
      wake[#wake + 1] = owner
    end
    ahead = ahead + 1
    exclusive_ahead = exclusive_ahead or mode == 0
  end
  if #owners == WAKE_SCAN then
    return nil
  end
  return wake
end

-- Keeps the keys alive until the last lease ends (deleting them once the queue is
-- empty) and wakes the waiters that an entry's going let in. Called before every
-- reply of a script that may have changed the queue.
local function finish()
  if redis.call('ZCARD', Q) == 0 then
    redis.call('DEL', Q, E, M, T)
  else
    local last = redis.call('ZRANGE', E, -1, -1, 'WITHSCORES')
    if last[2] then
      local at = int(tonumber(last[2]))
      for _, key in ipairs({ Q, E, M, T }) do
        redis.call('PEXPIREAT', key, at)
      end
    end
  end
  if changed and redis.call('EXISTS', Q) == 1 then
    local wake = admitted_waiters()
    if wake == nil then
      redis.call('PUBLISH', Q .. ':released', '')
    elseif #wake > 0 then
      redis.call('PUBLISH', Q .. ':released', table.concat(wake, '\n'))
    end
  end
end

