"""pushwire on several hosts sharing one Redis, with network namespaces;
then the same tests again with a Redis Cluster in place of the one Redis.

Topology (one private bridge per test run, addresses 10.77.0.0/24):

    redis   10.77.0.1    redis-server :6379, or six cluster nodes :7000-7005
                         (three masters with a replica each)
    h1      10.77.0.11   nginx :8080 (nginx/render) + 2 workers (unix sockets) + relay :9100
    h2      10.77.0.12   the same
    gw      10.77.0.20   (one test) docker/nginx-start with WORKER_ADDRS=worker:9000, as in compose
    client  10.77.0.100  the test's HTTP and WebSocket clients (threads entered with setns)

Servers run with ``ip netns exec`` and are stopped by pid; the sanitizer build
(PW_BUILD) is used and every log is checked for sanitizer reports and nginx
alerts. Also here: the checks of the deployment files (docker-compose.yml,
Dockerfile, .dockerignore, docker/*) that can run without a Docker engine.
"""
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from urllib.parse import urlencode

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import Net, remove_stale  # noqa: E402
from stack import RESULTS, parse_metrics, BAD_LOG, BUILD, PLAIN_BUILD, ROOT, Proc, wait_for  # noqa: E402
from clients import nginx_workers  # noqa: E402

HOSTS = (("h1", 11), ("h2", 12))
WORKERS_PER_HOST = 2
NGINX_PORT, RELAY_PORT, TCP_WORKER_PORT, REDIS_PORT = 8080, 9100, 9000, 6379
CLUSTER_PORT = 7000  # cluster nodes 7000-7005 (bus ports 17000-17005)


# ---- the cluster -------------------------------------------------------------------------

class Cluster:
    def __init__(self, net, redis_mode="single"):
        self.net = net
        self.redis_mode = redis_mode  # "single", or "cluster": Redis Cluster
        self.dir = tempfile.mkdtemp(prefix="pw-mh-")
        self.procs = {}        # name -> Proc (the latest one of that name)
        self.exit_codes = {}   # "name#n" -> exit status of every process stopped
        self.stops = 0

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def env(self):
        e = dict(os.environ)
        e.update({
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=66",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
            "REDIS_URL": self.redis_url(),
        })
        return e

    def redis_url(self):
        a = self.net.addr("redis")
        if self.redis_mode == "cluster":
            return "redis+cluster://%s" % ",".join("%s:%d" % (a, CLUSTER_PORT + i) for i in range(2))
        return "redis://%s:%d" % (a, REDIS_PORT)

    def run(self, name, host, argv, env=None):
        argv = self.net.exec_argv(host, argv)
        if shutil.which("setpriv"):
            # Should this test process die without cleaning up (SIGKILL),
            # its servers get a graceful stop signal instead of living on.
            argv = ["setpriv", "--pdeathsig", "QUIT" if "nginx" in name else "TERM"] + argv
        p = Proc(name, argv, self.path(name + ".log"), env or self.env()).start()
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, timeout=10):
        p = self.procs.pop(name)
        rc = p.stop(sig, timeout)
        self.stops += 1
        self.exit_codes["%s#%d" % (name, self.stops)] = rc
        return rc

    # -- processes --
    def start_redis(self):
        if self.redis_mode == "cluster":
            self.start_redis_cluster()
            return
        self.run("redis", "redis", [
            "redis-server", "--bind", self.net.addr("redis"), "--port", str(REDIS_PORT),
            "--protected-mode", "no", "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--dir", self.dir, "--daemonize", "no"])

        def ping():
            with self.net.entered("client"):
                with socket.create_connection((self.net.addr("redis"), REDIS_PORT), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
        wait_for(ping, what="Redis to answer PING across the bridge")

    def start_redis_cluster(self):
        a = self.net.addr("redis")
        for i in range(6):
            d = self.path("redis-%d" % i)
            os.makedirs(d, exist_ok=True)
            self.run("redis-%d" % i, "redis", [
                "redis-server", "--bind", a, "--port", str(CLUSTER_PORT + i),
                "--protected-mode", "no", "--save", "", "--appendonly", "no",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0",
                "--maxmemory-policy", "noeviction", "--dir", d, "--daemonize", "no"])

        def cli(port, *args):
            return subprocess.run(self.net.exec_argv("client", ["redis-cli", "-h", a, "-p", str(port)]
                                                      + list(args)),
                                  capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        for i in range(6):
            wait_for(lambda: "PONG" in cli(CLUSTER_PORT + i, "PING").stdout,
                     what="cluster node %d to answer PING across the bridge" % i)
        out = cli(CLUSTER_PORT, "--cluster", "create",
                  *["%s:%d" % (a, CLUSTER_PORT + i) for i in range(6)],
                  "--cluster-replicas", "1", "--cluster-yes")
        assert out.returncode == 0, out.stdout + out.stderr
        wait_for(lambda: all("cluster_state:ok" in cli(CLUSTER_PORT + i, "CLUSTER", "INFO").stdout
                             for i in range(6)), timeout=60, interval=0.2,
                 what="the cluster to be ok")

    def worker_sock(self, host, i):
        return self.path("%s-worker-%d.sock" % (host, i))

    def worker_metrics_port(self, i):
        return 9300 + i

    def start_worker(self, host, i):
        name = "%s-worker-%d" % (host, i)
        self.run(name, host, [
            os.path.join(BUILD, "pushwire-worker"), "--listen", "unix:" + self.worker_sock(host, i),
            "--metrics", "127.0.0.1:%d" % self.worker_metrics_port(i), "--id", "w%d@%s" % (i, host)])
        wait_for(lambda: os.path.exists(self.worker_sock(host, i)), what=name + " socket")
        wait_for(lambda: self.redis_up(host, self.worker_metrics_port(i)), what=name + " to reach Redis")

    def start_tcp_worker(self, host):
        """A worker as in docker-compose.yml: FastCGI on TCP, all addresses."""
        name = "%s-tcpworker" % host
        self.run(name, host, [
            os.path.join(BUILD, "pushwire-worker"), "--listen", "0.0.0.0:%d" % TCP_WORKER_PORT,
            "--metrics", "127.0.0.1:9399", "--id", "tw@%s" % host])
        wait_for(lambda: self.redis_up(host, 9399), what=name + " to reach Redis")

    def start_relay(self, host):
        name = "%s-relay" % host
        self.run(name, host, [
            os.path.join(BUILD, "pushwire-relay"), "--listen", "%s:%d" % (self.net.addr(host), RELAY_PORT),
            "--metrics", "127.0.0.1:9400", "--id", "r0@%s" % host])
        wait_for(lambda: self.redis_up(host, 9400), what=name + " to reach Redis")

    def start_nginx(self, host):
        out = self.path(host + "-nginx")
        env = dict(os.environ)
        env.update({
            "LISTEN": "%s:%d" % (self.net.addr(host), NGINX_PORT),
            "WORKER_ADDRS": " ".join("unix:" + self.worker_sock(host, i) for i in range(WORKERS_PER_HOST)),
            "RELAY_ADDRS": "%s:%d" % (self.net.addr(host), RELAY_PORT),
            "CHAT_RATE": "100000", "CHAT_BURST": "100000", "NGINX_WORKERS": "1",
        })
        subprocess.run([os.path.join(ROOT, "nginx", "render"), out], env=env, check=True)
        self.run(host + "-nginx", host, [os.path.join(ROOT, "nginx", "run"),
                                         self.path(host + "-nginx-error.log"), "-p", out, "-c",
                                         os.path.join(out, "nginx.conf")], env=env)
        wait_for(lambda: self.http(host, "GET", "/healthz")[0] == 200, what=host + " nginx /healthz")

    def start(self):
        self.start_redis()
        for h, _ in HOSTS:
            for i in range(WORKERS_PER_HOST):
                self.start_worker(h, i)
            self.start_relay(h)
        for h, _ in HOSTS:
            self.start_nginx(h)
        return self

    def stop_all(self):
        order = sorted(self.procs, key=lambda n: (0 if "nginx" in n else 1 if "relay" in n else
                                                  3 if n.startswith("redis") else 2))
        for name in order:
            self.stop(name, signal.SIGQUIT if "nginx" in name else signal.SIGTERM)

    def bad_exits(self):
        return {k: v for k, v in self.exit_codes.items()
                if v not in (0, None) and "nginx" not in k and not k.startswith("redis")}

    def log_problems(self):
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".log"):
                with open(self.path(name), errors="replace") as f:
                    out += ["%s: %s" % (name, line.rstrip()) for line in f if BAD_LOG.search(line)]
        return out[:50]

    # -- client side (in the client namespace) --
    def addr(self, host):
        return self.net.addr(host)

    def http(self, host, method, path, body=None, headers=None, timeout=15):
        with self.net.entered("client"):
            conn = http.client.HTTPConnection(self.addr(host), NGINX_PORT, timeout=timeout)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

    def publish(self, host, content, channel, key=None, deadline=10.0, errors=None):
        """POST /chat through HOST's nginx; retried with the same
        Idempotency-Key after an error, as the contract tells clients to
        (the errors seen are appended to ERRORS)."""
        key = key or uuid.uuid4().hex
        body = urlencode({"content": content, "channel": channel}).encode()
        hdrs = {"Content-Type": "application/x-www-form-urlencoded", "Idempotency-Key": key}
        end = time.monotonic() + deadline
        tries = 0
        while True:
            tries += 1
            try:
                st, b = self.http(host, "POST", "/chat", body, hdrs)
                if st == 200:
                    return json.loads(b), tries
                last = "%d %s" % (st, b[:200].decode(errors="replace").strip())
            except OSError as e:
                last = repr(e)
            if errors is not None:
                errors.append(last)
            if time.monotonic() > end:
                raise AssertionError("publish through %s failed %d times: %s" % (host, tries, last))
            time.sleep(0.05)

    # -- inside the hosts (metrics are private to each host's loopback) --
    def metrics(self, host, port):
        with self.net.entered(host):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
            finally:
                conn.close()
        return parse_metrics(text)

    def redis_up(self, host, port):
        m = self.metrics(host, port)
        return m.get('pushwire_redis_up{conn="commands"}') == 1 and m.get('pushwire_redis_up{conn="pubsub"}') == 1

    def held_polls(self, host):
        return sum(self.metrics(host, self.worker_metrics_port(i)).get("pushwire_held_longpolls", 0)
                   for i in range(WORKERS_PER_HOST) if "%s-worker-%d" % (host, i) in self.procs)

    def ws_clients(self, host):
        return self.metrics(host, 9400).get("pushwire_ws_clients", 0)


@pytest.fixture(scope="module", params=["single", "cluster"])
def cluster(request):
    reason = Net.unavailable()
    if reason:
        pytest.skip("multi-host tests need network namespaces: " + reason)
    remove_stale()
    net = Net()
    c = Cluster(net, request.param)

    def on_term(signum, frame):  # a SIGTERM to pytest still runs the cleanup below
        raise KeyboardInterrupt("SIGTERM")
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        net.create()
        net.add_host("redis", 1)
        for h, octet in HOSTS:
            net.add_host(h, octet)
        net.add_host("gw", 20)
        net.add_host("client", 100)
        c.start()
    except BaseException:
        c.stop_all()
        net.destroy()
        signal.signal(signal.SIGTERM, old_term)
        raise
    yield c
    try:
        c.stop_all()
        problems = c.log_problems()
        assert not problems, "problems in logs (%s):\n%s" % (c.dir, "\n".join(problems))
        assert not c.bad_exits(), "processes exited with errors: %r (logs in %s)" % (c.bad_exits(), c.dir)
        if os.environ.get("PW_KEEP_LOGS") != "1":
            shutil.rmtree(c.dir, ignore_errors=True)
    finally:
        errors = net.destroy()
        signal.signal(signal.SIGTERM, old_term)
        left = net.leftovers()
        assert not errors and not left, "namespaces not deleted: %r %r" % (errors, left)


@pytest.fixture(autouse=True)
def clean_logs(request):
    """Stop the test's client threads, even when it failed; fail the test
    that produced a sanitizer report or an nginx alert."""
    yield
    for cl in list(Client.running):
        cl.stop()
        cl.join(10)
    Client.running.clear()
    if "cluster" in request.fixturenames:
        c = request.getfixturevalue("cluster")
        problems = c.log_problems()
        assert not problems, "problems in logs (%s):\n%s" % (c.dir, "\n".join(problems))


# ---- clients ------------------------------------------------------------------------------

class Client(threading.Thread):
    """Collects the messages of one channel; stops when it has TARGET or on stop()."""
    running = []  # stopped after each test by clean_logs

    def __init__(self, cluster, name, hosts, channel, failover=False):
        super().__init__(name=name, daemon=True)
        Client.running.append(self)
        self.c, self.label, self.hosts, self.channel = cluster, name, list(hosts), channel
        self.failover = failover
        self.host_i = 0
        self.ids, self.contents = [], {}
        self.epochs, self.resets, self.reconnects, self.errors = set(), 0, 0, []
        self.since, self.epoch = 0, None
        self.target = None
        self._stop_ev = threading.Event()

    @property
    def host(self):
        return self.hosts[self.host_i % len(self.hosts)]

    def next_host(self):
        if self.failover:
            self.host_i += 1

    def done(self):
        return self._stop_ev.is_set() or (self.target is not None and self.since >= self.target)

    def stop(self):
        self._stop_ev.set()

    def take(self, mid, content, epoch):
        self.ids.append(mid)
        self.contents[mid] = content
        self.epochs.add(epoch)
        self.since = max(self.since, mid)

    def run(self):
        try:
            with self.c.net.entered("client"):
                self.loop()
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))


class LongPollClient(Client):
    def loop(self):
        while not self.done():
            q = {"channel": self.channel, "since": self.since, "timeout": 2}
            if self.epoch:
                q["epoch"] = self.epoch
            try:
                conn = http.client.HTTPConnection(self.c.addr(self.host), NGINX_PORT, timeout=15)
                try:
                    conn.request("GET", "/status?" + urlencode(q))
                    r = conn.getresponse()
                    st, body = r.status, r.read()
                finally:
                    conn.close()
            except OSError:
                self.reconnects += 1
                self.next_host()
                time.sleep(0.05)
                continue
            if st != 200:  # 503 while no worker answers: poll again
                self.reconnects += 1
                time.sleep(0.05)
                continue
            doc = json.loads(body)
            if doc.get("reset"):
                self.resets += 1
            self.epoch = doc["epoch"]
            for m in doc["messages"]:
                self.take(m["id"], m["content"], doc["epoch"])


class WsClient(Client):
    def loop(self):
        import websockets
        asyncio.run(self.aloop(websockets))

    async def aloop(self, websockets):
        while not self.done():
            q = {"channel": self.channel, "since": self.since}
            if self.epoch:
                q["epoch"] = self.epoch
            url = "ws://%s:%d/status?%s" % (self.c.addr(self.host), NGINX_PORT, urlencode(q))
            try:
                async with websockets.connect(url, open_timeout=5, close_timeout=2, max_size=1 << 22) as ws:
                    while not self.done():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.2)
                        except asyncio.TimeoutError:
                            continue
                        m = json.loads(raw)
                        self.epoch = m["epoch"]
                        if m.get("reset"):
                            self.resets += 1
                            continue
                        self.take(m["id"], m["content"], m["epoch"])
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
                # closed by a stopping relay, or refused while none is up:
                # resume (on the next host with failover) from the last id
                self.reconnects += 1
                self.next_host()
                await asyncio.sleep(0.05)


def stats(capsys, test, clients, published):
    """One line per client: published / received / lost / duplicated."""
    pub = set(published)
    lines, ok = [], True
    for cl in clients:
        lost = sorted(pub - set(cl.ids))
        dup = len(cl.ids) - len(set(cl.ids))
        in_order = cl.ids == sorted(cl.ids)
        ok = ok and not lost and not dup and in_order and not cl.resets and not cl.errors
        lines.append("%s %-14s published %3d  received %3d  lost %d  duplicated %d%s%s%s" % (
            test, cl.label, len(pub), len(cl.ids), len(lost), dup,
            "" if in_order else "  OUT OF ORDER", "  resets %d" % cl.resets if cl.resets else "",
            "  reconnects %d" % cl.reconnects if cl.reconnects else ""))
    with capsys.disabled():
        sys.stdout.write("\n" + "\n".join(lines) + "\n")
    RESULTS.extend(lines)
    return ok


def finish(clients, target, timeout=20):
    for cl in clients:
        cl.target = target
    deadline = time.monotonic() + timeout
    for cl in clients:
        cl.join(max(0.1, deadline - time.monotonic()))
    for cl in clients:
        cl.stop()
        cl.join(10)
        assert not cl.is_alive(), "client %s did not stop" % cl.label


def channel_name(tag):
    return "%s-%s" % (tag, uuid.uuid4().hex[:8])


# ---- tests ----------------------------------------------------------------------------------

def test_every_host_sees_every_process(cluster):
    """/healthz through either host: the workers and relays of both hosts
    heartbeat into the one Redis and are all alive."""
    for h, _ in HOSTS:
        st, body = cluster.http(h, "GET", "/healthz")
        doc = json.loads(body)
        assert st == 200, doc
        assert doc["status"] == "ok"
        assert doc["workers"]["alive"] == len(HOSTS) * WORKERS_PER_HOST, doc
        assert doc["relays"]["alive"] == len(HOSTS), doc


def test_cross_host_delivery(cluster, capsys):
    """Published through h1 and h2 alternately; long-poll and WebSocket
    clients on both hosts get every message once, in order, live."""
    ch = channel_name("xh")
    clients = []
    for h, _ in HOSTS:
        clients.append(LongPollClient(cluster, "longpoll@" + h, [h], ch))
        clients.append(WsClient(cluster, "websocket@" + h, [h], ch))
    for cl in clients:
        cl.start()
    # Held and subscribed everywhere before the first publish, so that the
    # messages travel by pub/sub from one host to the other (since=0 would
    # also catch up from history, which is not what this test is about).
    for h, _ in HOSTS:
        wait_for(lambda: cluster.held_polls(h) >= 1, what="a held long-poll on " + h)
        wait_for(lambda: cluster.ws_clients(h) >= 1, what="a WebSocket client on " + h)
    n = 40
    published, epochs, via = [], set(), {}
    for i in range(n):
        h = HOSTS[i % len(HOSTS)][0]
        doc, _ = cluster.publish(h, "message %d via %s" % (i, h), ch)
        published.append(doc["id"])
        epochs.add(doc["epoch"])
        via[doc["id"]] = h
    finish(clients, max(published))
    ok = stats(capsys, "cross-host", clients, published)

    assert published == list(range(1, n + 1)), "ids not consecutive across hosts: %r" % published
    assert len(epochs) == 1
    for cl in clients:
        assert not cl.errors, (cl.label, cl.errors)
        assert cl.ids == published, "%s got %r" % (cl.label, cl.ids)
        assert cl.epochs == epochs, (cl.label, cl.epochs, epochs)
        assert cl.resets == 0 and cl.reconnects == 0, (cl.label, cl.resets, cl.reconnects)
        for mid in published:
            assert cl.contents[mid] == "message %d via %s" % (mid - 1, via[mid])
    assert ok


def test_rolling_restart_and_failover(cluster, capsys):
    """Workers replaced one at a time on both hosts and the relay of h1
    restarted, while messages are published through both hosts: long-poll
    clients keep polling their host, the WebSocket client of h1 resumes on
    h2 with since/epoch. Nothing lost, nothing duplicated, ids consecutive
    (publishes retried with their Idempotency-Key)."""
    ch = channel_name("roll")
    clients = [LongPollClient(cluster, "longpoll@h1", ["h1"], ch),
               LongPollClient(cluster, "longpoll@h2", ["h2"], ch),
               WsClient(cluster, "websocket@h1>h2", ["h1", "h2"], ch, failover=True),
               WsClient(cluster, "websocket@h2", ["h2"], ch)]
    for cl in clients:
        cl.start()
    for h, _ in HOSTS:
        wait_for(lambda: cluster.held_polls(h) >= 1, what="a held long-poll on " + h)
        wait_for(lambda: cluster.ws_clients(h) >= 1, what="a WebSocket client on " + h)

    published, epochs, retried = [], set(), []
    stop_pub = threading.Event()
    pub_errors = []

    def publisher():
        i = 0
        try:
            while not stop_pub.is_set():
                h = HOSTS[i % len(HOSTS)][0]
                doc, _ = cluster.publish(h, "rolling %d" % i, ch, key="roll-%s-%d" % (ch, i), errors=retried)
                published.append(doc["id"])
                epochs.add(doc["epoch"])
                i += 1
                time.sleep(0.02)
        except Exception as e:
            pub_errors.append(repr(e))

    pt = threading.Thread(target=publisher, daemon=True)
    pt.start()
    try:
        wait_for(lambda: len(published) >= 10, what="first publishes")
        for h, i in (("h1", 0), ("h1", 1), ("h2", 0), ("h2", 1)):
            name = "%s-worker-%d" % (h, i)
            assert cluster.stop(name) == 0, "%s did not stop cleanly" % name
            cluster.start_worker(h, i)
            # Back in rotation before the next one goes, as in a real rolling
            # restart. nginx retries a failed server after fail_timeout (2 s)
            # but clears its failure only when a request to it completes (a
            # held long-poll does not count yet): wait for a finished answer,
            # or the next stop finds no live upstream for a moment (503s).
            wait_for(lambda: cluster.metrics(h, cluster.worker_metrics_port(i))
                     .get('pushwire_responses_total{code="2xx"}', 0) > 0,
                     timeout=10, what=name + " to answer through nginx again")
        assert cluster.stop("h1-relay") == 0
        wait_for(lambda: clients[2].reconnects >= 1, what="the WebSocket client to move to h2")
        cluster.start_relay("h1")
        wait_for(lambda: len(published) >= 20, what="more publishes")
        time.sleep(0.3)
    finally:
        stop_pub.set()
        pt.join(20)
    assert not pub_errors, pub_errors
    finish(clients, max(published))
    ok = stats(capsys, "rolling", clients, published)
    with capsys.disabled():
        kinds = {}
        for e in retried:
            kinds[e] = kinds.get(e, 0) + 1
        sys.stdout.write("rolling publishes retried with their Idempotency-Key: %d %r\n" % (len(retried), kinds))

    assert published == list(range(1, len(published) + 1)), "ids not consecutive: %r" % published
    assert len(epochs) == 1
    for cl in clients:
        assert not cl.errors, (cl.label, cl.errors)
        assert cl.ids == published, "%s: lost %r" % (cl.label, sorted(set(published) - set(cl.ids)))
        assert cl.epochs == epochs and cl.resets == 0, (cl.label, cl.epochs, cl.resets)
    assert clients[2].reconnects >= 1
    assert ok


def test_compose_style_nginx_entrypoint(cluster, capsys):
    """docker/nginx-start as the nginx container runs it, with the compose
    defaults WORKER_ADDRS=worker:9000 RELAY_ADDRS=relay:9100. The names
    resolve (here through /etc/hosts of its namespace, in compose through
    Docker's DNS) to every replica; the entrypoint renders those addresses,
    nginx spreads requests over all of them, and when the names' addresses
    change (a replica gone, recreated elsewhere, none at all) the entrypoint
    re-renders and reloads nginx by itself, one log line each, with a `down`
    placeholder for a name without addresses. Old nginx workers holding a
    WebSocket exit after SHUTDOWN_TIMEOUT; SIGQUIT stops nginx gracefully and
    the entrypoint exits with its status."""
    net = cluster.net
    h1, h2 = cluster.addr("h1"), cluster.addr("h2")

    def names(workers, relays):
        net.set_hosts_file("gw", "127.0.0.1 localhost\n" + "".join("%s worker\n" % a for a in workers) +
                           "".join("%s relay\n" % a for a in relays))

    def conf():
        with open(cluster.path("gw-nginx", "nginx.conf")) as f:
            return f.read()

    def upstream(name):
        block = conf().split("upstream %s {" % name, 1)[1].split("}", 1)[0]
        return sorted(m.group(1) + (" down" if re.search(r"\bdown\b", m.group(2)) else "")
                      for m in re.finditer(r"^\s*server (\S+)(.*);$", block, re.M))

    def master():
        with open(cluster.path("gw-nginx", "nginx.pid")) as f:
            return int(f.read())

    def reloads():
        with open(cluster.path("gw-nginx.log"), errors="replace") as f:
            return sum("reloading nginx" in line for line in f)

    names([h1, h2], [h1, h2])
    started = []
    try:
        for h, _ in HOSTS:
            cluster.start_tcp_worker(h)
            started.append(h + "-tcpworker")
        env = dict(os.environ)
        for k in ("WORKER_ADDRS", "RELAY_ADDRS", "LISTEN", "ERROR_LOG", "HTML_DIR"):
            env.pop(k, None)
        env.update({"PW_HOME": ROOT, "PW_NGINX_DIR": cluster.path("gw-nginx"), "SHUTDOWN_TIMEOUT": "3s",
                    "CHAT_RATE": "100000", "CHAT_BURST": "100000", "NGINX_WORKERS": "1"})
        p = cluster.run("gw-nginx", "gw", [os.path.join(ROOT, "docker", "nginx-start")], env=env)
        started.append("gw-nginx")
        wait_for(lambda: cluster.http("gw", "GET", "/")[0] == 200, what="the compose-style nginx")
        # nginx is the entrypoint's child (it forwards signals and watches the names)
        pid = master()
        with open("/proc/%d/stat" % pid) as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == p.pid
        assert upstream("pushwire_workers") == ["%s:9000" % h1, "%s:9000" % h2], conf()
        assert upstream("pushwire_relays") == ["%s:9100" % h1, "%s:9100" % h2], conf()
        assert re.search(r"listen 0\.0\.0\.0:8080 ", conf())

        # the health checks of the images, run where the containers' processes run
        hc = os.path.join(ROOT, "docker", "healthcheck")
        for host, kind, metrics in (("gw", "nginx", None), ("h1", "worker", "0.0.0.0:9399"),
                                    ("h2", "relay", "127.0.0.1:9400")):
            e = dict(os.environ, PW_METRICS=metrics or "", LISTEN="0.0.0.0:8080")
            r = subprocess.run(net.exec_argv(host, [hc, kind]), env=e, capture_output=True, timeout=20)
            assert r.returncode == 0, (kind, r.stderr)
        r = subprocess.run(net.exec_argv("h1", [hc, "worker"]), env=dict(os.environ, PW_METRICS="127.0.0.1:1"),
                           capture_output=True, timeout=20)
        assert r.returncode == 1 and b"does not answer" in r.stderr

        ch = channel_name("gw")
        ws = WsClient(cluster, "websocket@gw", ["gw"], ch)
        ws.start()

        def requests():
            return {h: cluster.metrics(h, 9399)["pushwire_requests_total"] for h, _ in HOSTS}
        before = requests()
        published = []
        for i in range(20):
            doc, _ = cluster.publish("gw", "via gw %d" % i, ch)
            published.append(doc["id"])
        wait_for(lambda: ws.since >= published[-1], what="the WebSocket client to get the messages")
        after = requests()
        assert all(after[h] > before[h] for h, _ in HOSTS), \
            "nginx did not use every address of 'worker': %r -> %r" % (before, after)

        def reloaded(old_workers):
            """nginx runs new workers and the old ones no longer accept."""
            def gone_or_leaving(w):
                try:
                    with open("/proc/%d/cmdline" % w, "rb") as f:
                        return b"shutting down" in f.read()
                except OSError:
                    return True
            return set(nginx_workers(pid)) - set(old_workers) and all(gone_or_leaving(w) for w in old_workers)

        # A worker gone and the relay elsewhere: found without a reload by hand.
        n, old_workers = reloads(), nginx_workers(pid)
        t0 = time.monotonic()
        names([h2], [h1])
        wait_for(lambda: upstream("pushwire_workers") == ["%s:9000" % h2] and reloads() == n + 1 and
                 reloaded(old_workers), timeout=10, what="the entrypoint to follow the names")
        took = time.monotonic() - t0
        assert upstream("pushwire_relays") == ["%s:9100" % h1]
        assert master() == pid, "nginx was restarted, not reloaded"
        wait_for(lambda: cluster.http("gw", "GET", "/healthz")[0] == 200, what="nginx after the reload")
        before = requests()
        for i in range(20, 30):
            doc, _ = cluster.publish("gw", "via gw %d" % i, ch)
            published.append(doc["id"])
        after = requests()
        assert after["h1"] == before["h1"] and after["h2"] > before["h2"], (before, after)
        # The WebSocket held by the old nginx worker is closed after
        # SHUTDOWN_TIMEOUT (3 s); the client comes back with since.
        wait_for(lambda: len(nginx_workers(pid)) == 1 and ws.reconnects >= 1, timeout=15,
                 what="the old nginx worker to exit (workers %r)" % nginx_workers(pid))
        finish([ws], max(published))
        ok = stats(capsys, "compose-gw", [ws], published)

        # No address at all: a placeholder marked down, 503 with Retry-After.
        old_workers = nginx_workers(pid)
        names([], [h1])
        wait_for(lambda: upstream("pushwire_workers") == ["127.0.0.1:9 down"] and reloads() == n + 2 and
                 reloaded(old_workers), timeout=10, what="the down placeholder")
        st, body = cluster.http("gw", "POST", "/chat", b"content=x", {"Content-Type": "application/x-www-form-urlencoded"})
        assert st == 503 and json.loads(body)["error"], (st, body)
        names([h1, h2], [h1, h2])
        wait_for(lambda: len(upstream("pushwire_workers")) == 2, timeout=10, what="both workers back")
        wait_for(lambda: cluster.publish("gw", "back", channel_name("gw"))[0]["id"] == 1, timeout=10,
                 what="a publish through both workers again")
        with capsys.disabled():
            sys.stdout.write("compose-gw: nginx followed a change of the names in %.1f s\n" % took)
        assert ok and ws.ids == published

        started.remove("gw-nginx")
        assert cluster.stop("gw-nginx", signal.SIGQUIT) == 0, "the entrypoint did not exit 0 on SIGQUIT"
        assert not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z"
    finally:
        for name in reversed(started):
            cluster.stop(name, signal.SIGQUIT if "nginx" in name else signal.SIGTERM)
        net.set_hosts_file("gw", "127.0.0.1 localhost\n")


# ---- deployment files, without a Docker engine ------------------------------------------------

def compose_variables():
    """Every ${NAME...} docker-compose.yml reads from the environment."""
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", f.read()))


def compose_command():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def compose_config(extra_env=None, quiet_check=True):
    cmd = compose_command()
    if not cmd:
        pytest.skip("neither docker-compose nor docker compose is installed: apt-get install -y docker-compose")
    drop = compose_variables()
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("PW_", "COMPOSE_"))}
    env.update(extra_env or {})
    base = cmd + ["-f", os.path.join(ROOT, "docker-compose.yml"), "--project-directory", ROOT]
    if quiet_check:
        q = subprocess.run(base + ["config", "-q"], env=env, capture_output=True, timeout=60)
        assert q.returncode == 0, q.stderr.decode()
    r = subprocess.run(base + ["config"], env=env, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(r.stdout)


def published_ports(svc):
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append((str(p.get("published")), int(p["target"])))
        else:
            pub, _, target = str(p).rpartition(":")
            out.append((pub, int(target)))
    return out


def test_compose_file():
    doc = compose_config()
    svcs = doc["services"]
    # The profiles' services are listed too (compose config shows every
    # profile); they run only with theirs.
    profiles = {"sentinel": {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"},
                "cluster": {"cluster-%d" % i for i in range(1, 7)}}
    assert set(svcs) == {"redis", "worker", "relay", "nginx"}.union(*profiles.values())
    for profile, names in profiles.items():
        for name in names:
            assert svcs[name].get("profiles") == [profile], name
            assert svcs[name]["image"] == svcs["redis"]["image"], name
    creators = [n for n in profiles["cluster"] if svcs[n]["environment"].get("CLUSTER_CREATE")]
    assert creators == ["cluster-1"], creators
    assert svcs["cluster-1"]["environment"]["CLUSTER_CREATE"].split() == \
        ["cluster-%d:6379" % i for i in range(1, 7)]
    for name, svc in svcs.items():
        assert svc.get("restart") == "unless-stopped", name
        assert svc.get("healthcheck", {}).get("test"), "%s has no health check" % name
        if name != "nginx":
            assert not svc.get("ports"), "%s publishes a port" % name
        for dep, how in (svc.get("depends_on") or {}).items():
            assert how.get("condition") == "service_healthy", (name, dep)
        assert "container_name" not in svc, "%s cannot be scaled with a container_name" % name
    assert published_ports(svcs["nginx"]) == [("8080", 8080)]
    # nginx finds workers and relays by itself (docker/nginx-start) and must
    # not depend on them: compose would stop it first on `down`, and it would
    # hold the long-polls and WebSockets that workers and relays answer and
    # close while they stop, until SHUTDOWN_TIMEOUT, then cut them.
    assert not svcs["nginx"].get("depends_on"), svcs["nginx"].get("depends_on")
    assert set(svcs["worker"]["depends_on"]) == {"redis"} == set(svcs["relay"]["depends_on"])
    assert svcs["nginx"]["stop_grace_period"] == "35s"

    w, r, n = (svcs[s]["environment"] for s in ("worker", "relay", "nginx"))
    assert w["PW_LISTEN"] == "0.0.0.0:9000" and r["PW_RELAY_LISTEN"] == "0.0.0.0:9100"
    assert w["REDIS_URL"] == r["REDIS_URL"] == "redis://redis:6379"
    assert w["PW_PREFIX"] == r["PW_PREFIX"] and w["PW_HISTORY_TTL"] == r["PW_HISTORY_TTL"]
    assert n["WORKER_ADDRS"] == "worker:9000" and n["RELAY_ADDRS"] == "relay:9100"
    assert n["LISTEN"] == "0.0.0.0:8080"
    # the defaults of nginx/render where compose passes a setting through
    assert n["CHAT_TRUSTED"] == "127.0.0.0/8 ::1 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"
    assert n["SHUTDOWN_TIMEOUT"] == "30s" and n["UPSTREAM_KEEPALIVE"] == "8192"
    assert n["PW_PUBLISH_TOKEN"] == w["PW_PUBLISH_TOKEN"] == ""
    assert n["CHAT_ALLOW"] == n["REAL_IP_FROM"] == "" and "METRICS_ADDRS" not in n
    assert "redis-data" in doc["volumes"]
    assert any(str(v).startswith("redis-data:/data") or (isinstance(v, dict) and v.get("target") == "/data")
               for v in svcs["redis"]["volumes"])

    # every build target exists in the Dockerfile
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", f.read(), re.M | re.I))
    for name, svc in svcs.items():
        if name.startswith(("sentinel-", "cluster-")):
            continue  # the redis image, built by the redis service
        assert svc["build"]["target"] in stages, (name, svc["build"]["target"], stages)

    # settings come from the environment
    # (tests/integration/test_compose.py checks every documented variable)
    doc = compose_config({"PORT": "9999", "REDIS_URL": "redis://:pw@redis:6379/2", "CHAT_RATE": "7",
                          "RELAY_ADDRS": "", "CHAT_TRUSTED": "", "PW_PUBLISH_TOKEN": "tok"}, quiet_check=False)
    svcs = doc["services"]
    assert published_ports(svcs["nginx"]) == [("9999", 8080)]
    assert svcs["worker"]["environment"]["REDIS_URL"] == "redis://:pw@redis:6379/2"
    assert svcs["nginx"]["environment"]["CHAT_RATE"] == "7"
    assert svcs["nginx"]["environment"]["RELAY_ADDRS"] == ""
    assert svcs["nginx"]["environment"]["CHAT_TRUSTED"] == "", "an empty CHAT_TRUSTED must mean nobody"
    assert svcs["nginx"]["environment"]["PW_PUBLISH_TOKEN"] == svcs["worker"]["environment"]["PW_PUBLISH_TOKEN"]


def test_docker_scripts_and_context():
    scripts = sorted(os.path.join(ROOT, "docker", f) for f in os.listdir(os.path.join(ROOT, "docker")))
    assert scripts
    for s in scripts:
        assert os.access(s, os.X_OK), s + " is not executable"
        r = subprocess.run(["sh", "-n", s], capture_output=True)
        assert r.returncode == 0, (s, r.stderr)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-s", "sh"] + scripts, capture_output=True)
        assert r.returncode == 0, r.stdout.decode()
    # what the Dockerfile copies from the context is let through .dockerignore
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        allowed = {ln[1:].strip().strip("/") for ln in f if ln.startswith("!")}
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        for line in f:
            m = re.match(r"^COPY\s+(?!--from)(.+)\s+\S+\s*$", line)
            if m:
                for src in m.group(1).split():
                    assert src.strip("/").split("/")[0] in allowed, "%s is excluded by .dockerignore" % src


def test_runtime_image_has_the_shared_libraries():
    """The Dockerfile's runtime stage installs exactly the packages of the
    shared libraries the binaries link (same Debian release here): every one
    of them, and nothing else (test_compose.py checks the same with ldd
    inside the built images)."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    m = re.search(r"FROM \S+ AS runtime\n(.*?)\n\n", text, re.S)
    assert m, "no runtime stage"
    runtime_pkgs = set(re.findall(r"\b(lib[a-z0-9.+-]+)\b", m.group(1)))
    needed = set()
    for binary in ("pushwire-worker", "pushwire-relay"):
        path = os.path.join(PLAIN_BUILD, binary)
        if not os.path.exists(path):
            pytest.skip("build %s first (make)" % path)
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        libs = re.findall(r"=>\s+(\S+)", out)
        cands = {lib: {lib, os.path.realpath(lib), os.path.realpath(lib).replace("/usr/lib/", "/lib/", 1)}
                 for lib in libs}
        # one dpkg -S for all of them (it is slow); lines are "pkg[:arch]: path"
        r = subprocess.run(["dpkg", "-S"] + sorted(set().union(*cands.values())), capture_output=True, text=True)
        owner = {}
        for line in r.stdout.splitlines():
            pkg, _, p = line.partition(": ")
            owner[p.strip()] = pkg.split(":")[0]
        for lib, cs in cands.items():
            pkgs = {owner[c] for c in cs if c in owner}
            assert pkgs, "no package owns " + lib
            needed |= pkgs - {"libc6"}
    assert needed <= runtime_pkgs, "runtime stage lacks %r" % (needed - runtime_pkgs)
    assert runtime_pkgs <= needed, "runtime stage installs what no binary links: %r" % (runtime_pkgs - needed)
    pkgs = sorted(needed | {"nginx-light", "curl"})
    r = subprocess.run(["apt-cache", "show", "--no-all-versions"] + pkgs, capture_output=True, text=True)
    found = set(re.findall(r"^Package: (\S+)$", r.stdout, re.M))
    assert found == set(pkgs), "not Debian packages here: %r" % (set(pkgs) - found)


def test_redis_entrypoint():
    """docker/redis-start (outside the redis image it runs redis-server
    itself): append-only, everysec, noeviction, and AUTH from REDIS_PASSWORD
    without the password on the command line."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed: apt-get install -y redis-server")
    d = tempfile.mkdtemp(prefix="pw-redis-start-")
    sock = os.path.join(d, "redis.sock")
    env = dict(os.environ, REDIS_PASSWORD="s3cret-x.1")
    env.pop("REDISCLI_AUTH", None)
    p = Proc("redis", [os.path.join(ROOT, "docker", "redis-start"), "--port", "0", "--unixsocket", sock,
                       "--dir", d, "--daemonize", "no"], os.path.join(d, "redis.log"), env).start()

    def cli(*args, auth=None):
        e = dict(os.environ)
        e.pop("REDISCLI_AUTH", None)
        if auth:
            e["REDISCLI_AUTH"] = auth
        return subprocess.run(["redis-cli", "-s", sock] + list(args), env=e, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    try:
        wait_for(lambda: os.path.exists(sock), what="redis-start's socket")
        assert "NOAUTH" in cli("ping")
        wait_for(lambda: cli("ping", auth="s3cret-x.1") == "PONG", what="PONG with the password")
        assert cli("config", "get", "appendonly", auth="s3cret-x.1").split() == ["appendonly", "yes"]
        assert cli("config", "get", "appendfsync", auth="s3cret-x.1").split() == ["appendfsync", "everysec"]
        assert cli("config", "get", "maxmemory-policy", auth="s3cret-x.1").split() == \
            ["maxmemory-policy", "noeviction"]
        with open("/proc/%d/cmdline" % p.pid, "rb") as f:
            assert b"s3cret" not in f.read()
    finally:
        p.stop()
        shutil.rmtree(d, ignore_errors=True)
    bad = subprocess.run([os.path.join(ROOT, "docker", "redis-start"), "--port", "0"],
                         env=dict(os.environ, REDIS_PASSWORD="has space"), capture_output=True, timeout=10)
    assert bad.returncode == 2 and b"REDIS_PASSWORD" in bad.stderr
