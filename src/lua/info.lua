-- info.lua - a channel's state, for GET /channels/NAME (after lib.lua). It
-- creates nothing: a channel nobody has used has no epoch yet. subs.lua
-- counts its subscribers (their keys may be on another cluster node).
--
-- KEYS: 1 server, 2 channel meta, 3 channel stream.
-- ARGV: 1-3 gen_of, 4 fresh ep (a repair's).
-- Returns {epoch, newest, retained}.
if redis.call('EXISTS', KEYS[2]) == 0 then return {'', 0, 0} end
local gen = gen_of(KEYS[1])
local seq, ep, top, oldest = state_of(nil, true)
local retained = 0
if seq > 0 then retained = seq - oldest + 1 end
return {gen .. ep, seq, retained}
