"""POST /chat through nginx: bodies, channels, limits, errors, idempotency."""
import json
import time
import urllib.parse
import uuid

import pytest

from stack import Poller, unique_channel

MAX = 65536


def history(stack, channel):
    st, doc, _ = stack.poll(channel=channel, since=0, timeout=0)
    assert st == 200
    return doc


def test_form_publish_answers_id_channel_epoch(stack):
    ch = unique_channel("t")
    st, doc = stack.publish("hello", channel=ch)
    assert st == 200
    assert doc["id"] == 1 and doc["channel"] == ch and isinstance(doc["epoch"], str) and doc["epoch"]
    st, doc2 = stack.publish("again", channel=ch)
    assert doc2["id"] == 2 and doc2["epoch"] == doc["epoch"]


def test_default_channel_is_default(stack):
    st, doc = stack.publish("to the default channel")
    assert st == 200 and doc["channel"] == "default"


def test_json_publish_with_charset(stack):
    ch = unique_channel("t")
    body = json.dumps({"content": "json body", "channel": ch}).encode()
    st, h, b = stack.request("POST", "/chat", body,
                             {"Content-Type": "application/json; charset=utf-8"})
    assert st == 200, b
    assert json.loads(b)["channel"] == ch
    assert history(stack, ch)["messages"][0]["content"] == "json body"


def test_channel_in_query_and_body(stack):
    ch = unique_channel("t")
    st, h, b = stack.request("POST", "/chat?channel=" + ch, b"content=q",
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200 and json.loads(b)["channel"] == ch
    st, h, b = stack.request("POST", "/chat?channel=" + ch, ("content=q&channel=" + ch).encode(),
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 200
    st, h, b = stack.request("POST", "/chat?channel=" + ch, b"content=q&channel=other",
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 400 and "channel" in json.loads(b)["error"]


@pytest.mark.parametrize("bad", ["", "a" * 65, "white space", "slash/x", "%", "caf\u00e9"])
def test_invalid_channel_is_400(stack, bad):
    st, doc = stack.publish("x", channel=bad) if bad else (None, None)
    if bad == "":
        st, h, b = stack.request("POST", "/chat", b"content=x&channel=",
                                 {"Content-Type": "application/x-www-form-urlencoded"})
        doc = json.loads(b)
    assert st == 400 and "error" in doc
    st, h, b = stack.get("/status?channel=" + urllib.parse.quote(bad))
    assert st == 400 and "error" in json.loads(b)


ROUND_TRIP = [
    "plain",
    "UTF-8: h\u00e9llo w\u00f6rld \u2603 \U0001F600 \u4e2d\u6587",
    'quotes " and \' and backslash \\ and \\u0041 literal',
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "newline\nand\r\ncr and\ttab and \x01\x1f control",
    "line separators \u2028 \u2029 and DEL \x7f",
    "+ & = % ? # ; literal form characters",
    "",
]


@pytest.mark.parametrize("content", ROUND_TRIP)
@pytest.mark.parametrize("as_json", [False, True])
def test_content_round_trips_byte_exact(stack, content, as_json):
    ch = unique_channel("t")
    st, doc = stack.publish(content, channel=ch, as_json=as_json)
    assert st == 200, doc
    st, h, b = stack.get("/status?since=0&timeout=0&channel=" + ch)
    got = json.loads(b)
    assert got["messages"][0]["content"] == content
    assert got["content"] == content
    assert got["messages"][0]["content"].encode() == content.encode()


def test_maximal_content_round_trips_and_one_more_byte_is_413(stack):
    ch = unique_channel("t")
    # Multibyte characters so that the encoded form is much larger than MAX.
    content = ("\u00e9" * (MAX // 2))
    assert len(content.encode()) == MAX
    st, doc = stack.publish(content, channel=ch)
    assert st == 200, doc
    st, doc = stack.publish(content, channel=ch, as_json=True)
    assert st == 200, doc
    got = history(stack, ch)["messages"]
    assert [m["content"] for m in got] == [content, content]
    st, doc = stack.publish(content + "x", channel=ch)
    assert st == 413 and "too large" in doc["error"]
    st, doc = stack.publish(content + "x", channel=ch, as_json=True)
    assert st == 413


def test_control_characters_at_maximum_pass_nginx(stack):
    # JSON-escaping control characters makes the body six times the content.
    ch = unique_channel("t")
    content = "\x01" * MAX
    st, doc = stack.publish(content, channel=ch, as_json=True)
    assert st == 200, doc
    assert history(stack, ch)["messages"][0]["content"] == content


def test_body_beyond_nginx_limit_is_413_json(stack):
    body = b"content=" + b"a" * (2 << 20)
    st, h, b = stack.request("POST", "/chat", body,
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 413
    assert json.loads(b)["error"]


@pytest.mark.parametrize("body,ctype,status,word", [
    (b"content=%C3%28", "application/x-www-form-urlencoded", 400, "UTF-8"),
    (b"content=a%00b", "application/x-www-form-urlencoded", 400, "NUL"),
    (b"content=%zz", "application/x-www-form-urlencoded", 400, "percent"),
    (b"nothing=here", "application/x-www-form-urlencoded", 400, "content"),
    (b"content=a&content=b", "application/x-www-form-urlencoded", 400, "twice"),
    (b'{"content": "a\\u0000b"}', "application/json", 400, "JSON"),
    (b'{"content": "\\ud800"}', "application/json", 400, "JSON"),
    (b'{"content": "\xc3\x28"}', "application/json", 400, "JSON"),
    (b'{"content": 5}', "application/json", 400, "string"),
    (b'["content"]', "application/json", 400, "object"),
    (b'{"content": ', "application/json", 400, "JSON"),
    (b'{}', "application/json", 400, "content"),
    (b"content=hi", "text/plain", 415, "Content-Type"),
    (b"content=hi", "application/x-www-form-urlencoded; charset=latin1", 415, "charset"),
])
def test_bad_input_gets_clear_error(stack, body, ctype, status, word):
    st, h, b = stack.request("POST", "/chat", body, {"Content-Type": ctype})
    doc = json.loads(b)
    assert st == status, doc
    assert word.lower() in doc["error"].lower()
    assert h["Content-Type"].startswith("application/json")


def test_missing_content_type_is_415(stack):
    st, h, b = stack.request("POST", "/chat", b"", {})
    assert st == 415 and json.loads(b)["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405_with_allow(stack, method):
    st, h, b = stack.request(method, "/chat")
    assert st == 405
    assert h.get("Allow") == "POST"
    assert json.loads(b)["error"]


def test_status_rejects_post_with_405(stack):
    st, h, b = stack.request("POST", "/status", b"x=1",
                             {"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 405 and h.get("Allow") == "GET"


def test_unknown_path_is_json_404(stack):
    st, h, b = stack.get("/no/such/thing")
    assert st == 404 and json.loads(b)["error"]


def test_idempotency_key_stores_once(stack):
    ch = unique_channel("t")
    key = uuid.uuid4().hex
    st1, d1 = stack.publish("once", channel=ch, idem=key)
    st2, d2 = stack.publish("once", channel=ch, idem=key)
    st3, d3 = stack.publish("once", channel=ch, idem=key, as_json=True)
    assert st1 == st2 == st3 == 200
    assert d1["id"] == d2["id"] == d3["id"] == 1 and d1["epoch"] == d2["epoch"]
    st, d4 = stack.publish("other", channel=ch, idem=uuid.uuid4().hex)
    assert d4["id"] == 2
    msgs = history(stack, ch)["messages"]
    assert [m["content"] for m in msgs] == ["once", "other"]


def test_idempotency_keys_of_different_channels_never_collide(stack):
    """Channel "a" with key "b:c" and channel "a:b" with key "c" are two
    publishes (':' is legal in both): the second is stored in its own
    channel, not answered with the first one's id."""
    a = unique_channel("ik")
    st1, d1 = stack.publish("in a", channel=a, idem="b:c")
    st2, d2 = stack.publish("in a:b", channel=a + ":b", idem="c")
    assert st1 == st2 == 200 and d2["channel"] == a + ":b", (d1, d2)
    st, doc, _ = stack.poll(channel=a + ":b", since=0, timeout=0)
    assert [m["content"] for m in doc["messages"]] == ["in a:b"], doc
    assert d2["id"] == doc["id"] == 1 and d2["epoch"] == doc["epoch"]
    # Keys with slashes (legal too) stay per channel as well.
    st3, d3 = stack.publish("slash", channel=a, idem="x/y")
    st4, d4 = stack.publish("slash", channel=a, idem="x/y")
    assert st3 == st4 == 200 and d3 == d4 and d3["id"] == 2


@pytest.mark.parametrize("key", ["a" * 129, "has space", "tab\tkey"])
def test_bad_idempotency_key_is_400(stack, key):
    st, h, b = stack.request("POST", "/chat", b"content=x",
                             {"Content-Type": "application/x-www-form-urlencoded",
                              "Idempotency-Key": key})
    assert st == 400 and "Idempotency-Key" in json.loads(b)["error"]


def test_ids_follow_publish_order_across_workers(stack):
    """Concurrent publishes through both workers get consecutive ids, in the
    order history holds them."""
    from concurrent.futures import ThreadPoolExecutor
    ch = unique_channel("t")
    with ThreadPoolExecutor(16) as ex:
        res = list(ex.map(lambda i: stack.publish("m%d" % i, channel=ch), range(200)))
    ids = sorted(d["id"] for st, d in res)
    assert all(st == 200 for st, d in res)
    assert ids == list(range(1, 201))
    by_id = {d["id"]: "m%d" % i for i, (st, d) in enumerate(res)}
    got = []
    since = 0
    while True:
        st, doc, _ = stack.poll(channel=ch, since=since, timeout=0)
        got += doc["messages"]
        since = doc["id"]
        if not doc.get("more"):
            break
    assert [m["id"] for m in got] == list(range(1, 201))
    assert all(m["content"] == by_id[m["id"]] for m in got)


@pytest.mark.stack(worker_args=["--publish-token", "s3cret"])
def test_publish_token_401_403_200(fresh_stack):
    s = fresh_stack
    st, doc = s.publish("x")
    assert st == 401 and "Bearer" in doc["error"]
    st, doc = s.publish("x", headers={"Authorization": "Bearer wrong"})
    assert st == 403
    st, doc = s.publish("x", headers={"Authorization": "Bearer s3cret"})
    assert st == 200 and doc["id"] == 1


@pytest.mark.stack(nginx_env={"CHAT_ALLOW": "10.9.9.9"})
def test_nginx_allow_list_restricts_publishing(fresh_stack):
    st, doc = fresh_stack.publish("x")
    assert st == 403 and doc["error"] == "forbidden"
    st, doc, _ = fresh_stack.poll(since=0, timeout=0)
    assert st == 200 and doc["messages"] == []


@pytest.mark.parametrize("what", ["one 64 KiB header line", "forty 4 KB headers", "a 64 KiB URI"])
def test_oversized_request_heads_get_json_errors(stack, what):
    """Found on main: nginx answered a header line past its buffers with its
    own HTML page; every error is JSON."""
    import socket
    req = {
        "one 64 KiB header line": b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 +
                                  b"\r\n\r\n",
        "forty 4 KB headers": b"GET /status HTTP/1.1\r\nHost: x\r\n" +
                              b"".join(b"X-%d: %s\r\n" % (i, b"b" * 4000) for i in range(40)) +
                              b"\r\n",
        "a 64 KiB URI": b"GET /status?x=" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    }[what]
    c = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    c.sendall(req)
    data = b""
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            data += d
    except ConnectionResetError:
        pass
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in (414, 431), head
    assert b"content-type: application/json" in head.lower(), head
    assert json.loads(body)["error"]


# ---- batches: {"messages": [...]} ---------------------------------------------------

def batch(stack, msgs, query="", idem=None):
    hdrs = {"Content-Type": "application/json"}
    if idem:
        hdrs["Idempotency-Key"] = idem
    st, h, b = stack.request("POST", "/chat" + query, json.dumps({"messages": msgs}).encode(), hdrs)
    return st, h, json.loads(b)


def test_batch_publish_stores_each_in_order_and_answers_each(stack):
    a, b = unique_channel("ba"), unique_channel("bb")
    msgs = [{"channel": a, "content": "a1"}, {"channel": b, "content": "b1"},
            {"channel": a, "content": "a2 \u00e9"}, {"channel": b, "content": "b2"},
            {"channel": a, "content": "a3"}]
    st, h, doc = batch(stack, msgs)
    assert st == 200, doc
    res = doc["results"]
    assert [(r["channel"], r["id"]) for r in res] == [(a, 1), (b, 1), (a, 2), (b, 2), (a, 3)]
    assert res[0]["epoch"] == res[2]["epoch"] == res[4]["epoch"] and res[1]["epoch"] == res[3]["epoch"]
    assert [m["content"] for m in history(stack, a)["messages"]] == ["a1", "a2 \u00e9", "a3"]
    assert [m["content"] for m in history(stack, b)["messages"]] == ["b1", "b2"]
    # The query's channel is the items' default; one message in a list is still a batch.
    st, h, doc = batch(stack, [{"content": "q"}], query="?channel=" + b)
    assert st == 200 and doc["results"] == [{"id": 3, "channel": b, "epoch": res[1]["epoch"]}]


def test_batch_is_delivered_to_a_waiting_subscriber_in_order(stack):
    ch = unique_channel("bw")
    stack.publish("before", channel=ch)
    bg = Poller(stack, channel=ch, since=1, timeout=10)
    bg.start()
    time.sleep(0.3)
    st, h, doc = batch(stack, [{"channel": ch, "content": "m%d" % i} for i in range(50)])
    assert st == 200 and [r["id"] for r in doc["results"]] == list(range(2, 52))
    bg.join(15)
    st, got, _ = bg.result
    assert st == 200
    seen = [m["content"] for m in got["messages"]]
    # The waiting poll gets what had arrived when it was answered, in order,
    # and nothing is missing afterwards.
    assert seen == ["m%d" % i for i in range(len(seen))] and seen
    rest = history(stack, ch)["messages"]
    assert [m["content"] for m in rest] == ["before"] + ["m%d" % i for i in range(50)]


def test_batch_retried_with_its_key_publishes_none_twice(stack):
    a, b = unique_channel("bi"), unique_channel("bj")
    key = uuid.uuid4().hex
    msgs = [{"channel": a, "content": "x"}, {"channel": a, "content": "x"}, {"channel": b, "content": "y"}]
    st1, _, d1 = batch(stack, msgs, idem=key)
    st2, _, d2 = batch(stack, msgs, idem=key)
    assert st1 == st2 == 200 and d1 == d2, (d1, d2)
    assert [r["id"] for r in d1["results"]] == [1, 2, 1]
    assert len(history(stack, a)["messages"]) == 2 and len(history(stack, b)["messages"]) == 1
    # The request's key stands for the batch: a single publish with it is another message.
    st, d = stack.publish("single", channel=a, idem=key)
    assert st == 200 and d["id"] == 3


@pytest.mark.parametrize("bad", [
    [{"content": "ok"}, {"content": 5}],
    [{"content": "ok"}, {"channel": "x"}],
    [{"content": "ok"}, {"content": "ok", "channel": "bad/name"}],
    [{"content": "ok"}, "not an object"],
    [{"content": "ok"}, {"content": "x" * (MAX + 1)}],
    [],
])
def test_a_bad_item_refuses_the_whole_batch(stack, bad):
    ch = unique_channel("bx")
    for m in bad:
        if isinstance(m, dict) and "channel" not in m:
            m["channel"] = ch
    st, h, doc = batch(stack, bad)
    assert st in (400, 413) and doc["error"], doc
    assert history(stack, ch)["messages"] == []


def test_batch_limits(stack):
    ch = unique_channel("bl")
    st, h, doc = batch(stack, [{"channel": ch, "content": "m"}] * 1001)
    assert st == 400 and "1000" in doc["error"]
    st, h, doc = batch(stack, [{"channel": ch, "content": "m"}] * 1000)
    assert st == 200 and doc["results"][-1]["id"] == 1000
    # content and channel belong to the items
    st, h, b = stack.request("POST", "/chat", json.dumps({"messages": [{"content": "a"}], "content": "b"}).encode(),
                             {"Content-Type": "application/json"})
    assert st == 400
    # the whole body is bounded like any publish's
    st, h, doc = batch(stack, [{"channel": ch, "content": "x" * MAX}] * 8)
    assert st == 413, doc
