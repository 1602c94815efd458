"""Network namespaces as test "hosts".

A Net is one private Ethernet segment: a bridge inside a namespace of its
own, and one namespace per host, each joined to the bridge by a veth pair
created directly between the two namespaces. Nothing is added to the root
namespace, so deleting the namespaces removes every interface, and two runs
(each with its own names, made from the pid) never see each other, even
with the same addresses.

Processes run in a host with ``ip netns exec NS argv`` (which execs, so the
Popen pid is the program's own pid); code of the test process itself enters
a namespace per thread with setns(2) (``with net.entered("client"): ...``),
and every socket made there stays in that namespace.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); ``Net.unavailable()`` says why
not when it cannot work.
"""
import contextlib
import ctypes
import os
import re
import shutil
import subprocess

CLONE_NEWNET = 0x40000000
PREFIX = "pwmh"  # pushwire multi-host: every namespace is PREFIX<pid>-<name>

_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args, check=True):
    r = subprocess.run(["ip"] + [str(a) for a in args], capture_output=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(map(str, args)),
                                          (r.stderr or r.stdout).decode(errors="replace").strip()))
    return r.stdout.decode()


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "setns: " + os.strerror(e))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale():
    """Delete namespaces of earlier runs whose test process is gone (a run
    killed with SIGKILL cannot clean up after itself)."""
    try:
        names = _ip("netns", "list", check=False).split()
    except Exception:
        return
    for n in names:
        m = re.match(r"^%s(\d+)-" % PREFIX, n)
        if m and not _pid_alive(int(m.group(1))):
            _ip("netns", "del", n, check=False)
    for d in os.listdir("/etc/netns") if os.path.isdir("/etc/netns") else ():
        m = re.match(r"^%s(\d+)-" % PREFIX, d)
        if m and not _pid_alive(int(m.group(1))):
            shutil.rmtree("/etc/netns/" + d, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir("/etc/netns")


class Net:
    def __init__(self, subnet="10.77.0", tag=None):
        self.tag = tag or "%s%d" % (PREFIX, os.getpid())
        self.subnet = subnet
        self.bridge_ns = self.tag + "-br"
        self.namespaces = []  # created, in order
        self.etc_dirs = []    # /etc/netns/NS directories created
        self.hosts = {}       # name -> (namespace, address)

    # ---- capability check -------------------------------------------------------
    @staticmethod
    def unavailable():
        """None when namespaces can be made here, else the reason."""
        if os.geteuid() != 0:
            return "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); run the tests as root"
        if not shutil.which("ip"):
            return "the ip command is missing: apt-get install -y iproute2"
        probe = "%s%d-probe" % (PREFIX, os.getpid())
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=20)
        if r.returncode != 0:
            return "cannot create a network namespace: " + r.stderr.decode(errors="replace").strip()
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
        return None

    # ---- construction -------------------------------------------------------------
    def _add_ns(self, ns):
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def create(self):
        self._add_ns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        return self

    def add_host(self, name, octet):
        """A namespace NAME with address SUBNET.OCTET/24 on eth0."""
        ns = "%s-%s" % (self.tag, name)
        addr = "%s.%d" % (self.subnet, octet)
        self._add_ns(ns)
        port = "v-" + name[:12]
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", addr + "/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts[name] = (ns, addr)
        return addr

    def set_hosts_file(self, name, text):
        """/etc/hosts as seen by processes started with exec_argv(NAME)
        (ip netns exec bind-mounts /etc/netns/NS/hosts over /etc/hosts)."""
        ns = self.ns(name)
        d = "/etc/netns/" + ns
        self.etc_dirs.append(d)
        try:
            os.makedirs(d, exist_ok=True)
        except FileNotFoundError:  # /etc/netns removed by another run's cleanup just then
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts"), "w") as f:
            f.write(text)

    def destroy(self):
        """Delete every namespace (their interfaces go with them). Stop the
        processes running in them first: a namespace outlives its mount
        point while a process is still inside."""
        errors = []
        for ns in reversed(self.namespaces):
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
            if r.returncode != 0:
                errors.append("%s: %s" % (ns, r.stderr.decode(errors="replace").strip()))
        self.namespaces = []
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.etc_dirs = []
        with contextlib.suppress(OSError):
            os.rmdir("/etc/netns")  # only when no one else uses it
        return errors

    def leftovers(self):
        """Namespaces of this Net that still exist."""
        have = set(_ip("netns", "list", check=False).split())
        return sorted(n for n in have if n.startswith(self.tag + "-"))

    # ---- use ------------------------------------------------------------------------
    def ns(self, name):
        return self.hosts[name][0] if name in self.hosts else "%s-%s" % (self.tag, name)

    def addr(self, name):
        return self.hosts[name][1]

    def exec_argv(self, name, argv):
        return ["ip", "netns", "exec", self.ns(name)] + list(argv)

    @contextlib.contextmanager
    def entered(self, name):
        """Run the body with this thread in host NAME's network namespace;
        sockets made inside stay there. The thread's own namespace is back
        afterwards."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open("/run/netns/" + self.ns(name), os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
