"""Hostile clients against the real stack: each holds what a process may
spend within a stated bound, gets a clear error (429/503 with JSON, a close,
a dropped connection) when it reaches a limit, and everyone else is served
meanwhile.

- channel flood: polls to thousands of fresh channels (nginx's per-address
  limit, the workers' --max-channels, Redis state that expires);
- history amplification: hundreds of polls from distinct positions of a
  long channel at once (--max-history-reads bounds Redis's memory; nobody is
  answered "nothing new" past messages it did not get);
- slowloris: connections that never finish their request, at the relay
  (--max-handshakes) and at nginx (HEADER_TIMEOUT);
- garbage FastCGI records straight to a worker's socket (a seeded mutation
  run; PW_ABUSE_SEED=N replays one);
- the ping flood and never-reading clients are in test_websocket.py and
  test_eventsource.py.

Memory is measured on the plain build (ASan's quarantine would hide it).
"""
import asyncio
import json
import os
import random
import socket
import struct
import threading
import time

import pytest

import clients as C
import fcgi
import wsraw
from scenario import run
from stack import PLAIN_BUILD, Stack, parse_metrics, unique_channel, wait_for

HOST = "127.0.0.1"


@pytest.fixture(autouse=True, scope="module")
def _nofile():
    C.raise_nofile()


def mb(kb):
    return kb / 1024.0


async def gets(port, paths, headers, width=100):
    """GET each path, width at a time, each on its own connection:
    [(status, body)]."""
    out = []

    async def one(path):
        conn = C.HttpConn(HOST, port)
        try:
            st, h, b = await conn.request("GET", path, b"", headers)
            return st, h, b
        except (C.HttpError, OSError) as e:
            return 0, {}, repr(e).encode()
        finally:
            conn.close()

    for i in range(0, len(paths), width):
        out += await asyncio.gather(*(one(p) for p in paths[i:i + width]))
    return out


def redis_keys(s, pattern):
    return [k for k in s.redis_cmd("KEYS", pattern).split("\n") if k]


# ---- channel flood ----------------------------------------------------------------------

@pytest.mark.stack(workers=2, build=PLAIN_BUILD,
                   worker_args=["--max-channels", "2000", "--history-ttl", "4"],
                   nginx_env={"REAL_IP_FROM": "127.0.0.1", "STATUS_RATE": "50",
                              "STATUS_BURST": "200"})
def test_channel_flood(fresh_stack):
    s = fresh_stack
    tag = unique_channel("fl")
    # One address on the internet: nginx lets the burst through, then 429.
    paths = ["/status?channel=%s-a%d&timeout=0" % (tag, i) for i in range(1000)]
    t0 = time.monotonic()
    res = run(gets(s.port, paths, {"X-Forwarded-For": "203.0.113.9"}), 120)
    took = time.monotonic() - t0
    codes = [st for st, h, b in res]
    limited = [(h, b) for st, h, b in res if st == 429]
    print("\n  1000 polls to fresh channels from one internet address in %.1f s: %d x 200, "
          "%d x 429" % (took, codes.count(200), len(limited)))
    assert set(codes) <= {200, 429}
    assert len(limited) >= 1000 - (200 + int(50 * took) + 20)
    assert all(json.loads(b)["error"] for h, b in limited)

    # From the private network (trusted, not rate-limited): 20,000 fresh
    # channels. Each worker follows at most 2,000; past that an unused one
    # is dropped for the next (these polls end at once), so all are served.
    rss0 = [C.rss_kb(w.pid) for w in s.workers]
    paths = ["/status?channel=%s-b%d&timeout=0" % (tag, i) for i in range(20000)]
    t0 = time.monotonic()
    res = run(gets(s.port, paths, {"X-Forwarded-For": "10.9.8.7"}), 600)
    took = time.monotonic() - t0
    codes = sorted(set(st for st, h, b in res))
    chans = [s.metrics(i)["pushwire_channels"] for i in range(2)]
    evicted = [s.metrics(i)["pushwire_channels_evicted_total"] for i in range(2)]
    growth = [mb(C.rss_kb(w.pid) - r0) for w, r0 in zip(s.workers, rss0)]
    keys = len(redis_keys(s, "pw:ch:%s-b*" % tag))
    print("  20000 polls to fresh channels from the private network in %.1f s: codes %r; "
          "channels per worker %r (evicted %r); RSS growth %r MB; Redis keys %d" % (
              took, codes, chans, evicted, ["%.1f" % g for g in growth], keys))
    assert codes == [200], codes
    assert all(c <= 2000 for c in chans) and sum(evicted) > 0
    assert all(g < 24 for g in growth), growth
    # Everyone else is served meanwhile and after.
    ch = unique_channel("fl")
    assert s.publish("normal", channel=ch)[0] == 200
    st, doc, _ = s.poll(channel=ch, since=0, timeout=0)
    assert st == 200 and doc["messages"][0]["content"] == "normal"
    # Redis keeps the state of channels nobody published to only briefly
    # after their last poll (here the history TTL, 4 s, is shorter than the
    # minute of the default).
    wait_for(lambda: not redis_keys(s, "pw:ch:%s-b*" % tag), timeout=20, interval=0.5,
             what="the flood's Redis state to expire")


# ---- history amplification ----------------------------------------------------------------

@pytest.mark.stack(workers=1, build=PLAIN_BUILD, worker_args=["--max-history-reads", "16"])
def test_history_amplification(fresh_stack):
    """On main: 500 concurrent polls from distinct positions of a channel of
    1,000 messages of 1 KiB grew Redis by 460 MB and 108 of them were
    answered 200 with no messages although messages after their since
    existed."""
    s = fresh_stack
    ch = unique_channel("ha")

    for i in range(1000):
        assert s.publish("%04d" % i + "x" * 1020, channel=ch)[0] == 200

    def used():
        for line in s.redis_cmd("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        return 0
    base, peak, queued = used(), [0], [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], used())
            try:
                queued[0] = max(queued[0], s.metrics(0)["pushwire_history_reads_queued"])
            except Exception:
                pass
            time.sleep(0.02)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    paths = ["/status?channel=%s&since=%d&timeout=0" % (ch, n) for n in range(500)]
    try:
        res = run(gets(s.port, paths, {}, width=500), 300)
    finally:
        stop.set()
        t.join(5)
    empty, bad, later = [], [], []

    def judge(n, st, h, b):
        if st == 503 and h.get("retry-after") and json.loads(b)["error"]:
            later.append(n)  # waited for its turn past its time: retry, as told
            return
        if st != 200:
            bad.append((n, st, b[:100]))
            return
        doc = json.loads(b)
        if not doc["messages"]:
            empty.append(n)
        elif doc["messages"][0]["id"] != n + 1:
            bad.append((n, "first id %d" % doc["messages"][0]["id"]))

    for n, (st, h, b) in enumerate(res):
        judge(n, st, h, b)
    grew = (peak[0] - base) / 1e6
    print("\n  500 concurrent polls from distinct positions: %d answered, %d x 503 to retry, "
          "%d empty, %d bad; Redis grew %.0f MB at the peak; up to %d polls queued for a read "
          "slot" % (500 - len(later) - len(empty) - len(bad), len(later), len(empty), len(bad),
                    grew, queued[0]))
    assert not empty, "answered 'nothing new' past messages: since=%r" % empty[:10]
    assert not bad, bad[:5]
    assert len(later) < 400, "hardly anybody was served"
    assert grew < 64, "Redis grew %.0f MB" % grew
    assert queued[0] > 0
    # The ones told to retry get exactly their messages when they do.
    retry, later[:] = list(later), []
    for n in retry:
        st, h, b = s.get("/status?channel=%s&since=%d&timeout=0" % (ch, n))
        judge(n, st, {k.lower(): v for k, v in h.items()}, b)
    assert not empty and not bad and not later, (empty[:5], bad[:5], later[:5])


# ---- slowloris ------------------------------------------------------------------------------

@pytest.mark.stack(workers=1, relays=1, build=PLAIN_BUILD,
                   relay_args=["--max-handshakes", "200", "--handshake-timeout", "60"])
def test_slowloris_at_the_relay(fresh_stack):
    """Connections that open and never finish their handshake hold at most
    --max-handshakes slots; the oldest go first, and real clients connect."""
    s = fresh_stack
    port = s.relay_ports[0]
    socks = []
    try:
        for i in range(1000):
            c = socket.create_connection((HOST, port), timeout=10)
            c.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            socks.append(c)
        m = wait_for(lambda: (lambda m: m if m["pushwire_ws_handshakes_evicted_total"] >= 800
                              else None)(s.relay_metrics_get(0)), timeout=20,
                     what="the relay to drop the oldest handshakes")
        fds = C.fd_count(s.relays[0].pid)
        print("\n  1000 unfinished handshakes: %d pending, %d dropped; relay fds %d" % (
            m["pushwire_ws_handshakes"], m["pushwire_ws_handshakes_evicted_total"], fds))
        assert m["pushwire_ws_handshakes"] <= 200
        assert fds < 400
        ch = unique_channel("sl")
        ws = wsraw.RawWS.open(port, path="/status?channel=" + ch)
        try:
            wait_for(lambda: s.relay_metrics_get(0)["pushwire_ws_clients"] >= 1)
            time.sleep(0.2)
            assert s.publish("through", channel=ch)[0] == 200
            assert json.loads(ws.recv_frame(timeout=10).payload)["content"] == "through"
        finally:
            ws.close()
    finally:
        for c in socks:
            c.close()


@pytest.mark.stack(workers=1, nginx_env={"HEADER_TIMEOUT": "2s"})
def test_slowloris_at_nginx(fresh_stack):
    s = fresh_stack
    socks = []
    for i in range(200):
        c = socket.create_connection((HOST, s.port), timeout=10)
        c.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(c)
    t0 = time.monotonic()
    ended = 0
    for c in socks:
        try:
            data = c.recv(4096)
            assert data == b"" or b" 408 " in data.split(b"\r\n")[0], data[:200]
            ended += 1
        except socket.timeout:
            pass
        c.close()
    took = time.monotonic() - t0
    print("\n  200 unfinished requests at nginx: all ended after %.1f s" % took)
    assert ended == 200 and took < 8


# ---- garbage FastCGI ---------------------------------------------------------------------------

def _rec(rtype, reqid, content, version=1, padding=0, clen=None):
    clen = len(content) if clen is None else clen
    return struct.pack(">BBHHBx", version, rtype, reqid, clen & 0xFFFF, padding) + content + \
        b"\0" * padding


def _valid_publish(ch, i, reqid=1, keep=0):
    body = ("content=garbage-%d&channel=%s" % (i, ch)).encode()
    params = b"".join(fcgi._nv(k, v) for k, v in (
        ("REQUEST_METHOD", "POST"), ("DOCUMENT_URI", "/chat"), ("SCRIPT_NAME", "/chat"),
        ("CONTENT_TYPE", "application/x-www-form-urlencoded"),
        ("CONTENT_LENGTH", str(len(body))), ("REMOTE_ADDR", "127.0.0.1")))
    return (_rec(fcgi.BEGIN_REQUEST, reqid, struct.pack(">HB5x", 1, keep)) +
            _rec(fcgi.PARAMS, reqid, params) + _rec(fcgi.PARAMS, reqid, b"") +
            _rec(fcgi.STDIN, reqid, body) + _rec(fcgi.STDIN, reqid, b""))


def _mutation(rng, ch, i):
    """One record set: valid requests, broken ones and noise, mixed."""
    kind = rng.randrange(9)
    if kind == 0:  # random record types, lengths and padding
        return b"".join(_rec(rng.randrange(256), rng.randrange(4),
                             os.urandom(rng.randrange(64)), padding=rng.randrange(8))
                        for _ in range(rng.randrange(1, 8)))
    if kind == 1:  # a valid publish followed at once by a malformed record
        return _valid_publish(ch, i, keep=1) + _rec(rng.randrange(256), 1, os.urandom(5),
                                                    version=rng.choice((0, 1, 2, 9)))
    if kind == 2:  # oversized PARAMS: huge name/value lengths
        nv = struct.pack(">II", 0x80000000 | rng.randrange(1 << 31), 0x80000000 | 70000)
        return (_rec(fcgi.BEGIN_REQUEST, 1, struct.pack(">HB5x", 1, 1)) +
                b"".join(_rec(fcgi.PARAMS, 1, nv + os.urandom(60000)) for _ in range(3)))
    if kind == 3:  # a length that promises more than is sent
        return _rec(fcgi.PARAMS, 1, os.urandom(10), clen=60000)
    if kind == 4:  # management records, many, and never reading the replies
        return _rec(9, 0, fcgi._nv("FCGI_MAX_CONNS", "") + fcgi._nv("FCGI_MPXS_CONNS", "")) * 500
    if kind == 5:  # two requests on one connection, the second while the first is open
        return _valid_publish(ch, i, 1, keep=1) + _valid_publish(ch, i, 2, keep=1)
    if kind == 6:  # an abort in the middle
        return _valid_publish(ch, i, keep=1)[:40] + _rec(2, 1, b"")
    if kind == 7:  # truncated anywhere
        v = _valid_publish(ch, i)
        return v[:rng.randrange(len(v))]
    return _valid_publish(ch, i)  # a valid one now and then


@pytest.mark.stack(workers=2)
def test_garbage_fastcgi_records_straight_to_a_worker(fresh_stack):
    """On main: a short run of mutated FastCGI records killed both workers
    within ten record sets. Now every worker survives 400 sets (with ASan),
    holds no descriptor or memory for them afterwards, and serves."""
    s = fresh_stack
    seed = int(os.environ.get("PW_ABUSE_SEED", random.randrange(1 << 30)))
    print("\n  garbage FastCGI: seed %d (PW_ABUSE_SEED=%d replays it)" % (seed, seed))
    rng = random.Random(seed)
    ch = unique_channel("gf")
    pids = [w.pid for w in s.workers]
    fds0 = [C.fd_count(p) for p in pids]
    for i in range(400):
        sock = s.worker_sock(rng.randrange(2))
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(sock)
        try:
            c.sendall(_mutation(rng, ch, i))
            if rng.random() < 0.5:
                c.shutdown(socket.SHUT_WR)
                c.settimeout(0.2)
                try:
                    while c.recv(65536):
                        pass
                except (socket.timeout, OSError):
                    pass
        except OSError:
            pass  # the worker closed it: that is its answer to garbage
        finally:
            c.close()
        if i % 50 == 49:
            assert all(w.alive() for w in s.workers), "a worker died at record set %d" % i
    assert all(w.alive() for w in s.workers), "a worker died"
    wait_for(lambda: all(C.fd_count(p) <= f + 4 for p, f in zip(pids, fds0)), timeout=10,
             what="the workers to let go of the garbage connections")
    st, doc = s.publish("after the garbage", channel=ch)
    assert st == 200
    mid = doc["id"]
    # (A valid publish of the last sets may still be in the worker when the
    # test's connection is gone: it can be stored after this one.)
    st, doc, _ = s.poll(channel=ch, since=mid - 1, timeout=0)
    assert st == 200 and doc["messages"][0] == dict(doc["messages"][0], id=mid,
                                                     content="after the garbage"), doc
    # The stack's log check (on stop) fails on any sanitizer report.
