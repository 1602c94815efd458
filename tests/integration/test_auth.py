"""Private channels and tokens (issue 11) through the real stack, nginx in front.

What is checked (options --private-channels, --jwt-secret-file,
--jwt-public-key-file, --jwt-audience/--jwt-issuer/--jwt-leeway, --origins
and --publish-token of pushwire-worker and pushwire-relay):

* subscribing to a private channel (long-poll GET /status, EventSource, and
  WebSocket ws://HOST/status through nginx and the relay) needs a JWT naming
  the channel in pushwire.subscribe: 401 (JSON error, WWW-Authenticate on
  HTTP) without a usable one, 403 for a valid one that does not grant it;
* tokens travel as "Authorization: Bearer", ?token= or the cookie
  pushwire_token; HS* only with the secret, RS*/ES* only with the public key,
  "none" never;
* publishing to a private channel needs a JWT with a publish grant (or the
  shared --publish-token); POST /chat refuses foreign Origins (CSRF);
* a connection opened by a token ends at its exp (long-poll answered,
  EventSource "expired" event, WebSocket close 4401) unless a WebSocket
  refreshes it;
* no token ever shows in a log.

Tokens are minted here with PyJWT and `cryptography` (keys made in a
temporary directory); the forgeries PyJWT refuses to make (alg none, an RSA
public key as HMAC secret) are assembled by hand.
"""
import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import wsraw
from stack import Stack
from wsraw import OP_CLOSE, OP_TEXT, HandshakeRefused, RawWS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AUD = "pushwire-it"
ISS = "https://issuer.pushwire-it.example"
SHARED = "shared-publish-token-" + uuid.uuid4().hex
TRANSPORTS = ["longpoll", "eventsource", "websocket"]


# ---- channels, keys, tokens --------------------------------------------------------------

def private_channel():
    return "private:" + uuid.uuid4().hex[:12]


def team_channel():
    return "team." + uuid.uuid4().hex[:12]


def public_channel():
    return "pub-" + uuid.uuid4().hex[:12]


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header, payload, key=None, signature=None):
    """A JWT assembled by hand: HS256 with key (any bytes, PyJWT refuses a
    PEM), or the given signature (bytes; b"" for an empty one)."""
    signing_input = b64u(json.dumps(header, separators=(",", ":"))) + "." + \
        b64u(json.dumps(payload, separators=(",", ":")))
    if signature is None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64u(signature)


class Keys:
    """Every key of the module, in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pw-auth-keys-")
        self.secret = os.urandom(24).hex().encode()              # 48 bytes
        self.other_secret = os.urandom(24).hex().encode()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other_ec = ec.generate_private_key(ec.SECP256R1())
        pem = serialization.PublicFormat.SubjectPublicKeyInfo
        self.rsa_pub_pem = self.rsa.public_key().public_bytes(serialization.Encoding.PEM, pem)
        self.ec_pub_pem = self.ec.public_key().public_bytes(serialization.Encoding.PEM, pem)
        # The secret file ends with a newline: the servers drop one.
        self.secret_file = self._write("jwt-secret", self.secret + b"\n")
        self.rsa_pub_file = self._write("rsa-public.pem", self.rsa_pub_pem)
        self.ec_pub_file = self._write("ec-public.pem", self.ec_pub_pem)

    def _write(self, name, data):
        p = os.path.join(self.dir, name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Ctx:
    """A stack and how its tokens are made (audience, issuer, default alg)."""

    def __init__(self, stack, keys, aud=None, iss=None, alg="HS256", shared=None):
        self.s, self.keys, self.aud, self.iss, self.alg, self.shared = stack, keys, aud, iss, alg, shared

    def claims(self, sub=(), pub=(), exp=300, nbf=None, aud="default", iss="default", grants=True,
               **extra):
        now = int(time.time())
        c = {"iat": now, "jti": uuid.uuid4().hex}
        if exp is not None:
            c["exp"] = now + exp
        if nbf is not None:
            c["nbf"] = now + nbf
        aud = self.aud if aud == "default" else aud
        iss = self.iss if iss == "default" else iss
        if aud is not None:
            c["aud"] = aud
        if iss is not None:
            c["iss"] = iss
        if grants:
            g = {"subscribe": list(sub)}
            if pub:
                g["publish"] = list(pub)
            c["pushwire"] = g
        c.update(extra)
        return c

    def key_for(self, alg):
        return {"HS": self.keys.secret, "RS": self.keys.rsa, "ES": self.keys.ec}[alg[:2]]

    def token(self, alg=None, key=None, headers=None, **kw):
        alg = alg or self.alg
        return jwt.encode(self.claims(**kw), key if key is not None else self.key_for(alg),
                          algorithm=alg, headers=headers)

    def publish(self, ch, content):
        """Publish with whatever this stack needs for ch; returns the doc."""
        cred = self.shared if self.shared else self.token(pub=[ch])
        st, h, doc = publish(self.s, ch, content, cred)
        assert st == 200, (st, doc)
        return doc

    def history(self, ch):
        """Contents stored in ch (read with a token that grants it)."""
        st, h, b = longpoll(self.s, ch, self.token(sub=[ch]), since=0, timeout=0)
        assert st == 200, (st, b)
        doc = json.loads(b)
        assert not doc.get("more"), "test channels stay small"
        return [m["content"] for m in doc["messages"]]


def token_parts(token, where):
    """(headers, query suffix) carrying token in the given place."""
    if token is None:
        return {}, ""
    if where == "header":
        return {"Authorization": "Bearer " + token}, ""
    if where == "query":
        return {}, "&token=" + token
    if where == "cookie":
        return {"Cookie": "theme=dark; pushwire_token=" + token + "; other=1"}, ""
    raise ValueError(where)


# ---- transports ---------------------------------------------------------------------------

def longpoll(s, ch, token=None, where="header", since=0, timeout=0, http_timeout=60, headers=None):
    hdrs, q = token_parts(token, where)
    hdrs.update(headers or {})
    path = "/status?channel=%s%s%s%s" % (ch, "" if since is None else "&since=%d" % since,
                                         "" if timeout is None else "&timeout=%d" % timeout, q)
    st, h, b = s.get(path, headers=hdrs, timeout=http_timeout)
    return st, {k.lower(): v for k, v in h.items()}, b


class Sse:
    """A raw HTTP/1.1 EventSource client through nginx. .status, .headers,
    .body (when not a stream); next_event() parses events as they come and
    returns None once the server has ended the stream."""

    def __init__(self, s, ch, token=None, where="header", since=0, headers=None, timeout=10):
        hdrs, q = token_parts(token, where)
        hdrs.update(headers or {})
        self.sock = socket.create_connection(("127.0.0.1", s.port), timeout=timeout)
        path = "/status?channel=%s%s%s" % (ch, "" if since is None else "&since=%d" % since, q)
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % s.port, "Accept: text/event-stream"]
        lines += ["%s: %s" % kv for kv in hdrs.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.buf, self.text = b"", b""
        self.eof = self.ended = False
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._recv(deadline):
                raise AssertionError("connection closed before the response head: %r" % self.buf)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status, self.headers = wsraw.parse_head(head)
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.body = None
        if self.status != 200 or not self.headers.get("content-type", "").startswith("text/event-stream"):
            self.body = self._read_body(deadline)
            self.close()

    def _recv(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no data before the deadline")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _dechunk(self):
        if not self.chunked:
            self.text += self.buf
            self.buf = b""
        else:
            while not self.ended:
                line, sep, rest = self.buf.partition(b"\r\n")
                if not sep:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.ended, self.buf = True, b""
                    break
                if len(rest) < size + 2:
                    break
                self.text += rest[:size]
                self.buf = rest[size + 2:]
        if self.eof:
            self.ended = True

    def _read_body(self, deadline):
        if "content-length" in self.headers:
            n = int(self.headers["content-length"])
            while len(self.buf) < n and self._recv(deadline):
                pass
            return self.buf[:n]
        while True:
            self._dechunk()
            if self.ended:
                return self.text
            self._recv(deadline)

    @staticmethod
    def _parse(block):
        ev = {}
        for line in block.decode("utf-8").split("\n"):
            if not line or line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            if v.startswith(" "):
                v = v[1:]
            ev[k] = ev[k] + "\n" + v if k == "data" and k in ev else v
        if "data" not in ev:
            return None  # retry: and the like: a browser dispatches no event
        ev["json"] = json.loads(ev["data"])
        return ev

    def next_event(self, timeout=10):
        """The next event (comments skipped), or None when the stream ended."""
        deadline = time.monotonic() + timeout
        while True:
            self._dechunk()
            while b"\n\n" in self.text:
                block, _, self.text = self.text.partition(b"\n\n")
                ev = self._parse(block)
                if ev:
                    return ev
            if self.ended:
                return None
            try:
                self._recv(deadline)
            except socket.timeout:
                raise AssertionError("no event and no end of stream within %ss" % timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def ws_open(s, ch, token=None, where="query", since=0, origin=None, timeout=10):
    """A WebSocket through nginx and the relay (RawWS); raises
    HandshakeRefused when not upgraded."""
    hdrs, q = token_parts(token, where)
    path = "/status?channel=%s%s%s" % (ch, "" if since is None else "&since=%d" % since, q)
    return RawWS.open(s.port, path, origin=origin, timeout=timeout, extra=tuple(hdrs.items()))


def ws_json(ws, timeout=10):
    f = ws.recv_data(timeout)
    assert f.opcode == OP_TEXT, "expected a text frame, got %r" % f
    return json.loads(f.payload)


def subscribe_status(s, transport, ch, token=None, where=None):
    """(status, lower-case headers, body) of one subscription attempt; 101
    or 200 (stream) when it was accepted."""
    if transport == "longpoll":
        return longpoll(s, ch, token, where or "header", since=0, timeout=0)
    if transport == "eventsource":
        r = Sse(s, ch, token, where or "header")
        r.close()
        return r.status, r.headers, r.body or b""
    try:
        ws = ws_open(s, ch, token, where or "query")
    except HandshakeRefused as e:
        return e.status, e.headers, e.body
    ws.close()
    return 101, {}, b""


def assert_refused(got, status, transport, token=None):
    st, h, b = got
    assert st == status, "%s: expected %d, got %d %r" % (transport, status, st, b[:300])
    doc = json.loads(b)
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    if token:
        assert token not in b.decode("utf-8", "replace"), "the error answer echoes the token"
    if transport != "websocket":
        assert h.get("content-type", "").startswith("application/json"), h
        if status == 401:
            assert h.get("www-authenticate", "").startswith('Bearer realm="pushwire"'), h
    return doc


def assert_receives(ctx, transport, ch, token, where=None):
    """token opens ch on transport: a message stored before arrives (since=0),
    then one published while it is open."""
    s = ctx.s
    first = "before-" + uuid.uuid4().hex[:8]
    live = "live-" + uuid.uuid4().hex[:8]
    doc1 = ctx.publish(ch, first)
    if transport == "longpoll":
        st, h, b = longpoll(s, ch, token, where or "header", since=0, timeout=0)
        assert st == 200, (st, b)
        doc = json.loads(b)
        assert [m["content"] for m in doc["messages"]] == [first], doc
        result = {}

        def held():
            result["r"] = longpoll(s, ch, token, where or "header", since=doc1["id"], timeout=20)

        t = threading.Thread(target=held, daemon=True)
        t.start()
        time.sleep(0.3)
        ctx.publish(ch, live)
        t.join(25)
        st, h, b = result["r"]
        assert st == 200, (st, b)
        assert [m["content"] for m in json.loads(b)["messages"]] == [live]
    elif transport == "eventsource":
        r = Sse(s, ch, token, where or "header")
        try:
            assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream"), \
                (r.status, r.headers, r.body)
            ev = r.next_event()
            assert ev and ev["json"]["content"] == first, ev
            ctx.publish(ch, live)
            ev = r.next_event()
            assert ev and ev["json"]["content"] == live, ev
        finally:
            r.close()
    else:
        with ws_open(s, ch, token, where or "query") as ws:
            assert ws_json(ws)["content"] == first
            ctx.publish(ch, live)
            assert ws_json(ws)["content"] == live


# ---- stacks -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys():
    k = Keys()
    yield k
    k.cleanup()


@pytest.fixture(scope="module")
def main(keys):
    """Two workers and a relay; private channels private:* and team.*; the
    HS256 secret and an EC public key (ES256); aud and iss required; no
    shared publish token; CSRF default rule (Origin must match Host)."""
    args = ["--private-channels", "private:*,team.*", "--jwt-secret-file", keys.secret_file,
            "--jwt-public-key-file", keys.ec_pub_file, "--jwt-audience", AUD, "--jwt-issuer", ISS]
    s = Stack(workers=2, relays=1, worker_args=args, relay_args=args).start()
    yield Ctx(s, keys, aud=AUD, iss=ISS, alg="HS256")
    s.stop()


@pytest.fixture(scope="module")
def rsa_stack(keys):
    """One worker and a relay; private:*; only an RSA public key (no HMAC
    secret: key confusion is the attack here); 60 s leeway; the shared
    --publish-token; POST /chat accepts the Origin http://app.example."""
    args = ["--private-channels", "private:*", "--jwt-public-key-file", keys.rsa_pub_file,
            "--jwt-leeway", "60"]
    s = Stack(workers=1, relays=1, worker_args=args + ["--publish-token", SHARED,
                                                       "--origins", "http://app.example"],
              relay_args=args).start()
    yield Ctx(s, keys, alg="RS256", shared=SHARED)
    s.stop()


def publish(s, ch, content, token=None, where="header", headers=None, as_json=False):
    """POST /chat through nginx; (status, lower-case headers, json)."""
    hdrs, q = token_parts(token, where)
    hdrs.update(headers or {})
    if as_json:
        body = json.dumps({"content": content, "channel": ch}).encode()
        hdrs["Content-Type"] = "application/json"
    else:
        body = urlencode({"content": content, "channel": ch}).encode()
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    path = "/chat" + ("?" + q[1:] if q else "")
    st, h, b = s.request("POST", path, body, hdrs)
    return st, {k.lower(): v for k, v in h.items()}, json.loads(b)


# ---- 1. subscribing: refusals ---------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_private_channel_without_token_is_401(main, transport):
    assert_refused(subscribe_status(main.s, transport, private_channel()), 401, transport)
    # team.* is private too (a prefix pattern).
    assert_refused(subscribe_status(main.s, transport, team_channel()), 401, transport)


def _alg_none(c, ch, signed=False):
    claims = c.claims(sub=[ch])
    sig = b""
    if signed:  # the signature of a real HS256 token, left on
        sig = base64.urlsafe_b64decode(c.token(sub=[ch]).rsplit(".", 1)[1] + "==")
    return raw_token({"alg": "none", "typ": "JWT"}, claims, signature=sig)


def _payload_swapped(c, ch):
    """A valid token for another channel with its payload replaced by one
    naming ch (signature unchanged)."""
    h, _, sig = c.token(sub=[private_channel()]).split(".")
    return "%s.%s.%s" % (h, b64u(json.dumps(c.claims(sub=[ch]))), sig)


BAD_TOKENS_MAIN = {
    "expired": lambda c, ch: c.token(sub=[ch], exp=-30),
    "nbf in the future": lambda c, ch: c.token(sub=[ch], nbf=600),
    "forged HS256 (another secret)": lambda c, ch: c.token(sub=[ch], key=c.keys.other_secret),
    "forged ES256 (another key)": lambda c, ch: c.token(sub=[ch], alg="ES256", key=c.keys.other_ec),
    "alg none": lambda c, ch: _alg_none(c, ch),
    "alg none with a signature": lambda c, ch: _alg_none(c, ch, signed=True),
    "HS256 keyed with the EC public key PEM": lambda c, ch: raw_token(
        {"alg": "HS256", "typ": "JWT"}, c.claims(sub=[ch]), key=c.keys.ec_pub_pem),
    "RS256 (no RSA key configured)": lambda c, ch: c.token(sub=[ch], alg="RS256"),
    "payload swapped": _payload_swapped,
    "signature stripped": lambda c, ch: c.token(sub=[ch]).rsplit(".", 1)[0] + ".",
    "wrong aud": lambda c, ch: c.token(sub=[ch], aud="someone-else"),
    "no aud": lambda c, ch: c.token(sub=[ch], aud=None),
    "wrong iss": lambda c, ch: c.token(sub=[ch], iss="https://evil.example"),
    "exp not a number": lambda c, ch: jwt.encode(dict(c.claims(sub=[ch]), exp="tomorrow"),
                                                 c.keys.secret, algorithm="HS256"),
    "malformed": lambda c, ch: "not-a-jwt",
    "three garbage parts": lambda c, ch: "abc.def.ghi",
}


@pytest.mark.parametrize("case", list(BAD_TOKENS_MAIN))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unusable_token_is_401(main, transport, case):
    ch = private_channel()
    tok = BAD_TOKENS_MAIN[case](main, ch)
    assert_refused(subscribe_status(main.s, transport, ch, tok), 401, transport, tok)


NOT_GRANTING = {
    "token for another channel": lambda c, ch: c.token(sub=[private_channel()]),
    "publish grant only": lambda c, ch: c.token(sub=[], pub=[ch]),
    "no pushwire claim": lambda c, ch: c.token(grants=False),
    "pattern of another family": lambda c, ch: c.token(sub=["team.*", "private:x*"]),
}


@pytest.mark.parametrize("case", list(NOT_GRANTING))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_valid_token_not_granting_the_channel_is_403(main, transport, case):
    ch = private_channel()
    tok = NOT_GRANTING[case](main, ch)
    assert_refused(subscribe_status(main.s, transport, ch, tok), 403, transport, tok)


def test_refusal_of_a_channel_list_names_the_channel(main):
    """A long-poll or EventSource request on several channels refused for
    one of them says which, in the body's "channel"."""
    ok, no = private_channel(), private_channel()
    tok = main.token(sub=[ok])
    for accept in (None, "text/event-stream"):
        headers = {"Authorization": "Bearer " + tok}
        if accept:
            headers["Accept"] = accept
        st, h, b = main.s.get("/status?channel=public-%s,%s,%s&timeout=0" % (ok[-6:], ok, no), headers=headers)
        doc = json.loads(b)
        assert st == 403 and doc["channel"] == no and "does not allow" in doc["error"], (accept, st, b)
        st, h, b = main.s.get("/status?channel=%s,%s&timeout=0" % (ok, no))
        doc = json.loads(b)
        assert st == 401 and doc["channel"] == ok and "www-authenticate" in {k.lower() for k in h}, (st, h, b)


# ---- 2. subscribing: tokens that work ----------------------------------------------------------

@pytest.mark.parametrize("alg", ["HS256", "ES256"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_valid_token_receives(main, transport, alg):
    ch = private_channel()
    assert_receives(main, transport, ch, main.token(sub=[ch], alg=alg))


@pytest.mark.parametrize("where", ["header", "query", "cookie"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_token_in_each_place(main, transport, where):
    ch = private_channel()
    assert_receives(main, transport, ch, main.token(sub=[ch]), where)


def test_hs384_hs512_and_patterns_work(main):
    for alg in ("HS384", "HS512"):
        ch = private_channel()
        st, h, b = longpoll(main.s, ch, main.token(sub=[ch], alg=alg))
        assert st == 200, (alg, st, b)
    ch = team_channel()
    for grant in (["team.*"], ["*"], [ch]):
        st, h, b = longpoll(main.s, ch, main.token(sub=["private:nothing"] + grant))
        assert st == 200, (grant, st, b)
    # A prefix pattern is a prefix, not a substring.
    st, h, b = longpoll(main.s, ch, main.token(sub=["eam.*", "team.x" + ch]))
    assert st == 403, (st, b)


def test_token_places_are_tried_in_order(main):
    """Authorization first, then ?token=, then the cookie: the first one
    present is the token (a bad one there is not rescued by a later one)."""
    s, ch = main.s, private_channel()
    good, bad = main.token(sub=[ch]), main.token(sub=[ch], key=main.keys.other_secret)
    q = "/status?channel=%s&since=0&timeout=0" % ch

    def st(path, headers):
        return s.get(path, headers=headers)[0]

    assert st(q + "&token=" + bad, {"Authorization": "Bearer " + good}) == 200
    assert st(q + "&token=" + good, {"Authorization": "Bearer " + bad}) == 401
    assert st(q + "&token=" + good, {"Cookie": "pushwire_token=" + bad}) == 200
    assert st(q + "&token=" + bad, {"Cookie": "pushwire_token=" + good}) == 401


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_public_channels_stay_open(main, transport):
    s = main.s
    if transport == "longpoll":
        ch = public_channel()
        st, h, b = longpoll(s, ch, since=0, timeout=0)
        assert st == 200 and json.loads(b)["messages"] == [], (st, b)
    # Without a token, and with unusable ones (a token is ignored on public channels).
    for make in (lambda ch: None, lambda ch: "garbage", lambda ch: main.token(sub=[ch], exp=-30),
                 lambda ch: main.token(sub=[private_channel()], key=main.keys.other_secret)):
        ch = public_channel()
        assert_receives(main, transport, ch, make(ch))


# ---- 3. the RSA stack: RS256, key confusion, leeway -------------------------------------------

BAD_TOKENS_RSA = {
    "HS256 keyed with the RSA public key PEM": lambda c, ch: raw_token(
        {"alg": "HS256", "typ": "JWT"}, c.claims(sub=[ch]), key=c.keys.rsa_pub_pem),
    "HS256 keyed with the PEM without its newline": lambda c, ch: raw_token(
        {"alg": "HS256", "typ": "JWT"}, c.claims(sub=[ch]), key=c.keys.rsa_pub_pem.rstrip(b"\n")),
    "HS512 keyed with the RSA public key PEM": lambda c, ch: _hs_with(
        c, ch, c.keys.rsa_pub_pem, hashlib.sha512, "HS512"),
    "HS256 with the main secret (no secret configured)": lambda c, ch: c.token(
        sub=[ch], alg="HS256", key=c.keys.secret),
    "forged RS256 (another key)": lambda c, ch: c.token(sub=[ch], key=c.keys.other_rsa),
    "ES256 (no EC key configured)": lambda c, ch: c.token(sub=[ch], alg="ES256"),
    "alg none": lambda c, ch: raw_token({"alg": "none"}, c.claims(sub=[ch]), signature=b""),
    "expired beyond the leeway": lambda c, ch: c.token(sub=[ch], exp=-120),
    "nbf beyond the leeway": lambda c, ch: c.token(sub=[ch], nbf=120),
}


def _hs_with(c, ch, key, digest, alg):
    claims = c.claims(sub=[ch])
    signing_input = b64u(json.dumps({"alg": alg, "typ": "JWT"})) + "." + b64u(json.dumps(claims))
    return signing_input + "." + b64u(hmac.new(key, signing_input.encode(), digest).digest())


@pytest.mark.parametrize("case", list(BAD_TOKENS_RSA))
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rsa_stack_refuses(rsa_stack, transport, case):
    ch = private_channel()
    tok = BAD_TOKENS_RSA[case](rsa_stack, ch)
    assert_refused(subscribe_status(rsa_stack.s, transport, ch, tok), 401, transport, tok)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rs256_token_receives(rsa_stack, transport):
    ch = private_channel()
    assert_receives(rsa_stack, transport, ch, rsa_stack.token(sub=[ch], alg="RS256"))


def test_rs384_rs512_and_leeway(rsa_stack):
    s = rsa_stack.s
    for alg in ("RS384", "RS512"):
        ch = private_channel()
        st, h, b = longpoll(s, ch, rsa_stack.token(sub=[ch], alg=alg))
        assert st == 200, (alg, st, b)
    ch = private_channel()
    # Within --jwt-leeway 60: an exp 10 s ago and an nbf 10 s ahead still pass.
    for kw in ({"exp": -10}, {"nbf": 10}):
        st, h, b = longpoll(s, ch, rsa_stack.token(sub=[ch], **kw))
        assert st == 200, (kw, st, b)


# ---- 4. publishing ------------------------------------------------------------------------------

def test_publish_to_private_channel_needs_a_publish_grant(main):
    s, ch = main.s, private_channel()
    st, h, doc = publish(s, ch, "no credential")
    assert st == 401 and doc["error"], (st, doc)
    st, h, doc = publish(s, ch, "subscribe grant only", main.token(sub=[ch]))
    assert st == 403 and doc["error"], (st, doc)
    st, h, doc = publish(s, ch, "grant for another channel", main.token(sub=[ch], pub=[private_channel()]))
    assert st == 403, (st, doc)
    st, h, doc = publish(s, ch, "expired", main.token(pub=[ch], exp=-30))
    assert st == 401, (st, doc)
    st, h, doc = publish(s, ch, "forged", main.token(pub=[ch], key=main.keys.other_secret))
    assert st == 401, (st, doc)
    st, h, doc = publish(s, ch, "alg none", raw_token({"alg": "none"}, main.claims(pub=[ch]), signature=b""))
    assert st == 401, (st, doc)
    st, h, doc = publish(s, ch, "granted", main.token(pub=[ch]))
    assert st == 200 and doc["channel"] == ch and doc["id"] == 1, (st, doc)
    st, h, doc = publish(s, ch, "granted by ES256", main.token(pub=["private:*"], alg="ES256"))
    assert st == 200 and doc["id"] == 2, (st, doc)
    st, h, doc = publish(s, ch, "granted in the query", main.token(pub=[ch]), where="query")
    assert st == 200 and doc["id"] == 3, (st, doc)
    st, h, doc = publish(s, ch, "granted in the cookie", main.token(pub=[ch]), where="cookie")
    assert st == 200 and doc["id"] == 4, (st, doc)
    st, h, doc = publish(s, ch, "json body", main.token(pub=[ch]), as_json=True)
    assert st == 200 and doc["id"] == 5, (st, doc)
    assert main.history(ch) == ["granted", "granted by ES256", "granted in the query",
                                "granted in the cookie", "json body"]


def test_batch_is_authorized_for_every_channel_before_anything_is_stored(main):
    s, open_ch, ch = main.s, public_channel(), private_channel()
    body = json.dumps({"messages": [{"channel": open_ch, "content": "open"},
                                    {"channel": ch, "content": "private"}]}).encode()

    def post(token=None):
        hdrs = {"Content-Type": "application/json"}
        if token:
            hdrs["Authorization"] = "Bearer " + token
        st, h, b = s.request("POST", "/chat", body, hdrs)
        return st, json.loads(b)
    st, doc = post()
    assert st == 401 and doc["error"], doc
    st, doc = post(main.token(pub=[open_ch]))
    assert st == 403, doc
    # a token offered must grant every channel, the public one too
    st, doc = post(main.token(pub=[ch]))
    assert st == 403, doc
    assert main.history(open_ch) == [] and main.history(ch) == []
    st, doc = post(main.token(pub=[ch, open_ch]))
    assert st == 200 and [r["channel"] for r in doc["results"]] == [open_ch, ch], doc
    assert main.history(open_ch) == ["open"] and main.history(ch) == ["private"]


@pytest.mark.parametrize("where", ["header", "query", "cookie"])
@pytest.mark.parametrize("case", ["malformed", "forged", "expired", "alg none"])
def test_publish_with_invalid_token_is_401(main, case, where):
    """A private channel, no --publish-token configured (so a Bearer value
    cannot be a wrong shared token): an unusable token is 401 wherever it is."""
    s, ch = main.s, private_channel()
    tok = {"malformed": lambda: "not-a-jwt",
           "forged": lambda: main.token(pub=[ch], key=main.keys.other_secret),
           "expired": lambda: main.token(pub=[ch], exp=-30),
           "alg none": lambda: raw_token({"alg": "none"}, main.claims(pub=[ch]), signature=b"")}[case]()
    st, h, doc = publish(s, ch, "refused", tok, where=where)
    assert st == 401 and doc["error"], (st, doc)
    assert main.history(ch) == []


def test_publish_token_offered_on_public_channel_must_be_valid_and_grant(main):
    s, ch = main.s, public_channel()
    st, h, doc = publish(s, ch, "open")
    assert st == 200, (st, doc)
    st, h, doc = publish(s, ch, "forged token", main.token(pub=[ch], key=main.keys.other_secret))
    assert st == 401, (st, doc)
    st, h, doc = publish(s, ch, "expired token", main.token(pub=[ch], exp=-30))
    assert st == 401, (st, doc)
    st, h, doc = publish(s, ch, "not granting", main.token(sub=[ch], pub=[public_channel()]))
    assert st == 403, (st, doc)
    st, h, doc = publish(s, ch, "granting", main.token(pub=[ch]))
    assert st == 200, (st, doc)
    assert main.history(ch) == ["open", "granting"]


def test_shared_publish_token_still_works(rsa_stack):
    s, ch, pch = rsa_stack.s, public_channel(), private_channel()
    for c in (ch, pch):
        st, h, doc = publish(s, c, "no credential")
        assert st == 401, (c, st, doc)
        st, h, doc = publish(s, c, "wrong shared", "wrong-" + SHARED)
        assert st == 403, (c, st, doc)
        st, h, doc = publish(s, c, "shared", SHARED)
        assert st == 200, (c, st, doc)
    # A JWT with a publish grant works next to the shared token; one without does not.
    st, h, doc = publish(s, pch, "jwt", rsa_stack.token(pub=[pch]))
    assert st == 200, (st, doc)
    st, h, doc = publish(s, pch, "jwt subscribe only", rsa_stack.token(sub=[pch]))
    assert st == 403, (st, doc)
    assert rsa_stack.history(pch) == ["shared", "jwt"]
    st, h, b = longpoll(s, ch, since=0, timeout=0)
    assert [m["content"] for m in json.loads(b)["messages"]] == ["shared"]


# ---- 5. CSRF on POST /chat ----------------------------------------------------------------------

def test_csrf_foreign_origin_is_refused_and_not_stored(main):
    s, ch = main.s, public_channel()
    host = "127.0.0.1:%d" % s.port
    refused = {
        "evil": {"Origin": "http://evil.example"},
        "other port": {"Origin": "http://127.0.0.1:%d" % (s.port + 1 if s.port < 65535 else 1)},
        "null": {"Origin": "null"},
        "evil with Sec-Fetch-Site": {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        "evil, json body": {"Origin": "http://evil.example"},
    }
    for name, hdrs in refused.items():
        st, h, doc = publish(s, ch, "refused " + name, headers=hdrs, as_json="json" in name)
        assert st == 403, (name, st, doc)
        assert doc["error"].startswith("cross-origin"), (name, doc)
    for name, hdrs in {"cross-site": {"Sec-Fetch-Site": "cross-site"},
                       "same-site": {"Sec-Fetch-Site": "same-site"}}.items():
        st, h, doc = publish(s, ch, "refused " + name, headers=hdrs)
        assert st == 403, (name, st, doc)
        assert doc["error"].startswith("cross-"), (name, doc)
    allowed = {
        "same origin": {"Origin": "http://" + host},
        "same origin with Sec-Fetch-Site": {"Origin": "http://" + host, "Sec-Fetch-Site": "same-origin"},
        "no Origin (curl)": {},
        "Sec-Fetch-Site none": {"Sec-Fetch-Site": "none"},
    }
    for name, hdrs in allowed.items():
        st, h, doc = publish(s, ch, "allowed " + name, headers=hdrs)
        assert st == 200, (name, st, doc)
    assert main.history(ch) == ["allowed " + n for n in allowed]


def test_csrf_with_cookie_token_is_refused(main):
    """The victim's browser holds a cookie that grants publishing: a foreign
    page's POST carries it, and is refused all the same."""
    s, ch = main.s, private_channel()
    cookie = main.token(sub=[ch], pub=[ch])
    st, h, doc = publish(s, ch, "forged by evil", cookie, where="cookie",
                         headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert st == 403 and doc["error"].startswith("cross-origin"), (st, doc)
    st, h, doc = publish(s, ch, "from the page", cookie, where="cookie",
                         headers={"Origin": "http://127.0.0.1:%d" % s.port, "Sec-Fetch-Site": "same-origin"})
    assert st == 200, (st, doc)
    assert main.history(ch) == ["from the page"]


def test_csrf_origins_list(rsa_stack):
    s, ch = rsa_stack.s, public_channel()
    st, h, doc = publish(s, ch, "listed", SHARED, headers={"Origin": "http://app.example"})
    assert st == 200, (st, doc)
    for o in ("http://evil.example", "https://app.example", "http://app.example:8080"):
        st, h, doc = publish(s, ch, "unlisted " + o, SHARED, headers={"Origin": o})
        assert st == 403, (o, st, doc)
    st, h, b = longpoll(s, ch, since=0, timeout=0)
    assert [m["content"] for m in json.loads(b)["messages"]] == ["listed"]


# ---- 6. expiry ------------------------------------------------------------------------------------

def _expiring(ctx, ch, seconds=3, **kw):
    exp = int(time.time()) + seconds
    tok = jwt.encode(dict(ctx.claims(sub=[ch], exp=None, **kw), exp=exp), ctx.keys.secret, algorithm="HS256")
    return tok, exp


def test_longpoll_hold_ends_at_token_expiry(main):
    s, ch = main.s, private_channel()
    tok, exp = _expiring(main, ch)
    t0 = time.monotonic()
    st, h, b = longpoll(s, ch, tok, since=0, timeout=30)
    answered, took = time.time(), time.monotonic() - t0
    assert st == 200, (st, b)
    assert json.loads(b)["messages"] == []
    assert took < 10, "a 30 s poll with a token expiring in ~3 s took %.1fs" % took
    assert exp - 1.0 <= answered <= exp + 5, "answered at exp%+.2fs" % (answered - exp)
    # The client polls again at once, as clients do.
    sent = time.time()
    st, h, b = longpoll(s, ch, tok, since=0, timeout=30, http_timeout=15)
    assert st == 401, "the re-poll right after the expiry answer (sent at exp%+.3fs) got %d at " \
        "exp%+.3fs: %r" % (sent - exp, st, time.time() - exp, b[:200])
    assert_refused((st, h, b), 401, "longpoll", tok)


def test_eventsource_gets_expired_event_and_ends(main):
    s, ch = main.s, private_channel()
    tok, exp = _expiring(main, ch)
    r = Sse(s, ch, tok)
    try:
        assert r.status == 200, (r.status, r.body)
        main.publish(ch, "before expiry")
        ev = r.next_event()
        assert ev["json"]["content"] == "before expiry", ev
        ev = r.next_event(timeout=15)
        at = time.time()
        assert ev is not None, "the stream ended without an expired event"
        assert ev.get("event") == "expired", ev
        assert ev["json"] == {"type": "expired", "channel": ch, "error": "token expired"}, ev
        assert exp - 1.0 <= at <= exp + 5, "expired event at exp%+.2fs" % (at - exp)
        assert r.next_event(timeout=10) is None, "the stream goes on after the expired event"
    finally:
        r.close()


def test_websocket_closed_4401_at_expiry(main):
    s, ch = main.s, private_channel()
    tok, exp = _expiring(main, ch)
    with ws_open(s, ch, tok) as ws:
        main.publish(ch, "before expiry")
        assert ws_json(ws)["content"] == "before expiry"
        code, reason, frames = ws.read_close(timeout=15)
        at = time.time()
        assert code == 4401 and reason == "token expired", (code, reason, frames)
        assert exp - 1.0 <= at <= exp + 5, "closed at exp%+.2fs" % (at - exp)


def test_websocket_refresh_extends_past_the_old_expiry(main):
    s, ch = main.s, private_channel()
    tok, exp = _expiring(main, ch)
    new, new_exp = _expiring(main, ch, seconds=120)
    with ws_open(s, ch, tok) as ws:
        ws.send_text(json.dumps({"type": "refresh", "token": new}))
        doc = ws_json(ws)
        assert doc == {"type": "refreshed", "channel": ch, "expires": new_exp}, doc
        while time.time() < exp + 2.0:
            try:
                f = ws.recv_data(max(0.05, exp + 2.0 - time.time()))
            except socket.timeout:
                continue
            raise AssertionError("after a refresh, past the old exp: %r%s" % (
                f, " close %r" % (f.close_code,) if f.opcode == OP_CLOSE else ""))
        main.publish(ch, "after the old expiry")
        assert ws_json(ws)["content"] == "after the old expiry"
        ws.send_close(1000)


@pytest.mark.parametrize("case,status", [("forged", 401), ("expired", 401), ("another channel", 403),
                                         ("garbage", 401)])
def test_websocket_bad_refresh_keeps_the_old_expiry(main, case, status):
    s, ch = main.s, private_channel()
    tok, exp = _expiring(main, ch, seconds=4)
    new = {"forged": lambda: main.token(sub=[ch], exp=120, key=main.keys.other_secret),
           "expired": lambda: main.token(sub=[ch], exp=-30),
           "another channel": lambda: main.token(sub=[private_channel()], exp=120),
           "garbage": lambda: "garbage"}[case]()
    with ws_open(s, ch, tok) as ws:
        ws.send_text(json.dumps({"type": "refresh", "token": new}))
        doc = ws_json(ws)
        assert doc.get("type") == "error" and doc.get("status") == status, doc
        assert isinstance(doc.get("error"), str) and doc["error"] and new not in doc["error"], doc
        code, reason, frames = ws.read_close(timeout=15)
        at = time.time()
        assert code == 4401, (code, reason, frames)
        assert exp - 1.0 <= at <= exp + 5, "closed at exp%+.2fs" % (at - exp)


# ---- 7. tokens never in logs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def log_stack(keys):
    """A stack with --log-level debug on workers and relay and nginx's access
    log on, put through every path a token takes (valid, invalid, expired;
    header, query, cookie; subscribe on three transports, refresh, publish).
    Yields the stack and the secrets that must not appear in its logs."""
    args = ["--private-channels", "private:*", "--jwt-secret-file", keys.secret_file,
            "--log-level", "debug"]
    s = Stack(workers=2, relays=1, worker_args=args, relay_args=args)
    s.nginx_env["ACCESS_LOG"] = s.path("nginx-access.log")
    s.start()
    ctx = Ctx(s, keys)
    ch = private_channel()
    canary = "canary" + uuid.uuid4().hex
    good = ctx.token(sub=[ch], pub=[ch], jti=canary)
    refresh = ctx.token(sub=[ch], jti=canary + "r")
    expired = ctx.token(sub=[ch], exp=-30, jti=canary + "e")
    forged = ctx.token(sub=[ch], key=keys.other_secret, jti=canary + "f")
    garbage = "pwleak" + uuid.uuid4().hex
    try:
        st, h, doc = publish(s, ch, "m1", good, where="query")
        assert st == 200, (st, doc)
        st, h, doc = publish(s, ch, "m2", good, where="header")
        assert st == 200, (st, doc)
        # The refusals' statuses are other tests' business: here only the logs count.
        for tok in (garbage, forged, expired):
            for where in ("query", "header", "cookie"):
                publish(s, ch, "no", tok, where=where)
        for where in ("query", "header", "cookie"):
            assert longpoll(s, ch, good, where)[0] == 200
            for tok in (garbage, expired, forged):
                longpoll(s, ch, tok, where)
        r = Sse(s, ch, good, "query")
        assert r.status == 200 and r.next_event()["json"]["content"] == "m1"
        r.close()
        for tok in (garbage, expired):
            Sse(s, ch, tok, "query").close()
        with ws_open(s, ch, good, "query") as ws:
            assert [ws_json(ws)["content"] for _ in range(2)] == ["m1", "m2"]
            ws.send_text(json.dumps({"type": "refresh", "token": refresh}))
            assert ws_json(ws)["type"] == "refreshed"
            ws.send_text(json.dumps({"type": "refresh", "token": garbage}))
            ws_json(ws)
        with ws_open(s, ch, good, "cookie") as ws:
            assert ws_json(ws)["content"] == "m1"
        for tok in (garbage, expired, forged):
            for where in ("query", "cookie", "header"):
                try:
                    ws_open(s, ch, tok, where).close()
                except HandshakeRefused:
                    pass
        time.sleep(0.5)  # let every process write its lines
        secrets = {"the valid token": good, "its signature": good.split(".")[2],
                   "its payload": good.split(".")[1], "the refresh token": refresh,
                   "the expired token": expired, "the forged token": forged,
                   "the forged signature": forged.split(".")[2], "a garbage token": garbage}
        yield s, secrets
    finally:
        s.stop()


def _leaks(s, names, secrets):
    out = []
    for name in names:
        text = s.log_text(name)
        for what, value in secrets.items():
            if value in text:
                line = next(l for l in text.splitlines() if value in l)
                out.append("%s holds %s: %s" % (name, what, line[:300]))
    return out


def test_token_never_in_worker_or_relay_logs(log_stack):
    s, secrets = log_stack
    names = sorted(n for n in os.listdir(s.dir) if n.startswith(("worker-", "relay-")) and n.endswith(".log"))
    assert len(names) == 3, names
    leaks = _leaks(s, names, secrets)
    assert not leaks, "\n".join(leaks)
    workers = "".join(s.log_text(n) for n in names if n.startswith("worker-"))
    # Debug logging is on and logs queries: redacted.
    assert "token=[redacted]" in workers, "no redacted query in the worker logs (is debug logging on?)"


def test_token_never_in_nginx_logs(log_stack):
    s, secrets = log_stack
    names = sorted(n for n in os.listdir(s.dir) if n.startswith("nginx") and n.endswith(".log"))
    assert "nginx-access.log" in names and "nginx-error.log" in names, names
    access = s.log_text("nginx-access.log")
    assert "/status?" in access and "/chat" in access, "the access log is empty"
    leaks = _leaks(s, names, secrets)
    assert not leaks, "\n".join(leaks)
    assert "token=[redacted]" in access, "the access log does not show the query as token=[redacted]"


def test_token_never_in_nginx_error_log_when_a_worker_is_gone(keys):
    """nginx writes the request line (the query with it) into its error log
    when an upstream fails: here a stopped worker (connection refused, or
    its socket gone), which nginx skips for the other one."""
    args = ["--private-channels", "private:*", "--jwt-secret-file", keys.secret_file]
    s = Stack(workers=2, relays=0, worker_args=args).start()
    try:
        ctx = Ctx(s, keys)
        ch = private_channel()
        tok = ctx.token(sub=[ch], jti="canary" + uuid.uuid4().hex)
        assert s.workers[1].stop() == 0
        for _ in range(20):
            st, h, b = longpoll(s, ch, tok, "query")
            assert st == 200, (st, b)
        text = s.log_text("nginx-error.log")
        assert "worker-1.sock" in text, "nginx logged no upstream error: nothing was tested"
        leaks = [l for l in text.splitlines() if tok.split(".")[2] in l]
        assert not leaks, "%d nginx error log lines hold the token, e.g.: %s" % (len(leaks), leaks[0][:400])
    finally:
        s.stop()


# ---- 8. a browser on another origin ------------------------------------------------------------

class _OtherSite(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><meta charset=utf-8><title>another site</title><h1>another site</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@contextlib.contextmanager
def other_site(host):
    srv = http.server.ThreadingHTTPServer((host, 0), _OtherSite)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield "http://%s:%d" % (host, srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def run_node(script, args, timeout=150):
    env = dict(os.environ, PW_CHROMIUM=os.environ.get("PW_CHROMIUM", "/usr/bin/chromium"))
    p = subprocess.Popen(["node", script, json.dumps(args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError("%s took over %ds\n%s" % (script, timeout, err[-4000:]))
    lines = [l for l in out.splitlines() if l.startswith("{")]
    assert lines, "no result from %s (exit %s)\n%s" % (script, p.returncode, err[-4000:])
    res = json.loads(lines[-1])
    assert res.get("ok"), "%s failed: %s\n%s" % (script, res.get("error"), err[-4000:])
    return res["details"], err


def test_browser_other_origin_cannot_publish_or_read(main):
    """Pages on two other origins (127.0.0.2: another site; 127.0.0.1 on
    another port: same site, other origin) in a browser that holds a token
    cookie for the stack: their form POSTs and fetch()es to /chat are refused
    and nothing is stored; they cannot read the private channel (EventSource
    without token, WebSocket with the cookie). The stack's own page publishes
    with fetch and a form, and reads the private channel with the cookie."""
    from test_browser import _ensure_tools  # npm ci in tests/browser when needed
    _ensure_tools()
    s, pub, priv = main.s, public_channel(), private_channel()
    secret_msg = "private-" + uuid.uuid4().hex[:8]
    main.publish(priv, secret_msg)
    tag = uuid.uuid4().hex[:8]
    with other_site("127.0.0.2") as cross_site, other_site("127.0.0.1") as same_site:
        attackers = [{"origin": o, "contents": {k: "%s-%s-%d" % (k.lower(), tag, i)
                                                for k in ("formPublic", "formPrivate", "fetchNoCors", "fetchCors")}}
                     for i, o in enumerate((cross_site, same_site))]
        args = {"base": s.url(""), "publicChannel": pub, "privateChannel": priv,
                "cookieToken": main.token(sub=[priv], pub=[priv, pub]), "attackers": attackers,
                "same": {"fetch": "same-fetch-" + tag, "form": "same-form-" + tag}}
        d, log = run_node(os.path.join(ROOT, "tests", "browser", "csrf.test.mjs"), args)
    print(json.dumps(d)[:3000])
    problems = []
    for at, a in zip(attackers, d["attackers"]):
        o = at["origin"]
        assert a["pageStatus"] == 200 and a["pageOrigin"] == o, a
        for k in ("formPublic", "formPrivate", "fetchNoCors", "fetchCors"):
            if a[k] != 403:
                problems.append("%s: %s POST /chat answered %r, want 403" % (o, k, a[k]))
        es = a["eventSource"]
        if es["opened"] or es["got"] or a["eventSourceStatus"] != 401:
            problems.append("%s: EventSource on the private channel without token: %r, status %r"
                            % (o, es, a["eventSourceStatus"]))
        if a["webSocket"]["opened"] or a["webSocket"]["got"]:
            problems.append("%s: WebSocket with the cookie from a foreign page: %r" % (o, a["webSocket"]))
    same = d["same"]
    if same["fetch"] != 200 or same["fetchResult"].get("status") != 200:
        problems.append("same-origin fetch POST: %r %r" % (same["fetch"], same["fetchResult"]))
    if same["form"] != 200:
        problems.append("same-origin form POST: %r" % same["form"])
    got = [json.loads(m)["content"] for m in same["eventSource"]["got"]]
    if got != [secret_msg] or same["eventSourceStatus"] != 200:
        problems.append("same-origin EventSource with the cookie: %r status %r" % (same["eventSource"], same["eventSourceStatus"]))
    got = [json.loads(m)["content"] for m in same["webSocket"]["got"]]
    if got != [secret_msg]:
        problems.append("same-origin WebSocket with the cookie: %r" % same["webSocket"])
    ns = same["eventSourceNoToken"]
    if ns["opened"] or ns["got"] or same["eventSourceNoTokenStatus"] != 401:
        problems.append("same-origin EventSource without cookie: %r status %r" % (ns, same["eventSourceNoTokenStatus"]))
    # What was stored: only the stack's own page's messages.
    st, h, b = longpoll(s, pub, since=0, timeout=0)
    stored_pub = [m["content"] for m in json.loads(b)["messages"]]
    if stored_pub != ["same-fetch-" + tag, "same-form-" + tag]:
        problems.append("public channel holds %r" % stored_pub)
    stored_priv = main.history(priv)
    if stored_priv != [secret_msg]:
        problems.append("private channel holds %r" % stored_priv)
    assert not problems, "\n".join(problems) + "\n--- browser log ---\n" + log[-3000:]
