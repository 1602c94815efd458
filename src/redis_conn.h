/* redis_conn.h - one hiredis async connection to Redis on the loop: the
 * name lookup (off the loop), connect, AUTH and SELECT, a handshake that the
 * owner adds, reconnects with backoff, and the queue of commands in flight
 * with its watchdog (hiredis 0.14 has no timeouts of its own).
 *
 * It knows no key, script or channel: broker.c decides what to send. It
 * never blocks: a host name is looked up with getaddrinfo_a and the answer
 * polled from a timer, and hiredis is given the numeric address (its own
 * connect would call a blocking getaddrinfo: with Redis's container gone,
 * the loop froze for seconds on every attempt).
 *
 * With a Sentinel URL every attempt first asks a sentinel (the next one in
 * the list after a failure) for the master's address, over a connection of
 * its own that closes with the answer, then connects there: the attempt is
 * the same state machine run twice, with `asking` set on the first run.
 * Asking again on every attempt is what follows a failover when nothing
 * else told us (the broker's +switch-master watch tells sooner).
 *
 * States: DOWN -> RESOLVING (names only) -> CONNECTING -> HANDSHAKE -> READY.
 * Anything failing (a refused connect, a command unanswered within the
 * timeout, a deadline passed in any state before READY) goes to DOWN and
 * retries after a backoff with jitter (100 ms doubling up to 5 s).
 * Callbacks of commands in flight run with a NULL reply when the connection
 * goes, before the down hook.
 */
#ifndef PW_REDIS_CONN_H
#define PW_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "redis_url.h"

typedef struct redis_conn redis_conn;
struct redisAsyncContext;
struct rc_lookup;

/* reply is a redisReply *, NULL when the connection went away. */
typedef void rc_reply_cb(redis_conn *c, void *reply, void *arg);

typedef struct redis_conn_hooks {
    void *ctx;
    /* Connected and authenticated (and SELECTed for commands): send what the
     * connection needs before it is ready, then call rc_ready (or rc_fail). */
    void (*handshake)(void *ctx, redis_conn *c);
    void (*up)(void *ctx, redis_conn *c);
    /* Lost; was_ready tells a drop from a failed attempt. */
    void (*down)(void *ctx, redis_conn *c, bool was_ready, const char *why);
    /* Pub/sub connections: every reply and message, in order, as a
     * redisReply * freed after the hook returns (the down hook tells when
     * the connection goes). */
    void (*push)(void *ctx, redis_conn *c, void *reply);
} redis_conn_hooks;

enum rc_state { RC_DOWN, RC_RESOLVING, RC_CONNECTING, RC_HANDSHAKE, RC_READY };

typedef struct rc_inflight rc_inflight;

/* Embedded by the owner; fields are this module's. */
struct redis_conn {
    loop *l;
    const redis_url *url;
    const char *name; /* "commands" / "pub/sub", for logs */
    unsigned timeout_ms;
    bool pubsub; /* replies are pushes: no watchdog on them */
    bool raw;    /* pub/sub past AUTH: every reply goes to hooks.push (redis_conn.c) */
    /* Where this attempt connects: the URL's host, a sentinel (asking), or
     * the master a sentinel named. */
    redis_hostport target;
    bool asking;            /* this run of the attempt asks a sentinel */
    bool have_answer;       /* the next run connects to `answer` */
    redis_hostport answer;  /* the master's address from the last sentinel asked */
    unsigned sentinel_next; /* which sentinel to ask next */
    redis_conn_hooks hooks;
    struct redisAsyncContext *ac;
    io_watch w;
    enum rc_state state;
    timer retry, deadline, watchdog, lookup_poll;
    unsigned failures;
    uint64_t next_attempt;
    struct rc_lookup *lookup; /* in flight (also after a deadline: it is reaped) */
    bool lookup_wanted;   /* the lookup in flight belongs to this attempt */
    rc_inflight *head, *tail;
    size_t inflight;
    uint64_t connects, losses, timeouts;
};

/* url, name and the hooks must outlive c. Nothing happens until rc_start. */
void rc_init(redis_conn *c, loop *l, const redis_url *url, const char *name, unsigned timeout_ms,
             bool pubsub, const redis_conn_hooks *hooks);
void rc_start(redis_conn *c);
/* Close; callbacks in flight run with NULL first. The hooks do not run. */
void rc_free(redis_conn *c);

/* Send a command on a command connection. cb(c, reply, arg) runs exactly
 * once, from the loop, never inside rc_send; an answer that takes longer
 * than the timeout fails the connection. Returns -1 when the connection
 * cannot take commands (cb never runs). */
int rc_send(redis_conn *c, int argc, const char **argv, const size_t *lens, rc_reply_cb *cb,
            void *arg);
/* Send on a pub/sub connection from its handshake on; what comes back goes
 * to hooks.push. */
int rc_push_send(redis_conn *c, int argc, const char **argv, const size_t *lens);

/* The handshake is complete. */
void rc_ready(redis_conn *c);
/* Drop the connection now (a stall, a wrong server) and reconnect later. */
void rc_fail(redis_conn *c, const char *why);

static inline bool rc_is_ready(const redis_conn *c) { return c->state == RC_READY; }
/* Can take commands now (READY, or HANDSHAKE for the owner's handshake). */
static inline bool rc_can_send(const redis_conn *c) { return c->ac != NULL && !c->asking; }
/* The next attempt now rather than after its backoff (a failover was
 * announced); nothing when an attempt is under way or the connection is up. */
void rc_retry_now(redis_conn *c);
/* The address this connection is (or was last) connected or connecting to. */
static inline const redis_hostport *rc_target(const redis_conn *c) { return &c->target; }
/* Milliseconds until the next attempt (for Retry-After). */
unsigned rc_retry_after_ms(const redis_conn *c);

#endif
