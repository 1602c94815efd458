"""Resilience under faults and load, end to end through nginx.

Every scenario runs real clients (tests/integration/clients.py: long-poll
clients that re-poll with since/epoch, WebSocket clients that reconnect with
since/epoch, both with backoff) against a publisher that retries each message
with its own Idempotency-Key until a 200, breaks something on purpose, and
then checks that every client got every published message exactly once, in
order. Each test prints one line

    RESULT <test>: published=N received=N lost=N duplicated=N

where received/lost/duplicated are summed over the clients (a client is
expected to receive every published message once: expected = clients x
published).

Not repeated here (see test_faults.py): a Redis restart without persistence
(reset), everysec persistence (new epoch), 503 on a stopped Redis with a few
polls, graceful SIGTERM of one worker with held requests.
"""
import asyncio
import contextlib
import gc
import json
import os
import random
import signal
import subprocess
import time

import pytest

import clients as C
import fcgi
import wsraw
from scenario import cancel, check, converge, report, run, start_tasks
from stack import RESULTS, unique_channel, PLAIN_BUILD, Proc, Stack, wait_for

HOST = "127.0.0.1"


@pytest.fixture(autouse=True, scope="module")
def _nofile():
    # Each WebSocket or keep-alive client is one fd here (and two in nginx).
    C.raise_nofile()


def all_alive(s):
    procs = {"nginx": s.nginx, "redis": s.redis}
    procs.update({"worker-%d" % i: w for i, w in enumerate(s.workers)})
    procs.update({"relay-%d" % i: r for i, r in enumerate(s.relays)})
    dead = {k: p.p.returncode for k, p in procs.items() if not p.alive()}
    assert not dead, "processes died: %r (logs in %s)" % (dead, s.dir)


def ws_clients(s):
    return sum(s.relay_metrics_get(i)["pushwire_ws_clients"]
               for i, r in enumerate(s.relays) if r.alive())


@contextlib.contextmanager
def stack_ctx(s):
    """Stop a manually started stack; its log/exit checks only when the test passed."""
    ok = False
    try:
        yield s
        ok = True
    finally:
        s.stop(check=ok)


# ---- 1. a worker killed while it holds long-polls -----------------------------------

@pytest.mark.stack(workers=2)
def test_worker_sigkill_with_held_longpolls(fresh_stack):
    s = fresh_stack
    ch = unique_channel("kw")
    facts = {}

    async def scenario():
        clients = [C.LongPollClient(HOST, s.port, ch, since=0, poll_timeout=20, name="lp%d" % k)
                   for k in range(50)]
        tasks = await start_tasks(clients)
        assert await C.wait_until(lambda: s.held() >= 50, 20), "50 polls never held"
        facts["held_before"] = (s.metrics(0)["pushwire_held_longpolls"],
                                s.metrics(1)["pushwire_held_longpolls"])
        pub = C.Publisher(HOST, s.port, ch, rate=50, tag="kw")
        ptask = asyncio.create_task(pub.run(count=200))
        assert await C.wait_until(lambda: len(pub.ids) >= 100, 30)
        # Kill it at a moment it holds polls (right after a message, the
        # clients are between two polls for a few ms).
        held = 0
        for _ in range(200):
            held = s.metrics(1)["pushwire_held_longpolls"]
            if held >= 10:
                break
            await asyncio.sleep(0.005)
        s.workers[1].stop(signal.SIGKILL)
        facts["held_on_killed"] = held
        assert await C.wait_until(lambda: len(pub.ids) >= 150, 30)
        await asyncio.to_thread(s.start_worker, 1)
        await asyncio.wait_for(ptask, 60)
        await converge(clients, pub, 40)
        await cancel(tasks)
        return clients, pub

    clients, pub = run(scenario(), 150)
    print("\n  held per worker before=%r, held on worker 1 when killed=%d" % (
        facts["held_before"], facts["held_on_killed"]))
    t = report("test_worker_sigkill_with_held_longpolls", clients, pub)
    assert facts["held_on_killed"] > 0, "worker 1 held nothing when killed: the test proved nothing"
    all_alive(s)
    check(t, clients, pub)
    assert t["published"] == 200


# ---- 2. a relay killed with WebSocket clients ----------------------------------------

@pytest.mark.stack(workers=2, relays=2)
def test_relay_sigkill_websockets_reconnect_with_since(fresh_stack):
    s = fresh_stack
    ch = unique_channel("kr")
    facts = {}

    async def scenario():
        clients = [C.WsClient(HOST, s.port, ch, since=0, name="ws%d" % k) for k in range(50)]
        tasks = await start_tasks(clients)
        assert await C.wait_until(lambda: ws_clients(s) >= 50, 20), "50 WebSockets never open"
        facts["per_relay"] = [s.relay_metrics_get(i)["pushwire_ws_clients"] for i in range(2)]
        pub = C.Publisher(HOST, s.port, ch, rate=50, tag="kr")
        ptask = asyncio.create_task(pub.run(count=200))
        assert await C.wait_until(lambda: len(pub.ids) >= 100, 30)
        facts["on_killed"] = s.relay_metrics_get(1)["pushwire_ws_clients"]
        s.relays[1].stop(signal.SIGKILL)
        # They come back through nginx (to relay 0) with since.
        assert await C.wait_until(lambda: s.relay_metrics_get(0)["pushwire_ws_clients"] >= 50, 30), \
            "clients did not reconnect to the surviving relay"
        await asyncio.wait_for(ptask, 60)
        await converge(clients, pub, 40)
        await cancel(tasks)
        return clients, pub

    clients, pub = run(scenario(), 150)
    s.start_relay(1)  # the harness expects every relay to stop cleanly
    reconnected = sum(1 for c in clients if c.sessions > 1)
    print("\n  WebSockets per relay before=%r, on the killed relay=%d, clients that reconnected=%d" % (
        facts["per_relay"], facts["on_killed"], reconnected))
    t = report("test_relay_sigkill_websockets_reconnect_with_since", clients, pub)
    assert facts["on_killed"] > 0, "relay 1 had no client when killed: the test proved nothing"
    assert reconnected >= facts["on_killed"]
    all_alive(s)
    check(t, clients, pub)
    assert t["published"] == 200


# ---- 3. Redis unreachable for 10 s, twice, with 1,000 clients ------------------------

@pytest.mark.stack(workers=2, relays=1,
                   worker_args=["--redis-timeout", "1000"], relay_args=["--redis-timeout", "1000"],
                   redis_args=["--appendonly", "yes", "--appendfsync", "always"])
def test_redis_outages_with_1000_clients(fresh_stack):
    s = fresh_stack
    ch = unique_channel("ro")
    facts = {}
    N_LP, N_WS, OUTAGE = 800, 200, 10.0

    async def outage(name, pub, down, up):
        before = pub.statuses[503]
        await asyncio.sleep(2.0)
        t0 = time.monotonic()
        await asyncio.to_thread(down)
        await asyncio.sleep(OUTAGE)
        during = pub.statuses[503] - before
        await asyncio.to_thread(up)
        recovered = await C.wait_until(lambda: s.all_redis_up(), 30, 0.25)
        facts[name] = {"503s": during, "recovered_after_s": round(time.monotonic() - t0 - OUTAGE, 1),
                       "held_after": s.held(), "ws_after": ws_clients(s)}
        assert recovered, "%s: processes did not reconnect to Redis by themselves" % name
        assert during > 0, "%s: no publish got a 503 during the outage" % name
        all_alive(s)

    async def scenario():
        lps = [C.LongPollClient(HOST, s.port, ch, since=0, poll_timeout=30, think=2.0,
                                name="lp%d" % k) for k in range(N_LP)]
        wss = [C.WsClient(HOST, s.port, ch, since=0, name="ws%d" % k) for k in range(N_WS)]
        tasks = await start_tasks(wss + lps, stagger=0.05)
        assert await C.wait_until(lambda: s.held() >= N_LP and ws_clients(s) >= N_WS, 60, 0.5), \
            "1000 clients never held (held=%d ws=%d)" % (s.held(), ws_clients(s))
        facts["holding"] = (s.held(), ws_clients(s))
        pub = C.Publisher(HOST, s.port, ch, rate=2, tag="ro")
        ptask = asyncio.create_task(pub.run())
        await outage("sigstop", pub, lambda: s.redis.send(signal.SIGSTOP),
                     lambda: s.redis.send(signal.SIGCONT))
        await outage("sigkill", pub, lambda: s.redis.stop(signal.SIGKILL), s.start_redis)
        await asyncio.sleep(2.0)
        pub.stop()
        await asyncio.wait_for(ptask, 60)
        await converge(lps + wss, pub, 60)
        await cancel(tasks)
        return lps, wss, pub

    lps, wss, pub = run(scenario(), 220)
    print("\n  holding=%r outages=%r" % (facts["holding"], {k: facts[k] for k in ("sigstop", "sigkill")}))
    report("  long-poll", lps, pub)
    report("  websocket", wss, pub)
    t = report("test_redis_outages_with_1000_clients", lps + wss, pub)
    all_alive(s)
    check(t, lps + wss, pub)


# ---- 4. soak: 1,000 subscribers coming and going for 60 s, memory and fds --------------

def soak_pids(s):
    pids = {"redis": s.redis.pid}
    for i, w in enumerate(s.workers):
        pids["worker-%d" % i] = w.pid
    for i, r in enumerate(s.relays):
        pids["relay-%d" % i] = r.pid
    for k, p in enumerate(C.nginx_workers(s.nginx.pid)):
        pids["nginx-w%d" % k] = p
    return pids


def fd_figures(s, pids):
    """{name: (open fds, kept-alive nginx<->worker unix connections, orphaned
    unix connections whose peer is closed)}."""
    table = C.unix_socket_table()
    workers = [w.pid for w in s.workers]
    ngx = C.nginx_workers(s.nginx.pid)
    out = {}
    for name, pid in pids.items():
        if name.startswith("worker"):
            linked, orphans = C.unix_links(pid, table, ngx)
        elif name.startswith("nginx"):
            linked, orphans = C.unix_links(pid, table, workers)
        else:
            linked, orphans = 0, 0
        out[name] = (C.fd_count(pid), linked, orphans)
    return out


def test_soak_1000_subscribers_churn_memory_and_fds():
    s = Stack(workers=2, relays=2)
    DURATION, WARMUP, RATE = 60.0, 20.0, 10
    N_LP, N_WS = 500, 500
    samples = []  # (t, {name: rss kB})
    with stack_ctx(s):
        # The optimised build: ASan's quarantine would make RSS grow by design.
        s.start_redis()
        for i in range(2):
            s.start_worker(i, build=PLAIN_BUILD)
        for i in range(2):
            s.start_relay(i, build=PLAIN_BUILD)
        s.start_nginx()
        ch = unique_channel("soak")
        pids = soak_pids(s)
        fds_before = fd_figures(s, pids)
        fd_targets_before = {k: C.fd_targets(p) for k, p in pids.items()}
        rng = random.Random(4)

        async def sampler(t0):
            while True:
                samples.append((time.monotonic() - t0, {k: C.rss_kb(p) for k, p in pids.items()}))
                await asyncio.sleep(5.0)

        async def scenario():
            # Half of the clients come and go (sessions of 3-20 s, away 0.5-5 s:
            # long-polls drop their held request, WebSockets close or vanish);
            # the others stay. All of them resume with since.
            churn = (3.0, 20.0, 0.5, 5.0)
            lps = [C.LongPollClient(HOST, s.port, ch, since=0, poll_timeout=25, think=1.0,
                                    name="lp%d" % k, churn=churn if k % 2 else None, seed=k)
                   for k in range(N_LP)]
            wss = [C.WsClient(HOST, s.port, ch, since=0, name="ws%d" % k,
                              churn=churn if k % 2 else None, seed=10000 + k) for k in range(N_WS)]
            mixed = lps + wss
            rng.shuffle(mixed)
            samples.append((-1.0, {k: C.rss_kb(p) for k, p in pids.items()}))
            tasks = await start_tasks(mixed, stagger=0.05)
            assert await C.wait_until(lambda: s.held() + ws_clients(s) >= 900, 60, 0.5)
            t0 = time.monotonic()
            stask = asyncio.create_task(sampler(t0))
            pub = C.Publisher(HOST, s.port, ch, rate=RATE, tag="soak")
            await pub.run(duration=DURATION)
            # Stragglers still away come back with since and catch up.
            await converge(lps + wss, pub, 60)
            samples.append((time.monotonic() - t0, {k: C.rss_kb(p) for k, p in pids.items()}))
            await cancel([stask] + tasks)
            return lps, wss, pub

        lps, wss, pub = run(scenario(), 200)
        own = C.describe_fds({fd: t for fd, t in C.fd_targets(os.getpid()).items()
                              if t.startswith("socket:")})
        gc.collect()  # a connection cancelled mid-handshake may linger until collected

        # Every client is gone: the servers must be back to their fds, but
        # for idle kept-alive nginx -> worker connections (upstream
        # keepalive, bounded by UPSTREAM_KEEPALIVE, closed after 60 s idle).
        def fds_settled():
            now = fd_figures(s, pids)
            return all(now[k][0] - now[k][1] <= fds_before[k][0] - fds_before[k][1] + 3 and
                       now[k][2] == 0 for k in now) and now
        wait_for(lambda: s.held() == 0 and ws_clients(s) == 0, timeout=20, what="clients released")
        wait_for(lambda: all(s.metrics(i)["pushwire_open_requests"] == 0 for i in range(2)),
                 timeout=20, what="no open requests in the workers")
        try:
            fds_after = wait_for(fds_settled, timeout=20, interval=0.5, what="fds back")
        except AssertionError:
            fds_after = fd_figures(s, pids)

        churned = [c for c in lps + wss if c.leaves]
        if own:
            print("\n  sockets still open in the test process after the clients stopped: %s" % own[:10])
        print("\n  soak: %d long-poll + %d WebSocket clients, %d left and came back (%d departures), "
              "%.0f s at %d msg/s" % (N_LP, N_WS, len(churned), sum(c.leaves for c in churned),
                                     DURATION, RATE))
        names = sorted(pids)
        print("  RSS kB      " + " ".join("%10s" % n for n in names))
        for t, row in samples:
            label = "  no clients " if t < 0 else "  %10.0fs " % t
            print(label + " ".join("%10d" % row[n] for n in names))
        print("  fds (total/kept-alive nginx<->worker/orphaned) before: " +
              ", ".join("%s=%d/%d/%d" % ((n,) + fds_before[n]) for n in names))
        print("  fds (total/kept-alive nginx<->worker/orphaned) after:  " +
              ", ".join("%s=%d/%d/%d" % ((n,) + fds_after[n]) for n in names))
        for n in names:
            if fds_after[n][0] - fds_after[n][1] > fds_before[n][0] - fds_before[n][1]:
                now = C.fd_targets(pids[n])
                new_fds = {fd: t for fd, t in now.items() if fd_targets_before[n].get(fd) != t}
                print("  %s: fds opened since the start: %s" % (n, ", ".join(C.describe_fds(new_fds))))
        report("  long-poll", lps, pub)
        report("  websocket", wss, pub)
        t = report("test_soak_1000_subscribers_churn_memory_and_fds", lps + wss, pub)

        all_alive(s)
        check(t, lps + wss, pub)
        assert len(churned) >= 200, "too few clients came and went"
        # (The machine may be busy: the rate is a target, not a promise.)
        assert t["published"] >= DURATION * RATE * 0.4
        # Memory flat after warm-up: growth from the first sample past 20 s to
        # the last stays under 20% or 4 MB.
        assert samples[-1][0] >= DURATION, "the soak did not last %.0f s" % DURATION
        base = next(row for tt, row in samples if tt >= WARMUP)
        last = samples[-1][1]
        grew = {n: (base[n], last[n]) for n in names
                if last[n] - base[n] > max(0.20 * base[n], 4096)}
        assert not grew, "RSS grew after warm-up (kB, from -> to): %r" % grew
        leaked = {n: (fds_before[n], fds_after[n]) for n in names
                  if fds_after[n][0] - fds_after[n][1] > fds_before[n][0] - fds_before[n][1] + 3 or
                  fds_after[n][2]}
        assert not leaked, "fds not released (before -> after): %r" % leaked


# ---- 5. nginx reload and a rolling restart under load ----------------------------------

@pytest.mark.stack(workers=2, relays=2)
def test_nginx_reload_and_rolling_restart_under_load(fresh_stack):
    s = fresh_stack
    ch = unique_channel("rr")
    steps = []
    T0 = time.monotonic()

    def reload_nginx():
        old = set(C.nginx_workers(s.nginx.pid))
        os.kill(s.nginx.pid, signal.SIGHUP)
        wait_for(lambda: set(C.nginx_workers(s.nginx.pid)) - old, timeout=15, what="new nginx workers")
        steps.append("%.1fs nginx reload" % (time.monotonic() - T0))

    def restart_worker(i):
        steps.append("%.1fs SIGTERM worker %d" % (time.monotonic() - T0, i))
        rc = s.workers[i].stop(signal.SIGTERM)
        steps.append("%.1fs worker %d exit=%r" % (time.monotonic() - T0, i, rc))
        assert rc == 0, "worker %d exited with %r on SIGTERM" % (i, rc)
        s.start_worker(i)
        steps.append("%.1fs worker %d ready" % (time.monotonic() - T0, i))

    def restart_relay(i):
        steps.append("%.1fs SIGTERM relay %d" % (time.monotonic() - T0, i))
        rc = s.relays[i].stop(signal.SIGTERM)
        steps.append("%.1fs relay %d exit=%r" % (time.monotonic() - T0, i, rc))
        assert rc == 0, "relay %d exited with %r on SIGTERM" % (i, rc)
        s.start_relay(i)
        steps.append("%.1fs relay %d ready" % (time.monotonic() - T0, i))

    async def scenario():
        lps = [C.LongPollClient(HOST, s.port, ch, since=0, poll_timeout=20, name="lp%d" % k)
               for k in range(100)]
        wss = [C.WsClient(HOST, s.port, ch, since=0, name="ws%d" % k) for k in range(100)]
        tasks = await start_tasks(lps + wss)
        assert await C.wait_until(lambda: s.held() >= 100 and ws_clients(s) >= 100, 30)
        pub = C.Publisher(HOST, s.port, ch, rate=20, tag="rr")
        ptask = asyncio.create_task(pub.run())
        await asyncio.sleep(1.0)
        await asyncio.to_thread(reload_nginx)
        await asyncio.sleep(1.0)
        for i in range(len(s.workers)):
            await asyncio.to_thread(restart_worker, i)
            await asyncio.sleep(1.0)
        for i in range(len(s.relays)):
            await asyncio.to_thread(restart_relay, i)
            await asyncio.sleep(1.0)
        await asyncio.to_thread(reload_nginx)
        await asyncio.sleep(1.0)
        pub.stop()
        await asyncio.wait_for(ptask, 60)
        await converge(lps + wss, pub, 40)
        await cancel(tasks)
        return lps, wss, pub

    lps, wss, pub = run(scenario(), 150)
    print("\n  steps: " + "; ".join(steps))
    print("  publish failures: " + ", ".join("%.1fs %s" % (t - T0, e) for t, e in pub.events))
    report("  long-poll", lps, pub)
    report("  websocket", wss, pub)
    t = report("test_nginx_reload_and_rolling_restart_under_load", lps + wss, pub)
    all_alive(s)
    check(t, lps + wss, pub)
    assert t["published"] >= 50
    # Workers on unix sockets are never marked failed (nginx/render), so a
    # rolling restart leaves no moment without a worker: publishing never
    # fails. (A worker may answer 503 in the instant between listening and
    # reaching Redis; that is a worker's 503, with a JSON "Redis" error.)
    nginx_503 = [e for _, e in pub.events if "503" in str(e) and "Redis" not in str(e)]
    assert not nginx_503, "nginx had no worker during the restart: %r" % nginx_503


# ---- 6. security basics ------------------------------------------------------------------

# The limit applies to anonymous publishers on other hosts. nginx sees
# X-Forwarded-For from 127.0.0.1 (REAL_IP_FROM), so a test client can stand for
# an address on the internet (203.0.113.0/24, TEST-NET-3) or a backend on the
# private network; loopback and private networks are trusted by default.
RL_TOKEN = "rl-token-6f1c"
RL_STACK = dict(workers=1, env={"PW_PUBLISH_TOKEN": RL_TOKEN},
                nginx_env={"CHAT_RATE": "5", "CHAT_BURST": "5", "REAL_IP_FROM": "127.0.0.1",
                           "PW_PUBLISH_TOKEN": RL_TOKEN})


def publish_burst(s, ch, n, headers, tag):
    """n publishes at once, each on its own connection: [(status, headers,
    body)] and the seconds it took."""
    async def one(k):
        conn = C.HttpConn(HOST, s.port)
        try:
            body = ("content=%s-%d&channel=%s" % (tag, k, ch)).encode()
            h = {"Content-Type": "application/x-www-form-urlencoded"}
            h.update(headers)
            return await conn.request("POST", "/chat", body, h)
        finally:
            conn.close()

    async def burst():
        t0 = time.monotonic()
        res = []
        for i in range(0, n, 100):  # at most 100 connections at a time
            res += await asyncio.gather(*(one(k) for k in range(i, min(n, i + 100))))
        return res, time.monotonic() - t0

    return run(burst(), 120)


def check_stored_once(s, ch, ok, name):
    st, doc, _ = s.poll(channel=ch, since=0, timeout=0)
    got = [m["id"] for m in doc["messages"]]
    while doc.get("more"):
        st, doc, _ = s.poll(channel=ch, since=got[-1], timeout=0)
        got += [m["id"] for m in doc["messages"]]
    assert got == sorted(d["id"] for d in ok) == list(range(1, len(ok) + 1))
    line = "%s: published=%d received=%d lost=%d duplicated=%d" % (
        name, len(ok), len(got), len(set(d["id"] for d in ok) - set(got)),
        len(got) - len(set(got)))
    print("RESULT " + line)
    RESULTS.append(line)


@pytest.mark.stack(**RL_STACK)
def test_rate_limit_gives_429_json_to_anonymous_publishers(fresh_stack):
    s = fresh_stack
    ch = unique_channel("rl")
    anon = {"X-Forwarded-For": "203.0.113.7"}
    res, took = publish_burst(s, ch, 50, dict(anon, Authorization="Bearer " + RL_TOKEN), "pre")
    assert [st for st, h, b in res] == [200] * 50, "the token holder was limited"
    ch = unique_channel("rl")
    # Anonymous, and with a wrong token: both limited (the wrong token is
    # refused by the worker with 403 when nginx lets it through).
    for hdrs, other in ((anon, 401), (dict(anon, Authorization="Bearer wrong"), 403)):
        time.sleep(1.5)  # the bucket of 203.0.113.7 refills (5/s, burst 5)
        res, took = publish_burst(s, ch, 50, hdrs, "anon")
        codes = [st for st, h, b in res]
        passed = [st for st in codes if st != 429]
        limited = [(h, b) for st, h, b in res if st == 429]
        print("\n  50 publishes in %.2f s: %d through, %d x 429, codes %r" % (
            took, len(passed), len(limited), sorted(set(codes))))
        assert set(codes) <= {other, 429}, codes
        # burst 5 + 1 at once, plus 5/s while the burst lasts (and a little slack).
        assert 1 <= len(passed) <= 6 + int(5 * took) + 2
        for h, b in limited:
            assert h.get("content-type", "").startswith("application/json"), h
            assert json.loads(b)["error"]
    # Nothing of that was stored.
    st, doc, _ = s.poll(channel=ch, since=0, timeout=0)
    assert doc["messages"] == [] and doc["id"] == 0
    # The limit lifts by itself, and limits nobody else meanwhile.
    wait_for(lambda: s.publish("after", channel=ch, headers=dict(anon, Authorization="Bearer " +
                                                                   RL_TOKEN))[0] == 200,
             timeout=10, interval=0.3, what="publishing after the burst")


@pytest.mark.stack(workers=1, nginx_env={"CHAT_RATE": "5", "CHAT_BURST": "5",
                                         "REAL_IP_FROM": "127.0.0.1"})
def test_rate_limit_counts_accepted_publishes_once(fresh_stack):
    """No token configured (the open page): an anonymous burst gets some 200s
    and 429s, and exactly the 200s are stored, once each."""
    s = fresh_stack
    ch = unique_channel("rl")
    res, took = publish_burst(s, ch, 50, {"X-Forwarded-For": "203.0.113.8"}, "burst")
    codes = [st for st, h, b in res]
    ok = [json.loads(b) for st, h, b in res if st == 200]
    assert set(codes) <= {200, 429}, codes
    assert 1 <= len(ok) <= 6 + int(5 * took) + 2
    check_stored_once(s, ch, ok, "test_rate_limit_gives_429_json")


@pytest.mark.stack(workers=2, worker_args=["--history", "2000"],
                   nginx_env={"CHAT_RATE": "5", "CHAT_BURST": "5", "REAL_IP_FROM": "127.0.0.1"})
def test_backends_publish_bursts_without_429(fresh_stack):
    """A backend publishing 1,200 messages at once from one host of the
    private network (or loopback) is never throttled by default."""
    s = fresh_stack
    for addr in ("10.1.2.3", None):
        ch = unique_channel("rl")
        hdrs = {"X-Forwarded-For": addr} if addr else {}
        res, took = publish_burst(s, ch, 1200, hdrs, "backend")
        codes = sorted(set(st for st, h, b in res))
        print("\n  1200 publishes from %s in %.2f s: codes %r" % (addr or "127.0.0.1", took, codes))
        assert codes == [200], codes
        check_stored_once(s, ch, [json.loads(b) for st, h, b in res],
                          "test_backends_publish_bursts_without_429(%s)" % (addr or "loopback"))


def test_redis_auth_through_redis_url():
    s = Stack(workers=1, relays=1, redis_password="s3cret")
    s.start()
    with stack_ctx(s):
        ch = unique_channel("auth")
        # Unauthenticated access really is refused, so the stack's success
        # below means the password was sent.
        out = subprocess.run(["redis-cli", "-p", str(s.redis_port), "GET", "x"],
                             capture_output=True, timeout=10).stdout.decode()
        assert "NOAUTH" in out, out
        assert s.all_redis_up()

        async def scenario():
            cl = [C.LongPollClient(HOST, s.port, ch, since=0, poll_timeout=10, name="lp"),
                  C.WsClient(HOST, s.port, ch, since=0, name="ws")]
            tasks = await start_tasks(cl)
            assert await C.wait_until(lambda: s.held() >= 1 and ws_clients(s) >= 1, 20)
            pub = C.Publisher(HOST, s.port, ch, rate=20, tag="auth")
            await pub.run(count=10)
            await converge(cl, pub, 20)
            await cancel(tasks)
            return cl, pub

        cl, pub = run(scenario(), 60)
        t = report("test_redis_auth_through_redis_url", cl, pub)
        check(t, cl, pub)
        assert t["published"] == 10

        # A worker and a relay with a wrong password: unhealthy, publishes
        # 503 with Retry-After, and they stay up (talked to directly).
        env = s.env()
        env["REDIS_URL"] = "redis://:wrong@127.0.0.1:%d" % s.redis_port
        sock = s.path("worker-badauth.sock")
        procs = [
            Proc("worker-badauth", [os.path.join(os.path.dirname(s.workers[0].argv[0]), "pushwire-worker"),
                                    "--listen", "unix:" + sock, "--id", "wbad", "--redis-timeout", "500"],
                 s.path("worker-badauth.log"), env).start(),
        ]
        from stack import free_port
        bad_metrics = free_port()
        procs.append(Proc("relay-badauth", [os.path.join(os.path.dirname(s.relays[0].argv[0]), "pushwire-relay"),
                                            "--listen", "127.0.0.1:%d" % free_port(), "--id", "rbad",
                                            "--metrics", "127.0.0.1:%d" % bad_metrics, "--redis-timeout", "500"],
                          s.path("relay-badauth.log"), env).start())
        try:
            wait_for(lambda: os.path.exists(sock), what="bad-auth worker socket")
            time.sleep(1.0)  # let it try (and fail) to authenticate
            st, h, b, _ = fcgi.request(sock, "GET", "/healthz", timeout=15)
            health = json.loads(b)
            st2, h2, b2, _ = fcgi.request(sock, "POST", "/chat", body=b"content=nope",
                                          headers={"Content-Type": "application/x-www-form-urlencoded"},
                                          timeout=15)
            rm = wait_for(lambda: Stack._metrics(bad_metrics), what="bad-auth relay metrics")
            print("  wrong password: /healthz %d %s; POST /chat %d %s (Retry-After %r); relay redis_up=%r" % (
                st, b.decode().strip(), st2, b2.decode().strip(), h2.get("retry-after"),
                rm.get('pushwire_redis_up{conn="commands"}')))
            assert st == 503 and health.get("status") == "down", (st, b)
            assert st2 == 503 and json.loads(b2)["error"] and h2.get("retry-after"), (st2, h2, b2)
            assert rm['pushwire_redis_up{conn="commands"}'] == 0
            assert all(p.alive() for p in procs), "a process with a wrong password exited"
        finally:
            codes = [p.stop() for p in procs]
        assert codes == [0, 0], "wrong-password processes did not stop cleanly: %r" % codes
        # The right password still works after all that.
        st, doc = s.publish("still fine", channel=ch)
        assert st == 200 and doc["id"] == 11
        # No password in any log, nor in --help when it comes from the
        # environment (as in compose); the host stays visible.
        for name in sorted(os.listdir(s.dir)):
            if name.endswith(".log"):
                text = s.log_text(name)
                assert "s3cret" not in text and "wrong@" not in text, name
        assert "redis://:***@127.0.0.1:%d" % s.redis_port in s.log_text("worker-0.log")
        for binary in ("pushwire-worker", "pushwire-relay"):
            out = subprocess.run([os.path.join(os.path.dirname(s.workers[0].argv[0]), binary),
                                  "--help"], capture_output=True, text=True, timeout=10,
                                 env=dict(s.env(), PW_PUBLISH_TOKEN="t0ken-value")).stdout
            assert "redis://:***@127.0.0.1" in out and "s3cret" not in out, out
            assert "t0ken-value" not in out
            if binary == "pushwire-worker":
                assert "env PW_PUBLISH_TOKEN, default (set, not shown)" in out, out


# ---- 7. every worker and relay down at once, then back ----------------------------------

@pytest.mark.stack(workers=1, relays=1)
def test_every_worker_and_relay_down_then_back(fresh_stack):
    """nginx alone: every answer is a JSON 503 with Retry-After (long-poll,
    publish, WebSocket upgrade); clients back off, come back with since when
    the backends return, and miss nothing."""
    s = fresh_stack
    ch = unique_channel("dn")
    probes = {}

    def probe():
        probes["GET /status"] = s.get("/status?timeout=1&channel=" + ch, timeout=15)
        probes["POST /chat"] = s.request("POST", "/chat", b"content=probe&channel=" + ch.encode(),
                                         {"Content-Type": "application/x-www-form-urlencoded",
                                          "Idempotency-Key": "probe-" + ch}, timeout=15)
        for path in ("/status", "/ws"):
            try:
                wsraw.RawWS.open(s.port, path=path + "?channel=" + ch).close()
                probes["WS " + path] = (101, {}, b"")
            except wsraw.HandshakeRefused as e:
                probes["WS " + path] = (e.status, {k.title(): v for k, v in e.headers.items()}, e.body)

    async def scenario():
        lps = [C.LongPollClient(HOST, s.port, ch, since=0, poll_timeout=20, name="lp%d" % k)
               for k in range(20)]
        wss = [C.WsClient(HOST, s.port, ch, since=0, name="ws%d" % k) for k in range(20)]
        tasks = await start_tasks(lps + wss)
        assert await C.wait_until(lambda: s.held() >= 20 and ws_clients(s) >= 20, 20)
        pub = C.Publisher(HOST, s.port, ch, rate=10, tag="dn")
        ptask = asyncio.create_task(pub.run())
        await asyncio.sleep(1.0)
        s.workers[0].stop(signal.SIGKILL)
        s.relays[0].stop(signal.SIGKILL)
        await asyncio.to_thread(probe)
        await asyncio.sleep(3.0)
        await asyncio.to_thread(s.start_worker, 0)
        await asyncio.to_thread(s.start_relay, 0)
        await asyncio.sleep(1.5)
        pub.stop()
        await asyncio.wait_for(ptask, 60)
        await converge(lps + wss, pub, 40)
        await cancel(tasks)
        return lps, wss, pub

    lps, wss, pub = run(scenario(), 120)
    print("\n  with no worker and no relay: " + "; ".join(
        "%s -> %d %s Retry-After=%s %r" % (k, st, h.get("Content-Type"), h.get("Retry-After"), b[:50])
        for k, (st, h, b) in probes.items()))
    report("  long-poll", lps, pub)
    report("  websocket", wss, pub)
    t = report("test_every_worker_and_relay_down_then_back", lps + wss, pub)
    all_alive(s)
    assert t["lost"] == 0 and t["duplicated"] == 0 and t["out_of_order"] == 0, C.describe(lps + wss)
    wrong = {}
    for k, (st, h, b) in probes.items():
        try:
            body_ok = bool(json.loads(b)["error"])
        except (ValueError, KeyError, TypeError):
            body_ok = False
        if st != 503 or not h.get("Retry-After") or not body_ok or \
                not h.get("Content-Type", "").startswith("application/json"):
            wrong[k] = (st, h.get("Content-Type"), h.get("Retry-After"), b[:60])
    assert not wrong, "not a JSON 503 with Retry-After while no backend is up: %r" % wrong
    check(t, lps + wss, pub)
