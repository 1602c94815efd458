-- channels.lua - every channel with subscribers, summed over the live
-- processes' presence hashes, for GET /channels.
--
-- KEYS: 1 the procs set.  ARGV: 1 prefix of the presence hashes.
-- Returns {processes, name1, count1, name2, count2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
local sum, names = {}, {}
for i = 1, #alive do
  local h = redis.call('HGETALL', ARGV[1] .. alive[i])
  for j = 1, #h, 2 do
    local n = tonumber(h[j + 1]) or 0
    if not sum[h[j]] then names[#names + 1] = h[j]; sum[h[j]] = 0 end
    sum[h[j]] = sum[h[j]] + n
  end
end
table.sort(names)
local out = {#alive}
for _, k in ipairs(names) do
  if sum[k] > 0 then out[#out + 1] = k; out[#out + 1] = sum[k] end
end
return out
