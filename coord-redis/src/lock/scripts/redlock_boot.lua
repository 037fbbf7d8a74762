-- redlock_boot.lua: reads the server's identity and records when this process started,
-- so that acquisitions can tell a restarted server apart (Redlock's quarantine).
--
-- KEYS[1]  the boot record `{ns}:redlock:boot`: "<run_id> <start>", where start is
--          the process start in microseconds of the server clock, placed never
--          earlier than the true start. No TTL. uptime_in_seconds is the difference of
--          two whole seconds (the clock now and at start, each rounded down), so it
--          overstates the true uptime by up to a second: the start is placed at
--          now - (uptime - 1), or now for an uptime of 0.
--
-- Writes the boot record when it is missing or names another run id (a restart with
-- persistence brings the old record back); for the same run id keeps the earlier of
-- the two starts (both are no earlier than the true one). A cluster node is left alone.
--
-- Returns the `INFO server` text the record was made from (the client reads run_id,
-- uptime_in_seconds and redis_mode from it).
local info = redis.call('INFO', 'server')
if string.match(info, 'redis_mode:(%a+)') == 'cluster' then
  return info
end
local run_id = string.match(info, 'run_id:(%x+)')
local uptime = tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
if not run_id or not uptime then
  return info
end
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2]) - math.max(uptime - 1, 0) * 1000000
local record = redis.call('GET', KEYS[1])
if record then
  local old_id, old_start = string.match(record, '^(%x+) (%d+)$')
  if old_id == run_id and tonumber(old_start) <= start then
    return info
  end
end
redis.call('SET', KEYS[1], run_id .. ' ' .. string.format('%.0f', start))
return info
