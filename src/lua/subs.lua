-- subs.lua - how many subscribers a channel has in every live process,
-- from their presence hashes (hub.c writes them), for GET /channels/NAME.
--
-- KEYS: 1 the procs set.  ARGV: 1 prefix of the presence hashes
--       ("PREFIXpresence:"), 2 the channel.
-- Returns {subscribers, processes}; processes counts the live ones summed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local subs = 0
local alive = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
for i = 1, #alive do
  local c = redis.call('HGET', ARGV[1] .. alive[i], ARGV[2])
  if c then subs = subs + tonumber(c) end
end
return {subs, #alive}
