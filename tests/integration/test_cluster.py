"""Redis Cluster (three masters with a replica each, started by the test):
channels spread over every shard, each process subscribed on each shard to
the channels it serves and nothing else; then publishing and clients on
every transport held across a SIGKILL failover of one master and a slot
migration (CLUSTER SETSLOT + MIGRATE) of a channel's slot, checked by
chaos.py's checker: every client's sequence exact or explicitly reset."""
import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest
import websockets

import chaos
import clients as C
from cluster import ClusterStack, info, resp
from stack import unique_channel, wait_for

pytestmark = pytest.mark.skipif(
    subprocess.run(["redis-server", "--version"], capture_output=True).returncode != 0,
    reason="redis-server is needed")

RESULTS = []


def test_channels_spread_over_shards_and_each_subscribed_where_it_lives():
    s = ClusterStack(workers=2, relays=1)
    s.start()
    try:
        masters = s.masters()
        assert len(masters) == 3
        by_master = {}
        chans = []
        while len(by_master) < 3 or min(len(v) for v in by_master.values()) < 2:
            ch = unique_channel("cl")
            chans.append(ch)
            by_master.setdefault(s.master_of(ch), []).append(ch)
        # Held long-polls and WebSockets on every channel.
        async def run():
            wss = []
            for ch in chans:
                ws = await websockets.connect("ws://127.0.0.1:%d/status?channel=%s&since=0"
                                              % (s.port, ch), ping_interval=None,
                                              compression=None, open_timeout=10)
                wss.append(ws)
            # Threads of their own (asyncio.to_thread's pool is smaller than
            # the number of held polls, and the publishes would wait).
            pool = concurrent.futures.ThreadPoolExecutor(len(chans))
            polls = [asyncio.get_running_loop().run_in_executor(
                pool, lambda ch=ch: s.poll(channel=ch, since=0, timeout=20)) for ch in chans]
            await asyncio.sleep(1.5)
            # Each shard's SSUBSCRIBE connections carry its own channels only.
            for m in masters:
                subscribed = set(resp(m, "PUBSUB", "SHARDCHANNELS"))
                mine = {"pw:{%s}:msg" % ch for ch in by_master.get(m, [])}
                assert subscribed == mine, (m, subscribed, mine)
                assert not [c for c in resp(m, "PUBSUB", "CHANNELS") if not c.startswith("pw:ping:")]
            for ch in chans:
                st, doc = await asyncio.to_thread(s.publish, "to " + ch, ch)
                assert st == 200 and doc["id"] == 1, doc
            for ch, t in zip(chans, polls):
                st, doc, _ = await t
                assert st == 200 and [m["content"] for m in doc["messages"]] == ["to " + ch], doc
            for ch, ws in zip(chans, wss):
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert m["content"] == "to " + ch and m["id"] == 1 and m["channel"] == ch, m
                await ws.close()
            pool.shutdown()
        asyncio.run(run())
        # Keys of one channel in one slot, tagged {channel}; presence and
        # heartbeats under {global}.
        ch = chans[0]
        m = s.master_of(ch)
        keys = set(resp(m, "KEYS", "pw:{%s}*" % ch))
        assert keys == {"pw:{%s}:ch" % ch, "pw:{%s}:h" % ch}, keys
        g = s.master_of("global")
        assert resp(g, "EXISTS", "pw:{global}:procs") == 1
        st, h, b = s.get("/channels/" + ch)
        doc = json.loads(b)
        assert st == 200 and doc["id"] == 1 and doc["retained"] == 1 and doc["processes"] == 3, b
    finally:
        s.stop()


def test_plain_url_on_a_cluster_node_is_refused_with_a_reason():
    s = ClusterStack(workers=0, relays=0)
    try:
        s.start_redis()
        url = "redis://127.0.0.1:%d" % s.node_ports[0]
        p = subprocess.Popen([os.path.join(s.build or __import__("stack").BUILD, "pushwire-worker"),
                              "--listen", "unix:" + s.path("x.sock"), "--redis", url],
                             stderr=subprocess.PIPE, env=s.env())
        try:
            time.sleep(2.0)
        finally:
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=10)
        assert b"cluster node (use redis+cluster://)" in err, err
    finally:
        s.stop(check=False)


class ClusterRound(chaos.Round):
    """A chaos round whose faults are a failover of one master and a slot
    migration of a channel's slot, both while everything runs."""

    def __init__(self, seed):
        super().__init__(seed, "cluster", 0, 0, seed)
        self.history = 2000
        self.private = False
        self.redis_timeout = 1000
        self.failover_seconds = None
        self.migrated = {}
        self.epoch_before = {}
        self.failed_shard = set()

    async def scheduler(self, until):
        s = self.s
        await asyncio.sleep(3)
        # 1. Kill the master of channel a; its replica takes over.
        ch = self.channel_of["a"]
        old = s.master_of(ch)
        self.failed_shard = {c for c in self.channel_of.values() if s.master_of(c) == old}
        victim = s.nodes[s.node_ports.index(old)]
        self.ops["failover"] += 1
        self.event("SIGKILL the master of %s (port %d)" % (ch, old))
        self.expect_down.add("redis")
        t = time.monotonic()
        await asyncio.to_thread(victim.stop, signal.SIGKILL)
        await asyncio.to_thread(s.failover_done, old)
        self.event("the cluster promoted port %d" % s.master_of(ch))
        await C.wait_until(lambda: s.all_redis_up(), 30, 0.1)
        self.failover_seconds = round(time.monotonic() - t, 2)
        self.event("every process on the new master after %.2fs" % self.failover_seconds)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(s.start_redis)  # the old master comes back as a replica
        self.expect_down.discard("redis")
        self.event("port %d back" % old)
        await asyncio.sleep(2.0)
        # 2. Move channel b's slot to another master while it is published
        # to, in small batches (a channel's two keys may sit on both sides
        # for a moment: ASK, TRYAGAIN).
        promoted = s.master_of(self.channel_of["a"])
        for short in ("b", "bulk"):
            ch = self.channel_of[short]
            src = s.master_of(ch)
            # To a master that was never a replica: the channel keeps its
            # epoch (into the promoted one it would be reset: that node
            # cannot tell a migrated channel from its old master's copy).
            dst = [m for m in s.masters() if m not in (src, promoted)][0]
            self.epoch_before[ch] = (await asyncio.to_thread(s.channel_state, ch))[0]
            slot = s.keyslot("pw:{%s}:ch" % ch)
            self.ops["migration"] += 1
            self.event("migrate slot %d (%s) from %d to %d" % (slot, ch, src, dst))
            n = await asyncio.to_thread(s.migrate_slot, slot, src, dst, 0.3, 1)
            self.migrated[ch] = (src, dst)
            self.event("slot %d on %d (%d keys moved)" % (slot, dst, n))
            await asyncio.sleep(2.0)
        # No process subscribes where a channel no longer lives.
        for short in ("b", "bulk"):
            ch = self.channel_of[short]
            src, dst = self.migrated[ch]
            left = [c for c in await asyncio.to_thread(resp, src, "PUBSUB", "SHARDCHANNELS")
                    if ch in c]
            if left:
                self.violation("%s still subscribed on %d after its slot moved" % (ch, src))
        await asyncio.sleep(max(0.0, until - time.monotonic()))


def test_failover_and_slot_migration_lose_nothing():
    seed = chaos.master_seed()
    r = ClusterRound(seed)
    print("\ncluster round (seed %d)" % seed, flush=True)
    r.run()
    line = "test_cluster: failover=%d migrations=%d every-process-moved-after=%ss %s" % (
        r.ops["failover"], r.ops["migration"], r.failover_seconds, r.summary())
    print("RESULT " + line)
    RESULTS.append(line)
    assert not r.violations, r.report()
    assert r.ops["failover"] == 1 and r.ops["migration"] == 2
    # A migration keeps the epoch (no reset) where no failover touched it.
    for ch, ep in r.epoch_before.items():
        if ch not in r.failed_shard:
            assert r.final[ch][0] == ep, (ch, ep, r.final[ch][0], r.report())
    assert r.stats["acked_deliveries_checked"] > 0, r.report()
