-- Reaps a service's expired instances (watchers call it periodically, so a
-- dead process's instance disappears without anyone writing). After reap.lua.
-- KEYS: see reap.lua. No more ARGV.
-- Returns { revision, live instance count }.
reap(now_ms())
return { redis.call('GET', KEYS[4]) or '0', redis.call('ZCARD', KEYS[3]) }
