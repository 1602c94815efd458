"""The README's two commands, run as a new user runs them, on a pristine
Debian 12 root (debootstrap minbase, as a fresh machine or a container
image: no compiler, no make, no nginx, no package lists, the policy-rc.d
that Debian images ship).

* The project is copied in as a user's clone has it: the files git lists
  in this working tree (uncommitted ones included), no build outputs.
* `make run` (after the one step the README's Quick start asks for first:
  getting make itself) prints its URL on its first attempt, serves a
  publish, a poll and a WebSocket, and SIGTERM to the make process stops
  everything: no process left in the root, no socket file left. As root,
  and as a user with sudo (the README's "root or sudo").
* In a second pristine root, the first step of `make test`,
  `scripts/install-deps --test`, succeeds the first time (a user may well
  run `make test` first), and `make SAN=1 unit` and the fuzz targets
  (`scripts/run-fuzz 1`) build and pass there. (Not the integration tests:
  they include this one.)

Repeated runs are fast: the debootstrap tarball is cached (debroot) and so
are the downloaded .deb files (PW_ROOT_CACHE/apt-archives, bind-mounted
onto the root's /var/cache/apt/archives); what is installed in a root is
always fresh. PW_CLEANROOM_PATCH=FILE applies a patch (-p1) to the copy in
the root, to check that the test catches a regression without touching the
working tree. Needs root; takes a few minutes (more on a cold cache).
"""
import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.request

import pytest

import debroot
from stack import BAD_LOG, ROOT as REPO, free_port

CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
APT_CACHE = os.path.join(debroot.CACHE, "apt-archives")
TMP = os.environ.get("PW_CLEANROOM_TMP", "/var/tmp")
LOGS = os.path.join(tempfile.gettempdir(), "pw-cleanroom-logs")
PROJECT = "/root/pushwire"
# What a root login on a new machine has; DEBIAN_FRONTEND is not set (a
# user does not set it; install-deps sets it for its own apt-get).
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
# A user's login on Debian: /etc/profile's PATH for users has no sbin.
USER, UID = "dev", 4242
USER_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games",
    "HOME": "/home/" + USER,
    "LANG": "C.UTF-8",
    "USER": USER,
    "LOGNAME": USER,
}
# What the README's Quick start tells a user to run before `make run` on a
# minimal system or container, where make itself is missing (as root;
# `sudo` otherwise).
GET_MAKE = "apt-get update && apt-get install -y make"

URL_LINE = re.compile(r"pushwire is running: (http://\S+)")

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: debootstrap, chroot and mounts")


def note(capsys, line):
    """A timing line, shown even without -s (make test runs pytest -q)."""
    with capsys.disabled():
        print("\ncleanroom: " + line, flush=True)


def timed(capsys, what, fn, *args, **kw):
    t0 = time.monotonic()
    result = fn(*args, **kw)
    note(capsys, "%s: %.1f s" % (what, time.monotonic() - t0))
    return result


# ---- the README ---------------------------------------------------------------

def quick_start_commands():
    """The command lines of the README's Quick start block, comments off."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    cmds = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            cmds.append(line)
    return cmds


def test_readme_quick_start_gets_make_first():
    """A fresh minimal Debian (or a Debian container image) has no make: the
    Quick start must say how to get it before `make run`, with the commands
    this test runs (GET_MAKE; `sudo` optional)."""
    cmds = quick_start_commands()
    assert "make run" in cmds, cmds
    before = " && ".join(c.replace("sudo ", "") for c in cmds[:cmds.index("make run")])
    assert "apt-get update" in before and re.search(r"apt-get install( -y)? make\b", before), (
        "the README's Quick start runs `make run` first, but a minimal Debian 12 "
        "has no make: it should start with `%s` (sudo if not root); it lists %r"
        % (GET_MAKE, cmds))


# ---- a pristine root ------------------------------------------------------------

def project_files():
    """What a clone of this working tree has: tracked and untracked files
    that are not ignored (no build/, run/, node_modules)."""
    out = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    files = sorted({f.decode() for f in out.split(b"\0") if f})
    assert files and "Makefile" in files and "README.md" in files
    bad = [f for f in files if f.startswith(("build/", "run/")) or "node_modules/" in f]
    assert not bad, "build outputs would be copied: %r" % bad[:5]
    return files


def copy_project(root):
    dest = root + PROJECT
    os.makedirs(dest)
    for rel in project_files():
        src = os.path.join(REPO, rel)
        if not os.path.lexists(src):  # deleted in the working tree
            continue
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isfile(src):
            shutil.copy2(src, dst)
    patch = os.environ.get("PW_CLEANROOM_PATCH")
    if patch:
        subprocess.run(["patch", "-p1", "-d", dest, "-i", os.path.abspath(patch)], check=True)
    return dest


def procs_in(root):
    """{pid: command line} of every process whose root directory is root."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/root" % pid) != root:
                continue
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found


def kill_procs_in(root):
    """SIGKILL, by PID, whatever still runs in root; what was found."""
    left = procs_in(root)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while procs_in(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@contextlib.contextmanager
def pristine_root(capsys, name):
    """A fresh root with the project in it, mounted (/proc, /sys, /dev, DNS,
    the shared .deb cache), for the block; everything killed, unmounted and
    deleted after, even on failure. Yields the root's real path."""
    t0 = time.monotonic()
    had_tarball = os.path.exists(os.path.join(debroot.CACHE, "%s-minbase.tar" % debroot.SUITE))
    tarball = debroot.minbase_tarball(log=lambda m: note(capsys, m))
    if not had_tarball:
        note(capsys, "debootstrap (not cached): %.1f s" % (time.monotonic() - t0))
    os.makedirs(TMP, exist_ok=True)
    work = os.path.realpath(tempfile.mkdtemp(prefix="pw-cleanroom-%s-" % name, dir=TMP))
    root = os.path.join(work, "root")
    archives = os.path.join(root, "var/cache/apt/archives")
    os.makedirs(os.path.join(APT_CACHE, "partial"), exist_ok=True)
    # One user of the shared .deb cache at a time (apt locks it, and a
    # second apt-get would fail rather than wait).
    lock = open(APT_CACHE + ".lock", "w")
    try:
        t1 = time.monotonic()
        debroot.fresh_root(root, log=lambda m: note(capsys, m))
        note(capsys, "%s: unpack %s: %.1f s" % (name, os.path.basename(tarball),
                                                time.monotonic() - t1))
        copy_project(root)
        fcntl.flock(lock, fcntl.LOCK_EX)
        with debroot.mounted(root):
            subprocess.run(["mount", "--bind", APT_CACHE, archives], check=True)
            try:
                yield root
            finally:
                left = kill_procs_in(root)
                save_logs(root, name)
                subprocess.run(["umount", "-l", archives], check=False)
                if left:
                    print("cleanroom: killed what was left in the root: %r" % left)
    finally:
        lock.close()
        debroot.remove_root(root)  # refuses while anything is mounted in it
        shutil.rmtree(work, ignore_errors=True)


def chroot_argv(root, script, cwd=PROJECT, user=None):
    """sh -c script in cwd in the root, as root or as the uid user (with
    its own group; numeric: a name could resolve on the host)."""
    who = ["--userspec=%d:%d" % (user, user), "--groups=%d" % user] if user else []
    return [CHROOT] + who + [root, "/bin/sh", "-c", "cd %s && %s" % (cwd, script)]


def in_root(root, script, log, timeout, env=ENV, cwd=PROJECT, user=None):
    """Run script in the root with no stdin and env (a minimal one), output
    appended to log. Returns the exit status."""
    with open(log, "ab") as out:
        p = subprocess.Popen(chroot_argv(root, script, cwd, user), stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError("%r took more than %d s; see %s" % (script, timeout, log))


def tail(path, n=60):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def logs_of(name):
    return os.path.join(LOGS, name)


def save_logs(root, name):
    """The logs of the commands run in root (and of the stack, under run/),
    kept after the root is gone, in LOGS/name."""
    dest = logs_of(name)
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    for d, _, names in list(os.walk(root + "/root")) + list(os.walk(root + "/home")):
        if "/node_modules" in d:
            continue
        for n in names:
            if n.endswith((".log", ".log.2")):
                src = os.path.join(d, n)
                flat = os.path.relpath(src, root).replace("/", "_")
                with contextlib.suppress(OSError):
                    shutil.copyfile(src, os.path.join(dest, flat))


def get_make(capsys, root, name, sudo=False, **kw):
    """The Quick start's first step (as root, or with sudo)."""
    cmd = GET_MAKE.replace("apt-get", "sudo apt-get") if sudo else GET_MAKE
    log = root + "/root/get-make.log"
    rc = timed(capsys, "%s: %s" % (name, cmd), in_root, root, cmd, log, 600, **kw)
    assert rc == 0, "%s failed (%d):\n%s" % (cmd, rc, tail(log))


# ---- make run -----------------------------------------------------------------------

def http(method, url, data=None, timeout=10):
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


async def ws_first_message(url):
    import websockets
    async with websockets.connect(url, open_timeout=10) as ws:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


def socket_files(path):
    found = []
    for d, _, names in os.walk(path):
        for n in names:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(os.path.join(d, n)).st_mode):
                    found.append(os.path.join(d, n))
    return found


class MakeRun:
    """`make run` in cwd in the root, as a process of its own (its own
    process group, as a shell job), output in log."""

    def __init__(self, root, name, port, log, env=ENV, cwd=PROJECT, user=None):
        self.root, self.name, self.port, self.log, self.cwd = root, name, port, log, cwd
        self.t0 = time.monotonic()
        with open(log, "ab") as out:
            self.p = subprocess.Popen(chroot_argv(root, "exec make run", cwd, user),
                                      stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env=dict(env, PORT=str(port)),
                                      start_new_session=True)

    def output(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_url(self, timeout):
        """The URL it prints; fails if it exits or takes longer first."""
        deadline = self.t0 + timeout
        while True:
            m = URL_LINE.search(self.output())
            if m:
                url = m.group(1)
                assert url == "http://127.0.0.1:%d/" % self.port, url
                return url, time.monotonic() - self.t0
            if self.p.poll() is not None:
                pytest.fail("make run exited (%s) before printing its URL (logs: %s):\n%s"
                            % (self.p.returncode, logs_of(self.name), tail(self.log)))
            if time.monotonic() > deadline:
                pytest.fail("make run printed no URL within %d s:\n%s" % (timeout, tail(self.log)))
            time.sleep(0.2)

    def stop(self, capsys, sig, group):
        """sig to make (or to its process group: Ctrl-C in a terminal): it
        exits within 20 s, leaving no process in the root, no socket file
        and no alert in the logs."""
        t1 = time.monotonic()
        if group:
            os.killpg(self.p.pid, sig)
        else:
            os.kill(self.p.pid, sig)
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("make run did not exit within 20 s of %s:\n%s"
                        % (signal.Signals(sig).name, tail(self.log)))
        note(capsys, "%s: %s to make%s until it exited: %.1f s (status %s)"
             % (self.name, signal.Signals(sig).name, "'s process group" if group else "",
                time.monotonic() - t1, self.p.returncode))
        left = procs_in(self.root)
        assert not left, "left running in the root after %s to make: %r" % (
            signal.Signals(sig).name, left)
        run_dir = self.root + self.cwd + "/run/%d" % self.port
        assert os.path.isdir(run_dir), os.listdir(self.root + self.cwd)
        assert not socket_files(run_dir), socket_files(run_dir)
        bad = []
        for n in sorted(os.listdir(run_dir)):
            if n.endswith(".log"):
                with open(os.path.join(run_dir, n), errors="replace") as f:
                    bad += ["%s: %s" % (n, line.strip()) for line in f if BAD_LOG.search(line)]
        assert not bad, bad

    def kill(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait()


def make_run_first_time(capsys, root, name, again=False, **kw):
    """The first `make run`: its URL on the first attempt (it installs and
    builds), a publish, a poll and a WebSocket through it; SIGTERM to make
    stops it all. again: then a second `make run` (nothing to install or
    build) that still has the message (Redis is append-only) and stops on
    Ctrl-C (SIGINT to its process group)."""
    port = free_port()
    run = MakeRun(root, name, port, root + "/root/make-run.log", **kw)
    try:
        url, took = run.wait_url(900)
        note(capsys, "%s: first make run until its URL (installs, builds, starts): %.1f s"
             % (name, took))
        assert "install-deps: installing:" in run.output(), "make run installed nothing?"

        status, body = http("POST", url + "chat", b"content=hi")
        assert status == 200 and isinstance(body.get("id"), int), body
        status, polled = http("GET", url + "status?since=0&timeout=0")
        assert status == 200, polled
        assert [(m["id"], m["content"]) for m in polled["messages"]] == [(body["id"], "hi")], polled
        frame = asyncio.run(ws_first_message("ws://%sstatus?since=0" % url[len("http://"):]))
        assert frame.get("id") == body["id"] and frame.get("content") == "hi", frame
        run.stop(capsys, signal.SIGTERM, group=False)
    finally:
        run.kill()
    if not again:
        return
    run = MakeRun(root, name, port, root + "/root/make-run-2.log", **kw)
    try:
        url, took = run.wait_url(120)
        note(capsys, "%s: second make run until its URL: %.1f s" % (name, took))
        assert "installing" not in run.output(), tail(run.log)
        status, polled = http("GET", url + "status?since=0&timeout=0")
        assert [(m["id"], m["content"]) for m in polled["messages"]] == [(body["id"], "hi")], polled
        run.stop(capsys, signal.SIGINT, group=True)
    finally:
        run.kill()


@needs_root
def test_make_run_works_the_first_time(capsys):
    with pristine_root(capsys, "run") as root:
        get_make(capsys, root, "run")
        make_run_first_time(capsys, root, "run", again=True)


@needs_root
def test_make_run_works_the_first_time_for_a_sudo_user(capsys):
    """The README's "root or sudo": a user whose PATH is Debian's default
    for users (no /usr/sbin), with sudo rights, in a clone of their own."""
    with pristine_root(capsys, "sudo") as root:
        setup = ("apt-get update -q && apt-get install -y -q sudo"
                 " && useradd -m -s /bin/bash -u {uid} -U {u}"
                 " && echo '{u} ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/{u}"
                 " && mv {p} /home/{u}/ && chown -R {u}:{u} /home/{u}/pushwire"
                 ).format(u=USER, uid=UID, p=PROJECT)
        log = root + "/root/machine-setup.log"
        assert in_root(root, setup, log, 600, cwd="/") == 0, tail(log)
        home = "/home/%s/pushwire" % USER
        get_make(capsys, root, "sudo", sudo=True, env=USER_ENV, cwd=home, user=UID)
        make_run_first_time(capsys, root, "sudo", env=USER_ENV, cwd=home, user=UID)


# ---- make test's install step and the unit tests -------------------------------------

@needs_root
def test_install_deps_for_tests_works_the_first_time(capsys):
    with pristine_root(capsys, "test") as root:
        policy = root + "/usr/sbin/policy-rc.d"
        with open(policy) as f:
            image_policy = f.read()
        get_make(capsys, root, "test")
        log = root + "/root/install-deps.log"
        rc = timed(capsys, "test: first scripts/install-deps --test", in_root, root,
                   "scripts/install-deps --test", log, 1200)
        assert rc == 0, "scripts/install-deps --test failed the first time (%d; logs: %s):\n%s" % (
            rc, logs_of("test"), tail(log))
        # The image's policy-rc.d is its own: left as it was. No service
        # was started by a package script.
        with open(policy) as f:
            assert f.read() == image_policy
        assert not procs_in(root), procs_in(root)
        # Everything is there now: a second run installs nothing.
        rc = in_root(root, "scripts/install-deps --test", log + ".2", 120)
        assert rc == 0 and "installing" not in tail(log + ".2"), tail(log + ".2")

        log = root + "/root/unit.log"
        rc = timed(capsys, "test: make SAN=1 unit (build and run)", in_root, root,
                   "make SAN=1 unit", log, 900)
        assert rc == 0, "make SAN=1 unit failed (%d; logs: %s):\n%s" % (
            rc, logs_of("test"), tail(log))
        assert "== build/asan/tests/" in tail(log, 10000)

        # The last step of make test: clang's libFuzzer and sanitizer
        # runtimes are there (one second per target is enough for that).
        log = root + "/root/fuzz.log"
        rc = timed(capsys, "test: scripts/run-fuzz 1 (build and run)", in_root, root,
                   "scripts/run-fuzz 1", log, 600)
        assert rc == 0, "scripts/run-fuzz 1 failed (%d; logs: %s):\n%s" % (
            rc, logs_of("test"), tail(log))
