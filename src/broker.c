/* broker.c - Redis connections, scripts, restart detection, liveness.
 *
 * hiredis 0.14 has no timeouts on async commands and frees a context on a
 * failed connect without the disconnect callback; this file covers both with
 * the loop's own timers. It must not block: the only blocking call is the
 * name lookup inside redisAsyncConnect when the Redis host is a name.
 */
#include "broker.h"

#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"

/* Every script starts by finding the server generation: the first part of
 * each epoch. It changes when the Redis server we talk to is not the one that
 * last answered (a restart or a failover) and that server may have lost
 * acknowledged writes: then ids may have gone back and clients must reset.
 * ARGV[1] run_id of this connection's server, ARGV[2] "1" when that server
 * cannot have lost acknowledged writes, ARGV[3] a fresh random generation. */
#define LUA_GEN                                                                                    \
    "local function gen_of(srv)\n"                                                                 \
    "  local cur = redis.call('HMGET', srv, 'runid', 'gen')\n"                                     \
    "  local gen = cur[2]\n"                                                                       \
    "  if cur[1] == ARGV[1] and gen then return gen end\n"                                         \
    "  if (not gen) or ARGV[2] ~= '1' then gen = ARGV[3] end\n"                                    \
    "  redis.call('HSET', srv, 'runid', ARGV[1], 'gen', gen)\n"                                    \
    "  return gen\n"                                                                               \
    "end\n"

/* Channel state: KEYS[2] hash {seq, ep}, KEYS[3] stream of {t, c}. A missing
 * hash means a new incarnation of the channel: fresh ep (ARGV[4]), ids from 1,
 * and any leftover stream is dropped so stream ids stay increasing. */
#define LUA_META                                                                                   \
    "local function meta_of(ttl)\n"                                                                \
    "  local m = redis.call('HMGET', KEYS[2], 'seq', 'ep')\n"                                      \
    "  if m[2] then return tonumber(m[1]) or 0, m[2] end\n"                                        \
    "  redis.call('DEL', KEYS[3])\n"                                                               \
    "  redis.call('HSET', KEYS[2], 'seq', 0, 'ep', ARGV[4])\n"                                     \
    "  redis.call('EXPIRE', KEYS[2], ttl)\n"                                                       \
    "  return 0, ARGV[4]\n"                                                                        \
    "end\n"

/* KEYS: server, meta, stream, idempotency key.
 * ARGV: 1-3 gen, 4 fresh ep, 5 ttl, 6 content (JSON literal), 7 history,
 *       8 pub/sub channel, 9 "1" to use the idempotency key, 10 its ttl.
 * Returns {epoch, id, duplicate}. */
static const char LUA_PUBLISH[] =
    LUA_GEN LUA_META
    "local gen = gen_of(KEYS[1])\n"
    "if ARGV[9] == '1' then\n"
    "  local prev = redis.call('GET', KEYS[4])\n"
    "  if prev then\n"
    "    local sp = string.find(prev, ' ', 1, true)\n"
    "    return {string.sub(prev, 1, sp - 1), tonumber(string.sub(prev, sp + 1)), 1}\n"
    "  end\n"
    "end\n"
    "local seq, ep = meta_of(ARGV[5])\n"
    "seq = seq + 1\n"
    "local t = redis.call('TIME')\n"
    "local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('HSET', KEYS[2], 'seq', seq)\n"
    "local sseq, sms = string.format('%d', seq), string.format('%d', ms)\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[7], sseq .. '-0', 't', sms, 'c', ARGV[6])\n"
    "redis.call('EXPIRE', KEYS[2], ARGV[5])\n"
    "redis.call('EXPIRE', KEYS[3], ARGV[5])\n"
    "local epoch = gen .. ep\n"
    "redis.call('PUBLISH', ARGV[8], epoch .. ' ' .. sseq .. ' ' .. sms .. ' ' .. ARGV[6])\n"
    "if ARGV[9] == '1' then\n"
    "  redis.call('SET', KEYS[4], epoch .. ' ' .. sseq, 'EX', ARGV[10])\n"
    "end\n"
    "return {epoch, seq, 0}\n";

/* KEYS: server, meta, stream.
 * ARGV: 1-3 gen, 4 fresh ep, 5 ttl, 6 "1" when since is given, 7 since,
 *       8 client epoch ("" for none), 9 byte budget.
 * Returns {epoch, newest, reset, more, newest_time, newest_content,
 *          id1, time1, content1, ...}. The reset rules are SPEC.md's. */
static const char LUA_READ[] =
    LUA_GEN LUA_META
    "local gen = gen_of(KEYS[1])\n"
    "local seq, ep = meta_of(ARGV[5])\n"
    "local epoch = gen .. ep\n"
    "local out = {epoch, seq, 0, 0, 0, ''}\n"
    "local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)\n"
    "if last[1] and tonumber(string.match(last[1][1], '^%d+')) == seq then\n"
    "  out[5] = tonumber(last[1][2][2]); out[6] = last[1][2][4]\n"
    "end\n"
    "local oldest = seq + 1\n"
    "local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)\n"
    "if first[1] then oldest = tonumber(string.match(first[1][1], '^%d+')) end\n"
    "local has_since = ARGV[6] == '1'\n"
    "local since = tonumber(ARGV[7]) or 0\n"
    "if (ARGV[8] ~= '' and ARGV[8] ~= epoch) or\n"
    "   (has_since and (since > seq or since < oldest - 1)) then\n"
    "  out[3] = 1; since = oldest - 1\n"
    "elseif not has_since then\n"
    "  return out\n"
    "end\n"
    "if since >= seq then return out end\n"
    "local budget = tonumber(ARGV[9])\n"
    "local used, n = 0, 0\n"
    "local cursor = since + 1\n"
    "while true do\n"
    "  local batch = redis.call('XRANGE', KEYS[3], string.format('%d', cursor) .. '-0', '+', 'COUNT', 128)\n"
    "  for i = 1, #batch do\n"
    "    local e = batch[i]\n"
    "    local c = e[2][4]\n"
    "    local cost = #c + 48\n"
    "    if n > 0 and used + cost > budget then out[4] = 1; return out end\n"
    "    used = used + cost; n = n + 1\n"
    "    out[#out + 1] = tonumber(string.match(e[1], '^%d+'))\n"
    "    out[#out + 1] = tonumber(e[2][2])\n"
    "    out[#out + 1] = c\n"
    "  end\n"
    "  if #batch < 128 then break end\n"
    "  cursor = tonumber(string.match(batch[#batch][1], '^%d+')) + 1\n"
    "end\n"
    "return out\n";

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_HANDSHAKE, CONN_READY };

typedef struct rconn {
    broker *b;
    const char *name; /* "commands" / "pub/sub" */
    redisAsyncContext *ac;
    io_watch w;
    enum conn_state state;
    timer retry;     /* reconnect after backoff */
    timer deadline;  /* connect + handshake must finish in time */
    unsigned failures;
    uint64_t next_attempt;
} rconn;

/* A command in flight on the command connection. Replies come back in
 * order, so the oldest one is at the head and the watchdog looks only there. */
typedef struct cmd {
    struct cmd *next;
    uint64_t sent;
    void (*on_reply)(broker *b, struct cmd *c, redisReply *r);
    void *user_cb;
    void *user_arg;
    /* For a retry with EVAL after NOSCRIPT: the full argument vector. */
    int argc;
    char **argv;
    size_t *argvlen;
    bool retried;
} cmd;

struct broker {
    loop *l;
    broker_config cfg;
    broker_hooks hooks;
    char prefix[64];
    rconn cmdc, subc;
    cmd *head, *tail; /* in flight on cmdc */
    size_t inflight;
    timer watchdog;
    timer heartbeat;
    /* Handshake facts about the server behind cmdc. */
    char run_id[64];
    bool aof_on, fsync_always, master, replid2_zero;
    int handshake_left;
    char sha_publish[41], sha_read[41];
    /* Liveness of the pub/sub connection. */
    char ping_channel[160];
    bool ping_subscribed;
    uint64_t last_ping_rx;
    uint64_t ping_seq;
    broker_stats stats;
};

static void conn_connect(rconn *c);
static void conn_fail(rconn *c, const char *why);

/* ---- hiredis adapter (the five hooks of adapters/ae.h) ---------------- */

static void ev_update(rconn *c, uint32_t add, uint32_t del)
{
    if (c->w.fd < 0)
        return;
    uint32_t ev = (c->w.events | add) & ~del;
    if (ev == c->w.events)
        return;
    if (!c->w.events)
        loop_add(c->b->l, &c->w, ev);
    else if (!ev)
        loop_del(c->b->l, &c->w);
    else
        loop_mod(c->b->l, &c->w, ev);
}

static void ev_add_read(void *p) { ev_update(p, EPOLLIN, 0); }
static void ev_del_read(void *p) { ev_update(p, 0, EPOLLIN); }
static void ev_add_write(void *p) { ev_update(p, EPOLLOUT, 0); }
static void ev_del_write(void *p) { ev_update(p, 0, EPOLLOUT); }
static void ev_cleanup(void *p)
{
    rconn *c = p;
    loop_del(c->b->l, &c->w);
    c->w.fd = -1;
}

static void conn_io(loop *l, io_watch *w, uint32_t revents)
{
    (void)l;
    rconn *c = (rconn *)((char *)w - offsetof(rconn, w));
    /* Either handler may free the context (and call our callbacks, which
     * set c->ac = NULL); check before the second. */
    if (c->ac && (revents & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        redisAsyncHandleRead(c->ac);
    if (c->ac && (revents & EPOLLOUT))
        redisAsyncHandleWrite(c->ac);
}

/* ---- in-flight command queue and watchdog ------------------------------ */

static void cmd_free(cmd *c)
{
    if (c->argv) {
        for (int i = 0; i < c->argc; i++)
            free(c->argv[i]);
        free(c->argv);
        free(c->argvlen);
    }
    free(c);
}

static void cmd_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    broker *b = ac->data;
    cmd *c = privdata;
    /* Replies are in order: this is the head. */
    if (b->head == c) {
        b->head = c->next;
        if (!b->head)
            b->tail = NULL;
    }
    b->inflight--;
    c->on_reply(b, c, reply);
    cmd_free(c);
}

/* Send a command built from argv on the command connection. Takes ownership
 * of nothing: argv is copied when keep_args (for a NOSCRIPT retry). Returns
 * 0, or -1 when the connection is not usable (c is not freed: caller's). */
static int cmd_send(broker *b, cmd *c, int argc, const char **argv, const size_t *lens,
                    bool keep_args)
{
    if (!b->cmdc.ac)
        return -1;
    if (keep_args && !c->argv) {
        c->argc = argc;
        c->argv = xcalloc((size_t)argc, sizeof(char *));
        c->argvlen = xcalloc((size_t)argc, sizeof(size_t));
        for (int i = 0; i < argc; i++) {
            c->argv[i] = xmalloc(lens[i] + 1);
            memcpy(c->argv[i], argv[i], lens[i]);
            c->argv[i][lens[i]] = '\0';
            c->argvlen[i] = lens[i];
        }
    }
    if (redisAsyncCommandArgv(b->cmdc.ac, cmd_reply, c, argc, argv, lens) != REDIS_OK)
        return -1;
    c->next = NULL;
    c->sent = loop_now(b->l);
    if (b->tail)
        b->tail->next = c;
    else
        b->head = c;
    b->tail = c;
    b->inflight++;
    return 0;
}

/* Send argv (no retry copy) with on_reply; returns 0 or -1. */
static int cmd_simple(broker *b, int argc, const char **argv, void (*on_reply)(broker *, cmd *, redisReply *),
                      void *user_cb, void *user_arg)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    cmd *c = xcalloc(1, sizeof *c);
    c->on_reply = on_reply;
    c->user_cb = user_cb;
    c->user_arg = user_arg;
    if (cmd_send(b, c, argc, argv, lens, false) < 0) {
        cmd_free(c);
        return -1;
    }
    return 0;
}

static void watchdog_cb(loop *l, timer *t)
{
    broker *b = (broker *)((char *)t - offsetof(broker, watchdog));
    uint64_t now = loop_now(l);
    if (b->head && now - b->head->sent > b->cfg.timeout_ms) {
        b->stats.timeouts++;
        conn_fail(&b->cmdc, "no answer within the Redis timeout");
    }
    /* The pub/sub connection is probed by the heartbeat: it must see our own
     * ping messages while the command connection can publish them. */
    if (b->subc.state == CONN_READY && b->cmdc.state == CONN_READY && b->ping_subscribed &&
        now - b->last_ping_rx > b->cfg.timeout_ms + 2 * b->cfg.heartbeat_ms) {
        b->stats.timeouts++;
        conn_fail(&b->subc, "pub/sub connection stopped delivering");
    }
    timer_start(l, t, 100);
}

/* ---- connection life cycle ---------------------------------------------- */

static unsigned backoff_ms(unsigned failures)
{
    unsigned base = 100u << (failures > 6 ? 6 : failures); /* 100 ms .. 6.4 s */
    if (base > 5000)
        base = 5000;
    unsigned r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != sizeof r)
        r = (unsigned)loop_wall_ms();
    return base / 2 + r % (base / 2 + 1); /* "equal jitter" */
}

static void schedule_retry(rconn *c)
{
    unsigned ms = backoff_ms(c->failures);
    c->next_attempt = loop_now(c->b->l) + ms;
    timer_start(c->b->l, &c->retry, ms);
}

static void retry_cb(loop *l, timer *t)
{
    (void)l;
    rconn *c = (rconn *)((char *)t - offsetof(rconn, retry));
    conn_connect(c);
}

static void deadline_cb(loop *l, timer *t)
{
    (void)l;
    rconn *c = (rconn *)((char *)t - offsetof(rconn, deadline));
    if (c->state != CONN_READY)
        conn_fail(c, "connect/handshake timed out");
}

/* Called when a connection is gone for whatever reason (hiredis already
 * freed the context, or we are about to). Runs the hooks and schedules the
 * reconnect; idempotent. */
static void conn_lost(rconn *c, const char *why)
{
    broker *b = c->b;
    bool was_ready = c->state == CONN_READY;
    if (c->state == CONN_DOWN)
        return;
    c->state = CONN_DOWN;
    c->ac = NULL;
    c->w.fd = -1;
    c->w.events = 0;
    timer_stop(b->l, &c->deadline);
    c->failures++;
    if (c == &b->cmdc)
        b->stats.cmd_failures++;
    else
        b->stats.sub_failures++;
    if (was_ready)
        log_warn("redis %s connection lost: %s", c->name, why);
    else
        log_debug("redis %s connection attempt failed: %s", c->name, why);
    schedule_retry(c);
    if (c == &b->subc) {
        b->ping_subscribed = false;
        if (was_ready && b->hooks.sub_down)
            b->hooks.sub_down(b->hooks.ctx);
    } else if (was_ready && b->hooks.cmd_down) {
        b->hooks.cmd_down(b->hooks.ctx);
    }
}

/* Drop the connection now. Pending command callbacks run (with NULL
 * replies) inside redisAsyncFree, before the hooks. */
static void conn_fail(rconn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    /* Detach first: the callbacks that redisAsyncFree runs (pending commands
     * with NULL replies, the disconnect callback) then see a connection that
     * cannot take commands, and conn_lost runs once, below. */
    c->ac = NULL;
    if (ac)
        redisAsyncFree(ac);
    conn_lost(c, why);
}

static void on_connect(const redisAsyncContext *ac, int status);
static void on_disconnect(const redisAsyncContext *ac, int status);
static void handshake_start(rconn *c);

static void conn_connect(rconn *c)
{
    broker *b = c->b;
    const redis_url *u = &b->cfg.url;
    redisAsyncContext *ac =
        u->path[0] ? redisAsyncConnectUnix(u->path) : redisAsyncConnect(u->host, u->port);
    if (!ac || ac->err) {
        const char *why = ac ? ac->errstr : "out of memory";
        if (c->failures == 0 || log_current_level >= LOG_DEBUG)
            log_warn("redis %s connection to %s:%d failed: %s", c->name,
                     u->path[0] ? u->path : u->host, u->path[0] ? 0 : u->port, why);
        if (ac)
            redisAsyncFree(ac);
        c->state = CONN_CONNECTING; /* so that conn_lost counts it */
        conn_lost(c, why);
        return;
    }
    c->ac = ac;
    ac->data = b;
    c->state = CONN_CONNECTING;
    c->w.fd = ac->c.fd;
    c->w.events = 0;
    c->w.cb = conn_io;
    ac->ev.data = c;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* hiredis waits for writability to learn the connect result. */
    ev_add_write(c);
    timer_start(b->l, &c->deadline, b->cfg.timeout_ms);
}

static rconn *conn_of(const redisAsyncContext *ac)
{
    broker *b = ac->data;
    return ac == b->cmdc.ac ? &b->cmdc : ac == b->subc.ac ? &b->subc : NULL;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rconn *c = conn_of(ac);
    if (!c)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context right after this callback, without
         * calling on_disconnect. */
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr);
        if (c->failures == 0)
            log_warn("redis %s connect failed: %s", c->name, why);
        c->ac = NULL;
        conn_lost(c, why);
        return;
    }
    c->state = CONN_HANDSHAKE;
    handshake_start(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    rconn *c = conn_of(ac);
    if (!c)
        return;
    char why[128];
    snprintf(why, sizeof why, "%s", ac->err ? ac->errstr : "closed");
    c->ac = NULL;
    conn_lost(c, why);
}

static void conn_ready(rconn *c)
{
    broker *b = c->b;
    c->state = CONN_READY;
    c->failures = 0;
    timer_stop(b->l, &c->deadline);
    if (c == &b->cmdc) {
        b->stats.cmd_connects++;
        bool lossless = b->aof_on && b->fsync_always && b->master && b->replid2_zero;
        log_info("redis commands connected (run_id %.12s, %s)", b->run_id,
                 lossless ? "appendfsync always: restarts keep epochs"
                          : "restarts of this server start a new epoch");
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

/* ---- handshake ------------------------------------------------------------ */

static bool reply_is_error(const redisReply *r) { return !r || r->type == REDIS_REPLY_ERROR; }

static const char *reply_err(const redisReply *r)
{
    return !r ? "connection lost" : r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply";
}

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

enum hs_step { HS_AUTH, HS_SELECT, HS_INFO_SERVER, HS_INFO_REPL, HS_AOF, HS_FSYNC, HS_LOAD_PUB, HS_LOAD_READ };

static void handshake_reply(broker *b, cmd *c, redisReply *r)
{
    rconn *conn = &b->cmdc;
    enum hs_step step = (enum hs_step)(intptr_t)c->user_arg;
    if (!r || conn->state != CONN_HANDSHAKE || !conn->ac)
        return; /* the connection is going away; conn_lost handles it */
    bool optional = step == HS_AOF || step == HS_FSYNC;
    if (reply_is_error(r) && !optional) {
        char why[160];
        snprintf(why, sizeof why, "handshake step %d: %s", (int)step, reply_err(r));
        if (conn->failures == 0)
            log_warn("redis %s", why);
        conn_fail(conn, why);
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
        if (r->type == REDIS_REPLY_STRING && r->len == 40)
            memcpy(step == HS_LOAD_PUB ? b->sha_publish : b->sha_read, r->str, 41);
        break;
    default:
        break;
    }
    if (--b->handshake_left == 0) {
        if (!b->run_id[0]) {
            conn_fail(conn, "INFO server gave no run_id");
            return;
        }
        conn_ready(conn);
    }
}

static void handshake_send(broker *b, enum hs_step step, int argc, const char **argv)
{
    if (cmd_simple(b, argc, argv, handshake_reply, NULL, (void *)(intptr_t)step) == 0)
        b->handshake_left++;
}

static void sub_auth_reply(redisAsyncContext *ac, void *reply, void *privdata);

static void handshake_start(rconn *c)
{
    broker *b = c->b;
    const redis_url *u = &b->cfg.url;
    if (c == &b->subc) {
        /* AUTH is the only step: pub/sub channels are not per database. */
        if (u->password[0]) {
            const char *argv[3] = {"AUTH", u->user[0] ? u->user : u->password, u->password};
            size_t lens[3] = {4, strlen(argv[1]), strlen(argv[2])};
            int argc = u->user[0] ? 3 : 2;
            redisAsyncCommandArgv(c->ac, sub_auth_reply, NULL, argc, argv, lens);
        } else {
            sub_auth_reply(c->ac, NULL, (void *)1);
        }
        return;
    }
    b->handshake_left = 0;
    b->run_id[0] = '\0';
    b->aof_on = b->fsync_always = b->master = b->replid2_zero = false;
    if (u->password[0]) {
        const char *argv[3] = {"AUTH", u->user[0] ? u->user : u->password, u->password};
        handshake_send(b, HS_AUTH, u->user[0] ? 3 : 2, argv);
    }
    if (u->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", u->db);
        const char *argv[2] = {"SELECT", db};
        handshake_send(b, HS_SELECT, 2, argv);
    }
    const char *info_s[2] = {"INFO", "server"};
    handshake_send(b, HS_INFO_SERVER, 2, info_s);
    const char *info_r[2] = {"INFO", "replication"};
    handshake_send(b, HS_INFO_REPL, 2, info_r);
    const char *aof[3] = {"CONFIG", "GET", "appendonly"};
    handshake_send(b, HS_AOF, 3, aof);
    const char *fsync[3] = {"CONFIG", "GET", "appendfsync"};
    handshake_send(b, HS_FSYNC, 3, fsync);
    const char *lp[3] = {"SCRIPT", "LOAD", LUA_PUBLISH};
    handshake_send(b, HS_LOAD_PUB, 3, lp);
    const char *lr[3] = {"SCRIPT", "LOAD", LUA_READ};
    handshake_send(b, HS_LOAD_READ, 3, lr);
}

/* ---- pub/sub connection ----------------------------------------------------- */

static void sub_message(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    broker *b = ac->data;
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

static void sub_auth_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    broker *b = ac->data;
    rconn *c = &b->subc;
    if (c->state != CONN_HANDSHAKE)
        return;
    redisReply *r = reply;
    if (!privdata && reply_is_error(r)) {
        if (r)
            conn_fail(c, reply_err(r));
        return;
    }
    const char *argv[2] = {"SUBSCRIBE", b->ping_channel};
    size_t lens[2] = {9, strlen(b->ping_channel)};
    redisAsyncCommandArgv(c->ac, sub_message, NULL, 2, argv, lens);
    conn_ready(c);
}

static int sub_command(broker *b, const char *verb, const char *channel)
{
    if (b->subc.state != CONN_READY || !b->subc.ac)
        return -1;
    char name[256];
    int n = snprintf(name, sizeof name, "%smsg:%s", b->prefix, channel);
    if (n < 0 || (size_t)n >= sizeof name)
        return -1;
    const char *argv[2] = {verb, name};
    size_t lens[2] = {strlen(verb), (size_t)n};
    return redisAsyncCommandArgv(b->subc.ac, sub_message, NULL, 2, argv, lens) == REDIS_OK ? 0 : -1;
}

int broker_subscribe(broker *b, const char *channel) { return sub_command(b, "SUBSCRIBE", channel); }

int broker_unsubscribe(broker *b, const char *channel)
{
    return sub_command(b, "UNSUBSCRIBE", channel);
}

/* ---- heartbeat ---------------------------------------------------------------- */

static void heartbeat_reply(broker *b, cmd *c, redisReply *r)
{
    (void)c;
    /* PUBLISH answers how many connections got the ping. None while our
     * pub/sub connection believes it is subscribed means it is talking to
     * another server (a failover behind a name): reconnect it. */
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0 && b->ping_subscribed &&
        b->subc.state == CONN_READY)
        conn_fail(&b->subc, "pub/sub connection is not subscribed on the current server");
}

static void ignore_reply(broker *b, cmd *c, redisReply *r) { (void)b, (void)c, (void)r; }

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

/* Processes announce themselves in one sorted set, scored by the moment
 * their heartbeat expires (Redis's clock, so hosts need not agree on time,
 * and each process states its own interval). /healthz reads it; entries
 * expired over a minute ago are pruned, so a crashed process is reported
 * down for about that long. */
static const char LUA_HEARTBEAT[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - tonumber(ARGV[3])))\n"
    "return 1\n";

/* Returns {now, member1, expiry1, member2, expiry2, ...}. */
static const char LUA_PROCS[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local r = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')\n"
    "table.insert(r, 1, string.format('%d', now))\n"
    "return r\n";

static void proc_member(const broker *b, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%s", b->cfg.proc_kind, b->cfg.proc_id);
}

static void heartbeat_cb(loop *l, timer *t)
{
    broker *b = (broker *)((char *)t - offsetof(broker, heartbeat));
    timer_start(l, t, b->cfg.heartbeat_ms);
    if (b->cmdc.state != CONN_READY)
        return;
    char key[96], member[256], valid[24], forget[24], seq[24];
    snprintf(key, sizeof key, "%sprocs", b->prefix);
    proc_member(b, member, sizeof member);
    /* Alive until three heartbeats are missed (plus the Redis timeout). */
    snprintf(valid, sizeof valid, "%u", 3 * b->cfg.heartbeat_ms + b->cfg.timeout_ms);
    snprintf(forget, sizeof forget, "%d", BROKER_PROC_FORGET_MS);
    const char *hb[7] = {"EVAL", LUA_HEARTBEAT, "1", key, member, valid, forget};
    cmd_simple(b, 7, hb, ignore_reply, NULL, NULL);
    snprintf(seq, sizeof seq, "%llu", (unsigned long long)++b->ping_seq);
    const char *pub[3] = {"PUBLISH", b->ping_channel, seq};
    cmd_simple(b, 3, pub, heartbeat_reply, NULL, NULL);
}

static void goodbye_reply(broker *b, cmd *c, redisReply *r)
{
    (void)b, (void)r;
    ((void (*)(void *))c->user_cb)(c->user_arg);
}

int broker_goodbye(broker *b, void (*done)(void *arg), void *arg)
{
    if (b->cmdc.state != CONN_READY)
        return -1;
    timer_stop(b->l, &b->heartbeat);
    char key[96], member[256];
    snprintf(key, sizeof key, "%sprocs", b->prefix);
    proc_member(b, member, sizeof member);
    const char *zrem[3] = {"ZREM", key, member};
    return cmd_simple(b, 3, zrem, goodbye_reply, (void *)done, arg);
}

static void procs_reply(broker *b, cmd *c, redisReply *r)
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
    ((broker_procs_cb *)c->user_cb)(c->user_arg, &res);
    free(res.procs);
}

int broker_procs(broker *b, broker_procs_cb *cb, void *arg)
{
    if (b->cmdc.state != CONN_READY)
        return -1;
    char key[96];
    snprintf(key, sizeof key, "%sprocs", b->prefix);
    const char *argv[4] = {"EVAL", LUA_PROCS, "1", key};
    return cmd_simple(b, 4, argv, procs_reply, (void *)cb, arg);
}

/* ---- scripts -------------------------------------------------------------------- */

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

/* "1" when the server behind the command connection cannot have lost a
 * write it acknowledged: an append-only file synced on every write, and a
 * master that was not promoted from a replica (master_replid2 all zeros). */
static const char *lossless_flag(const broker *b)
{
    return b->aof_on && b->fsync_always && b->master && b->replid2_zero ? "1" : "0";
}

static bool is_noscript(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* Re-send c with EVAL and the script text instead of EVALSHA. Returns true
 * when c was handed to the connection again (do not free it). */
static bool retry_with_eval(broker *b, cmd *c, const char *script)
{
    if (c->retried || !c->argv)
        return false;
    c->retried = true;
    free(c->argv[0]);
    free(c->argv[1]);
    c->argv[0] = xstrndup("EVAL", 4);
    c->argvlen[0] = 4;
    c->argv[1] = xstrndup(script, strlen(script));
    c->argvlen[1] = strlen(script);
    cmd *copy = xmalloc(sizeof *copy);
    *copy = *c;
    c->argv = NULL; /* now owned by copy */
    if (cmd_send(b, copy, copy->argc, (const char **)copy->argv, copy->argvlen, false) < 0) {
        cmd_free(copy);
        return false;
    }
    return true;
}

static void copy_str(char *dst, size_t cap, const redisReply *r)
{
    size_t n = r->len < cap - 1 ? r->len : cap - 1;
    memcpy(dst, r->str, n);
    dst[n] = '\0';
}


static void publish_reply(broker *b, cmd *c, redisReply *r)
{
    if (is_noscript(r) && retry_with_eval(b, c, LUA_PUBLISH))
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
    if (res.err) {
        b->stats.publish_errors++;
        log_warn("publish failed: %s", res.errmsg);
    }
    ((broker_pub_cb *)c->user_cb)(c->user_arg, &res);
}

int broker_publish(broker *b, const char *channel, const char *json, size_t json_len,
                   const char *idem_key, broker_pub_cb *cb, void *arg)
{
    if (b->cmdc.state != CONN_READY)
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
    const char *argv[17] = {"EVALSHA", b->sha_publish, "4", k_srv, k_meta, k_hist, k_idem,
                            b->run_id, lossless_flag(b), gen, ep, ttl, json, hist, pubch, idem_key ? "1" : "0", idem_ttl};
    size_t lens[17];
    for (int i = 0; i < 17; i++)
        lens[i] = i == 12 ? json_len : strlen(argv[i]);
    cmd *c = xcalloc(1, sizeof *c);
    c->on_reply = publish_reply;
    c->user_cb = (void *)cb;
    c->user_arg = arg;
    if (cmd_send(b, c, 17, argv, lens, true) < 0) {
        cmd_free(c);
        return -1;
    }
    b->stats.publishes++;
    return 0;
}

static pw_msg make_msg(long long id, long long t, const redisReply *c)
{
    pw_msg m = {.id = (uint64_t)id, .time_ms = t, .json = rbuf_new(c->str, c->len)};
    return m;
}

static void read_reply(broker *b, cmd *c, redisReply *r)
{
    if (is_noscript(r) && retry_with_eval(b, c, LUA_READ))
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
    ((broker_read_cb *)c->user_cb)(c->user_arg, &res);
    for (size_t i = 0; i < res.n; i++)
        rbuf_unref(res.entries[i].json);
    free(res.entries);
    rbuf_unref(newest.json);
}

int broker_read(broker *b, const char *channel, bool has_since, uint64_t since, const char *epoch,
                size_t budget, broker_read_cb *cb, void *arg)
{
    if (b->cmdc.state != CONN_READY)
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
     * epoch must exist before the first message). Such state expires after
     * five minutes, so that polling random names cannot fill Redis; the
     * first publish extends it to the history TTL. */
    snprintf(ttl, sizeof ttl, "%u", b->cfg.history_ttl < 300 ? b->cfg.history_ttl : 300);
    snprintf(s_since, sizeof s_since, "%llu", (unsigned long long)since);
    snprintf(s_budget, sizeof s_budget, "%zu", budget);
    const char *argv[15] = {"EVALSHA", b->sha_read, "3", k_srv, k_meta, k_hist, b->run_id, lossless_flag(b), gen, ep, ttl, has_since ? "1" : "0", s_since, epoch ? epoch : "",
                            s_budget};
    size_t lens[15];
    for (int i = 0; i < 15; i++)
        lens[i] = strlen(argv[i]);
    cmd *c = xcalloc(1, sizeof *c);
    c->on_reply = read_reply;
    c->user_cb = (void *)cb;
    c->user_arg = arg;
    if (cmd_send(b, c, 15, argv, lens, true) < 0) {
        cmd_free(c);
        return -1;
    }
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
    rconn *cs[2] = {&b->cmdc, &b->subc};
    for (int i = 0; i < 2; i++) {
        cs[i]->b = b;
        cs[i]->name = i == 0 ? "commands" : "pub/sub";
        cs[i]->w.fd = -1;
        cs[i]->retry.cb = retry_cb;
        cs[i]->deadline.cb = deadline_cb;
    }
    b->watchdog.cb = watchdog_cb;
    b->heartbeat.cb = heartbeat_cb;
    char id[17];
    rand_hex(id, 6);
    snprintf(b->ping_channel, sizeof b->ping_channel, "%sping:%s:%s", b->prefix, cfg->proc_id, id);
    return b;
}

void broker_start(broker *b)
{
    conn_connect(&b->cmdc);
    conn_connect(&b->subc);
    timer_start(b->l, &b->watchdog, 100);
    timer_start(b->l, &b->heartbeat, 0);
}

void broker_free(broker *b)
{
    if (!b)
        return;
    memset(&b->hooks, 0, sizeof b->hooks);
    rconn *cs[2] = {&b->cmdc, &b->subc};
    for (int i = 0; i < 2; i++) {
        if (cs[i]->ac)
            redisAsyncFree(cs[i]->ac);
        cs[i]->ac = NULL;
        timer_stop(b->l, &cs[i]->retry);
        timer_stop(b->l, &cs[i]->deadline);
    }
    timer_stop(b->l, &b->watchdog);
    timer_stop(b->l, &b->heartbeat);
    free(b);
}

bool broker_cmd_ready(const broker *b) { return b->cmdc.state == CONN_READY; }
bool broker_sub_ready(const broker *b) { return b->subc.state == CONN_READY; }
const broker_stats *broker_get_stats(const broker *b) { return &b->stats; }

unsigned broker_retry_after_ms(const broker *b)
{
    if (b->cmdc.state == CONN_READY)
        return 1000;
    uint64_t now = loop_now(b->l);
    uint64_t at = b->cmdc.next_attempt;
    return at > now ? (unsigned)(at - now) + 500 : 1000;
}
