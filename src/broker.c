/* broker.c - what this process says to Redis: the handshake facts behind
 * the epoch, the scripts (src/lua/) that assign ids, store history and
 * publish, reads, subscriptions, heartbeats and the pub/sub liveness probe.
 *
 * The two connections themselves (lookup, connect, reconnect, timeouts) are
 * redis_conn.c's; nothing here touches a socket.
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
#include "log.h"
#include "lua_scripts.h"
#include "redis_conn.h"
#include "sentinel_watch.h"

/* A command of ours in flight: how to read its reply, whom to tell, and
 * (for scripts) the arguments again for a retry with EVAL after NOSCRIPT. */
typedef struct pub_repl pub_repl;

typedef struct op {
    broker *b;
    void (*on_reply)(broker *b, struct op *o, redisReply *r);
    void *user_cb;
    void *user_arg;
    const char *script; /* for the NOSCRIPT retry */
    int argc;
    char **argv;
    size_t *argvlen;
    bool retried;
} op;

struct broker {
    loop *l;
    broker_config cfg;
    broker_hooks hooks;
    char prefix[64];
    redis_conn cmdc, subc;
    sentinel_watch watch; /* Sentinel URLs only */
    bool watching;
    timer heartbeat, probe;
    /* Handshake facts about the server behind cmdc. */
    char run_id[64];
    bool aof_on, fsync_always, master, replid2_zero;
    unsigned replicas; /* connected_slaves */
    int handshake_left;
    char sha_publish[41], sha_read[41], sha_commit[41];
    /* Replicated publishing: stored, waiting for the next WAIT. */
    struct pub_repl *repl_waiting;
    bool wait_inflight;
    /* Liveness of the pub/sub connection. */
    char ping_channel[160];
    bool ping_subscribed;
    uint64_t last_ping_rx;
    uint64_t ping_seq;
    uint64_t probe_timeouts;
    broker_stats stats;
};

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

static void op_reply(redis_conn *c, void *reply, void *arg)
{
    (void)c;
    op *o = arg;
    o->on_reply(o->b, o, reply);
    op_free(o);
}

/* Send argv with on_reply. keep_script: remember the arguments for a
 * NOSCRIPT retry with that script's text. Returns 0, or -1 when the command
 * connection cannot take it (nothing runs). */
static int op_send(broker *b, int argc, const char **argv, const size_t *lens,
                   void (*on_reply)(broker *, op *, redisReply *), void *user_cb, void *user_arg,
                   const char *keep_script)
{
    op *o = xcalloc(1, sizeof *o);
    o->b = b;
    o->on_reply = on_reply;
    o->user_cb = user_cb;
    o->user_arg = user_arg;
    if (keep_script) {
        o->script = keep_script;
        o->argc = argc;
        o->argv = xcalloc((size_t)argc, sizeof(char *));
        o->argvlen = xcalloc((size_t)argc, sizeof(size_t));
        for (int i = 0; i < argc; i++) {
            o->argv[i] = xstrndup(argv[i], lens[i]);
            o->argvlen[i] = lens[i];
        }
    }
    if (rc_send(&b->cmdc, argc, argv, lens, op_reply, o) < 0) {
        op_free(o);
        return -1;
    }
    return 0;
}

static int op_simple(broker *b, int argc, const char **argv,
                     void (*on_reply)(broker *, op *, redisReply *), void *user_cb, void *user_arg)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return op_send(b, argc, argv, lens, on_reply, user_cb, user_arg, NULL);
}

static bool is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Redis forgot the script (SCRIPT FLUSH, a restart behind the same
 * connection): send o again with EVAL and the script text. Returns true
 * when it was (the reply then comes to the copy). */
static bool retry_with_eval(broker *b, op *o)
{
    if (o->retried || !o->argv)
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
    if (rc_send(&b->cmdc, copy->argc, (const char **)copy->argv, copy->argvlen, op_reply, copy) <
        0) {
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

/* "1" when the server behind the command connection cannot have lost a
 * write it acknowledged: an append-only file synced on every write, and a
 * master that was not promoted from a replica (master_replid2 all zeros);
 * or, with replicated publishing, a promoted replica (it has every
 * committed message, and readers never saw any other). */
static const char *lossless_flag(const broker *b)
{
    if (!b->master)
        return "0";
    if (b->aof_on && b->fsync_always && b->replid2_zero)
        return "1";
    return b->cfg.wait_replicas && !b->replid2_zero ? "1" : "0";
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
    HS_AOF,
    HS_FSYNC,
    HS_LOAD_PUB,
    HS_LOAD_READ,
    HS_LOAD_COMMIT
};

static void handshake_reply(broker *b, op *o, redisReply *r)
{
    redis_conn *conn = &b->cmdc;
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
    switch (step) {
    case HS_INFO_SERVER:
        if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
            info_field(r->str, "run_id", b->run_id, sizeof b->run_id);
        break;
    case HS_INFO_REPL:
        if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
            char v[64];
            info_field(r->str, "role", v, sizeof v);
            b->master = strcmp(v, "master") == 0;
            info_field(r->str, "master_replid2", v, sizeof v);
            b->replid2_zero = v[0] && strspn(v, "0") == strlen(v);
            info_field(r->str, "connected_slaves", v, sizeof v);
            b->replicas = (unsigned)strtoul(v, NULL, 10);
        }
        if (redis_url_is_sentinel(&b->cfg.url) && !b->master) {
            /* A sentinel's answer can be stale (a failover under way, the
             * old master back as a replica): never write to a replica. */
            rc_fail(conn, "the server the sentinel named is not a master (yet)");
            return;
        }
        break;
    case HS_AOF:
    case HS_FSYNC:
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[1]->type == REDIS_REPLY_STRING) {
            if (step == HS_AOF)
                b->aof_on = strcmp(r->element[1]->str, "yes") == 0;
            else
                b->fsync_always = strcmp(r->element[1]->str, "always") == 0;
        }
        break;
    case HS_LOAD_PUB:
    case HS_LOAD_READ:
    case HS_LOAD_COMMIT:
        if (r->type == REDIS_REPLY_STRING && r->len == 40)
            memcpy(step == HS_LOAD_PUB    ? b->sha_publish
                   : step == HS_LOAD_READ ? b->sha_read
                                          : b->sha_commit,
                   r->str, 41);
        break;
    }
    if (--b->handshake_left == 0) {
        if (!b->run_id[0]) {
            rc_fail(conn, "INFO server gave no run_id");
            return;
        }
        rc_ready(conn);
    }
}

static void handshake_send(broker *b, enum hs_step step, int argc, const char **argv)
{
    if (op_simple(b, argc, argv, handshake_reply, NULL, (void *)(intptr_t)step) == 0)
        b->handshake_left++;
}

/* ---- pub/sub ------------------------------------------------------------------ */

static void sub_push(void *ctx, redis_conn *c, void *reply)
{
    (void)c;
    broker *b = ctx;
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return;
    const redisReply *kind = r->element[0], *chan = r->element[1];
    if (kind->type != REDIS_REPLY_STRING || chan->type != REDIS_REPLY_STRING)
        return;
    bool is_ping = strcmp(chan->str, b->ping_channel) == 0;
    size_t pl = strlen(b->prefix);
    const char *name = NULL;
    if (!is_ping && chan->len > pl + 4 && memcmp(chan->str, b->prefix, pl) == 0 &&
        memcmp(chan->str + pl, "msg:", 4) == 0)
        name = chan->str + pl + 4;
    if (strcmp(kind->str, "message") == 0) {
        const redisReply *payload = r->element[2];
        if (payload->type != REDIS_REPLY_STRING)
            return;
        if (is_ping) {
            b->last_ping_rx = loop_now(b->l);
        } else if (name && b->hooks.message) {
            b->stats.pubsub_messages++;
            b->hooks.message(b->hooks.ctx, name, payload->str, payload->len);
        }
    } else if (strcmp(kind->str, "subscribe") == 0) {
        if (is_ping) {
            b->ping_subscribed = true;
            b->last_ping_rx = loop_now(b->l);
        } else if (name && b->hooks.subscribed) {
            b->hooks.subscribed(b->hooks.ctx, name);
        }
    }
}

static int sub_command(broker *b, const char *verb, const char *channel)
{
    if (!rc_is_ready(&b->subc))
        return -1;
    char name[256];
    int n = snprintf(name, sizeof name, "%smsg:%s", b->prefix, channel);
    if (n < 0 || (size_t)n >= sizeof name)
        return -1;
    const char *argv[2] = {verb, name};
    size_t lens[2] = {strlen(verb), (size_t)n};
    return rc_push_send(&b->subc, 2, argv, lens);
}

int broker_subscribe(broker *b, const char *channel) { return sub_command(b, "SUBSCRIBE", channel); }

int broker_unsubscribe(broker *b, const char *channel)
{
    return sub_command(b, "UNSUBSCRIBE", channel);
}

/* The pub/sub connection must see our own pings while the command
 * connection can publish them; one that stops delivering is replaced. */
static void probe_cb(loop *l, timer *t)
{
    broker *b = (broker *)((char *)t - offsetof(broker, probe));
    if (rc_is_ready(&b->subc) && rc_is_ready(&b->cmdc) && b->ping_subscribed &&
        loop_now(l) - b->last_ping_rx > b->cfg.timeout_ms + 2 * b->cfg.heartbeat_ms) {
        b->probe_timeouts++;
        rc_fail(&b->subc, "pub/sub connection stopped delivering");
    }
    timer_start(l, t, 100);
}

/* ---- the two connections' hooks ------------------------------------------------ */

static void conn_handshake(void *ctx, redis_conn *c)
{
    broker *b = ctx;
    if (c == &b->subc) {
        const char *argv[2] = {"SUBSCRIBE", b->ping_channel};
        size_t lens[2] = {9, strlen(b->ping_channel)};
        rc_push_send(c, 2, argv, lens);
        rc_ready(c);
        return;
    }
    b->handshake_left = 0;
    b->run_id[0] = '\0';
    b->aof_on = b->fsync_always = b->master = b->replid2_zero = false;
    const char *info_s[2] = {"INFO", "server"};
    handshake_send(b, HS_INFO_SERVER, 2, info_s);
    const char *info_r[2] = {"INFO", "replication"};
    handshake_send(b, HS_INFO_REPL, 2, info_r);
    const char *aof[3] = {"CONFIG", "GET", "appendonly"};
    handshake_send(b, HS_AOF, 3, aof);
    const char *fsync[3] = {"CONFIG", "GET", "appendfsync"};
    handshake_send(b, HS_FSYNC, 3, fsync);
    const char *lp[3] = {"SCRIPT", "LOAD", lua_publish};
    handshake_send(b, HS_LOAD_PUB, 3, lp);
    const char *lr[3] = {"SCRIPT", "LOAD", lua_read};
    handshake_send(b, HS_LOAD_READ, 3, lr);
    const char *lc[3] = {"SCRIPT", "LOAD", lua_commit};
    handshake_send(b, HS_LOAD_COMMIT, 3, lc);
}

static void conn_up(void *ctx, redis_conn *c)
{
    broker *b = ctx;
    if (c == &b->cmdc) {
        b->stats.cmd_connects++;
        bool lossless = strcmp(lossless_flag(b), "1") == 0;
        log_info("redis commands connected (run_id %.12s, %s%s)", b->run_id,
                 b->replid2_zero ? "" : "promoted replica, ",
                 lossless ? "epochs kept" : "a new epoch if this server lost writes");
        if (b->cfg.wait_replicas && b->replicas < b->cfg.wait_replicas)
            log_warn("redis has %u replicas connected, fewer than --redis-wait-replicas %u: "
                     "publishes fail until enough are",
                     b->replicas, b->cfg.wait_replicas);
        else if (b->cfg.wait_replicas && b->replicas > b->cfg.wait_replicas)
            log_warn("redis has %u replicas and publishes wait for %u: a failover to a replica "
                     "that had not confirmed may lose messages",
                     b->replicas, b->cfg.wait_replicas);
        timer_start(b->l, &b->heartbeat, 0); /* announce ourselves now */
        if (b->hooks.cmd_up)
            b->hooks.cmd_up(b->hooks.ctx);
    } else {
        b->stats.sub_connects++;
        b->last_ping_rx = loop_now(b->l);
        log_info("redis pub/sub connected");
        if (b->hooks.sub_up)
            b->hooks.sub_up(b->hooks.ctx);
    }
}

static void conn_down(void *ctx, redis_conn *c, bool was_ready, const char *why)
{
    (void)why;
    broker *b = ctx;
    if (c == &b->subc) {
        b->stats.sub_failures++;
        b->ping_subscribed = false;
        if (was_ready && b->hooks.sub_down)
            b->hooks.sub_down(b->hooks.ctx);
    } else {
        b->stats.cmd_failures++;
        if (was_ready && b->hooks.cmd_down)
            b->hooks.cmd_down(b->hooks.ctx);
    }
}

/* A sentinel announced that the master moved: drop connections to anywhere
 * else and reconnect now (each asks a sentinel again). */
static void master_switched(void *ctx, const redis_hostport *m)
{
    broker *b = ctx;
    redis_conn *conns[2] = {&b->cmdc, &b->subc};
    for (int i = 0; i < 2; i++) {
        redis_conn *c = conns[i];
        const redis_hostport *t = rc_target(c);
        bool there = !c->asking && strcmp(t->host, m->host) == 0 && t->port == m->port;
        if (c->state != RC_DOWN && !there)
            rc_fail(c, "a sentinel announced a failover");
        rc_retry_now(c);
    }
}

/* ---- heartbeat ---------------------------------------------------------------- */

static void heartbeat_reply(broker *b, op *o, redisReply *r)
{
    (void)o;
    /* PUBLISH answers how many connections got the ping. None while our
     * pub/sub connection believes it is subscribed means it is talking to
     * another server (a failover behind a name): reconnect it. */
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0 && b->ping_subscribed &&
        rc_is_ready(&b->subc))
        rc_fail(&b->subc, "pub/sub connection is not subscribed on the current server");
}

static void proc_member(const broker *b, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%s", b->cfg.proc_kind, b->cfg.proc_id);
}

static void heartbeat_cb(loop *l, timer *t)
{
    broker *b = (broker *)((char *)t - offsetof(broker, heartbeat));
    timer_start(l, t, b->cfg.heartbeat_ms);
    if (!rc_is_ready(&b->cmdc))
        return;
    char key[96], member[256], valid[24], forget[24], seq[24];
    snprintf(key, sizeof key, "%sprocs", b->prefix);
    proc_member(b, member, sizeof member);
    /* Alive until three heartbeats are missed (plus the Redis timeout). */
    snprintf(valid, sizeof valid, "%u", 3 * b->cfg.heartbeat_ms + b->cfg.timeout_ms);
    snprintf(forget, sizeof forget, "%d", BROKER_PROC_FORGET_MS);
    const char *hb[7] = {"EVAL", lua_heartbeat, "1", key, member, valid, forget};
    op_simple(b, 7, hb, ignore_reply, NULL, NULL);
    snprintf(seq, sizeof seq, "%llu", (unsigned long long)++b->ping_seq);
    const char *pub[3] = {"PUBLISH", b->ping_channel, seq};
    op_simple(b, 3, pub, heartbeat_reply, NULL, NULL);
}

static void goodbye_reply(broker *b, op *o, redisReply *r)
{
    (void)b, (void)r;
    ((void (*)(void *))o->user_cb)(o->user_arg);
}

int broker_goodbye(broker *b, void (*done)(void *arg), void *arg)
{
    if (!rc_is_ready(&b->cmdc))
        return -1;
    timer_stop(b->l, &b->heartbeat);
    char key[96], member[256];
    snprintf(key, sizeof key, "%sprocs", b->prefix);
    proc_member(b, member, sizeof member);
    const char *zrem[3] = {"ZREM", key, member};
    return op_simple(b, 3, zrem, goodbye_reply, (void *)done, arg);
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
    if (!rc_is_ready(&b->cmdc))
        return -1;
    char key[96];
    snprintf(key, sizeof key, "%sprocs", b->prefix);
    const char *argv[4] = {"EVAL", lua_procs, "1", key};
    return op_simple(b, 4, argv, procs_reply, (void *)cb, arg);
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
    snprintf(out, cap, "%spresence:%s:%s", b->prefix, b->cfg.proc_kind, b->cfg.proc_id);
}

/* Send one command of argc words (the first two fixed, the rest names and
 * counts); returns -1 when the connection refused it. */
static int presence_send(broker *b, int argc, const char **argv, size_t *lens)
{
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return op_send(b, argc, argv, lens, ignore_reply, NULL, NULL, NULL);
}

int broker_presence(broker *b, bool full, const char *const *names, const uint64_t *counts,
                    size_t n)
{
    if (!rc_is_ready(&b->cmdc))
        return -1;
    char key[256];
    presence_key(b, key, sizeof key);
    const char *argv[2 + 2 * PRESENCE_BATCH];
    size_t lens[2 + 2 * PRESENCE_BATCH];
    char nums[PRESENCE_BATCH][24];
    if (full) {
        argv[0] = "DEL", argv[1] = key;
        if (presence_send(b, 2, argv, lens) < 0)
            return -1;
    }
    /* Set fields, then delete zeroed ones, in batches. */
    for (int pass = 0; pass < 2; pass++) {
        int argc = 2;
        argv[0] = pass == 0 ? "HSET" : "HDEL", argv[1] = key;
        for (size_t i = 0; i <= n; i++) {
            bool flush = i == n || argc + 2 > 2 + 2 * PRESENCE_BATCH;
            if (flush && argc > 2) {
                if (presence_send(b, argc, argv, lens) < 0)
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
    return presence_send(b, 3, argv, lens);
}

static void info_reply(broker *b, op *o, redisReply *r)
{
    (void)b;
    broker_info_result res = {0};
    long long v[4];
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 5 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len > PW_EPOCH_MAX) {
        res.err = r ? BROKER_EREDIS : BROKER_EUNAVAIL;
    } else {
        for (int i = 0; i < 4; i++)
            if (!reply_int(r->element[1 + i], &v[i]) || v[i] < 0)
                res.err = BROKER_EREDIS;
        if (!res.err) {
            memcpy(res.epoch, r->element[0]->str, r->element[0]->len);
            res.epoch[r->element[0]->len] = '\0';
            res.newest = (uint64_t)v[0];
            res.retained = (uint64_t)v[1];
            res.subscribers = (uint64_t)v[2];
            res.processes = (uint64_t)v[3];
        }
    }
    if (res.err && r)
        log_warn("channel info: unexpected reply from Redis");
    ((broker_info_cb *)o->user_cb)(o->user_arg, &res);
}

int broker_channel_info(broker *b, const char *channel, broker_info_cb *cb, void *arg)
{
    if (!rc_is_ready(&b->cmdc))
        return -1;
    char k_meta[160], k_hist[160], k_srv[80], k_procs[96], pres[128], gen[17], ep[9];
    const char *p = b->prefix;
    snprintf(k_srv, sizeof k_srv, "%sserver", p);
    snprintf(k_meta, sizeof k_meta, "%sch:%s", p, channel);
    snprintf(k_hist, sizeof k_hist, "%sh:%s", p, channel);
    snprintf(k_procs, sizeof k_procs, "%sprocs", p);
    snprintf(pres, sizeof pres, "%spresence:", p);
    rand_hex(gen, 4);
    rand_hex(ep, 4);
    const char *argv[13] = {"EVAL", lua_info, "4", k_srv, k_meta, k_hist, k_procs,
                            b->run_id, lossless_flag(b), gen, ep, pres, channel};
    size_t lens[13];
    for (int i = 0; i < 13; i++)
        lens[i] = strlen(argv[i]);
    return op_send(b, 13, argv, lens, info_reply, (void *)cb, arg, NULL);
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
    if (!rc_is_ready(&b->cmdc))
        return -1;
    char k_procs[96], pres[128];
    snprintf(k_procs, sizeof k_procs, "%sprocs", b->prefix);
    snprintf(pres, sizeof pres, "%spresence:", b->prefix);
    const char *argv[5] = {"EVAL", lua_channels, "1", k_procs, pres};
    size_t lens[5];
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(argv[i]);
    return op_send(b, 5, argv, lens, list_reply, (void *)cb, arg, NULL);
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
 * One WAIT at a time per connection: it blocks the connection (commands
 * behind it wait), and covers every write made on the connection before
 * it, so the publishes stored while one is out wait for the next together. */
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

static void commit_send(broker *b, pub_repl *pr)
{
    const char *p = b->prefix;
    char k_meta[160], k_hist[160], k_srv[80], pubch[160], id[24];
    snprintf(k_srv, sizeof k_srv, "%sserver", p);
    snprintf(k_meta, sizeof k_meta, "%sch:%s", p, pr->channel);
    snprintf(k_hist, sizeof k_hist, "%sh:%s", p, pr->channel);
    snprintf(pubch, sizeof pubch, "%smsg:%s", p, pr->channel);
    snprintf(id, sizeof id, "%llu", (unsigned long long)pr->res.id);
    const char *argv[10] = {"EVALSHA", b->sha_commit, "3",           k_srv, k_meta,
                            k_hist,    b->run_id,     pr->res.epoch, id,    pubch};
    size_t lens[10];
    for (int i = 0; i < 10; i++)
        lens[i] = strlen(argv[i]);
    if (op_send(b, 10, argv, lens, commit_reply, NULL, pr, lua_commit) < 0)
        repl_fail(b, pr, BROKER_EUNAVAIL, "Redis connection lost before the commit");
}

static void wait_send(broker *b);

static void wait_reply(broker *b, op *o, redisReply *r)
{
    pub_repl *batch = o->user_arg;
    b->wait_inflight = false;
    bool ok = r && r->type == REDIS_REPLY_INTEGER && r->integer >= (long long)b->cfg.wait_replicas;
    const char *why = !r ? "Redis connection lost during WAIT"
                      : r->type == REDIS_REPLY_ERROR ? r->str
                                                     : "fewer replicas than --redis-wait-replicas "
                                                       "confirmed in time";
    if (r && r->type == REDIS_REPLY_INTEGER && !ok)
        b->stats.wait_shortfalls++;
    while (batch) {
        pub_repl *pr = batch;
        batch = pr->next;
        if (ok)
            commit_send(b, pr);
        else
            repl_fail(b, pr, BROKER_EUNAVAIL, why);
    }
    if (b->repl_waiting)
        wait_send(b);
}

/* WAIT for what is stored so far: the waiting publishes become its batch. */
static void wait_send(broker *b)
{
    pub_repl *batch = NULL; /* oldest first: commits go out in store order */
    while (b->repl_waiting) {
        pub_repl *pr = b->repl_waiting;
        b->repl_waiting = pr->next;
        pr->next = batch;
        batch = pr;
    }
    char n[16], ms[16];
    /* Half the Redis timeout at most (the watchdog times what waits behind
     * it too), and at most a second: a replica in sync answers within a
     * round trip and its fsync. */
    unsigned t = b->cfg.timeout_ms / 2;
    snprintf(n, sizeof n, "%u", b->cfg.wait_replicas);
    snprintf(ms, sizeof ms, "%u", t > 1000 ? 1000 : t ? t : 1);
    const char *argv[3] = {"WAIT", n, ms};
    if (op_simple(b, 3, argv, wait_reply, NULL, batch) == 0) {
        b->wait_inflight = true;
        return;
    }
    while (batch) {
        pub_repl *pr = batch;
        batch = pr->next;
        repl_fail(b, pr, BROKER_EUNAVAIL, "Redis connection lost before WAIT");
    }
}

/* The publish script stored the message (or found it stored before, for a
 * duplicate): wait for the replicas, then commit. */
static void replicate(broker *b, op *o, const broker_pub_result *res)
{
    pub_repl *pr = xcalloc(1, sizeof *pr);
    pr->cb = (broker_pub_cb *)o->user_cb;
    pr->arg = o->user_arg;
    pr->res = *res;
    /* The channel is in the publish's kept arguments: KEYS[2] is
     * PREFIXch:CHANNEL. */
    snprintf(pr->channel, sizeof pr->channel, "%s", o->argv[4] + strlen(b->prefix) + 3);
    pr->next = b->repl_waiting;
    b->repl_waiting = pr;
    if (!b->wait_inflight)
        wait_send(b);
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
    if (!rc_is_ready(&b->cmdc))
        return -1;
    char k_meta[160], k_hist[160], k_idem[320], k_srv[80], pubch[160];
    char gen[17], ep[9], ttl[16], hist[16], idem_ttl[16];
    const char *p = b->prefix;
    snprintf(k_srv, sizeof k_srv, "%sserver", p);
    snprintf(k_meta, sizeof k_meta, "%sch:%s", p, channel);
    snprintf(k_hist, sizeof k_hist, "%sh:%s", p, channel);
    /* '/' ends the channel part: it cannot occur in a channel name, while
     * ':' can occur in both (idem:a:b:c was channel a key b:c and channel
     * a:b key c alike). */
    snprintf(k_idem, sizeof k_idem, "%sidem:%s/%s", p, channel, idem_key ? idem_key : "");
    snprintf(pubch, sizeof pubch, "%smsg:%s", p, channel);
    rand_hex(gen, 4);
    rand_hex(ep, 4);
    snprintf(ttl, sizeof ttl, "%u", b->cfg.history_ttl);
    snprintf(hist, sizeof hist, "%u", b->cfg.history);
    snprintf(idem_ttl, sizeof idem_ttl, "%u", b->cfg.idem_ttl);
    const char *argv[18] = {"EVALSHA", b->sha_publish, "4", k_srv, k_meta, k_hist, k_idem,
                            b->run_id, lossless_flag(b), gen, ep, ttl, json, hist, pubch,
                            idem_key ? "1" : "0", idem_ttl, b->cfg.wait_replicas ? "1" : "0"};
    size_t lens[18];
    for (int i = 0; i < 18; i++)
        lens[i] = i == 12 ? json_len : strlen(argv[i]);
    if (op_send(b, 18, argv, lens, publish_reply, (void *)cb, arg, lua_publish) < 0)
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
    if (!rc_is_ready(&b->cmdc))
        return -1;
    char k_meta[160], k_hist[160], k_srv[80];
    char gen[17], ep[9], ttl[16], s_since[24], s_budget[24];
    const char *p = b->prefix;
    snprintf(k_srv, sizeof k_srv, "%sserver", p);
    snprintf(k_meta, sizeof k_meta, "%sch:%s", p, channel);
    snprintf(k_hist, sizeof k_hist, "%sh:%s", p, channel);
    rand_hex(gen, 4);
    rand_hex(ep, 4);
    /* A read may create the state of a channel nobody published to (its
     * epoch must exist before the first message). Such state expires a
     * minute after its last read, so that polling random names cannot fill
     * Redis; the first publish extends it to the history TTL. */
    snprintf(ttl, sizeof ttl, "%u", b->cfg.history_ttl < 60 ? b->cfg.history_ttl : 60);
    snprintf(s_since, sizeof s_since, "%llu", (unsigned long long)since);
    snprintf(s_budget, sizeof s_budget, "%zu", budget);
    const char *argv[16] = {"EVALSHA", b->sha_read, "3", k_srv, k_meta, k_hist, b->run_id,
                            lossless_flag(b), gen, ep, ttl, has_since ? "1" : "0", s_since,
                            epoch ? epoch : "", s_budget, b->cfg.wait_replicas ? "1" : "0"};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = strlen(argv[i]);
    if (op_send(b, 16, argv, lens, read_reply, (void *)cb, arg, lua_read) < 0)
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
    redis_conn_hooks h = {.ctx = b,
                          .handshake = conn_handshake,
                          .up = conn_up,
                          .down = conn_down,
                          .push = sub_push};
    rc_init(&b->cmdc, l, &b->cfg.url, "commands", cfg->timeout_ms, false, &h);
    rc_init(&b->subc, l, &b->cfg.url, "pub/sub", cfg->timeout_ms, true, &h);
    if (redis_url_is_sentinel(&b->cfg.url)) {
        sw_init(&b->watch, l, &b->cfg.url, cfg->timeout_ms, master_switched, b);
        b->watching = true;
    }
    b->heartbeat.cb = heartbeat_cb;
    b->probe.cb = probe_cb;
    char id[17];
    rand_hex(id, 6);
    snprintf(b->ping_channel, sizeof b->ping_channel, "%sping:%s:%s", b->prefix, cfg->proc_id, id);
    return b;
}

void broker_start(broker *b)
{
    rc_start(&b->cmdc);
    rc_start(&b->subc);
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
    rc_free(&b->cmdc);
    rc_free(&b->subc);
    if (b->watching)
        sw_free(&b->watch);
    timer_stop(b->l, &b->probe);
    timer_stop(b->l, &b->heartbeat);
    free(b);
}

bool broker_cmd_ready(const broker *b) { return rc_is_ready(&b->cmdc); }
bool broker_sub_ready(const broker *b) { return rc_is_ready(&b->subc); }

const broker_stats *broker_get_stats(const broker *b)
{
    broker *m = (broker *)b; /* the connections' own counters, folded in */
    m->stats.timeouts = b->cmdc.timeouts + b->subc.timeouts + b->probe_timeouts;
    return &b->stats;
}

unsigned broker_retry_after_ms(const broker *b) { return rc_retry_after_ms(&b->cmdc); }
