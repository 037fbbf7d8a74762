-- queue_dequeue_fast.lua: the fast path of queue_dequeue.lua (after queue_head.lua,
-- before queue_common.lua and queue_dequeue.lua). KEYS, ARGV and replies: see
-- queue_dequeue.lua. Returns from the script when the queue is the owner's compact
-- entry; otherwise the general path runs.

-- The release of the queue's compact entry (S, see queue_head.lua; every uncontended
-- release): GET and DEL. Nobody waits behind a compact entry (a waiter's arrival
-- expands it), so nobody is woken. An expired entry is gone already, and the general
-- path reports it absent.
local function remove_solo()
  local held = redis.pcall('GET', S)
  if type(held) ~= 'string' or not solo_of(held, ARGV[1]) then
    return nil
  end
  redis.call('DEL', S)
  return 1
end

local sole = remove_solo()
if sole then
  return sole
end
