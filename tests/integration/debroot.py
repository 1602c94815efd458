"""A pristine Debian 12 root for the entry-point tests.

`debootstrap --variant=minbase bookworm` once into a cached tarball (the
slow part, about a minute), then a fresh copy of it for every use: the
clean-room test unpacks it and chroots into it; the compose test imports it
as the `debian:bookworm` base image. The root is what a new machine or a
Debian container image is: Debian's mirrors as on this host (bookworm,
-updates, -security) and the `policy-rc.d` that container images ship, and
nothing else installed.

The cache lives outside the checkout (PW_ROOT_CACHE, default
/var/cache/pushwire-tests) so that a fresh clone still finds it; it is
rebuilt when missing. Needs root.
"""
import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile

CACHE = os.environ.get("PW_ROOT_CACHE", "/var/cache/pushwire-tests")
SUITE = "bookworm"
MIRROR = os.environ.get("PW_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What Debian's own container images carry: package scripts must not start
# services (there is no init to start them with).
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def missing_tools():
    """Why this machine cannot make roots, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    for tool in ("debootstrap", "tar", "chroot", "mount"):
        if not shutil.which(tool):
            return "%s is missing: scripts/install-deps --test installs it" % tool
    return None


def _sources():
    """The host's Debian sources, so that the root sees the same archive
    (with security updates) as this machine; Debian's defaults otherwise."""
    host = "/etc/apt/sources.list.d/debian.sources"
    if os.path.exists(host):
        with open(host) as f:
            return "debian.sources", f.read()
    return "debian.sources", (
        "Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: %s-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        % (MIRROR, SUITE, SUITE, SUITE))


def minbase_tarball(log=print):
    """Path of the cached tarball of a pristine root, made if missing."""
    os.makedirs(CACHE, exist_ok=True)
    tarball = os.path.join(CACHE, "%s-minbase.tar" % SUITE)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(tarball):
            return tarball
        work = tempfile.mkdtemp(prefix="pw-debootstrap-", dir=CACHE)
        try:
            root = os.path.join(work, "root")
            log("debroot: debootstrap --variant=minbase %s (once; cached in %s)" % (SUITE, CACHE))
            r = subprocess.run(["debootstrap", "--variant=minbase", SUITE, root, MIRROR],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=1200)
            if r.returncode != 0:
                raise RuntimeError("debootstrap failed:\n" + (r.stdout + r.stderr)[-3000:])
            name, text = _sources()
            with open(os.path.join(root, "etc/apt/sources.list.d", name), "w") as f:
                f.write(text)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, "etc/apt/sources.list"))
            policy = os.path.join(root, "usr/sbin/policy-rc.d")
            with open(policy, "w") as f:
                f.write(POLICY_RC_D)
            os.chmod(policy, 0o755)
            # No downloaded packages: like an image. (The package lists
            # debootstrap fetched stay in the tarball; fresh_root drops them.)
            shutil.rmtree(os.path.join(root, "var/cache/apt/archives"), ignore_errors=True)
            os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"), exist_ok=True)
            part = tarball + ".part"
            subprocess.run(["tar", "-C", root, "--numeric-owner", "-cf", part, "."], check=True)
            os.rename(part, tarball)
            return tarball
        finally:
            shutil.rmtree(work, ignore_errors=True)


def fresh_root(dest, log=print):
    """Unpack a pristine root into the empty directory dest. Like a Debian
    container image it has no package lists: apt-get update comes first."""
    os.makedirs(dest, exist_ok=True)
    subprocess.run(["tar", "-C", dest, "--numeric-owner", "-xpf", minbase_tarball(log)],
                   check=True)
    lists = os.path.join(dest, "var/lib/apt/lists")
    for name in os.listdir(lists):
        path = os.path.join(lists, name)
        if os.path.isfile(path) and name != "lock":
            os.unlink(path)
    return dest


@contextlib.contextmanager
def mounted(root):
    """/proc, /sys, /dev (with what is under it) and the host's DNS
    settings inside root, for as long as the block runs; unmounted after,
    lazily, even if something in the root still holds them."""
    done = []
    try:
        # /dev is the host's, bound recursively and made a slave, so that
        # nothing mounted or unmounted inside propagates back to the host.
        for args, dst in ((["-t", "proc", "proc"], "proc"),
                          (["-t", "sysfs", "sysfs"], "sys"),
                          (["--rbind", "/dev"], "dev")):
            target = os.path.join(root, dst)
            os.makedirs(target, exist_ok=True)
            subprocess.run(["mount"] + args + [target], check=True)
            done.append(target)
            if dst == "dev":
                subprocess.run(["mount", "--make-rslave", target], check=True)
        shutil.copyfile("/etc/resolv.conf", os.path.join(root, "etc/resolv.conf"))
        yield root
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-R", "-l", target], check=False)


def mounts_under(root):
    """Mount points at or below root (what deleting it would go through)."""
    root = os.path.realpath(root)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p == root or p.startswith(root + "/")]


def remove_root(root):
    """Delete a root made by fresh_root (after mounted() and any mount of
    the caller's have left it): never through a mount, such as the host's
    /dev or a bound cache."""
    still = mounts_under(root)
    if still:
        raise RuntimeError("still mounted, not deleting %s: %r" % (root, still))
    shutil.rmtree(root, ignore_errors=True)
