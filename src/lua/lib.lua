-- lib.lua - what the publish and read scripts share; the Makefile puts it
-- in front of each of them (src/lua_scripts.h).
--
-- gen_of: the server generation, the first part of every epoch. It changes
-- when the Redis server answering is not the one that last answered (a
-- restart, a failover) and that server may have lost acknowledged writes:
-- then ids may have gone back and clients must reset.
-- srv is PREFIXserver, or on a cluster the channel's own hash (a script
-- may touch only its slot's keys: the generation is then kept per channel,
-- and changes on the channels of the shard that changed).
--   ARGV[1] run_id of the server behind this connection; on a cluster
--           RUNID@NODEID (CLUSTER MYID, which survives restarts)
--   ARGV[2] what the server is configured for: the first "1" when it runs
--           with appendonly and appendfsync always, the second "1" with
--           replicated publishing (--redis-wait-replicas), the third "1" in
--           a replicated topology (Sentinel, Cluster, replicated
--           publishing), where the replication ids are read here; else the
--           fourth is "1" when the client saw master_replid2 non-zero
--   ARGV[3] a fresh random generation
-- "The one that last answered" is the run_id with the server's current
-- replication id (INFO, read here, never cached by a client; about 3-7 us
-- a call, so only in a replicated topology: a lone server's data set is
-- not replaced without a restart, which changes the run_id): a server's
-- data set is replaced whenever its replication id changes (a full sync
-- from another master, a promotion), so the same run of the same server
-- may hold an older copy of its own writes (seen: a master restarted from
-- a stale RDB resynced its replica, which was then promoted; it found the
-- channel stamped with its own run_id, 14 writes behind). Then, as for
-- another server: the generation is kept only when nothing acknowledged
-- can be missing here:
--   the same run on another replication id: never promoted (a master
--     changes its id, clearing master_replid2, when it gets its first
--     replica or frees its backlog after repl-backlog-ttl without one: its
--     data set is the same; seen in CI: a cluster's channel reset when its
--     master's replica first synced), or replicated publishing;
--   this server restarted (same node): appendfsync always and never
--     promoted from a replica (master_replid2 all zeros), or replicated
--     publishing and promoted (it has every committed message, readers saw
--     no other);
--   a channel another cluster node wrote: it came by a slot migration
--     (MIGRATE moves a key whole), which holds when this node was never
--     promoted, or with replicated publishing.
-- (Left: a replica of a copy of our own writes, promoted, that then sits
-- past repl-backlog-ttl without a replica loses its master_replid2 and
-- passes for never promoted, on channels not written in between.)
local function gen_of(srv)
  local replid, promoted = '', string.sub(ARGV[2], 4, 4) == '1'
  if string.sub(ARGV[2], 3, 3) == '1' then
    local info = redis.call('INFO', 'replication')
    replid = string.match(info, 'master_replid:(%x+)') or ''
    promoted = string.find(string.match(info, 'master_replid2:(%x+)') or '', '[^0]') ~= nil
  end
  local me = ARGV[1] .. '/' .. replid
  local cur = redis.call('HMGET', srv, 'runid', 'gen')
  local gen = cur[2]
  if cur[1] == me and gen then return gen end
  if gen then
    local node = string.match(ARGV[1], '@(.+)$')
    local prev = cur[1] and string.match(cur[1], '@([^/]+)')
    local always, wait = string.sub(ARGV[2], 1, 1) == '1', string.sub(ARGV[2], 2, 2) == '1'
    local same_run = string.match(cur[1] or '', '^[^/]*') == ARGV[1]
    local keep
    if same_run or (node and prev and node ~= prev) then
      keep = not promoted or wait
    else
      keep = (always and not promoted) or (wait and promoted)
    end
    if not keep then gen = ARGV[3] end
  else
    gen = ARGV[3]
  end
  redis.call('HSET', srv, 'runid', me, 'gen', gen)
  return gen
end
-- state_of: the channel's state, KEYS[2] a hash {seq, ep} and KEYS[3] a
-- stream of {t, c} with ids "N-0". A missing hash means a new incarnation
-- of the channel: a fresh ep (ARGV[4]), ids from 1, and any leftover stream
-- is dropped so that stream ids keep increasing.
--
-- Invariant: the stream holds ids first..seq, every one of them (exact
-- MAXLEN trimming keeps the newest; an empty stream only when seq is 0).
-- publish.lua writes the stream entry before seq, so a script cut short
-- leaves at worst one stored message that seq does not count: seq catches
-- up to it (same ep, nothing was skipped). Any other disagreement (a
-- message missing from the tail or, with full, a hole inside) means
-- messages are gone: the channel starts a new incarnation, so every client
-- is reset instead of skipping ids silently. Both repairs are logged in
-- the Redis log.
-- Returns seq, ep, the newest entry (or nil) and, with full, the oldest id.
local function id_of(entry) return tonumber(string.match(entry[1], '^%d+')) end
-- A new incarnation: an empty stream, seq 0, a fresh ep; ttl for a new hash
-- (a repaired one keeps its own).
local function incarnation(ttl)
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], 'seq', 0, 'ep', ARGV[4])
  if ttl then redis.call('EXPIRE', KEYS[2], ttl) end
  return 0, ARGV[4], nil, 1
end
local function state_of(ttl, full)
  local m = redis.call('HMGET', KEYS[2], 'seq', 'ep')
  if not m[2] then return incarnation(ttl) end
  local seq, ep = tonumber(m[1]) or 0, m[2]
  local top = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
  local last = top and id_of(top) or 0
  local oldest = seq + 1
  local sound = last >= seq
  if sound and full and top then
    oldest = id_of(redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1])
    sound = redis.call('XLEN', KEYS[3]) == last - oldest + 1
  end
  if sound then
    if last > seq then
      redis.log(redis.LOG_WARNING, 'pushwire: ' .. KEYS[2] .. ' seq ' .. seq ..
                ' behind its stream (' .. last .. '): counted')
      redis.call('HSET', KEYS[2], 'seq', last)
      seq = last
    end
    return seq, ep, top, oldest
  end
  redis.log(redis.LOG_WARNING, 'pushwire: ' .. KEYS[2] .. ' seq ' .. seq .. ' but its stream ends at ' ..
            last .. (full and top and (' from ' .. oldest) or '') .. ': messages lost, new incarnation')
  return incarnation()
end
