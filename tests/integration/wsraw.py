"""A small raw-socket WebSocket client for protocol tests.

It does exactly what it is told: frames can be sent unmasked, with reserved
bits or opcodes, fragmented, or as raw bytes, and everything the server sends
is parsed strictly (a server frame must not be masked, must use the shortest
length encoding and must end before the connection does), so the tests see
the server's bytes, not a library's interpretation of them.
"""
import base64
import hashlib
import os
import socket
import struct
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


class ProtocolViolation(AssertionError):
    """The server sent something RFC 6455 does not allow."""


class Truncated(ProtocolViolation):
    """The connection ended inside a frame."""


class HandshakeRefused(Exception):
    def __init__(self, status, headers, body):
        super().__init__("handshake refused with %d: %r" % (status, body[:200]))
        self.status, self.headers, self.body = status, headers, body


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(path="/status", host="127.0.0.1", key=None, version="13", origin=None,
                    method="GET", extra=(), omit=()):
    """The bytes of an upgrade request. omit: header names to leave out
    (e.g. "Sec-WebSocket-Key"); extra: (name, value) pairs appended."""
    key = new_key() if key is None else key
    headers = [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)]
    if origin is not None:
        headers.append(("Origin", origin))
    headers += list(extra)
    lines = ["%s %s HTTP/1.1" % (method, path)]
    lines += ["%s: %s" % (k, v) for k, v in headers if k not in omit]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head):
    """(status, {lower-case name: value}) of an HTTP response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "payload")

    def __init__(self, fin, rsv, opcode, payload):
        self.fin, self.rsv, self.opcode, self.payload = fin, rsv, opcode, payload

    @property
    def close_code(self):
        if self.opcode != OP_CLOSE:
            raise ValueError("not a close frame")
        if len(self.payload) >= 2:
            return struct.unpack("!H", self.payload[:2])[0]
        return None

    @property
    def close_reason(self):
        return self.payload[2:].decode("utf-8")

    def __repr__(self):
        p = self.payload if len(self.payload) <= 60 else self.payload[:60] + b"..."
        return "Frame(fin=%d, opcode=%#x, %d bytes: %r)" % (self.fin, self.opcode,
                                                           len(self.payload), p)


def encode_frame(opcode, payload=b"", fin=True, mask=True, rsv=0, mask_key=None):
    """A client frame. rsv: the RSV bits already shifted (0x40, 0x20, 0x10)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    b0 = (0x80 if fin else 0) | rsv | (opcode & 0x0F)
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return head + key + masked


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


class RawWS:
    """One client connection. Use RawWS.open(...) for a completed handshake,
    or RawWS(port) + send_raw + read_response for handshake tests."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the window is small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.port = port
        self.buf = b""
        self.eof = False
        self.timeout = timeout

    @classmethod
    def open(cls, port, path="/status?channel=default", host=None, origin=None, timeout=10.0,
             rcvbuf=None, extra=()):
        ws = cls(port, timeout=timeout, rcvbuf=rcvbuf)
        try:
            key = new_key()
            ws.send_raw(upgrade_request(path, host=host or "127.0.0.1:%d" % port, key=key,
                                        origin=origin, extra=extra))
            status, headers, body = ws.read_response()
            if status != 101:
                raise HandshakeRefused(status, headers, body)
            assert headers.get("upgrade", "").lower() == "websocket", headers
            assert "upgrade" in headers.get("connection", "").lower(), headers
            assert headers.get("sec-websocket-accept") == accept_for(key), headers
        except BaseException:
            ws.close()
            raise
        return ws

    # ---- bytes ---------------------------------------------------------------
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", **kw):
        self.send_raw(encode_frame(opcode, payload, **kw))

    def send_text(self, text, **kw):
        self.send_frame(OP_TEXT, text, **kw)

    def send_close(self, code=None, reason=b""):
        self.send_frame(OP_CLOSE, close_payload(code, reason))

    def _fill(self, deadline):
        """Read more bytes into buf; False at EOF. Raises socket.timeout
        after the deadline; ConnectionResetError passes through."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no data before the deadline")
        self.sock.settimeout(left)
        data = self.sock.recv(1 << 16)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _need(self, n, deadline, what):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise Truncated("connection ended inside %s (%d of %d bytes)" %
                                (what, len(self.buf), n))

    # ---- HTTP ------------------------------------------------------------------
    def read_response(self, timeout=None):
        """(status, headers, body) of an HTTP response; the body is read by
        Content-Length when the status is not 101."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise Truncated("connection ended before the response head: %r" % self.buf)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, headers = parse_head(head)
        body = b""
        if status != 101:
            n = int(headers.get("content-length", "0"))
            self._need(n, deadline, "the response body")
            body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    # ---- frames ------------------------------------------------------------------
    def recv_frame(self, timeout=None):
        """The next server frame. Raises Truncated when the connection ends
        inside one, EOFError when it ends between frames."""
        deadline = time.monotonic() + (timeout or self.timeout)
        if not self.buf and not self._fill(deadline):
            raise EOFError("connection closed")
        self._need(2, deadline, "a frame header")
        b0, b1 = self.buf[0], self.buf[1]
        if b1 & 0x80:
            raise ProtocolViolation("server frame is masked")
        n, hl = b1 & 0x7F, 2
        if n == 126:
            self._need(4, deadline, "a frame header")
            n, hl = struct.unpack("!H", self.buf[2:4])[0], 4
            if n < 126:
                raise ProtocolViolation("non-minimal 16-bit length %d" % n)
        elif n == 127:
            self._need(10, deadline, "a frame header")
            n, hl = struct.unpack("!Q", self.buf[2:10])[0], 10
            if n < 65536 or n >> 63:
                raise ProtocolViolation("bad 64-bit length %d" % n)
        self._need(hl + n, deadline, "a frame payload")
        payload, self.buf = self.buf[hl:hl + n], self.buf[hl + n:]
        f = Frame(bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, payload)
        if f.rsv:
            raise ProtocolViolation("server frame with RSV bits: %r" % f)
        if f.opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            raise ProtocolViolation("server frame with reserved opcode: %r" % f)
        if f.opcode >= OP_CLOSE and (not f.fin or n > 125):
            raise ProtocolViolation("bad server control frame: %r" % f)
        return f

    def recv_data(self, timeout=None):
        """The next data frame (text), skipping pings (answered) and pongs.
        Returns the Frame; a close frame is returned as is."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:
                continue
            return f

    def read_close(self, timeout=None):
        """Read frames up to the server's close frame; returns (code, reason,
        frames before it). Raises when the connection ends first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = []
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_CLOSE:
                return f.close_code, f.close_reason, seen
            seen.append(f)

    def expect_eof(self, timeout=None):
        """Wait for the server to end the TCP connection, with no bytes after
        what was already read. True for FIN, "reset" for an RST."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while self._fill(deadline):
                pass
        except ConnectionResetError:
            return "reset"
        assert not self.buf, "bytes after the close frame: %r" % self.buf[:100]
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def http_exchange(port, request, timeout=10.0, trickle=None):
    """Send request bytes on a new connection (trickle: seconds between
    single bytes) and return (status, headers, body, the RawWS)."""
    ws = RawWS(port, timeout=timeout)
    if trickle is None:
        ws.send_raw(request)
    else:
        for i in range(len(request)):
            ws.send_raw(request[i:i + 1])
            if trickle:
                time.sleep(trickle)
    status, headers, body = ws.read_response()
    return status, headers, body, ws
