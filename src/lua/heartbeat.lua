-- heartbeat.lua - a process announces itself in one sorted set, scored by
-- the moment its heartbeat expires (Redis's clock, so hosts need not agree
-- on the time, and each process states its own interval). /healthz reads it
-- (procs.lua); entries expired longer ago than ARGV[3] are pruned.
--
-- KEYS: 1 the set.  ARGV: 1 member ("kind:id"), 2 valid for (ms),
--       3 forget after (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[3])))
return 1
