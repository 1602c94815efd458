"""What the scenario tests share: run a scenario with a time bound, start
and stop its client tasks, wait for clients to converge, and report and check
what they received against what was published (clients.py records it).
"""
import asyncio

import clients as C
from stack import RESULTS

LAG = {}


def run(coro, limit):
    """Run one scenario with a hard time bound; LAG["max"] says how late this
    process's event loop ran at worst (a busy machine shows there). Client
    tasks left behind by a failed scenario are stopped here."""
    async def main():
        mon = C.LagMonitor()
        mon.task = asyncio.create_task(mon.run())  # (a strong reference)
        try:
            return await asyncio.wait_for(coro, limit)
        finally:
            LAG["max"] = mon.max_lag
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await C.cancel_all(others, patience=20)
    return asyncio.run(main())


async def cancel(tasks):
    await C.cancel_all(tasks)


def report(name, clients, pub):
    t = C.tally(clients, pub)
    head = "  part" if name.startswith(" ") else "\nRESULT"
    line = "%s: published=%d received=%d lost=%d duplicated=%d" % (
        name.strip(), t["published"], t["received"], t["lost"], t["duplicated"])
    print("%s %s" % (head, line))
    if not name.startswith(" "):
        RESULTS.append(line)
    lat = sorted(pub.latencies) or [0.0]
    print("  details: clients=%d out_of_order=%d resets=%d anomalies=%d crashed=%d extra=%d "
          "bad_content=%d bad_error_answers=%d publisher=%s retries=%d transport=%s "
          "publish_latency_max=%.2fs test_loop_lag_max=%.2fs client_errors=%s" % (
              t["clients"], t["out_of_order"], t["resets"], t["anomalies"], t["crashed"],
              t["extra"], t["bad_content"], t["bad_errors"], dict(pub.statuses), pub.retried,
              dict(pub.transport_errors), lat[-1], LAG.get("max", 0.0), C.error_summary(clients)))
    return t


def check(t, clients, pub, resuming=True):
    why = C.describe(clients)
    assert pub.crash is None, pub.crash
    assert not pub.failed, "messages never acknowledged: %r" % pub.failed[:10]
    assert not pub.anomalies, pub.anomalies[:5]
    assert sorted(pub.content_by_id) == list(range(1, t["published"] + 1)), \
        "published ids are not 1..N"
    assert len(pub.epochs) == 1, "epoch changed: %r" % pub.epochs
    assert t["crashed"] == 0, why
    assert t["lost"] == 0, "lost messages:\n" + why
    assert t["duplicated"] == 0, "duplicated messages:\n" + why
    assert t["extra"] == 0 and t["bad_content"] == 0, why
    if resuming:
        assert t["out_of_order"] == 0 and t["resets"] == 0, why
        assert t["anomalies"] == 0, why
    # Last, so that a wrong error format does not hide a loss: every error
    # a client or the publisher saw must be JSON, and "unavailable" a 503
    # with Retry-After (see nginx/pushwire.conf.in).
    bad = C.bad_error_examples(clients) + ["publisher: " + b for b in pub.bad_errors]
    assert not bad, "error answers not as the contract says:\n" + "\n".join(bad)


def start_tasks(clients, stagger=0.0, batch=100):
    async def go():
        tasks = []
        for k, c in enumerate(clients):
            tasks.append(asyncio.create_task(c.run()))
            if stagger and k % batch == batch - 1:
                await asyncio.sleep(stagger)
        return tasks
    return go()


async def converge(clients, pub, timeout):
    n = max(pub.content_by_id) if pub.content_by_id else 0
    return await C.wait_until(lambda: all(c.last_id >= n for c in clients), timeout, 0.2)
