-- lib.lua - what the publish and read scripts share; the Makefile puts it
-- in front of each of them (src/lua_scripts.h).
--
-- gen_of: the server generation, the first part of every epoch. It changes
-- when the Redis server answering is not the one that last answered (a
-- restart, a failover) and that server may have lost acknowledged writes:
-- then ids may have gone back and clients must reset.
--   ARGV[1] run_id of the server behind this connection
--   ARGV[2] "1" when that server cannot have lost acknowledged writes
--   ARGV[3] a fresh random generation
--
-- meta_of: the channel's state, KEYS[2] a hash {seq, ep} and KEYS[3] a
-- stream of {t, c}. A missing hash means a new incarnation of the channel:
-- a fresh ep (ARGV[4]), ids from 1, and any leftover stream is dropped so
-- that stream ids keep increasing.
local function gen_of(srv)
  local cur = redis.call('HMGET', srv, 'runid', 'gen')
  local gen = cur[2]
  if cur[1] == ARGV[1] and gen then return gen end
  if (not gen) or ARGV[2] ~= '1' then gen = ARGV[3] end
  redis.call('HSET', srv, 'runid', ARGV[1], 'gen', gen)
  return gen
end
local function meta_of(ttl)
  local m = redis.call('HMGET', KEYS[2], 'seq', 'ep')
  if m[2] then return tonumber(m[1]) or 0, m[2] end
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], 'seq', 0, 'ep', ARGV[4])
  redis.call('EXPIRE', KEYS[2], ttl)
  return 0, ARGV[4]
end
