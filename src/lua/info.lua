-- info.lua - a channel's state and how many subscribers it has in every
-- live process (after lib.lua), for GET /channels/NAME. It creates nothing:
-- a channel nobody has used has no epoch yet.
--
-- KEYS: 1 server, 2 channel meta, 3 channel stream, 4 the procs set.
-- ARGV: 1-3 gen_of, 4 fresh ep (a repair's), 5 prefix of the presence
--       hashes ("PREFIXpresence:"), 6 the channel.
-- Returns {epoch, newest, retained, subscribers, processes}; processes
-- counts the live ones whose presence was summed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local subs = 0
local alive = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. string.format('%d', now), '+inf')
for i = 1, #alive do
  local c = redis.call('HGET', ARGV[5] .. alive[i], ARGV[6])
  if c then subs = subs + tonumber(c) end
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'', 0, 0, subs, #alive} end
local gen = gen_of(KEYS[1])
local seq, ep, top, oldest = state_of(nil, true)
local retained = 0
if seq > 0 then retained = seq - oldest + 1 end
return {gen .. ep, seq, retained, subs, #alive}
