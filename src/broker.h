/* broker.h - everything this process says to Redis: per Redis node two
 * hiredis async connections (commands, pub/sub) on the loop, the Lua
 * scripts that assign ids, store history and publish in one atomic step,
 * restart detection for the epoch, heartbeats, timeouts and reconnects.
 *
 * One Redis (redis://, unix://, or the master Sentinel names) is one node.
 * With a redis+cluster:// URL there is a node per cluster node that the
 * slot map (cluster_slots.h) has named: every key of a channel carries the
 * hash tag {CHANNEL} (PREFIX{CHANNEL}:ch, :h, :idem/KEY), so its scripts
 * run on the master of its slot, and its messages go out with SPUBLISH on
 * PREFIX{CHANNEL}:msg to the SSUBSCRIBE connection of that same shard: a
 * process subscribes on each shard to the channels it serves and nothing
 * else. MOVED and ASK replies are followed (the command is sent again
 * where they point); the map is reloaded from CLUSTER SLOTS after a
 * MOVED, a lost node, and every few seconds. The heartbeat and presence
 * keys share the tag {global}. The epoch's server generation lives in each
 * channel's hash instead of PREFIXserver (lib.lua's gen_of).
 *
 * It knows nothing of HTTP or WebSocket; hub.c decides what to ask.
 */
#ifndef PW_BROKER_H
#define PW_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "loop.h"
#include "redis_url.h"

typedef struct broker broker;

typedef struct broker_config {
    redis_url url;
    const char *prefix;     /* key and channel prefix, e.g. "pw:" */
    unsigned timeout_ms;    /* a command unanswered this long means Redis is stalled */
    unsigned history;       /* messages kept per channel */
    unsigned history_ttl;   /* seconds an idle channel is kept */
    unsigned idem_ttl;      /* seconds an Idempotency-Key is remembered */
    unsigned heartbeat_ms;  /* heartbeat key refresh and pub/sub liveness probe */
    /* Replicated publishing: a message is stored, then WAITed for until
     * this many replicas have it (at most timeout_ms / 2), and only then
     * committed: published on pub/sub, readable, acknowledged. Readers
     * never see an uncommitted message, so a failover to a replica that
     * had every committed message loses nothing anyone saw, and the epoch
     * is kept (lib.lua's gen_of is told the promoted server is lossless).
     * 0: publish at once (a failover then starts a new epoch). */
    unsigned wait_replicas;
    const char *proc_kind;  /* "worker" or "relay": heartbeat key namespace */
    const char *proc_id;    /* unique per process, e.g. "host:pid" */
} broker_config;

/* Connection events, delivered from the loop. None of them may free the
 * broker. A node is the number broker_subscribe returned. */
typedef struct broker_hooks {
    void *ctx;
    /* More commands can be sent than before (a node's command connection
     * is ready, or the slot map changed or made every owner reachable):
     * retry what waits. */
    void (*cmd_up)(void *ctx);
    void (*cmd_down)(void *ctx); /* a command connection lost; its ops got errors */
    /* A pub/sub connection is ready, or the slot map changed or made every
     * owner reachable: subscribe every channel that is not. After a map
     * change both are called, cmd_up first. */
    void (*sub_up)(void *ctx);
    /* Every subscription made on node is gone. */
    void (*sub_down)(void *ctx, int node);
    void (*subscribed)(void *ctx, const char *channel);
    /* The subscription to channel on node is gone (its slot moved to
     * another shard, or the subscribe was refused there). */
    void (*unsubscribed)(void *ctx, const char *channel, int node);
    void (*message)(void *ctx, const char *channel, const char *payload, size_t len);
} broker_hooks;

enum { BROKER_OK = 0, BROKER_EUNAVAIL = 1, BROKER_EREDIS = 2 };

typedef struct broker_stats {
    uint64_t cmd_connects, sub_connects;
    uint64_t cmd_failures; /* connect failures, timeouts, drops */
    uint64_t sub_failures;
    uint64_t timeouts;     /* stalls detected by the watchdog */
    uint64_t publishes, publish_errors, reads, read_errors;
    uint64_t pubsub_messages;
    uint64_t wait_shortfalls; /* publishes failed: fewer replicas confirmed than asked */
    uint64_t redirects;       /* MOVED and ASK followed (cluster) */
    uint64_t slot_refreshes;  /* slot maps loaded (cluster) */
    uint64_t failovers;       /* +switch-master announcements acted on (Sentinel) */
} broker_stats;

/* The broker copies cfg (strings must outlive it) and hooks. */
broker *broker_new(loop *l, const broker_config *cfg, const broker_hooks *hooks);
/* Connect both connections (asynchronously; retried with backoff forever). */
void broker_start(broker *b);
/* Close connections; pending callbacks run with BROKER_EUNAVAIL first. */
void broker_free(broker *b);

/* Every node that serves slots (the one Redis) can take commands / has
 * its pub/sub connection up, and (cluster) every slot has a master. */
bool broker_cmd_ready(const broker *b);
bool broker_sub_ready(const broker *b);
const broker_stats *broker_get_stats(const broker *b);
/* Milliseconds until the next connection attempt, for Retry-After. */
unsigned broker_retry_after_ms(const broker *b);

/* Ask for the channel's messages. Returns the node it was sent to (>= 0),
 * or -1 when the connection there is not ready (nothing sent). No
 * confirmation callback: the subscribed hook reports it. */
int broker_subscribe(broker *b, const char *channel);
/* Drop a subscription made on node (broker_subscribe's answer). */
int broker_unsubscribe(broker *b, const char *channel, int node);

typedef struct broker_pub_result {
    int err;              /* BROKER_OK / BROKER_EUNAVAIL / BROKER_EREDIS */
    const char *errmsg;   /* for logs, valid during the callback */
    char epoch[PW_EPOCH_MAX + 1];
    uint64_t id;
    bool duplicate;       /* an earlier publish with the same Idempotency-Key */
} broker_pub_result;
typedef void broker_pub_cb(void *arg, const broker_pub_result *r);

/* Store and publish json (a JSON string literal) on channel. idem_key may be
 * NULL. Returns 0 when sent: cb then runs exactly once, from the loop, never
 * before broker_publish returns. Returns -1 when not ready: cb never runs. */
int broker_publish(broker *b, const char *channel, const char *json, size_t json_len,
                   const char *idem_key, broker_pub_cb *cb, void *arg);

typedef struct broker_read_result {
    int err;
    const char *errmsg;
    char epoch[PW_EPOCH_MAX + 1];
    uint64_t newest;      /* newest id of the channel (0: none) */
    bool reset;           /* the caller's since/epoch cannot be brought up to date */
    bool more;            /* entries stop short of newest because of the byte budget */
    pw_msg *newest_msg;   /* NULL when the channel has no retained message */
    pw_msg *entries;      /* contiguous, oldest first; id > since (or the retained history on reset) */
    size_t n;
} broker_read_result;
/* The result and its messages live until the callback returns; keep json
 * with rbuf_ref. */
typedef void broker_read_cb(void *arg, const broker_read_result *r);

/* Read the channel's state and, when has_since, the messages after since
 * (at most budget bytes of content, at least one). epoch may be "" (none).
 * Creates the channel's epoch if it has none. Same return and callback rules
 * as broker_publish. */
int broker_read(broker *b, const char *channel, bool has_since, uint64_t since, const char *epoch,
                size_t budget, broker_read_cb *cb, void *arg);

/* Heartbeats: every process scores itself in the sorted set PREFIXprocs
 * ("worker:ID", "relay:ID") with the Redis time at which it counts as down
 * unless it heartbeats again: three of its own intervals plus the Redis
 * timeout ahead. Entries down for a minute are forgotten. */
#define BROKER_PROC_FORGET_MS 60000

typedef struct broker_proc {
    const char *name;     /* "kind:id", valid during the callback */
    long long overdue_ms; /* how long it has been down (0 when alive) */
    bool alive;
} broker_proc;

typedef struct broker_procs_result {
    int err;
    broker_proc *procs;
    size_t n;
} broker_procs_result;
typedef void broker_procs_cb(void *arg, const broker_procs_result *r);

/* Read every process's heartbeat (for /healthz). Same return and callback
 * rules as broker_publish. */
int broker_procs(broker *b, broker_procs_cb *cb, void *arg);

/* Presence: each process keeps its subscriber count per channel in the hash
 * PREFIXpresence:KIND:ID, which expires with its heartbeat (a process that
 * dies leaves the counts within 3 heartbeats plus the Redis timeout).
 * Write counts[i] subscribers for names[i] (0 removes the field); full:
 * replace the whole hash (after a reconnect). Returns 0, or -1 when not
 * connected (nothing sent). */
int broker_presence(broker *b, bool full, const char *const *names, const uint64_t *counts,
                    size_t n);

typedef struct broker_info_result {
    int err;
    char epoch[PW_EPOCH_MAX + 1]; /* "" when nobody used the channel yet */
    uint64_t newest, retained, subscribers, processes;
} broker_info_result;
typedef void broker_info_cb(void *arg, const broker_info_result *r);

/* A channel's newest id, epoch, retained count and subscribers summed over
 * every live process. Same return and callback rules as broker_publish. */
int broker_channel_info(broker *b, const char *channel, broker_info_cb *cb, void *arg);

typedef struct broker_channel_count {
    const char *name; /* valid during the callback */
    uint64_t subscribers;
} broker_channel_count;

typedef struct broker_list_result {
    int err;
    uint64_t processes;
    broker_channel_count *channels; /* sorted by name; only those with subscribers */
    size_t n;
} broker_list_result;
typedef void broker_list_cb(void *arg, const broker_list_result *r);

/* Every channel with subscribers in a live process. Same rules. */
int broker_channel_list(broker *b, broker_list_cb *cb, void *arg);

/* Remove this process from the heartbeat set (graceful stop) and stop
 * heartbeating. done(arg) runs once Redis answered (or the connection
 * failed). Returns -1 when not connected (done never runs). */
int broker_goodbye(broker *b, void (*done)(void *arg), void *arg);

#endif
