"""A pushwire stack on Redis Sentinel: two Redis servers (a master and its
replica) and three sentinels on free loopback ports, the workers and relays
given a redis+sentinel:// URL. Everything else is stack.Stack's.

`redis` and `redis_port` are the server the sentinels name as master right
now (what the fault tests kill, pause and read the final state from);
`start_redis` starts every server and sentinel that is not running, each
with the command line it first had (a killed master comes back as the
master it was configured as, and the sentinels turn it into a replica).
"""
import os

from stack import Proc, Stack, free_port, wait_for

MASTER = "pwmaster"
DOWN_AFTER_MS = 1000


def _text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return [_text(x) for x in v]
    return v


def resp(port, *args, timeout=1.0):
    """One command, the reply as Python values with strings (RESP2)."""
    from chaos import Resp  # (chaos imports this module)
    return _text(Resp(port, timeout=timeout).cmd(*args))


def info(port, section):
    """INFO section as a dict."""
    text = resp(port, "INFO", section)
    return dict(l.split(":", 1) for l in text.splitlines() if ":" in l and not l.startswith("#"))


class SentinelStack(Stack):
    def __init__(self, *a, node_args=(), **kw):
        super().__init__(*a, **kw)
        self.node_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.node_args = list(node_args)
        self.nodes = [None, None]
        self.sentinels = [None, None, None]
        self._master = 0

    # The current master, by the sentinels' word (the last known one while
    # none answers).
    def master_index(self):
        for p in self.sentinel_ports:
            try:
                addr = resp(p, "SENTINEL", "get-master-addr-by-name", MASTER, timeout=0.5)
                if addr and int(addr[1]) in self.node_ports:
                    self._master = self.node_ports.index(int(addr[1]))
                    break
            except (OSError, RuntimeError, ValueError):
                continue
        return self._master

    @property
    def redis(self):
        return self.nodes[self.master_index()]

    @redis.setter
    def redis(self, v):
        pass  # Stack.__init__ sets it; the nodes are ours

    @property
    def redis_port(self):
        return self.node_ports[self.master_index()]

    @redis_port.setter
    def redis_port(self, v):
        pass

    def sentinel_url(self):
        return "redis+sentinel://%s/%s" % (
            ",".join("127.0.0.1:%d" % p for p in self.sentinel_ports), MASTER)

    def env(self):
        e = super().env()
        e["REDIS_URL"] = self.extra_env.get("REDIS_URL", self.sentinel_url())
        return e

    def start_node(self, i):
        d = self.path("node%d" % i)
        os.makedirs(d, exist_ok=True)
        argv = ["redis-server", "--port", str(self.node_ports[i]), "--bind", "127.0.0.1",
                "--dir", d, "--save", "", "--daemonize", "no",
                "--maxmemory-policy", "noeviction",
                # Sync a (re)starting replica at once, not after Redis's
                # default 5 s wait for more replicas: a master killed within
                # that wait would leave the replica empty, and a failover to
                # it then loses everything.
                "--repl-diskless-sync-delay", "0"] + self.node_args
        if i == 1:
            argv += ["--replicaof", "127.0.0.1", str(self.node_ports[0])]
        self.nodes[i] = Proc("redis-%d" % i, argv, self.path("redis-%d.log" % i)).start()
        wait_for(lambda: resp(self.node_ports[i], "PING") == "PONG",
                 what="redis node %d to answer PING" % i)

    def start_sentinel(self, i):
        port = self.sentinel_ports[i]
        conf = self.path("sentinel-%d.conf" % i)
        if not os.path.exists(conf):  # the sentinel rewrites it as it learns
            with open(conf, "w") as f:
                f.write("port %d\nbind 127.0.0.1\ndir %s\n"
                        "sentinel monitor %s 127.0.0.1 %d 2\n"
                        "sentinel down-after-milliseconds %s %d\n"
                        "sentinel failover-timeout %s 4000\n" % (
                            port, self.dir, MASTER, self.node_ports[0], MASTER, DOWN_AFTER_MS,
                            MASTER))
        self.sentinels[i] = Proc("sentinel-%d" % i, ["redis-server", conf, "--sentinel"],
                                 self.path("sentinel-%d.log" % i)).start()
        wait_for(lambda: resp(port, "PING") == "PONG", what="sentinel %d" % i)

    def start_redis(self):
        for i, n in enumerate(self.nodes):
            if n is None or not n.alive():
                self.start_node(i)
        for i, s in enumerate(self.sentinels):
            if s is None or not s.alive():
                self.start_sentinel(i)
        # The sentinels know the master; at the first start, the replica is
        # in sync before anything else starts.
        wait_for(lambda: all(resp(p, "SENTINEL", "get-master-addr-by-name", MASTER)
                             for p in self.sentinel_ports), what="the sentinels to know the master")
        if not self.workers:
            self.wait_replicated()
        return self.redis

    def wait_replicated(self, timeout=20):
        """The master has its replica connected and in sync."""
        def ok():
            m = info(self.redis_port, "replication")
            return m.get("role") == "master" and m.get("connected_slaves") == "1" and \
                "state=online" in m.get("slave0", "")
        wait_for(ok, timeout=timeout, what="the replica to be in sync")

    def failover_done(self, old_port, timeout=30):
        """The sentinels name another master than old_port, and it says so."""
        def ok():
            p = self.redis_port
            return p != old_port and info(p, "replication").get("role") == "master"
        wait_for(ok, timeout=timeout, interval=0.1, what="the failover")

    def stop(self, check=True, keep=False):
        # No failover while everything stops: the sentinels and the replica
        # go first, the master after the workers (Stack.stop).
        m = self.master_index()
        for p in self.sentinels + [n for i, n in enumerate(self.nodes) if i != m]:
            if p is not None:
                p.stop()
        return super().stop(check=check, keep=keep)
