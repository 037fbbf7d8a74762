-- queue_renew_fast.lua: the fast path of queue_renew.lua (after queue_head.lua, before
-- queue_common.lua and queue_renew.lua). KEYS, ARGV and replies: see queue_renew.lua.
-- Returns from the script when the queue is the owner's compact entry; otherwise the
-- general path runs.

-- The renewal of the queue's compact entry (S, see queue_head.lua): GET and PEXPIRE.
local function renew_solo()
  local held = redis.pcall('GET', S)
  if type(held) ~= 'string' or not solo_of(held, ARGV[1]) then
    return nil
  end
  redis.call('PEXPIRE', S, ARGV[2])
  return 1
end

local renewed_solo = renew_solo()
if renewed_solo then
  return renewed_solo
end
