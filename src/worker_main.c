/* worker_main.c - pushwire-worker: the FastCGI worker behind nginx.
 *
 * One single-threaded epoll loop: accepts requests with libfcgi, publishes
 * through the broker, holds long-polls and EventSource streams as hub
 * subscribers, and answers with raw FastCGI records. Everything slow
 * (Redis) is asynchronous; the loop never waits on a client.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "auth.h"
#include "broker.h"
#include "buf.h"
#include "conn.h"
#include "daemon.h"
#include "envelope.h"
#include "fcgi_proto.h"
#include "fcgi_record.h"
#include "hub.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "net.h"
#include "opts.h"
#include "outq.h"
#include "redis_url.h"
#include "subset.h"

#define SSE_QUEUE_MAX   (4u << 20) /* an EventSource client this far behind is cut off */
#define SSE_RESUME_MAX  (256u << 10)
/* Stop reading a connection while this much waits to be written to it (a
 * peer that sends management records without reading the replies). */
#define READ_PAUSE      (256u << 10)

enum req_kind { K_NONE, K_POLL, K_SSE, K_PUBLISH, K_HEALTH };
/* A connection from nginx carries one request at a time: IDLE (kept alive,
 * waiting for the next BEGIN_REQUEST), ACTIVE (being answered or held),
 * WRITING (the final answer is queued), DONE (closed, reaped soon). */
enum req_phase { P_IDLE, P_ACTIVE, P_WRITING, P_DONE };

typedef struct req {
    conn c; /* socket, queue, lifetime (conn.h); a reply from Redis holds it */
    subset subs; /* the channels a long-poll or stream follows */
    bool multi;  /* several channels: answers and event ids in the list form */
    timer tmo; /* long-poll timeout, or EventSource heartbeat */
    timer exp; /* EventSource: the end of the token that opened a private channel */
    fcgi_parser fp;
    struct req *prev, *next;
    uint16_t reqid;
    uint8_t kind;
    uint8_t phase;
    bool keep_conn;    /* nginx keeps the connection for the next request */
    bool sse_paused;   /* a batch with more waits for the queue to drain */
    bool no_wait;      /* answer as soon as the poll is up to date (timeout=0, stopping, late) */
    bool late;         /* past its timeout, waiting for the hub to confirm it is up to date */
    bool sse_head;     /* EventSource headers not sent yet (start point not fixed) */
    char *pub_channel; /* channel info: for the answer */
    struct list_access *list; /* GET /channels: who asks */
} req;

static struct config {
    daemon_common c;
    const char *listen;
    const char *publish_token;
    bool publish_requires_token;
    unsigned max_subs;
    unsigned history, max_content, poll_timeout, max_poll_timeout;
    unsigned sse_heartbeat, max_requests;
} cfg = {
    .c = DAEMON_COMMON_DEFAULTS,
    .listen = "127.0.0.1:9000",
    .publish_token = "",
    .history = 1000,
    .max_content = 65536,
    .poll_timeout = 30,
    .max_poll_timeout = 120,
    .sse_heartbeat = 15,
    .max_requests = 19000,
    .max_subs = 100,
};

static struct worker {
    daemon_rt d;
    broker *b;
    size_t nidle; /* kept-alive connections without a request */
    req *reqs;
    size_t nreqs;
    api_limits limits;
    size_t max_body;
    /* The last long-poll timeout answer, reused while it stays current. */
    struct {
        char channel[PW_CHANNEL_MAX + 1];
        char epoch[PW_EPOCH_MAX + 1];
        uint64_t newest;
        rbuf *records;
    } tcache;
    struct {
        uint64_t requests, polls_answered, poll_timeouts, client_aborts;
        uint64_t publishes_ok, publishes_dup, publishes_failed, sse_cutoffs;
        uint64_t auth_refused, csrf_refused, sse_expired;
        uint64_t status[6]; /* 2xx .. 5xx, by hundreds; [0] unused */
        size_t polls_held, sse_streams;
    } st;
} W;

static void req_close(req *r);

static req *req_of(conn *c) { return (req *)(void *)c; }

/* ---- lifetime (conn.h) and responses -------------------------------------------- */

static void req_free(conn *c)
{
    req *r = req_of(c);
    subset_clear(NULL, W.d.l, &r->subs);
    free(r->pub_channel);
    free(r->list);
    fcgi_parser_free(&r->fp);
    free(r);
}

static void req_unlink(req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (W.reqs == r)
        W.reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    W.nreqs--;
}

static void count_status(int status)
{
    int k = status / 100;
    if (k >= 2 && k <= 5)
        W.st.status[k]++;
}

/* The connection is closed: release everything but the memory (a publish
 * or health call still in Redis holds that until its reply). */
static void req_closed(conn *c)
{
    req *r = req_of(c);
    if (r->kind == K_POLL && r->phase == P_ACTIVE)
        W.st.polls_held--;
    if (r->kind == K_SSE)
        W.st.sse_streams--;
    if (r->phase == P_IDLE)
        W.nidle--;
    r->phase = P_DONE;
    subset_detach(W.d.h, W.d.l, &r->subs);
    timer_stop(W.d.l, &r->tmo);
    timer_stop(W.d.l, &r->exp);
    req_unlink(r);
    daemon_maybe_stop(&W.d);
    if (W.nreqs < cfg.max_requests * 9 / 10)
        daemon_accept_resume(&W.d);
}

static void req_close(req *r) { conn_close(&r->c); }

/* The final answer is written: keep the connection for nginx's next
 * request when it asked for that, else close. */
static void req_done(req *r)
{
    if (!r->keep_conn || W.d.stopping) {
        req_close(r);
        return;
    }
    if (r->kind == K_SSE)
        W.st.sse_streams--;
    timer_stop(W.d.l, &r->tmo);
    timer_stop(W.d.l, &r->exp);
    subset_clear(W.d.h, W.d.l, &r->subs);
    free(r->pub_channel);
    r->pub_channel = NULL;
    free(r->list);
    r->list = NULL;
    r->kind = K_NONE;
    r->phase = P_IDLE;
    r->no_wait = r->late = r->sse_paused = r->sse_head = false;
    W.nidle++;
}

/* Write what is queued (on_drained finishes a request whose final answer
 * is fully sent). */
static void req_flush(req *r) { conn_flush(&r->c); }

static void req_drained(conn *c)
{
    req *r = req_of(c);
    if (r->phase == P_WRITING) {
        req_done(r);
        return;
    }
    if (r->kind == K_SSE && r->sse_paused && r->phase == P_ACTIVE) {
        r->sse_paused = false;
        subset_resume(W.d.h, &r->subs);
    }
}

static void req_read(conn *c);

static const conn_ops req_ops = {
    .on_read = req_read,
    .on_drained = req_drained,
    .on_close = req_closed,
    .on_free = req_free,
};

/* Queue the final answer (complete FastCGI records) and send it. */
static void req_finish(req *r, rbuf *records, int status)
{
    if (r->kind == K_POLL && r->phase == P_ACTIVE)
        W.st.polls_held--;
    r->phase = P_WRITING;
    timer_stop(W.d.l, &r->tmo);
    count_status(status);
    conn_push(&r->c, records);
    req_flush(r);
}

static void head_printf(buf *h, int status, const char *ctype, size_t len, const char *extra)
{
    buf_printf(h,
               "Status: %d %s\r\nContent-Type: %s\r\nCache-Control: no-store\r\n"
               "Content-Length: %zu\r\n%s\r\n",
               status, api_status_text(status), ctype, len, extra ? extra : "");
}

static rbuf *json_records(uint16_t reqid, int status, const buf *body, const char *extra)
{
    buf head = BUF_INIT;
    head_printf(&head, status, "application/json", body->len, extra);
    rbuf *r = fcgi_rec_response(reqid, head.data, head.len, body->data, body->len);
    buf_free(&head);
    return r;
}

static void req_json(req *r, int status, const buf *body, const char *extra)
{
    rbuf *rec = json_records(r->reqid, status, body, extra);
    req_finish(r, rec, status);
    rbuf_unref(rec);
}

static void req_error(req *r, int status, const char *msg, const char *extra)
{
    buf body = BUF_INIT;
    env_error(&body, msg);
    req_json(r, status, &body, extra);
    buf_free(&body);
}

/* The Retry-After header line of a 503: when the broker expects Redis back. */
static void retry_after(char *extra, size_t cap)
{
    unsigned secs = W.b ? (broker_retry_after_ms(W.b) + 999) / 1000 : 1;
    snprintf(extra, cap, "Retry-After: %u\r\n", secs ? secs : 1);
}

static void req_unavailable(req *r, const char *msg)
{
    char extra[64];
    retry_after(extra, sizeof extra);
    req_error(r, 503, msg, extra);
}

/* ---- long-poll and EventSource deliveries ------------------------------------ */

typedef struct batch_cache {
    rbuf *poll; /* whole long-poll answer, request id 1 */
    rbuf *sse;  /* EventSource events as STDOUT records, request id 1 */
} batch_cache;

static void batch_cache_free(void *p)
{
    batch_cache *c = p;
    rbuf_unref(c->poll);
    rbuf_unref(c->sse);
    free(c);
}

static batch_cache *cache_of(hub_batch *b)
{
    if (b->cache && b->cache_free == batch_cache_free)
        return b->cache;
    if (b->cache)
        return NULL; /* another transport's; encode without caching */
    b->cache = xcalloc(1, sizeof(batch_cache));
    b->cache_free = batch_cache_free;
    return b->cache;
}

/* Queue the EventSource headers if they are still held. */
static void sse_open(req *r)
{
    if (!r->sse_head)
        return;
    r->sse_head = false;
    static const char head[] = "Status: 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Cache-Control: no-store\r\nX-Accel-Buffering: no\r\n\r\n"
                               "retry: 2000\n\n";
    buf rec = BUF_INIT;
    fcgi_rec_stdout(&rec, r->reqid, head, sizeof head - 1);
    rbuf *rb = rbuf_from_buf(&rec);
    buf_free(&rec);
    conn_push(&r->c, rb);
    rbuf_unref(rb);
    count_status(200);
    timer_start(W.d.l, &r->tmo, cfg.sse_heartbeat * 1000);
}

static rbuf *poll_records(uint16_t reqid, const hub_batch *b)
{
    buf body = BUF_INIT;
    env_status(&body, b->channel, b->epoch, b->msgs, b->n, b->reset, b->more, b->newest_id,
               b->newest_json);
    buf_putc(&body, '\n');
    rbuf *r = json_records(reqid, 200, &body, NULL);
    buf_free(&body);
    return r;
}

/* One event id: "EPOCH:ID" on a single-channel stream; on a stream of
 * several channels the position list (api.h) of every channel, others
 * being the positions of the rest. */
static void sse_id(buf *ev, const char *others, const hub_batch *b, uint64_t id)
{
    if (!others)
        buf_printf(ev, "id: %s:%llu\n", b->epoch, (unsigned long long)id);
    else
        buf_printf(ev, "id: %s%s%s=%s:%llu\n", others, others[0] ? "," : "", b->channel, b->epoch,
                   (unsigned long long)id);
}

/* others: NULL for a single-channel stream (the same records for every
 * stream of the channel), else the positions of the stream's other
 * channels. */
static rbuf *sse_records(uint16_t reqid, const hub_batch *b, const char *others)
{
    buf ev = BUF_INIT, rec = BUF_INIT;
    if (b->reset) {
        /* Its id is where the replay starts, so that a browser reconnecting
         * right after it (Last-Event-ID) is neither reset again nor skips
         * the replay. */
        uint64_t newest = b->n ? b->msgs[b->n - 1]->id : b->newest_id;
        uint64_t from = b->n ? b->msgs[0]->id - 1 : b->newest_id;
        buf_puts(&ev, "event: reset\n");
        sse_id(&ev, others, b, from);
        buf_puts(&ev, "data: ");
        env_push_reset(&ev, b->channel, b->epoch, newest);
        buf_puts(&ev, "\n\n");
    }
    for (size_t i = 0; i < b->n; i++) {
        sse_id(&ev, others, b, b->msgs[i]->id);
        buf_puts(&ev, "data: ");
        env_push_message(&ev, b->channel, b->epoch, b->msgs[i]);
        buf_puts(&ev, "\n\n");
    }
    fcgi_rec_stdout(&rec, reqid, ev.data, ev.len);
    rbuf *r = rbuf_new(rec.data, rec.len);
    buf_free(&ev);
    buf_free(&rec);
    return r;
}

/* Append to body the idle answer of every channel of r but except that
 * the hub knows to be up to date; returns how many. */
static size_t idle_statuses(req *r, const csub *except, buf *body, bool comma)
{
    size_t k = 0;
    for (csub *cs = r->subs.head; cs; cs = cs->next) {
        const char *epoch;
        uint64_t newest;
        const rbuf *json;
        if (cs == except || !hub_sub_idle(&cs->sub, &epoch, &newest, &json))
            continue;
        if (comma || k)
            buf_putc(body, ',');
        env_status(body, cs->name, epoch, NULL, 0, false, false, newest, json);
        k++;
    }
    return k;
}

/* The answer of a long-poll on several channels: {"channels":[...]} with
 * b (when not NULL) and every channel that is up to date. */
static void poll_answer_multi(req *r, const csub *from, const hub_batch *b)
{
    buf body = BUF_INIT;
    buf_puts(&body, "{\"channels\":[");
    if (b)
        env_status(&body, b->channel, b->epoch, b->msgs, b->n, b->reset, b->more, b->newest_id,
                   b->newest_json);
    idle_statuses(r, from, &body, b != NULL);
    buf_puts(&body, "]}\n");
    subset_detach(W.d.h, W.d.l, &r->subs);
    req_json(r, 200, &body, NULL);
    buf_free(&body);
}

static void on_deliver(hub_sub *s, hub_batch *b)
{
    csub *cs = csub_of(s);
    req *r = cs->owner;
    batch_cache *c = r->reqid == 1 && !r->multi ? cache_of(b) : NULL;
    if (r->kind == K_POLL && r->multi) {
        W.st.polls_answered++;
        poll_answer_multi(r, cs, b);
        return;
    }
    if (r->kind == K_POLL) {
        rbuf *rec;
        if (c) {
            if (!c->poll)
                c->poll = poll_records(1, b);
            rec = rbuf_ref(c->poll);
        } else {
            rec = poll_records(r->reqid, b);
        }
        W.st.polls_answered++;
        req_finish(r, rec, 200);
        rbuf_unref(rec);
        return;
    }
    /* EventSource: append events; the stream stays open. A delivery fixes
     * the channel's start point too. */
    cs->confirmed = true;
    sse_open(r);
    /* As the relay does: a stream that has read (nearly) everything takes
     * one batch beyond the bound, and nothing more until it is written. */
    bool caught_up = conn_queued(&r->c) < SSE_QUEUE_MAX / 4;
    rbuf *rec;
    if (c) {
        if (!c->sse)
            c->sse = sse_records(1, b, NULL);
        rec = rbuf_ref(c->sse);
    } else if (r->multi) {
        buf others = BUF_INIT;
        buf_puts(&others, "");
        subset_positions(&r->subs, cs, &others);
        rec = sse_records(r->reqid, b, others.data);
        buf_free(&others);
    } else {
        rec = sse_records(r->reqid, b, NULL);
    }
    size_t queued = conn_push(&r->c, rec);
    rbuf_unref(rec);
    if (queued > SSE_QUEUE_MAX && !caught_up) {
        W.st.sse_cutoffs++;
        log_info("EventSource client too slow (%zu bytes queued): closing", queued);
        req_close(r); /* memory freed after the batch, as hub.h asks */
        return;
    }
    if (b->more || queued > SSE_QUEUE_MAX) {
        r->sse_paused = true;
        if (queued > SSE_QUEUE_MAX) {
            subset_pause(W.d.h, &r->subs);
        } else {
            cs->paused = true;
            hub_sub_pause(W.d.h, &cs->sub);
        }
    }
    req_flush(r);
    if (r->phase == P_ACTIVE && r->sse_paused && conn_queued(&r->c) < SSE_RESUME_MAX) {
        r->sse_paused = false;
        subset_resume(W.d.h, &r->subs);
    }
}

static bool poll_answer_idle(req *r, bool partial);

/* Whether every channel of r has had its start point fixed. */
static bool all_started(const req *r)
{
    for (const csub *cs = r->subs.head; cs; cs = cs->next)
        if (!cs->confirmed)
            return false;
    return true;
}

static void on_parked(hub_sub *s)
{
    csub *cs = csub_of(s);
    req *r = cs->owner;
    cs->confirmed = true;
    if (r->kind == K_SSE && r->sse_head) {
        if (all_started(r)) {
            sse_open(r);
            req_flush(r);
        }
    } else if (r->no_wait && r->phase == P_ACTIVE) {
        poll_answer_idle(r, false);
    }
}

static const hub_sub_ops poll_ops = {.deliver = on_deliver, .parked = on_parked};

/* Answer a held long-poll that saw nothing new, if the hub confirms it has
 * everything up to the channel's newest message: that message's id and
 * content, no messages. Otherwise (its read is still in flight, Redis is
 * slow or unreachable) answering with the newest id would move the client
 * past messages it never got: return false and keep it. The answer is the
 * same for every request of the channel until the channel moves on, so the
 * last one is kept. */
static bool poll_answer_idle(req *r, bool partial)
{
    if (r->multi) {
        /* Every channel up to date, or (partial: the grace is over) some. */
        size_t idle = 0;
        for (csub *cs = r->subs.head; cs; cs = cs->next) {
            const char *e;
            uint64_t nw;
            const rbuf *j;
            idle += hub_sub_idle(&cs->sub, &e, &nw, &j);
        }
        if (idle == 0 || (idle < r->subs.n && !partial))
            return false;
        W.st.poll_timeouts++;
        poll_answer_multi(r, NULL, NULL);
        return true;
    }
    csub *cs = r->subs.head;
    const char *epoch;
    uint64_t newest;
    const rbuf *json;
    if (!hub_sub_idle(&cs->sub, &epoch, &newest, &json))
        return false;
    char name[PW_CHANNEL_MAX + 1];
    snprintf(name, sizeof name, "%s", cs->name);
    hub_unsubscribe(W.d.h, &cs->sub);
    rbuf *rec;
    if (r->reqid == 1 && W.tcache.records && W.tcache.newest == newest &&
        !strcmp(W.tcache.channel, name) && !strcmp(W.tcache.epoch, epoch)) {
        rec = rbuf_ref(W.tcache.records);
    } else {
        hub_batch b = {.channel = name, .epoch = epoch, .newest_id = newest, .newest_json = json};
        rec = poll_records(r->reqid, &b);
        if (r->reqid == 1) {
            rbuf_unref(W.tcache.records);
            W.tcache.records = rbuf_ref(rec);
            W.tcache.newest = newest;
            snprintf(W.tcache.channel, sizeof W.tcache.channel, "%s", name);
            snprintf(W.tcache.epoch, sizeof W.tcache.epoch, "%s", epoch);
        }
    }
    W.st.poll_timeouts++;
    req_finish(r, rec, 200);
    rbuf_unref(rec);
    return true;
}

/* The poll's time is up: answer it if it is up to date; else give the hub
 * up to the Redis timeout more (answering the moment it is), then 503 with
 * Retry-After: the client polls again from the same since. */
static void poll_timeout(req *r)
{
    if (poll_answer_idle(r, r->late))
        return;
    if (!r->late) {
        r->late = r->no_wait = true;
        timer_start(W.d.l, &r->tmo, cfg.c.redis_timeout);
        return;
    }
    subset_detach(W.d.h, W.d.l, &r->subs);
    req_unavailable(r, "Redis is unreachable or too slow; retry later");
}

static void tmo_cb(loop *l, timer *t)
{
    req *r = (req *)((char *)t - offsetof(req, tmo));
    if (r->phase != P_ACTIVE)
        return;
    if (r->kind == K_POLL) {
        poll_timeout(r);
        return;
    }
    if (r->sse_head) {
        sse_open(r); /* Redis could not tell in time: open anyway */
        req_flush(r);
        return;
    }
    /* EventSource heartbeat: a comment line keeps proxies from timing out. */
    buf rec = BUF_INIT;
    fcgi_rec_stdout(&rec, r->reqid, ": hb\n\n", 6);
    rbuf *hb = rbuf_from_buf(&rec);
    buf_free(&rec);
    conn_push(&r->c, hb);
    rbuf_unref(hb);
    req_flush(r);
    if (r->phase == P_ACTIVE)
        timer_start(l, t, cfg.sse_heartbeat * 1000);
}

/* End an EventSource stream: leave the hub, send the headers if they are
 * still held, then events[0..len) (may be empty) and the end of the request. */
static void sse_end(req *r, const char *events, size_t len)
{
    subset_detach(W.d.h, W.d.l, &r->subs);
    sse_open(r);
    buf rec = BUF_INIT;
    if (len)
        fcgi_rec_stdout(&rec, r->reqid, events, len);
    fcgi_rec_end(&rec, r->reqid);
    rbuf *rb = rbuf_from_buf(&rec);
    buf_free(&rec);
    req_finish(r, rb, 0);
    rbuf_unref(rb);
}

/* The token that opened a private EventSource stream has expired: say so
 * (event "expired") and end the stream. The browser reconnects by itself;
 * with the same token it then gets 401, with a refreshed cookie it goes on. */
static void exp_cb(loop *l, timer *t)
{
    (void)l;
    req *r = (req *)((char *)t - offsetof(req, exp));
    if (r->phase != P_ACTIVE || r->kind != K_SSE)
        return;
    buf ev = BUF_INIT;
    for (csub *cs = r->subs.head; cs; cs = cs->next) {
        if (!cs->expires)
            continue;
        buf_puts(&ev, "event: expired\ndata: ");
        env_expired(&ev, cs->name);
        buf_puts(&ev, "\n\n");
    }
    W.st.sse_expired++;
    sse_end(r, ev.data, ev.len);
    buf_free(&ev);
}

/* ---- request handlers ----------------------------------------------------------- */

#define WWW_AUTHENTICATE "WWW-Authenticate: Bearer realm=\"pushwire\"\r\n"

/* Whether the request may read channel (auth.h): answers 401/403 and
 * returns -1 when not. *expires: the token's end (0: no end, or public). */
static int authorize_read(req *r, const api_http *http, const char *channel, time_t *expires)
{
    const char *tok = NULL;
    size_t len = 0;
    auth_find_token(http->authorization, http->query, http->cookie, &tok, &len);
    auth_error e;
    if (auth_check_subscribe(cfg.c.auth, channel, tok, len, auth_now(), expires, &e) == 0)
        return 0;
    W.st.auth_refused++;
    buf body = BUF_INIT;
    env_channel_error(&body, e.message, channel);
    req_json(r, e.status, &body, e.status == 401 ? WWW_AUTHENTICATE : NULL);
    buf_free(&body);
    return -1;
}

/* Subscribe every channel of p (the entries are in r->subs); the first
 * delivery may answer a long-poll on the way. Answers 503 and returns -1
 * when the hub refuses one (--max-channels). */
static int subscribe_all(req *r, const api_poll *p)
{
    size_t i = 0;
    for (csub *cs = r->subs.head, *next; cs; cs = next, i++) {
        next = cs->next; /* read before: an answer frees the entries */
        const api_chan *ch = &p->chans[i];
        if (hub_subscribe(W.d.h, &cs->sub, cs->name, ch->has_since, ch->since, ch->epoch) < 0) {
            subset_detach(W.d.h, W.d.l, &r->subs);
            req_unavailable(r, "this worker follows too many channels (--max-channels); retry "
                               "later");
            return -1;
        }
        if (r->phase != P_ACTIVE)
            return 0; /* answered (and maybe the next request begun): next is gone */
    }
    return 0;
}

static void handle_poll(req *r, const api_http *http)
{
    static api_chan chans[API_SUBS_MAX];
    api_poll p;
    api_error err;
    if (api_parse_poll(http, &W.limits, &p, chans, cfg.max_subs, &err) < 0) {
        req_error(r, err.status, err.message, err.allow ? "Allow: GET\r\n" : NULL);
        return;
    }
    /* Every private channel needs the request's token; the stream ends
     * with the earliest end of a token that opened one. */
    time_t end = 0;
    for (size_t i = 0; i < p.n; i++) {
        time_t e = 0;
        if (authorize_read(r, http, p.chans[i].channel, &e) < 0)
            return;
        if (e && (!end || e < end))
            end = e;
    }
    if (W.d.stopping) {
        req_unavailable(r, "server is shutting down");
        return;
    }
    uint64_t left = end ? auth_ms_until(end) : 0; /* 0: no end */
    r->multi = p.multi;
    for (size_t i = 0; i < p.n; i++) {
        csub *cs = subset_add(&r->subs, r, &poll_ops, p.event_stream, p.chans[i].channel);
        cs->expires = auth_is_private(cfg.c.auth, cs->name) ? end : 0;
    }
    if (p.event_stream) {
        /* The headers (and so the browser's onopen) wait until the hub has
         * fixed the stream's start point: a message the page publishes from
         * onopen is then never skipped. If Redis cannot tell within the
         * Redis timeout, the stream opens anyway. */
        r->kind = K_SSE;
        r->sse_head = true;
        W.st.sse_streams++;
        timer_start(W.d.l, &r->tmo, cfg.c.redis_timeout);
        if (left)
            timer_start(W.d.l, &r->exp, left);
        subscribe_all(r, &p);
        return;
    }
    r->kind = K_POLL;
    r->no_wait = p.timeout == 0;
    r->late = p.timeout == 0; /* its timer below is already the grace period */
    W.st.polls_held++;
    /* With timeout=0 the answer comes when the poll is up to date (on_parked)
     * or, if Redis cannot tell, a 503 after the Redis timeout. */
    uint64_t hold = p.timeout ? (uint64_t)p.timeout * 1000 : cfg.c.redis_timeout;
    /* A hold never outlasts the token: at its end the poll is answered as
     * at a timeout, and the next one with the same token gets its 401. */
    if (p.timeout && left && left < hold)
        hold = left;
    timer_start(W.d.l, &r->tmo, hold);
    subscribe_all(r, &p);
}

/* One POST /chat in flight: every message of it sent to Redis one after
 * the other (pipelined on the channel's node connection, so one channel's
 * messages keep their order), answered once the last one is back. Each
 * message sent holds the connection (conn_hold); the last callback answers
 * (unless the client left) and frees this. */
typedef struct pub_item {
    struct pub_state *ps;
    char channel[PW_CHANNEL_MAX + 1];
    char epoch[PW_EPOCH_MAX + 1];
    uint64_t id;
    int err; /* BROKER_OK, or why it was not stored */
} pub_item;

typedef struct pub_state {
    req *r;
    size_t n, pending;
    bool batch;
    pub_item items[];
} pub_state;

static const char *pub_errmsg(int err)
{
    return err == BROKER_EUNAVAIL ? "Redis is unreachable; retry with the same Idempotency-Key"
                                  : "Redis refused the message; retry later";
}

static void publish_answer(pub_state *ps)
{
    req *r = ps->r;
    int failed = 0;
    for (size_t i = 0; i < ps->n; i++)
        if (ps->items[i].err && !failed)
            failed = ps->items[i].err;
    if (!ps->batch) {
        if (failed) {
            req_unavailable(r, pub_errmsg(failed));
            return;
        }
        buf body = BUF_INIT;
        env_publish_ok(&body, ps->items[0].id, ps->items[0].channel, ps->items[0].epoch);
        req_json(r, 200, &body, NULL);
        buf_free(&body);
        return;
    }
    env_pub_result *res = xcalloc(ps->n, sizeof *res);
    for (size_t i = 0; i < ps->n; i++) {
        const pub_item *it = &ps->items[i];
        res[i] = (env_pub_result){.channel = it->channel, .error = it->err ? pub_errmsg(it->err) : NULL,
                                  .id = it->id, .epoch = it->epoch};
    }
    buf body = BUF_INIT;
    env_publish_results(&body, res, ps->n);
    free(res);
    if (failed) { /* some stored, some not: the results say which; a retry with the key repeats none */
        char extra[64];
        retry_after(extra, sizeof extra);
        req_json(r, 503, &body, extra);
    } else
        req_json(r, 200, &body, NULL);
    buf_free(&body);
}

static void publish_done(void *arg, const broker_pub_result *res)
{
    pub_item *it = arg;
    pub_state *ps = it->ps;
    req *r = ps->r;
    it->err = res->err;
    if (res->err)
        W.st.publishes_failed++;
    else {
        it->id = res->id;
        snprintf(it->epoch, sizeof it->epoch, "%s", res->epoch);
        if (res->duplicate)
            W.st.publishes_dup++;
        else
            W.st.publishes_ok++;
    }
    if (--ps->pending == 0) {
        if (!conn_is_closed(&r->c)) /* else the client left; nothing to answer */
            publish_answer(ps);
        free(ps);
    }
    conn_release(&r->c);
}

static void handle_publish(req *r, const api_http *http, bool too_large)
{
    api_error err;
    if (api_check_publish_origin(http, cfg.c.origins, &err) < 0) {
        W.st.csrf_refused++;
        log_info("refused publish from origin %s (Sec-Fetch-Site %s, host %s)",
                 http->origin ? http->origin : "-",
                 http->sec_fetch_site ? http->sec_fetch_site : "-", http->host ? http->host : "-");
        req_error(r, err.status, err.message, NULL);
        return;
    }
    /* Who may publish depends on the channel, so most of the check waits
     * for the body; a missing credential that every channel needs is
     * refused before the body is looked at. */
    const char *tok;
    size_t tl;
    if ((cfg.publish_token[0] || cfg.publish_requires_token) &&
        !auth_find_token(http->authorization, http->query, http->cookie, &tok, &tl)) {
        W.st.auth_refused++;
        req_error(r, 401, "publishing requires Authorization: Bearer <token>", WWW_AUTHENTICATE);
        return;
    }
    if (too_large) {
        req_error(r, 413, "content too large", NULL);
        return;
    }
    api_publish p;
    if (api_parse_publish(http, &W.limits, &p, &err) < 0) {
        req_error(r, err.status, err.message, err.allow ? "Allow: POST\r\n" : NULL);
        return;
    }
    /* Every channel of a batch is authorized before anything is stored. */
    for (size_t i = 0; i < p.n; i++) {
        if (i && !strcmp(p.msgs[i].channel, p.msgs[i - 1].channel))
            continue;
        auth_error ae;
        if (auth_check_publish(cfg.c.auth, p.msgs[i].channel, cfg.publish_token,
                               cfg.publish_requires_token, http->authorization, http->query,
                               http->cookie, auth_now(), &ae) < 0) {
            api_publish_free(&p);
            W.st.auth_refused++;
            req_error(r, ae.status, ae.message, ae.status == 401 ? WWW_AUTHENTICATE : NULL);
            return;
        }
    }
    if (W.d.stopping) {
        api_publish_free(&p);
        req_unavailable(r, "server is shutting down");
        return;
    }
    pub_state *ps = xcalloc(1, sizeof *ps + p.n * sizeof(pub_item));
    ps->r = r;
    ps->n = p.n;
    ps->batch = p.batch;
    r->kind = K_PUBLISH;
    bool unready = false; /* once Redis refuses one, the rest is not sent */
    buf json = BUF_INIT;
    for (size_t i = 0; i < p.n; i++) {
        pub_item *it = &ps->items[i];
        it->ps = ps;
        strcpy(it->channel, p.msgs[i].channel);
        if (!unready) {
            char key[PW_IDEM_KEY_MAX + 16];
            api_publish_idem_key(&p, i, key, sizeof key);
            buf_reset(&json);
            env_json_string(&json, p.msgs[i].content, p.msgs[i].content_len);
            unready = broker_publish(W.b, it->channel, json.data, json.len, key[0] ? key : NULL,
                                     publish_done, it) < 0;
        }
        if (unready) {
            it->err = BROKER_EUNAVAIL;
            W.st.publishes_failed++;
        } else {
            ps->pending++;
            conn_hold(&r->c); /* publish_done releases it */
        }
    }
    buf_free(&json);
    api_publish_free(&p);
    if (ps->pending == 0) { /* nothing was sent */
        publish_answer(ps);
        free(ps);
    }
}

/* /healthz: Redis reachable from this worker, and every process that
 * heartbeats into Redis (workers, relays) alive. 503 names what is down. */
static void health_answer(req *r, bool redis_ok, const broker_procs_result *pr)
{
    buf body = BUF_INIT;
    bool cmd = W.b && broker_cmd_ready(W.b), sub = W.b && broker_sub_ready(W.b);
    bool ok = redis_ok && cmd && sub;
    static const char *const kinds[] = {"worker", "relay"};
    buf_printf(&body, "{\"redis\":{\"commands\":%s,\"pubsub\":%s}", cmd ? "true" : "false",
               sub ? "true" : "false");
    for (int k = 0; k < 2; k++) {
        size_t alive = 0, down = 0, kl = strlen(kinds[k]);
        buf_printf(&body, ",\"%ss\":{\"down\":[", kinds[k]);
        for (size_t i = 0; pr && i < pr->n; i++) {
            const broker_proc *p = &pr->procs[i];
            if (strncmp(p->name, kinds[k], kl) != 0 || p->name[kl] != ':')
                continue;
            if (p->alive) {
                alive++;
                continue;
            }
            if (down++)
                buf_putc(&body, ',');
            env_json_string(&body, p->name + kl + 1, strlen(p->name + kl + 1));
            ok = false;
        }
        buf_printf(&body, "],\"alive\":%zu}", alive);
    }
    buf_printf(&body, ",\"status\":\"%s\"}\n", ok ? "ok" : "down");
    if (ok)
        req_json(r, 200, &body, NULL);
    else
        req_json(r, 503, &body, "Retry-After: 1\r\n");
    buf_free(&body);
}

static void health_done(void *arg, const broker_procs_result *res)
{
    req *r = arg;
    if (!conn_is_closed(&r->c))
        health_answer(r, res->err == BROKER_OK, res->err == BROKER_OK ? res : NULL);
    conn_release(&r->c);
}

static void handle_health(req *r)
{
    r->kind = K_HEALTH;
    if (!broker_cmd_ready(W.b) || broker_procs(W.b, health_done, r) < 0) {
        health_answer(r, false, NULL);
        return;
    }
    conn_hold(&r->c); /* health_done releases it */
}

/* ---- channel info (GET /channels/NAME, GET /channels) ------------------------------ */

/* How fresh the subscriber counts are: each process writes its own every
 * heartbeat; a process that died stops counting once its heartbeat has
 * expired. */
static unsigned presence_age_ms(void) { return cfg.c.heartbeat_ms; }

static void info_done(void *arg, const broker_info_result *res)
{
    req *r = arg;
    if (!conn_is_closed(&r->c)) {
        if (res->err) {
            req_unavailable(r, "Redis is unreachable; retry later");
        } else {
            buf body = BUF_INIT;
            buf_puts(&body, "{\"channel\":");
            env_json_string(&body, r->pub_channel, strlen(r->pub_channel));
            buf_puts(&body, ",\"epoch\":");
            env_json_string(&body, res->epoch, strlen(res->epoch));
            buf_printf(&body,
                       ",\"id\":%llu,\"retained\":%llu,\"subscribers\":%llu,"
                       "\"processes\":%llu,\"fresh_ms\":%u}\n",
                       (unsigned long long)res->newest, (unsigned long long)res->retained,
                       (unsigned long long)res->subscribers, (unsigned long long)res->processes,
                       presence_age_ms());
            req_json(r, 200, &body, NULL);
            buf_free(&body);
        }
    }
    conn_release(&r->c);
}

/* The list is the publish side's: with a --publish-token (or
 * --publish-requires-token) only a request bearing that token or a token
 * that may publish sees it; a private channel is listed only to the shared
 * token or to a token that may publish to it. */
typedef struct list_access {
    bool all;          /* the shared publish token */
    auth_token *token; /* a verified token, or NULL */
} list_access;

static void list_done(void *arg, const broker_list_result *res)
{
    req *r = arg;
    list_access *acc = r->list;
    if (!conn_is_closed(&r->c)) {
        if (res->err) {
            auth_token_free(acc->token);
            acc->token = NULL;
            req_unavailable(r, "Redis is unreachable; retry later");
        } else {
            buf body = BUF_INIT;
            buf_puts(&body, "{\"channels\":[");
            size_t k = 0;
            for (size_t i = 0; i < res->n; i++) {
                const char *name = res->channels[i].name;
                bool private = auth_is_private(cfg.c.auth, name);
                if (!acc->all && private &&
                    !(acc->token && auth_token_allows(acc->token, AUTH_PUBLISH, name)))
                    continue;
                buf_puts(&body, k++ ? ",{\"channel\":" : "{\"channel\":");
                env_json_string(&body, name, strlen(name));
                buf_printf(&body, ",\"subscribers\":%llu}",
                           (unsigned long long)res->channels[i].subscribers);
            }
            buf_printf(&body, "],\"processes\":%llu,\"fresh_ms\":%u}\n",
                       (unsigned long long)res->processes, presence_age_ms());
            auth_token_free(acc->token); /* answering may free acc */
            acc->token = NULL;
            req_json(r, 200, &body, NULL);
            buf_free(&body);
        }
    }
    if (r->list) {
        auth_token_free(r->list->token);
        r->list->token = NULL;
    }
    conn_release(&r->c);
}

static void handle_channels(req *r, const api_http *http)
{
    if (!http->method || strcmp(http->method, "GET") != 0) {
        req_error(r, 405, "method not allowed: use GET", "Allow: GET\r\n");
        return;
    }
    const char *path = http->path;
    r->kind = K_HEALTH; /* a one-shot Redis call, like /healthz */
    if (strcmp(path, "/channels") != 0) {
        const char *name = path + 10;
        if (!api_channel_valid(name, strlen(name))) {
            req_error(r, 400, "invalid channel: use 1-64 characters of A-Z a-z 0-9 _ . : -",
                      NULL);
            return;
        }
        time_t end;
        if (authorize_read(r, http, name, &end) < 0)
            return;
        r->pub_channel = xstrndup(name, strlen(name));
        if (broker_channel_info(W.b, name, info_done, r) < 0) {
            req_unavailable(r, "Redis is unreachable; retry later");
            return;
        }
        conn_hold(&r->c); /* info_done releases it */
        return;
    }
    list_access acc = {0};
    const char *tok;
    size_t tl;
    bool found = auth_find_token(http->authorization, http->query, http->cookie, &tok, &tl);
    if (found && cfg.publish_token[0]) {
        api_error e;
        acc.all = api_check_publish_auth(http->authorization, cfg.publish_token, &e) == 0;
    }
    if (found && !acc.all) {
        auth_error e;
        acc.token = auth_token_verify(cfg.c.auth, tok, tl, auth_now(), &e);
        if (!acc.token) {
            W.st.auth_refused++;
            req_error(r, cfg.publish_token[0] && !auth_has_keys(cfg.c.auth) ? 403 : e.status,
                      cfg.publish_token[0] && !auth_has_keys(cfg.c.auth) ? "wrong publish token"
                                                                        : e.message,
                      NULL);
            return;
        }
    }
    if ((cfg.publish_token[0] || cfg.publish_requires_token) && !acc.all && !acc.token) {
        W.st.auth_refused++;
        req_error(r, 401, "listing channels requires the publish token", WWW_AUTHENTICATE);
        return;
    }
    list_access *keep = xcalloc(1, sizeof *keep);
    *keep = acc;
    r->list = keep; /* freed with the request */
    if (broker_channel_list(W.b, list_done, r) < 0) {
        auth_token_free(keep->token);
        keep->token = NULL;
        req_unavailable(r, "Redis is unreachable; retry later");
        return;
    }
    conn_hold(&r->c); /* list_done releases it */
}

/* ---- connections from nginx ----------------------------------------------------- */

/* A complete request arrived on r: answer it or hold it. */
static void dispatch(req *r)
{
    fcgi_parser *fp = &r->fp;
    api_http http = {
        .method = fcgi_param(fp, FP_REQUEST_METHOD),
        .path = fcgi_param(fp, FP_DOCUMENT_URI),
        .query = fcgi_param(fp, FP_QUERY_STRING),
        .content_type = fcgi_param(fp, FP_CONTENT_TYPE),
        .accept = fcgi_param(fp, FP_HTTP_ACCEPT),
        .idempotency_key = fcgi_param(fp, FP_HTTP_IDEMPOTENCY_KEY),
        .authorization = fcgi_param(fp, FP_HTTP_AUTHORIZATION),
        .last_event_id = fcgi_param(fp, FP_HTTP_LAST_EVENT_ID),
        .cookie = fcgi_param(fp, FP_HTTP_COOKIE),
        .origin = fcgi_param(fp, FP_HTTP_ORIGIN),
        .host = fcgi_param(fp, FP_HTTP_HOST),
        .sec_fetch_site = fcgi_param(fp, FP_HTTP_SEC_FETCH_SITE),
        .body = fp->body.data ? fp->body.data : "",
        .body_len = fp->body.len,
    };
    W.st.requests++;
    W.nidle--;
    r->reqid = fp->reqid;
    r->keep_conn = fp->keep_conn;
    r->phase = P_ACTIVE;
    r->kind = K_NONE;
    if (log_current_level >= LOG_DEBUG) {
        char q[1024];
        log_debug("%s %s?%s", http.method ? http.method : "-", http.path ? http.path : "-",
                  auth_redact_query(http.query ? http.query : "", q, sizeof q));
    }
    switch (api_route(http.path)) {
    case ROUTE_CHAT:
        handle_publish(r, &http, fp->body_too_large);
        break;
    case ROUTE_STATUS:
        handle_poll(r, &http);
        break;
    case ROUTE_HEALTHZ:
        handle_health(r);
        break;
    case ROUTE_CHANNELS:
        handle_channels(r, &http);
        break;
    default:
        req_error(r, 404, "not found", NULL);
        break;
    }
    /* Nothing of the request is needed any more: a held request keeps only
     * its hub subscription, not the parameters or the body. */
    if (r->phase != P_DONE)
        fcgi_parser_next(fp);
}

/* The client (or nginx) went away: close now; a reply still in Redis
 * finds the request closed (conn_hold keeps its memory). */
static void req_gone(req *r)
{
    if (r->phase == P_ACTIVE)
        W.st.client_aborts++;
    req_close(r);
}

static void req_read(conn *c)
{
    req *r = req_of(c);
    uint8_t data[65536];
    for (;;) {
        ssize_t n = conn_read(c, data, sizeof data);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            req_gone(r); /* EOF (nginx closed the connection) or an error */
            return;
        }
        size_t off = 0;
        while (off < (size_t)n && !conn_is_closed(c)) {
            fcgi_ev ev;
            off += fcgi_parser_feed(&r->fp, data + off, (size_t)n - off, &ev);
            switch (ev.type) {
            case FCGI_EV_NONE:
                break;
            case FCGI_EV_REQUEST:
                if (r->phase != P_IDLE) {
                    log_warn("FastCGI request on a busy connection: closing it");
                    req_close(r);
                    return;
                }
                dispatch(r);
                break;
            case FCGI_EV_ABORT:
                req_gone(r);
                return;
            case FCGI_EV_MANAGEMENT: {
                rbuf *rb = rbuf_new(ev.reply, ev.reply_len);
                conn_push(c, rb);
                rbuf_unref(rb);
                req_flush(r);
                break;
            }
            case FCGI_EV_ERROR:
                log_warn("FastCGI protocol error: %s; closing the connection", ev.error);
                req_close(r);
                return;
            }
        }
        if (conn_is_closed(c) || (size_t)n < sizeof data)
            return;
    }
}

/* A new connection from nginx (non-blocking fd). */
static void req_adopt(int fd)
{
    req *r = xcalloc(1, sizeof *r);
    conn_init(&r->c, W.d.l, fd, &req_ops, READ_PAUSE);
    r->tmo.cb = tmo_cb;
    r->exp.cb = exp_cb;
    r->phase = P_IDLE;
    fcgi_parser_init(&r->fp, 65536, W.max_body);
    r->next = W.reqs;
    if (W.reqs)
        W.reqs->prev = r;
    W.reqs = r;
    W.nreqs++;
    W.nidle++;
    if (conn_start(&r->c) < 0) {
        log_error("epoll_ctl: %s", strerror(errno));
        req_close(r);
        return;
    }
    /* nginx writes the request right after connecting: it is usually
     * here already, and reading now saves a trip through epoll. */
    req_read(&r->c);
}

static void accept_some(void)
{
    for (int i = 0; i < 128 && W.d.accepting; i++) {
        int fd = accept4(W.d.lw.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_warn("accept: %s; pausing accepts for 100 ms", strerror(errno));
                daemon_accept_pause(&W.d, 100);
            } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                log_error("accept failed: %s", strerror(errno));
            }
            return;
        }
        req_adopt(fd);
        if (W.nreqs >= cfg.max_requests && W.d.accepting) {
            log_warn("%zu connections open (--max-requests): pausing accepts", W.nreqs);
            daemon_accept_pause(&W.d, 0);
        }
    }
}

static void listen_io(loop *l, io_watch *w, uint32_t revents)
{
    (void)l, (void)w, (void)revents;
    accept_some();
}

static size_t open_count(void) { return W.nreqs; }

static bool may_accept(void) { return W.nreqs < cfg.max_requests; }

/* ---- metrics ------------------------------------------------------------------------ */

static void render_metrics(buf *o, void *ctx)
{
    (void)ctx;
    metric_put(o, "pushwire_held_longpolls", "gauge", "Long-poll requests held now.",
               W.st.polls_held);
    metric_put(o, "pushwire_eventsource_streams", "gauge", "EventSource streams open now.",
               W.st.sse_streams);
    metric_put(o, "pushwire_open_requests", "gauge",
               "FastCGI requests being answered or held now.", W.nreqs - W.nidle);
    metric_put(o, "pushwire_fastcgi_connections", "gauge",
               "Connections from nginx now (kept-alive idle ones included).", W.nreqs);
    metric_put(o, "pushwire_requests_total", "counter", "FastCGI requests received.",
               W.st.requests);
    buf_puts(o, "# HELP pushwire_responses_total Answers sent, by status class.\n"
                "# TYPE pushwire_responses_total counter\n");
    for (int k = 2; k <= 5; k++)
        buf_printf(o, "pushwire_responses_total{code=\"%dxx\"} %llu\n", k,
                   (unsigned long long)W.st.status[k]);
    metric_put(o, "pushwire_longpoll_answers_total", "counter",
               "Long-polls answered with messages.", W.st.polls_answered);
    metric_put(o, "pushwire_longpoll_timeouts_total", "counter", "Long-polls that timed out.",
               W.st.poll_timeouts);
    metric_put(o, "pushwire_client_aborts_total", "counter", "Requests whose client left early.",
               W.st.client_aborts);
    metric_put(o, "pushwire_publishes_total", "counter", "Messages published.",
               W.st.publishes_ok);
    metric_put(o, "pushwire_publish_duplicates_total", "counter",
               "Publishes answered from an earlier Idempotency-Key.", W.st.publishes_dup);
    metric_put(o, "pushwire_publish_errors_total", "counter", "Publishes answered 503.",
               W.st.publishes_failed);
    metric_put(o, "pushwire_slow_consumer_disconnects_total", "counter",
               "EventSource clients cut off for not reading.", W.st.sse_cutoffs);
    metric_put(o, "pushwire_auth_refused_total", "counter",
               "Requests refused for their token (401/403).", W.st.auth_refused);
    metric_put(o, "pushwire_csrf_refused_total", "counter",
               "Publishes refused for a foreign Origin or Sec-Fetch-Site.", W.st.csrf_refused);
    metric_put(o, "pushwire_eventsource_expired_total", "counter",
               "EventSource streams ended by their token's expiry.", W.st.sse_expired);
    daemon_metrics(o, W.d.h);
}

/* ---- start and stop ------------------------------------------------------------------ */

/* The grace period is over: whatever poll is still held gets a 503. */
static void grace_over(void)
{
    for (req *r = W.reqs, *next; r; r = next) {
        next = r->next;
        if (r->kind == K_POLL && r->phase == P_ACTIVE) {
            subset_detach(W.d.h, W.d.l, &r->subs);
            req_unavailable(r, "server is shutting down");
        }
    }
}

/* A stop began (the listener is closed): answer what is held. */
static void on_stop(const char *why)
{
    log_info("%s: stopping (answering %zu held requests)", why, W.st.polls_held + W.st.sse_streams);
    for (req *r = W.reqs, *next; r; r = next) {
        next = r->next;
        if (r->phase == P_IDLE) {
            req_close(r); /* nginx reconnects to another worker */
            continue;
        }
        if (r->phase != P_ACTIVE)
            continue;
        if (r->kind == K_POLL) {
            /* Answer now what is up to date; the others are answered when
             * they are (on_parked), or with 503 when the grace is over. */
            r->no_wait = true;
            poll_answer_idle(r, false);
        } else if (r->kind == K_SSE) {
            sse_end(r, NULL, 0);
        }
        /* Publishes in flight finish on their own. */
    }
}

static const opt_def worker_options[] = {
    {"listen", "PW_LISTEN", OPT_STR, &cfg.listen, 0, 0, "ADDR",
     "FastCGI listen address: host:port, unix:/path or /path"},
    {"history", "PW_HISTORY", OPT_UINT, &cfg.history, 1, 1000000, "N",
     "messages kept per channel"},
    {"max-content", "PW_MAX_CONTENT", OPT_UINT, &cfg.max_content, 1, 16 << 20, "BYTES",
     "largest message content after decoding (413 above)"},
    {"poll-timeout", "PW_POLL_TIMEOUT", OPT_UINT, &cfg.poll_timeout, 0, 3600, "SECONDS",
     "long-poll hold time when the request gives no timeout"},
    {"max-poll-timeout", "PW_MAX_POLL_TIMEOUT", OPT_UINT, &cfg.max_poll_timeout, 0, 3600,
     "SECONDS", "cap of the timeout parameter (keep below nginx fastcgi_read_timeout)"},
    {"sse-heartbeat", "PW_SSE_HEARTBEAT", OPT_UINT, &cfg.sse_heartbeat, 1, 3600, "SECONDS",
     "EventSource comment heartbeat interval"},
    {"publish-token", "PW_PUBLISH_TOKEN", OPT_SECRET, &cfg.publish_token, 0, 0, "TOKEN",
     "require Authorization: Bearer TOKEN on POST /chat (401/403)"},
    {"publish-requires-token", "PW_PUBLISH_REQUIRES_TOKEN", OPT_BOOL, &cfg.publish_requires_token,
     0, 0, NULL, "every publish needs the --publish-token or a token that grants the channel"},
    {"max-subscriptions", "PW_MAX_SUBSCRIPTIONS", OPT_UINT, &cfg.max_subs, 1, API_SUBS_MAX, "N",
     "channels one long-poll or EventSource stream may follow (channel=a,b,...)"},
    {"max-requests", "PW_MAX_REQUESTS", OPT_UINT, &cfg.max_requests, 1, 1000000, "N",
     "connections from nginx before accepts pause (mind the open-file limit)"},
};

/* The limits of the worker from cfg. */
static void limits_from_cfg(void)
{
    if (cfg.poll_timeout > cfg.max_poll_timeout)
        cfg.poll_timeout = cfg.max_poll_timeout;
    W.limits.max_content = cfg.max_content;
    W.limits.default_timeout = cfg.poll_timeout;
    W.limits.max_timeout = cfg.max_poll_timeout;
    /* The largest body nginx may pass: every content byte percent-encoded
     * (3 bytes) or JSON-escaped (up to 6), plus the other fields. */
    W.max_body = (size_t)cfg.max_content * 6 + 4096;
}

#ifdef PW_FUZZ_HOOKS
/* fuzz/fuzz_worker.c drives this file's request handling on a loop and a hub
 * of its own (on tests/unit/hub_sim.c's Redis): no listener, no signals, no
 * main. */
void worker_fuzz_start(loop *l, hub *h, unsigned max_content);
void worker_fuzz_adopt(int fd);
void worker_fuzz_stop(void);

void worker_fuzz_start(loop *l, hub *h, unsigned max_content)
{
    memset(&W, 0, sizeof W);
    W.d.l = l;
    W.d.h = h;
    W.d.lw.fd = -1;
    W.d.open_count = open_count;
    W.b = hub_broker(h);
    cfg.max_content = max_content;
    limits_from_cfg();
}

void worker_fuzz_adopt(int fd) { req_adopt(fd); }

/* Close what is open (as at the end of main); memory goes with the loop's
 * next reaps. */
void worker_fuzz_stop(void)
{
    while (W.reqs)
        req_close(W.reqs);
    rbuf_unref(W.tcache.records);
    W.tcache.records = NULL;
}
#else
int main(int argc, char **argv)
{
    enum { NW = sizeof worker_options / sizeof worker_options[0] };
    opt_def options[NW + DAEMON_COMMON_OPTIONS + 1] = {0};
    memcpy(options, worker_options, sizeof worker_options);
    daemon_options(options + NW, &cfg.c);
    int rc = opts_parse(options, argc, argv, "pushwire-worker",
                        "FastCGI worker of pushwire: POST /chat publishes, GET /status long-polls\n"
                        "(or streams EventSource), GET /healthz reports Redis and the processes.");
    if (rc)
        return rc > 0 ? 0 : 2;
    redis_url url;
    int sigfd = daemon_setup(&cfg.c, "pushwire-worker", &url);
    if (sigfd < 0)
        return 2;
    limits_from_cfg();
    W.d.open_count = open_count;
    W.d.may_accept = may_accept;
    W.d.on_stop = on_stop;
    W.d.on_grace_over = grace_over;
    if (daemon_start(&W.d, &cfg.c, &url, sigfd, "worker", cfg.history, cfg.listen, 0, listen_io,
                     render_metrics) < 0)
        return 1;
    W.b = hub_broker(W.d.h);

    rc = loop_run(W.d.l);
    if (rc < 0)
        log_error("event loop failed: %s", strerror(errno));

    /* Whatever is still open after the grace period is dropped: first
     * detach subscribers from the hub, then close Redis (publishes in flight
     * get their 503 from the broker's callbacks), then close the rest. */
    for (req *r = W.reqs; r; r = r->next)
        subset_detach(W.d.h, W.d.l, &r->subs);
    hub_free(W.d.h);
    W.d.h = NULL;
    W.b = NULL;
    while (W.reqs)
        req_close(W.reqs);
    rbuf_unref(W.tcache.records);
    daemon_finish(&W.d);
    log_info("stopped");
    return rc < 0 ? 1 : 0;
}
#endif
