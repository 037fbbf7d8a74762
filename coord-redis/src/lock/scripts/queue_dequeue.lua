-- queue_dequeue.lua: removes one entry, granted (a release) or waiting (a waiter giving
-- up), and wakes the waiters (after queue_head.lua, queue_dequeue_fast.lua and
-- queue_common.lua).
--
-- KEYS[1..6]  Q, E, M, T, S, F of the queue (see queue_head.lua)
-- ARGV[1]     the owner (`client_id:owner`)
--
-- Purges the entries whose lease ended first. When any entry went, grants the waiters
-- it lets in and announces them on their clients' channels (see queue_head.lua). Returns 1 when the owner's entry was queued (now removed), 0 when it was
-- not (an expired entry counts as absent), or a {'wrongtype', …} reply of
-- queue_head.lua.

local failed = prepare()
if failed then
  return failed
end
purge()
local removed = remove({ ARGV[1] })
finish()
return removed
