"""Many channels per connection, through nginx: a WebSocket (URL list and
in-band subscribe/unsubscribe), an EventSource stream (position-list ids,
Last-Event-ID resume) and a long-poll (the {"channels": [...]} answer),
across two workers and two relays, with resumes and a reset on one channel.
Every channel's sequence must be exact: each id once, in order."""
import asyncio
import json
import os
import random
import time
from urllib.parse import quote

import pytest
import websockets

from stack import Stack, unique_channel, wait_for
from test_eventsource import SseReader

SEED = int(os.environ.get("PW_MUX_SEED", "0")) or random.randrange(1, 2**31)


@pytest.fixture(scope="module")
def mux():
    args = ["--max-subscriptions", "60"]
    s = Stack(workers=2, relays=2, worker_args=args, relay_args=args).start()
    yield s
    s.stop()


def ws_url(s, query):
    return "ws://127.0.0.1:%d/status?%s" % (s.port, query)


def publish_all(s, chans, n, rng):
    """n messages per channel, interleaved at random; returns
    {channel: [(epoch, id, content), ...]} in publish order."""
    sent = {c: [] for c in chans}
    order = [c for c in chans for _ in range(n)]
    rng.shuffle(order)
    for i, c in enumerate(order):
        content = "%s #%d" % (c, i)
        st, doc = s.publish(content, channel=c)
        assert st == 200, doc
        sent[c].append((doc["epoch"], doc["id"], content))
    return sent


def check_exact(got, sent, what):
    for c, msgs in sent.items():
        ids = [m["id"] for m in got.get(c, [])]
        want = [m[1] for m in msgs]
        assert ids == want, "%s: channel %s got ids %s, want %s (seed %d)" % (what, c, ids, want,
                                                                               SEED)
        assert [m["content"] for m in got[c]] == [m[2] for m in msgs]


async def ws_collect(url, want_total, timeout=20, on_frame=None):
    """Read frames until want_total messages arrived; returns (messages by
    channel, control frames)."""
    got, ctl = {}, []
    async with websockets.connect(url, max_size=None) as w:
        deadline = time.monotonic() + timeout
        while sum(len(v) for v in got.values()) < want_total:
            raw = await asyncio.wait_for(w.recv(), max(0.1, deadline - time.monotonic()))
            doc = json.loads(raw)
            if "type" in doc:
                ctl.append(doc)
            elif doc.get("reset"):
                ctl.append(doc)
            else:
                got.setdefault(doc["channel"], []).append(doc)
            if on_frame:
                await on_frame(w, doc)
    return got, ctl


def test_websocket_url_list_gets_every_channel_exactly(mux):
    s = mux
    rng = random.Random(SEED)
    chans = [unique_channel("mx%d" % i) for i in range(5)]
    # The channels exist (epoch known) before the client names positions.
    first = publish_all(s, chans, 1, rng)
    since = ",".join("%s=%s:%d" % (c, first[c][0][0], first[c][0][1]) for c in chans)
    url = ws_url(s, "channel=%s&since=%s" % (",".join(chans), quote(since)))

    async def run():
        task = asyncio.ensure_future(ws_collect(url, 5 * 8))
        await asyncio.sleep(0.5)
        sent = await asyncio.get_event_loop().run_in_executor(None, publish_all, s, chans, 8, rng)
        got, ctl = await task
        return sent, got, ctl
    sent, got, ctl = asyncio.run(run())
    assert ctl == []
    check_exact(got, sent, "websocket")


def test_websocket_in_band_subscribe_and_unsubscribe(mux):
    s = mux
    a, b = unique_channel("ib"), unique_channel("ib")
    st, p = s.publish("a1", channel=a)
    epoch_a = p["epoch"]

    async def run():
        async with websockets.connect(ws_url(s, "channel=")) as w:
            async def recv():
                return json.loads(await asyncio.wait_for(w.recv(), 10))
            # since=0: the replay of a follows its confirmation.
            await w.send(json.dumps({"type": "subscribe", "channel": a, "since": 0,
                                     "epoch": epoch_a}))
            assert await recv() == {"type": "subscribed", "channel": a}
            m = await recv()
            assert (m["channel"], m["id"], m["content"]) == (a, 1, "a1")
            await w.send(json.dumps({"type": "subscribe", "channel": b}))
            assert await recv() == {"type": "subscribed", "channel": b}
            # Errors name the channel and say why; the connection lives on.
            await w.send(json.dumps({"type": "subscribe", "channel": a}))
            e = await recv()
            assert (e["type"], e["channel"], e["status"]) == ("error", a, 409), e
            await w.send(json.dumps({"type": "subscribe", "channel": "bad name"}))
            e = await recv()
            assert (e["type"], e["status"]) == ("error", 400), e
            await w.send(json.dumps({"type": "unsubscribe", "channel": "never"}))
            e = await recv()
            assert (e["type"], e["status"]) == ("error", 404), e
            await w.send(json.dumps({"type": "dance"}))
            e = await recv()
            assert (e["type"], e["status"]) == ("error", 400), e
            await w.send("{not json")
            e = await recv()
            assert (e["type"], e["status"]) == ("error", 400), e
            await w.send("plain text is ignored, as SPEC.md says")
            await w.send(json.dumps({"no": "type"}))  # not a control message: ignored
            s.publish("b1", channel=b)
            m = await recv()
            assert (m["channel"], m["content"]) == (b, "b1"), m
            await w.send(json.dumps({"type": "unsubscribe", "channel": a}))
            assert await recv() == {"type": "unsubscribed", "channel": a}
            s.publish("a2", channel=a)
            s.publish("b2", channel=b)
            m = await recv()
            assert (m["channel"], m["content"]) == (b, "b2"), m  # nothing of a after it
            # Subscribing again resumes where the client says.
            await w.send(json.dumps({"type": "subscribe", "channel": a, "since": 1,
                                     "epoch": epoch_a}))
            assert await recv() == {"type": "subscribed", "channel": a}
            m = await recv()
            assert (m["channel"], m["id"], m["content"]) == (a, 2, "a2"), m
    asyncio.run(run())


def test_websocket_subscription_limit(mux):
    s = mux
    chans = [unique_channel("lim") for _ in range(60)]

    async def run():
        async with websockets.connect(ws_url(s, "channel=" + ",".join(chans))) as w:
            await w.send(json.dumps({"type": "subscribe", "channel": unique_channel("lim")}))
            e = json.loads(await asyncio.wait_for(w.recv(), 10))
            assert (e["type"], e["status"]) == ("error", 400), e
            assert "max-subscriptions" in e["error"]
    asyncio.run(run())
    many = ",".join(chans + [unique_channel("lim")])
    st, h, b = s.get("/status?channel=%s&timeout=0" % many)
    assert st == 400 and b"max-subscriptions" in b, (st, b)


def test_websocket_reset_on_one_channel_only(mux):
    s = mux
    a, b = unique_channel("rs"), unique_channel("rs")
    for i in range(3):
        s.publish("a%d" % i, channel=a)
        st, p = s.publish("b%d" % i, channel=b)
    ep_a = s.poll(channel=a, since=0, timeout=0)[1]["epoch"]
    # b is named with an epoch it never had: b is reset (and replayed), a resumes.
    since = "%s=%s:1,%s=gone-epoch:2" % (a, ep_a, b)
    url = ws_url(s, "channel=%s,%s&since=%s" % (a, b, quote(since)))
    got, ctl = asyncio.run(ws_collect(url, 2 + 3))
    assert [m["id"] for m in got[a]] == [2, 3]
    assert [m["id"] for m in got[b]] == [1, 2, 3]
    assert [(c["channel"], c.get("reset")) for c in ctl] == [(b, True)], ctl


def test_long_poll_with_several_channels(mux):
    s = mux
    rng = random.Random(SEED + 1)
    chans = [unique_channel("lp") for _ in range(4)]
    first = publish_all(s, chans, 1, rng)
    pos = {c: (first[c][0][0], first[c][0][1]) for c in chans}
    st, h, b = s.get("/status?channel=%s&since=%s&timeout=0" % (
        ",".join(chans), quote(",".join("%s=%s:%d" % (c, e, i) for c, (e, i) in pos.items()))))
    assert st == 200, b
    doc = json.loads(b)
    assert sorted(x["channel"] for x in doc["channels"]) == sorted(chans)
    assert all(x["messages"] == [] and x["id"] == 1 for x in doc["channels"]), doc
    sent = publish_all(s, chans, 6, rng)
    got = {}
    deadline = time.monotonic() + 30
    while sum(len(v) for v in got.values()) < 24:
        assert time.monotonic() < deadline, got
        q = quote(",".join("%s=%s:%d" % (c, e, i) for c, (e, i) in pos.items()))
        st, h, b = s.get("/status?channel=%s&since=%s&timeout=5" % (",".join(chans), q))
        assert st == 200, b
        for x in json.loads(b)["channels"]:
            assert not x.get("reset"), x
            for m in x["messages"]:
                got.setdefault(x["channel"], []).append(m)
            pos[x["channel"]] = (x["epoch"], x["id"])
    check_exact(got, sent, "long-poll")


def test_long_poll_answers_at_the_first_news(mux):
    s = mux
    a, b = unique_channel("lp1"), unique_channel("lp1")
    st, p = s.publish("x", channel=a)
    t0 = time.monotonic()
    st, h, body = s.get("/status?channel=%s,%s&since=%s=%s:0&timeout=20" % (
        a, b, a, p["epoch"]))
    assert st == 200 and time.monotonic() - t0 < 5
    doc = json.loads(body)
    mine = [x for x in doc["channels"] if x["channel"] == a]
    assert [m["content"] for m in mine[0]["messages"]] == ["x"], doc


def test_event_stream_position_ids_resume_every_channel(mux):
    s = mux
    rng = random.Random(SEED + 2)
    chans = [unique_channel("es") for _ in range(3)]
    first = publish_all(s, chans, 1, rng)
    since = ",".join("%s=%s:1" % (c, first[c][0][0]) for c in chans)
    r = SseReader(s, "channel=%s&since=%s" % (",".join(chans), quote(since)))
    assert " 200 " in r.headers().split("\r\n")[0]
    sent = publish_all(s, chans, 4, rng)
    evs = r.events(12)
    r.close()
    got = {}
    for e in evs:
        got.setdefault(e["json"]["channel"], []).append(e["json"])
    check_exact(got, sent, "eventsource")
    # Each id holds every channel's position after its event.
    last = dict(item.split("=", 1) for item in evs[-1]["id"].split(","))
    assert set(last) == set(chans)
    for c in chans:
        assert last[c] == "%s:%d" % (sent[c][-1][0], sent[c][-1][1]), (c, last)
    # Cut the stream after 5 events: Last-Event-ID resumes each channel exactly.
    cut = evs[4]["id"]
    more = publish_all(s, chans, 2, rng)
    r = SseReader(s, "channel=" + ",".join(chans), last_event_id=cut)
    r.headers()
    evs2 = r.events(12 - 5 + 6)
    r.close()
    got2 = {}
    for e in evs[:5] + evs2:
        got2.setdefault(e["json"]["channel"], []).append(e["json"])
    both = {c: sent[c] + more[c] for c in chans}
    check_exact(got2, both, "eventsource resume")


def test_many_channels_two_relays_resumes_exact(mux):
    """50 channels, three WebSocket clients spread over both relays; each
    drops its connection twice and resumes with the positions it holds."""
    s = mux
    rng = random.Random(SEED + 3)
    chans = [unique_channel("many%d" % i) for i in range(50)]
    first = publish_all(s, chans, 1, rng)
    epochs = {c: first[c][0][0] for c in chans}

    async def client(k, total, sent_box):
        pos = {c: 1 for c in chans}
        got = {}
        rounds = 0
        while sum(len(v) for v in got.values()) < total:
            since = ",".join("%s=%s:%d" % (c, epochs[c], pos[c]) for c in chans)
            url = ws_url(s, "channel=%s&since=%s" % (",".join(chans), quote(since)))
            async with websockets.connect(url, max_size=None) as w:
                budget = rng.randrange(20, 80) if rounds < 2 else 10 ** 9
                rounds += 1
                while budget and sum(len(v) for v in got.values()) < total:
                    doc = json.loads(await asyncio.wait_for(w.recv(), 20))
                    assert "type" not in doc and not doc.get("reset"), doc
                    got.setdefault(doc["channel"], []).append(doc)
                    assert doc["id"] == pos[doc["channel"]] + 1, (k, doc, pos[doc["channel"]])
                    pos[doc["channel"]] = doc["id"]
                    budget -= 1
        return got

    async def run():
        tasks = [asyncio.ensure_future(client(k, 50 * 4, None)) for k in range(3)]
        await asyncio.sleep(0.5)
        sent = await asyncio.get_event_loop().run_in_executor(None, publish_all, s, chans, 4, rng)
        return sent, await asyncio.gather(*tasks)
    sent, results = asyncio.run(run())
    for k, got in enumerate(results):
        check_exact(got, sent, "client %d" % k)
    served = [s.relay_metrics_get(i).get("pushwire_ws_upgrades_total", 0) for i in range(2)]
    assert all(v > 0 for v in served), served
