"""The Lua scripts of src/lua/ run directly on a real Redis, argument by
argument, exactly as broker.c calls them (lib.lua in front of publish.lua and
read.lua, as the Makefile embeds them): ids, history cap, idempotency, the
pub/sub payload, server generations, channel incarnations, every reset rule
of SPEC.md, the byte budget, heartbeats."""
import re
import os
import socket
import time

import pytest

from stack import ROOT, Proc, free_port, wait_for

LUA = os.path.join(ROOT, "src", "lua")


def script(*names):
    return "".join(open(os.path.join(LUA, n)).read() for n in names)


PUBLISH = script("lib.lua", "publish.lua")
READ = script("lib.lua", "read.lua")
HEARTBEAT = script("heartbeat.lua")
PROCS = script("procs.lua")
COMMIT = script("commit.lua")


class Resp:
    """A minimal RESP2 client: enough for EVAL and pub/sub."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.s.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise AssertionError("bad reply %r" % line)

    def cmd(self, *args):
        self.send(*args)
        return self.reply()

    def close(self):
        self.s.close()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("lua")
    port = free_port()
    log = d / "redis.log"
    p = Proc("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", str(d)], str(log)).start()
    wait_for(lambda: Resp(port).cmd("PING") == "PONG", what="redis")
    r = Resp(port)
    r.port = port
    r.log = log
    yield r
    r.close()
    p.stop()


N = [0]


def keys():
    N[0] += 1
    c = "c%d" % N[0]
    return {"srv": "t:server", "meta": "t:ch:" + c, "hist": "t:h:" + c, "idem": "t:idem:" + c,
            "pubch": "t:msg:" + c}


def publish(r, k, content, runid="run1", lossless=None, gen="gen00001", ep="ep000001", ttl=100,
            history=5, idem=None, idem_ttl=600, replicated=False):
    if lossless is None:  # lib.lua's flags as the broker passes them
        lossless = "0110" if replicated else "0000"
    return r.cmd("EVAL", PUBLISH, 4, k["srv"], k["meta"], k["hist"], k["idem"] + "/" + (idem or ""),
                 runid, lossless, gen, ep, ttl, '"%s"' % content, history, k["pubch"],
                 "1" if idem else "0", idem_ttl, "1" if replicated else "0")


def commit(r, k, epoch, mid, runid="run1", history=None):
    extra = ["PUBLISH", history] if history is not None else []
    return r.cmd("EVAL", COMMIT, 3, k["srv"], k["meta"], k["hist"], runid, epoch, mid, k["pubch"],
                 *extra)


def read(r, k, since=None, epoch="", budget=1 << 20, runid="run1", lossless=None, gen="gen00001",
         ep="ep000002", ttl=300, replicated=False):
    if lossless is None:
        lossless = "0110" if replicated else "0000"
    out = r.cmd("EVAL", READ, 3, k["srv"], k["meta"], k["hist"], runid, lossless, gen, ep, ttl,
                "1" if since is not None else "0", since or 0, epoch, budget,
                "1" if replicated else "0")
    head = {"epoch": out[0], "newest": int(out[1]), "reset": out[2] == 1, "more": out[3] == 1,
            "newest_time": int(out[4]), "newest_content": out[5]}
    ents = [(int(out[i]), int(out[i + 1]), out[i + 2]) for i in range(6, len(out), 3)]
    return head, ents


def test_publish_assigns_consecutive_ids_and_caps_history(redis):
    r, k = redis, keys()
    r.cmd("DEL", k["srv"])
    got = [publish(r, k, "m%d" % i) for i in range(8)]
    assert [g[1] for g in got] == list(range(1, 9))
    assert {g[0] for g in got} == {"gen00001ep000001"}  # generation + incarnation
    assert all(g[2] == 0 for g in got)
    assert r.cmd("XLEN", k["hist"]) == 5  # history=5
    assert r.cmd("HGET", k["meta"], "seq") == "8"
    assert 0 < r.cmd("TTL", k["meta"]) <= 100 and 0 < r.cmd("TTL", k["hist"]) <= 100
    first = r.cmd("XRANGE", k["hist"], "-", "+", "COUNT", 1)[0]
    assert first[0] == "4-0" and first[1][0:2] == ["t", first[1][1]] and first[1][3] == '"m3"'


def test_publish_payload_on_pubsub(redis):
    r, k = redis, keys()
    sub = Resp(r.port)
    try:
        assert sub.cmd("SUBSCRIBE", k["pubch"])[0] == "subscribe"
        epoch, mid, _ = publish(r, k, "hello")
        kind, ch, payload = sub.reply()
        assert (kind, ch) == ("message", k["pubch"])
        ep, i, t, content = payload.split(" ", 3)
        assert (ep, int(i), content) == (epoch, mid, '"hello"')
        assert abs(int(t) - time.time() * 1000) < 60000
    finally:
        sub.close()


def test_idempotency_key_answers_the_first_publish(redis):
    r, k = redis, keys()
    a = publish(r, k, "once", idem="key-1")
    b = publish(r, k, "once", idem="key-1")
    c = publish(r, k, "other", idem="key-2")
    assert a[:2] == b[:2] and (a[2], b[2]) == (0, 1) and c[1] == a[1] + 1
    assert r.cmd("XLEN", k["hist"]) == 2
    assert 0 < r.cmd("TTL", k["idem"] + "/key-1") <= 600


def test_server_generation_follows_the_server(redis):
    r, k = redis, keys()
    r.cmd("DEL", k["srv"])
    e1 = publish(r, k, "a", runid="runA", gen="genAAAAA")[0]
    # The same server: the same generation whatever fresh one is offered.
    assert publish(r, k, "b", runid="runA", gen="genBBBBB")[0] == e1
    # Another server that cannot have lost writes (appendfsync always,
    # a master never promoted): the generation is kept.
    assert publish(r, k, "c", runid="runB", lossless="1", gen="genCCCCC")[0] == e1
    # Another server that may have lost writes: a new generation, so every
    # epoch changes and clients are reset.
    e4 = publish(r, k, "d", runid="runC", lossless="0", gen="genDDDDD")[0]
    assert e4 != e1 and e4.startswith("genDDDDD")


def test_the_same_run_with_another_data_set_is_another_server(redis, tmp_path):
    """A server is its run_id *and* its replication id: the same run of a
    server whose data set came from elsewhere (a full sync, then promoted)
    may hold an older copy of its own writes, so it keeps the generation
    only where nothing acknowledged can be missing (found by the chaos
    test, cluster mode: a master restarted from a stale RDB resynced its
    replica, which was promoted and reused 14 ids in the same epoch)."""
    r, k = redis, keys()
    r.cmd("DEL", k["srv"])
    # ("0010": a replicated topology, where the script reads the replication
    # ids itself; a lone server's client passes what it saw instead)
    e1 = publish(r, k, "a", runid="runX", lossless="0010", gen="genAAAAA")[0]
    assert publish(r, k, "a2", runid="runX", lossless="0010", gen="genA2A2A")[0] == e1
    port = free_port()
    p = Proc("redis2", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(tmp_path)],
             str(tmp_path / "redis2.log")).start()
    try:
        wait_for(lambda: Resp(port).cmd("PING") == "PONG", what="redis2")
        r2 = Resp(port)
        before = replid(r)
        r2.cmd("REPLICAOF", "127.0.0.1", r.port)
        wait_for(lambda: r2.cmd("HGET", k["meta"], "seq") == "2", what="the copy")
        # A master changes its replication id when it gets its first
        # replica; its data set is the same: the generation stays (CI,
        # compose cluster profile: publishing started before the replicas
        # synced, and the channel was reset).
        assert replid(r) != before
        assert publish(r, k, "a3", runid="runX", lossless="0010", gen="genA3A3A")[0] == e1
        wait_for(lambda: r2.cmd("HGET", k["meta"], "seq") == "3", what="the copy")
        r2.cmd("REPLICAOF", "NO", "ONE")  # promoted: a new replication id
        # The same run_id on another replication id: a new generation ...
        e2 = publish(r2, k, "b", runid="runX", lossless="0010", gen="genBBBBB")[0]
        assert e2 != e1 and e2.startswith("genBBBBB")
        # ... then the same one again while nothing changes.
        assert publish(r2, k, "c", runid="runX", lossless="0010", gen="genCCCCC")[0] == e2
        # appendfsync always does not help a promoted replica (it may lack
        # the last writes); replicated publishing does.
        e4 = publish(r2, k, "d", runid="runY", lossless="1010", gen="genDDDDD")[0]
        assert e4.startswith("genDDDDD")
        assert publish(r2, k, "e", runid="runZ", lossless="0110", gen="genEEEEE")[0] == e4
        # A lone server's client says what it saw: promoted (the fourth).
        assert publish(r2, k, "f", runid="runW", lossless="1001", gen="genFFFFF")[0] != e4
        r2.close()
        # ... and again when it frees its backlog, repl-backlog-ttl after
        # its last replica left.
        before = replid(r)
        r.cmd("CONFIG", "SET", "repl-backlog-ttl", "1")
        try:
            wait_for(lambda: replid(r) != before, timeout=20, what="the backlog freed")
        finally:
            r.cmd("CONFIG", "SET", "repl-backlog-ttl", "3600")
        assert publish(r, k, "a4", runid="runX", lossless="0010", gen="genA4A4A")[0] == e1
    finally:
        p.stop()


def replid(r):
    info = r.cmd("INFO", "replication")
    return re.search(r"master_replid:(\w+)", info).group(1)


def test_a_forgotten_channel_starts_a_new_incarnation(redis):
    r, k = redis, keys()
    r.cmd("DEL", k["srv"])
    publish(r, k, "old", ep="epOLD001")
    publish(r, k, "old2", ep="epOLD001")
    r.cmd("DEL", k["meta"])  # expired; the stream is left over
    epoch, mid, _ = publish(r, k, "new", ep="epNEW001")
    assert mid == 1 and epoch.endswith("epNEW001")
    assert r.cmd("XLEN", k["hist"]) == 1  # the leftover stream was dropped


def entry(r, k, mid, content):
    r.cmd("XADD", k["hist"], "%d-0" % mid, "t", 1000 + mid, "c", '"%s"' % content)


def warned(r, k, text):
    return any(k["meta"] in l and text in l for l in open(r.log, errors="replace"))


def test_a_stored_message_seq_did_not_count_is_counted(redis):
    # A script cut short after its XADD (publish.lua writes the stream entry
    # first): the message is kept, seq catches up, nothing is skipped and the
    # epoch stays.
    r, k = redis, keys()
    epoch = [publish(r, k, "m%d" % i, history=10)[0] for i in range(3)][-1]
    entry(r, k, 4, "cut")
    head, ents = read(r, k, since=2, epoch=epoch)
    assert (head["epoch"], head["newest"], head["reset"]) == (epoch, 4, False)
    assert [e[0] for e in ents] == [3, 4] and ents[-1][2] == '"cut"'
    assert r.cmd("HGET", k["meta"], "seq") == "4"
    entry(r, k, 5, "cut2")  # and through a publish
    assert publish(r, k, "m5", history=10)[:2] == [epoch, 6]
    head, ents = read(r, k, since=0, epoch=epoch)
    assert [e[0] for e in ents] == [1, 2, 3, 4, 5, 6] and not head["reset"]
    assert warned(r, k, "behind its stream")


@pytest.mark.parametrize("damage", ["tail", "hole", "empty"])
def test_lost_messages_reset_every_client_instead_of_a_silent_gap(redis, damage):
    # Messages missing from the history (seq ahead of the stream's end, a
    # hole inside it, or no stream at all) cannot be given to anyone: the
    # channel starts a new incarnation, so every client is reset and no one
    # moves past ids it never got.
    r, k = redis, keys()
    epoch = [publish(r, k, "m%d" % i, history=10)[0] for i in range(5)][-1]
    if damage == "tail":
        r.cmd("HSET", k["meta"], "seq", 7)
    elif damage == "hole":
        r.cmd("XDEL", k["hist"], "3-0")
    else:
        r.cmd("DEL", k["hist"])
    head, ents = read(r, k, since=2, epoch=epoch, ep="epFRESH1")
    assert head["reset"] and head["epoch"] == "gen00001epFRESH1" and head["newest"] == 0
    assert ents == [] and r.cmd("EXISTS", k["hist"]) == 0
    assert warned(r, k, "messages lost, new incarnation")
    assert publish(r, k, "after", ep="epOTHER1")[:2] == ["gen00001epFRESH1", 1]
    head, ents = read(r, k, since=0, epoch="gen00001epFRESH1")
    assert not head["reset"] and [e[2] for e in ents] == ['"after"']


def test_publish_never_numbers_past_lost_messages(redis):
    # seq ahead of the stream's end seen by a publish: the new message starts
    # the new incarnation at id 1 rather than leaving ids no one can read.
    r, k = redis, keys()
    epoch = [publish(r, k, "m%d" % i)[0] for i in range(3)][-1]
    r.cmd("HSET", k["meta"], "seq", 9)
    e2, mid, _ = publish(r, k, "next", ep="epNEXT01")
    assert (e2, mid) == ("gen00001epNEXT01", 1) and e2 != epoch
    assert r.cmd("XLEN", k["hist"]) == 1


def test_read_without_since_gives_the_state_only(redis):
    r, k = redis, keys()
    for i in range(3):
        publish(r, k, "m%d" % i)
    head, ents = read(r, k)
    assert head["newest"] == 3 and head["newest_content"] == '"m2"' and not head["reset"]
    assert ents == []
    # A channel nobody published to: created with the read's ttl, empty.
    k2 = keys()
    head, ents = read(r, k2, since=0, ttl=300)
    assert head["newest"] == 0 and not head["reset"] and ents == []
    assert 0 < r.cmd("TTL", k2["meta"]) <= 300


def test_read_after_since_and_every_reset_rule(redis):
    r, k = redis, keys()
    for i in range(8):  # history 5: ids 4..8 retained
        epoch = publish(r, k, "m%d" % i)[0]
    head, ents = read(r, k, since=5, epoch=epoch)
    assert not head["reset"] and [e[0] for e in ents] == [6, 7, 8]
    assert [e[2] for e in ents] == ['"m5"', '"m6"', '"m7"']
    head, ents = read(r, k, since=8, epoch=epoch)
    assert not head["reset"] and ents == []
    # since = oldest - 1 is still exact; one older is a reset.
    head, ents = read(r, k, since=3, epoch=epoch)
    assert not head["reset"] and [e[0] for e in ents] == [4, 5, 6, 7, 8]
    for since, ep in ((2, epoch), (9, epoch), (6, "another-epoch")):
        head, ents = read(r, k, since=since, epoch=ep)
        assert head["reset"], (since, ep)
        assert [e[0] for e in ents] == [4, 5, 6, 7, 8] and head["epoch"] == epoch


def test_read_budget_cuts_with_more(redis):
    r, k = redis, keys()
    for i in range(5):
        publish(r, k, "x" * 100, history=10)
    head, ents = read(r, k, since=0, budget=600)  # each costs 102 + 160
    assert head["more"] and [e[0] for e in ents] == [1, 2]
    head, ents = read(r, k, since=0, budget=1)  # at least one
    assert head["more"] and [e[0] for e in ents] == [1]
    head, ents = read(r, k, since=3, budget=1 << 20)
    assert not head["more"] and [e[0] for e in ents] == [4, 5]


def test_heartbeats_and_procs(redis):
    r = redis
    key = "t:procs"
    r.cmd("DEL", key)
    r.cmd("EVAL", HEARTBEAT, 1, key, "worker:a", 5000, 60000)
    r.cmd("EVAL", HEARTBEAT, 1, key, "relay:b", 1, 60000)
    r.cmd("ZADD", key, 1, "worker:ancient")  # expired long ago: pruned
    r.cmd("EVAL", HEARTBEAT, 1, key, "worker:a", 5000, 60000)
    out = r.cmd("EVAL", PROCS, 1, key)
    now = int(out[0])
    members = dict(zip(out[1::2], (int(x) for x in out[2::2])))
    assert set(members) == {"worker:a", "relay:b"}
    assert now < members["worker:a"] <= now + 5000
    assert members["relay:b"] <= now + 1


def test_replicated_publishing_shows_only_committed_messages(redis):
    """--redis-wait-replicas: publish.lua stores without publishing, readers
    see nothing past `committed`, commit.lua publishes from the stream."""
    r, k = redis, keys()
    sub = Resp(r.port)
    try:
        assert sub.cmd("SUBSCRIBE", k["pubch"])[0] == "subscribe"
        e1, i1, _ = publish(r, k, "one", replicated=True, history=10)
        e2, i2, _ = publish(r, k, "two", replicated=True, history=10)
        assert (i1, i2) == (1, 2) and e1 == e2
        head, ents = read(r, k, since=0, replicated=True)
        assert head["newest"] == 0 and ents == [] and not head["reset"]
        # Committed out of order (two publishers): readers see up to the
        # highest committed id, every message below it included.
        assert commit(r, k, e2, i2) == 1
        head, ents = read(r, k, since=0, replicated=True)
        assert head["newest"] == 2 and [e[2] for e in ents] == ['"one"', '"two"']
        assert head["newest_content"] == '"two"'
        # The commit of 2 published 1 and 2, in order (2 is on the replicas,
        # so 1, stored before it, is too); the late commit of 1 publishes
        # nothing more.
        assert commit(r, k, e1, i1) == 1
        assert r.cmd("HGET", k["meta"], "committed") == "2"
        payloads = [sub.reply()[2].split(" ", 3) for _ in range(2)]
        assert [(p[1], p[3]) for p in payloads] == [("1", '"one"'), ("2", '"two"')]
        assert all(p[0] == e1 for p in payloads)
        r.cmd("PUBLISH", k["pubch"], "marker")
        assert sub.reply()[2] == "marker"  # nothing came between
        # A third, not committed: the newest a reader sees is still 2, and a
        # client at 2 is up to date (not reset, nothing to read).
        publish(r, k, "three", replicated=True, history=10)
        head, ents = read(r, k, since=2, epoch=e1, replicated=True)
        assert (head["newest"], ents, head["reset"]) == (2, [], False)
        # Without replicated reads everything stored shows.
        assert read(r, k, since=2, epoch=e1)[0]["newest"] == 3
        # Another epoch (or server) than the stored one is not committed.
        assert commit(r, k, "gen00001other000", 3) == 0
        assert commit(r, k, e1, 3, runid="run2") == 0
    finally:
        sub.close()


def test_a_client_ahead_of_a_lagging_watermark_is_not_reset(redis):
    """After a failover the promoted replica's `committed` may lag what
    clients saw (the commit's own write had not reached it): a client whose
    since lies between committed and the stored newest is up to date, not
    reset, and the next commit makes everything up to it readable."""
    r, k = redis, keys()
    e, _, _ = publish(r, k, "a", replicated=True, history=10)
    assert commit(r, k, e, 1) == 1
    publish(r, k, "b", replicated=True, history=10)  # committed, the commit's write lost:
    head, ents = read(r, k, since=2, epoch=e, replicated=True)
    assert (head["epoch"], head["newest"], head["reset"], ents) == (e, 2, False, [])
    # Beyond what is stored, or of another epoch: reset as always.
    assert read(r, k, since=3, epoch=e, replicated=True)[0]["reset"]
    assert read(r, k, since=2, epoch="other", replicated=True)[0]["reset"]
    # A reader from 0 sees only what is committed, until the next commit.
    assert [x[0] for x in read(r, k, since=0, replicated=True)[1]] == [1]
    e3, i3, _ = publish(r, k, "c", replicated=True, history=10)
    assert commit(r, k, e3, i3) == 1
    assert [x[2] for x in read(r, k, since=0, replicated=True)[1]] == ['"a"', '"b"', '"c"']


def test_replicated_history_keeps_the_newest_committed_messages(redis):
    """History counts committed messages: stores still waiting for their
    commit do not push committed ones out, so a reset replays exactly the
    last `history` of them (found by the chaos test, sentinel-strict)."""
    r, k = redis, keys()
    for c in "abcde":
        e, _, _ = publish(r, k, c, replicated=True, history=3)
    assert commit(r, k, e, 3, history=3) == 1   # 4 and 5 wait for their WAIT
    head, ents = read(r, k, since=0, replicated=True)
    assert head["newest"] == 3 and [x[2] for x in ents] == ['"a"', '"b"', '"c"']
    assert commit(r, k, e, 5, history=3) == 1   # now three committed are kept
    head, ents = read(r, k, since=0, replicated=True)
    assert head["reset"] and [x[0] for x in ents] == [3, 4, 5]
    publish(r, k, "f", replicated=True, history=3)  # stored, not committed
    head, ents = read(r, k, since=1, epoch=e, replicated=True)
    assert head["reset"] and head["newest"] == 5 and [x[0] for x in ents] == [3, 4, 5]
    assert r.cmd("XLEN", k["hist"]) == 4


def test_replicated_publishing_on_a_channel_from_before(redis):
    """A channel written without replicated publishing has no watermark:
    everything in it is committed, and stays readable."""
    r, k = redis, keys()
    e, _, _ = publish(r, k, "old", history=10)
    assert read(r, k, since=0, replicated=True)[0]["newest"] == 1
    publish(r, k, "new", replicated=True, history=10)
    head, ents = read(r, k, since=0, replicated=True)
    assert head["newest"] == 1 and [x[2] for x in ents] == ['"old"']
    assert r.cmd("HGET", k["meta"], "committed") == "1"
