"""The page (html/index.html) in headless Chromium against a real stack.

The browser side lives in tests/browser/page.test.mjs (npm playwright-core
driving Debian's /usr/bin/chromium; nothing is downloaded but the npm
package). One Node process is started per session; each test sends it a
scenario to run against a stack's URL. While a scenario runs, the Node side
asks this side for what only the harness can do (publish through
stack.publish, stop/start the relay or Redis) with JSON lines on its stdin
and stdout; see the protocol at the top of page.test.mjs.
"""
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time

import pytest

from stack import Stack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
SCRIPT = os.path.join(BROWSER_DIR, "page.test.mjs")
CHROMIUM = os.environ.get("PW_CHROMIUM", "/usr/bin/chromium")


def _npm_ready():
    """node_modules holds the playwright-core version package-lock.json pins."""
    try:
        with open(os.path.join(BROWSER_DIR, "package-lock.json")) as f:
            want = json.load(f)["packages"]["node_modules/playwright-core"]["version"]
        with open(os.path.join(BROWSER_DIR, "node_modules", "playwright-core", "package.json")) as f:
            have = json.load(f)["version"]
        return want == have
    except (OSError, KeyError, ValueError):
        return False


def _ensure_tools():
    missing = [t for t in ("node", "npm") if not shutil.which(t)]
    if missing:
        pytest.fail("the browser tests need %s: apt-get install -y nodejs npm" % " and ".join(missing),
                    pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("the browser tests need Chromium at %s: apt-get install -y chromium "
                    "(or set PW_CHROMIUM)" % CHROMIUM, pytrace=False)
    if _npm_ready():
        return
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    try:
        out = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, env=env,
                             capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("`npm ci` in tests/browser did not finish in 300 s (is the npm registry "
                    "reachable?)", pytrace=False)
    if out.returncode != 0 or not _npm_ready():
        pytest.fail("`npm ci --no-audit --no-fund` in tests/browser failed (exit %d); the browser "
                    "tests need the playwright-core package pinned there.\n%s\n%s"
                    % (out.returncode, out.stdout[-3000:], out.stderr[-3000:]), pytrace=False)


class Driver:
    """The Node process that holds the browser; runs one scenario at a time.

    A scenario that times out or breaks the protocol leaves the process in an
    unknown state: it is then stopped (by its PID, with its process group)
    and the next scenario starts a new one."""

    script = SCRIPT  # the Node side (bridge.mjs's protocol)

    def __init__(self):
        self.p = None
        self.stderr_lines = []
        self._start()

    def _start(self):
        self.lines = queue.Queue()
        env = dict(os.environ, PW_CHROMIUM=CHROMIUM)
        # Its own process group: if it has to be killed, its Chromium goes too.
        self.p = subprocess.Popen(["node", self.script, "--serve"], cwd=ROOT, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1,
                                  start_new_session=True)
        threading.Thread(target=self._pump, args=(self.p.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.p.stderr, self._err), daemon=True).start()
        try:
            msg = self._next(90, "the browser to start")
        except AssertionError:
            self.kill()
            raise
        if msg.get("type") != "ready":
            self.kill()
            pytest.fail("browser driver did not start: %r\n%s" % (msg, self.log_tail()), pytrace=False)
        self.chromium = msg.get("chromium")

    @staticmethod
    def _pump(stream, put):
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def _err(self, line):
        if line is not None:
            self.stderr_lines.append(line)

    def log_tail(self, n=60):
        return "\n".join(self.stderr_lines[-n:])

    def _next(self, timeout, what):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no answer from the browser driver within %ds while waiting for "
                                 "%s\n%s" % (timeout, what, self.log_tail()))
        if line is None:
            time.sleep(0.2)
            raise AssertionError("the browser driver exited (status %r) while waiting for %s\n%s"
                                 % (self.p.poll(), what, self.log_tail()))
        try:
            return json.loads(line)
        except ValueError:
            raise AssertionError("browser driver wrote a non-protocol line: %r" % line)

    def _send(self, obj):
        self.p.stdin.write(json.dumps(obj) + "\n")
        self.p.stdin.flush()

    def run(self, scenario, stack, timeout=120, **args):
        """Run one scenario against stack; returns its details or fails the test."""
        if self.p is None or self.p.poll() is not None:
            self._start()
        self.stderr_lines.append("---- %s %r" % (scenario, args))
        try:
            return self._run(scenario, stack, timeout, args)
        except AssertionError:
            self.kill()    # stuck or confused: the next scenario gets a new one
            raise

    def _run(self, scenario, stack, timeout, args):
        self._send({"type": "run", "scenario": scenario, "base": stack.url(""), "args": args})
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("scenario %s took over %ds\n%s" % (scenario, timeout, self.log_tail()))
            msg = self._next(left, "scenario " + scenario)
            if msg.get("type") == "ask":
                try:
                    value = self._act(stack, msg["action"], msg.get("args") or {})
                    self._send({"type": "answer", "seq": msg["seq"], "ok": True, "value": value})
                except Exception as e:  # reported to the scenario, which fails
                    self._send({"type": "answer", "seq": msg["seq"], "ok": False,
                                "error": "%s: %s" % (type(e).__name__, e)})
            elif msg.get("type") == "result" and msg.get("scenario") == scenario:
                if not msg.get("ok"):
                    pytest.fail("browser scenario %s failed: %s\n--- driver log ---\n%s"
                                % (scenario, msg.get("error"), self.log_tail()), pytrace=False)
                print("%s: %.1fs %s" % (scenario, msg.get("ms", 0) / 1000.0,
                                        json.dumps(msg.get("details"))[:3000]))
                for c in msg.get("consoleErrors") or []:
                    print("  expected console error: " + c[:300])
                return msg.get("details") or {}
            else:
                raise AssertionError("unexpected message from the browser driver: %r" % msg)

    def _act(self, stack, action, args):
        """Do what the Node side asked for; its answer's value."""
        return act(stack, action, args)

    def kill(self):
        """Stop the driver at once (SIGTERM to its group, then SIGKILL)."""
        if self.p is None:
            return
        if self.p.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.p = None

    def close(self):
        if self.p is None:
            return
        if self.p.poll() is None:
            try:
                self._send({"type": "quit"})
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def act(stack, action, args):
    """What the page scenarios ask the harness to do."""
    if action == "publish":
        st, doc = stack.publish(args["content"], channel=args.get("channel"))
        return {"status": st, "body": doc}
    if action == "stop_relay":
        i = args.get("i", 0)
        code = stack.relays[i].stop()
        assert code == 0, "relay %d exited with %r on SIGTERM" % (i, code)
        return {"exit": code}
    if action == "start_relay":
        stack.start_relay(args.get("i", 0))
        return {}
    if action == "stop_redis":
        stack.redis.stop()
        return {}
    if action == "start_redis":
        stack.start_redis()
        return {}
    raise ValueError("unknown action %r" % action)


_setup_error = []   # the first failure of _ensure_tools, reported by every test


@pytest.fixture(scope="session")
def browser():
    if _setup_error:
        pytest.fail(_setup_error[0], pytrace=False)
    try:
        _ensure_tools()
    except pytest.fail.Exception as e:
        _setup_error.append(str(e))
        raise
    d = Driver()
    yield d
    d.close()


def make_stack(**kw):
    # PW_HTML_DIR serves another copy of the page (e.g. to check that these
    # tests catch a broken one).
    if os.environ.get("PW_HTML_DIR"):
        kw["nginx_env"] = dict(kw.get("nginx_env") or {}, HTML_DIR=os.environ["PW_HTML_DIR"])
    return Stack(**kw).start()


@pytest.fixture(scope="module")
def ws_stack():
    """Two workers and one relay, shared by the scenarios that break nothing."""
    s = make_stack(workers=2, relays=1)
    yield s
    s.stop()


@pytest.fixture
def page_stack(request):
    """A private stack for a scenario that breaks things:
    @pytest.mark.stack(workers=..., relays=...)."""
    marker = request.node.get_closest_marker("stack")
    s = make_stack(**(dict(marker.kwargs) if marker else {}))
    yield s
    s.stop()


# ----------------------------------------------------------------- tests
# On one shared stack (two workers, one relay): scenarios that break nothing.

def test_two_pages_chat_over_websocket(browser, ws_stack):
    browser.run("ws_two_pages", ws_stack)


def test_two_pages_chat_over_forced_longpoll(browser, ws_stack):
    browser.run("longpoll_forced", ws_stack)


def test_message_text_is_never_html(browser, ws_stack):
    browser.run("xss", ws_stack)


def test_screenshots(browser, ws_stack):
    """screenshot.png (1280x800) and screenshot-phone.png (390x844) of the
    page with a few messages, in build/screenshots (a test run leaves the
    checkout clean); PW_UPDATE_SCREENSHOTS=1 writes the README's copies in
    docs/ instead."""
    out = os.path.join(ROOT, "docs") if os.environ.get("PW_UPDATE_SCREENSHOTS") == "1" \
        else os.path.join(ROOT, "build", "screenshots")
    os.makedirs(out, exist_ok=True)
    d = browser.run("screenshot", ws_stack, dir=out)
    for f in d["files"]:
        assert os.path.getsize(f) > 10000, f


# Each on its own stack: the relay is missing or stopped, or Redis is stopped.

@pytest.mark.stack(workers=2, relays=0)
def test_page_falls_back_to_longpoll_without_relay(browser, page_stack):
    d = browser.run("longpoll_fallback", page_stack)
    assert d["sockets"] >= 1


@pytest.mark.stack(workers=2, relays=1)
def test_relay_restart_falls_back_and_loses_nothing(browser, page_stack):
    d = browser.run("relay_restart", page_stack, mode="auto")
    assert d["fellBack"]


@pytest.mark.stack(workers=2, relays=1)
def test_relay_restart_forced_websocket_resumes_with_since(browser, page_stack):
    browser.run("relay_restart", page_stack, mode="websocket")


@pytest.mark.stack(workers=2, relays=1)
def test_errors_413_and_503_are_shown(browser, page_stack):
    browser.run("errors", page_stack, timeout=150)
