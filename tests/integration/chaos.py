"""The engine of the seeded fault test (test_chaos.py): a real stack (nginx,
Redis with append-only persistence, 2 workers, 2 relays), clients on every
transport that resume, publishers that retry, a scheduler that breaks things
at random from a seeded RNG, and a checker of what SPEC.md guarantees.

One round: a fresh stack; for `seconds`, publishers publish and the
scheduler picks faults; then the faults stop, everything is brought back,
every client must converge on the newest message of its channel, and the
checker reads every client's log, every publisher's acknowledgements and
Redis's history. Nothing here decides what a client should have received
from the faults: the checker only applies the contract (ids, epochs,
resets) to what was observed, so it holds whatever the timing was.

What the checker asserts (SPEC.md; "epoch" E, channel newest id N, history H):
* per client, its log is segments: within one, ids are consecutive (no gap,
  no duplicate, in order) in one epoch; a new segment starts only at a reset
  the server signalled (a long-poll answer with "reset", a WebSocket reset
  frame, an EventSource "event: reset");
* a reset has a cause: another epoch than the client's, or its since older
  than the oldest retained message minus one (the replay then starts past
  since+1), never a reset of an up-to-date client; a reset carries the
  retained history: its replay starts at the oldest retained id,
  max(1, N - H + 1) (exactly, unless a 1 MiB batch limit may have cut it),
  and the client continues from there; ids never go back within an epoch;
* an answer without messages (long-poll timeout) never moves the client
  (its id is the client's since) and never changes the epoch;
* every (epoch, id) has one content for everybody: clients, the publishers'
  200s and Redis's history agree, the content is one that was published to
  that channel, and one publish (one Idempotency-Key, or one attempt of a
  publisher without a key) is stored at most once per epoch;
* after the faults stop, every client converges on the current epoch and
  newest id of its channel (so it received, in its last segment, every
  message stored after the segment's start, each acknowledged one with its
  content), every publish is acknowledged, and Redis's history holds every
  acknowledged message of the current epoch at its id;
* with appendfsync always: one epoch per channel for the whole round (no
  acknowledged message can be lost, so a restart never starts a new one);
  with everysec, acknowledged messages may be missing only across an epoch
  change, which every client saw as a reset;
* on Sentinel (modes "sentinel-strict": --redis-wait-replicas 1 and
  appendfsync always; "sentinel": Redis's defaults), the Redis faults hit
  whichever server is master, so they cause failovers: strict rounds must
  keep one epoch per channel like "always", default ones may reset but
  never skip, like "everysec";
* on Redis Cluster (mode "cluster": three masters with a replica each),
  the Redis faults hit the master of slot 0, whichever node that is: a
  stop or kill longer than the node timeout fails it over; like
  "everysec", resets but never a skip;
* every error a client got is JSON (503 with Retry-After), no valid request
  got another 4xx, every SIGTERMed process exited 0 within 10 s, no process
  died that the scheduler did not kill, and no log has a sanitizer report,
  a hub invariant violation or an nginx alert.
"""
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import tempfile
import time
import traceback
import uuid
from urllib.parse import urlencode

import clients as C
import scenario
from stack import Stack

HOST = "127.0.0.1"
BATCH_BYTES = 1 << 20     # the hub's batch budget (daemon.c): a replay may come in parts
ENTRY_OVERHEAD = 160      # what read.lua counts per message besides its content
EXTRA_BAD = re.compile(r"hub invariant violated|ERROR: AddressSanitizer|ERROR: LeakSanitizer|"
                       r"runtime error:|SUMMARY: UndefinedBehaviorSanitizer|Assertion .* failed|"
                       r"\[alert\]|\[emerg\]|"
                       # nginx never sends a malformed record, nor a request on a
                       # connection whose answer it has not read: the worker's
                       # view of a connection would be wrong.
                       r"FastCGI protocol error|FastCGI request on a busy connection")
SPECIAL = ' "q" \\ <b>&amp; \u00e9 \u4e2d \U0001f600 \t\n'


def master_seed():
    v = os.environ.get("PW_CHAOS_SEED")
    return int(v) if v else int.from_bytes(os.urandom(4), "big")


def round_seed(seed, mode, k):
    return int(hashlib.sha256(("%d:%s:%d" % (seed, mode, k)).encode()).hexdigest()[:12], 16)


# ---- a small synchronous Redis client (final state, CLIENT KILL/PAUSE) ------------------

class Resp:
    def __init__(self, port, timeout=3.0):
        self.port, self.timeout = port, timeout

    def cmd(self, *args):
        with socket.create_connection((HOST, self.port), timeout=self.timeout) as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            return self._reply(f)

    def _reply(self, f):
        line = f.readline()
        if not line:
            raise OSError("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError("redis: " + rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)
            return data[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply(f) for _ in range(n)]
        raise RuntimeError("bad reply %r" % line)


def redis_channel_state(port, channel, prefix="pw:"):
    """(epoch, newest id, [(id, content)]) of a channel, straight from Redis."""
    r = Resp(port, timeout=10)
    gen = r.cmd("HGET", prefix + "server", "gen")
    meta = r.cmd("HMGET", prefix + "ch:" + channel, "seq", "ep")
    seq = int(meta[0] or 0)
    ep = meta[1]
    epoch = (gen or b"").decode() + (ep or b"").decode() if ep is not None else None
    entries = []
    for sid, fields in r.cmd("XRANGE", prefix + "h:" + channel, "-", "+") or []:
        fd = {fields[i].decode(): fields[i + 1] for i in range(0, len(fields), 2)}
        entries.append((int(sid.decode().split("-")[0]),
                        C.content_key(json.loads(fd["c"].decode("utf-8")))))
    return epoch, seq, entries


def channel_state(s, channel):
    """redis_channel_state from wherever the stack keeps the channel (on a
    cluster, the master of its slot)."""
    if hasattr(s, "channel_state"):
        return s.channel_state(channel)
    return redis_channel_state(s.redis_port, channel)


# ---- publishers --------------------------------------------------------------------------

def make_content(head, size, rng):
    body = head + " |" + SPECIAL
    if size > len(body):
        body += rng.randbytes(size // 2 + 1).hex()[:size - len(body)]
    return body


class ChaosPublisher:
    """POST /chat at `rate` messages per second (or `count` at once, with
    `concurrency` connections), retrying each message on 5xx and transport
    errors until a 200. idem: each message carries its own Idempotency-Key
    and the same content on every attempt; otherwise every attempt has a
    content of its own ("tag-i.a"), so the checker can tell which attempts
    were stored."""

    def __init__(self, port, channel, tag, idem, sizes=(0, 0), rate=None, seed=0, concurrency=1):
        self.port, self.channel, self.tag, self.idem = port, channel, tag, idem
        self.sizes, self.rate, self.concurrency = sizes, rate, concurrency
        self.rng = random.Random(seed)
        self.key = "%s-%s" % (tag, uuid.uuid4().hex[:8])
        # Contents as clients.content_key keeps them.
        self.sent = set()                # every content sent (any attempt)
        self.acks = []                   # (epoch, id, content, attempts)
        self.ambiguous = 0               # attempts that got a 5xx or no answer
        self.statuses = collections.Counter()
        self.errors = collections.Counter()
        self.bad = []                    # answers a valid publish must never get
        self.unacked = []                # messages never acknowledged
        self.stopping = False
        self.final_deadline = None       # give up retrying after this (monotonic)
        self.crash = None
        self.token = None                # sent as Authorization: Bearer (private channels)
        self.n = 0

    def stop(self, deadline):
        self.stopping = True
        self.final_deadline = deadline

    async def run(self, count=None):
        try:
            if count is None:
                await self._paced()
            else:
                await self._burst(count)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.crash = traceback.format_exc()

    async def _paced(self):
        conn = C.HttpConn(HOST, self.port)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            while not self.stopping:
                delay = t0 + self.n / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(min(delay, 0.5))
                    continue
                i = self.n
                self.n += 1
                await self._one(conn, i)
        finally:
            conn.close()

    async def once(self):
        """Publish one more message (retried until acknowledged or the
        final deadline)."""
        conn = C.HttpConn(HOST, self.port)
        try:
            i = self.n
            self.n += 1
            await self._one(conn, i)
        finally:
            conn.close()

    async def _burst(self, count):
        async def lane():
            conn = C.HttpConn(HOST, self.port)
            try:
                while self.n < count:
                    i = self.n
                    self.n += 1
                    await self._one(conn, i)
            finally:
                conn.close()
        await asyncio.gather(*(lane() for _ in range(self.concurrency)))

    async def _one(self, conn, i):
        size = self.rng.randint(*self.sizes) if self.sizes[1] else 0
        attempt = 0
        content = make_content("%s-%d" % (self.tag, i), size, self.rng)
        fails = 0
        while True:
            if self.final_deadline is not None and time.monotonic() > self.final_deadline:
                self.unacked.append(content[:60])
                return
            if not self.idem:
                content = make_content("%s-%d.%d" % (self.tag, i, attempt), size, self.rng)
            attempt += 1
            self.sent.add(C.content_key(content))
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if self.idem:
                headers["Idempotency-Key"] = "%s-%d" % (self.key, i)
            if self.token:
                headers["Authorization"] = "Bearer " + self.token
            body = urlencode({"content": content, "channel": self.channel}).encode()
            try:
                st, h, data = await asyncio.wait_for(conn.request("POST", "/chat", body, headers), 15)
            except C.StaleConnection:
                self.errors["stale-keepalive"] += 1  # nothing was sent to a worker
                continue
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, C.HttpError,
                    ValueError) as e:
                conn.close()
                self.errors[type(e).__name__] += 1
                self.ambiguous += 1
                fails += 1
                await asyncio.sleep(C.backoff(fails, cap=1.0))
                continue
            self.statuses[st] += 1
            if st == 200:
                try:
                    doc = json.loads(data)
                    self.acks.append((doc["epoch"], doc["id"], C.content_key(content), attempt))
                    if doc.get("channel") != self.channel:
                        self.bad.append("200 names channel %r" % doc.get("channel"))
                except (ValueError, KeyError) as e:
                    self.bad.append("bad 200 answer (%s) %r" % (e, data[:100]))
                return
            why = C.check_error(st, h, data)
            if why and len(self.bad) < 10:
                self.bad.append("error answer not as the contract says: " + why)
            fails += 1
            if st in (502, 503, 504):
                self.ambiguous += 1
                ra = C.retry_after(h, cap=1.0)
                await asyncio.sleep(ra if ra is not None else C.backoff(fails, cap=1.0))
            elif st == 429:
                await asyncio.sleep(C.backoff(fails, cap=1.0))
            else:
                if len(self.bad) < 10:
                    self.bad.append("publish got %d %r" % (st, data[:100]))
                self.unacked.append(content[:60])
                return


# ---- the checker -------------------------------------------------------------------------

class ClientView:
    """What the checker needs of a client (a LogClient, or a test's stand-in)."""

    def __init__(self, name, kind, channel, initial, log, bad_errors=()):
        self.name, self.kind, self.channel = name, kind, channel
        self.initial, self.log, self.bad_errors = initial, log, list(bad_errors)
        self.target = None  # where it must have got to, when not the channel's final state


def view_of(c, t0=0.0):
    """The checker's view of a LogClient, its times relative to t0."""
    log = [ev[:-1] + (ev[-1] - t0,) for ev in c.log]
    v = ClientView("%s %s" % (c.kind, c.name), c.kind, c.channel,
                   0 if c.first_since_given else None, log, c.bad_errors)
    v.target = getattr(c, "target", None)
    return v


def walk(c, history, more_possible, V):
    """Check one client's log against the ids/epochs/reset rules; append
    violations to V. Returns (segments, observations): segments are
    [epoch, start, end] (the client has every id in (start, end] of epoch),
    observations (epoch, id, content)."""
    who = "%s on %s" % (c.name, c.channel)
    segs, obs = [], []
    E, p = None, c.initial
    seg = None if p is None else [None, p, p]
    if seg:
        segs.append(seg)
    pending = None  # a WebSocket reset frame whose replay has not started yet
    n_bad = 0

    def bad(msg):
        nonlocal n_bad
        n_bad += 1
        if n_bad <= 5:
            V.append("%s: %s" % (who, msg))

    def oldest(n):
        return max(1, n - history + 1)

    def cause(prev_e, prev_p, e, f, n):
        """Whether a reset to (e, newest n, replay from f) of a client at
        (prev_e, prev_p) has a cause SPEC.md gives; f None: not known."""
        if prev_p is None:
            # It named no since and has nothing yet: it started at the
            # server's "now", which may lie in an epoch Redis has already
            # left (the server learns it later) or before history trimmed
            # meanwhile. Not checkable from here; a reset is how it learns.
            # (tests/unit/hub_sim.c checks every other cause exactly.)
            return None
        if prev_e is not None and e != prev_e:
            return None
        if prev_p > n:
            return ("ids went back without an epoch change: the client had id %d of epoch %s, "
                    "the reset names newest %d" % (prev_p, e, n))
        if f is None:
            return None if prev_p < n else "reset of an up-to-date client (at %d, newest %d)" % (prev_p, n)
        if prev_p < f - 1:
            return None  # since older than the oldest retained message minus one
        return ("reset without cause: client at %s:%d, reset names newest %d, replay from %d "
                "(history %d)" % (prev_e, prev_p, n, f, history))

    def replay_start(f, n, may_be_cut):
        if n == 0:
            return None if f == 1 else "reset naming newest 0 followed by id %d" % f
        if f == n + 1:
            return "reset carried none of the retained history (newest %d)" % n
        if not (oldest(n) <= f <= n):
            return "replay starts at %d, outside the retained ids %d..%d" % (f, oldest(n), n)
        if not may_be_cut and f != oldest(n):
            return "replay starts at %d, not at the oldest retained id %d" % (f, oldest(n))
        return None

    def finish_pending(f):
        nonlocal pending
        r, pending = pending, None
        why = cause(r["prev_e"], r["prev_p"], r["epoch"], f, r["newest"])
        if why:
            bad(why + " [at %.1fs]" % r["t"])

    for ev in c.log:
        kind = ev[0]
        if kind == "m":
            _, e, k, content, t = ev
            obs.append((e, k, content))
            if pending is not None:
                r = pending
                finish_pending(k)
                if e != r["epoch"]:
                    bad("replay after a reset to epoch %s comes in epoch %s" % (r["epoch"], e))
                why = replay_start(k, r["newest"], True if more_possible else False)
                if why:
                    bad(why + " [at %.1fs]" % t)
                E, p = e, k
                seg = [e, k - 1, k]
                segs.append(seg)
                continue
            if p is None:  # a client without since: its first position
                E, p = e, k
                seg = [e, k - 1, k]
                segs.append(seg)
                continue
            if E is not None and e != E:
                bad("epoch changed without a reset: %s -> %s at id %d [at %.1fs]" % (E, e, k, t))
                E, p = e, k
                seg = [e, k - 1, k]
                segs.append(seg)
                continue
            if k != p + 1:
                bad("%s: id %d after %d in epoch %s [at %.1fs]" % (
                    "gap" if k > p + 1 else "duplicate or out of order", k, p, e, t))
                if k <= p:
                    continue  # keep the position: the next in order is still p + 1
                seg = [e, k - 1, k]
                segs.append(seg)
            E, p = e, k
            seg[0] = e
            seg[2] = k
        elif kind == "reset":
            _, e, first, n, more, t = ev
            if pending is not None:
                finish_pending(None)
            if c.kind == "websocket":
                pending = {"epoch": e, "newest": n, "prev_e": E, "prev_p": p, "t": t}
                E, p = e, 0
                seg = None
                continue
            f = first if first is not None else n + 1
            why = cause(E, p, e, f, n)
            if why:
                bad(why + " [at %.1fs]" % t)
            may_be_cut = bool(more) if c.kind == "longpoll" else more_possible
            why = replay_start(f, n, may_be_cut)
            if why:
                bad(why + " [at %.1fs]" % t)
            E, p = e, f - 1
            seg = [e, p, p]
            segs.append(seg)
        elif kind == "pos":
            _, e, k, t = ev
            if p is None:
                E, p = e, k
                seg = [e, k, k]
                segs.append(seg)
                continue
            if E is not None and e != E:
                bad("empty answer in epoch %s to a client of epoch %s, without a reset [at %.1fs]"
                    % (e, E, t))
                E, p = e, k
                seg = [e, k, k]
                segs.append(seg)
                continue
            if k != p:
                bad("an answer without messages moved the client from %d to %d (epoch %s) [at %.1fs]"
                    % (p, k, e, t))
                seg = [e, k, k]
                segs.append(seg)
            E, p = e, k
            seg[0] = e
        elif kind == "bad":
            bad("protocol breach: %s [at %.1fs]" % (ev[1], ev[2]))
    if pending is not None:
        finish_pending(None)  # (the client resumes from since=0 of the reset's epoch)
    if n_bad > 5:
        V.append("%s: %d more violations" % (who, n_bad - 5))
    for b in c.bad_errors:
        V.append("%s: error answer not as the contract says: %s" % (who, b))
    return segs, obs, (E, p)


def check(mode, history, channels, clients, pubs, final):
    """Apply the contract to a round. channels: {name: more_possible};
    clients: ClientViews; pubs: publishers (channel, idem, sent, acks,
    bad, unacked, crash); final: {channel: (epoch, newest, [(id, content)])}
    read from Redis once everything converged. Returns (violations, stats)."""
    V, st = [], collections.Counter()
    by_ch = collections.defaultdict(list)
    for c in clients:
        by_ch[c.channel].append(c)
    for p in pubs:
        if p.crash:
            V.append("publisher %s crashed:\n%s" % (p.tag, p.crash))
        for b in p.bad[:5]:
            V.append("publisher %s on %s: %s" % (p.tag, p.channel, b))
        if p.unacked:
            V.append("publisher %s on %s: %d messages never acknowledged after the faults "
                     "stopped, e.g. %r" % (p.tag, p.channel, len(p.unacked), p.unacked[:3]))
    for ch, more_possible in channels.items():
        if ch not in final:
            V.append("%s: no final state" % ch)
            continue
        f_epoch, f_seq, entries = final[ch]
        sent = set()
        acks = {}          # (epoch, id) -> content
        where = collections.defaultdict(dict)   # epoch -> content -> id
        epochs = set()

        def place(e, k, content, who):
            """One observation of (e, k) -> content, from anybody."""
            epochs.add(e)
            known = acks.get((e, k))
            if known is not None and known != content:
                V.append("%s: %s:%d is %r, but it was acknowledged as %r" % (
                    who, e, k, content[:60], known[:60]))
                return
            prev = seen.get((e, k))
            if prev is None:
                seen[(e, k)] = (content, who)
            elif prev[0] != content:
                V.append("%s: %s:%d is %r, but %s got %r" % (who, e, k, content[:60], prev[1],
                                                            prev[0][:60]))
                return
            if content not in sent:
                V.append("%s: %s:%d has content never published to %s: %r" % (
                    who, e, k, ch, content[:60]))
            other = where[e].setdefault(content, k)
            if other != k:
                V.append("%s: one publish stored twice in epoch %s: ids %d and %d (%r)" % (
                    who, e, other, k, content[:60]))

        seen = {}
        ch_pubs = [p for p in pubs if p.channel == ch]
        for p in ch_pubs:
            sent |= p.sent
        for p in ch_pubs:
            for e, k, content, attempts in p.acks:
                epochs.add(e)
                if acks.get((e, k), content) != content:
                    V.append("publisher %s: %s:%d acknowledged for two messages: %r and %r" % (
                        p.tag, e, k, acks[(e, k)][:60], content[:60]))
                acks[(e, k)] = content
                st["acked"] += 1
                st["attempts"] += attempts
        for p in ch_pubs:
            for e, k, content, _ in p.acks:
                place(e, k, content, "publisher %s" % p.tag)
        # Redis's history of the current epoch.
        ids = [k for k, _ in entries]
        if f_seq and (not ids or ids != list(range(ids[0], f_seq + 1))):
            V.append("%s: Redis history ids are not consecutive up to newest %d: %s" % (
                ch, f_seq, ids[:3] + ["..."] + ids[-3:]))
        if len(ids) != min(f_seq, history):
            V.append("%s: Redis keeps %d messages, not min(newest %d, history %d)" % (
                ch, len(ids), f_seq, history))
        for k, content in entries:
            place(f_epoch, k, content, "Redis history")
        kept_from = ids[0] if ids else f_seq + 1
        stored = dict(entries)
        for (e, k), content in acks.items():
            if e == f_epoch:
                if k > f_seq:
                    V.append("%s: acknowledged %s:%d is beyond the newest stored id %d of the "
                             "same epoch (lost without an epoch change)" % (ch, e, k, f_seq))
                elif k >= kept_from and stored.get(k) != content:
                    V.append("%s: acknowledged %s:%d (%r) is not in Redis's history" % (
                        ch, e, k, content[:60]))
                st["acked_in_final_epoch"] += 1
            elif content in where[f_epoch]:
                st["acked_survived_epoch_change"] += 1
            elif k < kept_from:
                st["acked_trimmed_before_epoch_change"] += 1
            else:
                st["acked_lost_with_epoch"] += 1
        # The clients.
        for c in by_ch[ch]:
            segs, obs, (e, pos) = walk(c, history, more_possible, V)
            epochs.update(ev[1] for ev in c.log if ev[0] in ("m", "reset", "pos"))
            st["deliveries"] += len(obs)
            st["resets"] += sum(1 for ev in c.log if ev[0] == "reset")
            for oe, k, content in obs:
                place(oe, k, content, c.name)
            target = c.target or (f_epoch, f_seq)
            if (e, pos) != target:
                V.append("%s on %s: did not converge: it is at %s:%s, the channel at %s:%s" % (
                    c.name, ch, e, pos, target[0], target[1]))
            for se, a, b in segs:
                for k in range(a + 1, b + 1):
                    if (se, k) in acks:
                        st["acked_deliveries_checked"] += 1
        if mode in ("always", "sentinel-strict") and len(epochs) > 1:
            V.append("%s: %d epochs under %s (a restart or failover must keep the epoch): %s"
                     % (ch, len(epochs), "appendfsync always" if mode == "always" else
                        "replicated publishing", sorted(epochs)))
        st["epochs"] += len(epochs)
        st["messages_stored"] += f_seq
    return V, st


# ---- one round -------------------------------------------------------------------------

# (name, content sizes, idempotent publisher's rate, the other one's rate).
CHANNEL_KINDS = (("a", (0, 0), 3.0, 1.5), ("b", (0, 0), 3.0, 1.5), ("bulk", (1000, 8000), 1.0, 0.5))
# A "flood" publishes about 10 MB to a channel of its own while its clients
# (WebSocket through nginx and straight to a relay, EventSource) stop
# reading: more than the relay's --max-queue (2 MiB) and the worker's
# EventSource bound (4 MiB) past the kernel's and nginx's buffers, so they
# are cut off and must resume. Once caught up they leave (their replays
# would cost every later reset megabytes).
MAX_FLOODS = 2


class Round:
    def __init__(self, seed, mode, seconds, index, master):
        self.seed, self.mode, self.seconds, self.index, self.master = seed, mode, seconds, index, master
        self.rng = random.Random(seed)
        # What varies from round to round: the history (a short one makes
        # clients that fall behind get reset), how often faults come, and
        # settings that change which paths run (reads queued behind
        # --max-history-reads, a tight Redis timeout).
        self.history = 150 if self.rng.random() < 0.2 else 2000
        self.interval = self.rng.choice((0.5, 1.2, 1.2, 2.5))
        self.max_reads = self.rng.choice((32, 32, 2))
        self.redis_timeout = self.rng.choice((1000, 1000, 400))
        self.scale = self.rng.choice((1, 1, 3))  # clients of each kind per channel
        # Half the rounds run with every channel private (--private-channels
        # cx.*): each client and publisher carries a token (in the query,
        # as browsers must; in Authorization for publishes).
        self.private = self.rng.random() < 0.5
        self.token = None
        self.long_stalls = seconds >= 60
        self.timeline = []
        self.violations = []
        self.ops = collections.Counter()
        self.skipped = 0
        self.expect_down = set()
        self.busy = set()
        self.stats = collections.Counter()
        self.t0 = time.monotonic()
        self.s = None
        self.kept_logs = None
        self.extra_channels = {}  # flood channels: {name: a replay may come in parts}

    # -- bookkeeping
    def tag(self):
        return "[seed=%d round=%d mode=%s]" % (self.master, self.index, self.mode)

    def event(self, what):
        self.timeline.append((time.monotonic() - self.t0, what))

    def violation(self, what):
        self.violations.append(what)
        self.event("VIOLATION " + what)

    def publisher(self, *a, **kw):
        p = ChaosPublisher(*a, **kw)
        p.token = self.token
        return p

    def with_token(self, clients):
        for c in clients:
            c.token = self.token
        return clients

    # -- the stack
    def make_stack(self):
        common = ["--redis-timeout", str(self.redis_timeout),
                  "--max-history-reads", str(self.max_reads)]
        if self.private:
            import jwt  # python3-jwt
            secret = os.urandom(32).hex()
            self.secret_file = tempfile.NamedTemporaryFile("w", prefix="pw-chaos-secret-", delete=False)
            self.secret_file.write(secret + "\n")
            self.secret_file.close()
            self.token = jwt.encode({"exp": int(time.time()) + 7200,
                                     "pushwire": {"subscribe": ["cx.*"], "publish": ["cx.*"]}},
                                    secret, algorithm="HS256")
            common += ["--private-channels", "cx.*", "--jwt-secret-file", self.secret_file.name]
        if self.mode == "sentinel-strict":
            common += ["--redis-wait-replicas", "1"]
        wargs = common + ["--history", str(self.history), "--sse-heartbeat", "2",
                          "--max-poll-timeout", "30"]
        rargs = common
        if self.mode == "cluster":
            from cluster import ClusterStack  # (it imports this module's Resp)
            return ClusterStack(workers=2, relays=2, worker_args=wargs, relay_args=rargs,
                                nginx_env={"SHUTDOWN_TIMEOUT": "5s"})
        if self.mode.startswith("sentinel"):
            from sentinel import SentinelStack  # (it imports this module's Resp)
            nodes = ["--appendonly", "yes", "--appendfsync", "always"] \
                if self.mode == "sentinel-strict" else []
            return SentinelStack(workers=2, relays=2, worker_args=wargs, relay_args=rargs,
                                 node_args=nodes, nginx_env={"SHUTDOWN_TIMEOUT": "5s"})
        return Stack(workers=2, relays=2, worker_args=wargs, relay_args=rargs,
                     redis_args=["--appendonly", "yes", "--appendfsync", self.mode],
                     nginx_env={"SHUTDOWN_TIMEOUT": "5s"})

    def procs(self):
        s = self.s
        out = {"redis": s.redis, "nginx": s.nginx}
        out.update({"worker-%d" % i: w for i, w in enumerate(s.workers)})
        out.update({"relay-%d" % i: r for i, r in enumerate(s.relays)})
        return out

    def start_proc(self, name):
        """Start a worker/relay/Redis again (the harness's start_*; its wait
        for Redis may time out while Redis is stopped: the process runs)."""
        s = self.s
        try:
            if name == "redis":
                s.start_redis()
            elif name.startswith("worker"):
                s.start_worker(int(name[-1]))
            else:
                s.start_relay(int(name[-1]))
        except AssertionError as e:
            self.event("%s started; %s" % (name, e))

    # -- faults
    async def op_redis_stop(self, d):
        p = self.s.redis  # on Sentinel, the master may change meanwhile
        p.send(signal.SIGSTOP)
        await asyncio.sleep(d)
        p.send(signal.SIGCONT)

    async def op_redis_kill(self, d):
        self.expect_down.add("redis")
        try:
            await asyncio.to_thread(self.s.redis.stop, signal.SIGKILL)
            await asyncio.sleep(d)
            await asyncio.to_thread(self.start_proc, "redis")
        finally:
            self.expect_down.discard("redis")

    async def op_redis_term(self, d):
        self.expect_down.add("redis")
        try:
            p = self.s.redis
            rc = await asyncio.to_thread(p.stop, signal.SIGTERM)
            if rc != 0:
                self.violation("redis exited with %r on SIGTERM" % rc)
            await asyncio.sleep(d)
            await asyncio.to_thread(self.start_proc, "redis")
        finally:
            self.expect_down.discard("redis")

    async def op_redis_clients(self, kind):
        try:
            n = await asyncio.to_thread(Resp(self.s.redis_port).cmd, "CLIENT", "KILL", "TYPE", kind)
            self.event("killed %s Redis connections of type %s" % (n, kind))
        except (OSError, RuntimeError) as e:
            self.event("CLIENT KILL failed: %s" % e)

    async def op_redis_client_one(self, pick):
        """Kill one connection of one process (a partial network failure:
        only its pub/sub, or only its commands, go)."""
        r = Resp(self.s.redis_port)
        try:
            me = await asyncio.to_thread(r.cmd, "CLIENT", "ID")
            rows = (await asyncio.to_thread(r.cmd, "CLIENT", "LIST")).decode().splitlines()
            ids = sorted(int(f[3:]) for row in rows for f in row.split() if f.startswith("id="))
            ids = [i for i in ids if i != me]
            if ids:
                victim = ids[int(pick * len(ids))]
                row = next(x for x in rows if x.startswith("id=%d " % victim))
                await asyncio.to_thread(r.cmd, "CLIENT", "KILL", "ID", victim)
                self.event("killed Redis connection %s" % " ".join(
                    f for f in row.split() if f.split("=")[0] in ("id", "addr", "cmd", "sub")))
        except (OSError, RuntimeError) as e:
            self.event("CLIENT KILL ID failed: %s" % e)

    async def op_redis_pause(self, d):
        try:
            await asyncio.to_thread(Resp(self.s.redis_port).cmd, "CLIENT", "PAUSE", int(d * 1000),
                                    "WRITE")
        except (OSError, RuntimeError) as e:
            self.event("CLIENT PAUSE failed: %s" % e)
        await asyncio.sleep(d)

    async def op_proc(self, name, sig, d):
        p = self.procs()[name]
        self.expect_down.add(name)
        try:
            t = time.monotonic()
            rc = await asyncio.to_thread(p.stop, sig)
            if sig == signal.SIGTERM and rc != 0:
                self.violation("%s exited with %r on SIGTERM (%s)" % (
                    name, rc, "did not exit within 10 s" if rc is None else "exit status"))
            self.event("%s exited %r after %.1fs" % (name, rc, time.monotonic() - t))
            await asyncio.sleep(d)
            await asyncio.to_thread(self.start_proc, name)
            self.event("%s started again" % name)
        finally:
            self.expect_down.discard(name)

    async def op_freeze(self, name, d):
        """SIGSTOP a worker or relay for d seconds (a stalled host, a long GC
        pause): its Redis timers fire late, Redis buffers its pub/sub."""
        p = self.procs()[name]
        p.send(signal.SIGSTOP)
        try:
            await asyncio.sleep(d)
        finally:
            p.send(signal.SIGCONT)

    async def op_nginx_reload(self):
        old = set(C.nginx_workers(self.s.nginx.pid))
        os.kill(self.s.nginx.pid, signal.SIGHUP)
        ok = await C.wait_until(lambda: set(C.nginx_workers(self.s.nginx.pid)) - old, 15, 0.1)
        if not ok:
            self.violation("nginx did not start new workers within 15 s of SIGHUP")

    def op_drop(self, victims):
        for c in victims:
            if c.drop():
                self.stats["drops"] += 1

    def op_stall(self, c, d):
        c.stall(d)
        self.stats["stalls"] += 1

    async def op_burst(self, ch, kind, n, k, seed):
        _, sizes, _, _ = kind
        if sizes[1]:
            sizes = (8000, 32000)
        p = self.publisher(self.s.port, ch, "burst%d" % k, idem=True, sizes=sizes, seed=seed,
                           concurrency=4)
        self.pubs.append(p)
        await p.run(count=n)

    async def op_redis_crash(self, cut, d):
        """What a machine crash does to Redis under everysec: the process
        dies and the writes not yet synced are gone (the tail of the
        append-only file; Redis loads a truncated one)."""
        self.expect_down.add("redis")
        try:
            await asyncio.to_thread(self.s.redis.stop, signal.SIGKILL)
            adir = self.s.path("appendonlydir")
            incr = sorted((f for f in os.listdir(adir) if f.endswith(".incr.aof")),
                          key=lambda f: int(f.split(".")[-3]))
            if incr:
                path = os.path.join(adir, incr[-1])
                size = os.path.getsize(path)
                os.truncate(path, max(0, size - cut))
                self.event("cut %d of %d bytes off %s" % (min(cut, size), size, incr[-1]))
            await asyncio.sleep(d)
            await asyncio.to_thread(self.start_proc, "redis")
        finally:
            self.expect_down.discard("redis")

    async def op_flood(self, k, n, stall, relay, seeds):
        s = self.s
        ch = "cx.flood%d:%s" % (k, uuid.uuid4().hex[:8])
        self.extra_channels[ch] = True
        fl = self.with_token([
            C.ResumingWs(HOST, s.port, ch, 0, "flood%d/ws" % k, seeds[0], rcvbuf=16384),
            C.ResumingWs(HOST, s.relay_ports[relay], ch, 0, "flood%d/ws-direct" % k, seeds[1],
                         rcvbuf=16384),
            C.SseClient(HOST, s.port, ch, 0, "flood%d/sse" % k, seeds[2], rcvbuf=16384)])
        for c in fl:
            c.first_since_given = True
        self.clients += fl
        tasks = [asyncio.create_task(c.run()) for c in fl]
        try:
            await C.wait_until(lambda: all(c.sessions for c in fl), 20, 0.1)
            for c in fl:
                c.stall(stall)
            self.stats["stalls"] += len(fl)
            p = self.publisher(s.port, ch, "flood%d" % k, idem=True, sizes=(24000, 32000),
                               seed=seeds[3], concurrency=4)
            self.pubs.append(p)
            await p.run(count=n)
            self.event("flood %s: %d published" % (ch, len(p.acks)))
            # Nothing else is published there: every client must get to the
            # newest id (through cut-offs, resets, whatever the faults do).

            state, deadline = None, time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    state = (await asyncio.to_thread(channel_state, s, ch))[:2]
                except (OSError, RuntimeError):
                    state = None
                if state and all(c.position() == state for c in fl):
                    break
                await asyncio.sleep(0.5)
            else:
                self.violation("flood %s: clients did not catch up within 90 s: %s, channel at %s"
                               % (ch, [(c.name, c.position()) for c in fl], state))
            for c in fl:
                c.target = c.position()
        finally:
            await C.cancel_all(tasks)
            for c in fl:
                c.left = True

    def pick(self, rng):
        """(kind, resource, coroutine or callable, description), drawn from rng."""
        ops = [("redis_stop", 2.0), ("redis_kill", 1.5), ("redis_term", 1.0),
               ("redis_clients", 1.0), ("redis_pause", 1.0), ("worker_kill", 2.0),
               ("worker_term", 1.5), ("relay_kill", 1.5), ("relay_term", 1.0),
               ("nginx_reload", 1.5), ("drop", 3.0), ("stall", 3.0), ("burst", 1.2),
               ("flood", 0.8), ("worker_stop", 1.0), ("relay_stop", 1.0),
               ("redis_client_one", 1.5)]
        if self.long_stalls:
            ops.append(("redis_outage", 0.3))
        if self.mode == "everysec":
            ops.append(("redis_crash", 1.0))
        kind = rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
        d = rng.uniform(0.0, 2.5)
        if kind == "redis_outage":
            d = rng.uniform(10.0, 30.0)
            return kind, "redis", lambda: self.op_redis_stop(d), \
                "SIGSTOP redis for %.1fs (longer than the poll timeouts)" % d
        if kind == "redis_client_one":
            pick = rng.random()
            return kind, "redis", lambda: self.op_redis_client_one(pick), \
                "kill one Redis connection"
        if kind == "redis_crash":
            cut = rng.randint(1, 8000)
            return kind, "redis", lambda: self.op_redis_crash(cut, d), \
                "crash redis (SIGKILL, %d bytes of unsynced writes lost), down %.1fs" % (cut, d)
        if kind == "flood":
            n, stall, relay = rng.randint(300, 400), rng.uniform(4.0, 15.0), rng.randrange(2)
            seeds = [rng.random() for _ in range(4)]
            k = self.ops["flood"]
            # One at a time, MAX_FLOODS per round.
            res = "flood" if k < MAX_FLOODS else "flood-max"
            if res == "flood-max":
                self.busy.add(res)
            return kind, res, lambda: self.op_flood(k, n, stall, relay, seeds), \
                "flood %d: %d messages of 24-32 KB while its clients stop reading for %.1fs" % (
                    k, n, stall)
        if kind == "redis_stop":
            d = rng.uniform(0.3, 5.0)
            return kind, "redis", lambda: self.op_redis_stop(d), "SIGSTOP redis for %.1fs" % d
        if kind == "redis_kill":
            return kind, "redis", lambda: self.op_redis_kill(d), "SIGKILL redis, down %.1fs" % d
        if kind == "redis_term":
            return kind, "redis", lambda: self.op_redis_term(d), "SIGTERM redis, down %.1fs" % d
        if kind == "redis_clients":
            t = rng.choice(["pubsub", "normal"])
            return kind, "redis", lambda: self.op_redis_clients(t), "CLIENT KILL TYPE %s" % t
        if kind == "redis_pause":
            d = rng.uniform(0.3, 3.0)
            return kind, "redis", lambda: self.op_redis_pause(d), "CLIENT PAUSE WRITE %.1fs" % d
        if kind in ("worker_stop", "relay_stop"):
            name = "%s-%d" % (kind.split("_")[0], rng.randrange(2))
            d = rng.uniform(0.3, 6.0)
            return kind, name, lambda: self.op_freeze(name, d), "SIGSTOP %s for %.1fs" % (name, d)
        if kind in ("worker_kill", "worker_term", "relay_kill", "relay_term"):
            name = "%s-%d" % (kind.split("_")[0], rng.randrange(2))
            sig = signal.SIGKILL if kind.endswith("kill") else signal.SIGTERM
            return kind, name, lambda: self.op_proc(name, sig, d), "%s %s, down %.1fs" % (
                sig.name, name, d)
        if kind == "nginx_reload":
            return kind, "nginx", self.op_nginx_reload, "nginx reload (SIGHUP)"
        if kind == "drop":
            victims = rng.sample(self.clients, rng.randint(1, 3))
            return kind, None, lambda: self.op_drop(victims), "drop %s" % ", ".join(
                c.name for c in victims)
        if kind == "stall":
            c = rng.choice(self.clients)
            d = rng.uniform(0.5, 8.0)
            if self.long_stalls and rng.random() < 0.2:
                d = rng.uniform(10.0, 45.0)
            return kind, None, lambda: self.op_stall(c, d), "stall %s for %.1fs" % (c.name, d)
        ch_kind = rng.choice(CHANNEL_KINDS[:3])
        ch = self.channel_of[ch_kind[0]]
        n = rng.randint(20, 60) if ch_kind[1][1] else rng.randint(50, 350)
        k = self.ops["burst"]
        seed = rng.random()
        return kind, None, lambda: self.op_burst(ch, ch_kind, n, k, seed), "burst of %d on %s" % (
            n, ch)

    async def scheduler(self, until):
        rng = random.Random(self.rng.random())
        tasks = set()
        while time.monotonic() < until:
            await asyncio.sleep(rng.expovariate(1 / self.interval))
            if time.monotonic() >= until:
                break
            kind, res, fn, what = self.pick(rng)
            if res is not None and res in self.busy:
                self.skipped += 1
                continue
            self.ops[kind] += 1
            self.event(what)
            if res is not None:
                self.busy.add(res)

            async def go(fn=fn, res=res, what=what):
                try:
                    r = fn()
                    if asyncio.iscoroutine(r):
                        await r
                except Exception:
                    self.violation("the test's own operation %r failed:\n%s" % (
                        what, traceback.format_exc()))
                finally:
                    if res is not None:
                        self.busy.discard(res)
            tasks.add(asyncio.create_task(go()))
        if tasks:
            await asyncio.wait(tasks, timeout=150)
            for t in tasks:
                if not t.done():
                    self.violation("a fault operation did not finish within 150 s")

    async def monitor(self):
        """Processes the scheduler did not take down must stay up."""
        while True:
            await asyncio.sleep(0.3)
            for name, p in self.procs().items():
                if name in self.expect_down or p.alive():
                    continue
                self.violation("%s died on its own: exit status %r (see %s.log)" % (
                    name, p.p.returncode, name))
                if name == "nginx":
                    continue
                self.expect_down.add(name)
                try:
                    await asyncio.to_thread(self.start_proc, name)
                finally:
                    self.expect_down.discard(name)

    # -- the scenario
    def make_clients(self):
        s = self.s
        out = []
        for j, (short, _, _, _) in enumerate(CHANNEL_KINDS):
            ch = self.channel_of[short]
            seed = self.rng.random
            for n in range(self.scale):
                name = short + ("/%d" % n if n else "/")
                relay = s.relay_ports[(j + n) % len(s.relay_ports)]
                out += [
                    C.ResumingLongPoll(HOST, s.port, ch, 0, (1, 3, 10, 20), 0.2, name + "lp",
                                       seed()),
                    C.ResumingLongPoll(HOST, s.port, ch, 0, (0,), 0.4, name + "lp-t0", seed()),
                    C.ResumingLongPoll(HOST, s.port, ch, None, (2, 10), 0.1, name + "lp-nosince",
                                       seed()),
                    C.ResumingWs(HOST, s.port, ch, 0, name + "ws", seed(), rcvbuf=32768),
                    C.ResumingWs(HOST, relay, ch, 0, name + "ws-direct", seed(), rcvbuf=32768),
                    C.ResumingWs(HOST, s.port, ch, None, name + "ws-nosince", seed()),
                    C.SseClient(HOST, s.port, ch, 0, name + "sse", seed(), rcvbuf=32768),
                    C.SseClient(HOST, s.port, ch, None, name + "sse-nosince", seed()),
                ]
        # One WebSocket on every channel (through nginx, and straight to a
        # relay), each channel resumed from its own position; the checker
        # sees one client per channel (.parts).
        chans = [self.channel_of[short] for short, _, _, _ in CHANNEL_KINDS]
        for n in range(self.scale):
            for label, port, since in (("ws", s.port, 0), ("ws-direct", s.relay_ports[n % len(s.relay_ports)], 0),
                                       ("ws-nosince", s.port, None)):
                m = C.MultiWs(HOST, port, chans, since, "multi/%d%s" % (n, label), self.rng.random(),
                              rcvbuf=32768)
                out += m.parts
        for c in out:
            c.first_since_given = c.has_since
        return self.with_token(out)

    async def scenario(self):
        s = self.s
        self.t0 = time.monotonic()
        self.clients = self.make_clients()
        ctasks = [asyncio.create_task(c.run()) for c in self.clients]
        self.pubs = []
        for short, sizes, r_idem, r_plain in CHANNEL_KINDS:
            ch = self.channel_of[short]
            self.pubs.append(self.publisher(s.port, ch, short + "-k", True, sizes, r_idem,
                                            self.rng.random()))
            if r_plain:
                self.pubs.append(self.publisher(s.port, ch, short + "-p", False, sizes, r_plain,
                                                self.rng.random()))
        paced = list(self.pubs)
        await asyncio.sleep(1.0)  # clients subscribe
        ptasks = [asyncio.create_task(p.run()) for p in paced]
        mon = asyncio.create_task(self.monitor())
        try:
            await self.scheduler(time.monotonic() + self.seconds)
            self.event("faults stop")
            await self.settle(ptasks)
        finally:
            mon.cancel()
        return ctasks

    async def settle(self, ptasks):
        s = self.s
        for c in self.clients:
            c.unstall()
        for r in getattr(s, "nodes", [s.redis]):
            if r is not None and r.alive():
                r.send(signal.SIGCONT)
        for name, p in self.procs().items():
            if not p.alive() and name != "nginx":
                self.violation("%s is down after the faults" % name)
                await asyncio.to_thread(self.start_proc, name)
        if not await C.wait_until(lambda: s.all_redis_up(), 30, 0.2):
            self.violation("processes did not all reconnect to Redis within 30 s after the faults")
        deadline = time.monotonic() + 60
        for p in self.pubs:
            p.stop(deadline)
        await asyncio.wait(ptasks, timeout=70)
        self.event("publishers stopped")
        # Markers: every client gets a position (one without since knows
        # none until a message reaches it) and the newest id moves once more.
        markers = []
        for short, _, _, _ in CHANNEL_KINDS:
            mp = self.publisher(s.port, self.channel_of[short], short + "-marker", True, seed=0)
            mp.final_deadline = time.monotonic() + 60
            markers.append(mp)
            self.pubs.append(mp)
        t_end = time.monotonic() + 30
        while True:
            await asyncio.gather(*(mp.once() for mp in markers))
            if all(c.has_since for c in self.clients if not c.left) or time.monotonic() > t_end:
                break
            await asyncio.sleep(1.5)
        # Convergence on Redis's state.
        self.final = {}

        def state():
            return {ch: channel_state(s, ch)
                    for ch in list(self.channel_of.values()) + list(self.extra_channels)}

        async def converged():
            try:
                fin = self.final = await asyncio.to_thread(state)
            except (OSError, RuntimeError):
                return False
            return all(c.position() == fin[c.channel][:2] for c in self.clients if not c.left)
        t = time.monotonic()
        ok = False
        while not ok and time.monotonic() < t + 90:
            ok = await converged()
            if not ok:
                await asyncio.sleep(0.5)
        self.stats["converge_seconds"] = round(time.monotonic() - t, 1)
        self.final = await asyncio.to_thread(state)
        self.event("converged" if ok else "did not converge")

    # -- running it
    def run(self):
        self.s = self.make_stack()
        self.channel_of = {k[0]: "cx.%s:%s" % (k[0], uuid.uuid4().hex[:8]) for k in CHANNEL_KINDS}
        self.s.start()
        ok_stop = False
        lag = {}
        try:
            scenario.run(self.scenario(), self.seconds + 400)
            lag = dict(scenario.LAG)
        except BaseException:
            self.violation("the round did not complete:\n" + traceback.format_exc())
            self.final = getattr(self, "final", {})
        finally:
            try:
                self.collect_logs()
                # The directory stays until the check says whether its logs
                # are wanted.
                self.s.stop(check=True, keep=True)
                ok_stop = True
            except AssertionError as e:
                self.violation("at stop: %s" % e)
            except Exception:
                self.violation("at stop:\n" + traceback.format_exc())
        self.stats["loop_lag_max"] = round(lag.get("max", 0.0), 2)
        if hasattr(self, "clients") and len(getattr(self, "final", {})) == \
                len(self.channel_of) + len(self.extra_channels):
            more_possible = {}
            for short, sizes, _, _ in CHANNEL_KINDS:
                biggest = (32000 if sizes[1] else 0) * 2 + 200 + ENTRY_OVERHEAD
                more_possible[self.channel_of[short]] = self.history * biggest > BATCH_BYTES
            more_possible.update(self.extra_channels)
            V, st = check(self.mode, self.history, more_possible,
                          [view_of(c, self.t0) for c in self.clients], self.pubs, self.final)
            self.violations += V
            self.stats.update(st)
        elif not self.violations:
            self.violation("no final state to check")
        if self.violations and not self.kept_logs:
            self.keep_logs()
        if os.environ.get("PW_KEEP_LOGS") != "1":
            shutil.rmtree(self.s.dir, ignore_errors=True)
        if self.private:
            os.unlink(self.secret_file.name)
        return ok_stop

    def collect_logs(self):
        s = self.s
        n_cut = n_sse_cut = 0
        for name in sorted(os.listdir(s.dir)):
            if not name.endswith(".log"):
                continue
            with open(s.path(name), errors="replace") as f:
                for line in f:
                    if EXTRA_BAD.search(line):
                        self.violation("%s: %s" % (name, line.rstrip()[:300]))
                    if "closing with 1008" in line:
                        n_cut += 1
                    if "EventSource client too slow" in line:
                        n_sse_cut += 1
                    if "resyncing" in line:
                        self.stats["resyncs_logged"] += 1
        self.stats["ws_cutoffs"] = n_cut
        self.stats["sse_cutoffs"] = n_sse_cut
        if self.violations:
            self.keep_logs()

    def keep_logs(self):
        dst = "/tmp/pw-chaos-%d-%s-%d" % (self.master, self.mode, self.index)
        shutil.rmtree(dst, ignore_errors=True)
        try:
            shutil.copytree(self.s.dir, dst, ignore=shutil.ignore_patterns("*.sock", "tmp"))
            with open(os.path.join(dst, "timeline.txt"), "w") as f:
                for t, what in self.timeline:
                    f.write("%8.2f %s\n" % (t, what))
                for c in getattr(self, "clients", []):
                    f.write("\n%s %s: position %r sessions=%d errors=%s\n" % (
                        c.kind, c.name, c.position(), c.sessions, dict(c.errors)))
                    for t, what in c.trace:
                        f.write("   %8.2f %s\n" % (t - self.t0, what))
                    for ev in c.log[-40:]:
                        f.write("   %s\n" % (ev[:3] + ((ev[3][:30],) if ev[0] == "m" else ev[3:-1])
                                              + ("%.2f" % (ev[-1] - self.t0),),))
            self.kept_logs = dst
        except OSError as e:
            self.kept_logs = "(could not keep logs: %s)" % e

    def summary(self):
        faults = dict(sorted(self.ops.items()))
        st = self.stats
        return ("round %d mode=%s history=%d interval=%.1fs max_reads=%d redis_timeout=%d "
                "private=%s clients=%d: "
                "operations=%d (skipped %d) faults=%s messages=%d "
                "acked=%d deliveries_checked=%d acked_deliveries_checked=%d resets=%d "
                "channel_epochs=%d "
                "ws_cutoffs=%d sse_cutoffs=%d resyncs_logged=%d drops=%d stalls=%d "
                "acked_lost_with_epoch=%d "
                "converge=%ss lag_max=%ss violations=%d" % (
                    self.index, self.mode, self.history, self.interval, self.max_reads,
                    self.redis_timeout, "yes" if self.private else "no", len(getattr(self, "clients", ())),
                    sum(self.ops.values()), self.skipped,
                    faults, st["messages_stored"], st["acked"], st["deliveries"],
                    st["acked_deliveries_checked"], st["resets"], st["epochs"], st["ws_cutoffs"],
                    st["sse_cutoffs"], st["resyncs_logged"], st["drops"], st["stalls"],
                    st["acked_lost_with_epoch"],
                    st["converge_seconds"], st["loop_lag_max"], len(self.violations)))

    def report(self):
        lines = ["%s %d violations (replay: PW_CHAOS_SEED=%d PW_CHAOS_ROUND=%d, mode %s; logs "
                 "kept in %s)" % (self.tag(), len(self.violations), self.master, self.index,
                                  self.mode, self.kept_logs)]
        lines += ["%s %s" % (self.tag(), v) for v in self.violations[:40]]
        lines.append("%s timeline:" % self.tag())
        lines += ["  %7.2fs %s" % (t, w) for t, w in self.timeline[-80:]]
        return "\n".join(lines)


def run(seed, mode, budget, round_seconds=None, only_round=None):
    """Rounds of `round_seconds` (default: the budget, at most 120 s) until
    the budget is spent. Returns (summary line, rounds)."""
    if round_seconds is None:
        round_seconds = float(os.environ.get("PW_CHAOS_ROUND_SECONDS", min(budget, 120.0)))
    nrounds = max(1, int(round(budget / round_seconds)))
    rounds = []
    t0 = time.monotonic()
    for k in range(nrounds):
        if only_round is not None and k != only_round:
            continue
        r = Round(round_seed(seed, mode, k), mode, round_seconds, k, seed)
        print("\n%s chaos round starting (replay: PW_CHAOS_SEED=%d PW_CHAOS_ROUND=%d)" % (
            r.tag(), seed, k), flush=True)
        r.run()
        print("%s %s" % (r.tag(), r.summary()), flush=True)
        rounds.append(r)
        if r.violations:
            break
    tot = collections.Counter()
    faults = collections.Counter()
    for r in rounds:
        tot.update({k: v for k, v in r.stats.items() if isinstance(v, int)})
        faults.update(r.ops)
    line = ("test_chaos[%s] seed=%d: rounds=%d seconds=%.0f operations=%d faults=%s messages=%d "
            "acked=%d deliveries_checked=%d acked_deliveries_checked=%d resets=%d ws_cutoffs=%d "
            "sse_cutoffs=%d violations=%d" % (
                mode, seed, len(rounds), time.monotonic() - t0, sum(faults.values()),
                dict(sorted(faults.items())), tot["messages_stored"], tot["acked"],
                tot["deliveries"], tot["acked_deliveries_checked"], tot["resets"],
                tot["ws_cutoffs"], tot["sse_cutoffs"], sum(len(r.violations) for r in rounds)))
    return line, rounds
