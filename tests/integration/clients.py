"""Asyncio clients for the resilience tests: they behave like well-written
real clients and record everything they receive.

* LongPollClient: re-polls GET /status with since/epoch over a keep-alive
  HTTP/1.1 connection, backs off (with jitter, honouring Retry-After) on
  errors, and can "leave" (drop its connection in the middle of a held poll)
  and come back later with since.
* WsClient: a WebSocket client (websockets 10.x) that reconnects with
  since/epoch after any close or error, with backoff and jitter, and can
  leave and come back the same way.
* Publisher: POST /chat at a steady rate; every message has its own
  Idempotency-Key and is retried with it until a 200 (503 honours
  Retry-After), so a message is published exactly once whatever fails.

* ResumingLongPoll, ResumingWs, SseClient (the chaos test): clients on the
  three transports that resume with since/epoch (EventSource: Last-Event-ID,
  as a browser does), keep a log of every event a checker needs (messages,
  resets with the position they announce, positions learned from empty
  answers, protocol breaches), and can be told to stop reading for a while
  (stall) or to lose their connection (drop).

Every client records the ids (and contents) it received, in order, plus
anomalies (resets, epoch changes, gaps, unexpected statuses) so that the
tests can check "every message exactly once, in order". Nothing here blocks
the event loop; everything is bounded by the caller cancelling the tasks.
"""
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import resource
import socket
import subprocess
import time
import traceback
from urllib.parse import urlencode

import websockets
import websockets.client
import websockets.exceptions


# ---- small utilities --------------------------------------------------------------

def raise_nofile():
    """Raise this process's open-file limit to the hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def backoff(fails, base=0.05, cap=2.0, rng=random):
    """Full-jitter exponential backoff."""
    return rng.uniform(0, min(cap, base * (2 ** min(fails, 10))))


def retry_after(headers, cap=2.0):
    try:
        return min(float(headers.get("retry-after", "")), cap)
    except ValueError:
        return None


async def wait_until(pred, timeout, interval=0.1):
    """Await pred() becoming true; returns whether it did within timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


async def cancel_all(tasks, patience=30.0):
    """Cancel every task and wait for them to end. Python 3.11's wait_for
    may swallow a cancellation when its inner future completes at the same
    moment (gh-86296), so cancel again until every task is done."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + patience
    while pending and time.monotonic() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    if pending:
        raise RuntimeError("%d client tasks ignored cancellation" % len(pending))


class LagMonitor:
    """How late the event loop wakes up (a busy machine or a busy test
    process shows here, not in the servers): run() as a task, read max_lag."""

    def __init__(self, interval=0.1):
        self.interval, self.max_lag = interval, 0.0

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval)
            self.max_lag = max(self.max_lag, loop.time() - t - self.interval)


# ---- process figures (/proc) --------------------------------------------------------

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_targets(pid):
    out = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out[int(fd)] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            pass
    return out


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def describe_fds(targets):
    """Readable fd targets: sockets with their TCP state and ports."""
    inodes = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, st, inode = parts[1], parts[2], parts[3], parts[9]
                inodes[inode] = "tcp %d->%d %s" % (int(local.split(":")[1], 16), int(remote.split(":")[1], 16),
                                                   TCP_STATES.get(st, st))
    except OSError:
        pass
    out = []
    for fd, t in sorted(targets.items()):
        if t.startswith("socket:["):
            ino = t[8:-1]
            t = inodes.get(ino, "socket %s (unix or other)" % ino)
        out.append("%d=%s" % (fd, t))
    return out


def unix_socket_table():
    """{inode: (peer inode, {pids holding it}, state)} of every unix stream
    socket on the machine (from ss)."""
    out = subprocess.run(["ss", "-xapn"], capture_output=True, text=True, timeout=20).stdout
    table = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or f[0] != "u_str":
            continue
        table[f[5]] = (f[7], {int(p) for p in re.findall(r"pid=(\d+)", line)}, f[1])
    return table


def unix_links(pid, table, peer_pids):
    """(sockets of pid connected to one of peer_pids, sockets of pid whose
    peer is gone): kept-alive FastCGI connections and orphans."""
    linked = orphans = 0
    for t in fd_targets(pid).values():
        if not t.startswith("socket:["):
            continue
        ino = t[8:-1]
        if ino not in table:
            continue
        peer, _, state = table[ino]
        if state != "ESTAB":
            continue
        holders = table.get(peer, (None, set(), None))[1]
        if holders & set(peer_pids):
            linked += 1
        elif not holders:
            orphans += 1
    return linked, orphans


def children(ppid, comm=None):
    """PIDs whose parent is ppid, of the program named comm if given."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces: fields after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == ppid and (comm is None or stat[stat.index("(") + 1:stat.rindex(")")] == comm):
            out.append(int(name))
    return sorted(out)


def nginx_workers(master):
    """The worker processes of an nginx master. Not every child: nginx/run
    leaves its error-log redactor (sed) as a child of nginx."""
    return children(master, "nginx")


# ---- HTTP/1.1 over asyncio streams ---------------------------------------------------

class HttpError(Exception):
    pass


class StaleConnection(HttpError):
    """A reused keep-alive connection was closed before any byte of the answer."""


class HttpConn:
    """One keep-alive HTTP/1.1 connection (reopened on demand)."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None
        self.used = 0

    async def request(self, method, path, body=b"", headers=None):
        """(status, {lower-case name: value}, body). Raises on any transport
        problem; the connection is then closed."""
        try:
            return await self._request(method, path, body, headers)
        except BaseException:
            self.close()
            raise

    async def _request(self, method, path, body, headers):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.used = 0
        reused = self.used > 0
        self.used += 1
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (self.host, self.port)]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        if body or method == "POST":
            lines.append("Content-Length: %d" % len(body))
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise StaleConnection("closed before the answer") if reused else \
                HttpError("connection closed before the answer")
        parts = status_line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError("bad status line %r" % status_line)
        status = int(parts[1])
        hdrs = {}
        while True:
            line = await self.reader.readline()
            if not line:
                raise HttpError("connection closed in the headers")
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise HttpError("connection closed in a chunk size")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(chunks)
        elif "content-length" in hdrs:
            data = await self.reader.readexactly(int(hdrs["content-length"]))
        else:
            data = await self.reader.read()
            self.close()
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, data

    def close(self):
        if self.writer is not None:
            try:
                self.writer.transport.abort()
            except Exception:
                pass
        self.reader = self.writer = None


def check_error(status, headers, body):
    """What is wrong with an error answer, or None. Every error carries a JSON
    body {"error": ...} (nginx's own too); "no upstream" and Redis outages
    are 503 with Retry-After (nginx maps 502 to 503)."""
    problems = []
    if status == 502:
        problems.append("502 reached the client")
    if status == 503 and retry_after(headers) is None:
        problems.append("503 without Retry-After")
    if not headers.get("content-type", "").startswith("application/json"):
        problems.append("Content-Type %r" % headers.get("content-type"))
    if body is not None:
        try:
            if not json.loads(body).get("error"):
                problems.append("no error field")
        except (ValueError, AttributeError):
            problems.append("body %r" % body[:60])
    return ("%d: %s" % (status, ", ".join(problems))) if problems else None


# ---- recording ------------------------------------------------------------------------

class Recorder:
    """What one client received."""

    kind = "?"

    def __init__(self, channel, since=0, epoch=None, name="", churn=None, seed=None):
        self.channel, self.since, self.epoch, self.name = channel, since, epoch, name
        self.first_since = since
        self.ids, self.contents = [], []
        self.resets = 0
        self.anomalies = []          # protocol breaches seen by this client
        self.bad_errors = []         # error answers not as the contract says (JSON, 503 + Retry-After)
        self.errors = collections.Counter()  # transport errors / statuses (expected in faults)
        self.sessions = 0            # connections that delivered at least the handshake/answer
        self.leaves = 0              # voluntary departures (churn)
        self.crash = None
        self.churn = churn           # (min_life, max_life, min_off, max_off) seconds or None
        self.rng = random.Random(seed if seed is not None else name)
        self.last_rx = time.monotonic()

    @property
    def last_id(self):
        return self.ids[-1] if self.ids else self.first_since

    def anomaly(self, what):
        if len(self.anomalies) < 20:
            self.anomalies.append(what)

    def bad_error(self, what):
        if len(self.bad_errors) < 5:
            self.bad_errors.append(what)

    def take(self, mid, content, epoch):
        if self.epoch is not None and epoch != self.epoch:
            self.anomaly("epoch changed without a reset: %s -> %s" % (self.epoch, epoch))
        self.epoch = epoch
        if mid != self.last_id + 1:
            self.anomaly("id %d after %d" % (mid, self.last_id))
        self.ids.append(mid)
        self.contents.append(content)
        self.since = mid
        self.last_rx = time.monotonic()

    def session_length(self):
        if not self.churn:
            return None
        return self.rng.uniform(self.churn[0], self.churn[1])

    def offline_time(self):
        return self.rng.uniform(self.churn[2], self.churn[3])

    async def run(self):
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.crash = traceback.format_exc()


class LongPollClient(Recorder):
    """Re-polls GET /status?since=..&epoch=.. (think: random pause in
    [0, think] seconds between answered polls, to spread the load)."""

    kind = "longpoll"

    def __init__(self, host, port, channel, since=0, epoch=None, poll_timeout=20, think=0.0,
                 name="", churn=None, seed=None):
        super().__init__(channel, since, epoch, name, churn, seed)
        self.host, self.port = host, port
        self.poll_timeout, self.think = poll_timeout, think
        self.polls = 0

    def _path(self):
        q = "channel=%s&since=%d&timeout=%d" % (self.channel, self.since, self.poll_timeout)
        if self.epoch:
            q += "&epoch=" + self.epoch
        return "/status?" + q

    async def _run(self):
        conn = HttpConn(self.host, self.port)
        try:
            await self._loop(conn)
        finally:
            conn.close()  # also when cancelled between two polls

    async def _loop(self, conn):
        fails = 0
        life = self.session_length()
        session_end = None if life is None else time.monotonic() + life
        while True:
            if session_end is not None and time.monotonic() >= session_end:
                # Leave (in the middle of a held poll or between polls), come back later.
                conn.close()
                self.leaves += 1
                await asyncio.sleep(self.offline_time())
                session_end = time.monotonic() + self.session_length()
            limit = self.poll_timeout + 20
            if session_end is not None:
                limit = min(limit, max(0.0, session_end - time.monotonic()))
            since_sent = self.since
            try:
                self.polls += 1
                st, h, body = await asyncio.wait_for(conn.request("GET", self._path()), limit)
            except asyncio.TimeoutError:
                conn.close()
                if session_end is not None and time.monotonic() >= session_end - 0.01:
                    continue  # our own departure
                self.errors["timeout"] += 1
                fails += 1
                await asyncio.sleep(backoff(fails, rng=self.rng))
                continue
            except StaleConnection:
                self.errors["stale-keepalive"] += 1
                continue  # a keep-alive connection the server closed: retry at once
            except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as e:
                self.errors[type(e).__name__] += 1
                fails += 1
                await asyncio.sleep(backoff(fails, rng=self.rng))
                continue
            if st != 200:
                self.errors[st] += 1
                fails += 1
                ra = retry_after(h)
                why = check_error(st, h, body)
                if why:
                    self.bad_error(why)
                if st not in (429, 502, 503, 504):
                    self.anomaly("status %d: %r" % (st, body[:200]))
                await asyncio.sleep(max(backoff(fails, rng=self.rng), ra or 0))
                continue
            fails = 0
            self.sessions += 1
            try:
                doc = json.loads(body)
            except ValueError:
                self.anomaly("bad JSON %r" % body[:200])
                continue
            self._answer(doc, since_sent)
            if self.think:
                await asyncio.sleep(self.rng.uniform(0, self.think))

    def _answer(self, doc, since_sent):
        if doc.get("channel") != self.channel:
            self.anomaly("answer for channel %r" % doc.get("channel"))
        msgs = doc.get("messages", [])
        if doc.get("reset"):
            self.resets += 1
            self.anomaly("reset at since=%d epoch=%s: %r" % (since_sent, self.epoch,
                                                             {k: doc.get(k) for k in ("epoch", "id")}))
            self.epoch = doc["epoch"]
            for m in msgs:
                self.ids.append(m["id"])
                self.contents.append(m["content"])
            self.since = doc["id"]
            return
        for m in msgs:
            self.take(m["id"], m["content"], doc["epoch"])
        if msgs:
            if doc["id"] != msgs[-1]["id"]:
                self.anomaly("answer id %d is not its newest message %d" % (doc["id"], msgs[-1]["id"]))
        else:
            if self.epoch is not None and doc["epoch"] != self.epoch:
                self.anomaly("epoch changed without a reset: %s -> %s" % (self.epoch, doc["epoch"]))
            self.epoch = doc["epoch"]
            if doc["id"] > since_sent:
                self.anomaly("empty answer with newest id %d > since %d" % (doc["id"], since_sent))


class WsClient(Recorder):
    """ws://host/status?channel=..&since=..&epoch=.., reconnecting with since."""

    kind = "websocket"

    def __init__(self, host, port, channel, since=0, epoch=None, name="", churn=None, seed=None,
                 path="/status"):
        super().__init__(channel, since, epoch, name, churn, seed)
        self.host, self.port, self.path = host, port, path
        self.closes = collections.Counter()

    def _uri(self):
        q = "channel=%s&since=%d" % (self.channel, self.since)
        if self.epoch:
            q += "&epoch=" + self.epoch
        return "ws://%s:%d%s?%s" % (self.host, self.port, self.path, q)

    async def _run(self):
        fails = 0
        while True:
            ws = None
            life = self.session_length()
            try:
                ws = await self._connect()
                self.sessions += 1
                end = None if life is None else time.monotonic() + life
                while True:
                    if end is None:
                        raw = await ws.recv()
                    else:
                        try:
                            raw = await asyncio.wait_for(ws.recv(), max(0.0, end - time.monotonic()))
                        except asyncio.TimeoutError:
                            break
                    fails = 0
                    self._frame(raw)
                # Leave: politely half of the time, abruptly otherwise.
                self.leaves += 1
                if self.rng.random() < 0.5:
                    try:
                        await asyncio.wait_for(ws.close(), 3)
                    except Exception:
                        pass
                ws.transport.abort()
                ws = None
                await asyncio.sleep(self.offline_time())
                continue
            except websockets.exceptions.ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else 1006
                self.closes[code] += 1
                self.errors["close-%d" % code] += 1
            except websockets.exceptions.InvalidStatusCode as e:
                self.errors[e.status_code] += 1
                hdrs = {k.lower(): v for k, v in getattr(e, "headers", {}).items()}
                why = check_error(e.status_code, hdrs, None)
                if why:
                    self.bad_error("handshake: " + why)
                if e.status_code not in (502, 503, 504):
                    self.anomaly("handshake status %d" % e.status_code)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake,
                    websockets.exceptions.InvalidMessage, EOFError) as e:
                self.errors[type(e).__name__] += 1
            finally:
                if ws is not None:
                    ws.transport.abort()
            fails += 1
            await asyncio.sleep(backoff(fails, rng=self.rng))

    async def _connect(self):
        made = []

        def factory(*a, **kw):
            made.append(websockets.client.WebSocketClientProtocol(*a, **kw))
            return made[-1]
        try:
            return await websockets.connect(self._uri(), open_timeout=10, close_timeout=2,
                                            ping_interval=None, compression=None, max_size=None,
                                            max_queue=None, create_protocol=factory)
        except BaseException:
            # websockets 10 leaves the socket open when cancelled mid-handshake.
            for p in made:
                if p.transport is not None:
                    p.transport.abort()
            raise

    def _frame(self, raw):
        try:
            doc = json.loads(raw)
        except ValueError:
            self.anomaly("bad frame %r" % raw[:200])
            return
        if doc.get("channel") != self.channel:
            self.anomaly("frame for channel %r" % doc.get("channel"))
        if doc.get("reset"):
            self.resets += 1
            self.anomaly("reset frame at since=%d epoch=%s: %r" % (self.since, self.epoch, doc))
            self.epoch = doc["epoch"]
            # The replay that follows starts wherever the server says.
            self.first_since = 0
            return
        if self.resets:
            self.ids.append(doc["id"])
            self.contents.append(doc["content"])
            self.since = doc["id"]
            self.epoch = doc["epoch"]
            return
        self.take(doc["id"], doc["content"], doc["epoch"])


# ---- clients with an event log, that stall and drop (the chaos test) -------------------

async def open_socket(host, port, rcvbuf=None):
    """A connected non-blocking TCP socket; rcvbuf (set before connecting, so
    that the advertised window follows it) makes a client that stops reading
    show up quickly at the server."""
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await loop.sock_connect(s, (host, port))
    except BaseException:
        s.close()
        raise
    return s


def content_key(content):
    """A message's content as the logs keep it: its head (readable in
    reports) and a digest of all of it (byte-for-byte comparison without
    keeping megabytes of replays)."""
    raw = content.encode("utf-8", "surrogatepass")
    return "%s#%d#%s" % (content[:40], len(raw), hashlib.blake2b(raw, digest_size=10).hexdigest())


class LogClient(Recorder):
    """A resuming client that logs, in order, everything a checker needs:

      ("m", epoch, id, content, t)         a message (content: content_key)
      ("reset", epoch, first, newest, more, t)
                                           a reset: first is the first id of
                                           the replay when the transport says
                                           it (None on WebSocket), newest the
                                           id the reset names, more whether a
                                           long-poll answer said "more"
      ("pos", epoch, id, t)                an answer without messages
                                           (long-poll timeout) put it at id
      ("bad", what, t)                     a protocol breach seen by the client

    since=None: a client without since, which starts wherever the server
    puts it (its first position is whatever it is told first). Afterwards
    every client resumes from what it was last told, as a well-written real
    client does. stall(seconds) makes it stop reading (its socket is left
    unread: the server's buffers and queues fill), drop() closes its
    connection at once; it then reconnects with since like after any error."""

    def __init__(self, channel, since=0, name="", seed=None, rcvbuf=None):
        super().__init__(channel, since if since is not None else 0, None, name, None, seed)
        self.has_since = since is not None
        self.rcvbuf = rcvbuf
        self.log = []
        self.trace = collections.deque(maxlen=60)  # (t, connection event) for failure reports
        self.stall_until = 0.0
        self.stalls = self.drops = self.cutoffs = 0
        self.left = False  # stopped for good (the test no longer expects it to catch up)
        self.token = None  # a token for a private channel, sent as token= in the query
        self._transport = None
        self._stall_timer = None

    # -- what the client was told
    def position(self):
        """(epoch, id) it would resume from, or None (no since yet)."""
        return (self.epoch, self.since) if self.has_since else None

    def rec_msg(self, epoch, mid, content):
        self.log.append(("m", epoch, mid, content_key(content), time.monotonic()))
        self.ids.append(mid)
        self.epoch, self.since, self.has_since = epoch, mid, True
        self.last_rx = time.monotonic()

    def rec_reset(self, epoch, first, newest, more=None):
        self.log.append(("reset", epoch, first, newest, more, time.monotonic()))
        self.resets += 1

    def rec_pos(self, epoch, mid):
        self.log.append(("pos", epoch, mid, time.monotonic()))
        self.epoch, self.since, self.has_since = epoch, mid, True

    def rec_bad(self, what):
        self.log.append(("bad", what, time.monotonic()))
        self.anomaly(what)

    def note(self, what):
        self.trace.append((time.monotonic(), what))

    # -- faults the chaos test applies
    def stall(self, seconds):
        """Stop reading for `seconds` (from now; extends a stall under way)."""
        self.stalls += 1
        self.stall_until = max(self.stall_until, time.monotonic() + seconds)
        self.note("stall %.1fs" % seconds)
        self._apply_stall()

    def unstall(self):
        self.stall_until = 0.0
        self._apply_stall()

    def stalled(self):
        return time.monotonic() < self.stall_until

    def drop(self):
        """Lose the connection now (as a network failure would)."""
        t = self._transport
        if t is not None and not t.is_closing():
            self.drops += 1
            self.note("dropped")
            t.abort()
            return True
        return False

    def _apply_stall(self):
        t = self._transport
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if t is None or t.is_closing():
            return
        left = self.stall_until - time.monotonic()
        try:
            if left > 0:
                t.pause_reading()
                self._stall_timer = asyncio.get_running_loop().call_later(left, self._apply_stall)
            else:
                t.resume_reading()
        except (RuntimeError, AttributeError):
            pass  # closing meanwhile

    def _attach(self, transport):
        self._transport = transport
        if self.stalled():
            self._apply_stall()

    def _detach(self):
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._transport = None

    async def _stall_wait(self):
        while self.stalled():
            await asyncio.sleep(min(0.2, max(0.01, self.stall_until - time.monotonic())))


class ResumingLongPoll(LogClient):
    """GET /status?channel&since&epoch&timeout over a keep-alive connection.
    timeouts: the poll timeouts to pick from (0: answer as soon as up to
    date, for a client that polls in a loop with think seconds between)."""

    kind = "longpoll"

    def __init__(self, host, port, channel, since=0, timeouts=(1, 5, 15), think=0.0, name="",
                 seed=None):
        super().__init__(channel, since, name, seed)
        self.host, self.port = host, port
        self.timeouts, self.think = tuple(timeouts), think
        self.polls = 0
        self._conn = None

    def drop(self):
        c = self._conn
        if c is not None and c.writer is not None:
            self._transport = c.writer.transport
        return super().drop()

    def _path(self, timeout):
        q = "channel=%s&timeout=%d" % (self.channel, timeout)
        if self.has_since:
            q += "&since=%d" % self.since
            if self.epoch:
                q += "&epoch=" + self.epoch
        if self.token:
            q += "&token=" + self.token
        return "/status?" + q

    async def _run(self):
        self._conn = conn = HttpConn(self.host, self.port)
        try:
            await self._loop(conn)
        finally:
            conn.close()

    async def _loop(self, conn):
        fails = 0
        while True:
            await self._stall_wait()
            timeout = self.rng.choice(self.timeouts)
            self.polls += 1
            try:
                st, h, body = await asyncio.wait_for(conn.request("GET", self._path(timeout)),
                                                     timeout + 25)
            except StaleConnection:
                self.errors["stale-keepalive"] += 1
                continue
            except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, HttpError,
                    ValueError) as e:
                conn.close()
                self.errors[type(e).__name__] += 1
                fails += 1
                await asyncio.sleep(backoff(fails, rng=self.rng))
                continue
            # A client that stopped reading gets to its answer late.
            await self._stall_wait()
            if st != 200:
                self.errors[st] += 1
                fails += 1
                why = check_error(st, h, body)
                if why:
                    self.bad_error(why)
                if st not in (429, 502, 503, 504):
                    self.rec_bad("status %d: %r" % (st, body[:200]))
                await asyncio.sleep(max(backoff(fails, rng=self.rng), retry_after(h) or 0))
                continue
            fails = 0
            self.sessions += 1
            try:
                doc = json.loads(body)
                self._answer(doc)
            except (ValueError, KeyError, TypeError) as e:
                self.rec_bad("bad answer (%s) %r" % (e, body[:200]))
                await asyncio.sleep(0.5)
                continue
            if self.think:
                await asyncio.sleep(self.rng.uniform(0, self.think))

    def _answer(self, doc):
        if doc.get("channel") != self.channel:
            self.rec_bad("answer for channel %r" % doc.get("channel"))
        msgs = doc["messages"]
        epoch, newest = doc["epoch"], doc["id"]
        if doc.get("reset"):
            self.rec_reset(epoch, msgs[0]["id"] if msgs else None, newest, bool(doc.get("more")))
        for m in msgs:
            self.rec_msg(epoch, m["id"], m["content"])
        if msgs and newest != msgs[-1]["id"]:
            self.rec_bad("answer id %d is not its newest message %d" % (newest, msgs[-1]["id"]))
        if not msgs:
            self.rec_pos(epoch, newest)
        self.epoch, self.since, self.has_since = epoch, newest, True


class ResumingWs(LogClient):
    """ws://HOST:PORT/status?channel&since&epoch, reconnecting with since
    after any close or error. port: nginx's, or a relay's own (direct)."""

    kind = "websocket"

    def __init__(self, host, port, channel, since=0, name="", seed=None, rcvbuf=None,
                 path="/status"):
        super().__init__(channel, since, name, seed, rcvbuf)
        self.host, self.port, self.path = host, port, path
        self.closes = collections.Counter()

    def _uri(self):
        q = "channel=%s" % self.channel
        if self.has_since:
            q += "&since=%d" % self.since
            if self.epoch:
                q += "&epoch=" + self.epoch
        if self.token:
            q += "&token=" + self.token
        return "ws://%s:%d%s?%s" % (self.host, self.port, self.path, q)

    async def _run(self):
        fails = 0
        while True:
            await self._stall_wait()
            ws = None
            try:
                ws = await self._connect()
                self._attach(ws.transport)
                self.sessions += 1
                self.note("open %s" % self._uri())
                while True:
                    raw = await ws.recv()
                    fails = 0
                    self._frame(raw)
            except websockets.exceptions.ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else 1006
                self.closes[code] += 1
                self.errors["close-%d" % code] += 1
                self.cutoffs += code == 1008
                self.note("closed %d" % code)
                # Going away (a relay stopping), too slow (1008/1013), or
                # the connection lost: nothing else is due to this client.
                if code not in (1001, 1006, 1008, 1013):
                    self.rec_bad("closed with %d %r" % (code, e.rcvd.reason if e.rcvd else ""))
            except websockets.exceptions.InvalidStatusCode as e:
                self.errors[e.status_code] += 1
                hdrs = {k.lower(): v for k, v in getattr(e, "headers", {}).items()}
                why = check_error(e.status_code, hdrs, None)
                if why:
                    self.bad_error("handshake: " + why)
                if e.status_code not in (429, 502, 503, 504):
                    self.rec_bad("handshake status %d" % e.status_code)
                self.note("handshake %d" % e.status_code)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake,
                    websockets.exceptions.InvalidMessage, EOFError) as e:
                self.errors[type(e).__name__] += 1
                self.note("error %s" % type(e).__name__)
            finally:
                self._detach()
                if ws is not None:
                    ws.transport.abort()
            fails += 1
            await asyncio.sleep(backoff(fails, rng=self.rng))

    async def _connect(self):
        made = []

        def factory(*a, **kw):
            made.append(websockets.client.WebSocketClientProtocol(*a, **kw))
            return made[-1]
        sock = await asyncio.wait_for(open_socket(self.host, self.port, self.rcvbuf), 10)
        try:
            return await websockets.connect(self._uri(), sock=sock, open_timeout=10,
                                            close_timeout=2, ping_interval=None,
                                            compression=None, max_size=None, max_queue=None,
                                            create_protocol=factory)
        except BaseException:
            # websockets 10 leaves the socket open when cancelled mid-handshake.
            for p in made:
                if p.transport is not None:
                    p.transport.abort()
            sock.close()
            raise

    def _frame(self, raw):
        try:
            doc = json.loads(raw)
            if doc.get("channel") != self.channel:
                self.rec_bad("frame for channel %r" % doc.get("channel"))
            if doc.get("reset"):
                self.rec_reset(doc["epoch"], None, doc["id"])
                # The replay follows; if the connection goes before it
                # does, since=0 in the new epoch asks for all of it again.
                self.epoch, self.since, self.has_since = doc["epoch"], 0, True
                return
            self.rec_msg(doc["epoch"], doc["id"], doc["content"])
        except (ValueError, KeyError, TypeError) as e:
            self.rec_bad("bad frame (%s) %r" % (e, raw[:200]))


class ChannelPart(LogClient):
    """One channel of a MultiWs: what the checker sees of it (a WebSocket
    client of that channel). Its connection is its owner's: a stall or a
    drop of a part is one of the shared connection."""

    kind = "websocket"

    def __init__(self, owner, channel, since, name, seed):
        super().__init__(channel, since, name, seed, owner.rcvbuf)
        self.owner = owner

    async def _run(self):
        await asyncio.Event().wait()  # the owner's task runs the connection


class MultiWs(ResumingWs):
    """One WebSocket following several channels, each resumed from its own
    position: this object is the first channel's client, .parts every
    channel's (itself first). Each connection picks, at random, the URL form
    (channel=a,b&since=a=E:5,b=7) or in-band subscribes (channel= empty,
    then {"type":"subscribe","channel","since","epoch"} per channel, with
    the token of the handshake). An in-band refusal other than 503 (Redis
    unavailable, answered again on reconnect) is a breach."""

    def __init__(self, host, port, channels, since=0, name="", seed=None, rcvbuf=None):
        super().__init__(host, port, channels[0], since, name, seed, rcvbuf)
        self.parts = [self] + [ChannelPart(self, ch, since, "%s[%s]" % (name, ch.split(":")[0]), self.rng.random())
                               for ch in channels[1:]]
        self.by_channel = {p.channel: p for p in self.parts}
        self.in_band = False

    def _uri(self):
        q = "channel="
        if not self.in_band:
            q += ",".join(p.channel for p in self.parts)
            pos = ["%s=%s%d" % (p.channel, p.epoch + ":" if p.epoch else "", p.since)
                   for p in self.parts if p.has_since]
            if pos:
                q += "&since=" + ",".join(pos)
        if self.token:
            q += "&token=" + self.token
        return "ws://%s:%d%s?%s" % (self.host, self.port, self.path, q)

    async def _connect(self):
        self.in_band = self.rng.random() < 0.5
        ws = await super()._connect()
        if self.in_band:
            for p in self.parts:
                m = {"type": "subscribe", "channel": p.channel}
                if p.has_since:
                    m["since"] = p.since
                    if p.epoch:
                        m["epoch"] = p.epoch
                await ws.send(json.dumps(m))
        return ws

    def _attach(self, transport):
        for p in self.parts:
            LogClient._attach(p, transport)

    def _detach(self):
        for p in self.parts:
            LogClient._detach(p)

    def _frame(self, raw):
        try:
            doc = json.loads(raw)
        except ValueError as e:
            self.rec_bad("bad frame (%s) %r" % (e, raw[:200]))
            return
        t = doc.get("type") if isinstance(doc, dict) else None
        if t == "subscribed":
            return
        if t == "error":
            if doc.get("status") == 503:
                self.note("in-band 503 on %s" % doc.get("channel"))
                if self._transport is not None:
                    self._transport.abort()  # reconnect and ask again
                return
            self.rec_bad("in-band error %r" % doc)
            return
        part = self.by_channel.get(doc.get("channel")) if isinstance(doc, dict) else None
        if part is None:
            self.rec_bad("frame for channel %r" % (doc.get("channel") if isinstance(doc, dict) else doc))
            return
        ResumingWs._frame(part, raw)


class SseClient(LogClient):
    """GET /status with Accept: text/event-stream, resuming as a browser's
    EventSource does: reconnect with Last-Event-ID (the id of the last event,
    a reset's included). since=0 asks for the retained history on the first
    connection (?since=0); later ones carry only Last-Event-ID."""

    kind = "eventsource"

    def __init__(self, host, port, channel, since=0, name="", seed=None, rcvbuf=None,
                 idle_timeout=30.0):
        super().__init__(channel, since, name, seed, rcvbuf)
        self.host, self.port = host, port
        self.last_event_id = None
        self.idle_timeout = idle_timeout
        self.comments = 0
        self.ends = 0  # streams the server ended cleanly

    def _request(self):
        q = "channel=%s" % self.channel
        hdrs = ["Host: %s:%d" % (self.host, self.port), "Accept: text/event-stream"]
        if self.last_event_id:
            hdrs.append("Last-Event-ID: " + self.last_event_id)
        elif self.has_since:
            q += "&since=%d" % self.since
        if self.token:
            q += "&token=" + self.token
        return ("GET /status?%s HTTP/1.1\r\n%s\r\n\r\n" % (q, "\r\n".join(hdrs))).encode()

    async def _run(self):
        fails = 0
        while True:
            await self._stall_wait()
            writer = None
            try:
                sock = await asyncio.wait_for(open_socket(self.host, self.port, self.rcvbuf), 10)
                reader, writer = await asyncio.open_connection(sock=sock)
                self._attach(writer.transport)
                writer.write(self._request())
                st, hdrs = await asyncio.wait_for(self._head(reader), 30)
                if st != 200:
                    body = b""
                    if "content-length" in hdrs:
                        body = await asyncio.wait_for(
                            reader.readexactly(int(hdrs["content-length"])), 10)
                    self.errors[st] += 1
                    why = check_error(st, hdrs, body)
                    if why:
                        self.bad_error(why)
                    if st not in (429, 502, 503, 504):
                        self.rec_bad("status %d: %r" % (st, body[:200]))
                    fails += 1
                    self.note("status %d" % st)
                    await asyncio.sleep(max(backoff(fails, rng=self.rng), retry_after(hdrs) or 0))
                    continue
                if not hdrs.get("content-type", "").startswith("text/event-stream"):
                    self.rec_bad("Content-Type %r" % hdrs.get("content-type"))
                self.sessions += 1
                self.note("open Last-Event-ID=%s" % self.last_event_id)
                await self._stream(reader, "chunked" in hdrs.get("transfer-encoding", ""))
                self.ends += 1
                self.note("stream ended")
                fails = 0
                continue
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HttpError,
                    ValueError) as e:
                self.errors[type(e).__name__] += 1
                self.note("error %s" % type(e).__name__)
            finally:
                self._detach()
                if writer is not None:
                    writer.transport.abort()
            fails += 1
            await asyncio.sleep(backoff(fails, rng=self.rng))

    async def _head(self, reader):
        line = await reader.readline()
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError("bad status line %r" % line)
        hdrs = {}
        while True:
            line = await reader.readline()
            if not line:
                raise HttpError("connection closed in the headers")
            if line in (b"\r\n", b"\n"):
                return int(parts[1]), hdrs
            k, _, v = line.decode("latin-1").partition(":")
            hdrs[k.strip().lower()] = v.strip()

    async def _read(self, coro):
        """One read, timed out when the server sends nothing (heartbeats
        included) for idle_timeout while the client is not stalled."""
        fut = asyncio.ensure_future(coro)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=self.idle_timeout)
                if done:
                    return fut.result()
                if not self.stalled():
                    raise asyncio.TimeoutError
        finally:
            if not fut.done():
                fut.cancel()

    async def _stream(self, reader, chunked):
        text = b""
        while True:
            if chunked:
                size_line = await self._read(reader.readline())
                if not size_line:
                    raise HttpError("connection closed in a chunk size")
                size = int(size_line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    return
                data = await self._read(reader.readexactly(size + 2))
                data = data[:-2]
            else:
                data = await self._read(reader.read(65536))
                if not data:
                    return
            text += data
            while True:
                i = text.find(b"\n\n")
                if i < 0:
                    break
                block, text = text[:i], text[i + 2:]
                self._event(block.decode("utf-8"))

    def _event(self, block):
        ev = {"data": []}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            k, _, v = line.partition(":")
            v = v[1:] if v.startswith(" ") else v
            if k == "data":
                ev["data"].append(v)
            else:
                ev[k] = v
        if not ev["data"]:
            return  # "retry:" and the like
        try:
            doc = json.loads("\n".join(ev["data"]))
            eid = ev.get("id")
            epoch, _, n = (eid or "").rpartition(":")
            if not eid or not epoch or not n.isdigit():
                self.rec_bad("event without a valid id: %r" % block[:200])
                return
            n = int(n)
            if doc.get("channel") != self.channel or doc.get("epoch") != epoch:
                self.rec_bad("event data %r does not match its id %r" % (block[:200], eid))
            kind = ev.get("event", "message")
            if kind == "reset":
                if doc.get("reset") is not True:
                    self.rec_bad("reset event without reset: true: %r" % block[:200])
                self.rec_reset(epoch, n + 1, doc["id"])
                self.epoch, self.since, self.has_since = epoch, n, True
            elif kind == "message":
                if doc.get("id") != n:
                    self.rec_bad("event id %r but data id %r" % (eid, doc.get("id")))
                self.rec_msg(epoch, n, doc["content"])
            else:
                self.rec_bad("unknown event type %r" % kind)
                return
            self.last_event_id = eid
        except (ValueError, KeyError, TypeError) as e:
            self.rec_bad("bad event (%s) %r" % (e, block[:200]))


# ---- publishing ------------------------------------------------------------------------

class Publisher:
    """Publishes "<tag>-<i>" to channel at `rate` messages per second, each
    retried with its own Idempotency-Key until 200."""

    def __init__(self, host, port, channel, rate, tag="m", retry_for=120.0):
        self.host, self.port, self.channel, self.rate, self.tag = host, port, channel, rate, tag
        self.retry_for = retry_for
        self.content_by_id = {}
        self.ids = []                    # in publish order
        self.statuses = collections.Counter()
        self.transport_errors = collections.Counter()
        self.anomalies = []
        self.bad_errors = []
        self.latencies = []              # seconds from the first attempt to the 200
        self.events = []                 # (monotonic time, status or error name) of failed attempts
        self.epochs = set()
        self.failed = []                 # indexes never acknowledged
        self.retried = 0
        self.stop_event = asyncio.Event()
        self.count = 0
        self.crash = None
        self.key = "%s-%s-%d" % (channel, tag, os.getpid())

    def stop(self):
        self.stop_event.set()

    async def run(self, count=None, duration=None):
        try:
            await self._run(count, duration)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.crash = traceback.format_exc()

    async def _run(self, count, duration):
        loop = asyncio.get_running_loop()
        conn = HttpConn(self.host, self.port)
        t0 = loop.time()
        i = 0
        while not self.stop_event.is_set():
            if count is not None and i >= count:
                break
            if duration is not None and loop.time() - t0 >= duration:
                break
            delay = t0 + i / self.rate - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self.stop_event.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            await self._publish(conn, i)
            i += 1
        self.count = i
        conn.close()

    async def _publish(self, conn, i):
        content = "%s-%d" % (self.tag, i)
        body = urlencode({"content": content, "channel": self.channel}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "Idempotency-Key": "%s-%d" % (self.key, i)}
        start = time.monotonic()
        deadline = start + self.retry_for
        fails = 0
        first = True
        while time.monotonic() < deadline:
            if not first:
                self.retried += 1
            first = False
            try:
                st, h, data = await asyncio.wait_for(conn.request("POST", "/chat", body, headers), 30)
            except StaleConnection:
                self.transport_errors["stale-keepalive"] += 1
                continue
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HttpError,
                    ValueError) as e:
                conn.close()
                self.transport_errors[type(e).__name__] += 1
                self.events.append((time.monotonic(), type(e).__name__))
                fails += 1
                await asyncio.sleep(backoff(fails, base=0.05, cap=1.0))
                continue
            self.statuses[st] += 1
            if st == 200:
                doc = json.loads(data)
                mid = doc["id"]
                if mid in self.content_by_id and self.content_by_id[mid] != content:
                    self.anomalies.append("id %d given to two messages" % mid)
                self.content_by_id[mid] = content
                self.ids.append(mid)
                self.epochs.add(doc["epoch"])
                self.latencies.append(time.monotonic() - start)
                return mid
            self.events.append((time.monotonic(), "%d %s" % (st, data[:80].decode("utf-8", "replace").strip())))
            why = check_error(st, h, data)
            if why and len(self.bad_errors) < 5:
                self.bad_errors.append(why)
            fails += 1
            if st == 503:
                ra = retry_after(h, cap=1.0)
                await asyncio.sleep(ra if ra is not None else backoff(fails))
            elif st in (429, 502, 504):
                await asyncio.sleep(backoff(fails, cap=1.0))
            else:
                self.anomalies.append("publish %d: status %d %r" % (i, st, data[:200]))
                await asyncio.sleep(backoff(fails, cap=1.0))
        self.failed.append(i)
        return None


# ---- accounting --------------------------------------------------------------------------

def tally(clients, publisher):
    """Per-client comparison with what was published (ids 1..N of a fresh
    channel, each expected exactly once and in order)."""
    expected = sorted(publisher.content_by_id)
    n = len(expected)
    exp_set = set(expected)
    t = {"published": n, "received": 0, "lost": 0, "duplicated": 0, "out_of_order": 0,
         "bad_content": 0, "resets": 0, "anomalies": 0, "crashed": 0, "clients": len(clients),
         "bad_errors": 0}
    for c in clients:
        t["received"] += len(c.ids)
        got = set(c.ids)
        t["lost"] += len(exp_set - got)
        t["duplicated"] += len(c.ids) - len(got)
        t["out_of_order"] += sum(1 for a, b in zip(c.ids, c.ids[1:]) if b <= a)
        t["bad_content"] += sum(1 for i, s in zip(c.ids, c.contents)
                                if publisher.content_by_id.get(i, s) != s)
        t["resets"] += c.resets
        t["anomalies"] += len(c.anomalies)
        t["bad_errors"] += len(c.bad_errors)
        t["crashed"] += c.crash is not None
    t["extra"] = sum(len(set(c.ids) - exp_set) for c in clients)
    return t


def describe(clients, limit=5):
    """A few lines about the clients that did not get everything, for failures."""
    out = []
    for c in clients:
        if c.anomalies or c.crash or c.resets:
            out.append("%s %s: last=%d n=%d errors=%s anomalies=%s%s" % (
                c.kind, c.name, c.last_id, len(c.ids), dict(c.errors), c.anomalies[:3],
                ("\n" + c.crash) if c.crash else ""))
        if len(out) >= limit:
            break
    return "\n".join(out)


def bad_error_examples(clients, limit=5):
    """Distinct wrong error answers, with how many clients saw each."""
    seen = collections.OrderedDict()
    for c in clients:
        for b in set(c.bad_errors):
            key = "%s: %s" % (c.kind, b)
            seen[key] = seen.get(key, 0) + 1
    return ["%s (%d clients)" % (k, n) for k, n in list(seen.items())[:limit]]


def error_summary(clients):
    total = collections.Counter()
    for c in clients:
        total.update(c.errors)
    return dict(total)
