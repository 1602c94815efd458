"""The README is kept true: every option of every binary is documented with
its environment variable and default, and the curl examples work."""
import os
import re
import subprocess

import pytest

from stack import BUILD, ROOT


def help_options(binary):
    out = subprocess.run([os.path.join(BUILD, binary), "--help"], capture_output=True,
                         text=True, check=True).stdout
    opts = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s+--([a-z-]+)", line)
        if m and m.group(1) != "help":
            env = re.search(r"env (\S+), default (.*)$", lines[i + 1])
            opts[m.group(1)] = (env.group(1).rstrip(","), env.group(2).strip())
    return opts


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


@pytest.mark.parametrize("binary", ["pushwire-worker", "pushwire-relay"])
def test_every_option_is_in_the_readme(binary):
    text = readme()
    opts = help_options(binary)
    assert len(opts) > 10
    for flag, (env, default) in opts.items():
        rows = [l for l in text.splitlines() if l.startswith("| `--%s" % flag)]
        assert rows, "--%s of %s is not in the README" % (flag, binary)
        assert any("`%s`" % env in r for r in rows), "--%s: README lacks %s" % (flag, env)
        if default not in ("(none)",) and flag not in ("id",):
            assert any(default in r for r in rows), \
                "--%s: README does not show the default %s" % (flag, default)


def test_unknown_flags_and_bad_values_are_errors():
    for binary in ("pushwire-worker", "pushwire-relay"):
        exe = os.path.join(BUILD, binary)
        r = subprocess.run([exe, "--no-such-flag"], capture_output=True, text=True)
        assert r.returncode == 2 and "unknown option" in r.stderr
        r = subprocess.run([exe, "--backlog", "lots"], capture_output=True, text=True)
        assert r.returncode == 2 and "not a whole number" in r.stderr
        r = subprocess.run([exe, "--log-level", "loud"], capture_output=True, text=True)
        assert r.returncode == 2 and "error, warn, info, debug" in r.stderr
        r = subprocess.run([exe, "--redis", "http://x"], capture_output=True, text=True)
        assert r.returncode == 2 and "scheme" in r.stderr


def test_readme_curl_examples_work(stack):
    """The quick-start commands, pointed at the test stack."""
    base = "http://127.0.0.1:%d" % stack.port
    pub = subprocess.run(["curl", "-s", "-d", "content=hi", base + "/chat"],
                         capture_output=True, text=True, check=True).stdout
    assert '"id":' in pub
    got = subprocess.run(["curl", "-s", base + "/status?since=0"], capture_output=True,
                         text=True, check=True).stdout
    assert '"content":"hi"' in got
    js = subprocess.run(["curl", "-s", "-H", "Content-Type: application/json", "-d",
                         '{"content":"hi","channel":"room1"}', base + "/chat"],
                        capture_output=True, text=True, check=True).stdout
    assert '"channel":"room1"' in js


def test_shell_scripts_pass_shellcheck():
    import shutil
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is missing: apt-get install -y shellcheck", pytrace=False)
    scripts = ["nginx/render", "nginx/run", "nginx/redact", "scripts/run-stack", "scripts/install-deps", "scripts/run-fuzz",
               ".ci/run", "bench/anchors/pushpin/run.sh", "bench/anchors/socketio/run.sh",
               "bench/anchors/lib.sh"] + [
                   "docker/" + f for f in sorted(os.listdir(os.path.join(ROOT, "docker")))]
    r = subprocess.run(["shellcheck"] + scripts, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.stack(relays=1)
def test_readme_websocket_and_eventsource_one_liners(fresh_stack):
    """`python3 -m websockets ws://HOST/status` and `curl -N` with
    Accept: text/event-stream show a message published with curl."""
    import threading
    import time
    s = fresh_stack
    base = "127.0.0.1:%d" % s.port
    ws = subprocess.Popen(["/usr/bin/python3", "-m", "websockets", "ws://%s/status?channel=room1" % base],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sse = subprocess.Popen(["curl", "-sN", "-H", "Accept: text/event-stream",
                            "http://%s/status?channel=room1" % base], stdout=subprocess.PIPE)
    try:
        from stack import wait_for
        wait_for(lambda: s.relay_metrics_get(0)["pushwire_ws_clients"] >= 1 and
                 sum(s.metrics(i)["pushwire_eventsource_streams"] for i in range(s.nworkers)) >= 1,
                 what="both clients to connect")
        time.sleep(0.3)
        subprocess.run(["curl", "-s", "-d", "content=hi from curl", "-d", "channel=room1",
                        "http://%s/chat" % base], check=True, capture_output=True)
        out = {"ws": b"", "sse": b""}

        def read(name, f):
            while b"hi from curl" not in out[name]:
                chunk = f.read1(4096) if hasattr(f, "read1") else f.read(1)
                if not chunk:
                    return
                out[name] += chunk
        ts = [threading.Thread(target=read, args=("ws", ws.stdout), daemon=True),
              threading.Thread(target=read, args=("sse", sse.stdout), daemon=True)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        assert b'"content":"hi from curl"' in out["ws"], out["ws"]
        assert b'data: {"channel":"room1"' in out["sse"] and b"hi from curl" in out["sse"], out["sse"]
    finally:
        ws.kill()
        sse.kill()
        ws.wait()
        sse.wait()


def header_variables(path, start):
    """Names in the "#   NAME   meaning" lines of a script's header comment,
    after the line that contains start."""
    names, on = [], False
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            if not line.startswith("#"):
                break
            if start in line:
                on = True
                continue
            m = re.match(r"#   ([A-Z][A-Z_]+)\s", line)
            if on and m:
                names.append(m.group(1))
    return names


@pytest.mark.parametrize("script,start", [("nginx/render", "Settings come from the environment"),
                                          ("scripts/run-stack", "Settings (environment)")])
def test_every_setting_of_make_run_is_in_the_readme(script, start):
    names = header_variables(script, start)
    assert len(names) >= 6, names
    text = readme()
    # Set by make run itself (not by users): the addresses it renders.
    internal = {"LISTEN", "WORKER_ADDRS", "RELAY_ADDRS", "METRICS_ADDRS", "HTML_DIR",
                "ERROR_LOG", "NGINX_USER", "BUILD_DIR"}
    missing = [n for n in names if "`%s`" % n not in text and n not in internal]
    assert not missing, "%s reads %s, which the README does not mention" % (script, missing)


def test_readme_private_channels_example(tmp_path):
    """The "Try it" lines of README's Private channels section, in order,
    against a stack started with the settings its `make run` line names."""
    import time
    from stack import Stack
    text = readme()
    sec = text[text.index("## Private channels"):text.index("## Many channels on one connection")]
    blocks = re.findall(r"```sh\n(.*?)```", sec, re.S)
    assert len(blocks) == 2, blocks
    setup, lines = blocks[0].strip().splitlines(), blocks[1].strip().splitlines()
    assert setup[1].endswith("make run"), setup
    subprocess.run(["bash", "-c", setup[0]], cwd=tmp_path, check=True)
    assign = setup[1][:-len("make run")]
    out = subprocess.run(["bash", "-c", assign + ' env | grep "^PW_"'], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    env = dict(l.split("=", 1) for l in out.split())
    s = Stack(workers=1, relays=1, env=env).start()
    try:
        def sub(line):
            return line.replace("127.0.0.1:8080", "127.0.0.1:%d" % s.port).replace(
                "scripts/", os.path.join(ROOT, "scripts") + "/")
        mint = sub(lines[0])
        script = lambda body: "%s\n%s" % (mint, body)  # noqa: E731
        run = lambda l: subprocess.run(["bash", "-c", script(sub(l))], cwd=tmp_path,  # noqa: E731
                                       capture_output=True, text=True, timeout=20).stdout
        assert '"id":1' in run(lines[1])
        assert '"content":"hi"' in run(lines[2])
        assert "a token is required" in run(lines[3])
        for l in lines[4:6]:
            p = subprocess.Popen(["bash", "-c", script(sub(l))], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.PIPE, start_new_session=True)
            try:
                got, deadline = b"", time.monotonic() + 15
                os.set_blocking(p.stdout.fileno(), False)
                while b'"content":"hi"' not in got and time.monotonic() < deadline:
                    got += p.stdout.read() or b""
                    time.sleep(0.1)
                assert b'"content":"hi"' in got, (l, got)
            finally:
                import signal
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    finally:
        s.stop()


# The pushwire.js page runs in test_client_js's browser session and stack
# (private channels p:*), imported as fixtures.
from test_client_js import client_browser, keys, shared  # noqa: E402,F401


def test_readme_pushwire_example(client_browser, shared):  # noqa: F811
    """README's pushwire.js page (section Private channels), as a user
    would run it after the section's curl lines: the token minted as
    `scripts/mint-token secret --sub 'p:alice' --pub 'p:alice'` is pasted in,
    `hi` was published on p:alice; the page shows the history, the 403 of
    the channel it may not read, its own publish, and a later curl publish
    on the public channel, each once."""
    text = readme()
    sec = text[text.index("## Private channels"):text.index("## Many channels on one connection")]
    blocks = re.findall(r"```html\n(.*?)```", sec, re.S)
    assert len(blocks) == 1, blocks
    html = blocks[0]
    assert '"PASTE THE TOKEN HERE"' in html
    token = shared.keys.mint(subscribe=["p:alice"], publish=["p:alice"], ttl=3600)
    html = html.replace("PASTE THE TOKEN HERE", token)
    st, doc = shared.publish("p:alice", "hi", token)
    assert st == 200 and doc["id"] == 1, (st, doc)
    d = client_browser.run("readme", shared, html=html,
                           expect=["p:alice #1: hi", "published #2", "p:alice #2: hello from the browser"],
                           publish=[{"channel": "general", "content": "yo"}],
                           expectAfter=[r"^general #\d+: yo$"],
                           allow=[r"status of 40[34]\b"])
    # the console errors allowed: the 403 of p:bob's check (and the
    # browser's own request for a favicon, not always seen as a response)
    assert set(d["refused"]) - {"404 GET /favicon.ico"} == {"403 GET /status"}, d["refused"]
    lines = d["lines"]
    bob = [l for l in lines if l.startswith("p:bob: ")]
    assert len(bob) == 1 and bob[0].startswith("p:bob: 403 "), lines
    general = [l for l in lines if l.startswith("general #")]
    assert len(general) == 1 and general[0].endswith(": yo"), lines
    assert sorted(lines) == sorted(["p:alice #1: hi", "published #2", "p:alice #2: hello from the browser",
                                    bob[0], general[0]]), lines

