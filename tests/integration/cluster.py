"""A pushwire stack on Redis Cluster: three masters, each with a replica,
on free loopback ports (redis-cli --cluster create), the workers and relays
given a redis+cluster:// URL naming two of them. Everything else is
stack.Stack's.

`redis` and `redis_port` are the master of slot 0 right now (what the
generic fault tests stop, kill and pause);
`start_redis` starts every node that is not running, with the command line
it first had (a killed master comes back and the cluster makes it a
replica of the one promoted in its place). `channel_state` reads a
channel's state from the master of its slot.
"""
import json
import os
import subprocess
import time

import clients as C
from sentinel import info, resp  # noqa: F401 (RESP helpers shared with the tests)
from stack import Proc, Stack, free_port, wait_for

NODE_TIMEOUT_MS = 1000


def cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too."""
    import socket
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        try:
            with socket.socket() as t:
                t.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port pair for a cluster node")


def cluster_state(port):
    """cluster_state from CLUSTER INFO: "ok" or "fail"."""
    text = resp(port, "CLUSTER", "INFO")
    return dict(l.split(":", 1) for l in text.splitlines() if ":" in l).get("cluster_state")


class ClusterStack(Stack):
    SHARDS = 3

    def __init__(self, *a, node_args=(), replicas=1, **kw):
        super().__init__(*a, **kw)
        self.replicas = replicas  # per master
        self.node_ports = [cluster_port() for _ in range((1 + replicas) * self.SHARDS)]
        self.node_args = list(node_args)
        self.nodes = [None] * len(self.node_ports)
        self.created = False

    # ---- the nodes ---------------------------------------------------------------
    def _slot0_index(self):
        """The node serving slot 0 (what the generic Redis faults hit), or
        the first live one while nobody answers."""
        try:
            for s, _, m, _ in self.slots():
                if s == 0 and m in self.node_ports:
                    return self.node_ports.index(m)
        except (OSError, RuntimeError, ValueError, IndexError):
            pass
        for i, n in enumerate(self.nodes):
            if n is not None and n.alive():
                return i
        return 0

    @property
    def redis(self):
        return self.nodes[self._slot0_index()]

    @redis.setter
    def redis(self, v):
        pass  # Stack.__init__ sets it; the nodes are ours

    @property
    def redis_port(self):
        return self.node_ports[self._slot0_index()]

    @redis_port.setter
    def redis_port(self, v):
        pass

    def cluster_url(self):
        return "redis+cluster://%s" % ",".join("127.0.0.1:%d" % p for p in self.node_ports[:2])

    def env(self):
        e = super().env()
        e["REDIS_URL"] = self.extra_env.get("REDIS_URL", self.cluster_url())
        return e

    def start_node(self, i):
        for attempt in range(3):
            d = self.path("node%d" % i)
            os.makedirs(d, exist_ok=True)
            argv = ["redis-server", "--port", str(self.node_ports[i]), "--bind", "127.0.0.1",
                    "--dir", d, "--save", "", "--daemonize", "no",
                    "--maxmemory-policy", "noeviction",
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    "--repl-diskless-sync-delay", "0"] + self.node_args
            self.nodes[i] = Proc("redis-%d" % i, argv, self.path("redis-%d.log" % i)).start()
            try:
                wait_for(lambda: resp(self.node_ports[i], "PING") == "PONG",
                         what="redis node %d to answer PING" % i)
                return
            except AssertionError:
                # Before the cluster exists, a port pair taken meanwhile (the
                # bus port is chosen free, not held) is replaced.
                if self.created or self.nodes[i].alive() or attempt == 2:
                    raise
                self.node_ports[i] = cluster_port()

    def start_redis(self):
        for i, n in enumerate(self.nodes):
            if n is None or not n.alive():
                self.start_node(i)
        if not self.created:
            out = subprocess.run(
                ["redis-cli", "--cluster", "create"] +
                ["127.0.0.1:%d" % p for p in self.node_ports] +
                ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
            self.created = True
        self.wait_healthy()
        return self.redis

    def alive_ports(self):
        return [p for n, p in zip(self.nodes, self.node_ports) if n is not None and n.alive()]

    def slots(self, port=None):
        """CLUSTER SLOTS as [(start, end, master_port, [replica ports])]."""
        r, err = None, None
        for p in [port] if port else self.alive_ports():
            try:
                r = resp(p, "CLUSTER", "SLOTS", timeout=0.5)
                break
            except (OSError, RuntimeError) as e:  # a node stopped: ask the next
                err = e
        if r is None:
            raise err or RuntimeError("no node answers")
        return [(int(x[0]), int(x[1]), int(x[2][1]), [int(y[1]) for y in x[3:]]) for x in r]

    def masters(self):
        return sorted({m for _, _, m, _ in self.slots()})

    def wait_healthy(self, timeout=60):
        """Every live node says cluster_state:ok, every slot has a master,
        and each master has its replica in sync."""
        def ok():
            for p in self.alive_ports():
                if cluster_state(p) != "ok":
                    return False
            sl = self.slots()
            if sum(e - s + 1 for s, e, _, _ in sl) != 16384:
                return False
            for m in {m for _, _, m, _ in sl}:
                rep = info(m, "replication")
                if rep.get("role") != "master":
                    return False
                live = len([p for p in self.alive_ports() if p != m]) >= self.SHARDS
                if self.replicas and live and "state=online" not in rep.get("slave0", ""):
                    return False
            return True
        wait_for(ok, timeout=timeout, interval=0.2, what="the cluster to be healthy")

    def keyslot(self, key):
        return int(resp(self.alive_ports()[0], "CLUSTER", "KEYSLOT", key))

    def master_of(self, channel, prefix="pw:"):
        slot = self.keyslot("%s{%s}:ch" % (prefix, channel))
        for s, e, m, _ in self.slots():
            if s <= slot <= e:
                return m
        raise RuntimeError("slot %d has no master" % slot)

    def node_id(self, port):
        return resp(port, "CLUSTER", "MYID")

    def channel_state(self, channel, prefix="pw:"):
        """(epoch, newest id, [(id, content)]) from the channel's master."""
        from chaos import Resp
        r = Resp(self.master_of(channel, prefix), timeout=10)
        meta = r.cmd("HMGET", "%s{%s}:ch" % (prefix, channel), "seq", "ep", "gen")
        seq = int(meta[0] or 0)
        epoch = None if meta[1] is None else (meta[2] or b"").decode() + meta[1].decode()
        entries = []
        for sid, fields in r.cmd("XRANGE", "%s{%s}:h" % (prefix, channel), "-", "+") or []:
            fd = {fields[i].decode(): fields[i + 1] for i in range(0, len(fields), 2)}
            entries.append((int(sid.decode().split("-")[0]),
                            C.content_key(json.loads(fd["c"].decode("utf-8")))))
        return epoch, seq, entries

    # ---- what the tests do to it --------------------------------------------------
    def failover_done(self, old_port, timeout=30):
        """No slot is served by old_port any more (its replica took over)."""
        def ok():
            try:
                return old_port not in self.masters() and all(
                    cluster_state(p) == "ok" for p in self.alive_ports())
            except (OSError, RuntimeError):
                return False
        wait_for(ok, timeout=timeout, interval=0.1, what="the cluster failover")

    def migrate_slot(self, slot, src, dst, pause=0.0, batch=10):
        """Move slot from master src to master dst the way redis-cli
        --cluster reshard does: IMPORTING/MIGRATING, MIGRATE the keys in
        batches (sleeping pause between them), then the owner everywhere."""
        sid, did = self.node_id(src), self.node_id(dst)
        resp(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
        resp(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", did)
        moved = 0
        while True:
            keys = resp(src, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            r = resp(src, "MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys, timeout=10)
            assert r in ("OK", "NOKEY"), r
            moved += len(keys)
            if pause:
                time.sleep(pause)
        for p in [dst, src] + [m for m in self.masters() if m not in (src, dst)]:
            resp(p, "CLUSTER", "SETSLOT", slot, "NODE", did)
        return moved

    def stop(self, check=True, keep=False):
        # The workers first, then every node (Stack.stop stops one).
        try:
            super().stop(check=check, keep=True)
        finally:
            for n in self.nodes:
                if n is not None:
                    n.stop()
        if not keep and os.environ.get("PW_KEEP_LOGS") != "1":
            import shutil
            shutil.rmtree(self.dir, ignore_errors=True)
