"""A seeded, randomized fault test with a checker of the guarantees (issue 10).

For a bounded time, a stack of nginx, Redis (append-only, appendfsync
always in one test and everysec in another; in the last two a master, a
replica and three sentinels, with and without --redis-wait-replicas 1; in
the last a Redis Cluster of three masters with a replica each),
2 workers and 2 relays serves
clients on all three transports (long-poll, WebSocket through nginx and
straight to a relay, EventSource) on three channels, all resuming with
since/epoch or Last-Event-ID, some without since; publishers with and
without Idempotency-Key retry on 5xx. Meanwhile a scheduler picks faults
from a seeded RNG: Redis SIGSTOP, SIGKILL and SIGTERM with restarts, killed
pub/sub or command connections, CLIENT PAUSE; SIGKILL and SIGTERM of a
worker or a relay and starting it again; nginx reloads; dropped client
connections; clients that stop reading; bursts. chaos.py's checker then
applies SPEC.md to everything observed (its docstring lists what exactly).

  PW_CHAOS_SEED=N          replay a seed (it is printed at the start and in
                           every failure)
  PW_CHAOS_ROUND=K         only round K of that seed
  PW_CHAOS_SECONDS=3600    total fault time (default 125: 25 s per mode),
                           in rounds of PW_CHAOS_ROUND_SECONDS (at most 120)

A replay repeats the same schedule of faults and client behaviour; the
system's own timing is real, so a race may need a few replays.
"""
import os

import pytest

import chaos
import clients as C
from stack import RESULTS

MODES = ("always", "everysec", "sentinel-strict", "sentinel", "cluster")
BUDGET = float(os.environ.get("PW_CHAOS_SECONDS", "125"))
SEED = chaos.master_seed()


@pytest.fixture(autouse=True, scope="module")
def _nofile():
    C.raise_nofile()


@pytest.mark.parametrize("mode", MODES)
def test_chaos(mode):
    print("\nchaos: seed=%d (replay with PW_CHAOS_SEED=%d), mode %s, %.0f s of faults" % (
        SEED, SEED, mode, BUDGET / len(MODES)), flush=True)
    only = os.environ.get("PW_CHAOS_ROUND")
    line, rounds = chaos.run(SEED, mode, BUDGET / len(MODES),
                             only_round=int(only) if only else None)
    print("RESULT " + line)
    RESULTS.append(line)
    bad = [r for r in rounds if r.violations]
    assert not bad, "\n\n".join(r.report() for r in bad)
    assert sum(r.stats["acked_deliveries_checked"] for r in rounds) > 0, \
        "seed %d: no acknowledged delivery was checked: the test proved nothing" % SEED


# ---- the checker itself: it must fail on what the contract forbids -----------------------

class Pub:
    def __init__(self, channel, acks, idem=True, extra=()):
        self.channel, self.idem, self.tag = channel, idem, "p"
        self.acks = [(e, k, c, 1) for e, k, c in acks]
        self.sent = {c for _, _, c in acks} | set(extra)
        self.bad, self.unacked, self.crash = [], [], None


def judge(logs, mode="always", history=1000, acks=None, final=None, initial=0, kind="longpoll",
          extra=()):
    """Run the checker on one channel "c" with clients whose logs are given
    as lists of events without times."""
    E = "E1"
    acks = acks if acks is not None else [(E, k, "m%d" % k) for k in range(1, 6)]
    if final is None:
        final = (E, 5, [(k, "m%d" % k) for k in range(1, 6)])
    views = []
    for n, log in enumerate(logs):
        views.append(chaos.ClientView("c%d" % n, kind, "c", initial, [ev + (0.0,) for ev in log]))
    V, st = chaos.check(mode, history, {"c": False}, views, [Pub("c", acks, extra=extra)],
                        {"c": final})
    return V


def msgs(ids, e="E1", content=None):
    return [("m", e, k, content or "m%d" % k) for k in ids]


def test_checker_accepts_a_clean_run():
    assert judge([msgs(range(1, 6))]) == []
    # A client without since starts anywhere; an empty answer at its since is fine.
    assert judge([[("pos", "E1", 3)] + msgs([4, 5]) + [("pos", "E1", 5)]], initial=None) == []
    # everysec: a reset to a new epoch with the retained history.
    final = ("E2", 4, [(k, "m%d" % k) for k in range(1, 4)] + [(4, "n4")])
    log = msgs([1, 2]) + [("reset", "E2", 1, 4, False)] + msgs([1, 2, 3], "E2") + \
        [("m", "E2", 4, "n4")]
    assert judge([log], mode="everysec", final=final,
                 acks=[("E1", k, "m%d" % k) for k in range(1, 6)] + [("E2", 4, "n4")]) == []
    # A client far behind a short history is reset to the oldest retained id.
    final = ("E1", 5, [(4, "m4"), (5, "m5")])
    assert judge([[("reset", "E1", 4, 5, False)] + msgs([4, 5])], history=2, final=final) == []


@pytest.mark.parametrize("log,why", [
    (msgs([1, 2, 4, 5]), "gap"),
    (msgs([1, 2, 2, 3, 4, 5]), "duplicate"),
    (msgs([1, 2, 3]), "did not converge"),
    (msgs([1, 2]) + [("m", "E1", 3, "other")] + msgs([4, 5]), "acknowledged as"),
    (msgs([1, 2]) + msgs([3, 4, 5], "E9"), "epoch changed without a reset"),
    (msgs([1, 2, 3]) + [("reset", "E1", 1, 5, False)] + msgs(range(1, 6)), "reset without cause"),
    (msgs([1, 2]) + [("reset", "E1", 4, 5, False)] + msgs([4, 5]), "not at the oldest"),
    (msgs([1, 2]) + [("pos", "E1", 4)] + msgs([5]), "moved the client"),
    (msgs([1, 2, 3, 4, 5]) + [("bad", "status 400")], "protocol breach"),
])
def test_checker_catches(log, why):
    V = judge([log])
    assert any(why in v for v in V), V


def test_checker_catches_storage_faults():
    # An acknowledged message missing from history in the same epoch.
    final = ("E1", 5, [(k, "m%d" % k) for k in range(1, 5)] + [(5, "x")])
    V = judge([msgs(range(1, 5)) + [("m", "E1", 5, "x")]], final=final, extra=["x"])
    assert any("acknowledged as" in v or "not in Redis" in v for v in V), V
    # One publish stored twice.
    final = ("E1", 6, [(k, "m%d" % k) for k in range(1, 6)] + [(6, "m5")])
    V = judge([msgs(range(1, 6)) + [("m", "E1", 6, "m5")]], final=final)
    assert any("stored twice" in v for v in V), V
    # A new epoch under appendfsync always, even with a reset.
    final = ("E2", 5, [(k, "m%d" % k) for k in range(1, 6)])
    log = msgs([1, 2]) + [("reset", "E2", 1, 5, False)] + msgs(range(1, 6), "E2")
    V = judge([log], final=final)
    assert any("epochs under appendfsync always" in v for v in V), V
    # Content nobody published.
    V = judge([msgs([1, 2]) + [("m", "E1", 3, "zz")] + msgs([4, 5])],
              acks=[("E1", k, "m%d" % k) for k in (1, 2, 4, 5)],
              final=("E1", 5, [(1, "m1"), (2, "m2"), (3, "zz"), (4, "m4"), (5, "m5")]))
    assert any("never published" in v for v in V), V


def test_checker_websocket_resets():
    # A WebSocket reset frame names the newest id; the replay follows.
    final = ("E2", 5, [(k, "m%d" % k) for k in range(1, 6)])
    acks = [("E1", k, "m%d" % k) for k in range(1, 6)]
    ok = msgs([1, 2]) + [("reset", "E2", None, 5, None)] + msgs(range(1, 6), "E2")
    assert judge([ok], mode="everysec", final=final, acks=acks, kind="websocket") == []
    skips = msgs([1, 2]) + [("reset", "E2", None, 5, None)] + msgs([3, 4, 5], "E2")
    V = judge([skips], mode="everysec", final=final, acks=acks, kind="websocket")
    assert any("not at the oldest" in v for v in V), V
    spurious = msgs([1, 2, 3, 4, 5]) + [("reset", "E1", None, 5, None)]
    V = judge([spurious], kind="websocket")
    assert any("up-to-date" in v for v in V), V
