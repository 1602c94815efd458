"""Start and stop a real pushwire stack for the integration tests.

Redis, the workers (the sanitizer build from PW_BUILD), relays when built,
and nginx rendered from the project's one template (nginx/render), each on
free loopback ports, in a fresh temporary directory. Processes are stopped by
the PIDs this module started, and their logs are checked for sanitizer
reports and nginx alerts when the stack stops.
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
import tempfile
import threading
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("PW_BUILD", os.path.join(ROOT, "build", "asan"))
# The optimised build without sanitizers, for memory measurements (ASan's
# redzones and quarantine would swamp them).
PLAIN_BUILD = os.environ.get("PW_PLAIN_BUILD", os.path.join(ROOT, "build"))

# "messages published / received / lost / duplicated" lines of the fault
# tests, printed together at the end of the run by conftest.py.
RESULTS = []

BAD_LOG = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|\[alert\]|\[emerg\]|"
    r"SUMMARY: UndefinedBehaviorSanitizer|Assertion .* failed"
)


_GIVEN = set()


def free_port():
    """A loopback port free now and never handed out before by this process:
    a port is chosen long before its process binds it (nginx starts last),
    and the kernel may offer a released port again meanwhile (a relay once
    got nginx's port, and nginx shared it by reuseport)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no fresh free port")


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """pred() until it is true (exceptions count as false); its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception:
            pass
        time.sleep(interval)
    raise AssertionError("timed out waiting for " + what)


async def async_wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """wait_for for asyncio tests: sleeps without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception:
            pass
        await asyncio.sleep(interval)
    raise AssertionError("timed out waiting for " + what)


def unique_channel(prefix="t"):
    """A channel no other test uses."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def parse_metrics(text):
    """Prometheus text to {name{labels}: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


class Poller(threading.Thread):
    """One long-poll in the background: stack.poll(**kw) into .result."""

    def __init__(self, stack, **kw):
        super().__init__(daemon=True)
        self.stack, self.kw, self.result = stack, kw, None

    def run(self):
        self.result = self.stack.poll(**self.kw)


class Proc:
    def __init__(self, name, argv, log, env=None):
        self.name, self.argv, self.log = name, argv, log
        self.env = env
        self.p = None

    def start(self):
        out = open(self.log, "ab")
        self.p = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=self.env)
        out.close()
        return self

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def send(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stop by PID; returns the exit status (None if it had to be killed)."""
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                return None
        return self.p.returncode


class Stack:
    """nginx + Redis + N workers (+ relays), all on free loopback ports."""

    def __init__(self, workers=2, relays=0, worker_args=(), relay_args=(), redis_args=(),
                 env=None, nginx_env=None, build=None, redis_password=None, relay_unix=False):
        self.dir = tempfile.mkdtemp(prefix="pw-it-")
        self.nworkers, self.nrelays = workers, relays
        self.worker_args, self.relay_args = list(worker_args), list(relay_args)
        self.redis_args = list(redis_args)
        self.extra_env = dict(env or {})
        self.nginx_env = dict(nginx_env or {})
        self.port = free_port()
        self.redis_port = free_port()
        self.redis = None
        self.workers, self.relays = [], []
        self.worker_metrics, self.relay_ports, self.relay_metrics = [], [], []
        self.nginx = None
        self.build = build  # None: the sanitizer build (BUILD)
        self.redis_password = redis_password  # Redis runs with --requirepass
        self.relay_unix = relay_unix  # relays listen on unix sockets (nginx reaches them there)
        self.exit_codes = {}

    # ---- environment ------------------------------------------------------
    def env(self):
        e = dict(os.environ)
        auth = ":%s@" % self.redis_password if self.redis_password else ""
        e.update({
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=66",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
            "REDIS_URL": "redis://%s127.0.0.1:%d" % (auth, self.redis_port),
        })
        e.update(self.extra_env)
        return e

    def path(self, *p):
        return os.path.join(self.dir, *p)

    # ---- processes --------------------------------------------------------
    def start_redis(self):
        argv = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no",
                "--maxmemory-policy", "noeviction", "--daemonize", "no"] + self.redis_args
        if self.redis_password:
            argv += ["--requirepass", self.redis_password]
        self.redis = Proc("redis", argv, self.path("redis.log")).start()
        wait_for(self.redis_ping, what="redis to answer PING")
        return self.redis

    def redis_ping(self):
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
            if self.redis_password:
                s.sendall(b"AUTH %s\r\n" % self.redis_password.encode())
            s.sendall(b"PING\r\n")
            data = b""
            while b"PONG" not in data and b"-" not in data[:1]:
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            return data.endswith(b"+PONG\r\n")

    def redis_cmd(self, *args):
        """Run one command with redis-cli; returns its stdout."""
        auth = ["--no-auth-warning", "-a", self.redis_password] if self.redis_password else []
        out = subprocess.run(["redis-cli", "-p", str(self.redis_port)] + auth +
                             [str(a) for a in args], capture_output=True, timeout=10)
        return out.stdout.decode()

    def worker_sock(self, i):
        return self.path("worker-%d.sock" % i)

    def start_worker(self, i, extra=(), build=None):
        m = self.worker_metrics[i] if i < len(self.worker_metrics) else free_port()
        if i >= len(self.worker_metrics):
            self.worker_metrics.append(m)
        argv = [os.path.join(build or self.build or BUILD, "pushwire-worker"), "--listen", "unix:" + self.worker_sock(i),
                "--metrics", "127.0.0.1:%d" % m, "--id", "w%d" % i] + self.worker_args + list(extra)
        p = Proc("worker-%d" % i, argv, self.path("worker-%d.log" % i), self.env()).start()
        if i < len(self.workers):
            self.workers[i] = p
        else:
            self.workers.append(p)
        wait_for(lambda: os.path.exists(self.worker_sock(i)), what="worker socket")
        wait_for(lambda: self.redis_up(self.metrics(i)) or not self.redis or not self.redis.alive(),
                 what="worker %d to reach Redis" % i)
        return p

    def start_relay(self, i, extra=(), build=None):
        if i >= len(self.relay_ports):
            self.relay_ports.append(free_port())
            self.relay_metrics.append(free_port())
        argv = [os.path.join(build or self.build or BUILD, "pushwire-relay"), "--listen", self.relay_addr(i),
                "--metrics", "127.0.0.1:%d" % self.relay_metrics[i], "--id", "r%d" % i] + \
            self.relay_args + list(extra)
        p = Proc("relay-%d" % i, argv, self.path("relay-%d.log" % i), self.env()).start()
        if i < len(self.relays):
            self.relays[i] = p
        else:
            self.relays.append(p)
        wait_for(lambda: self.redis_up(self.relay_metrics_get(i)) or not self.redis or
                 not self.redis.alive(), what="relay %d to reach Redis" % i)
        return p

    def relay_addr(self, i):
        """Where relay i listens: 127.0.0.1:relay_ports[i], or a unix socket."""
        if self.relay_unix:
            return "unix:" + self.path("relay-%d.sock" % i)
        return "127.0.0.1:%d" % self.relay_ports[i]

    @staticmethod
    def redis_up(m):
        """Both Redis connections of a process ready, from its metrics."""
        return (m.get('pushwire_redis_up{conn="commands"}') == 1 and
                m.get('pushwire_redis_up{conn="pubsub"}') == 1)

    def start_nginx(self):
        env = dict(os.environ)
        env.update({
            "WORKER_ADDRS": " ".join("unix:" + self.worker_sock(i) for i in range(self.nworkers)),
            "RELAY_ADDRS": " ".join(self.relay_addr(i) for i in range(len(self.relay_ports))),
            "LISTEN": "127.0.0.1:%d" % self.port,
            "CHAT_RATE": "100000",
            "CHAT_BURST": "100000",
            "NGINX_WORKERS": "2",
        })
        env.update(self.nginx_env)
        subprocess.run([os.path.join(ROOT, "nginx", "render"), self.dir], env=env, check=True)
        self.nginx = Proc("nginx", [os.path.join(ROOT, "nginx", "run"), self.path("nginx-error.log"),
                                    "-p", self.dir, "-c", self.path("nginx.conf")],
                          self.path("nginx.log")).start()
        wait_for(lambda: self.get("/healthz")[0] == 200, what="nginx /healthz")

    def start(self):
        try:
            self.start_redis()
            for i in range(self.nworkers):
                self.start_worker(i)
            for i in range(self.nrelays):
                self.start_relay(i)
            self.start_nginx()
        except Exception:
            self.stop(check=False)
            raise
        return self

    def stop(self, check=True, keep=False):
        """Stop everything; the directory (logs, data) is removed unless
        keep, PW_KEEP_LOGS=1 or problems in the logs."""
        if self.nginx:
            self.exit_codes["nginx"] = self.nginx.stop(signal.SIGQUIT)
        for i, r in enumerate(self.relays):
            self.exit_codes["relay-%d" % i] = r.stop()
        for i, w in enumerate(self.workers):
            self.exit_codes["worker-%d" % i] = w.stop()
        if self.redis:
            self.redis.stop()
        problems = self.log_problems()
        if check:
            bad = {k: v for k, v in self.exit_codes.items() if v not in (0, None) and k != "nginx"}
            assert not problems, "problems in logs:\n" + "\n".join(problems)
            assert not bad, "processes exited with errors: %r (logs in %s)" % (bad, self.dir)
        if not keep and not problems and os.environ.get("PW_KEEP_LOGS") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_problems(self):
        out = []
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".log"):
                continue
            with open(self.path(name), errors="replace") as f:
                for line in f:
                    if BAD_LOG.search(line):
                        out.append("%s: %s" % (name, line.rstrip()))
        return out[:50]

    def log_text(self, name):
        with open(self.path(name), errors="replace") as f:
            return f.read()

    # ---- HTTP helpers -------------------------------------------------------
    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def request(self, method, path, body=None, headers=None, timeout=30):
        """One HTTP/1.1 request with exactly the given headers (no defaults
        added). Returns (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.title(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, path, headers=None, timeout=30):
        return self.request("GET", path, headers=headers, timeout=timeout)

    def get_json(self, path, timeout=30):
        st, h, b = self.get(path, timeout=timeout)
        return st, json.loads(b) if b else None

    def publish(self, content, channel=None, idem=None, as_json=False, headers=None):
        """Publish through nginx; returns (status, json)."""
        hdrs = dict(headers or {})
        if idem:
            hdrs["Idempotency-Key"] = idem
        if as_json:
            doc = {"content": content}
            if channel:
                doc["channel"] = channel
            body = json.dumps(doc).encode()
            hdrs["Content-Type"] = "application/json"
        else:
            from urllib.parse import urlencode
            fields = {"content": content}
            if channel:
                fields["channel"] = channel
            body = urlencode(fields).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        st, h, b = self.request("POST", "/chat", body, hdrs)
        return st, json.loads(b)

    def poll(self, channel=None, since=None, epoch=None, timeout=None, http_timeout=60):
        q = []
        if channel is not None:
            q.append("channel=" + channel)
        if since is not None:
            q.append("since=%d" % since)
        if epoch is not None:
            q.append("epoch=" + epoch)
        if timeout is not None:
            q.append("timeout=%d" % timeout)
        st, h, b = self.get("/status" + ("?" + "&".join(q) if q else ""), timeout=http_timeout)
        return st, json.loads(b), h

    # ---- metrics --------------------------------------------------------------
    @staticmethod
    def _metrics(port):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            return parse_metrics(r.read().decode())

    def metrics(self, i):
        return self._metrics(self.worker_metrics[i])

    def relay_metrics_get(self, i):
        return self._metrics(self.relay_metrics[i])

    def all_redis_up(self):
        """Every live worker and relay has both Redis connections ready."""
        ms = [self.metrics(i) for i, w in enumerate(self.workers) if w.alive()]
        ms += [self.relay_metrics_get(i) for i, r in enumerate(self.relays) if r.alive()]
        return all(self.redis_up(m) for m in ms)

    def held(self):
        """Long-polls held right now, over every live worker."""
        return sum(self.metrics(i)["pushwire_held_longpolls"]
                   for i, w in enumerate(self.workers) if w.alive())
