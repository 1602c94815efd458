"""html/pushwire.js (the browser client library) in headless Chromium against
a real stack.

The browser side is tests/browser/client.test.mjs, driven exactly like
test_browser.py drives page.test.mjs: one Node process (npm playwright-core
with Debian's /usr/bin/chromium) per session, one scenario per test, and
JSON lines for what only this side can do (publish, mint tokens, stop and
start the relay, read a channel's history, serve a page on another origin).

The stacks run with private channels: `--private-channels p:*
--jwt-secret-file FILE` on the workers and relays; tokens are HS256 JWTs
minted here with PyJWT.
"""
import http.server
import json
import os
import shutil
import tempfile
import threading
import time
import uuid

import jwt
import pytest

import test_browser as tb
from stack import Stack, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "browser", "client.test.mjs")


class Keys:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pw-client-js-")
        self.secret = os.urandom(24).hex()
        self.file = os.path.join(self.dir, "jwt-secret")
        with open(self.file, "w") as f:
            f.write(self.secret + "\n")

    def mint(self, subscribe=(), publish=(), ttl=600):
        claims = {"pushwire": {"subscribe": list(subscribe), "publish": list(publish)}}
        if ttl is not None:
            claims["exp"] = int(time.time()) + int(ttl)
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Publisher(threading.Thread):
    """Publishes round-robin on channels every interval until stopped;
    .published: [(channel, id, content)] of every 200."""

    def __init__(self, h, channels, interval, prefix):
        super().__init__(daemon=True)
        self.h, self.channels, self.interval, self.prefix = h, channels, interval, prefix
        self.published, self.failures = [], []
        self.stopping = threading.Event()

    def run(self):
        n = 0
        while not self.stopping.is_set():
            ch = self.channels[n % len(self.channels)]
            content = "%s %s #%d" % (self.prefix, ch, n)
            n += 1
            try:
                st, doc = self.h.publish(ch, content)
            except Exception as e:  # noqa: BLE001 - recorded, the scenario fails on it
                self.failures.append("%s: %s" % (ch, e))
                st, doc = None, None
            if st == 200:
                self.published.append((ch, doc["id"], content))
            else:
                self.failures.append("%s: %r %r" % (ch, st, doc))
            self.stopping.wait(self.interval)


class OtherOrigin:
    """A tiny page on another origin (another port) that loads pushwire.js
    from the stack and tries to use it."""

    def __init__(self):
        self.port = free_port()
        self.pages = {}
        pages = self.pages

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = pages.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Harness:
    """What the scenarios may ask for (the 'ask' actions)."""

    def __init__(self, stack, keys):
        self.stack, self.keys = stack, keys
        self.admin = keys.mint(subscribe=["*"], publish=["*"], ttl=3600)
        self.publishers = {}
        self.other = None

    def publish(self, channel, content, token=None):
        headers = {}
        if token or channel.startswith("p:"):
            headers["Authorization"] = "Bearer " + (token or self.admin)
        return self.stack.publish(content, channel=channel, headers=headers)

    def history(self, channel):
        st, h, b = self.stack.get("/status?channel=%s&since=0&timeout=0" % channel,
                                  headers={"Authorization": "Bearer " + self.admin})
        assert st == 200, (st, b)
        return json.loads(b)

    def act(self, action, args):
        if action == "publish":
            st, doc = self.publish(args["channel"], args["content"], args.get("token"))
            return {"status": st, "body": doc}
        if action == "mint":
            return self.keys.mint(args.get("subscribe", ()), args.get("publish", ()), args.get("ttl", 600))
        if action == "publisher_start":
            p = Publisher(self, args["channels"], args.get("interval", 0.05), args.get("prefix", "bg"))
            self.publishers[args.get("name", "bg")] = p
            p.start()
            return {}
        if action == "publisher_stop":
            p = self.publishers.pop(args.get("name", "bg"))
            p.stopping.set()
            p.join(30)
            return {"published": p.published, "failures": p.failures}
        if action == "publisher_count":
            p = self.publishers[args.get("name", "bg")]
            return len(p.published)
        if action == "stop_relay":
            code = self.stack.relays[args.get("i", 0)].stop()
            assert code == 0, "relay exited with %r on SIGTERM" % code
            return {"exit": code}
        if action == "start_relay":
            self.stack.start_relay(args.get("i", 0))
            return {}
        if action == "history":
            return self.history(args["channel"])
        if action == "install_pages":
            d = os.path.join(self.html_dir, "__pwtest")
            os.makedirs(d, exist_ok=True)
            for name, body in args["pages"].items():
                assert "/" not in name and not name.startswith("."), name
                with open(os.path.join(d, name), "w") as f:
                    f.write(body)
            return {}
        if action == "other_origin_page":
            if self.other is None:
                self.other = OtherOrigin()
            self.other.pages[args["path"]] = args["html"]
            return self.other.url(args["path"])
        raise ValueError("unknown action %r" % action)

    def close(self):
        for p in self.publishers.values():
            p.stopping.set()
        if self.other:
            self.other.close()


class ClientDriver(tb.Driver):
    """test_browser's Node bridge (same protocol, same process handling)
    running client.test.mjs and answering its asks with a Harness."""

    script = SCRIPT

    def run(self, scenario, harness, timeout=120, **args):
        self.harness = harness
        return super().run(scenario, harness.stack, timeout, **args)

    def _act(self, stack, action, args):
        return self.harness.act(action, args)


@pytest.fixture(scope="module")
def client_browser():
    tb._ensure_tools()
    d = ClientDriver()
    yield d
    d.close()


@pytest.fixture(scope="module")
def keys():
    k = Keys()
    yield k
    k.cleanup()


def make_harness(keys, relays=1, workers=2):
    """A stack with private channels whose nginx serves a copy of html/
    (plus the scenarios' test pages, written there by install_pages)."""
    args = ["--private-channels", "p:*", "--jwt-secret-file", keys.file]
    html = tempfile.mkdtemp(prefix="pw-client-js-html-")
    for name in os.listdir(os.path.join(ROOT, "html")):
        src = os.path.join(ROOT, "html", name)
        if os.path.isfile(src):
            shutil.copy(src, html)
    try:
        s = Stack(workers=workers, relays=relays, worker_args=args, relay_args=args,
                  nginx_env={"HTML_DIR": html}).start()
    except Exception:
        shutil.rmtree(html, ignore_errors=True)
        raise
    h = Harness(s, keys)
    h.html_dir = html
    return h


def close_harness(h):
    h.close()
    try:
        h.stack.stop()
    finally:
        shutil.rmtree(h.html_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(keys):
    """One stack for the scenarios that break nothing."""
    h = make_harness(keys)
    yield h
    close_harness(h)


@pytest.fixture
def private_harness(keys):
    """A stack of its own, for a scenario that stops the relay."""
    h = make_harness(keys)
    yield h
    close_harness(h)


def names():
    u = uuid.uuid4().hex[:10]
    return {"pub1": "cj-a-" + u, "pub2": "cj-b-" + u, "priv": "p:cj-" + u}


# ---------------------------------------------------------------------- tests

def test_two_pages_three_channels_exactly_once(client_browser, shared):
    """Two pages, each with one Pushwire for three channels (one private,
    one token on the connection in page A, per-subscription in page B whose
    token is short-lived and renewed by getToken); publishes on every
    channel by the harness and by the pages: each page gets every message
    of its channels once, in order, over one WebSocket."""
    d = client_browser.run("multi", shared, timeout=150, **names())
    for name in ("A", "B"):
        assert d[name]["sockets"] == 1, d[name]
    assert d["B"]["refreshFrames"] >= 1, d["B"]


def test_relay_outage_falls_back_and_returns(client_browser, private_harness):
    """The relay stops while publishing goes on: one page falls back to
    EventSource, one (websocket, longpoll) to long-poll; nothing lost, no
    duplicate delivered; the relay back, both return to the WebSocket and
    still nothing is lost."""
    d = client_browser.run("fallback", private_harness, timeout=180, **names())
    assert "eventsource" in d["ES"]["transports"], d["ES"]
    assert "longpoll" in d["LP"]["transports"], d["LP"]
    for name in ("ES", "LP"):
        assert d[name]["transports"][-1] == "websocket", d[name]


def test_module_and_classic_script(client_browser, shared):
    """`import { Pushwire } from "/pushwire.esm.js"` and
    `<script src="/pushwire.js">` both load (from nginx) and work."""
    d = client_browser.run("modules", shared, **names())
    assert d["module"]["received"] and d["classic"]["received"], d


@pytest.mark.parametrize("transport", ["websocket", "eventsource", "longpoll"])
def test_token_expiry_renewed_by_get_token(client_browser, shared, transport):
    """A token that expires (without a renewal before: getToken first hands
    back the same token) ends the subscription server-side (WebSocket
    "expired" frame / close 4401, EventSource `event: expired`, long-poll
    401); getToken's new token resumes it with nothing lost."""
    d = client_browser.run("expiry", shared, timeout=90, transport=transport, **names())
    assert d["tokenCalls"] >= 2, d


@pytest.mark.parametrize("transport", ["websocket", "eventsource", "longpoll"])
def test_token_renewed_before_expiry(client_browser, shared, transport):
    """With the token's exp known (JWT payload) and getToken handing a new
    token, it is renewed before it ends (in-band refresh, a reopened stream,
    the next poll): no expired frame, no 401, nothing lost."""
    d = client_browser.run("expiry", shared, timeout=90, transport=transport, proactive=True, **names())
    assert d["tokenCalls"] == 1, d


def test_auth_errors_and_other_origin(client_browser, shared):
    """Without a token a private channel is refused (onError 401, no retry
    loop), with a token that does not grant it 403; a page on another origin
    can neither publish through the stack nor read the private channel."""
    ch = names()
    d = client_browser.run("auth", shared, timeout=90, **ch)
    hist = shared.history(ch["pub1"])
    contents = [m["content"] for m in hist["messages"]]
    assert not any(c.startswith("cross-origin") for c in contents), contents
    hist = shared.history(ch["priv"])
    assert not any(m["content"].startswith("cross-origin") for m in hist["messages"]), hist
    assert d["other"]["privateMessages"] == [], d["other"]

