/* hub.h - channels and their subscribers inside one process: which Redis
 * channels to follow, what each subscriber has seen, and when to answer it
 * from memory, from history in Redis, or from the live pub/sub stream.
 *
 * Transport-neutral: long-poll requests, EventSource streams and WebSocket
 * clients embed a hub_sub and receive batches through hub_sub_ops. No socket
 * I/O here; Redis goes through broker.c.
 *
 * The guarantee: a subscriber is given messages since+1, since+2, ... of one
 * epoch with no gap and no duplicate, or a batch marked reset. It holds
 * because every batch comes either from a Redis read that starts at the
 * subscriber's since, or from the channel's in-memory ring, which holds a
 * contiguous run of ids that pub/sub delivered after a read established the
 * channel's position while subscribed ("synced").
 *
 * State of a channel (hub.c's hub_channel):
 *   sub_state UNSUB -> SUBSCRIBING (SUBSCRIBE sent) -> SUBSCRIBED (Redis
 *     confirmed; sub_gen counts confirmations); back to UNSUB when the pub/sub
 *     connection drops.
 *   synced: a sync read sent while SUBSCRIBED (same sub_gen) answered; then
 *     last_id/epoch are the channel's, and every message pub/sub delivers
 *     after it extends the ring. Cleared by anything that may have broken
 *     continuity (pub/sub drop, resubscribe, a gap, another epoch).
 *   sync_inflight: one sync read is out. A sync read that comes back from an
 *     older sub_gen proves nothing, and a new one is sent at once (else the
 *     channel would stay unsynced with nobody asking).
 * Invariants (hub_check):
 *   - synced implies SUBSCRIBED; not synced implies an empty ring;
 *   - the ring holds consecutive ids ending at last_id;
 *   - sync_inflight iff exactly one sync read is on the channel's list;
 *     pub/sub messages are buffered (pending) only while it is out;
 *   - SUBSCRIBED and not synced, with subscribers, implies sync_inflight or
 *     the retry timer armed (progress is always scheduled);
 *   - every subscriber on the channel's list points back to it; nsubs and the
 *     parked count match the lists;
 *   - subscribers wait in the read queue only while max_reads reads are in
 *     flight (or commands are down);
 *   - the channels with no subscriber are exactly those on the idle list
 *     (oldest first): the cap max_channels evicts from there.
 * State of a subscriber (enum hub_sub_state):
 *   WAIT     nothing in flight: the next channel event or sub_process decides;
 *   READING  waiting on the read op (op != NULL, on op's list);
 *   PARKED   up to date: has_since, epoch is the channel's, since == last_id
 *            (or since > last_id, verified by a read that pub/sub has not
 *            caught up with); the next live message is delivered to it;
 *   PAUSED   persistent, after a batch with more or hub_sub_pause, until
 *            hub_sub_resume;
 *   QUEUED   needs a read of its own while max_reads are in flight: on the
 *            hub's queue (op_prev/op_next), served in arrival order as reads
 *            finish;
 *   DETACHED not on any channel.
 *   Only a PARKED subscriber has everything up to the channel's newest id:
 *   hub_sub_idle says so, nothing else may claim it.
 */
#ifndef PW_HUB_H
#define PW_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "envelope.h"
#include "loop.h"

typedef struct hub hub;
typedef struct hub_sub hub_sub;
typedef struct hub_channel hub_channel;
typedef struct hub_read hub_read;

/* What one delivery carries. msgs are contiguous ids, oldest first; with
 * n == 0 (a reset with nothing retained) newest_id/newest_json describe the
 * channel. cache/cache_free are the transport's: the same batch object is
 * handed to every subscriber that gets identical content, so the first one
 * may store an encoding there (and its destructor) and the rest reuse it;
 * a transport recognises its own cache by cache_free. The hub calls
 * cache_free(cache) once the batch is done. */
typedef struct hub_batch {
    const char *channel;
    const char *epoch;
    pw_msg *const *msgs;
    size_t n;
    bool reset;
    bool more; /* more is due after msgs[n-1] */
    uint64_t newest_id;
    const rbuf *newest_json;
    void *cache;
    void (*cache_free)(void *cache);
} hub_batch;

typedef struct hub_sub_ops {
    /* One-shot subscribers (long-poll) are detached before this is called:
     * the hub never touches them again, so deliver may free them. Persistent
     * ones (WebSocket, EventSource) stay attached with since/epoch already
     * advanced; they may call hub_unsubscribe on themselves from inside
     * deliver but must not free their memory before it returns (defer with
     * loop_reap). After a batch with more set, a persistent subscriber gets
     * nothing until hub_sub_resume. */
    void (*deliver)(hub_sub *s, hub_batch *b);
    /* Optional: s is now up to date and waits for the next message (a
     * long-poll with timeout=0 answers here). May call hub_unsubscribe. */
    void (*parked)(hub_sub *s);
} hub_sub_ops;

enum hub_sub_state { SUB_DETACHED, SUB_WAIT, SUB_READING, SUB_PARKED, SUB_PAUSED, SUB_QUEUED };

struct hub_sub {
    hub_channel *ch;
    hub_sub *prev, *next;       /* in the channel's list */
    hub_read *op;               /* the read this subscriber waits on */
    hub_sub *op_prev, *op_next; /* in that read's list */
    const hub_sub_ops *ops;
    uint64_t since;
    char epoch[PW_EPOCH_MAX + 1]; /* "" until known */
    /* since/epoch were filled in by the hub (the client named none) and no
     * batch has told the client yet. When such an epoch ends, a client that
     * named its since keeps it (SPEC.md's rules for a since without epoch);
     * one whose since was filled in too started "now" in the ended epoch
     * and is reset. Cleared by a delivery (sub_drop_filled_epoch). */
    bool epoch_filled, since_filled;
    bool has_since;
    bool verified;   /* since is known not to be ahead of Redis */
    bool persistent;
    uint8_t state;   /* enum hub_sub_state */
};

typedef struct hub_config {
    broker_config broker;
    size_t batch_bytes;   /* cap of one batch's content (1 MiB) */
    size_t ring_bytes;    /* recent messages kept per channel (<= batch_bytes) */
    unsigned linger_ms;   /* keep an unused channel subscribed this long */
    /* Bounds (0: none). At max_channels a subscription to one more channel
     * evicts the longest-unused channel without subscribers, or is refused.
     * At most max_reads history reads of subscribers are in Redis at once;
     * the rest queue (each read can be a 1 MiB reply held in Redis's and
     * our memory). */
    size_t max_channels;
    size_t max_reads;
    /* Every presence_ms (0: never) the subscriber counts that changed go
     * to Redis (broker_presence), for GET /channels; after a reconnect of
     * the command connection all of them. */
    unsigned presence_ms;
} hub_config;

typedef struct hub_stats {
    uint64_t channels;
    uint64_t subs;          /* attached subscribers */
    uint64_t parked;
    uint64_t batches;       /* deliveries to subscribers */
    uint64_t messages_out;  /* messages in those deliveries */
    uint64_t live_messages; /* messages received from pub/sub */
    uint64_t resyncs;
    uint64_t reads;         /* subscriber reads in Redis now */
    uint64_t queued;        /* subscribers waiting for a read slot */
    uint64_t refused;       /* subscriptions refused at max_channels */
    uint64_t evicted;       /* unused channels dropped for room */
} hub_stats;

/* The hub owns its broker (created from cfg->broker). */
hub *hub_new(loop *l, const hub_config *cfg);
void hub_start(hub *h);
/* Detach every subscriber first (hub_unsubscribe); then free. */
void hub_free(hub *h);
broker *hub_broker(hub *h);
hub_stats hub_get_stats(const hub *h);

void hub_sub_init(hub_sub *s, const hub_sub_ops *ops, bool persistent);

/* Start delivering channel's messages to s after since (has_since) or from
 * now on, for epoch ("" when the client named none). The first delivery may
 * happen inside this call. channel must be valid (api_channel_valid).
 * Returns 0, or -1 when the process follows max_channels channels that all
 * have subscribers (s stays detached: answer 503). */
int hub_subscribe(hub *h, hub_sub *s, const char *channel, bool has_since, uint64_t since,
                  const char *epoch);

/* Stop delivering to s (client gone, timeout, shutdown). Idempotent; safe
 * from inside deliver and with a read in flight. */
void hub_unsubscribe(hub *h, hub_sub *s);

/* A persistent subscriber whose transport cannot take more now (its queue
 * is full) stops receiving; hub_sub_resume catches it up later, from memory
 * or from Redis. Also from inside deliver. No-op while a read is out for it
 * (deliver follows, and may pause it then). */
void hub_sub_pause(hub *h, hub_sub *s);

/* Continue a persistent subscriber paused after a batch with more or by
 * hub_sub_pause. */
void hub_sub_resume(hub *h, hub_sub *s);

/* The name of the channel s follows, "" when detached. */
const char *hub_sub_channel(const hub_sub *s);

/* When s is parked with nothing newer than the channel's newest message:
 * that message's epoch, id and content (NULL when not in memory), for an
 * answer that carries no messages (a long-poll timeout, a shutdown). False
 * when s is not known to be up to date (its read is in flight, Redis is
 * unreachable, its epoch is not the channel's): answering it with the newest
 * id then would skip messages it never got. */
bool hub_sub_idle(const hub_sub *s, const char **epoch, uint64_t *newest,
                  const rbuf **newest_json);

/* Check the invariants above on every channel and subscriber; abort with a
 * message on the first violation. Runs after every event in builds with
 * PW_CHECK_INVARIANTS (the sanitizer build); tests may call it directly. */
void hub_check(const hub *h);

#endif
