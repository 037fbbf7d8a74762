-- queue_head.lua: the start of every queued-lock script (fair locks, semaphores,
-- read-write locks). Not a script of its own: queue.rs builds each operation as
-- queue_head.lua, then the operation's fast path when it has one
-- (queue_enqueue_fast.lua, queue_renew_fast.lua, queue_dequeue_fast.lua), then
-- queue_common.lua (the server clock and the helpers of the general path), then the
-- operation (queue_enqueue.lua,
-- queue_renew.lua, queue_dequeue.lua, queue_force_release.lua, queue_info.lua), so
-- every operation stays one EVALSHA. The fast paths come before the helpers so that
-- they do not pay for defining them (about a microsecond per call) nor for TIME.
--
-- KEYS (the same six in every queue script; all share the `{name}` hash tag of
-- the lease lock of the same name, but never collide with its keys: a queued lock and a
-- lease lock with the same name are different locks):
-- KEYS[1]  Q  `{ns}:lock:{name}:queue`        ZSET owner -> arrival sequence (queue order)
-- KEYS[2]  E  `{ns}:lock:{name}:queue:lease`  ZSET owner -> end of its lease (server ms)
-- KEYS[3]  M  `{ns}:lock:{name}:queue:mode`   HASH owner -> hold mode (`x` or `s<limit>`)
-- KEYS[4]  T  `{ns}:lock:{name}:queue:token`  HASH owner -> fencing token, once granted
-- KEYS[5]  S  `{ns}:lock:{name}:queue:solo`   STRING `owner NUL mode NUL token`, expiring
--             at the end of the entry's lease: the compact form of a queue whose only
--             entry was granted on arrival (every uncontended hold)
-- KEYS[6]  F  `{ns}:lock:{name}:queue:fence`  STRING, the last token handed out by this
--             queue, no TTL (never deleted, so tokens keep increasing)
-- A queue is in one of two forms, never both: the compact form (S alone), or the full
-- form (Q, E, M and T, which expire together, PEXPIREAT, at most two seconds after the
-- end of the last lease (KEY_PAD in queue_common.lua), and are deleted when the queue
-- empties). The fast paths (queue_*_fast.lua) create,
-- renew and delete S; the general path first turns S into the full form
-- (expand_solo in queue_common.lua), so nothing after it knows the compact form.
-- A removal of an entry that lets waiting entries in grants them at once (each gets the
-- next token of F) and publishes them, one line `owner NUL token` each, on the channel
-- of the owner's client, `{ns}:lock:{name}:queue:released:<client_id>`
-- (Q .. ':released:' .. client_id): only those waiters' connections receive it, and
-- they hold the lock without asking again (a line `owner` alone wakes a waiter to ask).
-- An empty message on `{ns}:lock:{name}:queue:released` (Q .. ':released'), which every
-- waiter listens to as well, wakes every waiter.
--
-- A stored value the scripts cannot use makes them reply (tables, not error replies, so
-- queue.rs can tell a corrupted value from a failed request):
--   {'wrongtype', message}         a key of another type; nothing was changed
--   {'corrupt', what, where, raw}  the `what` (mode, token, fence, lease or entry)
--                                  stored at `where` (a key, or `key owner` for an
--                                  entry's field) is `raw`, which does not decode;
--                                  nothing was granted

local Q, E, M, T, S, F = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

-- Tokens stay below 2^53, exact in a Lua number.
local MAX_TOKEN = 9007199254740992
-- 10 ms, in token units (microseconds): see acquire.lua's hybrid logical clock.
local SLACK = 10000
-- The most arguments one command gets from unpack (Lua's C stack is limited).
local CHUNK = 1000

-- An integer as a command argument, never in exponent form. ('%d' formats it as a C
-- long: exact below 2^53 where a long has 64 bits, as on every 64-bit Redis build that
-- runs on Linux or macOS, and much cheaper than a float format; a Lua number passed to
-- redis.call as it is goes through the server's '%.17g'.)
local function int(n)
  return string.format('%d', n)
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

-- The fields of a compact entry's value `owner NUL mode NUL token`: owner, mode and
-- token as stored, or nil when it is not of that form.
local function split_solo(raw)
  return string.match(raw, '^([^%z]+)%z([^%z]+)%z(%d+)$')
end

-- Whether the compact entry's value `raw` is `owner`'s.
local function solo_of(raw, owner)
  return string.sub(raw, 1, #owner + 1) == owner .. '\0'
end
