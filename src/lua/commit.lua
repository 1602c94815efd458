-- commit.lua - replicated publishing's second step (publish.lua's ARGV[11]):
-- the message is on enough replicas (WAIT said so), so count it committed
-- and publish it from the stream. Also run for a duplicate publish (an
-- Idempotency-Key seen before), whose first attempt may not have got here:
-- subscribers drop a message they already have by its id.
--
-- KEYS: 1 server, 2 channel meta, 3 channel stream.
-- ARGV: 1 run_id of the server behind this connection, 2 the epoch and
--       3 the id publish.lua returned, 4 the pub/sub channel.
-- Returns 1, or 0 when the channel or the server is not the one the
-- message was stored in (it was then not published).
local srv = redis.call('HMGET', KEYS[1], 'runid', 'gen')
local m = redis.call('HMGET', KEYS[2], 'ep', 'committed')
if srv[1] ~= ARGV[1] or not srv[2] or not m[1] or srv[2] .. m[1] ~= ARGV[2] then
  return 0
end
local id = tonumber(ARGV[3])
if id > (tonumber(m[2]) or 0) then redis.call('HSET', KEYS[2], 'committed', id) end
local e = redis.call('XRANGE', KEYS[3], ARGV[3] .. '-0', ARGV[3] .. '-0')[1]
if e then
  redis.call('PUBLISH', ARGV[4], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. e[2][2] .. ' ' .. e[2][4])
end
return 1
