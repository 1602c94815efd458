"""WebSocket relay (pushwire-relay): delivery, replay with since, resets,
RFC 6455 protocol errors, handshake refusals, Origin checks, slow consumers,
liveness pings, Redis restarts, SIGTERM and the client gauge.

Clients are the `websockets` library (asyncio) for what a browser would do,
and wsraw.RawWS for the bytes a library would never send or would hide.
"""
import asyncio
import http.client
import json
import random
import re
import signal
import socket
import struct
import threading
import time

import pytest
import websockets

import clients as C
import wsraw
from stack import Stack, wait_for, async_wait_for, unique_channel
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, encode_frame

MAX_MESSAGE = 4096        # the shared stack's --max-message
HANDSHAKE_TIMEOUT = 2     # the shared stack's --handshake-timeout


def run(coro, timeout=60):
    """Run one asyncio scenario, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def query(channel, since=None, epoch=None):
    q = "channel=" + channel
    if since is not None:
        q += "&since=%d" % since
    if epoch is not None:
        q += "&epoch=" + epoch
    return q


async def connect(port, channel, since=None, epoch=None, path="/status", **kw):
    """A websockets client as a browser would open it (no Origin unless
    given). ping_interval=None: it sends no pings but still answers them."""
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", None)
    kw.setdefault("compression", None)
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 3)
    uri = "ws://127.0.0.1:%d%s?%s" % (port, path, query(channel, since, epoch))
    return await websockets.connect(uri, **kw)


async def recv_json(ws, timeout=10):
    m = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(m, str), "a binary frame: %r" % m[:100]
    return json.loads(m)


def gauge(s, name, i=0):
    return s.relay_metrics_get(i)[name]


def check_message(doc, channel, epoch, id_, content):
    assert set(doc) == {"channel", "epoch", "id", "content", "time"}, doc
    assert doc["channel"] == channel and doc["epoch"] == epoch, doc
    assert doc["id"] == id_, (doc["id"], id_)
    assert doc["content"] == content, "content differs for id %d" % id_
    assert isinstance(doc["time"], int) and abs(doc["time"] / 1000 - time.time()) < 600


class Publisher(threading.Thread):
    """Publishes count messages "<tag>-<n>" in order; .count is how many
    are stored so far, .epoch the channel's epoch."""

    def __init__(self, s, channel, count, tag="m", start_at=1, pause=0.0):
        super().__init__(daemon=True)
        self.s, self.channel, self.n, self.tag = s, channel, count, tag
        self.start_at, self.pause = start_at, pause
        self.count, self.epoch, self.error = 0, None, None

    def run(self):
        try:
            for i in range(self.start_at, self.start_at + self.n):
                st, doc = self.s.publish("%s-%d" % (self.tag, i), channel=self.channel)
                assert st == 200 and doc["id"] == i, (st, doc)
                self.epoch = doc["epoch"]
                self.count = i
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as e:  # reported by the test
            self.error = e


# ---- stacks ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ws_stack():
    """nginx, Redis, two workers and one relay shared by most tests."""
    s = Stack(workers=2, relays=1, relay_args=[
        "--max-message", str(MAX_MESSAGE), "--handshake-timeout", str(HANDSHAKE_TIMEOUT)]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proto_channel(ws_stack):
    """A channel holding one message, for checking that the relay still
    serves after a protocol error."""
    ch = unique_channel("proto")
    st, doc = ws_stack.publish("still here", channel=ch)
    assert st == 200 and doc["id"] == 1
    return ch


def assert_relay_serves(s, channel):
    """A fresh raw client on the same relay is upgraded and gets the
    channel's first message."""
    with RawWS.open(s.relay_ports[0], "/status?" + query(channel, since=0)) as ws:
        f = ws.recv_data(5)
        assert f.opcode == OP_TEXT, f
        doc = json.loads(f.payload)
        assert doc["id"] == 1 and doc["content"] == "still here"


# ---- 1. delivery, byte for byte -------------------------------------------------------------

CONTENTS = [
    "plain ascii",
    "UTF-8: héllo wörld — ☃ 日本語 𝄞 🎉 \u00a0\u2028\u2029",
    'quotes " \' \\ \\" \\u0041 {"json": ["in", "json"]} %41 &amp; +',
    "<script>alert('xss')</script><img src=x onerror=alert(1)> </status>",
    "line1\nline2\r\n\ttab \x7f \x01",
    "é" * 32768,      # 64 KiB of two-byte characters
    "z" * 65536,      # the largest message
    " ",
]


async def until_live(s, ws, channel, after_id):
    """Publish probes until one reaches ws, a client without since, and
    return the first message it got. (A probe published within a few
    milliseconds of the upgrade can be missed: see
    test_message_published_right_after_open_is_delivered.)"""
    loop = asyncio.get_running_loop()
    for i in range(10):
        st, doc = await loop.run_in_executor(None, lambda: s.publish("probe", channel=channel))
        assert st == 200
        try:
            first = await recv_json(ws, 1.0)
        except asyncio.TimeoutError:
            continue
        assert first["id"] > after_id, "a client without since got an old message: %r" % first
        while first["id"] < doc["id"]:  # probes that arrived late
            first = await recv_json(ws)
        return first
    raise AssertionError("no probe reached the client")


@pytest.mark.parametrize("via", ["nginx", "direct"])
def test_messages_arrive_in_order_byte_exact(ws_stack, via):
    s = ws_stack
    port = s.port if via == "nginx" else s.relay_ports[0]
    ch = unique_channel("ws")
    st, old = s.publish("published before the client came", channel=ch)
    assert st == 200

    async def main():
        ws = await connect(port, ch)  # no since: live messages only
        try:
            probe = await until_live(s, ws, ch, old["id"])
            pubs = []
            for i, c in enumerate(CONTENTS):
                st, doc = s.publish(c, channel=ch, as_json=bool(i % 2))
                assert st == 200, doc
                pubs.append(doc)
            got = [await recv_json(ws) for _ in CONTENTS]
        finally:
            await ws.close()
        return probe, pubs, got

    probe, pubs, got = run(main())
    assert [p["id"] for p in pubs] == list(range(probe["id"] + 1, probe["id"] + 1 + len(CONTENTS)))
    for p, doc, c in zip(pubs, got, CONTENTS):
        check_message(doc, ch, old["epoch"], p["id"], c)
        assert doc["content"].encode("utf-8") == c.encode("utf-8")


def test_message_published_right_after_open_is_delivered(ws_stack):
    """Without since a client gets what is published after it connected:
    a message published as soon as the upgrade is answered (a chat page
    that posts from onopen) must arrive. Tried 40 times, through nginx and
    directly, publishing over a kept-alive HTTP connection."""
    s = ws_stack
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)

    def publish(content, ch):
        conn.request("POST", "/chat?channel=" + ch, body=("content=" + content).encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200, doc
        return doc

    try:
        for attempt in range(40):
            ch = unique_channel("open")
            publish("old", ch)
            via = "nginx" if attempt % 2 == 0 else "direct"
            port = s.port if via == "nginx" else s.relay_ports[0]
            with RawWS.open(port, "/status?channel=" + ch) as ws:
                doc = publish("right-after-open", ch)
                try:
                    f = ws.recv_data(2.0)
                except socket.timeout:
                    raise AssertionError(
                        "attempt %d (%s): message %d, published right after the 101, never "
                        "arrived" % (attempt, via, doc["id"]))
                got = json.loads(f.payload)
                assert (got["id"], got["content"]) == (doc["id"], "right-after-open"), got
    finally:
        conn.close()


def test_ws_path_alias_and_since_zero_replays_everything(ws_stack):
    s = ws_stack
    ch = unique_channel("ws")
    for i in range(1, 4):
        s.publish("h%d" % i, channel=ch)

    async def main():
        out = []
        for port in (s.port, s.relay_ports[0]):
            ws = await connect(port, ch, since=0, path="/ws")
            out.append([(await recv_json(ws))["content"] for _ in range(3)])
            await ws.close()
        return out

    assert run(main()) == [["h1", "h2", "h3"]] * 2


# ---- 2. fan-out to 1,000 clients ----------------------------------------------------------

def test_one_publish_reaches_1000_clients(ws_stack):
    s = ws_stack
    ch = unique_channel("fan")
    n_direct = n_nginx = 500
    base = gauge(s, "pushwire_ws_clients")
    rss_before = gauge(s, "process_resident_memory_bytes")

    async def main():
        sem = asyncio.Semaphore(100)

        async def one(port):
            async with sem:
                return await connect(port, ch)

        clients = await asyncio.gather(*[one(s.relay_ports[0]) for _ in range(n_direct)],
                                       *[one(s.port) for _ in range(n_nginx)])
        await async_wait_for(lambda: gauge(s, "pushwire_ws_clients") >= base + 1000,
                             timeout=20, what="1000 clients on the relay")
        rss_open = gauge(s, "process_resident_memory_bytes")
        arrivals = [None] * len(clients)

        async def receive(i, ws):
            doc = await recv_json(ws, 30)
            arrivals[i] = time.monotonic()
            return doc

        tasks = [asyncio.ensure_future(receive(i, ws)) for i, ws in enumerate(clients)]
        t0 = time.monotonic()
        st, pub = await asyncio.get_running_loop().run_in_executor(
            None, lambda: s.publish("to everyone", channel=ch))
        docs = await asyncio.gather(*tasks)
        elapsed = max(arrivals) - t0
        await asyncio.gather(*[ws.close() for ws in clients])
        return st, pub, docs, elapsed, rss_open

    st, pub, docs, elapsed, rss_open = run(main(), timeout=120)
    assert st == 200
    assert len(docs) == 1000
    for doc in docs:
        check_message(doc, ch, pub["epoch"], pub["id"], "to everyone")
    print("\none publish reached 1000 clients in %.3f s; relay RSS %+.1f KiB per open client "
          "(sanitizer build)" % (elapsed, (rss_open - rss_before) / 1024 / 1000))
    assert elapsed < 10
    wait_for(lambda: gauge(s, "pushwire_ws_clients") == base, timeout=15,
             what="the clients to be gone")


# ---- 3. since: replay under concurrent publishing, reconnect loops -----------------------

def test_since_replay_while_publishing(ws_stack):
    s = ws_stack
    ch = unique_channel("since")
    total = 300
    pub = Publisher(s, ch, total)
    # (since, connect once this many are published, via)
    plan = [(0, 0, "direct"), (0, 20, "nginx"), (1, 5, "nginx"), (7, 60, "direct"),
            (50, 50, "direct"), (50, 150, "nginx"), (120, 121, "nginx"), (149, 200, "direct"),
            (180, 180, "direct"), (240, 260, "nginx"), (299, 299, "direct"), (300, 300, "nginx")]

    async def client(since, when, via):
        await async_wait_for(lambda: pub.count >= when, timeout=60, interval=0.002,
                             what="%d published" % when)
        port = s.port if via == "nginx" else s.relay_ports[0]
        ws = await connect(port, ch, since=since, epoch=pub.epoch if since else None)
        got = []
        try:
            while (got[-1]["id"] if got else since) < total:
                try:
                    got.append(await recv_json(ws, 20))
                except asyncio.TimeoutError:
                    raise AssertionError("since=%d via %s connected at %d: stuck after %r "
                                         "(%d received)" % (since, via, when, got[-1:], len(got)))
                assert "reset" not in got[-1], got[-1]
            # Nothing after the last one.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
        finally:
            await ws.close()
        return since, got

    async def main():
        pub.start()
        return await asyncio.gather(*[client(*p) for p in plan])

    results = run(main(), timeout=90)
    pub.join(10)
    assert pub.error is None, pub.error
    for since, got in results:
        ids = [d["id"] for d in got]
        assert ids == list(range(since + 1, total + 1)), "since=%d: %r" % (since, ids[:20])
        assert [d["content"] for d in got] == ["m-%d" % i for i in range(since + 1, total + 1)]
        assert all(d["epoch"] == pub.epoch for d in got)


def test_reconnect_loop_with_since_sees_every_id_once(ws_stack):
    s = ws_stack
    ch = unique_channel("loop")
    total = 300
    pub = Publisher(s, ch, total)
    rng = random.Random(7)

    async def main():
        seen, epoch, rounds = [], None, 0
        pub.start()
        while not seen or seen[-1] < total:
            port = s.port if rounds % 2 else s.relay_ports[0]
            last = seen[-1] if seen else 0
            ws = await connect(port, ch, since=last, epoch=epoch)
            rounds += 1
            for _ in range(rng.randint(1, 6)):
                doc = await recv_json(ws, 20)
                assert "reset" not in doc, doc
                assert epoch in (None, doc["epoch"])
                epoch = doc["epoch"]
                seen.append(doc["id"])
                if doc["id"] == total:
                    break
            if rounds % 3 == 0:
                ws.transport.abort()  # vanish without a close frame
            else:
                await ws.close()
        return seen, rounds

    seen, rounds = run(main(), timeout=90)
    pub.join(10)
    assert pub.error is None, pub.error
    assert seen == list(range(1, total + 1)), [x for x in seen if seen.count(x) > 1][:10]
    assert rounds > 40


# ---- 4. resets ------------------------------------------------------------------------------

def test_reset_on_wrong_epoch_and_on_since_ahead(ws_stack):
    s = ws_stack
    ch = unique_channel("reset")
    pubs = [s.publish(c, channel=ch)[1] for c in ("a", "b", "c")]
    epoch = pubs[0]["epoch"]

    async def expect_reset(port, since, ep, newest):
        ws = await connect(port, ch, since=since, epoch=ep)
        first = await recv_json(ws)
        assert first == {"channel": ch, "epoch": epoch, "reset": True, "id": newest}, first
        replay = [await recv_json(ws) for _ in range(newest)]
        return ws, replay

    async def main():
        out = []
        for port in (s.relay_ports[0], s.port):
            # An epoch that is not the channel's: reset, then the history.
            ws, replay = await expect_reset(port, 1, "0000000000000000", 3)
            out.append(replay)
            await ws.close()
            # since ahead of the newest id: reset too.
            ws, replay = await expect_reset(port, 99, epoch, 3)
            out.append(replay)
            await ws.close()
        # After a reset the stream goes on live, with no second reset.
        ws, replay = await expect_reset(s.relay_ports[0], 5, "bogus", 3)
        st, d = s.publish("d", channel=ch)
        live = await recv_json(ws)
        await ws.close()
        return out, live, d

    out, live, d = run(main())
    for replay in out:
        for doc, c, i in zip(replay, "abc", (1, 2, 3)):
            check_message(doc, ch, epoch, i, c)
    check_message(live, ch, epoch, 4, "d")
    assert d["id"] == 4


def test_since_without_epoch_and_empty_channel(ws_stack):
    s = ws_stack
    ch = unique_channel("noep")
    for c in ("a", "b", "c"):
        s.publish(c, channel=ch)
    empty = unique_channel("empty")

    async def main():
        ws = await connect(s.relay_ports[0], ch, since=2)  # no epoch: taken as current
        doc = await recv_json(ws)
        await ws.close()
        # since=5 on a channel with no message: a reset naming id 0, nothing
        # replayed, and the first message follows live.
        ws = await connect(s.relay_ports[0], empty, since=5)
        first = await recv_json(ws)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        st, p = s.publish("first", channel=empty)
        nxt = await recv_json(ws)
        await ws.close()
        return doc, first, nxt, p

    doc, first, nxt, p = run(main())
    assert doc["id"] == 3 and doc["content"] == "c" and "reset" not in doc
    assert first == {"channel": empty, "epoch": p["epoch"], "reset": True, "id": 0}, first
    check_message(nxt, empty, p["epoch"], 1, "first")


# ---- 5. RFC 6455 protocol errors over a raw socket -------------------------------------------

def raw_close_frame(payload):
    return encode_frame(OP_CLOSE, payload)


PROTOCOL_ERRORS = [
    ("unmasked", encode_frame(OP_TEXT, "hi", mask=False), 1002),
    ("unmasked-ping", encode_frame(OP_PING, "hi", mask=False), 1002),
    ("reserved-opcode-3", encode_frame(0x3, "x"), 1002),
    ("reserved-control-opcode-b", encode_frame(0xB, "x"), 1002),
    ("rsv1", encode_frame(OP_TEXT, "x", rsv=0x40), 1002),
    ("rsv3", encode_frame(OP_TEXT, "x", rsv=0x10), 1002),
    ("fragmented-ping", encode_frame(OP_PING, "x", fin=False), 1002),
    ("continuation-without-start", encode_frame(OP_CONT, "x"), 1002),
    ("new-message-inside-fragmented",
     encode_frame(OP_TEXT, "a", fin=False) + encode_frame(OP_TEXT, "b"), 1002),
    ("control-too-long", encode_frame(OP_PING, b"p" * 126), 1002),
    ("length-msb-set", b"\x81\xff\x80\x00\x00\x00\x00\x00\x00\x01" + b"\x00" * 4, 1002),
    ("invalid-utf8", encode_frame(OP_TEXT, b"ok \xff"), 1007),
    ("utf8-surrogate", encode_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    ("utf8-overlong", encode_frame(OP_TEXT, b"\xc0\xaf"), 1007),
    ("utf8-cut-at-end", encode_frame(OP_TEXT, b"ok\xe2\x82"), 1007),
    ("utf8-invalid-across-fragments",
     encode_frame(OP_TEXT, b"\xe2", fin=False) + encode_frame(OP_CONT, b"\x28\xa1"), 1007),
    ("too-big", encode_frame(OP_TEXT, b"x" * (MAX_MESSAGE + 1)), 1009),
    ("too-big-binary", encode_frame(OP_BINARY, b"\x00" * 70000), 1009),
    ("too-big-in-fragments",
     encode_frame(OP_TEXT, b"x" * 3000, fin=False) + encode_frame(OP_CONT, b"x" * 3000), 1009),
    ("close-1005", raw_close_frame(b"\x03\xed"), 1002),
    ("close-999", raw_close_frame(b"\x03\xe7"), 1002),
    ("close-1006", raw_close_frame(b"\x03\xee"), 1002),
    ("close-1015", raw_close_frame(b"\x03\xf7"), 1002),
    ("close-5000", raw_close_frame(b"\x13\x88"), 1002),
    ("close-one-byte", raw_close_frame(b"\x03"), 1002),
    ("close-reason-invalid-utf8", raw_close_frame(b"\x03\xe8\xff"), 1007),
]


@pytest.mark.parametrize("name,data,code", PROTOCOL_ERRORS, ids=[p[0] for p in PROTOCOL_ERRORS])
def test_protocol_error_is_closed_with_rfc_code(ws_stack, proto_channel, name, data, code):
    s = ws_stack
    base = gauge(s, "pushwire_ws_protocol_errors_total")
    with RawWS.open(s.relay_ports[0], "/status?channel=" + unique_channel("ws")) as ws:
        ws.send_raw(data)
        got, reason, before = ws.read_close(5)
        assert (got, before) == (code, []), (name, got, reason, before)
        assert ws.expect_eof(5) is True, "the relay reset the connection instead of closing it"
    wait_for(lambda: gauge(s, "pushwire_ws_protocol_errors_total") > base, timeout=5,
             what="the error to be counted")
    assert_relay_serves(s, proto_channel)


def test_ping_gets_pong_with_same_payload(ws_stack):
    s = ws_stack
    with RawWS.open(s.relay_ports[0], "/status?channel=" + unique_channel("ws")) as ws:
        for payload in (b"", b"hello", bytes(range(125)), "ünï".encode()):
            ws.send_frame(OP_PING, payload)
            f = ws.recv_frame(5)
            assert (f.opcode, f.payload) == (OP_PONG, payload)
        # A ping sent one byte at a time.
        for b in encode_frame(OP_PING, b"slow"):
            ws.send_raw(bytes([b]))
        f = ws.recv_frame(5)
        assert (f.opcode, f.payload) == (OP_PONG, b"slow")
        # Unsolicited pongs and client messages are ignored.
        ws.send_frame(OP_PONG, b"unsolicited")
        ws.send_text("hello relay")
        ws.send_frame(OP_BINARY, b"\x00\x01")
        ws.send_frame(OP_TEXT, b"x" * MAX_MESSAGE)  # exactly the limit
        ws.send_frame(OP_PING, b"after")
        f = ws.recv_frame(5)
        assert (f.opcode, f.payload) == (OP_PONG, b"after")


def test_ping_inside_fragmented_message(ws_stack):
    s = ws_stack
    with RawWS.open(s.relay_ports[0], "/status?channel=" + unique_channel("ws")) as ws:
        ws.send_frame(OP_TEXT, b"hel\xe2\x82", fin=False)  # a character split over fragments
        ws.send_frame(OP_PING, b"mid-1")
        f = ws.recv_frame(5)
        assert (f.opcode, f.payload) == (OP_PONG, b"mid-1")
        ws.send_frame(OP_CONT, b"\xac l", fin=False)
        ws.send_frame(OP_PING, b"mid-2")
        f = ws.recv_frame(5)
        assert (f.opcode, f.payload) == (OP_PONG, b"mid-2")
        ws.send_frame(OP_CONT, b"o")
        ws.send_frame(OP_PING, b"after")
        f = ws.recv_frame(5)
        assert (f.opcode, f.payload) == (OP_PONG, b"after")
        ws.send_close(1000)
        code, reason, before = ws.read_close(5)
        assert (code, before) == (1000, [])
        assert ws.expect_eof(5) is True


@pytest.mark.parametrize("sent,echo", [(1000, 1000), (1001, 1001), (3000, 3000), (4999, 4999),
                                       (None, 1000)])
def test_close_is_echoed_then_connection_closed(ws_stack, proto_channel, sent, echo):
    s = ws_stack
    base = gauge(s, "pushwire_ws_protocol_errors_total")
    with RawWS.open(s.relay_ports[0], "/status?channel=" + unique_channel("ws")) as ws:
        ws.send_close(sent, "bye" if sent else b"")
        code, reason, before = ws.read_close(5)
        assert (code, before) == (echo, [])
        assert ws.expect_eof(5) is True
    assert gauge(s, "pushwire_ws_protocol_errors_total") == base
    assert_relay_serves(s, proto_channel)


def test_frames_pipelined_behind_the_handshake(ws_stack):
    s = ws_stack
    ws = RawWS(s.relay_ports[0])
    with ws:
        key = wsraw.new_key()
        ws.send_raw(wsraw.upgrade_request("/status?channel=" + unique_channel("ws"),
                                          host="127.0.0.1:%d" % s.relay_ports[0], key=key) +
                    encode_frame(OP_PING, b"early") + encode_frame(OP_CLOSE, b"\x03\xe8"))
        status, headers, body = ws.read_response()
        assert status == 101 and headers["sec-websocket-accept"] == wsraw.accept_for(key)
        f = ws.recv_frame(5)
        assert (f.opcode, f.payload) == (OP_PONG, b"early")
        code, reason, before = ws.read_close(5)
        assert code == 1000 and ws.expect_eof(5) is True


def test_close_after_half_sent_message_is_well_formed(ws_stack):
    """A protocol error from a client whose socket is full: the close frame
    must follow the frame being written, not land inside its payload."""
    s = ws_stack
    ch = unique_channel("half")
    big = "h" * 60000
    for _ in range(8):
        s.publish(big, channel=ch)
    with RawWS.open(s.relay_ports[0], "/status?" + query(ch, since=0), rcvbuf=4096) as ws:
        # The replay (one batch of 480 kB) fills both socket buffers: once
        # its first bytes are here the relay is stuck in the middle of it.
        # Then break the protocol.
        wait_for(lambda: ws.sock.recv(1, socket.MSG_PEEK), timeout=5, what="data")
        ws.send_frame(OP_TEXT, "x", mask=False)
        frames = []
        while True:
            f = ws.recv_frame(5)  # raises Truncated on a spliced close frame
            if f.opcode == OP_CLOSE:
                break
            assert f.opcode == OP_TEXT and json.loads(f.payload)["content"] == big
            frames.append(f)
        assert f.close_code == 1002
        assert ws.expect_eof(5) is True


# ---- 6. handshake refusals ----------------------------------------------------------------

def relay_exchange(s, request, **kw):
    status, headers, body, ws = wsraw.http_exchange(s.relay_ports[0], request, **kw)
    return status, headers, body, ws


HANDSHAKE_REFUSALS = [
    ("no-key", dict(omit=("Sec-WebSocket-Key",)), 400),
    ("short-key", dict(key="abc"), 400),
    ("key-not-16-bytes", dict(key="AAAAAAAAAAAAAAAAAAAAAAAAAAAA"), 400),
    ("version-8", dict(version="8"), 426),
    ("no-version", dict(omit=("Sec-WebSocket-Version",)), 426),
    ("no-upgrade", dict(omit=("Upgrade",)), 400),
    ("no-host", dict(omit=("Host",)), 400),
    ("post", dict(method="POST"), (400, 405)),
    ("bad-channel", dict(path="/status?channel=bad%20channel"), 400),
    ("long-channel", dict(path="/status?channel=" + "c" * 65), 400),
    ("two-channels", dict(path="/status?channel=a&channel=b"), 400),
    ("bad-since", dict(path="/status?channel=a&since=abc"), 400),
    ("unknown-path", dict(path="/nope?channel=a"), 404),
    ("unknown-path-prefix", dict(path="/statusx"), 404),
]


@pytest.mark.parametrize("name,kw,status", HANDSHAKE_REFUSALS,
                         ids=[h[0] for h in HANDSHAKE_REFUSALS])
def test_handshake_refusals(ws_stack, proto_channel, name, kw, status):
    s = ws_stack
    kw = dict(kw)
    kw.setdefault("path", "/status?channel=a")
    kw.setdefault("host", "127.0.0.1:%d" % s.relay_ports[0])
    st, headers, body, ws = relay_exchange(s, wsraw.upgrade_request(**kw))
    with ws:
        assert st in (status if isinstance(status, tuple) else (status,)), (st, body)
        assert json.loads(body)["error"]
        if st == 426:
            assert headers["sec-websocket-version"] == "13"
        if st == 405:
            assert headers["allow"] == "GET"
        assert ws.expect_eof(5)
    assert_relay_serves(s, proto_channel)


def test_handshake_trickled_one_byte_at_a_time(ws_stack):
    s = ws_stack
    ch = unique_channel("ws")
    st, pub = s.publish("trickled", channel=ch)
    key = wsraw.new_key()
    req = wsraw.upgrade_request("/status?" + query(ch, since=0),
                                host="127.0.0.1:%d" % s.relay_ports[0], key=key)
    st, headers, body, ws = relay_exchange(s, req, trickle=0.001)
    with ws:
        assert st == 101 and headers["sec-websocket-accept"] == wsraw.accept_for(key)
        doc = json.loads(ws.recv_data(5).payload)
        assert doc["id"] == 1 and doc["content"] == "trickled"


def test_oversized_head_is_431(ws_stack):
    s = ws_stack
    big = wsraw.upgrade_request("/status?channel=a", host="127.0.0.1:%d" % s.relay_ports[0],
                                extra=[("X-Padding", "p" * 9000)])
    st, headers, body, ws = relay_exchange(s, big)
    with ws:
        assert st == 431 and json.loads(body)["error"]
    # A head just under the limit still works.
    req = wsraw.upgrade_request("/status?channel=a", host="127.0.0.1:%d" % s.relay_ports[0],
                                extra=[("X-Padding", "p")])
    pad = 8192 - len(req) - 1
    req = wsraw.upgrade_request("/status?channel=a", host="127.0.0.1:%d" % s.relay_ports[0],
                                extra=[("X-Padding", "p" * pad)])
    assert len(req) < 8192
    st, headers, body, ws = relay_exchange(s, req)
    with ws:
        assert st == 101


def test_silent_connection_is_dropped_at_handshake_timeout(ws_stack):
    s = ws_stack
    with RawWS(s.relay_ports[0]) as ws:
        ws.send_raw(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # never finished
        t0 = time.monotonic()
        assert ws.expect_eof(HANDSHAKE_TIMEOUT + 3)
        assert time.monotonic() - t0 < HANDSHAKE_TIMEOUT + 1.5


# ---- 7. Origin -----------------------------------------------------------------------------

async def status_of(port, channel, **kw):
    try:
        ws = await connect(port, channel, **kw)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


def test_origin_default_rule(ws_stack):
    s = ws_stack
    ch = unique_channel("ws")
    page = "http://127.0.0.1:%d" % s.port

    async def main():
        return {
            "same host:port via nginx": await status_of(s.port, ch, origin=page),
            "same, with trailing slash": await status_of(s.port, ch, origin=page + "/"),
            "no Origin via nginx": await status_of(s.port, ch),
            "evil via nginx": await status_of(s.port, ch, origin="http://evil.example"),
            "other port via nginx": await status_of(s.port, ch, origin="http://127.0.0.1:1"),
            "null via nginx": await status_of(s.port, ch, origin="null"),
            "nginx page origin, direct to relay": await status_of(s.relay_ports[0], ch,
                                                                  origin=page),
            "relay's own origin, direct": await status_of(
                s.relay_ports[0], ch, origin="http://127.0.0.1:%d" % s.relay_ports[0]),
            "no Origin direct": await status_of(s.relay_ports[0], ch),
        }

    got = run(main())
    assert got == {
        "same host:port via nginx": 101,
        "same, with trailing slash": 101,
        "no Origin via nginx": 101,
        "evil via nginx": 403,
        "other port via nginx": 403,
        "null via nginx": 403,
        "nginx page origin, direct to relay": 403,
        "relay's own origin, direct": 101,
        "no Origin direct": 101,
    }


def test_origin_allow_list(ws_stack):
    s = ws_stack
    i = len(s.relays)
    s.start_relay(i, extra=["--origins", "http://a.example, https://b.example:8443"])
    port = s.relay_ports[i]
    ch = unique_channel("ws")
    try:
        async def main():
            return {o: await status_of(port, ch, origin=o) for o in (
                "http://a.example", "http://a.example:80", "https://b.example:8443",
                "https://a.example", "http://a.example:8080", "http://b.example:8443",
                "http://127.0.0.1:%d" % port, "http://evil.example")}

        got = run(main())
        assert got == {"http://a.example": 101, "http://a.example:80": 101,
                       "https://b.example:8443": 101, "https://a.example": 403,
                       "http://a.example:8080": 403, "http://b.example:8443": 403,
                       "http://127.0.0.1:%d" % port: 403, "http://evil.example": 403}
        assert run(status_of(port, ch)) == 101  # no Origin: not a browser
        with RawWS(port) as ws:
            ws.send_raw(wsraw.upgrade_request("/status?channel=a", host="x",
                                              origin="http://evil.example"))
            st, headers, body = ws.read_response()
            assert st == 403 and json.loads(body)["error"]
    finally:
        assert s.relays[i].stop() == 0


# ---- 8. slow consumers ----------------------------------------------------------------------

SLOW_ARGS = ["--max-queue", "1048576", "--sndbuf", "16384"]


@pytest.fixture(scope="module")
def slow_stack():
    # A small ASan quarantine, so that RSS shows what the relay holds rather
    # than freed memory ASan keeps poisoned.
    s = Stack(workers=2, relays=1, relay_args=SLOW_ARGS, env={
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=66:quarantine_size_mb=8"}).start()
    yield s
    s.stop()


def slow_consumer_run(s, port, count, size, settle_timeout=30, reconnect=False):
    """A raw client that never reads and a websockets client on one channel
    while count messages of size bytes are published. Returns (the raw
    client, what the good client got, relay RSS growth, cut-offs, the first
    publish, how often the good client was closed). With reconnect, the
    good client resumes with since whenever it is closed."""
    ch = unique_channel("slow")
    st, first = s.publish("start", channel=ch)
    m0 = s.relay_metrics_get(0)
    raw = RawWS.open(port, "/status?" + query(ch, since=first["id"], epoch=first["epoch"]),
                     rcvbuf=4096)
    closes = []

    async def main():
        got = []
        good = await connect(port, ch, since=first["id"], epoch=first["epoch"])

        async def reader():
            nonlocal good
            while len(got) < count:
                try:
                    got.append(await recv_json(good, settle_timeout))
                except websockets.exceptions.ConnectionClosed:
                    closes.append(good.close_code)
                    if not reconnect:
                        raise
                    since = got[-1]["id"] if got else first["id"]
                    good = await connect(port, ch, since=since, epoch=first["epoch"])

        task = asyncio.ensure_future(reader())
        try:
            loop = asyncio.get_running_loop()
            for i in range(count):
                # The good client keeps up: never more than a few messages
                # (well under --max-queue) behind, however loaded the test
                # machine is; the raw one never reads at all.
                deadline = loop.time() + settle_timeout
                while len(got) < i - 8 and loop.time() < deadline and not task.done():
                    await asyncio.sleep(0.01)
                body = ("%06d" % i) + "s" * (size - 6)
                st, _ = await loop.run_in_executor(None, lambda: s.publish(body, channel=ch))
                assert st == 200
            await asyncio.wait_for(task, settle_timeout)
        finally:
            task.cancel()
            await good.close()
        return got

    try:
        got = run(main(), timeout=settle_timeout + 60)
    except BaseException:
        raw.close()
        raise
    m1 = s.relay_metrics_get(0)
    growth = m1["process_resident_memory_bytes"] - m0["process_resident_memory_bytes"]
    cut_name = "pushwire_slow_consumer_disconnects_total"
    cut = m1[cut_name] - m0[cut_name]
    return raw, got, growth, cut, first, closes


def test_slow_consumer_is_cut_off_and_others_get_everything(slow_stack):
    s = slow_stack
    count, size = 100, 50000
    raw, got, growth, cut, first, closes = slow_consumer_run(s, s.relay_ports[0], count, size)
    with raw:
        assert closes == [] and cut == 1, "cut-offs: %d, good client closed: %r" % (cut, closes)
        assert [d["id"] for d in got] == list(range(first["id"] + 1, first["id"] + 1 + count))
        assert all(d["content"].startswith("%06d" % i) and len(d["content"]) == size
                   for i, d in enumerate(got))
        print("\nslow consumer: relay RSS grew %.1f MB while %d MB were published"
              % (growth / 1e6, count * size // 1000000))
        assert growth < 20e6
        # When it finally reads, the stream ends (EOF, after the 1008 close
        # if the relay could still send it); frames before are whole.
        # (Whether that close frame is well formed is the next test's.)
        frames = []
        try:
            while True:
                f = raw.recv_frame(10)
                frames.append(f)
                if f.opcode == OP_CLOSE:
                    assert f.close_code in (1008, 1013), f
                    assert raw.expect_eof(10)
                    break
                assert f.opcode == OP_TEXT
        except (EOFError, wsraw.Truncated):
            assert raw.eof  # ended, inside a frame or not
        assert len(frames) < count
    wait_for(lambda: gauge(s, "pushwire_ws_clients") == 0, timeout=10, what="clients gone")


def test_slow_consumer_close_frame_is_not_spliced_into_a_message(slow_stack):
    """A client that reads late, but reads: as soon as it is cut off it reads
    everything, and must see whole frames and then the 1008 close frame, not
    a close frame written into the middle of a half-sent message."""
    s = slow_stack
    ch = unique_channel("splice")
    st, first = s.publish("start", channel=ch)
    with RawWS.open(s.relay_ports[0], "/status?" + query(ch, since=first["id"]),
                    rcvbuf=4096) as raw:
        base = gauge(s, "pushwire_slow_consumer_disconnects_total")
        for i in range(60):
            s.publish("%06d" % i + "q" * 49994, channel=ch)
            if gauge(s, "pushwire_slow_consumer_disconnects_total") > base:
                break
        assert gauge(s, "pushwire_slow_consumer_disconnects_total") == base + 1
        # Read at once, well inside the relay's close linger.
        frames = []
        while True:
            f = raw.recv_frame(5)
            if f.opcode == OP_CLOSE:
                break
            assert f.opcode == OP_TEXT
            frames.append(json.loads(f.payload)["id"])
        assert f.close_code == 1008
        assert frames == list(range(2, 2 + len(frames)))
        assert raw.expect_eof(5) is True


def test_slow_consumer_through_nginx(slow_stack):
    """Through nginx the proxy's socket buffers absorb megabytes before the
    relay's queue grows; with enough data the client that does not read is
    still cut off. The reading client goes through the same thin pipe, so
    under CPU contention it can fall 1 MiB behind too: it resumes with since
    and must end up with every message exactly once."""
    s = slow_stack
    count, size = 300, 60000
    raw, got, growth, cut, first, closes = slow_consumer_run(s, s.port, count, size,
                                                             settle_timeout=60, reconnect=True)
    with raw:
        print("\nslow consumer via nginx: %d cut-off(s), reading client closed %d time(s) "
              "%r, relay RSS %+.1f MB, %d MB published"
              % (cut, len(closes), closes, growth / 1e6, count * size // 1000000))
        assert cut >= 1 and cut == 1 + len(closes)
        assert [d["id"] for d in got] == list(range(first["id"] + 1, first["id"] + 1 + count))
        assert growth < 20e6
        # The cut-off client's connection ends once it reads what nginx
        # still holds for it.
        deadline = time.monotonic() + 15
        raw.sock.settimeout(10)
        try:
            while raw.sock.recv(1 << 16) and time.monotonic() < deadline:
                pass
        except ConnectionResetError:
            pass
        assert time.monotonic() < deadline, "nginx kept the cut-off client open"


# ---- 9. liveness ---------------------------------------------------------------------------

@pytest.mark.stack(workers=1, relays=1, relay_args=["--ping-interval", "1"])
def test_dead_client_is_dropped_and_live_one_kept(fresh_stack):
    s = fresh_stack
    ch = unique_channel("live")
    port = s.relay_ports[0]

    async def main():
        good = await connect(port, ch)  # answers pings by itself
        raw = RawWS.open(port, "/status?channel=" + ch)  # answers nothing, reads nothing
        t0 = time.monotonic()
        await async_wait_for(lambda: gauge(s, "pushwire_dead_clients_total") >= 1, timeout=5,
                             interval=0.05, what="the silent client to be dropped")
        dropped_after = time.monotonic() - t0
        await async_wait_for(lambda: gauge(s, "pushwire_ws_clients") == 1, timeout=2,
                             what="the gauge to drop")
        # The good client stays over 4 s of idleness.
        await asyncio.sleep(max(0.0, 4.2 - (time.monotonic() - t0)))
        assert good.open
        st, pub = await asyncio.get_running_loop().run_in_executor(
            None, lambda: s.publish("still alive", channel=ch))
        doc = await recv_json(good, 5)
        await good.close()
        return raw, dropped_after, doc, pub

    raw, dropped_after, doc, pub = run(main())
    with raw:
        assert dropped_after < 3.5, dropped_after
        f = raw.recv_frame(2)
        assert f.opcode == OP_PING, f
        assert raw.expect_eof(2)
    check_message(doc, ch, pub["epoch"], pub["id"], "still alive")
    assert gauge(s, "pushwire_dead_clients_total") == 1


# ---- 10. Redis restarts ----------------------------------------------------------------------

def all_redis_up(s):
    up = all(s.metrics(i)['pushwire_redis_up{conn="commands"}'] == 1 and
             s.metrics(i)['pushwire_redis_up{conn="pubsub"}'] == 1 for i in range(s.nworkers))
    m = s.relay_metrics_get(0)
    return up and m['pushwire_redis_up{conn="commands"}'] == 1 and \
        m['pushwire_redis_up{conn="pubsub"}'] == 1


def redis_restart_scenario(s):
    """Returns what a client connected throughout and a client reconnecting
    with since/epoch saw, with the publishes before and after."""
    ch = unique_channel("rr")
    before = [s.publish(c, channel=ch)[1] for c in ("a", "b", "c")]
    e1 = before[0]["epoch"]

    async def main():
        stay = await connect(s.relay_ports[0], ch, since=0)
        got_stay = [await recv_json(stay) for _ in range(3)]
        leave = await connect(s.port, ch, since=0)
        got_leave = [await recv_json(leave) for _ in range(3)]
        await leave.close()
        loop = asyncio.get_running_loop()
        s.redis.stop(signal.SIGKILL)
        s.start_redis()
        await async_wait_for(lambda: all_redis_up(s), timeout=20, interval=0.1,
                             what="workers and relay to reconnect to Redis")
        after = []
        for c in ("x", "y"):
            st, doc = await loop.run_in_executor(None, lambda: s.publish(c, channel=ch))
            assert st == 200, doc
            after.append(doc)
        back = await connect(s.port, ch, since=got_leave[-1]["id"], epoch=e1)
        got_back = []
        while not got_back or got_back[-1].get("content") != "y":
            got_back.append(await recv_json(back, 10))
        st, z = await loop.run_in_executor(None, lambda: s.publish("z", channel=ch))
        after.append(z)
        got_back.append(await recv_json(back, 10))
        await back.close()
        while not got_stay or got_stay[-1].get("content") != "z":
            got_stay.append(await recv_json(stay, 10))
        await stay.close()
        return got_stay, got_back, after

    got_stay, got_back, after = run(main(), timeout=60)
    return before, after, got_stay, got_back


@pytest.mark.stack(workers=2, relays=1, worker_args=["--redis-timeout", "500"],
                   relay_args=["--redis-timeout", "500"])
def test_redis_restarted_without_persistence_gives_reset(fresh_stack):
    before, after, got_stay, got_back = redis_restart_scenario(fresh_stack)
    e1, e2 = before[0]["epoch"], after[0]["epoch"]
    assert e2 != e1, "Redis lost everything but the epoch did not change"
    assert [d["id"] for d in after] == [1, 2, 3]
    # The reconnecting client: a reset in the new epoch, then x, y, z.
    assert got_back[0] == {"channel": got_back[0]["channel"], "epoch": e2, "reset": True,
                           "id": 2}, got_back[0]
    assert [(d["id"], d["content"], d["epoch"]) for d in got_back[1:]] == \
        [(1, "x", e2), (2, "y", e2), (3, "z", e2)]
    # The client connected throughout: a, b, c; then a reset before any
    # message of the new epoch; after the last reset, x, y, z exactly once.
    assert [d["content"] for d in got_stay[:3]] == ["a", "b", "c"]
    rest = got_stay[3:]
    resets = [i for i, d in enumerate(rest) if d.get("reset")]
    assert resets and resets[0] == 0, rest
    assert all(rest[i]["epoch"] != e1 for i in resets)
    assert rest[resets[-1]]["epoch"] == e2
    tail = rest[resets[-1] + 1:]
    assert [(d["id"], d["content"], d["epoch"]) for d in tail] == \
        [(1, "x", e2), (2, "y", e2), (3, "z", e2)], rest


@pytest.mark.stack(workers=2, relays=1, worker_args=["--redis-timeout", "500"],
                   relay_args=["--redis-timeout", "500"],
                   redis_args=["--appendonly", "yes", "--appendfsync", "always"])
def test_redis_restarted_with_aof_loses_nothing(fresh_stack):
    before, after, got_stay, got_back = redis_restart_scenario(fresh_stack)
    e1 = before[0]["epoch"]
    assert [d["id"] for d in after] == [4, 5, 6] and all(d["epoch"] == e1 for d in after)
    for got in (got_stay[3:], got_back):
        assert not any(d.get("reset") for d in got), got
        assert [(d["id"], d["content"], d["epoch"]) for d in got] == \
            [(4, "x", e1), (5, "y", e1), (6, "z", e1)]
    assert [(d["id"], d["content"]) for d in got_stay[:3]] == [(1, "a"), (2, "b"), (3, "c")]


# ---- 11. SIGTERM -------------------------------------------------------------------------------

@pytest.mark.stack(workers=2, relays=2)
def test_sigterm_closes_1001_and_clients_resume_on_another_relay(fresh_stack):
    s = fresh_stack
    ch = unique_channel("term")
    st, first = s.publish("m-0", channel=ch)
    total = 150
    pub = Publisher(s, ch, total, start_at=2, pause=0.004)
    last_id = total + 1

    async def follower(ws, codes):
        """Read everything up to last_id, reconnecting through nginx with
        since after a close."""
        got = []
        while not got or got[-1]["id"] < last_id:
            try:
                got.append(await recv_json(ws, 20))
                assert "reset" not in got[-1]
            except websockets.exceptions.ConnectionClosed:
                codes.append(ws.close_code)
                since = got[-1]["id"] if got else first["id"]
                ws = await connect(s.port, ch, since=since, epoch=first["epoch"])
        await ws.close()
        return got

    async def main():
        direct = await connect(s.relay_ports[0], ch, since=first["id"], epoch=first["epoch"])
        # nginx clients until one of them lands on relay 0 (least_conn
        # spreads them; the rest are on relay 1).
        via_nginx = []
        for _ in range(10):
            via_nginx.append(await connect(s.port, ch, since=first["id"], epoch=first["epoch"]))
            await async_wait_for(lambda: gauge(s, "pushwire_ws_clients", 0) +
                                 gauge(s, "pushwire_ws_clients", 1) == 1 + len(via_nginx),
                                 what="the gauges")
            if gauge(s, "pushwire_ws_clients", 0) >= 2 and len(via_nginx) >= 2:
                break
        assert gauge(s, "pushwire_ws_clients", 0) >= 2, "no nginx client reached relay 0"
        codes = []
        tasks = [asyncio.ensure_future(follower(ws, codes)) for ws in via_nginx]
        pub.start()
        await async_wait_for(lambda: pub.count >= 40, timeout=30, what="40 published")
        s.relays[0].send(signal.SIGTERM)
        direct_got = []
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            while True:
                direct_got.append(await recv_json(direct, 10))
        direct_code = direct.close_code
        status = await asyncio.get_running_loop().run_in_executor(
            None, lambda: s.relays[0].p.wait(10))
        results = await asyncio.gather(*tasks)
        return direct_code, status, codes, results, direct_got

    direct_code, status, codes, results, direct_got = run(main(), timeout=90)
    pub.join(10)
    assert pub.error is None, pub.error
    assert direct_code == 1001
    assert status == 0, "relay exit status %r" % status
    assert [d["id"] for d in direct_got] == list(range(2, 2 + len(direct_got)))
    assert codes and all(c == 1001 for c in codes), codes
    for got in results:
        assert [d["id"] for d in got] == list(range(2, last_id + 1))
        assert [d["content"] for d in got] == ["m-%d" % i for i in range(2, last_id + 1)]


# ---- 12. metrics ---------------------------------------------------------------------------------

def test_ws_clients_gauge_follows_open_clients(ws_stack):
    s = ws_stack
    wait_for(lambda: gauge(s, "pushwire_ws_clients") == 0 and
             gauge(s, "pushwire_connections") == 0, timeout=10,
             what="earlier clients to be gone")
    ch = unique_channel("ws")

    async def main():
        clients = [await connect(s.relay_ports[0] if i % 2 else s.port, ch) for i in range(10)]
        raws = [RawWS.open(s.relay_ports[0], "/status?channel=" + ch) for _ in range(3)]
        half_open = RawWS(s.relay_ports[0])  # a handshake in progress is not a client
        half_open.send_raw(b"GET /status HTTP/1.1\r\n")
        await async_wait_for(lambda: gauge(s, "pushwire_ws_clients") == 13 and
                             gauge(s, "pushwire_connections") >= 14, what="13 clients")
        assert gauge(s, "pushwire_ws_clients") == 13
        for ws in clients[:4]:
            await ws.close()              # clean close
        for ws in clients[4:7]:
            ws.transport.abort()          # gone without a close frame
        raws[0].send_close(1000)
        raws[1].sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raws[1].close()                   # RST
        raws[2].close()                   # FIN
        await async_wait_for(lambda: gauge(s, "pushwire_ws_clients") == 3, timeout=10,
                             what="3 clients left")
        for ws in clients[7:]:
            await ws.close()
        raws[0].close()
        half_open.close()
        await async_wait_for(lambda: gauge(s, "pushwire_ws_clients") == 0 and
                             gauge(s, "pushwire_connections") == 0, timeout=10,
                             what="no client left")

    run(main())


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


@pytest.mark.parametrize("via_nginx", [False, True])
def test_ping_flood_from_a_client_that_never_reads(slow_stack, via_nginx):
    """Found on main: one client sending pings without reading grew the
    relay by 650 MB in 15 s (pongs were queued past --max-queue, and the
    relay kept reading from a client whose output was blocked). Now the
    relay stops reading it while its answers wait: memory stays flat, and
    others are served meanwhile."""
    s = slow_stack
    port = s.port if via_nginx else s.relay_ports[0]
    ch = unique_channel("pf")
    pid = s.relays[0].pid
    before = rss_mb(pid)
    ws = RawWS.open(port, path="/status?channel=" + ch, rcvbuf=4096)
    ws.sock.setblocking(False)
    ping = encode_frame(OP_PING, b"flood-0123456789")
    chunk = ping * 4096
    sent, peak, pending = 0, before, b""
    t0 = time.monotonic()
    other = RawWS.open(s.relay_ports[0], path="/status?channel=" + ch)
    try:
        while time.monotonic() - t0 < 8:
            pending = pending or chunk  # whole frames only: a cut one is a protocol error
            try:
                n = ws.sock.send(pending)
                sent += n
                pending = pending[n:]
            except (BlockingIOError, InterruptedError):
                time.sleep(0.01)
            except OSError:
                break  # the relay closed it: acceptable too
            peak = max(peak, rss_mb(pid))
        assert gauge(s, "pushwire_ws_protocol_errors_total") == 0
        # Everyone else is still served.
        st, doc = s.publish("still here", channel=ch)
        assert st == 200
        f = other.recv_frame(timeout=10)
        assert json.loads(f.payload)["content"] == "still here"
    finally:
        ws.close()
        other.close()
    print("\n  ping flood (%s): %.1f MB of pings sent in 8 s; relay RSS %.1f -> peak %.1f MB" % (
        "via nginx" if via_nginx else "direct", sent / 1e6, before, peak))
    assert peak - before < 40, "the relay grew %.1f MB under a ping flood" % (peak - before)


def publish_many(s, ch, n, size=1, lanes=8):
    async def lane(k):
        conn = C.HttpConn("127.0.0.1", s.port)
        try:
            for i in range(k, n, lanes):
                body = ("content=%s&channel=%s" % ("%06d" % i + "x" * max(0, size - 6), ch)).encode()
                st, h, b = await conn.request("POST", "/chat", body,
                                              {"Content-Type": "application/x-www-form-urlencoded"})
                assert st == 200, (st, b)
        finally:
            conn.close()

    async def main():
        await asyncio.gather(*(lane(k) for k in range(lanes)))
    run(main(), timeout=120)


async def catch_up(port, ch, n, limit=30):
    """Resume from since=0 as the page does (again after every close) until
    id n arrived; returns (how many closes, with which codes)."""
    closes, since = [], 0
    deadline = time.monotonic() + limit
    while since < n and time.monotonic() < deadline:
        ws = await connect(port, ch, since=since)
        try:
            while since < n:
                d = await recv_json(ws, 15)
                if d.get("reset"):
                    continue
                assert d["id"] == since + 1, (d["id"], since)
                since = d["id"]
        except websockets.exceptions.ConnectionClosed as e:
            closes.append(e.code)
        finally:
            await ws.close()
    return since, closes


@pytest.mark.parametrize("case", ["22,000 tiny messages", "100 messages of 20 KB, --max-queue 64 KiB"])
def test_resuming_from_a_long_history_is_not_cut_off_forever(case):
    """Found by the fault test: one history batch (1 MiB of content) of many
    short messages encoded to more than --max-queue, so a client resuming
    from far back was closed with 1008 on every attempt and never caught up
    (long-polls did). Now a client that has read everything takes one batch
    beyond the bound (and nothing more until it has read it), and a batch's
    budget counts what each message's envelope adds."""
    tiny = case.startswith("22")
    n, size = (22000, 1) if tiny else (100, 20000)
    relay_args = [] if tiny else ["--max-queue", "65536"]
    s = Stack(workers=1, relays=1, worker_args=["--history", "25000"], relay_args=relay_args)
    s.start()
    try:
        ch = unique_channel("lh").ljust(64, "x")  # the longest name: the largest envelope
        publish_many(s, ch, n, size)
        for port, where in ((s.relay_ports[0], "direct"), (s.port, "through nginx")):
            since, closes = run(catch_up(port, ch, n), timeout=60)
            print("\n  %s, %s: caught up to %d of %d with closes %r" % (case, where, since, n,
                                                                       closes))
            assert since == n and not closes, (since, closes)
        # EventSource too.
        sk = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        sk.sendall(("GET /status?channel=%s&since=0 HTTP/1.1\r\nHost: t\r\n"
                    "Accept: text/event-stream\r\n\r\n" % ch).encode())
        data = b""
        deadline = time.monotonic() + 30
        last = re.compile(rb"id: [0-9a-f]+:%d\n" % n)
        while time.monotonic() < deadline and not last.search(data[-(size + 4096) * 2:]):
            chunk = sk.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        sk.close()
        assert last.search(data), "the EventSource stream did not catch up"
        assert b"event: reset" not in data
    finally:
        s.stop()
