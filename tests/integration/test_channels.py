"""GET /channels/NAME and GET /channels through nginx: the channel's newest
id, epoch and retained count, and subscriber counts summed over every
worker and relay (presence in Redis, refreshed every heartbeat), before and
after clients leave, and after a process dies."""
import asyncio
import json
import os
import signal
import socket
import time

import jwt
import pytest
import websockets

from stack import Stack, unique_channel, wait_for
from test_eventsource import SseReader

SECRET = "channels-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def chs(tmp_path_factory):
    d = tmp_path_factory.mktemp("chs")
    (d / "secret").write_text(SECRET + "\n")
    args = ["--heartbeat", "200", "--private-channels", "p:*", "--jwt-secret-file",
            str(d / "secret")]
    s = Stack(workers=2, relays=2, worker_args=args, relay_args=args).start()
    yield s
    s.stop()


def token(sub=(), pub=(), exp=600):
    return jwt.encode({"exp": int(time.time()) + exp,
                       "pushwire": {"subscribe": list(sub), "publish": list(pub)}},
                      SECRET, algorithm="HS256")


def info(s, name, headers=None):
    st, h, b = s.get("/channels/" + name, headers=headers)
    return st, json.loads(b)


def subscribers(s, name, headers=None):
    st, doc = info(s, name, headers)
    assert st == 200, doc
    return doc["subscribers"]


def test_info_of_a_channel(chs):
    s = chs
    ch = unique_channel("info")
    st, doc = info(s, ch)
    assert st == 200
    assert doc == {"channel": ch, "epoch": "", "id": 0, "retained": 0, "subscribers": 0,
                   "processes": 4, "fresh_ms": 200}, doc
    for i in range(3):
        st, p = s.publish("m%d" % i, channel=ch)
    st, doc = info(s, ch)
    assert (doc["epoch"], doc["id"], doc["retained"]) == (p["epoch"], 3, 3), doc
    # Reading info creates nothing, and a bad name is a 400.
    st, h, b = s.get("/channels/bad%20name")
    assert st == 400, b
    st, h, b = s.request("POST", "/channels/" + ch, body=b"")
    assert st == 405


def test_counts_across_processes_before_and_after_they_leave(chs):
    s = chs
    ch = unique_channel("cnt")
    readers = [SseReader(s, "channel=" + ch) for _ in range(4)]
    for r in readers:
        r.headers()

    async def run():
        conns = [await websockets.connect("ws://127.0.0.1:%d/status?channel=%s" % (s.port, ch))
                 for _ in range(6)]
        # The WebSockets are spread over both relays, the streams over both workers.
        relays = [s.relay_metrics_get(i)["pushwire_ws_clients"] for i in range(2)]
        n = wait_for(lambda: subscribers(s, ch) == 10 and 10, timeout=10,
                     what="10 subscribers counted")
        st, lst = s.get_json("/channels")
        mine = [c for c in lst["channels"] if c["channel"] == ch]
        assert mine == [{"channel": ch, "subscribers": 10}], lst
        for c in conns[:3]:
            await c.close()
        wait_for(lambda: subscribers(s, ch) == 7, timeout=10, what="7 after 3 left")
        for c in conns[3:]:
            await c.close()
        return n, relays
    n, relays = asyncio.run(run())
    assert n == 10
    for r in readers[:2]:
        r.close()
    wait_for(lambda: subscribers(s, ch) == 2, timeout=10, what="2 after the WebSockets left")
    for r in readers[2:]:
        r.close()
    wait_for(lambda: subscribers(s, ch) == 0, timeout=10, what="0 after everyone left")
    st, lst = s.get_json("/channels")
    assert ch not in [c["channel"] for c in lst["channels"]]


def test_a_dead_process_stops_counting(chs):
    s = chs
    ch = unique_channel("dead")

    async def run():
        # Directly to relay 1, so that its death takes exactly these.
        conns = [await websockets.connect("ws://127.0.0.1:%d/status?channel=%s" % (
            s.relay_ports[1], ch)) for _ in range(3)]
        wait_for(lambda: subscribers(s, ch) == 3, timeout=10, what="3 counted")
        s.relays[1].send(signal.SIGKILL)
        s.relays[1].p.wait(10)
        # Its heartbeat expires after 3 intervals plus the Redis timeout.
        wait_for(lambda: subscribers(s, ch) == 0, timeout=15, what="the dead relay's 3 gone")
        for c in conns:
            try:
                await c.close()
            except Exception:
                pass
    asyncio.run(run())
    s.exit_codes.pop("relay-1", None)
    s.start_relay(1)


def test_private_channel_info_needs_a_token_and_the_list_filters(chs):
    s = chs
    ch = "p:" + unique_channel("priv")
    st, doc = info(s, ch)
    assert st == 401, doc
    st, doc = info(s, ch, {"Authorization": "Bearer " + token(sub=["p:other"])})
    assert st == 403, doc
    t = token(sub=[ch])
    st, doc = info(s, ch, {"Authorization": "Bearer " + t})
    assert st == 200 and doc["channel"] == ch, doc
    r = SseReader(s, "channel=%s&token=%s" % (ch, t))
    r.headers()
    wait_for(lambda: subscribers(s, ch, {"Authorization": "Bearer " + t}) == 1, timeout=10,
             what="the private subscriber counted")
    # Without a token (no --publish-token here) the list shows public channels only.
    st, lst = s.get_json("/channels")
    assert ch not in [c["channel"] for c in lst["channels"]], lst
    st, h, b = s.get("/channels", headers={"Authorization": "Bearer " + token(pub=["p:*"])})
    assert st == 200 and ch in [c["channel"] for c in json.loads(b)["channels"]], b
    st, h, b = s.get("/channels", headers={"Authorization": "Bearer " + token(pub=["q:*"])})
    assert st == 200 and ch not in [c["channel"] for c in json.loads(b)["channels"]], b
    st, h, b = s.get("/channels", headers={"Authorization": "Bearer junk.junk.junk"})
    assert st == 401, b
    r.close()


def test_metrics_count_subscribers(chs):
    s = chs
    ch = unique_channel("met")
    r = SseReader(s, "channel=" + ch)
    r.headers()
    wait_for(lambda: sum(s.metrics(i)["pushwire_subscribers"] for i in range(2)) >= 1,
             timeout=10, what="pushwire_subscribers")
    r.close()
