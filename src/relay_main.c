/* relay_main.c - pushwire-relay: the WebSocket relay.
 *
 * One single-threaded epoll loop serving RFC 6455 clients (directly or
 * behind nginx) as persistent hub subscribers. Each published message is
 * encoded into one frame once and the same bytes are queued for every
 * client; a client whose queue passes --max-queue is closed (1008) so that
 * it can never slow the others or grow memory. Protocol parsing lives in
 * ws_frame.c / ws_handshake.c; this file only moves bytes and state.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "auth.h"
#include "buf.h"
#include "conn.h"
#include "daemon.h"
#include "envelope.h"
#include "hub.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "net.h"
#include "opts.h"
#include "origin.h"
#include "outq.h"
#include "redis_url.h"
#include "subset.h"
#include "ws_frame.h"
#include "ws_handshake.h"

#define HEAD_MAX       8192
#define READ_CHUNK     16384
#define CLOSE_LINGER   2000 /* ms to wait for the peer's close after ours */
/* Stop reading a client while this much waits to be written to it: a client
 * that sends (pings) but does not read cannot make us queue answers. */
#define READ_PAUSE     (64u << 10)
/* A client's control message ({"type": ...}) is kept up to this size; a
 * longer text message is answered with an error. It holds a token. */
#define CONTROL_MAX    (AUTH_TOKEN_MAX + 1024)
/* Close code when the token that opened a private channel ends (and
 * was not refreshed): 4000 + the HTTP status a new request would get. */
#define CLOSE_TOKEN_EXPIRED 4401

enum client_state { C_HANDSHAKE, C_OPEN, C_CLOSING, C_DEAD };

typedef struct client {
    conn c; /* socket, queue, lifetime (conn.h) */
    subset subs; /* the channels it follows (subset.h) */
    timer t; /* handshake deadline, ping interval, or close linger */
    buf *msg; /* the text message being read, while it may be a control message */
    char *token; /* the handshake's token, for in-band subscribes without one */
    uint32_t unstarted; /* channels of the URL whose start point is not fixed yet */
    ws_parser parser;
    struct client *prev, *next;
    struct client *hs_prev, *hs_next; /* on R's handshake list, oldest first */
    char *head; /* the handshake being read; freed once open */
    uint32_t head_len;
    uint8_t state;
    bool ping_outstanding;
    bool paused;       /* a subscription waits for the queue to drain */
    bool close_after;  /* our close frame (or refusal) is queued: no more data */
    bool await_peer;   /* after it is written, wait for the peer's close or EOF */
    bool write_shut;   /* our side is shut down; waiting for the peer */
    bool upgraded;
    uint64_t last_rx;
    rbuf *held_101; /* the handshake answer, sent once the start point is set */
} client;

static struct config {
    daemon_common c;
    const char *listen;
    unsigned ping_interval, max_message, max_queue, sndbuf, max_clients, handshake_timeout;
    unsigned max_handshakes, max_subs;
} cfg = {
    .c = DAEMON_COMMON_DEFAULTS,
    .listen = "127.0.0.1:9100",
    .ping_interval = 30,
    .max_message = 65536,
    .max_queue = 2 << 20,
    .sndbuf = 262144,
    .max_clients = 19000,
    .handshake_timeout = 10,
    .max_handshakes = 1000,
    .max_subs = 100,
};

static struct relay {
    daemon_rt d;
    client *clients;
    size_t nclients, nopen;
    /* Connections still in their opening handshake, oldest first: at
     * --max-handshakes the oldest goes, so that clients who open and never
     * finish (slowloris) cannot take every connection slot. */
    client *hs_head, *hs_tail;
    size_t nhandshakes;
    rbuf *ping_frame;
    struct {
        uint64_t accepted, upgrades, refused[6], slow_cutoffs, dead_pings, protocol_errors;
        uint64_t handshakes_evicted, auth_refused, token_expired, refreshes;
        uint64_t control_messages;
        uint64_t frames_out;
    } st;
} R;

static client *client_of(conn *cc) { return (client *)(void *)cc; }

static void hs_add(client *c)
{
    c->hs_next = NULL;
    c->hs_prev = R.hs_tail;
    if (R.hs_tail)
        R.hs_tail->hs_next = c;
    else
        R.hs_head = c;
    R.hs_tail = c;
    R.nhandshakes++;
}

/* c leaves the handshake phase (opened, refused or closed). Idempotent. */
static void hs_del(client *c)
{
    if (!c->hs_prev && R.hs_head != c)
        return;
    if (c->hs_prev)
        c->hs_prev->hs_next = c->hs_next;
    else
        R.hs_head = c->hs_next;
    if (c->hs_next)
        c->hs_next->hs_prev = c->hs_prev;
    else
        R.hs_tail = c->hs_prev;
    c->hs_prev = c->hs_next = NULL;
    R.nhandshakes--;
}

/* ---- lifetime (conn.h) and writing ------------------------------------------------ */

static void client_free(conn *cc)
{
    client *c = client_of(cc);
    free(c->head);
    rbuf_unref(c->held_101);
    subset_clear(NULL, R.d.l, &c->subs);
    free(c->token);
    if (c->msg)
        buf_free(c->msg);
    free(c->msg);
    free(c);
}

/* The connection is closed: release everything but the memory. */
static void client_closed(conn *cc)
{
    client *c = client_of(cc);
    if (c->upgraded)
        R.nopen--;
    hs_del(c);
    c->state = C_DEAD;
    subset_detach(R.d.h, R.d.l, &c->subs);
    timer_stop(R.d.l, &c->t);
    if (c->prev)
        c->prev->next = c->next;
    else
        R.clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    R.nclients--;
    daemon_maybe_stop(&R.d);
    if (R.nclients < cfg.max_clients * 9 / 10)
        daemon_accept_resume(&R.d);
}

static void client_kill(client *c) { conn_close(&c->c); }

static void client_flush(client *c) { conn_flush(&c->c); }

/* Everything queued is written. */
static void client_drained(conn *cc)
{
    client *c = client_of(cc);
    if (c->close_after) {
        if (c->write_shut)
            return;
        if (!c->await_peer) {
            conn_close(cc);
            return;
        }
        /* Our close frame is out: stop sending and give the peer a moment
         * to answer with its close (or EOF) before the socket goes. */
        conn_shutdown_write(cc);
        c->write_shut = true;
        return;
    }
    if (c->paused && c->state == C_OPEN) {
        c->paused = false;
        subset_resume(R.d.h, &c->subs);
    }
}

static void client_read(conn *cc);

static const conn_ops client_ops = {
    .on_read = client_read,
    .on_drained = client_drained,
    .on_close = client_closed,
    .on_free = client_free,
};

static void client_close(client *c, uint16_t code, const char *reason, bool drop_queue,
                         bool await_peer);

/* Queue frames for an open client: data and control frames alike count
 * against --max-queue, and a client past it is closed with 1008 (it
 * resumes with since and loses nothing). Returns false when it was. */
static bool client_queue(client *c, rbuf *r)
{
    if (conn_push(&c->c, r) <= cfg.max_queue)
        return true;
    R.st.slow_cutoffs++;
    log_info("client not reading (%zu bytes queued): closing with 1008", conn_queued(&c->c));
    client_close(c, WS_CLOSE_POLICY, "too slow: reconnect with since", true, true);
    return false;
}

static void release_101(client *c);

static bool push_bytes(client *c, const void *p, size_t n)
{
    release_101(c); /* nothing may overtake the handshake answer */
    rbuf *r = rbuf_new(p, n);
    bool ok = client_queue(c, r);
    rbuf_unref(r);
    return ok;
}

static void close_linger_cb(loop *l, timer *t)
{
    (void)l;
    client_kill((client *)((char *)t - offsetof(client, t)));
}

static void ping_cb(loop *l, timer *t);

/* Queue the held 101 (before anything else goes out). */
static void release_101(client *c)
{
    if (!c->held_101)
        return;
    timer_stop(R.d.l, &c->t);
    c->t.cb = ping_cb;
    timer_start(R.d.l, &c->t, (uint64_t)cfg.ping_interval * 1000);
    conn_push(&c->c, c->held_101);
    rbuf_unref(c->held_101);
    c->held_101 = NULL;
}

/* Queue final bytes (a close frame, or a refusal) and finish: nothing is
 * sent after them, and the connection goes once they are written (and, when
 * await_peer, the peer closed too), or after CLOSE_LINGER at most. */
static void client_finish(client *c, const void *p, size_t n, bool drop_queue, bool await_peer)
{
    hs_del(c);
    c->state = C_CLOSING;
    subset_detach(R.d.h, R.d.l, &c->subs);
    if (drop_queue)
        conn_drop_unstarted(&c->c);
    release_101(c);
    conn_push_bytes(&c->c, p, n); /* the last bytes: not bounded */
    c->close_after = true;
    c->await_peer = await_peer;
    c->t.cb = close_linger_cb;
    timer_start(R.d.l, &c->t, CLOSE_LINGER);
    client_flush(c);
}

/* Send a close frame. await_peer: we start the closing handshake and wait
 * for the client's close; false when echoing the client's close. */
static void client_close(client *c, uint16_t code, const char *reason, bool drop_queue,
                         bool await_peer)
{
    if (c->state != C_OPEN)
        return;
    uint8_t frame[WS_FRAME_HEADER_MAX + WS_CONTROL_MAX];
    size_t n = ws_frame_close(frame, code, reason);
    client_finish(c, frame, n, drop_queue, await_peer);
}

/* ---- deliveries ------------------------------------------------------------------ */

static void frames_free(void *p) { rbuf_unref(p); }

static rbuf *encode_frames(const hub_batch *b)
{
    buf out = BUF_INIT, json = BUF_INIT;
    uint8_t hdr[WS_FRAME_HEADER_MAX];
    if (b->reset) {
        uint64_t newest = b->n ? b->msgs[b->n - 1]->id : b->newest_id;
        env_push_reset(&json, b->channel, b->epoch, newest);
        size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, json.len);
        buf_append(&out, hdr, hl);
        buf_append(&out, json.data, json.len);
    }
    for (size_t i = 0; i < b->n; i++) {
        buf_reset(&json);
        env_push_message(&json, b->channel, b->epoch, b->msgs[i]);
        size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, json.len);
        buf_append(&out, hdr, hl);
        buf_append(&out, json.data, json.len);
    }
    rbuf *r = rbuf_new(out.data, out.len);
    buf_free(&out);
    buf_free(&json);
    return r;
}

static void started(client *c, csub *cs);

static void on_deliver(hub_sub *s, hub_batch *b)
{
    csub *cs = csub_of(s);
    client *c = cs->owner;
    started(c, cs);
    if (c->state != C_OPEN)
        return;
    rbuf *frames;
    if (b->cache && b->cache_free == frames_free) {
        frames = rbuf_ref(b->cache);
    } else {
        frames = encode_frames(b);
        if (!b->cache) {
            b->cache = rbuf_ref(frames);
            b->cache_free = frames_free;
        }
    }
    R.st.frames_out += b->n + (b->reset ? 1 : 0);
    release_101(c);
    /* A client that has read (nearly) everything may take one batch larger
     * than --max-queue (a replay from history can encode to more than the
     * queue: cutting it off would make it reconnect into the same batch
     * forever); it then gets nothing more until it has read it. A client
     * already behind is cut off. */
    bool caught_up = conn_queued(&c->c) < cfg.max_queue / 4;
    bool ok = caught_up ? (conn_push(&c->c, frames), true) : client_queue(c, frames);
    rbuf_unref(frames);
    if (!ok)
        return;
    if (conn_queued(&c->c) > cfg.max_queue) {
        c->paused = true;
        subset_pause(R.d.h, &c->subs);
    } else if (b->more) {
        c->paused = cs->paused = true;
        hub_sub_pause(R.d.h, &cs->sub);
    }
    /* Written after the round: one writev carries every frame queued for
     * this client meanwhile. */
    conn_flush_later(&c->c);
}

static void on_parked(hub_sub *s)
{
    csub *cs = csub_of(s);
    client *c = cs->owner;
    if (!cs->confirmed) {
        started(c, cs);
        client_flush(c);
    }
}

static const hub_sub_ops ws_ops = {.deliver = on_deliver, .parked = on_parked};

/* ---- liveness ---------------------------------------------------------------------- */

static void ping_cb(loop *l, timer *t)
{
    client *c = (client *)((char *)t - offsetof(client, t));
    if (c->state != C_OPEN)
        return;
    uint64_t idle = loop_now(l) - c->last_rx;
    if (idle >= (uint64_t)cfg.ping_interval * 1000) {
        if (c->ping_outstanding) {
            R.st.dead_pings++;
            log_debug("client silent for %llu ms after a ping: dropping", (unsigned long long)idle);
            client_kill(c);
            return;
        }
        c->ping_outstanding = true;
        if (!client_queue(c, R.ping_frame))
            return;
        client_flush(c);
        if (c->state != C_OPEN)
            return;
        timer_start(l, t, (uint64_t)cfg.ping_interval * 1000);
    } else {
        timer_start(l, t, (uint64_t)cfg.ping_interval * 1000 - idle);
    }
}

/* ---- reading -------------------------------------------------------------------------- */

/* ---- control messages and tokens -------------------------------------------------- */

static void send_control(client *c, const buf *json)
{
    uint8_t hdr[WS_FRAME_HEADER_MAX];
    size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, json->len);
    buf f = BUF_INIT;
    buf_append(&f, hdr, hl);
    buf_append(&f, json->data, json->len);
    push_bytes(c, f.data, f.len);
    buf_free(&f);
}

/* {"type":T,"channel":C} and {"type":"error",...} answers; flushed after
 * the round. */
static void control_reply(client *c, const char *type, const char *channel)
{
    buf j = BUF_INIT;
    buf_printf(&j, "{\"type\":\"%s\",\"channel\":", type);
    env_json_string(&j, channel, strlen(channel));
    buf_putc(&j, '}');
    send_control(c, &j);
    buf_free(&j);
    conn_flush_later(&c->c);
}

static void control_error(client *c, const char *channel, int status, const char *msg)
{
    buf j = BUF_INIT;
    env_control_error(&j, channel, status, msg);
    send_control(c, &j);
    buf_free(&j);
    conn_flush_later(&c->c);
}

/* Arm cs's timer for its token's end (nothing when it has none). */
static void token_timer(csub *cs)
{
    timer_stop(R.d.l, &cs->t);
    if (cs->expires)
        timer_start(R.d.l, &cs->t, auth_ms_until(cs->expires));
}

/* cs's start point is fixed (parked or first delivery), or Redis could not
 * tell in time: tell the client it is subscribed. A channel of the URL is
 * confirmed by the 101, sent once every one of them is; an in-band one by
 * {"type":"subscribed"}. Then the timer watches the token. */
static void started(client *c, csub *cs)
{
    if (cs->confirmed)
        return;
    cs->confirmed = true;
    if (cs->in_band) {
        control_reply(c, "subscribed", cs->name);
    } else if (c->unstarted && --c->unstarted == 0) {
        release_101(c);
    }
    token_timer(cs);
}

/* A subscription's timer: the confirmation deadline, then its token's end.
 * An ended token ends the subscription ({"type":"expired"}); a connection
 * left with no channel by that is closed with 4401. */
static void csub_timer(loop *l, timer *t)
{
    (void)l;
    csub *cs = (csub *)((char *)t - offsetof(csub, t));
    client *c = cs->owner;
    if (c->state != C_OPEN)
        return;
    if (!cs->confirmed) {
        started(c, cs);
        client_flush(c);
        return;
    }
    R.st.token_expired++;
    buf j = BUF_INIT;
    env_expired(&j, cs->name);
    send_control(c, &j);
    buf_free(&j);
    subset_del(R.d.h, R.d.l, &c->subs, cs);
    if (c->state != C_OPEN)
        return;
    if (c->subs.n == 0)
        client_close(c, CLOSE_TOKEN_EXPIRED, "token expired", false, true);
    else
        client_flush(c);
}

/* Collect a text message's bytes while it may be a control message: the
 * first byte must open a JSON object and the whole fit CONTROL_MAX. */
static void text_sink(void *ctx, const uint8_t *data, size_t n)
{
    client *c = ctx;
    if (!c->msg)
        c->msg = xcalloc(1, sizeof *c->msg); /* zeroed: BUF_INIT */
    if (c->msg->len + n > CONTROL_MAX) {
        c->msg->len = CONTROL_MAX + 1; /* too long: marked, bytes dropped */
        return;
    }
    buf_append(c->msg, data, n);
}

/* Whether the connection may read channel with tok (NULL: the handshake's
 * token): 0 and *expires, or -1 after answering the error. */
static int authorize(client *c, const char *channel, const char *tok, time_t *expires)
{
    *expires = 0;
    if (!auth_is_private(cfg.c.auth, channel))
        return 0;
    if (!tok)
        tok = c->token;
    auth_error e;
    if (auth_check_subscribe(cfg.c.auth, channel, tok, tok ? strlen(tok) : 0, auth_now(), expires,
                             &e) == 0)
        return 0;
    R.st.auth_refused++;
    control_error(c, channel, e.status, e.message);
    return -1;
}

/* {"type":"subscribe","channel":C[,"since":N][,"epoch":E][,"token":T]} */
static void control_subscribe(client *c, json_t *msg)
{
    json_t *jc = json_object_get(msg, "channel"), *js = json_object_get(msg, "since");
    json_t *je = json_object_get(msg, "epoch"), *jt = json_object_get(msg, "token");
    const char *ch = json_string_value(jc);
    if (!ch || !api_channel_valid(ch, strlen(ch))) {
        control_error(c, ch && strlen(ch) <= PW_CHANNEL_MAX ? ch : "", 400,
                      "subscribe needs a valid \"channel\" (1-64 of A-Z a-z 0-9 _ . : -)");
        return;
    }
    const char *epoch = "";
    if (je && (!json_is_string(je) || !api_channel_valid(json_string_value(je),
                                                         json_string_length(je)))) {
        control_error(c, ch, 400, "invalid epoch");
        return;
    }
    if (je)
        epoch = json_string_value(je);
    if (js && (!json_is_integer(js) || json_integer_value(js) < 0 ||
               json_integer_value(js) > 999999999999999LL)) {
        control_error(c, ch, 400, "invalid since: a message id (integer)");
        return;
    }
    if (jt && !json_is_string(jt)) {
        control_error(c, ch, 400, "invalid token: a string");
        return;
    }
    if (subset_find(&c->subs, ch)) {
        control_error(c, ch, 409, "already subscribed");
        return;
    }
    if (c->subs.n >= cfg.max_subs) {
        control_error(c, ch, 400, "too many channels for one connection (--max-subscriptions)");
        return;
    }
    time_t expires;
    if (authorize(c, ch, jt ? json_string_value(jt) : NULL, &expires) < 0)
        return;
    csub *cs = subset_add(&c->subs, c, &ws_ops, true, ch);
    cs->in_band = true;
    cs->expires = expires;
    cs->t.cb = csub_timer;
    timer_start(R.d.l, &cs->t, cfg.c.redis_timeout); /* confirmation deadline */
    bool has_since = js != NULL;
    uint64_t since = js ? (uint64_t)json_integer_value(js) : 0;
    if (hub_subscribe(R.d.h, &cs->sub, cs->name, has_since, since, epoch) < 0) {
        subset_del(R.d.h, R.d.l, &c->subs, cs);
        control_error(c, ch, 503, "this relay follows too many channels (--max-channels); retry "
                                  "later");
    }
}

/* {"type":"unsubscribe","channel":C}: nothing of C follows the answer. */
static void control_unsubscribe(client *c, json_t *msg)
{
    const char *ch = json_string_value(json_object_get(msg, "channel"));
    csub *cs = ch ? subset_find(&c->subs, ch) : NULL;
    if (!cs) {
        control_error(c, ch && strlen(ch) <= PW_CHANNEL_MAX ? ch : "", 404, "not subscribed");
        return;
    }
    if (!cs->confirmed && !cs->in_band && c->unstarted && --c->unstarted == 0)
        release_101(c);
    subset_del(R.d.h, R.d.l, &c->subs, cs);
    control_reply(c, "unsubscribed", ch);
}

/* {"type":"refresh","token":T[,"channel":C]}: a new token for every
 * private channel it grants (or for C); each then lives until its end. A
 * token that grants none changes nothing and is answered with an error. */
static void control_refresh(client *c, json_t *msg)
{
    const char *tok = json_string_value(json_object_get(msg, "token"));
    const char *only = json_string_value(json_object_get(msg, "channel"));
    if (!tok) {
        control_error(c, only ? only : "", 400, "refresh needs a \"token\" string");
        return;
    }
    size_t done = 0;
    auth_error e = {401, "invalid token"};
    bool any_private = false;
    for (csub *cs = c->subs.head; cs; cs = cs->next) {
        if ((only && strcmp(only, cs->name)) || !auth_is_private(cfg.c.auth, cs->name))
            continue;
        any_private = true;
        time_t expires;
        if (auth_check_subscribe(cfg.c.auth, cs->name, tok, strlen(tok), auth_now(), &expires,
                                 &e) < 0)
            continue;
        cs->expires = expires;
        if (cs->confirmed)
            token_timer(cs);
        buf j = BUF_INIT;
        env_refreshed(&j, cs->name, (long long)expires);
        send_control(c, &j);
        buf_free(&j);
        done++;
    }
    if (done) {
        R.st.refreshes++;
        conn_flush_later(&c->c);
        return;
    }
    if (!any_private) {
        control_error(c, only ? only : "", only && !subset_find(&c->subs, only) ? 404 : 400,
                      only && !subset_find(&c->subs, only) ? "not subscribed"
                                                          : "no private channel to refresh");
        return;
    }
    R.st.auth_refused++;
    control_error(c, only ? only : "", e.status, e.message);
}

/* A whole text message arrived (in c->msg). A JSON object with a "type"
 * is a control message and always answered; any other text is ignored, as
 * SPEC.md says of client messages. */
static void on_text(client *c)
{
    buf *m = c->msg;
    c->msg = NULL;
    bool too_long = m->len > CONTROL_MAX;
    json_t *doc = NULL;
    size_t i = 0;
    while (!too_long && i < m->len && (m->data[i] == ' ' || m->data[i] == '\t' ||
                                        m->data[i] == '\r' || m->data[i] == '\n'))
        i++;
    bool object = too_long || (i < m->len && m->data[i] == '{');
    if (object && !too_long)
        doc = json_loadb(m->data, m->len, JSON_REJECT_DUPLICATES, NULL);
    buf_free(m);
    free(m);
    if (!object)
        return;
    R.st.control_messages++;
    const char *type = doc ? json_string_value(json_object_get(doc, "type")) : NULL;
    if (too_long)
        control_error(c, "", 413, "control message too long");
    else if (!doc || !json_is_object(doc))
        control_error(c, "", 400, "control message is not a valid JSON object");
    else if (!type)
        ; /* an object without "type": not a control message */
    else if (!strcmp(type, "subscribe"))
        control_subscribe(c, doc);
    else if (!strcmp(type, "unsubscribe"))
        control_unsubscribe(c, doc);
    else if (!strcmp(type, "refresh"))
        control_refresh(c, doc);
    else
        control_error(c, "", 400, "unknown control message type");
    json_decref(doc);
}

static void on_frames(client *c, const uint8_t *p, size_t n)
{
    c->last_rx = loop_now(R.d.l);
    c->ping_outstanding = false;
    while (n && c->state == C_OPEN) {
        ws_event ev;
        size_t used = ws_parser_feed(&c->parser, p, n, &ev);
        p += used;
        n -= used;
        switch (ev.type) {
        case WS_EV_NONE:
            return;
        case WS_EV_PING: {
            uint8_t frame[WS_FRAME_HEADER_MAX + WS_CONTROL_MAX];
            size_t fl = ws_frame_control(frame, WS_OP_PONG, ev.payload, ev.payload_len);
            if (!push_bytes(c, frame, fl))
                return;
            client_flush(c);
            break;
        }
        case WS_EV_PONG:
            break;
        case WS_EV_MESSAGE:
            if (ev.opcode == WS_OP_TEXT && c->msg)
                on_text(c);
            break; /* other client messages are validated and ignored */
        case WS_EV_CLOSE: {
            /* Echo the code (1000 when the peer gave none) and finish. */
            uint16_t code = ev.code == WS_CLOSE_NO_STATUS ? WS_CLOSE_NORMAL : ev.code;
            client_close(c, code, "", false, false);
            return;
        }
        case WS_EV_ERROR:
            R.st.protocol_errors++;
            log_debug("protocol error from client: %u %s", ev.code, ev.reason);
            client_close(c, ev.code, ev.reason, true, true);
            return;
        case WS_EV_CLOSED:
            return;
        }
    }
}

static void hold_101_cb(loop *l, timer *t)
{
    (void)l;
    client *c = (client *)((char *)t - offsetof(client, t));
    if (c->state == C_OPEN && c->held_101) {
        release_101(c);
        client_flush(c);
    }
}

static void refuse(client *c, int status)
{
    char resp[512];
    size_t n = ws_handshake_response_error(resp, sizeof resp, status);
    int k = status / 100;
    if (k >= 1 && k <= 5)
        R.st.refused[k]++;
    /* Wait for the peer's EOF after the answer: closing with its unread
     * bytes still queued would reset the connection and lose the answer. */
    client_finish(c, resp, n, true, true);
}

/* A header slice as a string ("" when absent; cut to cap - 1 bytes). */
static void slice_str(const ws_slice *s, char *out, size_t cap)
{
    size_t n = s->p ? (s->len < cap - 1 ? s->len : cap - 1) : 0;
    if (n)
        memcpy(out, s->p, n);
    out[n] = '\0';
}

static void upgrade(client *c, const ws_request *req)
{
    char origin[512], host[512];
    const char *origin_p = NULL;
    if (req->origin.p) {
        size_t n = req->origin.len < sizeof origin - 1 ? req->origin.len : sizeof origin - 1;
        memcpy(origin, req->origin.p, n);
        origin[n] = '\0';
        origin_p = origin;
    }
    size_t hl = req->host.len < sizeof host - 1 ? req->host.len : sizeof host - 1;
    memcpy(host, req->host.p, hl);
    host[hl] = '\0';
    if (!origin_allowed(cfg.c.origins, origin_p, origin_p ? strlen(origin) : 0, host, hl)) {
        log_info("refused WebSocket from origin %s (host %s)", origin_p ? origin : "-", host);
        refuse(c, 403);
        return;
    }
    char path[64] = "";
    if (req->path.len < sizeof path) {
        memcpy(path, req->path.p, req->path.len);
        path[req->path.len] = '\0';
    }
    if (api_route(path) != ROUTE_STATUS) {
        refuse(c, 404);
        return;
    }
    char query[HEAD_MAX] = "";
    if (req->query.p) {
        if (req->query.len >= sizeof query) {
            refuse(c, 400);
            return;
        }
        memcpy(query, req->query.p, req->query.len);
        query[req->query.len] = '\0';
    }
    api_http http = {.method = "GET", .path = path, .query = query};
    api_limits lim = {.max_content = 0, .default_timeout = 0, .max_timeout = 0,
                      .allow_empty = true};
    static api_chan chans[API_SUBS_MAX];
    api_poll p;
    api_error err;
    if (api_parse_poll(&http, &lim, &p, chans, cfg.max_subs, &err) < 0) {
        refuse(c, err.status == 405 ? 400 : err.status);
        return;
    }
    /* The token (auth.h: Authorization, the query or the cookie, as for the
     * HTTP transports) opens the private channels of the URL, and those of
     * later subscribes that bring none of their own. */
    char authz[HEAD_MAX], cookie[HEAD_MAX];
    slice_str(&req->authorization, authz, sizeof authz);
    slice_str(&req->cookie, cookie, sizeof cookie);
    const char *tok = NULL;
    size_t tl = 0;
    auth_find_token(authz, query, cookie, &tok, &tl);
    time_t ends[API_SUBS_MAX];
    for (size_t i = 0; i < p.n; i++) {
        auth_error ae;
        if (auth_check_subscribe(cfg.c.auth, p.chans[i].channel, tok, tl, auth_now(), &ends[i],
                                 &ae) < 0) {
            R.st.auth_refused++;
            log_debug("refused WebSocket to %s: %d %s", p.chans[i].channel, ae.status,
                      ae.message);
            refuse(c, ae.status);
            return;
        }
    }
    char accept[WS_ACCEPT_LEN + 1];
    char resp[256];
    if (!ws_handshake_accept_key(req->key.p, req->key.len, accept)) {
        refuse(c, 400);
        return;
    }
    if (tok && tl && tl <= AUTH_TOKEN_MAX && auth_has_keys(cfg.c.auth))
        c->token = xstrndup(tok, tl);
    size_t n = ws_handshake_response_101(resp, sizeof resp, accept);
    /* The 101 tells the client it is subscribed: hold it until the hub has
     * fixed every channel's start point (parked or first delivery), so that
     * a message the client publishes from onopen is never skipped. If Redis
     * cannot tell within the Redis timeout, open anyway. */
    c->held_101 = rbuf_new(resp, n);
    R.st.upgrades++;
    hs_del(c);
    c->state = C_OPEN;
    c->upgraded = true;
    R.nopen++;
    ws_parser_init(&c->parser, cfg.max_message);
    ws_parser_set_text_sink(&c->parser, text_sink, c);
    c->last_rx = loop_now(R.d.l);
    c->t.cb = hold_101_cb;
    timer_start(R.d.l, &c->t, cfg.c.redis_timeout);
    for (size_t i = 0; i < p.n; i++) {
        csub *cs = subset_add(&c->subs, c, &ws_ops, true, p.chans[i].channel);
        cs->expires = ends[i];
        cs->t.cb = csub_timer;
    }
    c->unstarted = (uint32_t)p.n;
    if (p.n == 0) {
        release_101(c); /* nothing to wait for: subscribes come in band */
        client_flush(c);
        return;
    }
    size_t i = 0;
    for (csub *cs = c->subs.head, *next; cs && c->state == C_OPEN; cs = next, i++) {
        next = cs->next;
        const api_chan *ch = &p.chans[i];
        if (hub_subscribe(R.d.h, &cs->sub, cs->name, ch->has_since, ch->since, ch->epoch) == 0)
            continue;
        log_info("refused WebSocket channel: too many channels (--max-channels)");
        if (c->held_101) {
            /* Every channel slot has subscribers: 503 before the 101, as if
             * the upgrade had never been taken. */
            subset_detach(R.d.h, R.d.l, &c->subs);
            rbuf_unref(c->held_101);
            c->held_101 = NULL;
            c->upgraded = false;
            R.nopen--;
            R.st.upgrades--;
            c->state = C_HANDSHAKE;
            timer_stop(R.d.l, &c->t);
            refuse(c, 503);
            return;
        }
        /* A delivery already opened the connection: refuse this one channel. */
        subset_del(R.d.h, R.d.l, &c->subs, cs);
        control_error(c, ch->channel, 503,
                      "this relay follows too many channels (--max-channels); retry later");
    }
}

static void handshake_read(client *c)
{
    if (!c->head)
        c->head = xmalloc(HEAD_MAX);
    ssize_t n = conn_read(&c->c, c->head + c->head_len, HEAD_MAX - c->head_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        client_kill(c);
        return;
    }
    c->head_len += (uint32_t)n;
    ws_request req;
    int rc = ws_handshake_parse(c->head, c->head_len, HEAD_MAX, &req);
    if (rc == WS_HS_PARTIAL) {
        if (c->head_len == HEAD_MAX)
            refuse(c, 431);
        return;
    }
    if (rc != WS_HS_OK) {
        refuse(c, rc);
        return;
    }
    size_t rest = c->head_len - req.head_len;
    upgrade(c, &req);
    if (c->state == C_OPEN && rest) {
        /* Frames pipelined behind the handshake. */
        uint8_t tmp[HEAD_MAX];
        memcpy(tmp, c->head + req.head_len, rest);
        free(c->head);
        c->head = NULL;
        on_frames(c, tmp, rest);
        return;
    }
    free(c->head);
    c->head = NULL;
}

static void client_read(conn *cc)
{
    client *c = client_of(cc);
    if (c->state == C_HANDSHAKE) {
        handshake_read(c);
        return;
    }
    uint8_t tmp[READ_CHUNK];
    for (int i = 0; i < 4 && c->state != C_DEAD; i++) {
        ssize_t n = conn_read(cc, tmp, sizeof tmp);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            client_kill(c); /* EOF or reset: the peer is gone */
            return;
        }
        if (c->state == C_OPEN)
            on_frames(c, tmp, (size_t)n);
        if ((size_t)n < sizeof tmp)
            return;
    }
}

static void handshake_deadline(loop *l, timer *t)
{
    (void)l;
    client *c = (client *)((char *)t - offsetof(client, t));
    if (c->state == C_HANDSHAKE)
        client_kill(c);
}

/* ---- accepting ---------------------------------------------------------------------------- */

/* A new connection (non-blocking fd). */
static void client_adopt(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cfg.sndbuf) {
        /* A small send buffer makes a client that stops reading show up
         * in our own queue, which is bounded, instead of in the kernel. */
        int sb = (int)cfg.sndbuf;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
    }
    client *c = xcalloc(1, sizeof *c);
    conn_init(&c->c, R.d.l, fd, &client_ops, READ_PAUSE);
    c->t.cb = handshake_deadline;
    c->state = C_HANDSHAKE;
    c->next = R.clients;
    if (R.clients)
        R.clients->prev = c;
    R.clients = c;
    R.nclients++;
    R.st.accepted++;
    if (R.nhandshakes >= cfg.max_handshakes) {
        R.st.handshakes_evicted++;
        log_debug("%zu handshakes pending (--max-handshakes): dropping the oldest", R.nhandshakes);
        client_kill(R.hs_head);
    }
    hs_add(c);
    if (conn_start(&c->c) < 0) {
        log_error("epoll_ctl: %s", strerror(errno));
        client_kill(c);
        return;
    }
    timer_start(R.d.l, &c->t, (uint64_t)cfg.handshake_timeout * 1000);
}

static void listen_io(loop *l, io_watch *w, uint32_t revents)
{
    (void)l, (void)revents;
    for (int i = 0; i < 64 && R.d.accepting; i++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_warn("accept: %s; pausing accepts for 100 ms", strerror(errno));
                daemon_accept_pause(&R.d, 100);
            }
            return;
        }
        client_adopt(fd);
        if (R.nclients >= cfg.max_clients) {
            log_warn("%zu clients (--max-clients): pausing accepts", R.nclients);
            daemon_accept_pause(&R.d, 0);
            return;
        }
    }
}

static size_t open_count(void) { return R.nclients; }

static bool may_accept(void) { return R.nclients < cfg.max_clients; }

/* ---- metrics ---------------------------------------------------------------------------------- */

static void render_metrics(buf *o, void *ctx)
{
    (void)ctx;
    metric_put(o, "pushwire_ws_clients", "gauge", "WebSocket clients connected now.", R.nopen);
    metric_put(o, "pushwire_connections", "gauge", "TCP connections now (handshakes included).",
               R.nclients);
    metric_put(o, "pushwire_ws_upgrades_total", "counter", "Handshakes accepted.",
               R.st.upgrades);
    buf_puts(o, "# HELP pushwire_ws_refused_total Handshakes refused, by status class.\n"
                "# TYPE pushwire_ws_refused_total counter\n");
    for (int k = 4; k <= 5; k++)
        buf_printf(o, "pushwire_ws_refused_total{code=\"%dxx\"} %llu\n", k,
                   (unsigned long long)R.st.refused[k]);
    metric_put(o, "pushwire_frames_queued_total", "counter", "Frames queued to clients.",
               R.st.frames_out);
    metric_put(o, "pushwire_slow_consumer_disconnects_total", "counter",
               "Clients closed for not reading (1008).", R.st.slow_cutoffs);
    metric_put(o, "pushwire_dead_clients_total", "counter",
               "Clients dropped for not answering pings.", R.st.dead_pings);
    metric_put(o, "pushwire_ws_protocol_errors_total", "counter",
               "Clients closed for protocol errors.", R.st.protocol_errors);
    metric_put(o, "pushwire_ws_handshakes", "gauge", "Connections in their opening handshake now.",
               R.nhandshakes);
    metric_put(o, "pushwire_ws_handshakes_evicted_total", "counter",
               "Pending handshakes dropped at --max-handshakes.", R.st.handshakes_evicted);
    metric_put(o, "pushwire_auth_refused_total", "counter",
               "Subscriptions and refreshes refused for their token (401/403).",
               R.st.auth_refused);
    metric_put(o, "pushwire_token_expired_total", "counter",
               "Subscriptions ended by their token's expiry.", R.st.token_expired);
    metric_put(o, "pushwire_token_refreshes_total", "counter", "Refresh messages accepted.",
               R.st.refreshes);
    metric_put(o, "pushwire_control_messages_total", "counter",
               "Control messages (JSON objects) from clients.", R.st.control_messages);
    daemon_metrics(o, R.d.h);
}

/* ---- start and stop ---------------------------------------------------------------------------- */

/* A stop began (the listener is closed): close every client with 1001. */
static void on_stop(const char *why)
{
    log_info("%s: stopping (closing %zu WebSockets with 1001)", why, R.nopen);
    for (client *c = R.clients, *next; c; c = next) {
        next = c->next;
        if (c->state == C_OPEN)
            client_close(c, WS_CLOSE_GOING_AWAY, "server shutting down", false, true);
        else if (c->state == C_HANDSHAKE)
            client_kill(c);
    }
}

static const opt_def relay_options[] = {
    {"listen", "PW_RELAY_LISTEN", OPT_STR, &cfg.listen, 0, 0, "ADDR",
     "WebSocket listen address host:port (nginx proxies /status and /ws upgrades here)"},
    {"ping-interval", "PW_PING_INTERVAL", OPT_UINT, &cfg.ping_interval, 1, 3600, "SECONDS",
     "ping a client idle this long; drop it if still silent one interval later"},
    {"max-message", "PW_MAX_MESSAGE", OPT_UINT, &cfg.max_message, 125, 16 << 20, "BYTES",
     "largest message a client may send (1009 above)"},
    {"max-queue", "PW_MAX_QUEUE", OPT_UINT, &cfg.max_queue, 65536, 1 << 30, "BYTES",
     "bytes queued for one client before it is closed with 1008"},
    {"sndbuf", "PW_SNDBUF", OPT_UINT, &cfg.sndbuf, 0, 16 << 20, "BYTES",
     "socket send buffer per client (0: the kernel's default)"},
    {"max-clients", "PW_MAX_CLIENTS", OPT_UINT, &cfg.max_clients, 1, 1000000, "N",
     "connections before accepting pauses (mind the open-file limit)"},
    {"handshake-timeout", "PW_HANDSHAKE_TIMEOUT", OPT_UINT, &cfg.handshake_timeout, 1, 600,
     "SECONDS", "time allowed for the opening handshake"},
    {"max-subscriptions", "PW_MAX_SUBSCRIPTIONS", OPT_UINT, &cfg.max_subs, 1, API_SUBS_MAX, "N",
     "channels one WebSocket may follow (channel=a,b,... and subscribe messages)"},
    {"max-handshakes", "PW_MAX_HANDSHAKES", OPT_UINT, &cfg.max_handshakes, 1, 1000000, "N",
     "connections in their opening handshake at once; past it the oldest is dropped"},
};

static rbuf *make_ping_frame(void)
{
    uint8_t ping[WS_FRAME_HEADER_MAX + WS_CONTROL_MAX];
    size_t pl = ws_frame_control(ping, WS_OP_PING, (const uint8_t *)"pw", 2);
    return rbuf_new(ping, pl);
}

#ifdef PW_FUZZ_HOOKS
/* fuzz/fuzz_relay.c drives this file's client handling on a loop and a hub
 * of its own (on tests/unit/hub_sim.c's Redis): no listener, no signals, no
 * main. */
void relay_fuzz_start(loop *l, hub *h, unsigned max_queue);
void relay_fuzz_adopt(int fd);
void relay_fuzz_stop(void);

void relay_fuzz_start(loop *l, hub *h, unsigned max_queue)
{
    memset(&R, 0, sizeof R);
    R.d.l = l;
    R.d.h = h;
    R.d.lw.fd = -1;
    R.d.open_count = open_count;
    R.ping_frame = make_ping_frame();
    cfg.max_queue = max_queue;
    cfg.max_handshakes = 3;
    cfg.sndbuf = 0;
}

void relay_fuzz_adopt(int fd) { client_adopt(fd); }

void relay_fuzz_stop(void)
{
    while (R.clients)
        client_kill(R.clients);
    rbuf_unref(R.ping_frame);
    R.ping_frame = NULL;
}
#else
int main(int argc, char **argv)
{
    enum { NR = sizeof relay_options / sizeof relay_options[0] };
    opt_def options[NR + DAEMON_COMMON_OPTIONS + 1] = {0};
    memcpy(options, relay_options, sizeof relay_options);
    daemon_options(options + NR, &cfg.c);
    int rc = opts_parse(options, argc, argv, "pushwire-relay",
                        "WebSocket relay of pushwire: ws://host/status?channel=C[&since=N&epoch=E]\n"
                        "pushes every message of the channel as a JSON text frame.");
    if (rc)
        return rc > 0 ? 0 : 2;
    redis_url url;
    int sigfd = daemon_setup(&cfg.c, "pushwire-relay", &url);
    if (sigfd < 0)
        return 2;
    R.ping_frame = make_ping_frame();
    R.d.open_count = open_count;
    R.d.may_accept = may_accept;
    R.d.on_stop = on_stop;
    if (daemon_start(&R.d, &cfg.c, &url, sigfd, "relay", 1000, cfg.listen, 1, listen_io,
                     render_metrics) < 0)
        return 1;

    rc = loop_run(R.d.l);
    if (rc < 0)
        log_error("event loop failed: %s", strerror(errno));
    while (R.clients)
        client_kill(R.clients);
    hub_free(R.d.h);
    R.d.h = NULL;
    rbuf_unref(R.ping_frame);
    daemon_finish(&R.d);
    log_info("stopped");
    return rc < 0 ? 1 : 0;
}
#endif
