/* broker.c - what this process says to Redis: the handshake facts behind
 * the epoch, the scripts (src/lua/) that assign ids, store history and
 * publish, reads, subscriptions, heartbeats and the pub/sub liveness probe,
 * and on a cluster the routing of each to its node (broker.h).
 *
 * The connections themselves (lookup, connect, reconnect, timeouts) are
 * redis_conn.c's, the slot arithmetic cluster_slots.c's; nothing here
 * touches a socket.
 */
#include "broker.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "buf.h"
#include "cluster_slots.h"
#include "log.h"
#include "lua_scripts.h"
#include "redis_conn.h"
#include "sentinel_watch.h"

#define MAX_REDIRECTS     5    /* MOVED/ASK followed per command */
#define REFRESH_OK_MS     5000 /* slot map reload when every slot has a live master */
#define REFRESH_DEGRADED_MS 500

typedef struct pub_repl pub_repl;
typedef struct node node;

/* A command of ours in flight: how to read its reply, whom to tell, where
 * it went, and (for scripts, and everything on a cluster) the arguments
 * again, for a retry with EVAL after NOSCRIPT or after a redirection. */
typedef struct op {
    broker *b;
    node *n;
    void (*on_reply)(broker *b, struct op *o, redisReply *r);
    void *user_cb;
    void *user_arg;
    const char *script; /* for the NOSCRIPT retry */
    int argc;
    char **argv;
    size_t *argvlen;
    bool retried;
    unsigned redirects;
    /* Where argv has lib.lua's ARGV[1] and ARGV[2] (the server's identity
     * and flags), 0 when it does not: a redirected script must carry the
     * identity of the node that runs it, or a failover would pass for the
     * server that wrote the channel. */
    int ident_at;
} op;

/* An SSUBSCRIBE or SUNSUBSCRIBE sent on a cluster pub/sub connection and
 * not answered yet: an error reply names no channel, so replies are matched
 * to these in order. */
typedef struct subreq {
    struct subreq *next;
    bool unsub;
    char name[PW_CHANNEL_MAX + 1];
} subreq;

/* One Redis server: the one of redis:// (or Sentinel's master), or a
 * cluster node. Invariant: b->nodes[n->idx] == n, and on a cluster idx is
 * the node's index in the slot map. */
struct node {
    broker *b;
    int idx;
    redis_url url; /* this node's address, the credentials of the URL */
    char cmd_name[SLOTS_ADDR_MAX + 16], sub_name[SLOTS_ADDR_MAX + 16];
    redis_conn cmdc, subc;
    unsigned owns; /* slots it serves (the one Redis: all) */
    /* Handshake facts about the server behind cmdc. */
    char run_id[64 + 1 + 41]; /* RUNID, on a cluster RUNID@NODEID */
    bool aof_on, fsync_always, master, replid2_zero, cluster_enabled;
    unsigned replicas; /* connected_slaves */
    int handshake_left;
    char sha_publish[41], sha_read[41], sha_commit[41];
    /* Replicated publishing: stored, waiting for the next WAIT, oldest first. */
    pub_repl *repl_head, *repl_tail;
    bool wait_inflight;
    /* Liveness of the pub/sub connection: its own ping channel. */
    char ping_channel[200];
    bool ping_subscribed;
    uint64_t last_ping_rx;
    uint64_t ping_seq;
    subreq *sq_head, *sq_tail;
};

/* A channel whose subscription a node refused: told to the hub (which
 * subscribes again) once the slot map was reloaded. */
typedef struct resub {
    int node;
    char name[PW_CHANNEL_MAX + 1];
} resub;

struct broker {
    loop *l;
    broker_config cfg;
    broker_hooks hooks;
    char prefix[64];
    char gprefix[80]; /* heartbeat and presence keys: PREFIX, or PREFIX{global}: */
    bool cluster;
    node *nodes[SLOTS_MAX_NODES];
    unsigned nnodes;
    slot_map *map;         /* cluster only */
    uint16_t *prev_owner;  /* the map before the last reload */
    bool map_loaded, refresh_inflight;
    bool map_complete; /* every slot has a master (as of the last load) */
    uint64_t refresh_at;
    unsigned refresh_rr;
    timer refresh;
    resub *resubs;
    size_t nresubs, capresubs;
    sentinel_watch watch; /* Sentinel URLs only */
    bool watching;
    timer heartbeat, probe;
    uint64_t probe_timeouts;
    broker_stats stats;
};

static void rand_hex(char *out, size_t nbytes);
static const char *gen_flags(const node *n);
static void refresh_soon(broker *b, unsigned ms);
static node *node_get(broker *b, int idx);

/* ---- key names ------------------------------------------------------------ */

/* A channel's key WHAT ("ch", "h", "msg"): PREFIXWHAT:CHANNEL, or on a
 * cluster PREFIX{CHANNEL}:WHAT (one hash slot per channel). */
static int ch_key(const broker *b, char *out, size_t cap, const char *what, const char *channel)
{
    int n = b->cluster ? snprintf(out, cap, "%s{%s}:%s", b->prefix, channel, what)
                       : snprintf(out, cap, "%s%s:%s", b->prefix, what, channel);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

/* The key of the server generation: PREFIXserver, or the channel's hash. */
static void srv_key(const broker *b, char *out, size_t cap, const char *channel)
{
    if (b->cluster)
        ch_key(b, out, cap, "ch", channel);
    else
        snprintf(out, cap, "%sserver", b->prefix);
}

/* The channel name in a pub/sub channel of ours, or NULL. */
static const char *pubch_name(const broker *b, const char *s, size_t len, char *out, size_t cap)
{
    size_t pl = strlen(b->prefix);
    if (len <= pl || memcmp(s, b->prefix, pl) != 0)
        return NULL;
    s += pl, len -= pl;
    size_t nl;
    if (b->cluster) {
        if (len < 6 || s[0] != '{' || memcmp(s + len - 5, "}:msg", 5) != 0)
            return NULL;
        s++, nl = len - 6;
    } else {
        if (len < 5 || memcmp(s, "msg:", 4) != 0)
            return NULL;
        s += 4, nl = len - 4;
    }
    if (nl == 0 || nl >= cap)
        return NULL;
    memcpy(out, s, nl);
    out[nl] = '\0';
    return out;
}

/* The node serving key (NULL when its slot has no known master). */
static node *route(broker *b, const char *key, size_t len)
{
    if (!b->cluster)
        return b->nodes[0];
    uint16_t o = b->map->owner[slots_key_slot(key, len)];
    return o == SLOTS_NONE ? NULL : node_get(b, o);
}

static node *route_channel(broker *b, const char *channel)
{
    char k[160];
    int n = ch_key(b, k, sizeof k, "ch", channel);
    return n < 0 ? NULL : route(b, k, (size_t)n);
}

static node *route_global(broker *b)
{
    char k[128];
    int n = snprintf(k, sizeof k, "%sprocs", b->gprefix);
    return route(b, k, (size_t)n);
}

static bool cmd_ok(const node *n) { return n && rc_is_ready(&n->cmdc); }

/* ---- commands ----------------------------------------------------------- */

static void op_free(op *o)
{
    if (o->argv) {
        for (int i = 0; i < o->argc; i++)
            free(o->argv[i]);
        free(o->argv);
        free(o->argvlen);
    }
    free(o);
}

static void op_reply(redis_conn *c, void *reply, void *arg);

static void noop_reply(redis_conn *c, void *reply, void *arg) { (void)c, (void)reply, (void)arg; }

/* A MOVED: the slot's new master in the map, and in the nodes' counts of
 * the slots they serve (what readiness is judged by). Returns the node's
 * index, or -1. */
static int map_moved(broker *b, const slots_redirect *rd, const char *answered)
{
    if (rd->ask || rd->slot >= SLOTS_COUNT)
        return -1;
    uint16_t before = b->map->owner[rd->slot];
    int idx = slots_apply(b->map, rd, answered);
    node *n = idx >= 0 ? node_get(b, idx) : NULL;
    if (!n || before == idx)
        return idx;
    if (before != SLOTS_NONE && b->nodes[before] && b->nodes[before]->owns)
        b->nodes[before]->owns--;
    n->owns++;
    return idx;
}

/* A cluster's answer that is not the command's: a redirection (send it
 * again where it points) or a shard in transition (TRYAGAIN, CLUSTERDOWN:
 * the caller sees Redis unavailable). Returns true when o was dealt with. */
static bool cluster_redirect(broker *b, op *o, const redisReply *r)
{
    slots_redirect rd;
    int k = slots_parse_redirect(r->str, &rd);
    bool transient = strncmp(r->str, "TRYAGAIN", 8) == 0 || strncmp(r->str, "CLUSTERDOWN", 11) == 0 ||
                     strncmp(r->str, "MASTERDOWN", 10) == 0 || strncmp(r->str, "LOADING", 7) == 0;
    if (k == 0 && !transient)
        return false;
    refresh_soon(b, 0);
    if (k == 1 && o->argv && o->redirects < MAX_REDIRECTS) {
        char answered[SLOTS_ADDR_MAX];
        snprintf(answered, sizeof answered, "%s:%d", o->n->url.host, o->n->url.port);
        int idx = rd.ask ? (rd.host[0] ? slots_node(b->map, rd.host, rd.port) : o->n->idx)
                         : map_moved(b, &rd, answered);
        node *t = idx >= 0 ? node_get(b, idx) : NULL;
        b->stats.redirects++;
        if (cmd_ok(t)) {
            const char *asking[1] = {"ASKING"};
            size_t alen[1] = {6};
            if (!rd.ask || rc_send(&t->cmdc, 1, asking, alen, noop_reply, NULL) == 0) {
                o->redirects++;
                o->n = t;
                if (o->ident_at) {
                    const char *id[2] = {t->run_id, gen_flags(t)};
                    for (int i = 0; i < 2; i++) {
                        free(o->argv[o->ident_at + i]);
                        o->argv[o->ident_at + i] = xstrndup(id[i], strlen(id[i]));
                        o->argvlen[o->ident_at + i] = strlen(id[i]);
                    }
                }
                if (rc_send(&t->cmdc, o->argc, (const char **)o->argv, o->argvlen, op_reply, o) == 0)
                    return true;
            }
        }
    }
    o->on_reply(b, o, NULL); /* not there (yet): unavailable, retried later */
    op_free(o);
    return true;
}

static void op_reply(redis_conn *c, void *reply, void *arg)
{
    (void)c;
    op *o = arg;
    redisReply *r = reply;
    if (o->b->cluster && r && r->type == REDIS_REPLY_ERROR && cluster_redirect(o->b, o, r))
        return;
    o->on_reply(o->b, o, reply);
    op_free(o);
}

/* Send argv to node n with on_reply. keep_script: remember the arguments
 * for a NOSCRIPT retry with that script's text (on a cluster they are kept
 * anyway, for a redirection). Returns 0, or -1 when n cannot take it
 * (nothing runs). */
static int op_send(broker *b, node *n, int argc, const char **argv, const size_t *lens,
                   void (*on_reply)(broker *, op *, redisReply *), void *user_cb, void *user_arg,
                   const char *keep_script, int ident_at)
{
    if (!n)
        return -1;
    op *o = xcalloc(1, sizeof *o);
    o->b = b;
    o->n = n;
    o->ident_at = ident_at;
    o->on_reply = on_reply;
    o->user_cb = user_cb;
    o->user_arg = user_arg;
    if (keep_script || b->cluster) {
        o->script = keep_script;
        o->argc = argc;
        o->argv = xcalloc((size_t)argc, sizeof(char *));
        o->argvlen = xcalloc((size_t)argc, sizeof(size_t));
        for (int i = 0; i < argc; i++) {
            o->argv[i] = xstrndup(argv[i], lens[i]);
            o->argvlen[i] = lens[i];
        }
    }
    if (rc_send(&n->cmdc, argc, argv, lens, op_reply, o) < 0) {
        op_free(o);
        return -1;
    }
    return 0;
}

static int op_simple(broker *b, node *n, int argc, const char **argv,
                     void (*on_reply)(broker *, op *, redisReply *), void *user_cb, void *user_arg)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return op_send(b, n, argc, argv, lens, on_reply, user_cb, user_arg, NULL, 0);
}

static bool is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Redis forgot the script (SCRIPT FLUSH, a restart behind the same
 * connection, a node that has not loaded it): send o again with EVAL and
 * the script text. Returns true when it was (the reply then comes to the
 * copy). */
static bool retry_with_eval(broker *b, op *o)
{
    (void)b;
    if (o->retried || !o->argv || !o->script)
        return false;
    free(o->argv[0]);
    free(o->argv[1]);
    o->argv[0] = xstrndup("EVAL", 4);
    o->argvlen[0] = 4;
    o->argv[1] = xstrndup(o->script, strlen(o->script));
    o->argvlen[1] = strlen(o->script);
    op *copy = xmalloc(sizeof *copy);
    *copy = *o;
    copy->retried = true;
    o->argv = NULL; /* now owned by copy */
    if (rc_send(&copy->n->cmdc, copy->argc, (const char **)copy->argv, copy->argvlen, op_reply,
                copy) < 0) {
        op_free(copy);
        return false;
    }
    return true;
}

static bool reply_is_error(const redisReply *r) { return !r || r->type == REDIS_REPLY_ERROR; }

static const char *reply_err(const redisReply *r)
{
    return !r ? "connection lost" : r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply";
}

static bool reply_int(const redisReply *r, long long *out)
{
    if (r->type == REDIS_REPLY_INTEGER) {
        *out = r->integer;
        return true;
    }
    if (r->type == REDIS_REPLY_STRING) {
        char *end;
        errno = 0;
        *out = strtoll(r->str, &end, 10);
        return errno == 0 && end != r->str && *end == '\0';
    }
    return false;
}

static void copy_str(char *dst, size_t cap, const redisReply *r)
{
    size_t n = r->len < cap - 1 ? r->len : cap - 1;
    memcpy(dst, r->str, n);
    dst[n] = '\0';
}

static void ignore_reply(broker *b, op *o, redisReply *r) { (void)b, (void)o, (void)r; }

/* lib.lua's gen_of flags for the server behind n (its header says what
 * each means): appendonly with appendfsync always; replicated publishing;
 * a replicated topology, where the script reads the role and replication
 * ids itself at the moment it runs (a connection outlives promotions and
 * full syncs); else whether the handshake saw a promoted replica. */
static const char *gen_flags(const node *n)
{
    static const char *const tab[16] = {"0000", "0001", "0010", "0011", "0100", "0101",
                                        "0110", "0111", "1000", "1001", "1010", "1011",
                                        "1100", "1101", "1110", "1111"};
    const broker *b = n->b;
    bool always = n->aof_on && n->fsync_always;
    bool wait = b->cfg.wait_replicas > 0;
    bool replicated = b->cluster || wait || redis_url_is_sentinel(&b->cfg.url);
    bool promoted = !replicated && !n->replid2_zero;
    return tab[(always << 3) | (wait << 2) | (replicated << 1) | promoted];
}

/* ---- the command connection's handshake ------------------------------------ */

/* Value of "key:" in an INFO section, copied into out. */
static void info_field(const char *info, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    size_t kl = strlen(key);
    for (const char *p = info; p && *p;) {
        if (strncmp(p, key, kl) == 0 && p[kl] == ':') {
            p += kl + 1;
            size_t n = strcspn(p, "\r\n");
            if (n >= cap)
                n = cap - 1;
            memcpy(out, p, n);
            out[n] = '\0';
            return;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
}

enum hs_step {
    HS_INFO_SERVER,
    HS_INFO_REPL,
    HS_INFO_CLUSTER,
    HS_MYID,
    HS_AOF,
    HS_FSYNC,
    HS_LOAD_PUB,
    HS_LOAD_READ,
    HS_LOAD_COMMIT
};

static void handshake_reply(broker *b, op *o, redisReply *r)
{
    node *n = o->n;
    redis_conn *conn = &n->cmdc;
    enum hs_step step = (enum hs_step)(intptr_t)o->user_arg;
    if (!r || conn->state != RC_HANDSHAKE)
        return; /* the connection is going away; its down hook handles it */
    bool optional = step == HS_AOF || step == HS_FSYNC;
    if (reply_is_error(r) && !optional) {
        char why[160];
        snprintf(why, sizeof why, "handshake step %d: %s", (int)step, reply_err(r));
        rc_fail(conn, why);
        return;
    }
    bool text = r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
    switch (step) {
    case HS_INFO_SERVER:
        if (text) {
            char id[64];
            info_field(r->str, "run_id", id, sizeof id);
            /* HS_MYID (after this) appends @NODEID on a cluster. */
            snprintf(n->run_id, sizeof n->run_id, "%s", id);
        }
        break;
    case HS_INFO_REPL:
        if (text) {
            char v[64];
            info_field(r->str, "role", v, sizeof v);
            n->master = strcmp(v, "master") == 0;
            info_field(r->str, "master_replid2", v, sizeof v);
            n->replid2_zero = v[0] && strspn(v, "0") == strlen(v);
            info_field(r->str, "connected_slaves", v, sizeof v);
            n->replicas = (unsigned)strtoul(v, NULL, 10);
        }
        if (redis_url_is_sentinel(&b->cfg.url) && !n->master) {
            /* A sentinel's answer can be stale (a failover under way, the
             * old master back as a replica): never write to a replica. */
            rc_fail(conn, "the server the sentinel named is not a master (yet)");
            return;
        }
        break;
    case HS_INFO_CLUSTER:
        if (text) {
            char v[8];
            info_field(r->str, "cluster_enabled", v, sizeof v);
            n->cluster_enabled = strcmp(v, "1") == 0;
        }
        if (n->cluster_enabled != b->cluster) {
            rc_fail(conn, b->cluster ? "this Redis is not in cluster mode (use redis://)"
                                     : "this Redis is a cluster node (use redis+cluster://)");
            return;
        }
        break;
    case HS_MYID:
        if (text && r->len > 0 && r->len <= 40) {
            size_t l = strlen(n->run_id);
            snprintf(n->run_id + l, sizeof n->run_id - l, "@%s", r->str);
        }
        break;
    case HS_AOF:
    case HS_FSYNC:
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            if (step == HS_AOF)
                n->aof_on = strcmp(r->element[1]->str, "yes") == 0;
            else
                n->fsync_always = strcmp(r->element[1]->str, "always") == 0;
        }
        break;
    case HS_LOAD_PUB:
    case HS_LOAD_READ:
    case HS_LOAD_COMMIT:
        if (r->type == REDIS_REPLY_STRING && r->len == 40)
            memcpy(step == HS_LOAD_PUB    ? n->sha_publish
                   : step == HS_LOAD_READ ? n->sha_read
                                          : n->sha_commit,
                   r->str, 41);
        break;
    }
    if (--n->handshake_left == 0) {
        if (!n->run_id[0]) {
            rc_fail(conn, "INFO server gave no run_id");
            return;
        }
        if (b->cluster && !strchr(n->run_id, '@')) {
            rc_fail(conn, "CLUSTER MYID gave no node id");
            return;
        }
        rc_ready(conn);
    }
}

static void handshake_send(broker *b, node *n, enum hs_step step, int argc, const char **argv)
{
    if (op_simple(b, n, argc, argv, handshake_reply, NULL, (void *)(intptr_t)step) == 0)
        n->handshake_left++;
}

/* ---- pub/sub ------------------------------------------------------------------ */

static subreq *sq_take(node *n, const char *name, bool unsub)
{
    for (subreq **p = &n->sq_head, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        subreq *q = *p;
        if (name ? (q->unsub == unsub && strcmp(q->name, name) == 0) : true) {
            *p = q->next;
            if (n->sq_tail == q)
                n->sq_tail = prev;
            return q;
        }
    }
    return NULL;
}

static void sq_clear(node *n)
{
    for (subreq *q; (q = sq_take(n, NULL, false));)
        free(q);
}

static void resub_add(broker *b, const char *name, int node_idx)
{
    if (b->nresubs == b->capresubs) {
        b->capresubs = b->capresubs ? 2 * b->capresubs : 16;
        b->resubs = xrealloc(b->resubs, b->capresubs * sizeof *b->resubs);
    }
    resub *r = &b->resubs[b->nresubs++];
    r->node = node_idx;
    snprintf(r->name, sizeof r->name, "%s", name);
}

static void sub_push(void *ctx, redis_conn *c, void *reply)
{
    (void)c;
    node *n = ctx;
    broker *b = n->b;
    redisReply *r = reply;
    if (!r)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        /* On a cluster: an SSUBSCRIBE to a slot this node does not serve
         * (MOVED), answered in order. */
        subreq *q = b->cluster ? sq_take(n, NULL, false) : NULL;
        if (q && !q->unsub)
            resub_add(b, q->name, n->idx);
        free(q);
        slots_redirect rd;
        char answered[SLOTS_ADDR_MAX];
        snprintf(answered, sizeof answered, "%s:%d", n->url.host, n->url.port);
        bool redirect = b->cluster && slots_parse_redirect(r->str, &rd) == 1;
        if (redirect)
            map_moved(b, &rd, answered); /* (an ASK changes nothing) */
        else
            log_warn("redis pub/sub %s: %s", n->sub_name, r->str);
        /* A MOVED: subscribe where it says at once. An ASK (the slot is
         * migrating; the map still names this node): again a little later,
         * not in a loop at the speed of the round trip. */
        refresh_soon(b, redirect && !rd.ask ? 0 : 250);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return;
    const redisReply *kind = r->element[0], *chan = r->element[1];
    if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING)
        return;
    bool is_ping = strcmp(chan->str, n->ping_channel) == 0;
    char nbuf[PW_CHANNEL_MAX + 1];
    const char *name = is_ping ? NULL : pubch_name(b, chan->str, chan->len, nbuf, sizeof nbuf);
    const char *k = kind->str;
    /* smessage, ssubscribe, sunsubscribe: sharded pub/sub (a cluster's). */
    bool sharded = k[0] == 's' && (strcmp(k + 1, "message") == 0 ||
                                   strcmp(k + 1, "subscribe") == 0 ||
                                   strcmp(k + 1, "unsubscribe") == 0);
    if (sharded)
        k++;
    if (strcmp(k, "message") == 0) {
        const redisReply *payload = r->element[2];
        if (payload->type != REDIS_REPLY_STRING)
            return;
        if (is_ping) {
            n->last_ping_rx = loop_now(b->l);
        } else if (name && sharded == b->cluster && b->hooks.message) {
            b->stats.pubsub_messages++;
            b->hooks.message(b->hooks.ctx, name, payload->str, payload->len);
        }
    } else if (strcmp(k, "subscribe") == 0) {
        if (is_ping) {
            n->ping_subscribed = true;
            n->last_ping_rx = loop_now(b->l);
        } else if (name && sharded == b->cluster) {
            free(sq_take(n, name, false));
            if (b->hooks.subscribed)
                b->hooks.subscribed(b->hooks.ctx, name);
        }
    } else if (strcmp(k, "unsubscribe") == 0 && sharded && name) {
        /* Ours, or the node's when the channel's slot left it. */
        subreq *q = sq_take(n, name, true);
        if (!q && b->hooks.unsubscribed)
            b->hooks.unsubscribed(b->hooks.ctx, name, n->idx);
        free(q);
    }
}

static int sub_command(broker *b, node *n, bool unsub, const char *channel)
{
    if (!n || !rc_is_ready(&n->subc))
        return -1;
    char name[256];
    int len = ch_key(b, name, sizeof name, "msg", channel);
    if (len < 0)
        return -1;
    const char *verb = b->cluster ? (unsub ? "SUNSUBSCRIBE" : "SSUBSCRIBE")
                                  : (unsub ? "UNSUBSCRIBE" : "SUBSCRIBE");
    const char *argv[2] = {verb, name};
    size_t lens[2] = {strlen(verb), (size_t)len};
    if (rc_push_send(&n->subc, 2, argv, lens) < 0)
        return -1;
    if (b->cluster) {
        subreq *q = xcalloc(1, sizeof *q);
        q->unsub = unsub;
        snprintf(q->name, sizeof q->name, "%s", channel);
        if (n->sq_tail)
            n->sq_tail->next = q;
        else
            n->sq_head = q;
        n->sq_tail = q;
    }
    return n->idx;
}

int broker_subscribe(broker *b, const char *channel)
{
    char k[160];
    int len = ch_key(b, k, sizeof k, "msg", channel);
    return len < 0 ? -1 : sub_command(b, route(b, k, (size_t)len), false, channel);
}

int broker_unsubscribe(broker *b, const char *channel, int node_idx)
{
    if (node_idx < 0 || (unsigned)node_idx >= b->nnodes)
        return -1;
    return sub_command(b, b->nodes[node_idx], true, channel) < 0 ? -1 : 0;
}

/* Each pub/sub connection must see our own pings while the command
 * connection to the same node can publish them; one that stops delivering
 * is replaced. */
static void probe_cb(loop *l, timer *t)
{
    broker *b = (broker *)((char *)t - offsetof(broker, probe));
    for (unsigned i = 0; i < b->nnodes; i++) {
        node *n = b->nodes[i];
        if (n && rc_is_ready(&n->subc) && rc_is_ready(&n->cmdc) && n->ping_subscribed &&
            loop_now(l) - n->last_ping_rx > b->cfg.timeout_ms + 2 * b->cfg.heartbeat_ms) {
            b->probe_timeouts++;
            rc_fail(&n->subc, "pub/sub connection stopped delivering");
        }
    }
    timer_start(l, t, 100);
}

/* ---- the connections' hooks ------------------------------------------------------ */

static void conn_handshake(void *ctx, redis_conn *c)
{
    node *n = ctx;
    broker *b = n->b;
    if (c == &n->subc) {
        sq_clear(n);
        const char *argv[2] = {"SUBSCRIBE", n->ping_channel};
        size_t lens[2] = {9, strlen(n->ping_channel)};
        rc_push_send(c, 2, argv, lens);
        rc_ready(c);
        return;
    }
    n->handshake_left = 0;
    n->run_id[0] = '\0';
    n->aof_on = n->fsync_always = n->master = n->replid2_zero = n->cluster_enabled = false;
    const char *info_s[2] = {"INFO", "server"};
    handshake_send(b, n, HS_INFO_SERVER, 2, info_s);
    const char *info_r[2] = {"INFO", "replication"};
    handshake_send(b, n, HS_INFO_REPL, 2, info_r);
    const char *info_c[2] = {"INFO", "cluster"};
    handshake_send(b, n, HS_INFO_CLUSTER, 2, info_c);
    if (b->cluster) {
        const char *myid[2] = {"CLUSTER", "MYID"};
        handshake_send(b, n, HS_MYID, 2, myid);
    }
    const char *aof[3] = {"CONFIG", "GET", "appendonly"};
    handshake_send(b, n, HS_AOF, 3, aof);
    const char *fsync[3] = {"CONFIG", "GET", "appendfsync"};
    handshake_send(b, n, HS_FSYNC, 3, fsync);
    const char *lp[3] = {"SCRIPT", "LOAD", lua_publish};
    handshake_send(b, n, HS_LOAD_PUB, 3, lp);
    const char *lr[3] = {"SCRIPT", "LOAD", lua_read};
    handshake_send(b, n, HS_LOAD_READ, 3, lr);
    const char *lc[3] = {"SCRIPT", "LOAD", lua_commit};
    handshake_send(b, n, HS_LOAD_COMMIT, 3, lc);
}

static void conn_up(void *ctx, redis_conn *c)
{
    node *n = ctx;
    broker *b = n->b;
    if (c == &n->cmdc) {
        b->stats.cmd_connects++;
        /* (as of now: lib.lua decides with the replication ids of the moment) */
        bool lossless = (n->aof_on && n->fsync_always && n->replid2_zero) ||
                        (b->cfg.wait_replicas && !n->replid2_zero);
        log_info("redis %s connected (run_id %.12s, %s%s%s)", n->cmd_name, n->run_id,
                 n->master ? "" : "replica, ", n->replid2_zero ? "" : "promoted replica, ",
                 lossless ? "epochs kept" : "a new epoch if this server lost writes");
        if (n->master && b->cfg.wait_replicas && n->replicas < b->cfg.wait_replicas)
            log_warn("redis has %u replicas connected, fewer than --redis-wait-replicas %u: "
                     "publishes fail until enough are",
                     n->replicas, b->cfg.wait_replicas);
        else if (n->master && b->cfg.wait_replicas && n->replicas > b->cfg.wait_replicas)
            log_warn("redis has %u replicas and publishes wait for %u: a failover to a replica "
                     "that had not confirmed may lose messages",
                     n->replicas, b->cfg.wait_replicas);
        if (b->cluster && (!b->map_loaded || !n->owns))
            refresh_soon(b, 0);
        timer_start(b->l, &b->heartbeat, 0); /* announce ourselves now */
        if (b->hooks.cmd_up)
            b->hooks.cmd_up(b->hooks.ctx);
    } else {
        b->stats.sub_connects++;
        n->last_ping_rx = loop_now(b->l);
        log_info("redis %s connected", n->sub_name);
        if (b->hooks.sub_up)
            b->hooks.sub_up(b->hooks.ctx);
    }
}

static void conn_down(void *ctx, redis_conn *c, bool was_ready, const char *why)
{
    (void)why;
    node *n = ctx;
    broker *b = n->b;
    if (c == &n->subc) {
        b->stats.sub_failures++;
        n->ping_subscribed = false;
        sq_clear(n);
        if (was_ready && b->hooks.sub_down)
            b->hooks.sub_down(b->hooks.ctx, n->idx);
    } else {
        b->stats.cmd_failures++;
        if (was_ready && b->hooks.cmd_down)
            b->hooks.cmd_down(b->hooks.ctx);
    }
    if (b->cluster && n->owns)
        refresh_soon(b, 100); /* a failover promotes a replica somewhere */
}

/* A sentinel announced that the master moved: drop connections to anywhere
 * else and reconnect now (each asks a sentinel again). */
static void master_switched(void *ctx, const redis_hostport *m)
{
    broker *b = ctx;
    node *n = b->nodes[0];
    b->stats.failovers++;
    redis_conn *conns[2] = {&n->cmdc, &n->subc};
    for (int i = 0; i < 2; i++) {
        redis_conn *c = conns[i];
        const redis_hostport *t = rc_target(c);
        bool there = !c->asking && strcmp(t->host, m->host) == 0 && t->port == m->port;
        if (c->state != RC_DOWN && !there)
            rc_fail(c, "a sentinel announced a failover");
        rc_retry_now(c);
    }
}

/* ---- nodes and the slot map ------------------------------------------------------- */

static node *node_new(broker *b, int idx, const char *host, int port)
{
    node *n = xcalloc(1, sizeof *n);
    n->b = b;
    n->idx = idx;
    n->url = b->cfg.url;
    if (b->cluster) {
        n->url.cluster = 0;
        n->url.nhosts = 0;
        snprintf(n->url.host, sizeof n->url.host, "%s", host);
        n->url.port = port;
        snprintf(n->cmd_name, sizeof n->cmd_name, "commands %s:%d", host, port);
        snprintf(n->sub_name, sizeof n->sub_name, "pub/sub %s:%d", host, port);
    } else {
        n->owns = SLOTS_COUNT;
        snprintf(n->cmd_name, sizeof n->cmd_name, "commands");
        snprintf(n->sub_name, sizeof n->sub_name, "pub/sub");
    }
    char id[17];
    rand_hex(id, 6);
    snprintf(n->ping_channel, sizeof n->ping_channel, "%sping:%s:%s:%d", b->prefix,
             b->cfg.proc_id, id, idx);
    redis_conn_hooks h = {.ctx = n,
                          .handshake = conn_handshake,
                          .up = conn_up,
                          .down = conn_down,
                          .push = sub_push};
    rc_init(&n->cmdc, b->l, &n->url, n->cmd_name, b->cfg.timeout_ms, false, &h);
    rc_init(&n->subc, b->l, &n->url, n->sub_name, b->cfg.timeout_ms, true, &h);
    b->nodes[idx] = n;
    if ((unsigned)idx >= b->nnodes)
        b->nnodes = (unsigned)idx + 1;
    return n;
}

static void node_start(node *n)
{
    rc_start(&n->cmdc);
    rc_start(&n->subc);
}

static void repl_fail_all(broker *b, node *n);

static void node_free(node *n)
{
    rc_free(&n->cmdc);
    rc_free(&n->subc);
    sq_clear(n);
    repl_fail_all(n->b, n);
    free(n);
}

/* The node of slot-map index idx, created and connecting when new. */
static node *node_get(broker *b, int idx)
{
    if (idx < 0 || idx >= SLOTS_MAX_NODES)
        return NULL;
    if (b->nodes[idx])
        return b->nodes[idx];
    const char *addr = b->map->node[idx];
    const char *colon = strrchr(addr, ':');
    if (!colon)
        return NULL;
    char host[SLOTS_ADDR_MAX];
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    node *n = node_new(b, idx, host, atoi(colon + 1));
    node_start(n);
    return n;
}

static bool owners_ready(const broker *b, bool sub)
{
    for (unsigned i = 0; i < b->nnodes; i++) {
        const node *n = b->nodes[i];
        if (n && n->owns && !rc_is_ready(sub ? &n->subc : &n->cmdc))
            return false;
    }
    return !b->cluster || b->map_complete;
}

static void refresh_soon(broker *b, unsigned ms)
{
    if (!b->cluster)
        return;
    uint64_t at = loop_now(b->l) + ms;
    if (timer_armed(&b->refresh) && b->refresh_at <= at)
        return;
    b->refresh_at = at;
    timer_start(b->l, &b->refresh, ms);
}

static void slots_reply(broker *b, op *o, redisReply *r)
{
    b->refresh_inflight = false;
    int owned = -1;
    bool was_cmd = false, was_sub = false;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        /* (Only with a reply: without one the broker may be being freed,
         * its nodes half gone.) */
        was_cmd = owners_ready(b, false);
        was_sub = owners_ready(b, true);
        memcpy(b->prev_owner, b->map->owner, sizeof b->map->owner);
        owned = slots_load(b->map, r, o->n->url.host);
    }
    if (owned < 0) {
        if (r) /* (a lost connection says so itself) */
            log_warn("redis cluster: CLUSTER SLOTS from %s:%d failed: %s", o->n->url.host,
                     o->n->url.port, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        refresh_soon(b, REFRESH_DEGRADED_MS);
        return;
    }
    b->stats.slot_refreshes++;
    bool first = !b->map_loaded;
    b->map_loaded = true;
    /* (A MOVED later only names new owners: a complete map stays so.) */
    b->map_complete = owned == SLOTS_COUNT;
    for (unsigned i = 0; i < b->nnodes; i++)
        if (b->nodes[i])
            b->nodes[i]->owns = 0;
    for (unsigned s = 0; s < SLOTS_COUNT; s++) {
        node *n = b->map->owner[s] == SLOTS_NONE ? NULL : node_get(b, b->map->owner[s]);
        if (n)
            n->owns++;
    }
    bool changed = memcmp(b->prev_owner, b->map->owner, sizeof b->map->owner) != 0;
    if (changed || first) {
        unsigned masters = 0;
        for (unsigned i = 0; i < b->nnodes; i++)
            masters += b->nodes[i] && b->nodes[i]->owns;
        log_info("redis cluster: %d of %d slots served by %u masters%s", owned, SLOTS_COUNT,
                 masters, first ? "" : " (the map changed)");
    }
    /* A new map, or one that makes every owner reachable (a channel whose
     * owner was down stayed unsubscribed), is news even when no connection
     * came up. Before the refused subscriptions below, so that what waits
     * for an owner goes where the map now says first. */
    if ((changed || (!was_cmd && owners_ready(b, false))) && b->hooks.cmd_up)
        b->hooks.cmd_up(b->hooks.ctx);
    if ((changed || (!was_sub && owners_ready(b, true))) && b->hooks.sub_up)
        b->hooks.sub_up(b->hooks.ctx);
    /* Subscriptions a node refused: subscribe them again, where the map
     * now says. */
    size_t nr = b->nresubs;
    resub *rs = b->resubs;
    b->resubs = NULL;
    b->nresubs = b->capresubs = 0;
    for (size_t i = 0; i < nr && b->hooks.unsubscribed; i++)
        b->hooks.unsubscribed(b->hooks.ctx, rs[i].name, rs[i].node);
    free(rs);
    refresh_soon(b, owners_ready(b, false) && owners_ready(b, true) ? REFRESH_OK_MS
                                                                   : REFRESH_DEGRADED_MS);
}

/* Reload the slot map from a node that answers: one that serves slots
 * first, in turn. */
static void refresh_cb(loop *l, timer *t)
{
    broker *b = (broker *)((char *)t - offsetof(broker, refresh));
    if (b->refresh_inflight) {
        timer_start(l, t, REFRESH_DEGRADED_MS);
        return;
    }
    node *pick = NULL;
    for (int pass = 0; pass < 2 && !pick; pass++)
        for (unsigned k = 0; k < b->nnodes && !pick; k++) {
            node *n = b->nodes[(b->refresh_rr + k) % b->nnodes];
            if (cmd_ok(n) && (pass == 1 || n->owns))
                pick = n;
        }
    b->refresh_rr++;
    const char *argv[2] = {"CLUSTER", "SLOTS"};
    if (!pick || op_simple(b, pick, 2, argv, slots_reply, NULL, NULL) < 0) {
        b->refresh_at = loop_now(l) + REFRESH_DEGRADED_MS;
        timer_start(l, t, REFRESH_DEGRADED_MS);
        return;
    }
    b->refresh_inflight = true;
}

/* ---- heartbeat ---------------------------------------------------------------- */

static void heartbeat_reply(broker *b, op *o, redisReply *r)
{
    (void)b;
    node *n = o->n;
    /* PUBLISH answers how many connections of that server got the ping.
     * None while our pub/sub connection believes it is subscribed means it
     * is talking to another server (a failover behind a name): reconnect
     * it. */
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0 && n->ping_subscribed &&
        rc_is_ready(&n->subc))
        rc_fail(&n->subc, "pub/sub connection is not subscribed on the current server");
}

static void proc_member(const broker *b, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%s", b->cfg.proc_kind, b->cfg.proc_id);
}

static void heartbeat_cb(loop *l, timer *t)
{
    broker *b = (broker *)((char *)t - offsetof(broker, heartbeat));
    timer_start(l, t, b->cfg.heartbeat_ms);
    node *g = route_global(b);
    if (cmd_ok(g)) {
        char key[128], member[256], valid[24], forget[24];
        snprintf(key, sizeof key, "%sprocs", b->gprefix);
        proc_member(b, member, sizeof member);
        /* Alive until three heartbeats are missed (plus the Redis timeout). */
        snprintf(valid, sizeof valid, "%u", 3 * b->cfg.heartbeat_ms + b->cfg.timeout_ms);
        snprintf(forget, sizeof forget, "%d", BROKER_PROC_FORGET_MS);
        const char *hb[7] = {"EVAL", lua_heartbeat, "1", key, member, valid, forget};
        op_simple(b, g, 7, hb, ignore_reply, NULL, NULL);
    }
    for (unsigned i = 0; i < b->nnodes; i++) {
        node *n = b->nodes[i];
        if (!cmd_ok(n))
            continue;
        char seq[24];
        snprintf(seq, sizeof seq, "%llu", (unsigned long long)++n->ping_seq);
        const char *pub[3] = {"PUBLISH", n->ping_channel, seq};
        op_simple(b, n, 3, pub, heartbeat_reply, NULL, NULL);
    }
}

static void goodbye_reply(broker *b, op *o, redisReply *r)
{
    (void)b, (void)r;
    ((void (*)(void *))o->user_cb)(o->user_arg);
}

int broker_goodbye(broker *b, void (*done)(void *arg), void *arg)
{
    node *g = route_global(b);
    if (!cmd_ok(g))
        return -1;
    timer_stop(b->l, &b->heartbeat);
    char key[128], member[256];
    snprintf(key, sizeof key, "%sprocs", b->gprefix);
    proc_member(b, member, sizeof member);
    const char *zrem[3] = {"ZREM", key, member};
    return op_simple(b, g, 3, zrem, goodbye_reply, (void *)done, arg);
}

static void procs_reply(broker *b, op *o, redisReply *r)
{
    (void)b;
    broker_procs_result res = {0};
    long long now = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 1 ||
        !reply_int(r->element[0], &now)) {
        res.err = r ? BROKER_EREDIS : BROKER_EUNAVAIL;
    } else {
        res.n = r->elements / 2;
        res.procs = res.n ? xcalloc(res.n, sizeof *res.procs) : NULL;
        for (size_t i = 0; i < res.n; i++) {
            redisReply *name = r->element[1 + 2 * i], *score = r->element[2 + 2 * i];
            long long expires = 0;
            res.procs[i].name = name->type == REDIS_REPLY_STRING ? name->str : "?";
            if (score->type == REDIS_REPLY_STRING)
                expires = strtoll(score->str, NULL, 10);
            res.procs[i].alive = expires >= now;
            res.procs[i].overdue_ms = expires >= now ? 0 : now - expires;
        }
    }
    ((broker_procs_cb *)o->user_cb)(o->user_arg, &res);
    free(res.procs);
}

int broker_procs(broker *b, broker_procs_cb *cb, void *arg)
{
    node *g = route_global(b);
    if (!cmd_ok(g))
        return -1;
    char key[128];
    snprintf(key, sizeof key, "%sprocs", b->gprefix);
    const char *argv[4] = {"EVAL", lua_procs, "1", key};
    return op_simple(b, g, 4, argv, procs_reply, (void *)cb, arg);
}

/* ---- publish and read ---------------------------------------------------------- */

static void rand_hex(char *out, size_t nbytes)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char r[16];
    if (nbytes > sizeof r)
        nbytes = sizeof r;
    if (getrandom(r, nbytes, GRND_NONBLOCK) != (ssize_t)nbytes) {
        uint64_t x = (uint64_t)loop_wall_ms() ^ ((uint64_t)getpid() << 32);
        for (size_t i = 0; i < nbytes; i++, x = x * 6364136223846793005ULL + 1)
            r[i] = (unsigned char)(x >> 56);
    }
    for (size_t i = 0; i < nbytes; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[2 * nbytes] = '\0';
}

/* ---- presence -------------------------------------------------------------------- */

#define PRESENCE_BATCH 256 /* fields per HSET / HDEL */

static void presence_key(const broker *b, char *out, size_t cap)
{
    snprintf(out, cap, "%spresence:%s:%s", b->gprefix, b->cfg.proc_kind, b->cfg.proc_id);
}

/* Send one command of argc words (the first two fixed, the rest names and
 * counts); returns -1 when the connection refused it. */
static int presence_send(broker *b, node *g, int argc, const char **argv, size_t *lens)
{
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return op_send(b, g, argc, argv, lens, ignore_reply, NULL, NULL, NULL, 0);
}

int broker_presence(broker *b, bool full, const char *const *names, const uint64_t *counts,
                    size_t n)
{
    node *g = route_global(b);
    if (!cmd_ok(g))
        return -1;
    char key[256];
    presence_key(b, key, sizeof key);
    const char *argv[2 + 2 * PRESENCE_BATCH];
    size_t lens[2 + 2 * PRESENCE_BATCH];
    char nums[PRESENCE_BATCH][24];
    if (full) {
        argv[0] = "DEL", argv[1] = key;
        if (presence_send(b, g, 2, argv, lens) < 0)
            return -1;
    }
    /* Set fields, then delete zeroed ones, in batches. */
    for (int pass = 0; pass < 2; pass++) {
        int argc = 2;
        argv[0] = pass == 0 ? "HSET" : "HDEL", argv[1] = key;
        for (size_t i = 0; i <= n; i++) {
            bool flush = i == n || argc + 2 > 2 + 2 * PRESENCE_BATCH;
            if (flush && argc > 2) {
                if (presence_send(b, g, argc, argv, lens) < 0)
                    return -1;
                argc = 2;
            }
            if (i == n)
                break;
            if ((counts[i] == 0) != (pass == 1))
                continue;
            argv[argc++] = names[i];
            if (pass == 0) {
                snprintf(nums[(argc - 2) / 2], sizeof nums[0], "%llu",
                         (unsigned long long)counts[i]);
                argv[argc] = nums[(argc - 2) / 2];
                argc++;
            }
        }
    }
    /* The hash lives as long as the heartbeat says the process does. */
    char valid[24];
    snprintf(valid, sizeof valid, "%u", 3 * b->cfg.heartbeat_ms + b->cfg.timeout_ms);
    argv[0] = "PEXPIRE", argv[1] = key, argv[2] = valid;
    return presence_send(b, g, 3, argv, lens);
}

/* GET /channels/NAME: the channel's state from its node and the
 * subscribers from the presence hashes (on a cluster, maybe elsewhere),
 * answered together once both replied. */
typedef struct info_join {
    broker_info_cb *cb;
    void *arg;
    int left;
    broker_info_result res;
} info_join;

static void info_join_done(info_join *j, int err)
{
    if (err && !j->res.err)
        j->res.err = err;
    if (--j->left)
        return;
    j->cb(j->arg, &j->res);
    free(j);
}

static void info_reply(broker *b, op *o, redisReply *r)
{
    (void)b;
    info_join *j = o->user_arg;
    long long v[2];
    int err = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len > PW_EPOCH_MAX ||
        !reply_int(r->element[1], &v[0]) || !reply_int(r->element[2], &v[1]) || v[0] < 0 ||
        v[1] < 0) {
        err = r ? BROKER_EREDIS : BROKER_EUNAVAIL;
        if (r)
            log_warn("channel info: unexpected reply from Redis: %s", reply_err(r));
    } else {
        copy_str(j->res.epoch, sizeof j->res.epoch, r->element[0]);
        j->res.newest = (uint64_t)v[0];
        j->res.retained = (uint64_t)v[1];
    }
    info_join_done(j, err);
}

static void subs_reply(broker *b, op *o, redisReply *r)
{
    (void)b;
    info_join *j = o->user_arg;
    long long v[2];
    int err = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !reply_int(r->element[0], &v[0]) ||
        !reply_int(r->element[1], &v[1]) || v[0] < 0 || v[1] < 0) {
        err = r ? BROKER_EREDIS : BROKER_EUNAVAIL;
    } else {
        j->res.subscribers = (uint64_t)v[0];
        j->res.processes = (uint64_t)v[1];
    }
    info_join_done(j, err);
}

int broker_channel_info(broker *b, const char *channel, broker_info_cb *cb, void *arg)
{
    node *n = route_channel(b, channel), *g = route_global(b);
    if (!cmd_ok(n) || !cmd_ok(g))
        return -1;
    char k_meta[160], k_hist[160], k_srv[160], k_procs[128], pres[128], gen[17], ep[9];
    srv_key(b, k_srv, sizeof k_srv, channel);
    ch_key(b, k_meta, sizeof k_meta, "ch", channel);
    ch_key(b, k_hist, sizeof k_hist, "h", channel);
    snprintf(k_procs, sizeof k_procs, "%sprocs", b->gprefix);
    snprintf(pres, sizeof pres, "%spresence:", b->gprefix);
    rand_hex(gen, 4);
    rand_hex(ep, 4);
    info_join *j = xcalloc(1, sizeof *j);
    j->cb = cb;
    j->arg = arg;
    j->left = 2;
    const char *argv[10] = {"EVAL", lua_info, "3", k_srv, k_meta, k_hist,
                            n->run_id, gen_flags(n), gen, ep};
    size_t lens[10];
    for (int i = 0; i < 10; i++)
        lens[i] = strlen(argv[i]);
    if (op_send(b, n, 10, argv, lens, info_reply, NULL, j, NULL, 6) < 0) {
        free(j);
        return -1;
    }
    const char *sargv[6] = {"EVAL", lua_subs, "1", k_procs, pres, channel};
    if (op_simple(b, g, 6, sargv, subs_reply, NULL, j) < 0)
        info_join_done(j, BROKER_EUNAVAIL); /* the first reply answers */
    return 0;
}

static void list_reply(broker *b, op *o, redisReply *r)
{
    (void)b;
    broker_list_result res = {0};
    long long procs;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 1 ||
        !reply_int(r->element[0], &procs)) {
        res.err = r ? BROKER_EREDIS : BROKER_EUNAVAIL;
    } else {
        res.processes = (uint64_t)(procs > 0 ? procs : 0);
        res.n = r->elements / 2;
        res.channels = res.n ? xcalloc(res.n, sizeof *res.channels) : NULL;
        for (size_t i = 0; i < res.n; i++) {
            redisReply *name = r->element[1 + 2 * i];
            long long c = 0;
            reply_int(r->element[2 + 2 * i], &c);
            res.channels[i].name = name->type == REDIS_REPLY_STRING ? name->str : "";
            res.channels[i].subscribers = (uint64_t)(c > 0 ? c : 0);
        }
    }
    ((broker_list_cb *)o->user_cb)(o->user_arg, &res);
    free(res.channels);
}

int broker_channel_list(broker *b, broker_list_cb *cb, void *arg)
{
    node *g = route_global(b);
    if (!cmd_ok(g))
        return -1;
    char k_procs[128], pres[128];
    snprintf(k_procs, sizeof k_procs, "%sprocs", b->gprefix);
    snprintf(pres, sizeof pres, "%spresence:", b->gprefix);
    const char *argv[5] = {"EVAL", lua_channels, "1", k_procs, pres};
    return op_simple(b, g, 5, argv, list_reply, (void *)cb, arg);
}

static void pub_done(broker *b, broker_pub_cb *cb, void *arg, broker_pub_result *res)
{
    if (res->err) {
        b->stats.publish_errors++;
        log_warn("publish failed: %s", res->errmsg);
    }
    cb(arg, res);
}

/* Replicated publishing (broker.h): stored; then WAIT, then commit.lua.
 * One WAIT at a time per node: it blocks the connection (commands behind
 * it wait), and covers every write made on the connection before it, so
 * the publishes stored while one is out wait for the next together. */
struct pub_repl {
    pub_repl *next;
    broker_pub_cb *cb;
    void *arg;
    broker_pub_result res;
    char channel[PW_CHANNEL_MAX + 1];
};

static void repl_fail(broker *b, pub_repl *pr, int err, const char *why)
{
    pr->res.err = err;
    pr->res.errmsg = why;
    pub_done(b, pr->cb, pr->arg, &pr->res);
    free(pr);
}

static void repl_fail_list(broker *b, pub_repl *list, const char *why)
{
    while (list) {
        pub_repl *pr = list;
        list = pr->next;
        repl_fail(b, pr, BROKER_EUNAVAIL, why);
    }
}

static void repl_fail_all(broker *b, node *n)
{
    pub_repl *list = n->repl_head;
    n->repl_head = n->repl_tail = NULL;
    repl_fail_list(b, list, "Redis connection closed");
}

static void commit_reply(broker *b, op *o, redisReply *r)
{
    if (is_noscript(r) && retry_with_eval(b, o))
        return;
    pub_repl *pr = o->user_arg;
    if (!r) {
        repl_fail(b, pr, BROKER_EUNAVAIL, "Redis connection lost before the commit");
    } else if (!pr->res.duplicate && (r->type != REDIS_REPLY_INTEGER || r->integer != 1)) {
        /* (A duplicate's first attempt may be of an epoch gone since: it
         * is acknowledged as before, as without replicated publishing.) */
        repl_fail(b, pr, BROKER_EREDIS,
                  r->type == REDIS_REPLY_ERROR ? r->str : "the channel changed before the commit");
    } else {
        pub_done(b, pr->cb, pr->arg, &pr->res);
        free(pr);
    }
}

static void commit_send(broker *b, node *n, pub_repl *pr)
{
    char k_meta[160], k_hist[160], k_srv[160], pubch[160], id[24], hist[16];
    srv_key(b, k_srv, sizeof k_srv, pr->channel);
    ch_key(b, k_meta, sizeof k_meta, "ch", pr->channel);
    ch_key(b, k_hist, sizeof k_hist, "h", pr->channel);
    ch_key(b, pubch, sizeof pubch, "msg", pr->channel);
    snprintf(id, sizeof id, "%llu", (unsigned long long)pr->res.id);
    snprintf(hist, sizeof hist, "%u", b->cfg.history);
    const char *argv[12] = {"EVALSHA", n->sha_commit, "3",   k_srv, k_meta, k_hist, n->run_id,
                            pr->res.epoch, id, pubch, b->cluster ? "SPUBLISH" : "PUBLISH", hist};
    size_t lens[12];
    for (int i = 0; i < 12; i++)
        lens[i] = strlen(argv[i]);
    /* (Its run_id is the writer's, checked against the channel's.) */
    if (op_send(b, n, 12, argv, lens, commit_reply, NULL, pr, lua_commit, 0) < 0)
        repl_fail(b, pr, BROKER_EUNAVAIL, "Redis connection lost before the commit");
}

static void wait_send(broker *b, node *n);

static void wait_reply(broker *b, op *o, redisReply *r)
{
    node *n = o->n;
    pub_repl *batch = o->user_arg;
    n->wait_inflight = false;
    bool ok = r && r->type == REDIS_REPLY_INTEGER && r->integer >= (long long)b->cfg.wait_replicas;
    const char *why = !r ? "Redis connection lost during WAIT"
                      : r->type == REDIS_REPLY_ERROR ? r->str
                                                     : "fewer replicas than --redis-wait-replicas "
                                                       "confirmed in time";
    if (r && r->type == REDIS_REPLY_INTEGER && !ok)
        b->stats.wait_shortfalls++;
    if (!ok) {
        repl_fail_list(b, batch, why);
    } else {
        while (batch) {
            pub_repl *pr = batch;
            batch = pr->next;
            commit_send(b, n, pr);
        }
    }
    if (n->repl_head)
        wait_send(b, n);
}

/* WAIT for what is stored so far on n: the waiting publishes become its
 * batch. */
static void wait_send(broker *b, node *n)
{
    pub_repl *batch = n->repl_head; /* oldest first: commits go out in store order */
    n->repl_head = n->repl_tail = NULL;
    char cnt[16], ms[16];
    /* Half the Redis timeout at most (the watchdog times what waits behind
     * it too), and at most a second: a replica in sync answers within a
     * round trip and its fsync. */
    unsigned t = b->cfg.timeout_ms / 2;
    snprintf(cnt, sizeof cnt, "%u", b->cfg.wait_replicas);
    snprintf(ms, sizeof ms, "%u", t > 1000 ? 1000 : t ? t : 1);
    const char *argv[3] = {"WAIT", cnt, ms};
    if (op_simple(b, n, 3, argv, wait_reply, NULL, batch) == 0) {
        n->wait_inflight = true;
        return;
    }
    repl_fail_list(b, batch, "Redis connection lost before WAIT");
}

/* The channel of a key of ours, "PREFIXch:CHANNEL" or "PREFIX{CHANNEL}:ch". */
static void channel_of_meta(const broker *b, const char *key, char *out, size_t cap)
{
    const char *p = key + strlen(b->prefix);
    size_t n = b->cluster ? strcspn(++p, "}") : strlen(p += 3);
    snprintf(out, cap, "%.*s", (int)n, p);
}

/* The publish script stored the message (or found it stored before, for a
 * duplicate) on o->n: wait for its replicas, then commit there. */
static void replicate(broker *b, op *o, const broker_pub_result *res)
{
    node *n = o->n;
    pub_repl *pr = xcalloc(1, sizeof *pr);
    pr->cb = (broker_pub_cb *)o->user_cb;
    pr->arg = o->user_arg;
    pr->res = *res;
    /* The channel is in the publish's kept arguments: KEYS[2]. */
    channel_of_meta(b, o->argv[4], pr->channel, sizeof pr->channel);
    if (n->repl_tail)
        n->repl_tail->next = pr;
    else
        n->repl_head = pr;
    n->repl_tail = pr;
    if (!n->wait_inflight)
        wait_send(b, n);
}

static void publish_reply(broker *b, op *o, redisReply *r)
{
    if (is_noscript(r) && retry_with_eval(b, o))
        return;
    broker_pub_result res = {0};
    long long id = 0, dup = 0;
    if (!r) {
        res.err = BROKER_EUNAVAIL;
        res.errmsg = "Redis connection lost";
    } else if (r->type == REDIS_REPLY_ERROR) {
        res.err = BROKER_EREDIS;
        res.errmsg = r->str;
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
               r->element[0]->type != REDIS_REPLY_STRING || !reply_int(r->element[1], &id) ||
               !reply_int(r->element[2], &dup)) {
        res.err = BROKER_EREDIS;
        res.errmsg = "unexpected reply to the publish script";
    } else {
        copy_str(res.epoch, sizeof res.epoch, r->element[0]);
        res.id = (uint64_t)id;
        res.duplicate = dup != 0;
    }
    if (!res.err && b->cfg.wait_replicas) {
        replicate(b, o, &res);
        return;
    }
    pub_done(b, (broker_pub_cb *)o->user_cb, o->user_arg, &res);
}

int broker_publish(broker *b, const char *channel, const char *json, size_t json_len,
                   const char *idem_key, broker_pub_cb *cb, void *arg)
{
    node *n = route_channel(b, channel);
    if (!cmd_ok(n))
        return -1;
    char k_meta[160], k_hist[160], k_idem[320], k_srv[160], pubch[160];
    char gen[17], ep[9], ttl[16], hist[16], idem_ttl[16];
    srv_key(b, k_srv, sizeof k_srv, channel);
    ch_key(b, k_meta, sizeof k_meta, "ch", channel);
    ch_key(b, k_hist, sizeof k_hist, "h", channel);
    /* '/' ends the channel part: it cannot occur in a channel name, while
     * ':' can occur in both (idem:a:b:c was channel a key b:c and channel
     * a:b key c alike). */
    if (b->cluster)
        snprintf(k_idem, sizeof k_idem, "%s{%s}:idem/%s", b->prefix, channel,
                 idem_key ? idem_key : "");
    else
        snprintf(k_idem, sizeof k_idem, "%sidem:%s/%s", b->prefix, channel,
                 idem_key ? idem_key : "");
    ch_key(b, pubch, sizeof pubch, "msg", channel);
    rand_hex(gen, 4);
    rand_hex(ep, 4);
    snprintf(ttl, sizeof ttl, "%u", b->cfg.history_ttl);
    snprintf(hist, sizeof hist, "%u", b->cfg.history);
    snprintf(idem_ttl, sizeof idem_ttl, "%u", b->cfg.idem_ttl);
    const char *argv[19] = {"EVALSHA", n->sha_publish, "4", k_srv, k_meta, k_hist, k_idem,
                            n->run_id, gen_flags(n), gen, ep, ttl, json, hist, pubch,
                            idem_key ? "1" : "0", idem_ttl, b->cfg.wait_replicas ? "1" : "0",
                            b->cluster ? "SPUBLISH" : "PUBLISH"};
    size_t lens[19];
    for (int i = 0; i < 19; i++)
        lens[i] = i == 12 ? json_len : strlen(argv[i]);
    if (op_send(b, n, 19, argv, lens, publish_reply, (void *)cb, arg, lua_publish, 7) < 0)
        return -1;
    b->stats.publishes++;
    return 0;
}

static pw_msg make_msg(long long id, long long t, const redisReply *c)
{
    pw_msg m = {.id = (uint64_t)id, .time_ms = t, .json = rbuf_new(c->str, c->len)};
    return m;
}

static void read_reply(broker *b, op *o, redisReply *r)
{
    if (is_noscript(r) && retry_with_eval(b, o))
        return;
    broker_read_result res = {0};
    pw_msg newest = {0};
    long long v[4] = {0}, nt = 0;
    if (!r) {
        res.err = BROKER_EUNAVAIL;
        res.errmsg = "Redis connection lost";
    } else if (r->type == REDIS_REPLY_ERROR) {
        res.err = BROKER_EREDIS;
        res.errmsg = r->str;
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements < 6 || (r->elements - 6) % 3 != 0 ||
               r->element[0]->type != REDIS_REPLY_STRING || !reply_int(r->element[1], &v[1]) ||
               !reply_int(r->element[2], &v[2]) || !reply_int(r->element[3], &v[3]) ||
               !reply_int(r->element[4], &nt) || r->element[5]->type != REDIS_REPLY_STRING) {
        res.err = BROKER_EREDIS;
        res.errmsg = "unexpected reply to the read script";
    } else {
        copy_str(res.epoch, sizeof res.epoch, r->element[0]);
        res.newest = (uint64_t)v[1];
        res.reset = v[2] != 0;
        res.more = v[3] != 0;
        if (res.newest && r->element[5]->len >= 2) {
            newest = make_msg(v[1], nt, r->element[5]);
            res.newest_msg = &newest;
        }
        res.n = (r->elements - 6) / 3;
        res.entries = res.n ? xcalloc(res.n, sizeof(pw_msg)) : NULL;
        for (size_t i = 0; i < res.n; i++) {
            redisReply **e = r->element + 6 + 3 * i;
            long long id = 0, t = 0;
            if (!reply_int(e[0], &id) || !reply_int(e[1], &t) || e[2]->type != REDIS_REPLY_STRING) {
                res.err = BROKER_EREDIS;
                res.errmsg = "unexpected entry in the read reply";
                res.n = i;
                break;
            }
            res.entries[i] = make_msg(id, t, e[2]);
        }
    }
    if (res.err) {
        b->stats.read_errors++;
        if (res.err == BROKER_EREDIS)
            log_warn("read failed: %s", res.errmsg);
    }
    ((broker_read_cb *)o->user_cb)(o->user_arg, &res);
    for (size_t i = 0; i < res.n; i++)
        rbuf_unref(res.entries[i].json);
    free(res.entries);
    rbuf_unref(newest.json);
}

int broker_read(broker *b, const char *channel, bool has_since, uint64_t since, const char *epoch,
                size_t budget, broker_read_cb *cb, void *arg)
{
    node *n = route_channel(b, channel);
    if (!cmd_ok(n))
        return -1;
    char k_meta[160], k_hist[160], k_srv[160];
    char gen[17], ep[9], ttl[16], s_since[24], s_budget[24];
    srv_key(b, k_srv, sizeof k_srv, channel);
    ch_key(b, k_meta, sizeof k_meta, "ch", channel);
    ch_key(b, k_hist, sizeof k_hist, "h", channel);
    rand_hex(gen, 4);
    rand_hex(ep, 4);
    /* A read may create the state of a channel nobody published to (its
     * epoch must exist before the first message). Such state expires a
     * minute after its last read, so that polling random names cannot fill
     * Redis; the first publish extends it to the history TTL. */
    snprintf(ttl, sizeof ttl, "%u", b->cfg.history_ttl < 60 ? b->cfg.history_ttl : 60);
    snprintf(s_since, sizeof s_since, "%llu", (unsigned long long)since);
    snprintf(s_budget, sizeof s_budget, "%zu", budget);
    const char *argv[16] = {"EVALSHA", n->sha_read, "3", k_srv, k_meta, k_hist, n->run_id,
                            gen_flags(n), gen, ep, ttl, has_since ? "1" : "0", s_since,
                            epoch ? epoch : "", s_budget, b->cfg.wait_replicas ? "1" : "0"};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = strlen(argv[i]);
    if (op_send(b, n, 16, argv, lens, read_reply, (void *)cb, arg, lua_read, 6) < 0)
        return -1;
    b->stats.reads++;
    return 0;
}

/* ---- life cycle ------------------------------------------------------------------ */

broker *broker_new(loop *l, const broker_config *cfg, const broker_hooks *hooks)
{
    broker *b = xcalloc(1, sizeof *b);
    b->l = l;
    b->cfg = *cfg;
    b->hooks = *hooks;
    snprintf(b->prefix, sizeof b->prefix, "%s", cfg->prefix);
    b->cfg.prefix = b->prefix;
    b->cluster = redis_url_is_cluster(&b->cfg.url);
    snprintf(b->gprefix, sizeof b->gprefix, "%s%s", b->prefix, b->cluster ? "{global}:" : "");
    b->heartbeat.cb = heartbeat_cb;
    b->probe.cb = probe_cb;
    b->refresh.cb = refresh_cb;
    if (b->cluster) {
        b->map = xmalloc(sizeof *b->map);
        slots_init(b->map);
        b->prev_owner = xmalloc(sizeof b->map->owner);
        /* The seeds: nodes until the first map names the masters. */
        for (int i = 0; i < b->cfg.url.nhosts; i++) {
            const redis_hostport *h = &b->cfg.url.hosts[i];
            int idx = slots_node(b->map, h->host, h->port);
            if (idx >= 0 && !b->nodes[idx])
                node_new(b, idx, h->host, h->port);
        }
    } else {
        node_new(b, 0, b->cfg.url.host, b->cfg.url.port);
    }
    if (redis_url_is_sentinel(&b->cfg.url)) {
        sw_init(&b->watch, l, &b->cfg.url, cfg->timeout_ms, master_switched, b);
        b->watching = true;
    }
    return b;
}

void broker_start(broker *b)
{
    for (unsigned i = 0; i < b->nnodes; i++)
        if (b->nodes[i])
            node_start(b->nodes[i]);
    if (b->watching)
        sw_start(&b->watch);
    timer_start(b->l, &b->probe, 100);
    timer_start(b->l, &b->heartbeat, 0);
}

void broker_free(broker *b)
{
    if (!b)
        return;
    memset(&b->hooks, 0, sizeof b->hooks);
    for (unsigned i = 0; i < b->nnodes; i++)
        if (b->nodes[i])
            node_free(b->nodes[i]);
    if (b->watching)
        sw_free(&b->watch);
    timer_stop(b->l, &b->probe);
    timer_stop(b->l, &b->heartbeat);
    timer_stop(b->l, &b->refresh);
    free(b->map);
    free(b->prev_owner);
    free(b->resubs);
    free(b);
}

bool broker_cmd_ready(const broker *b) { return owners_ready(b, false); }
bool broker_sub_ready(const broker *b) { return owners_ready(b, true); }

const broker_stats *broker_get_stats(const broker *b)
{
    broker *m = (broker *)b; /* the connections' own counters, folded in */
    m->stats.timeouts = b->probe_timeouts;
    for (unsigned i = 0; i < b->nnodes; i++)
        if (b->nodes[i])
            m->stats.timeouts += b->nodes[i]->cmdc.timeouts + b->nodes[i]->subc.timeouts;
    return &b->stats;
}

unsigned broker_retry_after_ms(const broker *b)
{
    const node *g = b->cluster ? NULL : b->nodes[0];
    for (unsigned i = 0; !g && i < b->nnodes; i++)
        if (b->nodes[i] && (b->nodes[i]->owns || i + 1 == b->nnodes))
            g = b->nodes[i];
    return g ? rc_retry_after_ms(&g->cmdc) : 1000;
}
