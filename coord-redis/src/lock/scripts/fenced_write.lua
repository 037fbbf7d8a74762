-- fenced_write.lua: stores a value under a key only with a fencing token at least as new
-- as the token stored with it (a fenced compare-and-set; see fenced.rs).
--
-- KEYS[1]  the fenced key `{ns}:fenced:{key}`, a hash {token = decimal token, value = bytes}
-- ARGV[1]  the writer's token, in decimal without leading zeros (0 to 2^64 - 1)
-- ARGV[2]  the value
--
-- Tokens are compared as decimal strings (the longer one is larger, then byte order), so
-- every u64 compares exactly: a Lua number is exact only below 2^53.
--
-- Returns one of:
--   1                    stored: token and value replaced together, in one HSET
--                        (an equal token is accepted: one holder writes many times)
--   {'stale', newest}    refused: the stored token `newest` is newer; nothing changed
--   {'corrupt', raw}     refused: the stored token field `raw` is not a token (it was
--                        changed outside coord); nothing changed
-- A key of another type is a WRONGTYPE error reply, with nothing changed.

-- 2^64 - 1, the largest token.
local MAX_TOKEN = '18446744073709551615'

local stored = redis.call('HGET', KEYS[1], 'token')
if stored then
  local canonical = string.match(stored, '^%d+$')
    and (#stored == 1 or string.byte(stored, 1) ~= 48) -- no leading zero
    and (#stored < #MAX_TOKEN or (#stored == #MAX_TOKEN and stored <= MAX_TOKEN))
  if not canonical then
    return { 'corrupt', stored }
  end
  local new = ARGV[1]
  if #stored > #new or (#stored == #new and stored > new) then
    return { 'stale', stored }
  end
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'value', ARGV[2])
return 1
