/* sentinel_watch.h - follow a Sentinel-monitored master's failovers as they
 * are announced: one pub/sub connection to a sentinel (the next one in the
 * URL's list whenever it fails), subscribed to +switch-master, calling back
 * with the new master's address when the master of the URL's name moves.
 *
 * It only tells sooner: the connections that find the master (redis_conn.c)
 * ask a sentinel on every attempt, so a watch that is down or missed an
 * announcement delays a switch, it does not prevent it.
 */
#ifndef PW_SENTINEL_WATCH_H
#define PW_SENTINEL_WATCH_H

#include "loop.h"
#include "redis_conn.h"
#include "redis_url.h"

typedef void sw_switched_cb(void *ctx, const redis_hostport *master);

typedef struct sentinel_watch {
    const redis_url *src; /* the Sentinel URL */
    redis_url url;        /* the sentinel being watched, as a plain URL */
    unsigned next;        /* which sentinel the next attempt watches */
    redis_conn c;
    sw_switched_cb *switched;
    void *ctx;
} sentinel_watch;

/* src must be a Sentinel URL and outlive w. */
void sw_init(sentinel_watch *w, loop *l, const redis_url *src, unsigned timeout_ms,
             sw_switched_cb *switched, void *ctx);
void sw_start(sentinel_watch *w);
void sw_free(sentinel_watch *w);

/* Parse a +switch-master payload "name old-ip old-port new-ip new-port":
 * 1 with *out set when it is about master `name`, 0 otherwise. Pure. */
int sw_parse_switch(const char *payload, size_t len, const char *name, redis_hostport *out);

#endif
