-- read.lua - a channel's state and the messages after a position (after
-- lib.lua). The reset rules are SPEC.md's: a client is reset when it names
-- another epoch, or since is ahead of the newest id, or older than the
-- oldest retained message minus one; it then gets the retained history.
--
-- KEYS: 1 server, 2 channel meta, 3 channel stream.
-- ARGV: 1-3 gen_of, 4 fresh ep, 5 ttl of a channel nobody published to,
--       6 "1" when since is given, 7 since, 8 the client's epoch ("" for
--       none), 9 byte budget of the messages (at least one is returned),
--       10 "1" for replicated publishing (publish.lua): only committed
--       messages are read.
-- Returns {epoch, newest, reset, more, newest_time, newest_content,
--          id1, time1, content1, ...}: more is 1 when the budget stopped
--          the list short of newest.
local gen = gen_of(KEYS[1])
local seq, ep, top, oldest = state_of(ARGV[5], true)
local stored = seq
-- Replicated publishing: only what is committed is read. A client's
-- since between committed and seq is not ahead of the channel: it saw that
-- id, so it was committed, and the watermark here lags (its write had not
-- reached this server when it was promoted); the next commit moves it.
if ARGV[10] == '1' then
  local committed = tonumber(redis.call('HGET', KEYS[2], 'committed'))
  if committed and committed < seq then
    local c = committed
    if ARGV[6] == '1' and (ARGV[8] == '' or ARGV[8] == gen .. ep) then
      local since = tonumber(ARGV[7]) or 0
      if since > c and since <= seq then c = since end
    end
    seq = c
    top = c > 0 and redis.call('XRANGE', KEYS[3], string.format('%d', c) .. '-0',
                               string.format('%d', c) .. '-0')[1] or nil
    if oldest > seq + 1 then oldest = seq + 1 end
  end
end
-- Nobody published yet: the state lives on while it is read, and goes
-- ARGV[5] seconds after the last read (polls to random names cost Redis
-- only that long).
if stored == 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
local epoch = gen .. ep
local out = {epoch, seq, 0, 0, 0, ''}
if top then out[5] = tonumber(top[2][2]); out[6] = top[2][4] end
local has_since = ARGV[6] == '1'
local since = tonumber(ARGV[7]) or 0
if (ARGV[8] ~= '' and ARGV[8] ~= epoch) or
   (has_since and (since > seq or since < oldest - 1)) then
  out[3] = 1; since = oldest - 1
elseif not has_since then
  return out
end
if since >= seq then return out end
local budget = tonumber(ARGV[9])
local used, n = 0, 0
local cursor = since + 1
while true do
  local batch = redis.call('XRANGE', KEYS[3], string.format('%d', cursor) .. '-0',
                           string.format('%d', seq) .. '-0', 'COUNT', 128)
  for i = 1, #batch do
    local e = batch[i]
    local c = e[2][4]
    -- A message costs its content plus what its envelope adds on the way
    -- out (a WebSocket frame or an EventSource event carries the channel,
    -- the epoch, the id and the time: about 160 bytes at most), so that a
    -- batch of tiny messages encodes to about the budget, not four times it.
    local cost = #c + 160
    if n > 0 and used + cost > budget then out[4] = 1; return out end
    used = used + cost; n = n + 1
    out[#out + 1] = tonumber(string.match(e[1], '^%d+'))
    out[#out + 1] = tonumber(e[2][2])
    out[#out + 1] = c
  end
  if #batch < 128 then break end
  cursor = tonumber(string.match(batch[#batch][1], '^%d+')) + 1
end
return out
