-- Shared prelude of the registry scripts: the server's clock and the reaper
-- of expired instances. Prepended to each registry script.
-- KEYS[1] instances hash (id -> stored record)
-- KEYS[2] owners hash (id -> owner token)
-- KEYS[3] expiry sorted set (id -> expiry, server milliseconds)
-- KEYS[4] revision counter of the service
-- ARGV[1] the service's change channel
-- Every change bumps the revision and publishes `rev\0put\0record` or
-- `rev\0del\0id` on the channel, so a watcher can tell a missed message.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function remove(id)
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  local rev = redis.call('INCR', KEYS[4])
  redis.call('PUBLISH', ARGV[1], rev .. '\0del\0' .. id)
end

local function reap(now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, id in ipairs(expired) do
    remove(id)
  end
  return #expired
end
