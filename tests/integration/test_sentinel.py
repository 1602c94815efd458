"""Redis Sentinel (issue 12): a master, a replica and three sentinels started
by the test (sentinel.py), workers and relays given a redis+sentinel:// URL.

The failover tests are chaos.py's rounds with one scripted fault instead of
random ones: SIGKILL of whichever server is master, twice, while clients on
every transport (long-poll, EventSource, WebSocket through nginx and
straight to a relay, one WebSocket on all channels) are subscribed and the
publishers go on; the old master comes back each time (as the master it
was configured as: the sentinels make it a replica). chaos.py's checker
then applies SPEC.md to everything observed: with replicated publishing
(--redis-wait-replicas 1, appendfsync always) nothing acknowledged is lost
and no channel changes epoch, so no client is reset; with Redis's default
settings a failover may lose acknowledged messages, but only across an
epoch change that every client saw as a reset, never as a silent gap.
"""
import asyncio
import signal
import time

import pytest

import chaos
import clients as C
from sentinel import SentinelStack, info, resp
from stack import RESULTS, free_port, unique_channel, wait_for


@pytest.fixture(autouse=True, scope="module")
def _nofile():
    C.raise_nofile()


def test_url_finds_the_master_and_publishes():
    s = SentinelStack(workers=1, relays=1).start()
    try:
        ch = unique_channel()
        st, body = s.publish("hello", channel=ch)
        assert st == 200, body
        st, doc, _ = s.poll(channel=ch, since=0)
        assert st == 200 and [m["content"] for m in doc["messages"]] == ["hello"], doc
        # The message is on the master the sentinels name, and replicated.
        s.wait_replicated()
        replica = s.node_ports[1 - s.master_index()]
        wait_for(lambda: resp(replica, "XLEN", "pw:h:" + ch) == 1, what="replication")
        # Every process logs which master a sentinel named.
        for name in ("worker-0.log", "relay-0.log"):
            assert "says master pwmaster is at 127.0.0.1:%d" % s.redis_port in s.log_text(name)
    finally:
        s.stop()


def test_a_dead_sentinel_is_skipped_and_an_unknown_master_is_not_believed():
    s = SentinelStack(workers=1, relays=0)
    dead = free_port()
    s.extra_env["REDIS_URL"] = "redis+sentinel://127.0.0.1:%d,%s/pwmaster" % (
        dead, ",".join("127.0.0.1:%d" % p for p in s.sentinel_ports))
    s.start()
    try:
        ch = unique_channel()
        assert s.publish("via the second sentinel", channel=ch)[0] == 200
        assert "connection to sentinel 127.0.0.1:%d failed" % dead in s.log_text("worker-0.log")
        # A master name no sentinel monitors: the worker keeps asking, and
        # answers 503 meanwhile, never a write anywhere.
        s.extra_env["REDIS_URL"] = s.sentinel_url().replace("/pwmaster", "/nosuch")
        s.workers[0].stop()
        with pytest.raises(AssertionError, match="reach Redis"):
            s.start_worker(0)  # its wait for Redis gives up: it is not connected
        st, h, body = s.request("POST", "/chat", b"content=x&channel=" + ch.encode(),
                                {"Content-Type": "application/x-www-form-urlencoded"})
        assert st == 503 and "Retry-After" in h, (st, body)
        wait_for(lambda: "sentinel does not know master nosuch" in s.log_text("worker-0.log"),
                 what="the refusal in the log")
    finally:
        s.stop()


def test_bad_sentinel_url_is_refused_at_start():
    import os
    import subprocess
    from stack import BUILD
    out = subprocess.run([os.path.join(BUILD, "pushwire-worker"), "--redis",
                          "redis+sentinel://127.0.0.1:1/"], capture_output=True, timeout=10)
    assert out.returncode != 0
    assert b"master name" in out.stderr, out.stderr


class FailoverRound(chaos.Round):
    """A chaos round whose only faults are failovers of the master."""

    FAILOVERS = 2

    def __init__(self, mode, seed):
        super().__init__(seed, mode, 0, 0, seed)
        self.history = 2000
        self.private = False
        self.redis_timeout = 1000
        self.failover_seconds = []
        self.written_replicas = []

    async def scheduler(self, until):
        s = self.s
        await asyncio.to_thread(s.wait_replicated)
        await asyncio.sleep(3)
        for k in range(self.FAILOVERS):
            victim, old_port = s.redis, s.redis_port
            self.ops["failover"] += 1
            self.event("SIGKILL the master (port %d)" % old_port)
            self.expect_down.add("redis")
            t = time.monotonic()
            await asyncio.to_thread(victim.stop, signal.SIGKILL)
            await asyncio.to_thread(s.failover_done, old_port)
            self.event("the sentinels promoted port %d" % s.redis_port)
            await C.wait_until(lambda: s.all_redis_up(), 30, 0.1)
            self.failover_seconds.append(round(time.monotonic() - t, 2))
            self.event("every process on the new master after %.2fs" % self.failover_seconds[-1])
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self.start_proc, "redis")  # the old master comes back
            self.expect_down.discard("redis")
            await asyncio.to_thread(s.wait_replicated, 30)
            self.event("port %d is a replica again" % old_port)
            await asyncio.sleep(3.0)  # publishing goes on; the old master must see none of it
            stats = await asyncio.to_thread(info, old_port, "commandstats")
            ours = {k: v for k, v in stats.items()
                    if k in ("cmdstat_evalsha", "cmdstat_eval")}
            if ours:
                self.violation("the old master (a replica now) was sent %s" % ours)


@pytest.mark.parametrize("mode", ["sentinel-strict", "sentinel"])
def test_failover(mode):
    seed = chaos.master_seed()
    r = FailoverRound(mode, seed)
    print("\nsentinel failover round %s (seed %d)" % (mode, seed), flush=True)
    r.run()
    line = "test_sentinel[%s]: failovers=%d every-process-moved-after=%s %s" % (
        mode, r.ops["failover"], r.failover_seconds, r.summary())
    print("RESULT " + line)
    RESULTS.append(line)
    assert not r.violations, r.report()
    assert r.ops["failover"] == FailoverRound.FAILOVERS
    assert r.stats["acked_deliveries_checked"] > 0, r.report()
    if mode == "sentinel-strict":
        assert r.stats["resets"] == 0, r.report()
