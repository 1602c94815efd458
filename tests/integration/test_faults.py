"""Redis outages, stalls and restarts; graceful worker shutdown."""
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import fcgi
from stack import Poller, unique_channel, wait_for


@pytest.mark.stack(worker_args=["--redis-timeout", "500"])
def test_redis_killed_and_restarted_while_polls_are_held(fresh_stack):
    s = fresh_stack
    ch = unique_channel("f")
    st, first = s.publish("before", channel=ch)
    pollers = [Poller(s, channel=ch, since=first["id"], epoch=first["epoch"], timeout=60)
               for _ in range(20)]
    for p in pollers:
        p.start()
    wait_for(lambda: s.held() >= 20, what="20 held polls")
    s.redis.stop(signal.SIGKILL)
    # Publishing fails cleanly while Redis is away; the polls stay held.
    st, doc = s.publish("lost?", channel=ch)
    assert st == 503 and doc["error"]
    time.sleep(1.0)
    assert all(p.result is None for p in pollers), "a held poll was answered during the outage"
    assert s.held() == 20
    s.start_redis()
    wait_for(lambda: s.all_redis_up(), timeout=15, what="workers to reconnect")
    st, pub = s.publish("after restart", channel=ch)
    assert st == 200
    for p in pollers:
        p.join(15)
        st, doc, _ = p.result
        assert st == 200
        # Redis kept nothing (no persistence): the held polls are told to
        # reset as soon as a worker sees the new epoch, with whatever Redis
        # retains then; resuming from that answer brings the new message.
        assert doc.get("reset") is True and doc["epoch"] != first["epoch"]
        got = [m["content"] for m in doc["messages"]]
        if not got:
            st, doc, _ = s.poll(channel=ch, since=doc["id"], epoch=doc["epoch"], timeout=5)
            assert "reset" not in doc
            got = [m["content"] for m in doc["messages"]]
        assert got == ["after restart"] and doc["epoch"] == pub["epoch"]


@pytest.mark.stack(worker_args=["--redis-timeout", "500"])
def test_outage_gives_503_with_retry_after_and_recovers_by_itself(fresh_stack):
    s = fresh_stack
    ch = unique_channel("f")
    s.redis.stop(signal.SIGKILL)
    st, h, b = s.request("POST", "/chat", b"content=x",
                         {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 503 and int(h["Retry-After"]) >= 1 and json.loads(b)["error"]
    # A batch: every message says it was not stored.
    st, h, b = s.request("POST", "/chat", json.dumps({"messages": [
        {"channel": ch, "content": "a"}, {"channel": ch + "x", "content": "b"}]}).encode(),
        {"Content-Type": "application/json"})
    res = json.loads(b)["results"]
    assert st == 503 and int(h["Retry-After"]) >= 1, (st, b)
    assert [r["channel"] for r in res] == [ch, ch + "x"] and all(r["error"] and "id" not in r for r in res)
    # A poll that cannot be answered at its timeout gets 503 too.
    st, h, b = s.get("/status?timeout=1&channel=" + ch)
    assert st == 503 and "Retry-After" in h
    st, h, b = s.get("/healthz")
    assert st == 503 and json.loads(b)["status"] == "down"
    s.start_redis()
    wait_for(lambda: s.get("/healthz")[0] == 200, timeout=15, what="health to recover")
    wait_for(lambda: s.all_redis_up(), timeout=15, what="every worker to reconnect")
    st, doc = s.publish("back", channel=ch)
    assert st == 200 and doc["id"] == 1


@pytest.mark.stack(worker_args=["--redis-timeout", "500"])
def test_stalled_redis_is_detected_by_timeout(fresh_stack):
    s = fresh_stack
    ch = unique_channel("f")
    s.publish("warm", channel=ch)
    s.redis.send(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        st, h, b = s.request("POST", "/chat", b"content=stalled",
                             {"Content-Type": "application/x-www-form-urlencoded"}, timeout=20)
        took = time.monotonic() - t0
        assert st == 503 and "Retry-After" in h
        assert took < 5, "the stall took %.1f s to detect" % took
    finally:
        s.redis.send(signal.SIGCONT)
    wait_for(lambda: s.all_redis_up(), timeout=15, what="workers to reconnect")
    st, doc = s.publish("resumed", channel=ch)
    assert st == 200
    # The stalled publish may or may not have been stored (503 says so);
    # either way ids stay consecutive and nothing is duplicated.
    st, hist, _ = s.poll(channel=ch, since=0, timeout=0)
    ids = [m["id"] for m in hist["messages"]]
    assert ids == list(range(1, len(ids) + 1))
    assert [m["content"] for m in hist["messages"]][-1] == "resumed"


@pytest.mark.stack(redis_args=["--appendonly", "yes", "--appendfsync", "always"])
def test_restart_with_appendfsync_always_keeps_epoch_and_loses_nothing(fresh_stack):
    s = fresh_stack
    ch = unique_channel("f")
    seen, stop = [], threading.Event()
    errors = []

    def client():
        since, epoch = 0, None
        while not stop.is_set() or len(seen) < 40:
            try:
                st, doc, _ = s.poll(channel=ch, since=since, epoch=epoch, timeout=5)
            except Exception:
                time.sleep(0.1)
                continue
            if st != 200:
                time.sleep(0.2)
                continue
            if doc.get("reset"):
                errors.append("reset: %r" % doc)
            seen.extend(m["id"] for m in doc["messages"])
            since, epoch = doc["id"], doc["epoch"]
            if len(seen) >= 40:
                break

    t = threading.Thread(target=client, daemon=True)
    t.start()
    epochs = set()
    for i in range(20):
        st, doc = s.publish("a%d" % i, channel=ch)
        assert st == 200
        epochs.add(doc["epoch"])
    s.redis.stop(signal.SIGKILL)
    s.start_redis()
    wait_for(lambda: s.all_redis_up(), timeout=15)
    for i in range(20):
        for attempt in range(50):
            st, doc = s.publish("b%d" % i, channel=ch, idem="b%d-%s" % (i, ch))
            if st == 200:
                break
            time.sleep(0.1)
        assert st == 200
        epochs.add(doc["epoch"])
    stop.set()
    t.join(30)
    assert len(epochs) == 1, "epoch changed across a lossless restart: %r" % epochs
    assert not errors
    assert seen == list(range(1, 41))


@pytest.mark.stack(redis_args=["--appendonly", "yes", "--appendfsync", "everysec"])
def test_restart_with_everysec_starts_a_new_epoch(fresh_stack):
    s = fresh_stack
    ch = unique_channel("f")
    st, before = s.publish("x", channel=ch)
    s.redis.stop(signal.SIGKILL)
    s.start_redis()
    wait_for(lambda: s.all_redis_up(), timeout=15)
    st, after = s.publish("y", channel=ch)
    assert st == 200 and after["epoch"] != before["epoch"]
    # A client holding the old epoch is told to reset and gets the history.
    st, doc, _ = s.poll(channel=ch, since=before["id"], epoch=before["epoch"])
    assert doc["reset"] is True and doc["epoch"] == after["epoch"]
    assert doc["messages"][-1]["content"] == "y"


def test_sigterm_answers_held_requests_and_removes_the_socket(fresh_stack):
    s = fresh_stack
    ch = unique_channel("f")
    st, pub = s.publish("newest", channel=ch)
    sock = s.worker_sock(0)
    held = [fcgi.FcgiRequest(sock, "GET", "/status", "channel=" + ch) for _ in range(50)]
    wait_for(lambda: s.metrics(0)["pushwire_held_longpolls"] >= 50)
    s.workers[0].send(signal.SIGTERM)
    for h in held:
        st, hdrs, body, _ = h.response()
        doc = json.loads(body)
        assert st == 200 and doc["messages"] == [] and doc["id"] == pub["id"]
        assert doc["content"] == "newest"
    assert s.workers[0].p.wait(10) == 0
    assert not os.path.exists(sock)
    # nginx fails over to the remaining worker.
    st, doc = s.publish("still served", channel=ch)
    assert st == 200
    s.start_worker(0)


def test_client_leaving_during_publish_loses_nothing(fresh_stack):
    """A publisher that disconnects right after sending gets no answer, but
    the message is stored exactly once."""
    s = fresh_stack
    ch = unique_channel("f")
    import socket
    body = ("content=abandoned&channel=" + ch).encode()
    c = socket.create_connection(("127.0.0.1", s.port))
    c.sendall(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    c.close()
    wait_for(lambda: s.poll(channel=ch, since=0, timeout=0)[1]["messages"], timeout=5)
    st, doc, _ = s.poll(channel=ch, since=0, timeout=0)
    assert [m["content"] for m in doc["messages"]] == ["abandoned"]


@pytest.mark.stack(workers=2, worker_args=["--heartbeat", "200", "--redis-timeout", "500"])
def test_healthz_names_a_dead_worker_and_forgets_a_stopped_one(fresh_stack):
    s = fresh_stack
    st, h, b = s.get("/healthz")
    doc = json.loads(b)
    assert st == 200 and doc["status"] == "ok" and doc["workers"]["alive"] == 2
    assert doc["workers"]["down"] == [] and doc["redis"] == {"commands": True, "pubsub": True}
    s.workers[1].stop(signal.SIGKILL)
    wait_for(lambda: s.get("/healthz")[0] == 503, timeout=10, what="healthz to report the crash")
    st, h, b = s.get("/healthz")
    doc = json.loads(b)
    assert doc["status"] == "down" and doc["workers"]["down"] == ["w1"]
    assert doc["workers"]["alive"] == 1 and "Retry-After" in h
    s.start_worker(1)
    wait_for(lambda: s.get("/healthz")[0] == 200, timeout=10, what="healthz to recover")
    # A graceful stop removes the worker from the heartbeat set at once.
    assert s.workers[1].stop() == 0
    st, h, b = s.get("/healthz")
    doc = json.loads(b)
    assert st == 200 and doc["workers"] == {"down": [], "alive": 1}
    s.start_worker(1)


@pytest.mark.stack(workers=1, relays=0)
def test_nginx_own_errors_on_status_and_ws_are_json_503(fresh_stack):
    """No relay, then no worker: nginx's own answers on the locations that
    route upgrades are still the JSON 503 with Retry-After."""
    s = fresh_stack
    up = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    for path in ("/status", "/ws"):
        st, h, b = s.get(path, headers=up)
        assert st == 503 and h["Content-Type"].startswith("application/json"), (path, st, b)
        assert json.loads(b)["error"] and h["Retry-After"] == "1"
    st, h, b = s.get("/ws")
    assert st == 426 and json.loads(b)["error"]
    s.workers[0].stop()
    for path in ("/status?timeout=1", "/chat", "/healthz"):
        st, h, b = s.request("GET", path)
        assert st == 503 and json.loads(b)["error"] and h["Retry-After"] == "1", (path, st, b)
    s.start_worker(0)


@pytest.mark.stack(workers=1, worker_args=["--redis-timeout", "1000"])
def test_poll_waiting_for_history_is_never_answered_past_it(fresh_stack):
    """Found on main: a poll whose history read was still in Redis when its
    time was up (timeout=0 while Redis stalls, a SIGTERM during catch-up)
    was answered {"id": NEWEST, "messages": []}: the client moved its cursor
    past messages it never got. Now it gets them, or a 503 to retry from the
    same since."""
    s = fresh_stack
    ch = unique_channel("cu")
    for i in range(100):  # more than the worker's ring of recent messages
        assert s.publish("m%d" % i, channel=ch)[0] == 200
    # A held poll keeps the channel synced in the worker.
    keep = Poller(s, channel=ch, since=100, timeout=60)
    keep.start()
    wait_for(lambda: s.held() >= 1, what="the held poll")
    s.redis.send(signal.SIGSTOP)
    try:
        st, h, b = s.get("/status?channel=%s&since=2&timeout=0" % ch, timeout=30)
        doc = json.loads(b)
        assert st == 503 and h.get("Retry-After"), (st, doc)
        st, h, b = s.get("/status?channel=%s&since=2&timeout=1" % ch, timeout=30)
        doc = json.loads(b)
        assert st == 503 and h.get("Retry-After"), (st, doc)
    finally:
        s.redis.send(signal.SIGCONT)
    wait_for(lambda: s.all_redis_up(), timeout=15, what="the worker to reach Redis")
    st, doc, _ = s.poll(channel=ch, since=2, timeout=0)
    assert st == 200 and [m["content"] for m in doc["messages"]][:2] == ["m2", "m3"], doc
    # SIGTERM while polls wait for their reads: they are answered with their
    # messages or 503, never "nothing new" at the newest id.
    s.redis.send(signal.SIGSTOP)
    pollers = [Poller(s, channel=ch, since=k, timeout=30) for k in (1, 5, 9)]
    for p in pollers:
        p.start()
    time.sleep(0.5)
    s.workers[0].send(signal.SIGTERM)
    time.sleep(0.5)
    s.redis.send(signal.SIGCONT)
    for p in pollers + [keep]:
        p.join(20)
        st, doc, _ = p.result
        assert st == 503 or (st == 200 and (doc["messages"] or doc["id"] == p.kw["since"])), \
            (p.kw, st, doc)
    s.workers[0].stop()
    s.start_worker(0)


@pytest.mark.stack(workers=1)
def test_connection_closed_while_its_publish_is_in_redis(fresh_stack):
    """Found on main: a request closed by a protocol error or by a second
    request on the same FastCGI connection, while its publish (or /healthz
    call) was still in Redis, was freed, and the reply wrote freed memory
    (ASan: heap-use-after-free; the stack's log check fails on it). Now the
    worker survives, and every publish that Redis stored is stored once."""
    s = fresh_stack
    ch = unique_channel("uaf")
    sock = s.worker_sock(0)
    after = {
        "second request": fcgi._record(fcgi.BEGIN_REQUEST, 2, struct.pack(">HB5x", 1, 1)),
        "bad record": b"\x07\x01\x00\x01\x00\x00\x00\x00",  # version 7
        "truncated": b"\x01",
    }
    s.redis.send(signal.SIGSTOP)  # keep the publishes and health calls in Redis
    try:
        conns = []
        for name, tail in after.items():
            for uri, body in (("/chat", b"content=" + name.encode() + b"&channel=" + ch.encode()),
                              ("/healthz", b"")):
                r = fcgi.FcgiRequest(sock, "POST" if body else "GET", uri, body=body,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
                r.s.sendall(tail)
                if name == "truncated":
                    r.s.shutdown(socket.SHUT_WR)
                conns.append(r)
        time.sleep(0.5)
    finally:
        s.redis.send(signal.SIGCONT)
    time.sleep(1.0)
    for r in conns:
        r.close()
    assert s.workers[0].alive(), "the worker died"
    wait_for(lambda: s.all_redis_up(), what="the worker to be up")
    st, doc, _ = s.poll(channel=ch, since=0, timeout=0)
    got = sorted(m["content"] for m in doc["messages"])
    assert len(got) == len(set(got)) and set(got) <= set(after), got
    # The log check when the stack stops (fresh_stack) finds any ASan report.


def _unix_get(path, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    finally:
        s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a mount namespace for resolv.conf)")
def test_a_name_server_that_never_answers_does_not_freeze_the_loop(tmp_path):
    """Found on main: every Redis (re)connect looked the host name up with a
    blocking getaddrinfo inside the event loop; with the name server silent
    (in compose: Redis's container gone) the worker froze for seconds on
    every attempt. Now lookups run off the loop: it keeps answering."""
    from stack import BUILD
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.2", 53))  # takes queries, answers none
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.2\noptions timeout:3 attempts:1\n")
    sock, msock = str(tmp_path / "w.sock"), str(tmp_path / "m.sock")
    argv = ["unshare", "-m", "--", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
            str(resolv), os.path.join(BUILD, "pushwire-worker"), "--listen", "unix:" + sock,
            "--metrics", "unix:" + msock, "--redis", "redis://redis.invalid-host.test:6379",
            "--redis-timeout", "1000"]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:exitcode=66")
    log = open(tmp_path / "worker.log", "wb")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: os.path.exists(msock), what="the worker's metrics socket")
        worst, t_end = 0.0, time.monotonic() + 8
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            assert b"pushwire_redis_up" in _unix_get(msock)
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.1)
        print("\n  worst metrics answer while Redis's name does not resolve: %.3f s" % worst)
        assert worst < 1.0, "the worker's loop stalled %.1f s" % worst
        # The lookup's failure is reported, and the worker keeps retrying.
        text = (tmp_path / "worker.log").read_text()
        assert "redis.invalid-host.test" in text, text[-2000:]
    finally:
        p.terminate()
        rc = p.wait(15)
        dns.close()
    assert rc == 0, (tmp_path / "worker.log").read_text()[-3000:]
