-- queue_head.lua: the start of every queued-lock script (fair locks, semaphores,
-- read-write locks). Not a script of its own: queue.rs builds each operation as
-- queue_head.lua, then the operation's fast path when it has one
-- (queue_enqueue_fast.lua, queue_dequeue_fast.lua), then queue_common.lua (the
-- helpers of the general path), then the operation (queue_enqueue.lua,
-- queue_renew.lua, queue_dequeue.lua, queue_force_release.lua, queue_info.lua), so
-- every operation stays one EVALSHA. The fast paths come before the helpers so that
-- they do not pay for defining them (about a microsecond per call).
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

-- An integer as a command argument, never in exponent form.
local function int(n)
  return string.format('%.0f', n)
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
