"""A minimal FastCGI client (the responder role, as nginx speaks it) so that
tests can talk to one chosen worker, bypassing nginx's load balancing."""
import socket
import struct

BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7


def _record(rtype, reqid, content):
    out = b""
    # Records hold at most 65535 bytes; an empty one ends a stream.
    chunks = [content[i:i + 65535] for i in range(0, len(content), 65535)] or [b""]
    for c in chunks:
        out += struct.pack(">BBHHBx", 1, rtype, reqid, len(c), 0) + c
    return out


def _nv(name, value):
    def length(n):
        return struct.pack(">B", n) if n < 128 else struct.pack(">I", n | 0x80000000)
    n, v = name.encode(), value.encode()
    return length(len(n)) + length(len(v)) + n + v


class FcgiRequest:
    """Send one request; read the answer later (so that a test can hold it)."""

    def __init__(self, sock_path, method, uri, query="", body=b"", headers=None, reqid=1,
                 timeout=30):
        self.reqid = reqid
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(sock_path)
        params = {
            "REQUEST_METHOD": method, "DOCUMENT_URI": uri, "SCRIPT_NAME": uri,
            "QUERY_STRING": query, "CONTENT_LENGTH": str(len(body)),
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        }
        for k, v in (headers or {}).items():
            if k.lower() == "content-type":
                params["CONTENT_TYPE"] = v
            else:
                params["HTTP_" + k.upper().replace("-", "_")] = v
        data = _record(BEGIN_REQUEST, reqid, struct.pack(">HB5x", 1, 0))
        pbytes = b"".join(_nv(k, v) for k, v in params.items())
        data += _record(PARAMS, reqid, pbytes) + (_record(PARAMS, reqid, b"") if pbytes else b"")
        if body:
            data += _record(STDIN, reqid, body)
        data += _record(STDIN, reqid, b"")
        self.s.sendall(data)

    def _read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return buf

    def response(self):
        """Read records until END_REQUEST. Returns (status, headers, body, stdout_records)."""
        stdout = b""
        records = 0
        while True:
            hdr = self._read_exact(8)
            ver, rtype, reqid, clen, plen = struct.unpack(">BBHHBx", hdr)
            content = self._read_exact(clen)
            self._read_exact(plen)
            assert reqid == self.reqid, "record for request %d, expected %d" % (reqid, self.reqid)
            if rtype == STDOUT:
                stdout += content
                records += 1
            elif rtype == END_REQUEST:
                break
        self.s.close()
        head, _, body = stdout.partition(b"\r\n\r\n")
        headers = {}
        status = 200
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "status" in headers:
            status = int(headers["status"].split()[0])
        return status, headers, body, records

    def close(self):
        self.s.close()


def request(sock_path, method, uri, query="", body=b"", headers=None, reqid=1, timeout=30):
    r = FcgiRequest(sock_path, method, uri, query, body, headers, reqid, timeout)
    return r.response()
