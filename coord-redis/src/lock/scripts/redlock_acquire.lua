-- redlock_acquire.lua: one server's part of Redlock acquisitions: acquire.lua's attempt,
-- made only when this server process is the one the client checked and has left its
-- quarantine (sent after lease_acquire.lua, which defines `acquire`).
--
-- KEYS[1]  the boot record `{ns}:redlock:boot` ("<run_id> <start_us>", see redlock_boot.lua)
-- KEYS[2]  the lock key  `{ns}:lock:{name}`
-- KEYS[3]  the fence key `{ns}:lock:{name}:fence`
-- ARGV[1]  the quarantine in milliseconds (integer >= 0)
-- ARGV[2]  the run id the client last checked on this server
-- ARGV[3]  the owner, ARGV[4] the TTL in milliseconds, as in acquire.lua
-- A batch of N attempts (see batch.rs) repeats the pattern: KEYS[3i-2..3i] and
-- ARGV[4i-3..4i] are the i-th attempt's, and the reply is an array of the N replies,
-- the pair {'error', message} standing in for an attempt that failed.
--
-- Returns, for one attempt, `acquire`'s reply (see lease_acquire.lua), or, with nothing
-- changed:
--   {'redlock', 'unchecked'}          no boot record, or one of another run id: the
--                                     server restarted (or was never checked) since the
--                                     client's check; check it again
--   {'redlock', 'quarantined', <ms>}  the process started less than the quarantine
--                                     ago; <ms> are left
-- The check runs in the same script as the grant, so every request that reaches a
-- restarted process is refused, whatever the client's connection did meanwhile.

-- Fences follow the clock in steps (see STEP in lease_acquire.lua): the servers of a
-- Redlock grant then seldom hand out different tokens.
STEP = SLACK

-- The server clock in microseconds, read once per script call (and handed to
-- `acquire` as its `now`, so a guarded grant reads the clock once).
local clock = nil
-- The boot record last read, its run id and start: read once per script call (a
-- batch's attempts name the same record, which cannot change while the script runs).
local boot_read, boot_id, boot_start = nil, nil, nil

local function guarded(boot, lock, fence, quarantine, run_id, owner, ttl)
  if boot_read ~= boot then
    boot_id, boot_start = nil, nil
    local record = redis.call('GET', boot)
    if record then
      boot_id, boot_start = string.match(record, '^(%x+) (%d+)$')
    end
    boot_read = boot
  end
  local id, start = boot_id, boot_start
  if not id or id ~= run_id then
    return { 'redlock', 'unchecked' }
  end
  if not clock then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
    -- The same server clock `acquire` reads through PEXPIRETIME for its hybrid
    -- logical clock (lease_acquire.lua): handed over, it spares that call.
    now = now or clock
  end
  local left = tonumber(start) + tonumber(quarantine) * 1000 - clock
  if left > 0 then
    return { 'redlock', 'quarantined', math.ceil(left / 1000) }
  end
  return acquire(lock, fence, owner, ttl)
end

return dispatch(3, 4, function(k, a)
  return guarded(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4])
end)
