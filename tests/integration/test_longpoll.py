"""GET /status long-poll through nginx and straight to chosen workers."""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import fcgi
from stack import Poller, unique_channel, wait_for


def test_poll_is_held_until_a_publish(stack):
    ch = unique_channel("lp")
    p = Poller(stack, channel=ch)
    p.start()
    wait_for(lambda: stack.held() >= 1, what="poll to be held")
    time.sleep(0.2)
    assert p.result is None, "answered before any publish"
    st, pub = stack.publish("wake up", channel=ch)
    p.join(10)
    st, doc, h = p.result
    assert st == 200
    assert doc["content"] == "wake up" and doc["id"] == pub["id"] and doc["epoch"] == pub["epoch"]
    assert [m["content"] for m in doc["messages"]] == ["wake up"]
    assert h["Content-Type"].startswith("application/json")
    assert h["Cache-Control"] == "no-store"
    assert isinstance(doc["messages"][0]["time"], int) and doc["messages"][0]["time"] > 1.6e12


def test_messages_published_while_nobody_polls_arrive_with_since(stack):
    ch = unique_channel("lp")
    st, first = stack.publish("zero", channel=ch)
    for i in range(3):
        stack.publish("m%d" % i, channel=ch)
    st, doc, _ = stack.poll(channel=ch, since=first["id"], epoch=first["epoch"])
    assert [m["content"] for m in doc["messages"]] == ["m0", "m1", "m2"]
    assert [m["id"] for m in doc["messages"]] == [2, 3, 4]
    assert doc["id"] == 4 and doc["content"] == "m2" and "reset" not in doc


def test_timeout_answers_newest_with_no_messages(stack):
    ch = unique_channel("lp")
    st, doc, _ = stack.poll(channel=ch, timeout=1)
    assert st == 200 and doc["messages"] == [] and doc["id"] == 0 and doc["content"] == ""
    stack.publish("latest", channel=ch)
    t0 = time.monotonic()
    st, doc, _ = stack.poll(channel=ch, since=1, timeout=1)
    assert 0.8 < time.monotonic() - t0 < 5
    assert doc["messages"] == [] and doc["id"] == 1 and doc["content"] == "latest"


def test_timeout_zero_answers_at_once(stack):
    ch = unique_channel("lp")
    stack.publish("a", channel=ch)
    t0 = time.monotonic()
    st, doc, _ = stack.poll(channel=ch, timeout=0)
    assert time.monotonic() - t0 < 2
    assert doc["messages"] == [] and doc["id"] == 1 and doc["content"] == "a"


@pytest.mark.parametrize("q", ["since=abc", "since=-1", "since=", "timeout=x", "epoch=%20x",
                               "since=1&since=2"])
def test_bad_poll_parameters_are_400(stack, q):
    st, h, b = stack.get("/status?" + q)
    assert st == 400 and json.loads(b)["error"]


def test_channels_are_isolated(stack):
    a, b = unique_channel("lp"), unique_channel("lp")
    p = Poller(stack, channel=a, timeout=2)
    p.start()
    wait_for(lambda: stack.held() >= 1)
    stack.publish("for b only", channel=b)
    p.join(10)
    assert p.result[1]["messages"] == []


def test_200_concurrent_polls_answered_by_one_publish(stack):
    ch = unique_channel("lp")
    before = stack.held()
    with ThreadPoolExecutor(200) as ex:
        futs = [ex.submit(stack.poll, channel=ch) for _ in range(200)]
        wait_for(lambda: stack.held() >= before + 200, timeout=20, what="200 held polls")
        st, pub = stack.publish("fan-out", channel=ch)
        results = [f.result(timeout=20) for f in futs]
    assert all(st == 200 for st, doc, h in results)
    assert all([m["content"] for m in doc["messages"]] == ["fan-out"] for st, doc, h in results)
    assert all(doc["id"] == pub["id"] for st, doc, h in results)


def test_publish_on_worker_a_reaches_poll_held_by_worker_b(stack):
    ch = unique_channel("lp")
    for holder, publisher in ((1, 0), (0, 1)):
        held = fcgi.FcgiRequest(stack.worker_sock(holder), "GET", "/status", "channel=" + ch)
        wait_for(lambda: stack.metrics(holder)["pushwire_held_longpolls"] >= 1)
        st, h, b, _ = fcgi.request(stack.worker_sock(publisher), "POST", "/chat",
                                   body=b"content=cross%20worker&channel=" + ch.encode(),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert st == 200, b
        st, h, body, _ = held.response()
        doc = json.loads(body)
        assert st == 200 and doc["messages"][0]["content"] == "cross worker"
        assert doc["id"] == json.loads(b)["id"]


def test_poll_with_the_newest_since_waits_for_the_next(stack):
    ch = unique_channel("lp")
    st, pub = stack.publish("one", channel=ch)
    p = Poller(stack, channel=ch, since=pub["id"], epoch=pub["epoch"])
    p.start()
    wait_for(lambda: stack.held() >= 1)
    time.sleep(0.2)
    assert p.result is None
    stack.publish("two", channel=ch)
    p.join(10)
    assert [m["content"] for m in p.result[1]["messages"]] == ["two"]


def test_repolling_client_loses_nothing_under_a_stream_of_publishes(stack):
    """A client that re-polls with since after every answer sees every id once."""
    ch = unique_channel("lp")
    n = 300
    seen = []
    done = threading.Event()

    def client():
        since, epoch = 0, None
        while len(seen) < n:
            st, doc, _ = stack.poll(channel=ch, since=since, epoch=epoch, timeout=5)
            assert st == 200
            assert "reset" not in doc
            seen.extend(m["id"] for m in doc["messages"])
            since, epoch = doc["id"], doc["epoch"]
        done.set()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda i: stack.publish("n%d" % i, channel=ch), range(n)))
    assert done.wait(30)
    assert seen == list(range(1, n + 1))


def test_backlog_of_2mib_arrives_in_capped_answers_with_more(stack):
    ch = unique_channel("lp")
    size = 60000
    count = 40
    contents = [("%03d" % i) + chr(0x41 + i % 26) * (size - 3) for i in range(count)]
    for c in contents:
        st, _ = stack.publish(c, channel=ch, as_json=True)
        assert st == 200
    got, answers, since = [], 0, 0
    while True:
        st, h, b = stack.get("/status?timeout=0&channel=%s&since=%d" % (ch, since))
        assert st == 200
        doc = json.loads(b)
        answers += 1
        msg_bytes = sum(len(m["content"].encode()) for m in doc["messages"])
        assert msg_bytes <= 1 << 20
        got += doc["messages"]
        assert doc["id"] == (doc["messages"][-1]["id"] if doc["messages"] else since)
        since = doc["id"]
        if not doc.get("more"):
            break
    assert answers >= 3, "2.4 MB should take at least three answers"
    assert [m["content"] for m in got] == contents
    assert [m["id"] for m in got] == list(range(1, count + 1))


def test_reset_when_epoch_is_not_current(stack):
    ch = unique_channel("lp")
    st, pub = stack.publish("kept", channel=ch)
    st, doc, _ = stack.poll(channel=ch, since=pub["id"], epoch="0000000000000000")
    assert doc["reset"] is True and doc["epoch"] == pub["epoch"]
    assert [m["content"] for m in doc["messages"]] == ["kept"]


def test_reset_when_since_is_ahead_of_newest(stack):
    ch = unique_channel("lp")
    st, pub = stack.publish("only", channel=ch)
    st, doc, _ = stack.poll(channel=ch, since=99, epoch=pub["epoch"])
    assert doc["reset"] is True and [m["id"] for m in doc["messages"]] == [1]


@pytest.mark.stack(worker_args=["--history", "5"])
def test_reset_when_since_is_older_than_history(fresh_stack):
    s = fresh_stack
    ch = unique_channel("lp")
    epoch = None
    for i in range(1, 11):
        st, pub = s.publish("m%d" % i, channel=ch)
        epoch = pub["epoch"]
    # Oldest retained is 6: since=5 is still exact, since=4 is a reset.
    st, doc, _ = s.poll(channel=ch, since=5, epoch=epoch)
    assert "reset" not in doc and [m["id"] for m in doc["messages"]] == [6, 7, 8, 9, 10]
    st, doc, _ = s.poll(channel=ch, since=4, epoch=epoch)
    assert doc["reset"] is True and [m["id"] for m in doc["messages"]] == [6, 7, 8, 9, 10]
    st, doc, _ = s.poll(channel=ch, since=0)
    assert doc["reset"] is True and doc["messages"][0]["id"] == 6


def test_held_client_that_leaves_is_released_at_once(stack):
    ch = unique_channel("lp")
    base = stack.held()
    s = socket.create_connection(("127.0.0.1", stack.port))
    s.sendall(("GET /status?channel=%s HTTP/1.1\r\nHost: x\r\n\r\n" % ch).encode())
    wait_for(lambda: stack.held() == base + 1, what="the poll to be held")
    t0 = time.monotonic()
    s.close()
    wait_for(lambda: stack.held() == base, timeout=2, what="the poll to be released")
    assert time.monotonic() - t0 < 1.0
    aborts = sum(stack.metrics(i)["pushwire_client_aborts_total"] for i in range(2))
    assert aborts >= 1


def test_healthz_reports_redis(stack):
    st, h, b = stack.get("/healthz")
    doc = json.loads(b)
    assert st == 200 and doc["status"] == "ok" and doc["redis"]["commands"] is True


def test_lean_parking_memory_per_held_request(stack):
    """2,000 requests held by one worker (the optimised build) cost it under
    1 KiB each: a held request keeps its socket and its place in a channel
    list, not its parameters or buffers."""
    from stack import PLAIN_BUILD
    ch = unique_channel("lp")
    # An extra worker of the plain build, outside nginx's upstreams.
    i = len(stack.workers)
    stack.start_worker(i, build=PLAIN_BUILD)
    sock = stack.worker_sock(i)
    try:
        warm = [fcgi.FcgiRequest(sock, "GET", "/status", "channel=" + ch) for _ in range(200)]
        wait_for(lambda: stack.metrics(i)["pushwire_held_longpolls"] >= 200, timeout=20)
        rss0 = stack.metrics(i)["process_resident_memory_bytes"]
        held = [fcgi.FcgiRequest(sock, "GET", "/status", "channel=" + ch) for _ in range(2000)]
        wait_for(lambda: stack.metrics(i)["pushwire_held_longpolls"] >= 2200, timeout=30)
        rss1 = stack.metrics(i)["process_resident_memory_bytes"]
        per = (rss1 - rss0) / 2000
        print("worker RSS per held request: %.0f bytes" % per)
        # Answer them all with one publish through nginx.
        stack.publish("release", channel=ch)
        for h in warm + held:
            st, _, body, _ = h.response()
            assert st == 200 and json.loads(body)["content"] == "release"
        assert per < 1024, "%.0f bytes per held request" % per
    finally:
        assert stack.workers[i].stop() == 0
        stack.workers.pop()
        stack.worker_metrics.pop()


def test_channel_state_created_by_a_poll_expires_soon(stack):
    """Polling a name nobody publishes to leaves Redis state for a minute
    after the last poll, not for the history TTL; the first publish keeps
    the channel a day."""
    ch = unique_channel("lp")
    st, doc, _ = stack.poll(channel=ch, timeout=0)
    assert st == 200
    ttl = int(stack.redis_cmd("TTL", "pw:ch:" + ch))
    assert 0 < ttl <= 60
    stack.redis_cmd("EXPIRE", "pw:ch:" + ch, 5)
    st, doc2, _ = stack.poll(channel=ch, timeout=0)  # read again: kept alive
    assert doc2["epoch"] == doc["epoch"] and int(stack.redis_cmd("TTL", "pw:ch:" + ch)) > 50
    stack.publish("now it exists", channel=ch)
    assert int(stack.redis_cmd("TTL", "pw:ch:" + ch)) > 86000
    assert int(stack.redis_cmd("TTL", "pw:h:" + ch)) > 86000
