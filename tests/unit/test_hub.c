/* test_hub.c - cmocka tests of the hub (src/hub.c) on a simulated Redis
 * (hub_sim.h): the scenarios of bugs found on main, replayed step by step,
 * and seeded random runs of the fuzzer's alphabet with the same checker.
 * A failure prints the violation (and the seed); HUB_SIM_SEED=N replays one
 * random run verbosely.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "hub.h"
#include "hub_sim.h"

static void drain(sim *s)
{
    while (sim_sub_exec(s) || sim_sub_deliver(s) || sim_cmd_exec(s) || sim_cmd_reply(s))
        ;
}

/* A stream subscriber that is up to date gets every later message. */
static void test_live_delivery(void **state)
{
    (void)state;
    sim *s = sim_new(16, 1 << 20, false);
    sim_cmd_up(s);
    sim_sub_up(s);
    sim_publish(s, 0);
    int k = sim_subscribe(s, 0, true, 1, 1);
    drain(s);
    for (int i = 0; i < 5; i++)
        sim_publish(s, 0);
    drain(s);
    assert_int_equal(sim_sub_pos(s, k), 6);
    sim_settle(s);
    sim_free(s);
}

/* Found on main: after a pub/sub-only reconnect confirmed while the older
 * sync read was in flight, the stale read was dropped as non-continuous and
 * nothing asked again: the channel stayed unsynced and stream subscribers
 * got nothing more. */
static void test_stale_sync_read_is_asked_again(void **state)
{
    (void)state;
    sim *s = sim_new(16, 1 << 20, false);
    sim_cmd_up(s);
    sim_sub_up(s);
    int k = sim_subscribe(s, 0, true, 0, 0);
    assert_true(sim_sub_exec(s));    /* SUBSCRIBE runs */
    assert_true(sim_sub_deliver(s)); /* confirmed: the sync read is sent */
    sim_sub_drop(s);                 /* pub/sub alone drops */
    sim_sub_up(s);                   /* and comes back: SUBSCRIBE again */
    assert_true(sim_sub_exec(s));
    assert_true(sim_sub_deliver(s)); /* confirmed while the old sync is out */
    drain(s);                        /* the old sync answers */
    sim_publish(s, 0);
    sim_publish(s, 0);
    drain(s);
    assert_int_equal(sim_sub_pos(s, k), 2);
    sim_settle(s);
    sim_free(s);
}

/* Found on main: a long-poll whose history read was still in flight was
 * answered at its timeout with the channel's newest id, so the client moved
 * past messages it never got. Now it is not idle until it has them. */
static void test_timeout_while_catching_up_is_not_idle(void **state)
{
    (void)state;
    /* Reads of 300 bytes: the channel's ring in memory keeps only the last
     * few messages, so an older since needs a read from history. */
    sim *s = sim_new(64, 300, false);
    sim_cmd_up(s);
    sim_sub_up(s);
    int warm = sim_subscribe(s, 0, true, 0, 0); /* keeps the channel synced */
    drain(s);
    for (int i = 0; i < 20; i++)
        sim_publish(s, 0);
    drain(s);
    assert_int_equal(sim_sub_pos(s, warm), 20);
    /* A poll from since=1 waits for its read; its time is up meanwhile. */
    int k = sim_subscribe(s, 0, false, 1, 1);
    sim_cmd_exec(s);
    sim_timeout(s, k); /* the checker fails if it is answered "idle at 20" */
    assert_int_equal(sim_sub_answers(s, k), 0);
    sim_cmd_reply(s);
    /* A poll that is up to date is idle at the newest id. */
    k = sim_subscribe(s, 0, false, 20, 1);
    sim_timeout(s, k);
    assert_int_equal(sim_sub_answers(s, k), 1);
    sim_settle(s);
    sim_free(s);
}

/* A poll holding an epoch that is no longer the channel's is reset, never
 * answered idle in the new epoch. */
static void test_old_epoch_is_reset_not_idle(void **state)
{
    (void)state;
    sim *s = sim_new(16, 1 << 20, false);
    sim_cmd_up(s);
    sim_sub_up(s);
    int warm = sim_subscribe(s, 1, true, 0, 0);
    drain(s);
    sim_publish(s, 1);
    drain(s);
    int k = sim_subscribe(s, 1, false, 1, 2); /* an epoch that never existed */
    sim_timeout(s, k);
    assert_int_equal(sim_sub_answers(s, k), 0);
    k = sim_subscribe(s, 1, false, 1, 2);
    drain(s);
    assert_false(sim_sub_attached(s, k)); /* answered: a reset */
    assert_int_equal(sim_sub_answers(s, k), 1);
    (void)warm;
    sim_settle(s);
    sim_free(s);
}

/* Redis restarts and loses the last messages: subscribers are reset into
 * the new epoch, never silently moved. */
static void test_lossy_restart(void **state)
{
    (void)state;
    sim *s = sim_new(16, 1 << 20, false);
    sim_cmd_up(s);
    sim_sub_up(s);
    int k = sim_subscribe(s, 2, true, 0, 0);
    drain(s);
    for (int i = 0; i < 4; i++)
        sim_publish(s, 2);
    drain(s);
    assert_int_equal(sim_sub_pos(s, k), 4);
    sim_restart(s, true, 2); /* 3 and 4 are lost: ids go back to 2 */
    sim_publish(s, 2);       /* a new 3 */
    sim_settle(s);           /* (settling publishes one more on each channel) */
    assert_int_equal(sim_newest(s, 2), 4);
    assert_int_equal(sim_sub_pos(s, k), 4);
    sim_free(s);
}

/* Found by the fault test: a client that named since but no epoch, and has
 * been given nothing, was reset when Redis restarted into a new epoch,
 * although its since is valid there (SPEC.md resets only a named epoch that
 * is not current, or a since outside the retained ids). The epoch the hub
 * filled in for it is not the client's. */
static void test_epoch_the_client_never_saw_is_no_cause_for_reset(void **state)
{
    (void)state;
    sim *s = sim_new(16, 1 << 20, false);
    sim_cmd_up(s);
    sim_sub_up(s);
    int k = sim_subscribe(s, 0, true, 0, 0); /* since=0, no epoch, empty channel */
    int p = sim_subscribe(s, 1, true, 0, 0);
    sim_publish(s, 1);
    drain(s);
    assert_int_equal(sim_sub_answers(s, k), 0);
    int q = sim_subscribe(s, 1, true, 1, 0); /* since=1 of an epoch it did not name */
    drain(s);
    sim_restart(s, true, 0); /* a new server generation; nothing lost */
    sim_settle(s);           /* the checker fails a reset without cause */
    assert_int_equal(sim_sub_pos(s, k), 1);
    assert_int_equal(sim_sub_pos(s, p), 2);
    assert_int_equal(sim_sub_pos(s, q), 2);
    sim_free(s);
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void random_run(uint64_t seed, unsigned steps, bool verbose)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    unsigned history = 4 + (unsigned)(rng_next(&x) % 20);
    unsigned budget = rng_next(&x) % 2 ? 1 << 20 : 300; /* small: many "more" batches */
    sim *s = sim_new(history, budget, verbose);
    for (unsigned i = 0; i < steps; i++) {
        uint64_t r = rng_next(&x);
        sim_step(s, (uint8_t)r, (uint8_t)(r >> 8));
    }
    sim_settle(s);
    sim_free(s);
}

/* Many seeded runs of random steps; the checker aborts on a violation, and
 * the seed printed before each batch says which one to replay. */
static void test_random_runs(void **state)
{
    (void)state;
    const char *one = getenv("HUB_SIM_SEED");
    if (one) {
        random_run(strtoull(one, NULL, 10), 400, true);
        return;
    }
    unsigned runs = getenv("HUB_SIM_RUNS") ? (unsigned)atoi(getenv("HUB_SIM_RUNS")) : 3000;
    for (unsigned seed = 1; seed <= runs; seed++) {
        if (seed % 500 == 1)
            fprintf(stderr, "random runs from seed %u (a failure names its step; "
                            "HUB_SIM_SEED=N replays run N verbosely)\n", seed);
        hub_sim_seed = seed;
        random_run(seed, 400, false);
    }
    fprintf(stderr, "%u random runs, %llu steps: %llu subscriptions refused at the channel cap, "
                    "%llu unused channels evicted, up to %llu subscribers queued for a read\n",
            runs, hub_sim_totals.steps, hub_sim_totals.refused, hub_sim_totals.evicted,
            hub_sim_totals.queued_max);
    assert_true(hub_sim_totals.refused > 0 && hub_sim_totals.evicted > 0 &&
                hub_sim_totals.queued_max > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_delivery),
        cmocka_unit_test(test_stale_sync_read_is_asked_again),
        cmocka_unit_test(test_timeout_while_catching_up_is_not_idle),
        cmocka_unit_test(test_old_epoch_is_reset_not_idle),
        cmocka_unit_test(test_lossy_restart),
        cmocka_unit_test(test_epoch_the_client_never_saw_is_no_cause_for_reset),
        cmocka_unit_test(test_random_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
