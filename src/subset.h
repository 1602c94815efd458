/* subset.h - the channels one connection follows: a WebSocket client, an
 * EventSource stream or a long-poll holds one hub subscription per channel
 * (up to --max-subscriptions), each with its own position, epoch, token end
 * and pause state. Both daemons keep their channels here, so that there is
 * one way to follow several channels.
 *
 * Invariants:
 *   - the list is in the order channels were added (a request's order);
 *   - no two entries follow the same channel name;
 *   - n counts the entries;
 *   - an entry's hub_sub is its first member: the hub's callbacks get the
 *     entry back with csub_of;
 *   - an entry is freed only by subset_del / subset_clear, never from inside
 *     its own deliver callback (hub.h: persistent subscribers unsubscribe
 *     there, the memory waits).
 */
#ifndef PW_SUBSET_H
#define PW_SUBSET_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "buf.h"
#include "hub.h"
#include "loop.h"

typedef struct csub {
    hub_sub sub;       /* first member (csub_of) */
    struct csub *next;
    void *owner;       /* the connection */
    timer t;           /* the owner's: e.g. confirmation deadline, then the token's end */
    time_t expires;    /* end of the token that opened the channel (0: none, or public) */
    bool confirmed;    /* the client was told this subscription is on */
    bool paused;       /* the owner paused it (its queue was full) */
    bool in_band;      /* WebSocket: added by a subscribe message, not the URL */
    char name[PW_CHANNEL_MAX + 1]; /* the channel (also once detached) */
} csub;

typedef struct subset {
    csub *head, *tail;
    size_t n;
} subset;

static inline csub *csub_of(hub_sub *s) { return (csub *)(void *)s; }

/* A new detached entry for channel name (valid, api.h) at the end
 * (hub_sub_init done; subscribe it with hub_subscribe(h, &c->sub, c->name,
 * ...)). The timer's callback is the owner's to set. */
csub *subset_add(subset *s, void *owner, const hub_sub_ops *ops, bool persistent,
                 const char *name);

/* The entry for channel name, or NULL. */
csub *subset_find(const subset *s, const char *name);

/* Leave the hub, stop the timer, unlink and free c. */
void subset_del(hub *h, loop *l, subset *s, csub *c);
/* subset_del of every entry. */
void subset_clear(hub *h, loop *l, subset *s);
/* Leave the hub and stop every timer, keeping the entries (a connection that
 * closed; subset_clear frees them later). h may be NULL (already freed). */
void subset_detach(hub *h, loop *l, subset *s);

/* Pause / resume every entry (a persistent owner whose queue filled or
 * drained). Resume continues only those paused. */
void subset_pause(hub *h, subset *s);
void subset_resume(hub *h, subset *s);

/* Append the position list of the entries whose position is known
 * (api.h: CHANNEL=[EPOCH:]ID, comma-separated; an epoch the hub filled in
 * is left out, so that its end is no cause for a reset), for an
 * EventSource id; except (may be NULL) is left out. Appends nothing when
 * none is known. */
void subset_positions(const subset *s, const csub *except, buf *out);

#endif
