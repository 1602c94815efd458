-- commit.lua - replicated publishing's second step (publish.lua's ARGV[11]):
-- the message is on enough replicas (WAIT said so), so count it committed
-- and publish it, with every stored message before it not yet committed,
-- from the stream. Also run for a duplicate publish (an
-- Idempotency-Key seen before), whose first attempt may not have got here:
-- subscribers drop a message they already have by its id.
--
-- KEYS: 1 server, 2 channel meta, 3 channel stream.
-- ARGV: 1 run_id of the server behind this connection, 2 the epoch and
--       3 the id publish.lua returned, 4 the pub/sub channel, 5 PUBLISH or
--       SPUBLISH (publish.lua's ARGV[12]; default PUBLISH), 6 history
--       (publish.lua's ARGV[7]; none: no trimming).
-- Returns 1, or 0 when the channel or the server is not the one the
-- message was stored in (it was then not published). The server is
-- lib.lua's gen_of identity: the run_id with the current replication id.
local me = ARGV[1] .. '/' .. (string.match(redis.call('INFO', 'replication'),
                                           'master_replid:(%x+)') or '')
local srv = redis.call('HMGET', KEYS[1], 'runid', 'gen')
local m = redis.call('HMGET', KEYS[2], 'ep', 'committed')
if srv[1] ~= me or not srv[2] or not m[1] or srv[2] .. m[1] ~= ARGV[2] then
  return 0
end
local id = tonumber(ARGV[3])
local committed = tonumber(m[2]) or 0
if id <= committed then return 1 end -- a later id's commit published it
redis.call('HSET', KEYS[2], 'committed', id)
-- Every message up to id is on the replicas too (replication keeps the
-- order of writes, and ids are stored in order): publish those not yet
-- committed with it, in order, so that commits arriving out of order (two
-- publishers) still deliver ids in order. A long stretch (a watermark that
-- lagged across a failover) is not replayed: subscribers see a gap and read
-- the history instead.
local from = committed + 1
if id - committed > 256 then from = id end
local es = redis.call('XRANGE', KEYS[3], string.format('%d', from) .. '-0', ARGV[3] .. '-0')
for i = 1, #es do
  local e = es[i]
  redis.call(ARGV[5] or 'PUBLISH', ARGV[4], ARGV[2] .. ' ' .. string.match(e[1], '^%d+') .. ' ' .. e[2][2] ..
             ' ' .. e[2][4])
end
-- History: the newest ARGV[6] committed messages, and the stored ones
-- after them (publish.lua kept room for those).
if ARGV[6] then
  local seq = tonumber(redis.call('HGET', KEYS[2], 'seq')) or id
  redis.call('XTRIM', KEYS[3], 'MAXLEN', tonumber(ARGV[6]) + math.min(math.max(seq - id, 0), 256))
end
return 1
