"""Figures of pushwire's own features, for `make bench` (bench/run imports
this; pushwire only, there is no anchor to compare them with):

token_cost  What a token check adds to a long-poll: wrk sends polls answered
            at once (since=0, timeout=0, one retained message) on a public
            channel and on a private one with an HS256, RS256 or ES256 token
            in `Authorization`; the figure is the CPU of the worker processes
            per answered poll, and of every server process (nginx and Redis
            too). The variants alternate, ROUNDS times each, on one stack per
            public-key kind; the median of each is reported, and the private
            ones as a difference to the public one of the same stack.

channel_memory  What one more channel on a connection costs: CONNS
            connections held with 1 channel and then, on a fresh stack, with
            K channels (the same K for every connection, as a dashboard
            following the same feeds); the RSS growth of the relays
            (WebSocket, direct) or of the workers (EventSource, through
            nginx), and of nginx, divided by the extra subscriptions,
            CONNS * (K - 1). The subscriptions are counted from the
            processes' pushwire_subscribers metric before measuring.
"""
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from clients import nginx_workers, rss_kb  # noqa: E402
from stack import Stack  # noqa: E402

ROUNDS = 3
NGINX_ENV = {"CHAT_RATE": "1000000", "CHAT_BURST": "1000000",
             "STATUS_RATE": "1000000", "STATUS_BURST": "1000000"}


def log(*a):
    print("bench:", *a, flush=True)


def cpu_s(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


# ---- keys and tokens --------------------------------------------------------------

def keys(d):
    """A secret and an RSA and an EC key pair in d (openssl)."""
    with open(os.path.join(d, "secret"), "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    for kind, gen in (("rsa", ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                      ("ec", ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        key = os.path.join(d, kind + ".key")
        subprocess.run(gen + ["-out", key], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-out", os.path.join(d, kind + ".pub")],
                       check=True, capture_output=True)


def mint(d, alg, channel, jti=None):
    import jwt  # python3-jwt, with python3-cryptography for RS/ES
    claims = {"exp": int(time.time()) + 3600, "pushwire": {"subscribe": [channel]}}
    if jti is not None:
        claims["jti"] = "t%d" % jti
    if alg == "HS256":
        with open(os.path.join(d, "secret")) as f:
            key = f.read().rstrip("\n")
    else:
        with open(os.path.join(d, ("rsa" if alg == "RS256" else "ec") + ".key")) as f:
            key = f.read()
    return jwt.encode(claims, key, algorithm=alg)


# ---- token cost ---------------------------------------------------------------------

WRK_TOKENS = """
local tokens = {%s}
local i = 0
request = function()
    if #tokens == 0 then return wrk.format("GET", %s) end
    i = i %% #tokens + 1
    return wrk.format("GET", %s, {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


def wrk_polls(port, path, tokens, seconds, script):
    """Polls for seconds, each with the next of tokens (none: no header)."""
    with open(script, "w") as f:
        q = '"%s"' % path
        f.write(WRK_TOKENS % (",".join('"%s"' % t for t in tokens), q, q))
    r = subprocess.run(["wrk", "-t1", "-c8", "-d%ds" % seconds, "-s", script,
                        "http://127.0.0.1:%d%s" % (port, path)], capture_output=True,
                       text=True, timeout=seconds + 60)
    total = non2xx = 0
    for line in r.stdout.splitlines():
        if "requests in" in line:
            total = int(line.split()[0])
        if "Non-2xx" in line:
            non2xx = int(line.split()[-1])
    return total, non2xx


FRESH = 4000   # distinct tokens: a token's cache slot has been taken by others when it comes back


def token_cost(build, seconds=3):
    if not shutil.which("wrk"):
        log("wrk is not installed: token cost skipped")
        return None
    try:
        import jwt  # noqa: F401
    except ImportError:
        log("python3-jwt is not installed: token cost skipped")
        return None
    d = tempfile.mkdtemp(prefix="pw-bench-keys-")
    out = {"rounds": ROUNDS, "seconds": seconds, "fresh_tokens": FRESH, "variants": {}}
    try:
        keys(d)
        for pub_kind, algs in (("rsa", ["HS256", "RS256"]), ("ec", ["ES256"])):
            args = ["--private-channels", "p:*", "--jwt-secret-file", os.path.join(d, "secret"),
                    "--jwt-public-key-file", os.path.join(d, pub_kind + ".pub")]
            variants = [("public", "bench-open", [])]
            for alg in algs:
                variants.append((alg + ", same token", "p:bench", [mint(d, alg, "p:bench")]))
                variants.append((alg + ", new token each poll", "p:bench",
                                 [mint(d, alg, "p:bench", jti=i) for i in range(FRESH)]))
            s = Stack(workers=2, relays=0, worker_args=args, build=build,
                      env={"PW_LOG_LEVEL": "warn"}, nginx_env=NGINX_ENV).start()
            try:
                s.publish("one message", channel="bench-open")
                st, doc = s.publish("one message", channel="p:bench", headers={
                    "Authorization": "Bearer " + jwt_publisher(d)})
                assert st == 200, (st, doc)
                workers = [w.pid for w in s.workers]
                every = workers + [s.nginx.pid] + nginx_workers(s.nginx.pid) + [s.redis.pid]
                samples = {v[0]: [] for v in variants}
                script = os.path.join(d, "polls.lua")
                for _ in range(ROUNDS):
                    for name, ch, tokens in variants:
                        w0, a0 = cpu_s(workers), cpu_s(every)
                        n, bad = wrk_polls(s.port, "/status?channel=%s&since=0&timeout=0" % ch, tokens,
                                           seconds, script)
                        w1, a1 = cpu_s(workers), cpu_s(every)
                        if not n or bad:
                            raise RuntimeError("%s: %d polls, %d not 2xx" % (name, n, bad))
                        samples[name].append((n / seconds, (w1 - w0) * 1e6 / n, (a1 - a0) * 1e6 / n))
                base = statistics.median(x[1] for x in samples["public"])
                base_all = statistics.median(x[2] for x in samples["public"])
                for name, _, _ in variants:
                    key = "public (with the %s key)" % pub_kind.upper() if name == "public" else name
                    xs = samples[name]
                    wk = statistics.median(x[1] for x in xs)
                    al = statistics.median(x[2] for x in xs)
                    out["variants"][key] = {
                        "polls_per_s": round(statistics.median(x[0] for x in xs)),
                        "worker_cpu_us_per_poll": round(wk, 1),
                        "server_cpu_us_per_poll": round(al, 1),
                        "token_worker_cpu_us": None if name == "public" else round(wk - base, 1),
                        "token_server_cpu_us": None if name == "public" else round(al - base_all, 1)}
                    log("  token check %-30s %6d polls/s, worker %.1f us/poll, all %.1f us/poll" % (
                        key, out["variants"][key]["polls_per_s"], wk, al))
            finally:
                s.stop(check=False)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


def jwt_publisher(d):
    import jwt
    with open(os.path.join(d, "secret")) as f:
        key = f.read().rstrip("\n")
    return jwt.encode({"exp": int(time.time()) + 3600, "pushwire": {"publish": ["p:*"]}}, key, algorithm="HS256")


# ---- memory per channel ----------------------------------------------------------------

async def hold(port, path, headers, conns, ready):
    """conns connections sending GET path with headers, each read up to the
    end of its response head; returns the writers once all are open."""
    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (path, port, headers)).encode())
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
        if not head.startswith(ready):
            raise RuntimeError("answered %r" % head[:80])
        return w
    out = []
    for i in range(0, conns, 100):   # in steps, not to overflow a listen backlog
        out += await asyncio.gather(*(one() for _ in range(min(100, conns - i))))
    return out


def channel_memory_one(build, transport, conns, k):
    s = Stack(workers=2, relays=1, build=build,
              worker_args=["--max-subscriptions", "1000"], relay_args=["--max-subscriptions", "1000"],
              env={"PW_LOG_LEVEL": "warn"}, nginx_env=NGINX_ENV).start()
    try:
        chans = ",".join("bench-mem-%d" % i for i in range(k))
        if transport == "websocket":
            port, procs = s.relay_ports[0], [r.pid for r in s.relays]
            headers = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
            ready = b"HTTP/1.1 101"
            metrics = lambda: sum(s.relay_metrics_get(i)["pushwire_subscribers"] for i in range(len(s.relays)))  # noqa: E731
        else:
            port, procs = s.port, [w.pid for w in s.workers]
            headers = "Accept: text/event-stream\r\n"
            ready = b"HTTP/1.1 200"
            metrics = lambda: sum(s.metrics(i)["pushwire_subscribers"] for i in range(len(s.workers)))  # noqa: E731
        ngx = [s.nginx.pid] + nginx_workers(s.nginx.pid)
        time.sleep(0.5)
        before = sum(rss_kb(p) for p in procs)
        ngx_before = sum(rss_kb(p) for p in ngx)
        loop = asyncio.new_event_loop()
        try:
            writers = loop.run_until_complete(hold(port, "/status?channel=%s" % chans, headers, conns, ready))
            deadline = time.monotonic() + 20
            while metrics() < conns * k and time.monotonic() < deadline:
                time.sleep(0.2)
            subs = metrics()
            time.sleep(0.5)
            after = sum(rss_kb(p) for p in procs)
            ngx_after = sum(rss_kb(p) for p in ngx)
            for w in writers:
                w.close()
        finally:
            loop.close()
        if subs != conns * k:
            raise RuntimeError("%s: %d subscriptions held, want %d" % (transport, subs, conns * k))
        return {"conns": conns, "channels": k, "subscriptions": subs, "rss_kib": after - before,
                "nginx_rss_kib": ngx_after - ngx_before}
    finally:
        s.stop(check=False)


def channel_memory(build, conns=1000, k=100):
    out = {}
    for transport in ("websocket", "eventsource"):
        one = channel_memory_one(build, transport, conns, 1)
        many = channel_memory_one(build, transport, conns, k)
        extra = conns * (k - 1)
        out[transport] = {
            "one": one, "many": many,
            "bytes_per_extra_channel": round((many["rss_kib"] - one["rss_kib"]) * 1024 / extra),
            "nginx_bytes_per_extra_channel": round((many["nginx_rss_kib"] - one["nginx_rss_kib"]) * 1024 / extra)}
        log("  memory per extra channel (%s): %d B in the %s, %d B in nginx (%d connections, 1 vs %d channels)" % (
            transport, out[transport]["bytes_per_extra_channel"],
            "relay" if transport == "websocket" else "workers",
            out[transport]["nginx_bytes_per_extra_channel"], conns, k))
    return out


def tables(results):
    """Markdown for bench/results/latest.md."""
    lines = []
    tc = results.get("token_cost")
    if tc:
        lines += ["", "Token check per long-poll (polls answered at once, wrk -c8, median of %d x %d s;"
                  " \"new token each poll\" cycles through %d tokens, past the cache of verified ones):" % (
                      tc["rounds"], tc["seconds"], tc["fresh_tokens"]), "",
            "| variant | polls/s | worker CPU us/poll | all servers CPU us/poll | token check, worker us | token check, all us |",
            "|---|---|---|---|---|---|"]
        for name, v in tc["variants"].items():
            lines.append("| %s | %d | %.1f | %.1f | %s | %s |" % (
                name, v["polls_per_s"], v["worker_cpu_us_per_poll"], v["server_cpu_us_per_poll"],
                "-" if v["token_worker_cpu_us"] is None else "%+.1f" % v["token_worker_cpu_us"],
                "-" if v["token_server_cpu_us"] is None else "%+.1f" % v["token_server_cpu_us"]))
    cm = results.get("channel_memory")
    if cm:
        lines += ["", "Memory per extra channel on a connection (RSS growth / extra subscriptions):", "",
                  "| transport | connections | channels each | bytes per extra channel | in nginx |",
                  "|---|---|---|---|---|"]
        for t, v in cm.items():
            lines.append("| %s | %d | 1 vs %d | %d (%s) | %d |" % (
                t, v["one"]["conns"], v["many"]["channels"], v["bytes_per_extra_channel"],
                "relay" if t == "websocket" else "workers", v["nginx_bytes_per_extra_channel"]))
    return "\n".join(lines) + ("\n" if lines else "")
