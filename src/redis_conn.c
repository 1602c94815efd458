/* redis_conn.c - one hiredis async connection on the loop (redis_conn.h).
 *
 * hiredis 0.14 frees a context on a failed connect without calling the
 * disconnect callback, and has no timeouts on commands; this file covers
 * both with the loop's timers. It must not block: names are looked up with
 * getaddrinfo_a.
 */
#include "redis_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "buf.h"
#include "log.h"

#define LOOKUP_POLL_MS 10

struct rc_inflight {
    rc_inflight *next;
    uint64_t sent;
    rc_reply_cb *cb;
    void *arg;
};

/* A name lookup: getaddrinfo_a keeps pointers into it until it is done. */
struct rc_lookup {
    struct gaicb cb;
    struct addrinfo hints;
    char name[256];
};

static void conn_connect(redis_conn *c);
static void conn_lost(redis_conn *c, const char *why);

/* ---- hiredis adapter (the five hooks of adapters/ae.h) ---------------- */

static void ev_update(redis_conn *c, uint32_t add, uint32_t del)
{
    if (c->w.fd < 0)
        return;
    uint32_t ev = (c->w.events | add) & ~del;
    if (ev == c->w.events)
        return;
    if (!c->w.events)
        loop_add(c->l, &c->w, ev);
    else if (!ev)
        loop_del(c->l, &c->w);
    else
        loop_mod(c->l, &c->w, ev);
}

static void ev_add_read(void *p) { ev_update(p, EPOLLIN, 0); }
static void ev_del_read(void *p) { ev_update(p, 0, EPOLLIN); }
static void ev_add_write(void *p) { ev_update(p, EPOLLOUT, 0); }
static void ev_del_write(void *p) { ev_update(p, 0, EPOLLOUT); }
static void ev_cleanup(void *p)
{
    redis_conn *c = p;
    loop_del(c->l, &c->w);
    c->w.fd = -1;
}

/* A pub/sub connection past its AUTH reads every reply itself and hands
 * each to the push hook: hiredis 0.14's own dispatch knows only SUBSCRIBE
 * and PSUBSCRIBE (a Redis 7 "smessage" would find no callback and abort
 * it), and it looks every message's channel up in a dictionary we do not
 * need. */
static void raw_read(redis_conn *c)
{
    redisAsyncContext *ac = c->ac;
    if (redisBufferRead(&ac->c) != REDIS_OK) {
        char why[160];
        snprintf(why, sizeof why, "%s", ac->c.errstr[0] ? ac->c.errstr : "closed");
        rc_fail(c, why);
        return;
    }
    while (c->ac == ac) {
        void *reply = NULL;
        if (redisReaderGetReply(ac->c.reader, &reply) != REDIS_OK) {
            rc_fail(c, "protocol error from Redis");
            return;
        }
        if (!reply)
            break;
        if (c->hooks.push)
            c->hooks.push(c->hooks.ctx, c, reply); /* may fail the connection */
        freeReplyObject(reply);
    }
}

static void conn_io(loop *l, io_watch *w, uint32_t revents)
{
    (void)l;
    redis_conn *c = (redis_conn *)((char *)w - offsetof(redis_conn, w));
    /* Either handler may free the context (and call our callbacks, which
     * set c->ac = NULL); check before the second. */
    if (c->ac && c->raw && (revents & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        raw_read(c);
    else if (c->ac && (revents & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        redisAsyncHandleRead(c->ac);
    if (c->ac && (revents & EPOLLOUT))
        redisAsyncHandleWrite(c->ac);
}

/* ---- commands in flight and the watchdog ------------------------------- */

static void inflight_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn *c = ac->data;
    rc_inflight *f = privdata;
    /* Replies come in order: this is the head. */
    if (c->head == f) {
        c->head = f->next;
        if (!c->head)
            c->tail = NULL;
    }
    c->inflight--;
    f->cb(c, reply, f->arg);
    free(f);
}

int rc_send(redis_conn *c, int argc, const char **argv, const size_t *lens, rc_reply_cb *cb,
            void *arg)
{
    if (!c->ac || c->pubsub || c->asking)
        return -1;
    rc_inflight *f = xcalloc(1, sizeof *f);
    f->cb = cb;
    f->arg = arg;
    if (redisAsyncCommandArgv(c->ac, inflight_reply, f, argc, argv, lens) != REDIS_OK) {
        free(f);
        return -1;
    }
    f->sent = loop_now(c->l);
    if (c->tail)
        c->tail->next = f;
    else
        c->head = f;
    c->tail = f;
    c->inflight++;
    return 0;
}

int rc_push_send(redis_conn *c, int argc, const char **argv, const size_t *lens)
{
    if (!c->ac || !c->pubsub || !c->raw)
        return -1;
    if (redisAppendCommandArgv(&c->ac->c, argc, argv, lens) != REDIS_OK)
        return -1;
    ev_add_write(c); /* hiredis's write handler flushes the buffer */
    return 0;
}

static void watchdog_cb(loop *l, timer *t)
{
    redis_conn *c = (redis_conn *)((char *)t - offsetof(redis_conn, watchdog));
    if (c->head && loop_now(l) - c->head->sent > c->timeout_ms) {
        c->timeouts++;
        rc_fail(c, "no answer within the Redis timeout");
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

static void retry_cb(loop *l, timer *t)
{
    (void)l;
    conn_connect((redis_conn *)((char *)t - offsetof(redis_conn, retry)));
}

static void deadline_cb(loop *l, timer *t)
{
    (void)l;
    redis_conn *c = (redis_conn *)((char *)t - offsetof(redis_conn, deadline));
    if (c->state != RC_READY)
        rc_fail(c, c->state == RC_RESOLVING ? "name lookup timed out" : "connect/handshake timed out");
}

/* The connection is gone for whatever reason (hiredis already freed the
 * context, or we are about to): run the hook and schedule the reconnect.
 * Idempotent. */
static void conn_lost(redis_conn *c, const char *why)
{
    bool was_ready = c->state == RC_READY;
    if (c->state == RC_DOWN)
        return;
    c->state = RC_DOWN;
    c->ac = NULL;
    c->raw = false;
    c->w.fd = -1;
    c->w.events = 0;
    c->lookup_wanted = false;
    timer_stop(c->l, &c->deadline);
    c->failures++;
    c->losses++;
    if (c->asking)
        c->sentinel_next++; /* the next attempt asks another sentinel */
    c->have_answer = false;
    if (was_ready)
        log_warn("redis %s connection lost: %s", c->name, why);
    else if (c->failures == 1 || log_current_level >= LOG_DEBUG)
        log_warn("redis %s connection to %s%s:%d failed: %s", c->name, c->asking ? "sentinel " : "",
                 c->url->path[0] ? c->url->path : c->target.host, c->target.port, why);
    unsigned ms = backoff_ms(c->failures);
    c->next_attempt = loop_now(c->l) + ms;
    timer_start(c->l, &c->retry, ms);
    if (c->hooks.down)
        c->hooks.down(c->hooks.ctx, c, was_ready, why);
}

void rc_fail(redis_conn *c, const char *why)
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

/* Connect to a numeric address (or a unix socket): hiredis does not look
 * anything up then. */
static void connect_to(redis_conn *c, const char *addr)
{
    const redis_url *u = c->url;
    redisAsyncContext *ac = u->path[0] ? redisAsyncConnectUnix(u->path)
                                        : redisAsyncConnect(addr, c->target.port);
    if (!ac || ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        conn_lost(c, why);
        return;
    }
    c->ac = ac;
    ac->data = c;
    c->state = RC_CONNECTING;
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
}

static void lookup_free(struct rc_lookup *lk)
{
    if (lk->cb.ar_result)
        freeaddrinfo(lk->cb.ar_result);
    free(lk);
}

static void lookup_poll_cb(loop *l, timer *t)
{
    redis_conn *c = (redis_conn *)((char *)t - offsetof(redis_conn, lookup_poll));
    struct rc_lookup *lk = c->lookup;
    int rc = gai_error(&lk->cb);
    if (rc == EAI_INPROGRESS) {
        timer_start(l, t, LOOKUP_POLL_MS);
        return;
    }
    c->lookup = NULL;
    bool wanted = c->lookup_wanted && c->state == RC_RESOLVING;
    c->lookup_wanted = false;
    char addr[INET6_ADDRSTRLEN] = "";
    if (rc == 0 && lk->cb.ar_result) {
        const struct sockaddr *sa = lk->cb.ar_result->ai_addr;
        const void *in = sa->sa_family == AF_INET6
                             ? (const void *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr
                             : (const void *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        inet_ntop(sa->sa_family, in, addr, sizeof addr);
    }
    lookup_free(lk);
    if (!wanted)
        return; /* a lookup that outlived its attempt: only reaped */
    if (!addr[0]) {
        char why[400];
        snprintf(why, sizeof why, "cannot resolve %s: %s", c->target.host,
                 rc ? gai_strerror(rc) : "no address");
        conn_lost(c, why);
        return;
    }
    connect_to(c, addr);
}

static bool is_numeric(const char *host)
{
    unsigned char tmp[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* Where this run of the attempt goes (see the header). */
static void choose_target(redis_conn *c)
{
    const redis_url *u = c->url;
    c->asking = false;
    if (!redis_url_is_sentinel(u)) {
        snprintf(c->target.host, sizeof c->target.host, "%s", u->host);
        c->target.port = u->port;
    } else if (c->have_answer) {
        c->have_answer = false; /* a failure of this run asks again */
        c->target = c->answer;
    } else {
        c->asking = true;
        c->target = u->hosts[c->sentinel_next % (unsigned)u->nhosts];
    }
}

static void conn_connect(redis_conn *c)
{
    timer_start(c->l, &c->deadline, c->timeout_ms);
    choose_target(c);
    if (c->url->path[0] || is_numeric(c->target.host)) {
        c->state = RC_CONNECTING; /* so that a failure counts */
        connect_to(c, c->target.host);
        return;
    }
    c->state = RC_RESOLVING;
    c->lookup_wanted = true;
    if (c->lookup)
        return; /* the previous attempt's lookup is still out: take its answer */
    struct rc_lookup *lk = xcalloc(1, sizeof *lk);
    snprintf(lk->name, sizeof lk->name, "%s", c->target.host);
    lk->hints.ai_family = AF_UNSPEC;
    lk->hints.ai_socktype = SOCK_STREAM;
    lk->cb.ar_name = lk->name;
    lk->cb.ar_request = &lk->hints;
    struct gaicb *list[1] = {&lk->cb};
    struct sigevent sev = {.sigev_notify = SIGEV_NONE};
    int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, &sev);
    if (rc != 0) {
        lookup_free(lk);
        char why[400];
        snprintf(why, sizeof why, "cannot resolve %s: %s", c->target.host, gai_strerror(rc));
        conn_lost(c, why);
        return;
    }
    c->lookup = lk;
    timer_start(c->l, &c->lookup_poll, LOOKUP_POLL_MS);
}

static void auth_reply(redis_conn *c, void *reply, void *arg)
{
    (void)arg;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ERROR && c->state == RC_HANDSHAKE) {
        char why[160];
        snprintf(why, sizeof why, "AUTH/SELECT refused: %s", r->str);
        rc_fail(c, why);
    }
}

/* The pub/sub connection's AUTH: the owner's handshake (SUBSCRIBE, then
 * ready) waits for it, since a refused SUBSCRIBE would come back as a push
 * nobody recognises; after it the connection reads raw (raw_read). */
static void push_auth_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    redis_conn *c = ac->data;
    redisReply *r = reply;
    if (!r || c->ac != ac || c->state != RC_HANDSHAKE)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        auth_reply(c, reply, NULL);
        return;
    }
    c->raw = true; /* nothing else waits for a hiredis callback */
    c->hooks.handshake(c->hooks.ctx, c);
}

/* AUTH and SELECT go first. On the command connection they are pipelined
 * with the owner's handshake: replies come in order, so a refusal fails the
 * connection before anything else is believed. */
static void handshake_start(redis_conn *c)
{
    const redis_url *u = c->url;
    if (u->password[0]) {
        const char *argv[3] = {"AUTH", u->user[0] ? u->user : u->password, u->password};
        size_t lens[3] = {4, strlen(argv[1]), strlen(argv[2])};
        int argc = u->user[0] ? 3 : 2;
        if (c->pubsub) {
            redisAsyncCommandArgv(c->ac, push_auth_reply, NULL, argc, argv, lens);
            return;
        }
        rc_send(c, argc, argv, lens, auth_reply, NULL);
    }
    if (u->db && !c->pubsub) { /* pub/sub channels are not per database */
        char db[16];
        snprintf(db, sizeof db, "%d", u->db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, strlen(db)};
        rc_send(c, 2, argv, lens, auth_reply, NULL);
    }
    c->raw = c->pubsub;
    c->hooks.handshake(c->hooks.ctx, c);
}

/* ---- asking a sentinel ------------------------------------------------------ */

static void sentinel_auth_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    redis_conn *c = ac->data;
    redisReply *r = reply;
    if (r && c->ac == ac && r->type == REDIS_REPLY_ERROR) {
        char why[160];
        snprintf(why, sizeof why, "sentinel AUTH refused: %s", r->str);
        rc_fail(c, why);
    }
}

/* SENTINEL get-master-addr-by-name answers [ip, port], or nil when the
 * sentinel does not know the master (yet). */
static void sentinel_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    redis_conn *c = ac->data;
    redisReply *r = reply;
    if (!r || c->ac != ac || !c->asking)
        return;
    int port = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING &&
        r->element[0]->len > 0 && r->element[0]->len < sizeof c->answer.host)
        port = atoi(r->element[1]->str);
    if (port <= 0 || port > 65535) {
        char why[200];
        snprintf(why, sizeof why, "sentinel does not know master %s%s%s", c->url->master_name,
                 r->type == REDIS_REPLY_ERROR ? ": " : "",
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
        rc_fail(c, why);
        return;
    }
    redis_hostport a = {.port = port};
    memcpy(a.host, r->element[0]->str, r->element[0]->len);
    if (strcmp(a.host, c->answer.host) != 0 || a.port != c->answer.port)
        log_info("redis %s: sentinel %s:%d says master %s is at %s:%d", c->name, c->target.host,
                 c->target.port, c->url->master_name, a.host, a.port);
    c->answer = a;
    c->have_answer = true;
    /* Close the sentinel connection (hiredis frees it once this callback
     * returns) and connect to the master from a timer, when the watch no
     * longer belongs to the closing context. */
    c->ac = NULL;
    redisAsyncFree(ac);
    c->w.fd = -1;
    c->w.events = 0;
    c->state = RC_DOWN;
    c->asking = false;
    timer_stop(c->l, &c->deadline);
    timer_start(c->l, &c->retry, 0);
}

static void sentinel_ask(redis_conn *c)
{
    const redis_url *u = c->url;
    if (u->sentinel_password[0]) {
        const char *argv[2] = {"AUTH", u->sentinel_password};
        size_t lens[2] = {4, strlen(u->sentinel_password)};
        redisAsyncCommandArgv(c->ac, sentinel_auth_reply, NULL, 2, argv, lens);
    }
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", u->master_name};
    size_t lens[3] = {8, 23, strlen(u->master_name)};
    redisAsyncCommandArgv(c->ac, sentinel_reply, NULL, 3, argv, lens);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_conn *c = ac->data;
    if (c->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context right after this callback, without
         * calling on_disconnect. */
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr);
        c->ac = NULL;
        conn_lost(c, why);
        return;
    }
    c->state = RC_HANDSHAKE;
    if (c->asking)
        sentinel_ask(c);
    else
        handshake_start(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    redis_conn *c = ac->data;
    if (c->ac != ac)
        return;
    char why[128];
    snprintf(why, sizeof why, "%s", ac->err ? ac->errstr : "closed");
    c->ac = NULL;
    conn_lost(c, why);
}

void rc_ready(redis_conn *c)
{
    if (c->state != RC_HANDSHAKE)
        return;
    c->state = RC_READY;
    c->failures = 0;
    c->connects++;
    timer_stop(c->l, &c->deadline);
    if (c->hooks.up)
        c->hooks.up(c->hooks.ctx, c);
}

void rc_retry_now(redis_conn *c)
{
    if (c->state == RC_DOWN && c->ac == NULL)
        timer_start(c->l, &c->retry, 0);
}

unsigned rc_retry_after_ms(const redis_conn *c)
{
    if (c->state == RC_READY)
        return 1000;
    uint64_t now = loop_now(c->l);
    return c->next_attempt > now ? (unsigned)(c->next_attempt - now) + 500 : 1000;
}

void rc_init(redis_conn *c, loop *l, const redis_url *url, const char *name, unsigned timeout_ms,
             bool pubsub, const redis_conn_hooks *hooks)
{
    *c = (redis_conn){.l = l, .url = url, .name = name, .timeout_ms = timeout_ms,
                      .pubsub = pubsub, .hooks = *hooks};
    c->w.fd = -1;
    c->retry.cb = retry_cb;
    c->deadline.cb = deadline_cb;
    c->watchdog.cb = watchdog_cb;
    c->lookup_poll.cb = lookup_poll_cb;
}

void rc_start(redis_conn *c)
{
    conn_connect(c);
    if (!c->pubsub)
        timer_start(c->l, &c->watchdog, 100);
}

void rc_free(redis_conn *c)
{
    memset(&c->hooks, 0, sizeof c->hooks);
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    if (ac)
        redisAsyncFree(ac);
    timer_stop(c->l, &c->retry);
    timer_stop(c->l, &c->deadline);
    timer_stop(c->l, &c->watchdog);
    timer_stop(c->l, &c->lookup_poll);
    if (c->lookup) {
        /* A lookup that cannot be cancelled keeps pointers into its block:
         * leave it to the resolver (the process is exiting). */
        int rc = gai_cancel(&c->lookup->cb);
        if (rc == EAI_CANCELED || rc == EAI_ALLDONE)
            lookup_free(c->lookup);
        c->lookup = NULL;
    }
}
