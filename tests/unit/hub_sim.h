/* hub_sim.h - src/hub.c on a simulated Redis, for tests/unit/test_hub.c and
 * fuzz/fuzz_hub.c.
 *
 * hub_sim.c implements broker.h over an in-memory model of Redis (channels,
 * epochs, capped history, the read script's reset rules) and queues every
 * command, reply and pub/sub message, so that the caller decides the order
 * of everything that happens concurrently in reality: which command Redis
 * runs next, when its reply arrives, when pub/sub delivers, when a
 * connection drops, when Redis restarts and loses data, when time passes.
 *
 * A checker follows every subscriber: each delivery must continue exactly
 * where the subscriber was (no gap, no duplicate, the content of that very
 * message of that epoch) unless it is marked reset; a long-poll answered
 * "nothing new" must really have had everything up to the id it is given;
 * and after sim_settle (connections up, everything delivered, time passed)
 * every subscriber still attached must be up to date with Redis. A failure
 * prints what happened and aborts (cmocka and libFuzzer report it).
 * No real sockets; the loop runs on a virtual clock.
 */
#ifndef PW_HUB_SIM_H
#define PW_HUB_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "hub.h"
#include "loop.h"

#define SIM_CHANNELS 3
#define SIM_SUBS     48

typedef struct sim sim;

/* Printed with a violation: the seed of the random run that found it (0:
 * none). */
extern unsigned hub_sim_seed;

/* Over every sim freed so far: what the bounds did (a run that never meets
 * them tests nothing about them). */
struct hub_sim_totals {
    unsigned long long steps, refused, evicted, refusals_seen, queued_max;
};
extern struct hub_sim_totals hub_sim_totals;

/* A hub with connections down, history messages kept per channel and reads
 * of at most batch_bytes; verbose logs every step to stderr. */
sim *sim_new(unsigned history, unsigned batch_bytes, bool verbose);
/* Detach every subscriber and free everything. */
void sim_free(sim *s);
/* The simulation's loop (on the virtual clock) and hub, for harnesses that
 * drive real server code on them (fuzz/fuzz_worker.c, fuzz/fuzz_relay.c). */
loop *sim_loop(sim *s);
hub *sim_hub(sim *s);

/* Connections. An up is announced to the hub (its hooks run). */
void sim_cmd_up(sim *s);
void sim_cmd_drop(sim *s);
void sim_sub_up(sim *s);
void sim_sub_drop(sim *s);
/* Redis restarts: both connections drop; lossy also forgets the last lose
 * messages of every channel and starts a new server generation (epoch). */
void sim_restart(sim *s, bool lossy, unsigned lose);
/* The channel's state expired in Redis (history TTL). */
void sim_forget(sim *s, int ch);
/* The server drops channel ch's subscription (a cluster slot moved). */
void sim_sub_lost(sim *s, int ch);

/* Redis side. */
void sim_publish(sim *s, int ch);
bool sim_cmd_exec(sim *s);  /* run the oldest command not run yet */
bool sim_cmd_reply(sim *s); /* deliver the oldest reply */
bool sim_sub_exec(sim *s);  /* run the oldest (UN)SUBSCRIBE */
bool sim_sub_deliver(sim *s);
/* Virtual time passes; due timers run. */
void sim_advance(sim *s, unsigned ms);

/* Subscribers. since < 0: none; epoch 0: none, 1: the channel's current
 * one, 2: an epoch that never existed. Returns the subscriber's slot, or -1
 * when every slot is taken. */
int sim_subscribe(sim *s, int ch, bool persistent, long long since, int epoch);
void sim_unsubscribe(sim *s, int sub);
void sim_resume(sim *s, int sub);
/* A long-poll's time is up: answered "nothing new" if the hub says it is
 * up to date (checked), else given up (a 503 in the worker). */
void sim_timeout(sim *s, int sub);
/* The newest id of ch in Redis (0 when it has no state). */
uint64_t sim_newest(const sim *s, int ch);
/* Slot state for tests: attached to the hub, and where it is. */
bool sim_sub_attached(const sim *s, int sub);
uint64_t sim_sub_pos(const sim *s, int sub);
int sim_sub_answers(const sim *s, int sub); /* deliveries and idle answers */

/* Everything up and delivered, time passed, paused subscribers resumed,
 * until nothing moves; then every attached subscriber must be up to date. */
void sim_settle(sim *s);

/* One action chosen by (op, arg): the alphabet of fuzz_hub and of the
 * seeded random runs. */
void sim_step(sim *s, uint8_t op, uint8_t arg);

#endif
