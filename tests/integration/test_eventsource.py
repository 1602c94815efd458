"""GET /status with Accept: text/event-stream through nginx (curl -N and a
raw reader): events, resume with Last-Event-ID, reset, heartbeats."""
import json
import socket
import subprocess
import time

import pytest

from stack import Stack, wait_for, unique_channel


@pytest.fixture(scope="module")
def sse_stack():
    s = Stack(workers=2, worker_args=["--sse-heartbeat", "1"]).start()
    yield s
    s.stop()


class SseReader:
    """A raw HTTP/1.1 EventSource client; parses events as they come."""

    def __init__(self, stack, query, last_event_id=None):
        self.s = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        hdrs = "Accept: text/event-stream\r\n"
        if last_event_id:
            hdrs += "Last-Event-ID: %s\r\n" % last_event_id
        self.s.sendall(("GET /status?%s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (query, hdrs)).encode())
        self.buf = b""
        self.head = None
        self.comments = 0

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def headers(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head.decode()
        return self.head

    def _unchunk(self):
        # nginx streams with chunked encoding; strip the chunk framing.
        out = b""
        while True:
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                return out
            size = int(line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return out
            out += rest[:size]
            self.buf = rest[size + 2:]

    def events(self, n, timeout=10):
        """Read until n events (not comments) arrived."""
        deadline = time.monotonic() + timeout
        text = getattr(self, "text", b"")
        evs = []
        while len(evs) < n:
            text += self._unchunk()
            while b"\n\n" in text:
                block, _, text = text.partition(b"\n\n")
                ev = {}
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        self.comments += 1
                        continue
                    k, _, v = line.partition(": ")
                    ev[k] = v
                if ev.get("data"):
                    ev["json"] = json.loads(ev["data"])
                    evs.append(ev)
            if len(evs) >= n:
                break
            assert time.monotonic() < deadline, "timed out with %d events" % len(evs)
            self._fill()
        self.text = text
        return evs

    def close(self):
        self.s.close()


def test_stream_headers_and_live_events(sse_stack):
    s = sse_stack
    ch = unique_channel("sse")
    r = SseReader(s, "channel=" + ch)
    head = r.headers()
    assert " 200 " in head.split("\r\n")[0]
    assert "content-type: text/event-stream" in head.lower()
    wait_for(lambda: sum(s.metrics(i)["pushwire_eventsource_streams"] for i in range(2)) >= 1)
    time.sleep(0.2)
    st, p1 = s.publish("first <b>", channel=ch)
    st, p2 = s.publish('second "q"', channel=ch)
    evs = r.events(2)
    assert [e["json"]["content"] for e in evs] == ["first <b>", 'second "q"']
    assert evs[0]["id"] == "%s:%d" % (p1["epoch"], p1["id"])
    assert evs[1]["json"] == {"channel": ch, "epoch": p2["epoch"], "id": 2,
                              "content": 'second "q"', "time": evs[1]["json"]["time"]}
    r.close()


def test_resume_with_last_event_id_loses_nothing(sse_stack):
    s = sse_stack
    ch = unique_channel("sse")
    pubs = [s.publish("m%d" % i, channel=ch)[1] for i in range(5)]
    r = SseReader(s, "channel=" + ch, last_event_id="%s:%d" % (pubs[1]["epoch"], pubs[1]["id"]))
    r.headers()
    evs = r.events(3)
    assert [e["json"]["id"] for e in evs] == [3, 4, 5]
    r.close()
    r = SseReader(s, "channel=%s&since=4&epoch=%s" % (ch, pubs[0]["epoch"]))
    r.headers()
    assert [e["json"]["id"] for e in r.events(1)] == [5]
    s.publish("m5", channel=ch)
    assert [e["json"]["content"] for e in r.events(1)] == ["m5"]
    r.close()


def test_reset_event_on_stale_epoch(sse_stack):
    s = sse_stack
    ch = unique_channel("sse")
    st, p = s.publish("kept", channel=ch)
    r = SseReader(s, "channel=" + ch, last_event_id="0000000000000000:1")
    r.headers()
    evs = r.events(2)
    assert evs[0]["event"] == "reset" and evs[0]["json"]["reset"] is True
    assert evs[0]["json"]["epoch"] == p["epoch"]
    assert evs[1]["json"]["content"] == "kept"
    r.close()


def test_heartbeat_comments_keep_the_stream_alive(sse_stack):
    s = sse_stack
    r = SseReader(s, "channel=" + unique_channel("sse"))
    r.headers()
    deadline = time.monotonic() + 5
    while r.comments < 2 and time.monotonic() < deadline:
        try:
            r.events(1, timeout=0.1)
        except (AssertionError, socket.timeout):
            pass
    assert r.comments >= 2
    r.close()


def test_curl_streams_without_buffering(sse_stack):
    s = sse_stack
    ch = unique_channel("sse")
    p = subprocess.Popen(["curl", "-sN", "-H", "Accept: text/event-stream",
                          s.url("/status?channel=" + ch)], stdout=subprocess.PIPE)
    try:
        wait_for(lambda: sum(s.metrics(i)["pushwire_eventsource_streams"] for i in range(2)) >= 1)
        time.sleep(0.2)
        s.publish("through curl", channel=ch)
        lines = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            line = p.stdout.readline().decode()
            lines.append(line)
            if line.startswith("data: "):
                break
        data = [json.loads(l[6:]) for l in lines if l.startswith("data: ")]
        assert data and data[0]["content"] == "through curl"
    finally:
        p.terminate()
        p.wait(5)
    wait_for(lambda: sum(s.metrics(i)["pushwire_eventsource_streams"] for i in range(2)) == 0,
             what="the stream to be released when curl leaves")


def test_message_published_right_after_open_is_delivered(sse_stack):
    """The stream opens (headers, onopen) only once its start point is fixed:
    a message published the moment it opens is never skipped."""
    s = sse_stack
    for i in range(10):
        ch = unique_channel("sse")
        s.publish("old", channel=ch)
        r = SseReader(s, "channel=" + ch)
        r.headers()
        s.publish("right after open %d" % i, channel=ch)
        assert [e["json"]["content"] for e in r.events(1)] == ["right after open %d" % i]
        r.close()


def test_reset_event_carries_the_position_to_resume_from(sse_stack):
    """Found on main: a reset with no messages carried no id:, so the browser
    kept sending its old Last-Event-ID and was reset on every reconnect. The
    reset event's id is where the replay starts (the newest id when nothing
    is retained); reconnecting with it is not reset again."""
    s = sse_stack
    ch = unique_channel("sse")
    r = SseReader(s, "channel=" + ch, last_event_id="0000000000000000:7")
    r.headers()
    ev = r.events(1)[0]
    r.close()
    assert ev["event"] == "reset" and ev["json"]["id"] == 0, ev
    epoch = ev["json"]["epoch"]
    assert ev.get("id") == "%s:0" % epoch, ev
    # The browser reconnects with that id: not reset, and gets what follows.
    r = SseReader(s, "channel=" + ch, last_event_id=ev["id"])
    r.headers()
    wait_for(lambda: sum(s.metrics(i)["pushwire_eventsource_streams"] for i in range(2)) >= 1)
    time.sleep(0.2)
    s.publish("after", channel=ch)
    ev2 = r.events(1)[0]
    r.close()
    assert ev2.get("event") != "reset" and ev2["json"]["content"] == "after", ev2
    # A reset with a replay: its id is just before the first replayed message,
    # so a drop right after the reset event loses none of them.
    s.publish("two", channel=ch)
    r = SseReader(s, "channel=" + ch, last_event_id="0000000000000000:1")
    r.headers()
    evs = r.events(3)
    r.close()
    assert evs[0]["event"] == "reset" and evs[0]["id"] == "%s:0" % epoch, evs[0]
    assert [e["json"]["content"] for e in evs[1:]] == ["after", "two"]
