-- publish.lua - store and publish one message, atomically (after lib.lua).
--
-- KEYS: 1 server, 2 channel meta, 3 channel stream, 4 idempotency key.
-- ARGV: 1-3 gen_of, 4 fresh ep, 5 ttl (seconds), 6 content (a JSON string
--       literal), 7 history (messages kept), 8 pub/sub channel,
--       9 "1" to use the idempotency key, 10 its ttl (seconds),
--       11 "1" for replicated publishing (broker.h's wait_replicas): store
--       only; commit.lua publishes once replicas have it, 12 the command
--       that publishes: PUBLISH, or SPUBLISH on a cluster (default PUBLISH).
-- Returns {epoch, id, duplicate}: duplicate is 1 when the idempotency key
-- was seen within its ttl, and then nothing was stored or published.
--
-- Replicated publishing keeps, in the channel hash, `committed`: the
-- newest id whose replication WAIT confirmed (commit.lua). A channel
-- without it (created before replicated publishing was turned on) has
-- everything committed, so the first replicated store sets it to seq.
-- History keeps the newest ARGV[7] committed messages: the stored ones
-- not yet committed come on top (at most 256 of them: stores whose WAIT
-- failed are committed only by a later publish), and commit.lua trims
-- again once they are committed, so a reader never sees fewer.
local gen = gen_of(KEYS[1])
if ARGV[9] == '1' then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    return {string.sub(prev, 1, sp - 1), tonumber(string.sub(prev, sp + 1)), 1}
  end
end
local seq, ep = state_of(ARGV[5], false)
local replicated = ARGV[11] == '1'
local keep = tonumber(ARGV[7])
if replicated then
  redis.call('HSETNX', KEYS[2], 'committed', seq)
  local pending = seq + 1 - tonumber(redis.call('HGET', KEYS[2], 'committed'))
  keep = keep + math.min(math.max(pending, 0), 256)
end
seq = seq + 1
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sseq, sms = string.format('%d', seq), string.format('%d', ms)
redis.call('XADD', KEYS[3], 'MAXLEN', keep, sseq .. '-0', 't', sms, 'c', ARGV[6])
redis.call('HSET', KEYS[2], 'seq', seq)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
local epoch = gen .. ep
if not replicated then
  redis.call(ARGV[12] or 'PUBLISH', ARGV[8], epoch .. ' ' .. sseq .. ' ' .. sms .. ' ' .. ARGV[6])
end
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], epoch .. ' ' .. sseq, 'EX', ARGV[10])
end
return {epoch, seq, 0}
