"""docker-compose.yml for real: a Docker engine, the project's images built
from its Dockerfile, and the stack run and broken as users and operators do.

* The engine: the one that answers (DOCKER_HOST or the default socket), or
  else a dockerd started here, with its data under
  PW_ROOT_CACHE/docker (default /var/cache/pushwire-tests/docker: base
  images and the build cache survive between runs) and its sockets under
  /run/pw-test-dockerd; it is stopped by its PID at the end.
* Base images: there is no registry in CI, so what the Dockerfile starts
  FROM is made locally when missing: debian:bookworm and
  debian:bookworm-slim are a `debootstrap --variant=minbase bookworm` root
  (debroot.py, cached) imported with `docker import`, and redis:7 is
  tests/docker/redis/Dockerfile (Debian's redis-server). An engine that was
  already running is asked to pull a missing image first.
* The project: a unique name (-p), a unique image tag (PUSHWIRE_TAG) and a
  free published port on loopback (PORT); built with `compose build`, then
  only compose commands, `docker kill` and `docker exec` are used: no
  `nginx -s reload`, ever. Clients are tests/integration/clients.py's, going
  through the published port. At the end `down -v` and the project's image
  tags removed (--no-prune: the untagged build cache stays for the next
  run), and nothing of the project may be left.

The test project sets PW_PUBLISH_TOKEN (its publisher holds it), a Redis
password, CHAT_TRUSTED=127.0.0.0/8 (so the test's own connections, which
reach nginx from the compose network's gateway, count as anonymous) and
SHUTDOWN_TIMEOUT=5s. Timings of every phase are printed.
"""
import asyncio
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid

import pytest

import clients as C
import debroot
import wsraw
from scenario import cancel, check, converge, report, run, start_tasks
from stack import ROOT, free_port, parse_metrics, unique_channel, wait_for

HOST = "127.0.0.1"
COMPOSE_FILE = os.path.join(ROOT, "docker-compose.yml")
DEPLOY_MD = os.path.join(ROOT, "docs", "DEPLOY.md")
ENGINE_DIR = os.path.join(debroot.CACHE, "docker")    # data root: kept between runs
RUN_DIR = "/run/pw-test-dockerd"                      # exec root and socket: short paths
STAND_IN_LABEL = "org.pushwire.test-stand-in"
SERVICES = ("redis", "worker", "relay", "nginx")
# The "sentinel" and "cluster" profiles' (they use the redis image).
PROFILE_SERVICES = ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3") + \
    tuple("cluster-%d" % i for i in range(1, 7))
WORKER_METRICS, RELAY_METRICS = 9001, 9101            # the compose defaults, inside each container
TIMINGS = []


def compose_command():
    """`docker compose` (v2) when the CLI has it, else docker-compose 1.x."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 stdin=subprocess.DEVNULL).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def compose_variables():
    """Every ${NAME...} the compose file reads from the environment."""
    with open(COMPOSE_FILE) as f:
        return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", f.read()))


def clean_env(extra=None):
    """The environment of compose commands: nothing of the caller's that the
    compose file or compose itself would read, then EXTRA."""
    drop = compose_variables()
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("PW_", "COMPOSE_"))}
    env.update(extra or {})
    return env


# ---- the documented settings reach their containers (no engine needed) -------------------

def deploy_settings():
    """{VARIABLE: set of services} from the tables under "## Settings" in
    docs/DEPLOY.md. A table's "service" column names them ("both" is worker
    and relay); a table without one is the nginx service's."""
    with open(DEPLOY_MD) as f:
        text = f.read()
    section = text.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    out = {}
    for sub in re.split(r"\n### ", section)[1:]:
        cols = None
        for line in sub.splitlines():
            if not line.startswith("|"):
                cols = None if not line.strip() else cols
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cols is None:
                cols = [c.lower() for c in cells]
                continue
            if set(line) <= set("|-: "):
                continue
            m = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
            assert m, "not a variable in DEPLOY.md's settings: %r" % line
            if "service" in cols:
                where = cells[cols.index("service")].replace("both", "worker, relay").replace(
                    "sentinels", "sentinel-1, sentinel-2, sentinel-3").replace(
                    "cluster nodes", ", ".join("cluster-%d" % i for i in range(1, 7)))
                svcs = {s.strip().strip("`") for s in re.split(r",|\band\b", where) if s.strip()}
            else:
                svcs = {"nginx"}
            assert svcs <= set(SERVICES + PROFILE_SERVICES), (m.group(1), svcs)
            out[m.group(1)] = svcs
    return out


# Documented under another name than the container's variable.
RENAMED = {"WORKER_METRICS": "PW_METRICS", "RELAY_METRICS": "PW_METRICS"}


def test_every_documented_setting_reaches_its_service():
    """Each variable in DEPLOY.md's tables, set to a value of its own, shows
    up in `compose config` in the environment of exactly the services the
    table names (PORT: nginx's published port; PUSHWIRE_TAG: every image),
    and every variable the compose file reads is documented."""
    cmd = compose_command()
    if not cmd:
        pytest.fail("neither docker compose nor docker-compose is installed: "
                    "scripts/install-deps --test installs docker-compose", pytrace=False)
    yaml = pytest.importorskip("yaml")
    documented = deploy_settings()
    for must in ("CHAT_ALLOW", "REAL_IP_FROM", "UPSTREAM_KEEPALIVE", "PW_BACKLOG", "PW_HANDSHAKE_TIMEOUT",
                 "CHAT_TRUSTED", "PW_PUBLISH_TOKEN", "SHUTDOWN_TIMEOUT"):
        assert must in documented, "%s is not in DEPLOY.md's settings" % must
    assert documented["PW_PUBLISH_TOKEN"] == {"worker", "nginx"}
    undocumented = compose_variables() - set(documented)
    assert not undocumented, "docker-compose.yml reads undocumented variables: %r" % sorted(undocumented)

    values = {}
    for k, var in enumerate(sorted(documented)):
        values[var] = "v%d-%s" % (k, var.lower().replace("_", "-"))
    values["PORT"] = "127.0.0.1:18977"
    values["PUSHWIRE_TAG"] = "t-sentinel"
    values["COMPOSE_PROFILES"] = "sentinel,cluster"  # every service shows
    r = subprocess.run(cmd + ["-f", COMPOSE_FILE, "--project-directory", ROOT, "config"],
                       env=clean_env(values), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    svcs = yaml.safe_load(r.stdout)["services"]
    assert set(svcs) == set(SERVICES + PROFILE_SERVICES)
    wrong = {}
    for var, want in sorted(documented.items()):
        if var == "PORT":
            ports = [p if isinstance(p, dict) else {"raw": p} for p in svcs["nginx"].get("ports", [])]
            ok = any(str(p.get("published")) == "18977" and p.get("host_ip") == "127.0.0.1" or
                     re.fullmatch(r"127\.0\.0\.1:18977:8080(/tcp)?", str(p.get("raw"))) for p in ports)
            if not ok:
                wrong[var] = ports
            continue
        if var == "PUSHWIRE_TAG":
            tags = {s: svcs[s]["image"] for s in svcs}
            if any(not t.endswith(":t-sentinel") for t in tags.values()):
                wrong[var] = tags
            continue
        name = RENAMED.get(var, var)
        got = {s for s, d in svcs.items() if (d.get("environment") or {}).get(name) == values[var]}
        if got != want:
            wrong[var] = "reaches %s, DEPLOY.md says %s" % (sorted(got), sorted(want))
    assert not wrong, wrong


# ---- the engine ---------------------------------------------------------------------------

def note(request, line):
    """A timing line, shown even under pytest -q."""
    TIMINGS.append(line)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print("\ncompose: " + line, flush=True)


@contextlib.contextmanager
def timed(request, what):
    t0 = time.monotonic()
    yield
    note(request, "%s: %.1f s" % (what, time.monotonic() - t0))


def docker(env, *args, timeout=120, check=True, input=None):
    r = subprocess.run(["docker"] + list(args), env=env, capture_output=True, text=True,
                       timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError("docker %s: %s%s" % (" ".join(args), r.stdout[-2000:], r.stderr[-3000:]))
    return r.stdout


def engine_answers(env):
    try:
        r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env,
                           capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


class Engine:
    def __init__(self):
        self.env = dict(os.environ)
        self.own = None          # the dockerd started here (Popen)
        self.lock = None

    def start(self, request):
        if engine_answers(self.env):
            note(request, "using the Docker engine that answers (%s)" %
                 self.env.get("DOCKER_HOST", "default socket"))
            return self
        for tool in ("dockerd", "docker"):
            if not shutil.which(tool):
                pytest.fail("%s is missing: scripts/install-deps --test installs docker.io" % tool,
                            pytrace=False)
        os.makedirs(ENGINE_DIR, exist_ok=True)
        os.makedirs(RUN_DIR, exist_ok=True)
        # One test run at a time uses this data root.
        self.lock = open(os.path.join(ENGINE_DIR, ".lock"), "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        sock = os.path.join(RUN_DIR, "docker.sock")
        self.env["DOCKER_HOST"] = "unix://" + sock
        self._stop_stale()
        with timed(request, "dockerd start"):
            log = open(os.path.join(ENGINE_DIR, "dockerd.log"), "ab")
            self.own = subprocess.Popen(
                ["dockerd", "--data-root", os.path.join(ENGINE_DIR, "data"),
                 "--exec-root", os.path.join(RUN_DIR, "exec"), "-H", "unix://" + sock,
                 "--pidfile", os.path.join(RUN_DIR, "docker.pid")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            wait_for(lambda: self.own.poll() is not None or engine_answers(self.env), timeout=90,
                     interval=0.3, what="dockerd to answer")
            assert self.own.poll() is None, "dockerd exited (%s): see %s/dockerd.log" % (
                self.own.returncode, ENGINE_DIR)
        self._remove_stale_projects()
        return self

    def _stop_stale(self):
        """A dockerd of a run of this test that was killed before it could
        stop it (its pid file names a live dockerd on our data root)."""
        try:
            with open(os.path.join(RUN_DIR, "docker.pid")) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            return
        if b"dockerd" in cmdline and ENGINE_DIR.encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not os.path.exists("/proc/%d" % pid), timeout=60, interval=0.2,
                     what="the stale dockerd %d to stop" % pid)

    def _remove_stale_projects(self):
        """Projects of killed test runs, which restart with the engine."""
        out = docker(self.env, "ps", "-a", "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}')
        stale = {}
        for line in out.splitlines():
            cid, _, proj = line.partition(" ")
            if proj.startswith("pwtest"):
                stale.setdefault(proj, []).append(cid)
        for proj, cids in stale.items():
            docker(self.env, "rm", "-f", "-v", *cids, check=False)
            for kind in ("network", "volume"):
                ids = docker(self.env, kind, "ls", "-q", "--filter",
                             "label=com.docker.compose.project=" + proj).split()
                if ids:
                    docker(self.env, kind, "rm", *ids, check=False)

    def stop(self):
        if self.own is not None:
            self.own.send_signal(signal.SIGTERM)
            try:
                self.own.wait(60)
            except subprocess.TimeoutExpired:
                self.own.kill()
                self.own.wait()
            self.own = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    # -- base images --
    def has_image(self, ref):
        return subprocess.run(["docker", "image", "inspect", ref], env=self.env, capture_output=True,
                              stdin=subprocess.DEVNULL).returncode == 0

    def label(self, ref):
        return docker(self.env, "image", "inspect", "--format",
                      '{{index .Config.Labels "%s"}}' % STAND_IN_LABEL, ref, check=False).strip()

    def pulled(self, ref):
        """A real user's engine: try the registry first (not ours: we know there is none)."""
        if self.own is not None:
            return False
        return subprocess.run(["docker", "pull", ref], env=self.env, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=600).returncode == 0

    def base_images(self, request):
        if not (self.has_image("debian:bookworm") and self.has_image("debian:bookworm-slim")):
            if not (self.pulled("debian:bookworm") and self.pulled("debian:bookworm-slim")):
                why = debroot.missing_tools()
                if why:
                    pytest.fail("cannot make the base image: " + why, pytrace=False)
                with timed(request, "base images debian:bookworm and -slim (debootstrap tarball, docker import)"):
                    self.import_minbase(request)
        dockerfile = os.path.join(ROOT, "tests", "docker", "redis", "Dockerfile")
        with open(dockerfile, "rb") as f:
            digest = "redis-" + __import__("hashlib").sha256(f.read()).hexdigest()[:16]
        have = self.has_image("redis:7")
        if (not have and not self.pulled("redis:7")) or (have and self.own is not None and
                                                           self.label("redis:7") != digest):
            with timed(request, "stand-in redis:7 (tests/docker/redis)"):
                docker(self.env, "build", "-q", "--label", "%s=%s" % (STAND_IN_LABEL, digest),
                       "-t", "redis:7", os.path.dirname(dockerfile), timeout=900)

    def import_minbase(self, request):
        """debroot's pristine root as an image, without the package lists
        debootstrap left (as Debian's images: apt-get update comes first)."""
        t0 = time.monotonic()
        tarball = debroot.minbase_tarball(log=lambda line: note(request, line))
        note(request, "the debootstrap tarball (made or cached): %.1f s" % (time.monotonic() - t0))
        p = subprocess.Popen(["docker", "import", "--change", 'CMD ["bash"]', "--change",
                              "LABEL %s=debootstrap-minbase" % STAND_IN_LABEL, "-", "debian:bookworm"],
                             env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        with tarfile.open(tarball, "r|") as src, tarfile.open(fileobj=p.stdin, mode="w|") as dst:
            for m in src:
                name = m.name.lstrip("./")
                if name.startswith("var/lib/apt/lists/") and m.isfile() and not name.endswith("/lock"):
                    continue
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        p.stdin.close()
        p.stdout.read()
        err = p.stderr.read()
        assert p.wait(300) == 0, err
        docker(self.env, "tag", "debian:bookworm", "debian:bookworm-slim")


# ---- the project ------------------------------------------------------------------------------

class AuthConn:
    """An HttpConn whose requests carry the publish token."""

    def __init__(self, conn, token):
        self.conn, self.token = conn, token

    async def request(self, method, path, body=b"", headers=None):
        h = dict(headers or {})
        h["Authorization"] = "Bearer " + self.token
        return await self.conn.request(method, path, body, h)

    def close(self):
        self.conn.close()


class TokenPublisher(C.Publisher):
    """clients.Publisher as a backend holding the publish token."""

    def __init__(self, *a, token, **kw):
        super().__init__(*a, **kw)
        self.token = token

    async def _publish(self, conn, i):
        return await super()._publish(AuthConn(conn, self.token), i)


class Project:
    def __init__(self, engine, cmd):
        self.engine, self.cmd = engine, cmd
        self.name = "pwtest" + uuid.uuid4().hex[:8]
        self.port = free_port()
        self.tag = "test-" + self.name
        self.token = secrets.token_hex(16)
        self.redis_password = secrets.token_hex(12)
        self.dir = tempfile.mkdtemp(prefix="pw-compose-")
        self.settings = {
            "PORT": "%s:%d" % (HOST, self.port),
            "PUSHWIRE_TAG": self.tag,
            "PW_PUBLISH_TOKEN": self.token,
            "REDIS_PASSWORD": self.redis_password,
            "REDIS_URL": "redis://:%s@redis:6379" % self.redis_password,
            "CHAT_TRUSTED": "127.0.0.0/8",
            "SHUTDOWN_TIMEOUT": "5s",
        }
        self.env = clean_env(dict(self.settings, DOCKER_HOST=engine.env.get("DOCKER_HOST", "")))
        if not self.env["DOCKER_HOST"]:
            del self.env["DOCKER_HOST"]
        self.nlog = 0

    def compose(self, *args, timeout=300, check=True):
        self.nlog += 1
        log = os.path.join(self.dir, "compose-%02d-%s.log" % (self.nlog, args[0]))
        with open(log, "w") as out:
            r = subprocess.run(self.cmd + ["-f", COMPOSE_FILE, "--project-directory", ROOT, "-p", self.name]
                               + list(args), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=timeout, cwd=ROOT)
        if check and r.returncode != 0:
            with open(log) as f:
                raise AssertionError("compose %s failed (%d):\n%s" % (" ".join(args), r.returncode,
                                                                        f.read()[-4000:]))
        return r.returncode

    def docker(self, *args, **kw):
        return docker(self.engine.env, *args, **kw)

    def image(self, svc):
        return "pushwire-%s:%s" % (svc, self.tag)

    # -- what runs --
    def containers(self, svc=None, all=False):
        args = ["ps", "-q", "--no-trunc", "--filter", "label=com.docker.compose.project=" + self.name]
        if svc:
            args += ["--filter", "label=com.docker.compose.service=" + svc]
        if all:
            args.append("-a")
        return self.docker(*args).split()

    def nginx(self):
        (cid,) = self.containers("nginx")
        return cid

    def addrs(self, svc, port):
        """ip:port of every running replica of svc."""
        out = set()
        for cid in self.containers(svc):
            ips = self.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                              cid).split()
            out |= {"%s:%d" % (ip, port) for ip in ips}
        return out

    def upstreams(self):
        """(workers, relays) in the running nginx's configuration; `down` servers left out."""
        conf = self.docker("exec", self.nginx(), "cat", "/run/pushwire/nginx.conf")
        res = []
        for up in ("pushwire_workers", "pushwire_relays"):
            block = conf.split("upstream %s {" % up, 1)[1].split("}", 1)[0]
            res.append({m.group(1) for m in re.finditer(r"^\s*server (\S+)(.*);$", block, re.M)
                        if "down" not in m.group(2)})
        return tuple(res)

    def found_by_nginx(self):
        return self.upstreams() == (self.addrs("worker", 9000), self.addrs("relay", 9100))

    def wait_found(self, timeout=30):
        wait_for(self.found_by_nginx, timeout=timeout, interval=0.3,
                 what="nginx to use exactly the running replicas")

    def metrics(self, cid, port):
        return parse_metrics(self.docker("exec", cid, "curl", "-fsS", "--max-time", "3",
                                         "http://127.0.0.1:%d/metrics" % port, timeout=20))

    def per_replica(self, svc, name):
        port = WORKER_METRICS if svc == "worker" else RELAY_METRICS
        return {cid: self.metrics(cid, port).get(name, 0) for cid in self.containers(svc)}

    def health(self):
        return {cid: self.docker("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                                 cid).strip() for cid in self.containers()}

    def healthz(self):
        st, _, body = http_request("GET", self.port, "/healthz")
        return st, json.loads(body)

    def nginx_processes(self):
        """The nginx container's processes (docker top: the host's ps)."""
        out = self.docker("top", self.nginx(), "-o", "pid,args")
        return [line.split(None, 1)[1] for line in out.splitlines()[1:] if line.strip()]

    def logs(self, cid):
        r = subprocess.run(["docker", "logs", cid], env=self.engine.env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        return r.stdout + r.stderr

    def all_logs(self):
        return "\n".join(self.logs(cid) for cid in self.containers(all=True))

    def leftovers(self):
        flt = "label=com.docker.compose.project=" + self.name
        left = {}
        for kind, args in (("containers", ["ps", "-aq", "--filter", flt]),
                           ("networks", ["network", "ls", "-q", "--filter", flt]),
                           ("volumes", ["volume", "ls", "-q", "--filter", flt])):
            ids = self.docker(*args).split()
            if ids:
                left[kind] = ids
        imgs = [self.image(s) for s in SERVICES if self.engine.has_image(self.image(s))]
        if imgs:
            left["images"] = imgs
        return left

    def remove(self):
        self.compose("down", "-v", "--remove-orphans", "-t", "20", check=False, timeout=180)
        for s in SERVICES:
            # --no-prune: the untagged layers are the next run's build cache.
            self.docker("rmi", "--no-prune", self.image(s), check=False)


def http_request(method, port, path, body=None, headers=None, timeout=30):
    import http.client
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


async def wait_slow(pred, timeout, interval=0.5):
    """C.wait_until for predicates that block (docker exec): run in a thread."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await asyncio.to_thread(pred):
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


@pytest.fixture(scope="module")
def project(request):
    if os.geteuid() != 0:
        pytest.skip("the compose test runs as root (it starts dockerd)")
    cmd = compose_command()
    if not cmd:
        pytest.fail("neither docker compose nor docker-compose is installed: "
                    "scripts/install-deps --test installs docker-compose", pytrace=False)
    C.raise_nofile()
    t0 = time.monotonic()
    engine = Engine()
    proj, left = None, {}

    def on_term(signum, frame):  # a SIGTERM to pytest still cleans up below
        raise KeyboardInterrupt("SIGTERM")
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        engine.start(request)
        engine.base_images(request)
        proj = Project(engine, cmd)
        note(request, "project %s with %s, port %d" % (proj.name, " ".join(cmd), proj.port))
        with timed(request, "images built (compose build)"):
            proj.compose("build", timeout=1500)
        yield proj
    finally:
        try:
            if proj is not None:
                with timed(request, "cleanup (down -v, image tags removed)"):
                    proj.remove()
                left = proj.leftovers()
                if not left:
                    shutil.rmtree(proj.dir, ignore_errors=True)
        finally:
            engine.stop()
            signal.signal(signal.SIGTERM, old_term)
            note(request, "total: %.1f s" % (time.monotonic() - t0))
    assert not left, "left behind by the project: %r (compose logs in %s)" % (left, proj.dir)


# ---- the images ------------------------------------------------------------------------------

def runtime_packages():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    m = re.search(r"FROM \S+ AS runtime\n(.*?)\n\n", text, re.S)
    assert m, "no runtime stage in the Dockerfile"
    return set(re.findall(r"\b(lib[a-z0-9.+-]+)\b", m.group(1)))


LIB_OWNERS = r'''
set -e
for b in "$@"; do ldd "$b"; done > /tmp/ldd.txt
if grep 'not found' /tmp/ldd.txt; then exit 3; fi
for lib in $(awk '/=>/ { print $3 }' /tmp/ldd.txt | sort -u); do
    real=$(readlink -f "$lib")
    for p in "$lib" "$real" "${real#/usr}" "/usr$lib"; do
        if dpkg -S "$p" 2>/dev/null; then break; fi
    done
done
'''


def test_images_link_only_what_the_runtime_stage_installs(project, request):
    """ldd inside the built images: nothing missing, and the packages owning
    the linked libraries are exactly the runtime stage's (libc6 aside)."""
    owners = set()
    for svc, binary in (("worker", "pushwire-worker"), ("relay", "pushwire-relay")):
        out = project.docker("run", "--rm", "--entrypoint", "sh", project.image(svc), "-c", LIB_OWNERS, "sh",
                             "/usr/local/bin/" + binary, timeout=120)
        owners |= {line.split(":")[0] for line in out.splitlines() if ": /" in line}
        r = subprocess.run(["docker", "run", "--rm", "--entrypoint", "dpkg", project.image(svc), "-s",
                            "libfcgi0ldbl"], env=project.engine.env, capture_output=True, text=True)
        assert r.returncode != 0, "%s image still installs libfcgi0ldbl" % svc
    owners.discard("libc6")
    assert owners == runtime_packages(), "linked: %r, installed by the runtime stage: %r" % (
        sorted(owners), sorted(runtime_packages()))


def test_redis_image_serves_the_network_without_a_password(project):
    """The Redis image without REDIS_PASSWORD answers clients from the
    compose network: protected mode is off (docker/redis-start), as in the
    official image, also when redis:7 is a Redis built with it on (the
    stand-in is Debian's). The project itself runs with a password."""
    project.compose("up", "-d", "--no-deps", "redis")   # (creates the project's network)
    net = project.docker("inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
                         project.containers("redis")[0]).split()[0]
    name = project.name + "-nopass"
    try:
        project.docker("run", "-d", "--name", name, "--network", net, "-e", "REDIS_PASSWORD=",
                       project.image("redis"))
        ip = project.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                            name).strip()

        def ping():
            return project.docker("run", "--rm", "--network", net, "--entrypoint", "redis-cli",
                                  project.image("redis"), "-h", ip, "ping", check=False).strip()
        answer = wait_for(ping, timeout=20, interval=0.3, what="the password-less Redis to answer")
        assert answer == "PONG", answer
    finally:
        project.docker("rm", "-f", "-v", name, check=False)


# ---- up, and every transport through the published port ---------------------------------------

def sse_first_event(port, channel, timeout=15):
    """Open an EventSource stream; returns (headers, the first data event)
    once one arrives."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.sendall(("GET /status?since=0&channel=%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
                   % channel).encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(rb"data: (\{.*?\})\n", buf)
            if m:
                head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
                return head, json.loads(m.group(1))
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        raise AssertionError("no event on the EventSource stream: %r" % buf[:500])
    finally:
        s.close()


def publish(project, content, channel, token=True):
    h = {"Content-Type": "application/x-www-form-urlencoded"}
    if token:
        h["Authorization"] = "Bearer " + project.token
    body = ("content=%s&channel=%s" % (content, channel)).encode()
    st, _, b = http_request("POST", project.port, "/chat", body, h)
    return st, json.loads(b)


def test_up_serves_every_transport(project, request):
    with timed(request, "up -d (until nginx uses the worker and the relay)"):
        project.compose("up", "-d")
        project.wait_found(60)
        wait_for(lambda: project.healthz()[0] == 200, timeout=30, interval=0.3, what="/healthz 200")
    st, doc = project.healthz()
    assert doc["workers"]["alive"] == 1 and doc["relays"]["alive"] == 1, doc
    st, h, page = http_request("GET", project.port, "/")
    assert st == 200 and b"<html" in page.lower()

    ch = unique_channel("up")
    got = {}

    def sse():
        got["sse"] = sse_first_event(project.port, ch)

    ws = wsraw.RawWS.open(project.port, path="/status?since=0&channel=" + ch)
    t = threading.Thread(target=sse, daemon=True)
    t.start()
    poller = {}

    def poll():
        poller["r"] = http_request("GET", project.port, "/status?since=0&timeout=20&channel=" + ch)
    pt = threading.Thread(target=poll, daemon=True)
    pt.start()
    wait_for(lambda: sum(project.per_replica("worker", "pushwire_held_longpolls").values()) >= 1,
             timeout=15, what="the held long-poll")
    time.sleep(0.5)  # the EventSource stream subscribed too
    st, doc = publish(project, "hello-compose", ch)
    assert st == 200 and doc["id"] == 1, doc
    frame = ws.recv_data(timeout=10)
    ws.close()
    assert json.loads(frame.payload)["content"] == "hello-compose"
    pt.join(20)
    t.join(20)
    st, h, body = poller["r"]
    assert st == 200 and json.loads(body)["messages"][0]["content"] == "hello-compose"
    head, ev = got["sse"]
    assert "text/event-stream" in head and ev["content"] == "hello-compose" and ev["id"] == 1
    st, h, body = http_request("GET", project.port, "/status?since=0&channel=" + ch)
    assert [m["content"] for m in json.loads(body)["messages"]] == ["hello-compose"]

    with timed(request, "every container healthy (health checks)"):
        wait_for(lambda: set(project.health().values()) == {"healthy"}, timeout=90, interval=1,
                 what="every container to be healthy: %r" % project.health())


def test_rate_limit_policy(project, request):
    """Anonymous publishers are limited per address (the test's connections
    come from the compose network's gateway, not trusted here); the token
    holder is not, nor is a trusted address (loopback of the nginx container)."""
    ch = unique_channel("rl")

    async def burst(n, token):
        async def one(k):
            conn = C.HttpConn(HOST, project.port)
            h = {"Content-Type": "application/x-www-form-urlencoded"}
            if token:
                h["Authorization"] = "Bearer " + project.token
            try:
                st, _, b = await conn.request("POST", "/chat", ("content=b%d&channel=%s" % (k, ch)).encode(), h)
                return st
            finally:
                conn.close()
        return await asyncio.gather(*(one(k) for k in range(n)))

    anon = run(burst(200, False), 60)
    assert set(anon) == {401, 429}, sorted(set(anon))   # the worker wants the token; nginx limits first
    assert anon.count(429) >= 50, anon.count(429)
    time.sleep(2.5)   # the anonymous bucket refills; the token holder is not counted anyway
    with_token = run(burst(300, True), 60)
    assert set(with_token) == {200}, sorted(set(with_token))
    out = project.docker("exec", project.nginx(), "sh", "-c",
                         "for i in $(seq 150); do curl -s -o /dev/null -w '%{http_code}\\n' "
                         "-d content=x http://127.0.0.1:8080/chat; done", timeout=120)
    assert set(out.split()) == {"401"}, sorted(set(out.split()))
    st, h, body = http_request("GET", project.port, "/status?since=0&timeout=0&channel=" + ch)
    assert json.loads(body)["id"] == 300


def test_no_secret_in_logs(project):
    text = project.all_logs()
    assert text.strip()
    for name, secret in (("REDIS_PASSWORD", project.redis_password), ("PW_PUBLISH_TOKEN", project.token)):
        assert secret not in text, "%s appears in the containers' logs" % name


# ---- scaling --------------------------------------------------------------------------------------

def scale(project, workers=3, relays=2, *extra):
    project.compose("up", "-d", "--scale", "worker=%d" % workers, "--scale", "relay=%d" % relays, *extra)


def test_scale_reaches_every_replica(project, request):
    with timed(request, "scale to 3 workers and 2 relays, found by nginx"):
        scale(project)
        wait_for(lambda: len(project.containers("worker")) == 3 and len(project.containers("relay")) == 2,
                 timeout=30, what="the replicas")
        project.wait_found()
    ch = unique_channel("sc")

    async def scenario():
        lps = [C.LongPollClient(HOST, project.port, ch, poll_timeout=30, name="lp%d" % k) for k in range(9)]
        wss = [C.WsClient(HOST, project.port, ch, name="ws%d" % k) for k in range(6)]
        tasks = await start_tasks(lps + wss)

        def spread():
            held = project.per_replica("worker", "pushwire_held_longpolls")
            ws = project.per_replica("relay", "pushwire_ws_clients")
            return held, ws
        def spread_ok():
            held, ws = spread()
            return all(v >= 1 for d in (held, ws) for v in d.values()) and sum(held.values()) >= 9
        ok = await wait_slow(spread_ok, 20)
        spread_seen = await asyncio.to_thread(spread)
        pub = TokenPublisher(HOST, project.port, ch, rate=20, tag="sc", token=project.token)
        await pub.run(count=20)
        await converge(lps + wss, pub, 20)
        await cancel(tasks)
        return ok, spread_seen, lps + wss, pub

    ok, seen, clients, pub = run(scenario(), 90)
    note(request, "held long-polls per worker %r, WebSockets per relay %r" % (
        sorted(seen[0].values()), sorted(seen[1].values())))
    assert ok, "not every replica got clients: %r" % (seen,)
    t = report("test_compose_scale", clients, pub)
    check(t, clients, pub)


# ---- a worker and a relay killed ----------------------------------------------------------------

def stream_scenario(project, ch, action, n_lp=8, n_ws=8, rate=20, after=60, limit=180):
    """Clients that resume with since/epoch, a publisher (with the token) at
    `rate`/s; action() runs in a thread once 40 messages are out, then
    `after` more are published. Returns (clients, publisher, action's value)."""
    async def scenario():
        lps = [C.LongPollClient(HOST, project.port, ch, poll_timeout=20, name="lp%d" % k) for k in range(n_lp)]
        wss = [C.WsClient(HOST, project.port, ch, name="ws%d" % k) for k in range(n_ws)]
        tasks = await start_tasks(lps + wss)
        pub = TokenPublisher(HOST, project.port, ch, rate=rate, tag=ch, token=project.token)
        ptask = asyncio.create_task(pub.run())
        assert await C.wait_until(lambda: len(pub.ids) >= 40, 30), "publishing does not start"
        value = await asyncio.to_thread(action)
        n = len(pub.ids)
        assert await C.wait_until(lambda: len(pub.ids) >= n + after, 90), \
            "publishing does not go on after the action (%d)" % len(pub.ids)
        pub.stop()
        await asyncio.wait_for(ptask, 60)
        await converge(lps + wss, pub, 40)
        await cancel(tasks)
        return lps + wss, pub, value
    return run(scenario(), limit)


def test_kill_a_worker_and_a_relay(project, request):
    """docker kill (SIGKILL) of a worker holding long-polls and a relay
    holding WebSockets, under a steady publish stream: the clients resume
    on the other replicas and get every message once, in order."""
    ch = unique_channel("kill")

    def kill():
        held = project.per_replica("worker", "pushwire_held_longpolls")
        ws = project.per_replica("relay", "pushwire_ws_clients")
        w = max(held, key=held.get)
        r = max(ws, key=ws.get)
        project.docker("kill", w, r)
        t0 = time.monotonic()
        project.wait_found(20)
        return held[w], ws[r], time.monotonic() - t0

    with timed(request, "docker kill of a worker and a relay under load"):
        clients, pub, (held, ws, found) = stream_scenario(project, ch, kill)
    note(request, "killed a worker holding %d long-polls and a relay holding %d WebSockets; "
         "nginx dropped them after %.1f s" % (held, ws, found))
    t = report("test_compose_kill_worker_and_relay", clients, pub)
    assert held > 0 and ws > 0, "the killed replicas held nothing: the test proved nothing"
    check(t, clients, pub)
    with timed(request, "killed replicas back (up -d --scale), found by nginx"):
        scale(project)
        project.wait_found()


# ---- containers recreated with new addresses -------------------------------------------------------

def test_recreated_replicas_are_found_without_a_reload(project, request):
    """`up -d --force-recreate` of every worker and relay: new containers,
    new addresses (Docker shuffles them), found by nginx by itself while
    clients keep receiving; nginx itself is never restarted and its old
    worker processes exit (SHUTDOWN_TIMEOUT=5s)."""
    ch = unique_channel("rec")
    nginx_id = project.nginx()
    started = project.docker("inspect", "-f", "{{.State.StartedAt}} {{.RestartCount}}", nginx_id).strip()
    before = (project.addrs("worker", 9000), project.addrs("relay", 9100))
    ids_before = set(project.containers("worker") + project.containers("relay"))

    def recreate():
        for attempt in range(3):
            t0 = time.monotonic()
            scale(project, 3, 2, "--force-recreate", "--no-deps", "worker", "relay")
            project.wait_found(30)
            after = (project.addrs("worker", 9000), project.addrs("relay", 9100))
            if after != before:
                return attempt + 1, after, time.monotonic() - t0
        return attempt + 1, after, time.monotonic() - t0

    with timed(request, "force-recreate of every worker and relay under load"):
        clients, pub, (tries, after, took) = stream_scenario(project, ch, recreate)
    note(request, "addresses %r -> %r (%d recreate(s)); nginx used the new ones %.1f s after the command "
         "began" % (sorted(before[0] | before[1]), sorted(after[0] | after[1]), tries, took))
    assert after != before, "Docker gave every container its old address back three times"
    assert not ids_before & set(project.containers("worker") + project.containers("relay"))
    t = report("test_compose_recreate", clients, pub)
    check(t, clients, pub)
    assert project.nginx() == nginx_id
    assert project.docker("inspect", "-f", "{{.State.StartedAt}} {{.RestartCount}}",
                          nginx_id).strip() == started, "nginx was restarted"
    # the reloads' old nginx workers are gone after SHUTDOWN_TIMEOUT (WebSockets included)
    with timed(request, "old nginx workers gone"):
        wait_for(lambda: not [p for p in project.nginx_processes() if "shutting down" in p], timeout=20,
                 interval=0.5, what="old nginx workers to exit: %r" % project.nginx_processes())
    procs = project.nginx_processes()
    assert sum("worker process" in p for p in procs) == 2, procs
    lines = [ln for ln in project.logs(nginx_id).splitlines() if "reloading nginx" in ln]
    assert lines, "nginx-start logged no change"


# ---- Redis restarted ------------------------------------------------------------------------------

def test_redis_restart(project, request):
    """`restart redis`: publishes get 503 + Retry-After meanwhile (retried
    with their Idempotency-Key), held clients wait, and everybody recovers;
    with appendfsync everysec the epoch changes, so each client is reset
    once and gets the retained history: nothing missing."""
    ch = unique_channel("rr")

    def restart():
        t0 = time.monotonic()
        project.compose("restart", "redis")
        return time.monotonic() - t0

    with timed(request, "Redis restart under load"):
        clients, pub, took = stream_scenario(project, ch, restart, n_lp=6, n_ws=6, rate=10, after=30)
    published = sorted(pub.content_by_id)
    assert not pub.failed and pub.crash is None and not pub.anomalies, (pub.failed, pub.crash, pub.anomalies)
    assert published == list(range(1, len(published) + 1)), "ids not 1..N across the restart"
    assert len(pub.epochs) == 2, "expected a new epoch after a restart with everysec: %r" % pub.epochs
    # A reset replaces what a client had with the retained history: what it
    # holds after its last reset must be every message, once, in order.
    after_reset = []
    for c in clients:
        assert c.crash is None, c.crash
        assert c.resets >= 1, "%s %s was not reset after the epoch changed" % (c.kind, c.name)
        assert not c.bad_errors, c.bad_errors
        cut = max(i for i in range(len(c.ids)) if i == 0 or c.ids[i] <= c.ids[i - 1])
        view = C.Recorder(ch, name=c.name)
        view.kind, view.ids, view.contents = c.kind, c.ids[cut:], c.contents[cut:]
        after_reset.append(view)
        assert view.ids == published, "%s %s after its reset: %r" % (c.kind, c.name, view.ids)
    t = report("test_compose_redis_restart (what clients hold after their reset)", after_reset, pub)
    assert t["lost"] == 0 and t["duplicated"] == 0 and t["bad_content"] == 0, t
    note(request, "restart redis took %.1f s; resets per client %r; publish statuses %r" % (
        took, sorted({c.resets for c in clients}), dict(pub.statuses)))


# ---- down -----------------------------------------------------------------------------------------

def test_down_answers_held_polls_and_closes_websockets(project, request):
    """`down`: nginx, workers and relays stop at the same time; workers
    answer held long-polls (200, no message) and end EventSource streams,
    relays close WebSockets with 1001, and nginx relays all of it before it
    exits."""
    ch = unique_channel("down")
    project.wait_found()
    res = {}

    def poll(k):
        try:
            res["poll%d" % k] = http_request("GET", project.port, "/status?timeout=100&channel=" + ch, timeout=60)
        except Exception as e:
            res["poll%d" % k] = repr(e)

    def sse(k):
        try:
            res["sse%d" % k] = http_request("GET", project.port, "/status?channel=" + ch,
                                            headers={"Accept": "text/event-stream"}, timeout=60)
        except Exception as e:
            res["sse%d" % k] = repr(e)

    def ws(k):
        try:
            w = wsraw.RawWS.open(project.port, path="/status?channel=" + ch, timeout=60)
            res["ws%d-open" % k] = True
            try:
                code, reason, _ = w.read_close(timeout=60)
                res["ws%d" % k] = code
            finally:
                w.close()
        except Exception as e:
            res["ws%d" % k] = repr(e)

    threads = [threading.Thread(target=f, args=(k,), daemon=True)
               for f, n in ((poll, 6), (sse, 2), (ws, 4)) for k in range(n)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(project.per_replica("worker", "pushwire_held_longpolls").values()) >= 6 and
             sum(project.per_replica("relay", "pushwire_ws_clients").values()) >= 4,
             timeout=20, interval=0.3, what="6 held polls and 4 WebSockets")
    time.sleep(0.5)
    t0 = time.monotonic()
    project.compose("down", timeout=120)
    took = time.monotonic() - t0
    for t in threads:
        t.join(30)
    note(request, "down took %.1f s" % took)
    wrong = {}
    for k, v in sorted(res.items()):
        if k.startswith("poll"):
            ok = isinstance(v, tuple) and v[0] == 200 and json.loads(v[2])["messages"] == []
        elif k.startswith("sse"):
            ok = isinstance(v, tuple) and v[0] == 200 and "text/event-stream" in v[1].get("content-type", "")
        elif k.endswith("-open"):
            continue
        else:
            ok = v == 1001
        if not ok:
            wrong[k] = v
    assert len([k for k in res if not k.endswith("-open")]) == 12, res
    assert not wrong, "not answered or closed as promised on down: %r" % wrong
    assert took < 30, "down took %.1f s" % took
    assert not project.containers(all=True), "containers left after down"


# ---- the "sentinel" profile -------------------------------------------------------------------

def redis_cli(project, svc, *args, port=6379):
    (cid,) = project.containers(svc)
    return project.docker("exec", "-e", "REDISCLI_AUTH=" + project.redis_password, cid,
                          "redis-cli", "-p", str(port), *args)


def failover_scenario(project, ch, failover, label):
    """stream_scenario around a failover of Redis: ids 1..N across it, at
    most one epoch change, and every client, after its last reset, holding
    every message once. Returns (clients, publisher, failover's value)."""
    clients, pub, took = stream_scenario(project, ch, failover, n_lp=4, n_ws=4, rate=10, after=30)
    published = sorted(pub.content_by_id)
    assert not pub.failed and pub.crash is None and not pub.anomalies, (pub.failed, pub.crash, pub.anomalies)
    assert published == list(range(1, len(published) + 1)), "ids not 1..N across the failover"
    assert len(pub.epochs) in (1, 2), pub.epochs
    after_reset = []
    for c in clients:
        assert c.crash is None and not c.bad_errors, (c.crash, c.bad_errors)
        cut = max(i for i in range(len(c.ids)) if i == 0 or c.ids[i] <= c.ids[i - 1])
        view = C.Recorder(ch, name=c.name)
        view.kind, view.ids, view.contents = c.kind, c.ids[cut:], c.contents[cut:]
        after_reset.append(view)
        assert view.ids == published, "%s %s after its last reset: %r" % (c.kind, c.name, view.ids[:5])
    t = report(label + " (what clients hold after their last reset)", after_reset, pub)
    assert t["lost"] == 0 and t["duplicated"] == 0 and t["bad_content"] == 0, t
    return clients, pub, took


def test_sentinel_profile_fails_over(project, request):
    """docs/DEPLOY.md's Sentinel example as written: COMPOSE_PROFILES=sentinel
    and a redis+sentinel:// URL, on a fresh `up` (after the down above).
    `docker kill` of the master under load: the sentinels promote
    redis-replica, every process follows, publishing goes on with ids
    1..N and clients lose nothing (with appendfsync everysec the epoch may
    change: then each client is reset once and holds every message after
    it); the old master comes back as a replica."""
    pw = project.redis_password
    project.env.update({
        "COMPOSE_PROFILES": "sentinel",
        "REDIS_URL": "redis+sentinel://:%s@sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"
                     "/pushwire?sentinel_password=%s" % (pw, pw),
        "SENTINEL_DOWN_AFTER": "2000",
    })
    with timed(request, "up with the sentinel profile"):
        project.compose("up", "-d", timeout=300)
    wait_for(lambda: "master_link_status:up" in redis_cli(project, "redis-replica", "INFO", "replication"),
             timeout=60, interval=0.5, what="the replica in sync")
    wait_for(lambda: redis_cli(project, "sentinel-1", "SENTINEL", "get-master-addr-by-name", "pushwire",
                               port=26379).split()[:1] == ["redis"],
             timeout=60, interval=0.5, what="the sentinels to watch redis")
    wait_for(lambda: http_request("GET", project.port, "/healthz")[0] == 200, timeout=60, interval=0.5,
             what="/healthz on Sentinel")
    ch = unique_channel("sent")
    (master,) = project.containers("redis")

    def failover():
        t0 = time.monotonic()
        project.docker("kill", master)
        wait_for(lambda: redis_cli(project, "sentinel-1", "SENTINEL", "get-master-addr-by-name",
                                   "pushwire", port=26379).split()[:1] == ["redis-replica"],
                 timeout=60, interval=0.2, what="the failover to redis-replica")
        return time.monotonic() - t0

    with timed(request, "failover under load"):
        clients, pub, took = failover_scenario(project, ch, failover, "test_compose_sentinel_failover")
    # The old master returns (restart policy aside, `start` it) as a replica.
    project.docker("start", master)
    wait_for(lambda: "role:slave" in redis_cli(project, "redis", "INFO", "replication"),
             timeout=60, interval=0.5, what="the old master to rejoin as a replica")
    note(request, "failover took %.1f s; epochs %d; resets per client %r; publish statuses %r" % (
        took, len(pub.epochs), sorted({c.resets for c in clients}), dict(pub.statuses)))


# ---- the "cluster" profile --------------------------------------------------------------------

def cluster_master_of(project, key):
    """The compose service (cluster-N) serving key's slot, by CLUSTER SLOTS."""
    for svc in ("cluster-%d" % i for i in range(1, 7)):
        try:  # (any live node answers both)
            slot = int(redis_cli(project, svc, "CLUSTER", "KEYSLOT", key).strip())
            out = redis_cli(project, svc, "CLUSTER", "SLOTS").split()
        except (subprocess.CalledProcessError, ValueError):
            continue
        # Flattened rows: start end host port id [host port id]...; the
        # first host after a range is its master.
        for i in range(len(out) - 2):
            if out[i].isdigit() and out[i + 1].isdigit() and out[i + 2].startswith("cluster-"):
                if int(out[i]) <= slot <= int(out[i + 1]):
                    return out[i + 2]
        return None
    return None


def test_cluster_profile_fails_over_and_survives_down_up(project, request):
    """docs/DEPLOY.md's Cluster example as written: COMPOSE_PROFILES=cluster
    and a redis+cluster:// URL, after the Sentinel profile is taken down.
    The six nodes create the cluster by themselves; `docker kill` of the
    master serving a channel under load: its replica takes over, publishing
    goes on with ids 1..N and clients lose nothing (the epoch may change:
    each client then is reset once and holds every message after it); the
    killed node rejoins as a replica; `down` and `up` again (new container
    addresses) find the same cluster and its data."""
    project.compose("down", "-t", "20", timeout=180)
    pw = project.redis_password
    project.env.update({
        "COMPOSE_PROFILES": "cluster",
        "REDIS_URL": "redis+cluster://:%s@cluster-1:6379,cluster-2:6379,cluster-3:6379" % pw,
        "CLUSTER_NODE_TIMEOUT": "2000",
    })
    with timed(request, "up with the cluster profile"):
        project.compose("up", "-d", timeout=300)
    wait_for(lambda: "cluster_state:ok" in redis_cli(project, "cluster-1", "CLUSTER", "INFO"),
             timeout=90, interval=0.5, what="the cluster to be created")
    wait_for(lambda: http_request("GET", project.port, "/healthz")[0] == 200, timeout=60, interval=0.5,
             what="/healthz on the cluster")
    ch = unique_channel("clus")
    svc = cluster_master_of(project, "pw:{%s}:ch" % ch)
    assert svc, "no master for %s" % ch
    (victim,) = project.containers(svc)

    def failover():
        t0 = time.monotonic()
        project.docker("kill", victim)
        try:
            wait_for(lambda: cluster_master_of(project, "pw:{%s}:ch" % ch) not in (None, svc),
                     timeout=60, interval=0.2, what="the failover away from %s" % svc)
        except AssertionError:
            live = [n for n in ("cluster-%d" % i for i in range(1, 7)) if n != svc]
            raise AssertionError("no failover away from %s; %s says:\n%s\n%s" % (
                svc, live[0], redis_cli(project, live[0], "CLUSTER", "NODES"),
                redis_cli(project, live[0], "CLUSTER", "SLOTS")))
        return time.monotonic() - t0

    with timed(request, "cluster failover under load"):
        clients, pub, took = failover_scenario(project, ch, failover, "test_compose_cluster_failover")
    published = sorted(pub.content_by_id)
    project.docker("start", victim)
    wait_for(lambda: "role:slave" in redis_cli(project, svc, "INFO", "replication"),
             timeout=60, interval=0.5, what="%s to rejoin as a replica" % svc)
    note(request, "cluster failover took %.1f s; epochs %d; resets per client %r" % (
        took, len(pub.epochs), sorted({c.resets for c in clients})))
    # down and up: the volumes keep nodes.conf; the nodes find each other
    # under their new addresses (docker/cluster-start) and keep the data.
    with timed(request, "cluster down and up"):
        project.compose("down", "-t", "20", timeout=180)
        project.compose("up", "-d", timeout=300)
    wait_for(lambda: all("cluster_state:ok" in redis_cli(project, "cluster-%d" % i, "CLUSTER", "INFO")
                         for i in range(1, 7)), timeout=90, interval=0.5,
             what="the cluster to be ok after down and up")
    wait_for(lambda: http_request("GET", project.port, "/healthz")[0] == 200, timeout=60, interval=0.5,
             what="/healthz after down and up")
    st, _, body = http_request("GET", project.port, "/status?since=0&channel=" + ch)
    doc = json.loads(body)
    assert st == 200 and [m["id"] for m in doc["messages"]][-1] == published[-1], doc
