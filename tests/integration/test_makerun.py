"""`make run` as users meet it: the README's command started as a separate
process, given the signals a terminal, a supervisor or a CI job sends, and
losing processes while clients are connected.

The stack it starts is the real one (build/, the plain build `make all`
made), in a run directory of the test's own, on a free port. Every process
it started is recorded (pid and start time) while it runs, and after each
stop none of them may be left, nor any socket file in the run directory.
"""
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import clients as C
from scenario import cancel, check, converge, report, run, start_tasks
from stack import ROOT, free_port, parse_metrics, unique_channel, wait_for

HOST = "127.0.0.1"


@pytest.fixture(autouse=True, scope="module")
def _nofile():
    C.raise_nofile()


def proc_start(pid):
    """Start time of pid (clock ticks since boot), or None when gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def proc_table():
    """{pid: (ppid, argv)} of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except (OSError, ValueError, IndexError):
            continue
        out[int(d)] = (ppid, argv)
    return out


class MakeRun:
    """One `make run` in its own process group, output in a log file."""

    def __init__(self, workers=2, relays=2, env=None):
        self.dir = tempfile.mkdtemp(prefix="pw-makerun-")
        self.run_dir = os.path.join(self.dir, "run")
        self.port = free_port()
        self.env = dict(os.environ, PORT=str(self.port), WORKERS=str(workers),
                        RELAYS=str(relays), RUN_DIR=self.run_dir, **(env or {}))
        self.env.pop("MAKEFLAGS", None)
        self.env.pop("MAKELEVEL", None)
        self.log = os.path.join(self.dir, "make-run.log")
        self.p = None
        self.seen = {}  # pid -> (start time, argv) of every process of the stack seen

    def start(self, timeout=300):
        out = open(self.log, "ab")
        self.p = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=self.env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        out.close()
        self.url = wait_for(self._url, timeout=timeout, interval=0.1,
                            what="make run to print its URL (log: %s)" % self.log)
        self.record()
        return self

    def _url(self):
        m = re.search(r"pushwire is running: (http://\S+)", self.text())
        if not m and self.p.poll() is not None:
            raise AssertionError("make run exited with %s before it was ready:\n%s" % (
                self.p.returncode, self.text()[-3000:]))
        return m and m.group(1)

    def text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def record(self):
        """Add every process of the stack that runs now to self.seen: make's
        descendants and whatever names the run directory (the children
        run in sessions of their own, nginx's workers under its master)."""
        table = proc_table()
        mine = {self.p.pid}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, argv) in table.items():
                if pid not in mine and (ppid in mine or any(self.run_dir in a for a in argv)):
                    mine.add(pid)
                    grew = True
        for pid in mine:
            st = proc_start(pid)
            if st is not None:
                self.seen.setdefault(pid, (st, table.get(pid, (0, []))[1]))
        return mine

    def pid_of(self, name):
        """The pid of worker-N / relay-N / redis / nginx (the master) now."""
        needle = {"redis": os.path.join(self.run_dir, "redis.sock"),
                  "nginx": self.run_dir}.get(name, os.path.join(self.run_dir, name + ".sock"))
        for pid, (ppid, argv) in proc_table().items():
            # (redis and nginx rewrite their argv into one title string)
            prog = os.path.basename(argv[0]) if argv else ""
            if any(needle in a for a in argv) and (
                    (name == "redis" and argv[0].startswith("redis-server")) or
                    (name == "nginx" and argv[0].startswith("nginx")) or
                    (name.split("-")[0] in ("worker", "relay") and prog.startswith("pushwire-"))):
                return pid
        return None

    def leftovers(self):
        alive = ["%d %s" % (pid, " ".join(argv)) for pid, (st, argv) in self.seen.items()
                 if proc_start(pid) == st]
        socks = [f for f in (os.listdir(self.run_dir) if os.path.isdir(self.run_dir) else [])
                 if f.endswith(".sock") or f == "nginx.pid"]
        return alive, socks

    def signal(self, sig, group=False):
        self.record()
        if group:
            os.killpg(self.p.pid, sig)
        else:
            self.p.send_signal(sig)

    def wait(self, timeout=30):
        return self.p.wait(timeout)

    def kill_all(self):
        """Last resort, by the recorded pids."""
        for pid, (st, argv) in self.seen.items():
            if proc_start(pid) == st:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.p and self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def cleanup(self, ok):
        self.kill_all()
        if ok:
            shutil.rmtree(self.dir, ignore_errors=True)

    def get(self, path, source=None, timeout=10):
        """GET through nginx, optionally from another loopback source
        address; (status, body)."""
        s = socket.create_connection((HOST, self.port), timeout=timeout,
                                     source_address=(source, 0) if source else None)
        try:
            s.sendall(("GET %s HTTP/1.0\r\nHost: %s:%d\r\n\r\n" % (path, HOST, self.port)).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


def tcp_listeners(pids):
    """'addr:port' of every listening TCP socket that one of pids holds."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & set(pids):
            found.add(line.split()[3])
    return found


@pytest.fixture
def makerun(request):
    runs = []

    def make(**kw):
        m = MakeRun(**kw)
        runs.append(m)
        return m
    yield make
    rep = getattr(request.node, "rep_call", None)  # conftest.py
    for m in runs:
        m.cleanup(ok=rep is not None and rep.passed)


def assert_stopped(m, rc, expect_rc=(0,)):
    alive, socks = m.leftovers()
    assert not alive, "processes left after make run stopped:\n" + "\n".join(alive)
    assert not socks, "files left in %s: %r" % (m.run_dir, socks)
    assert rc in expect_rc, "make run exited with %r:\n%s" % (rc, m.text()[-2000:])


def test_make_run_serves_kills_and_stops_on_sigterm(makerun):
    """The URL on the first attempt; only nginx's port on TCP; metrics through
    nginx for loopback only; a SIGKILLed worker and relay are started again
    while long-poll and WebSocket clients resuming with since lose nothing;
    SIGTERM to the make process stops everything."""
    t0 = time.monotonic()
    m = makerun(workers=2, relays=2).start()
    print("\n  make run ready in %.1f s: %s" % (time.monotonic() - t0, m.url))
    assert m.url == "http://%s:%d/" % (HOST, m.port)

    pids = m.record()
    assert tcp_listeners(pids) == {"%s:%d" % (HOST, m.port)}, \
        "the stack listens on TCP ports other than nginx's: %r" % tcp_listeners(pids)
    st, body = m.get("/metrics")
    names = body.decode().split()
    assert st == 200 and names == ["/metrics/worker-0", "/metrics/worker-1",
                                   "/metrics/relay-0", "/metrics/relay-1"], (st, body)
    for path in names:
        st, body = m.get(path)
        mt = parse_metrics(body.decode())
        assert st == 200 and mt['pushwire_redis_up{conn="commands"}'] == 1, (path, st)
    st, body = m.get("/metrics/worker-0", source="127.0.0.2")
    assert st == 403 and json.loads(body)["error"], (st, body)

    ch = unique_channel("mr")
    facts = {}

    async def replaced(name):
        old = m.pid_of(name)
        assert old, "no %s running" % name
        os.kill(old, signal.SIGKILL)
        t = time.monotonic()
        new = await C.wait_until(lambda: (m.pid_of(name) or old) != old and
                                 os.path.exists(os.path.join(m.run_dir, name + ".sock")), 20, 0.05)
        assert new, "%s was not started again:\n%s" % (name, m.text()[-2000:])
        facts[name] = round(time.monotonic() - t, 2)
        m.record()

    async def scenario():
        lps = [C.LongPollClient(HOST, m.port, ch, since=0, poll_timeout=20, name="lp%d" % k)
               for k in range(20)]
        wss = [C.WsClient(HOST, m.port, ch, since=0, name="ws%d" % k) for k in range(20)]
        tasks = await start_tasks(lps + wss)
        await asyncio.sleep(1.0)
        pub = C.Publisher(HOST, m.port, ch, rate=20, tag="mr")
        ptask = asyncio.create_task(pub.run(count=200))
        await asyncio.sleep(2.0)
        await replaced("worker-0")
        await asyncio.sleep(1.5)
        await replaced("relay-0")
        await asyncio.sleep(1.0)
        await replaced("worker-1")  # the one that took over from worker-0
        await asyncio.wait_for(ptask, 60)
        await converge(lps + wss, pub, 30)
        await cancel(tasks)
        return lps, wss, pub

    lps, wss, pub = run(scenario(), 150)
    print("  restarted after (s): %r" % facts)
    report("  long-poll", lps, pub)
    report("  websocket", wss, pub)
    t = report("test_make_run_serves_kills_and_stops_on_sigterm", lps + wss, pub)
    check(t, lps + wss, pub, resuming=False)
    assert t["resets"] == 0
    log = m.text()
    for name in ("worker-0", "relay-0", "worker-1"):
        assert re.search(r"run-stack: %s exited \(status \d+\); restarting it" % name, log), log

    # A held long-poll is answered when the stack stops.
    held = {}

    def hold():
        s = socket.create_connection((HOST, m.port), timeout=30)
        s.sendall(("GET /status?channel=%s&timeout=60 HTTP/1.0\r\n\r\n" % ch).encode())
        held["sock"] = s
    hold()
    time.sleep(0.5)
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    rc = m.wait(30)
    took = time.monotonic() - t0
    data = b""
    with held["sock"] as s:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    print("  SIGTERM to make: exit %d after %.1f s; held poll got %r" % (rc, took, data[:40]))
    assert data.startswith(b"HTTP/1.1 200") and b'"messages":[]' in data, data[:300]
    # make waits for its recipe, then dies of the signal it was sent.
    assert_stopped(m, rc, expect_rc=(0, -signal.SIGTERM))
    assert "run-stack: stopped" in m.text()


def test_make_run_sigint_to_group_redis_death_and_make_killed(makerun):
    # Ctrl-C: SIGINT to the whole foreground process group.
    m = makerun(workers=1, relays=1).start()
    st, body = m.get("/status?timeout=0")
    assert st == 200
    m.signal(signal.SIGINT, group=True)
    rc = m.wait(30)
    assert_stopped(m, rc, expect_rc=(0, -signal.SIGINT))
    assert "run-stack: stopped" in m.text()

    # Redis dying stops the whole stack (nothing can be served without it).
    m = makerun(workers=1, relays=1).start()
    os.kill(m.pid_of("redis"), signal.SIGKILL)
    rc = m.wait(30)
    assert rc != 0 and "run-stack: redis exited" in m.text(), m.text()[-2000:]
    assert_stopped(m, rc, expect_rc=(rc,))

    # So does nginx dying.
    m = makerun(workers=1, relays=0).start()
    os.kill(m.pid_of("nginx"), signal.SIGKILL)
    rc = m.wait(30)
    assert rc != 0 and "run-stack: nginx exited" in m.text(), m.text()[-2000:]
    assert_stopped(m, rc, expect_rc=(rc,))

    # make itself SIGKILLed (an OOM kill, a supervisor's timeout): the
    # supervisor notices its parent is gone and stops everything.
    m = makerun(workers=1, relays=1).start()
    m.signal(signal.SIGKILL)
    m.wait(10)
    wait_for(lambda: not m.leftovers()[0], timeout=30, interval=0.2,
             what="the stack to stop after make was killed: %r" % (m.leftovers(),))
    assert "the parent process is gone" in m.text()
    assert_stopped(m, 0)


def test_make_run_refuses_a_taken_port(makerun):
    """The one TCP port it needs is taken: a clear message, nothing left."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        m = makerun(workers=1, relays=0)
        m.env["PORT"] = str(s.getsockname()[1])
        m.port = s.getsockname()[1]
        out = open(m.log, "ab")
        m.p = subprocess.Popen(["make", "-s", "run"], cwd=ROOT, env=m.env, stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
        out.close()
        rc = m.wait(120)
    assert rc != 0 and "something already listens on %s:%d" % (HOST, m.port) in m.text()
    assert_stopped(m, rc, expect_rc=(rc,))


def free_port_run(n):
    """A base port with n free ports from it (for REDIS_PORT_BASE)."""
    for _ in range(50):
        base = free_port()
        if base + n >= 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind((HOST, p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise AssertionError("no run of %d free ports" % n)


def test_make_run_sentinel_mode_fails_over(makerun):
    """REDIS_MODE=sentinel make run: two Redis servers and three sentinels
    with a password; the master stalled (SIGSTOP) past the sentinels'
    patience: they promote the replica, publishing goes on through it with
    ids that never go back in an epoch, and SIGTERM stops all of it."""
    base = free_port_run(5)
    m = makerun(workers=1, relays=1, env={"REDIS_MODE": "sentinel",
                                          "REDIS_PORT_BASE": str(base)}).start()
    assert "sentinels on %d-%d" % (base + 2, base + 4) in m.text()
    with open(os.path.join(m.run_dir, "redis-password")) as f:
        pw = f.read().strip()

    def cli(port, *args):
        return subprocess.run(["redis-cli", "-p", str(port)] + list(args), capture_output=True,
                              text=True, timeout=10, env=dict(os.environ, REDISCLI_AUTH=pw)).stdout

    assert "connected_slaves:1" in cli(base, "INFO", "replication")
    assert "NOAUTH" in subprocess.run(["redis-cli", "-p", str(base), "GET", "x"], capture_output=True,
                                      text=True, timeout=10).stdout
    ch = unique_channel("mr-sent")

    def publish(content):
        import urllib.parse
        import urllib.request
        body = urllib.parse.urlencode({"content": content, "channel": ch}).encode()
        with urllib.request.urlopen("http://%s:%d/chat" % (HOST, m.port), body, timeout=10) as r:
            return json.loads(r.read())

    acks = [publish("m0")]
    master = int(re.search(r"process_id:(\d+)", cli(base, "INFO", "server")).group(1))
    m.record()
    os.kill(master, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_for(lambda: cli(base + 2, "SENTINEL", "get-master-addr-by-name", "pushwire").split()[1:2]
                 == [str(base + 1)], timeout=30, interval=0.2, what="the failover to the replica")
        k = 1
        while time.monotonic() < t0 + 30 and len(acks) < 6:
            try:
                acks.append(publish("m%d" % k))
                k += 1
            except OSError:
                time.sleep(0.2)  # 503 while the processes move over
        assert len(acks) == 6, "publishing did not go on after the failover: %r" % acks
    finally:
        os.kill(master, signal.SIGCONT)
    # Ids never go back within an epoch, and the newest epoch holds all of
    # its messages.
    by_epoch = {}
    for a in acks:
        by_epoch.setdefault(a["epoch"], []).append(a["id"])
    for ids in by_epoch.values():
        assert ids == sorted(ids) and len(set(ids)) == len(ids), acks
    st, body = m.get("/status?since=0&channel=" + ch)
    doc = json.loads(body)
    assert st == 200 and doc["epoch"] == acks[-1]["epoch"], doc
    got = [x["id"] for x in doc["messages"]]
    assert got[-len(by_epoch[doc["epoch"]]):] == by_epoch[doc["epoch"]], (got, acks)
    # The old master comes back as a replica of the new one.
    wait_for(lambda: "role:slave" in cli(base, "INFO", "replication"), timeout=60, interval=0.5,
             what="the old master to become a replica")
    m.signal(signal.SIGTERM)
    rc = m.wait(60)
    assert_stopped(m, rc, expect_rc=(0, -signal.SIGTERM))


def test_make_run_cluster_mode_fails_over(makerun):
    """REDIS_MODE=cluster make run: a Redis Cluster of three masters with a
    replica each, with a password; channels on every shard; one master
    stalled (SIGSTOP) past the node timeout: its replica takes over, and
    publishing to that shard goes on with ids that never go back in an
    epoch; SIGTERM stops all of it."""
    for _ in range(50):
        base = free_port_run(6)
        if base + 10006 < 65535 and free_port_run_at(base + 10000, 6):
            break
    else:
        raise AssertionError("no two runs of 6 free ports 10000 apart")
    m = makerun(workers=1, relays=1, env={"REDIS_MODE": "cluster",
                                          "REDIS_PORT_BASE": str(base)}).start()
    assert "cluster: 3 masters + 3 replicas on 127.0.0.1:%d-%d" % (base, base + 5) in m.text()
    with open(os.path.join(m.run_dir, "redis-password")) as f:
        pw = f.read().strip()

    def cli(port, *args):
        return subprocess.run(["redis-cli", "-p", str(port)] + list(args), capture_output=True,
                              text=True, timeout=10, env=dict(os.environ, REDISCLI_AUTH=pw)).stdout

    def masters(ask=None):
        out = {}
        for line in cli(ask or base, "CLUSTER", "NODES").splitlines():
            f = line.split()
            if "master" in f[2] and "fail" not in f[2] and len(f) > 8:
                out[int(f[1].split(":")[1].split("@")[0])] = f[8:]
        return out

    assert len(masters()) == 3
    assert "NOAUTH" in subprocess.run(["redis-cli", "-p", str(base), "GET", "x"],
                                      capture_output=True, text=True, timeout=10).stdout

    def publish(ch, content):
        import urllib.parse
        import urllib.request
        body = urllib.parse.urlencode({"content": content, "channel": ch}).encode()
        with urllib.request.urlopen("http://%s:%d/chat" % (HOST, m.port), body, timeout=10) as r:
            return json.loads(r.read())

    def master_of(ch):
        slot = int(cli(base, "CLUSTER", "KEYSLOT", "pw:{%s}:ch" % ch))
        for port, ranges in masters().items():
            for r in ranges:
                lo, _, hi = r.partition("-")
                if r[0] != "[" and int(lo) <= slot <= int(hi or lo):
                    return port
    chans, shards = [], set()
    while len(shards) < 3:
        ch = unique_channel("mr-cl")
        chans.append(ch)
        shards.add(master_of(ch))
    for ch in chans:
        assert publish(ch, "first")["id"] == 1
    victim_ch = chans[0]
    vport = master_of(victim_ch)
    firsts = {ch: publish(ch, "before")["epoch"] for ch in chans}  # each channel's epoch, id 2
    # channels on the stalled shard may be reset by its failover (a new
    # epoch; the replica may not have had their last write): not these
    others = [ch for ch in chans if master_of(ch) != vport]
    pid = int(re.search(r"process_id:(\d+)", cli(vport, "INFO", "server")).group(1))
    m.record()
    acks = []
    os.kill(pid, signal.SIGSTOP)
    try:
        # (asked of a node that answers: the stopped one may be the first)
        wait_for(lambda: vport not in masters(base + 1 if vport == base else base), timeout=30, interval=0.2,
                 what="the failover of port %d" % vport)
        t0 = time.monotonic()
        while time.monotonic() < t0 + 30 and len(acks) < 5:
            try:
                acks.append(publish(victim_ch, "m%d" % len(acks)))
            except OSError:
                time.sleep(0.2)  # 503 while the processes move over
        assert len(acks) == 5, "publishing did not go on after the failover: %r" % acks
    finally:
        os.kill(pid, signal.SIGCONT)
    ids = [a["id"] for a in acks if a["epoch"] == acks[-1]["epoch"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), acks
    st, body = m.get("/status?since=0&channel=" + victim_ch)
    doc = json.loads(body)
    assert st == 200 and doc["epoch"] == acks[-1]["epoch"], doc
    assert [x["id"] for x in doc["messages"]][-len(ids):] == ids, (doc, acks)
    for ch in others:  # the other shards never noticed: same epoch, next id
        doc = publish(ch, "second")
        assert doc["id"] == 3 and doc["epoch"] == firsts[ch], (ch, doc)
    wait_for(lambda: "role:slave" in cli(vport, "INFO", "replication"), timeout=60, interval=0.5,
             what="the old master to become a replica")
    m.signal(signal.SIGTERM)
    rc = m.wait(60)
    assert_stopped(m, rc, expect_rc=(0, -signal.SIGTERM))


def free_port_run_at(base, n):
    """Are base..base+n-1 all free?"""
    for p in range(base, base + n):
        with socket.socket() as s:
            try:
                s.bind((HOST, p))
            except OSError:
                return False
    return True
