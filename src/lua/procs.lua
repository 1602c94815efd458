-- procs.lua - every process's heartbeat expiry, with Redis's time now.
--
-- KEYS: 1 the set.  Returns {now, member1, expiry1, member2, expiry2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
table.insert(r, 1, string.format('%d', now))
return r
