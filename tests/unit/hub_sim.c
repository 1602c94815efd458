/* hub_sim.c - a simulated Redis behind broker.h, and a checker of what the
 * hub delivers (see hub_sim.h). Linked instead of src/broker.c. */
#include "hub_sim.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "buf.h"
#include "hub.h"
#include "log.h"
#include "loop.h"

#define HIST_MAX 64 /* model history cap (the hub is told its own) */
#define CHAN_MAX 16 /* channels the model can hold: SIM_CHANNELS, then any a client names */
#define IDEM_MAX 64 /* idempotency keys remembered (the oldest go first) */

/* ---- the model of Redis ------------------------------------------------------------ */

typedef struct mmsg {
    uint64_t id;
    int64_t time;
    char json[512]; /* the sim's own: "\"EPOCH/ID\"", naming its epoch and id */
} mmsg;

typedef struct mchan {
    char name[PW_CHANNEL_MAX + 1];
    bool exists;
    char ep[9];
    uint64_t seq;
    mmsg hist[HIST_MAX];
    size_t n; /* retained, oldest first */
    bool subscribed; /* on the pub/sub connection, at Redis */
} mchan;

enum qkind { Q_READ, Q_PUBLISH, Q_PROCS, Q_SUBSCRIBE, Q_UNSUBSCRIBE, Q_CONFIRM, Q_MESSAGE, Q_LOST };

typedef struct qitem {
    struct qitem *next;
    enum qkind kind;
    int ch;
    /* Q_READ */
    bool has_since;
    uint64_t since;
    char epoch[PW_EPOCH_MAX + 1];
    size_t budget;
    broker_read_cb *cb;
    void *arg;
    bool done; /* executed: res is the reply */
    broker_read_result res;
    pw_msg newest;
    /* Q_PUBLISH (a client's, through the worker) */
    char json[512];
    char idem[160]; /* "" for none */
    broker_pub_cb *pcb;
    broker_pub_result pres;
    /* Q_PROCS */
    broker_procs_cb *procs_cb;
    /* Q_MESSAGE */
    char payload[768];
} qitem;

typedef struct idem_rec {
    int ch;
    char key[160];
    char epoch[PW_EPOCH_MAX + 1];
    uint64_t id;
} idem_rec;

typedef struct queue {
    qitem *head, *tail;
} queue;

struct broker {
    sim *s;
    broker_hooks hooks;
    broker_config cfg;
    broker_stats stats;
};

typedef struct ssub {
    hub_sub hs; /* first: the hub hands this pointer back */
    sim *s;
    bool used, attached, persistent;
    int ch;
    bool has_pos; /* pos is what it has (since, then each delivery) */
    uint64_t pos;
    char epoch[PW_EPOCH_MAX + 1]; /* what it named, then each delivery's */
    int answers;
} ssub;

struct sim {
    loop *l;
    hub *h;
    broker *b;
    uint64_t now;
    unsigned gen, next_ep;
    char gen_s[9];
    unsigned history;
    bool cmd_ready, cmd_dropping, sub_ready;
    queue cmd; /* in order: executed ones (replies waiting) first */
    queue subq_out, subq_in;
    mchan ch[CHAN_MAX];
    int nch;
    idem_rec idem[IDEM_MAX];
    unsigned nidem;
    ssub subs[SIM_SUBS];
    bool verbose;
    unsigned steps;
};

static sim *the_sim;
unsigned hub_sim_seed;
struct hub_sim_totals hub_sim_totals;

static void say(sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(sim *s, const char *fmt, ...)
{
    if (!s->verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sim[%u] ", s->steps);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void fail(sim *s, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fail(sim *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "hub_sim: violation after step %u", s->steps);
    if (hub_sim_seed)
        fprintf(stderr, " of run %u (HUB_SIM_SEED=%u replays it)", hub_sim_seed, hub_sim_seed);
    fputs(": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void q_push(queue *q, qitem *it)
{
    it->next = NULL;
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
}

static qitem *q_pop(queue *q)
{
    qitem *it = q->head;
    if (it) {
        q->head = it->next;
        if (!q->head)
            q->tail = NULL;
    }
    return it;
}

/* The model's index of a channel, added when a client names a new one. */
static int chan_index(sim *s, const char *name)
{
    for (int i = 0; i < s->nch; i++)
        if (!strcmp(s->ch[i].name, name))
            return i;
    if (s->nch == CHAN_MAX || strlen(name) >= sizeof s->ch[0].name)
        return -1;
    memset(&s->ch[s->nch], 0, sizeof s->ch[0]);
    snprintf(s->ch[s->nch].name, sizeof s->ch[0].name, "%s", name);
    return s->nch++;
}

static void chan_epoch(const sim *s, const mchan *c, char *out)
{
    snprintf(out, PW_EPOCH_MAX + 1, "%s%s", s->gen_s, c->ep);
}

/* state_of (lib.lua): a channel without state gets a fresh incarnation. */
static mchan *chan_meta(sim *s, int i)
{
    mchan *c = &s->ch[i];
    if (!c->exists) {
        c->exists = true;
        snprintf(c->ep, sizeof c->ep, "e%07u", ++s->next_ep);
        c->seq = 0;
        c->n = 0;
    }
    return c;
}

static void free_result(qitem *it)
{
    for (size_t i = 0; i < it->res.n; i++)
        rbuf_unref(it->res.entries[i].json);
    free(it->res.entries);
    if (it->newest.json)
        rbuf_unref(it->newest.json);
    it->res.entries = NULL;
    it->res.n = 0;
    it->newest.json = NULL;
}

/* The read script (src/broker.c LUA_READ), on the model. */
static void exec_read(sim *s, qitem *it)
{
    mchan *c = chan_meta(s, it->ch);
    broker_read_result *r = &it->res;
    memset(r, 0, sizeof *r);
    chan_epoch(s, c, r->epoch);
    r->newest = c->seq;
    if (c->n && c->hist[c->n - 1].id == c->seq) {
        mmsg *m = &c->hist[c->n - 1];
        it->newest = (pw_msg){.id = m->id, .time_ms = m->time, .json = rbuf_new(m->json, strlen(m->json))};
        r->newest_msg = &it->newest;
    }
    uint64_t oldest = c->n ? c->hist[0].id : c->seq + 1;
    uint64_t since = it->since;
    if ((it->epoch[0] && strcmp(it->epoch, r->epoch) != 0) ||
        (it->has_since && (since > c->seq || since + 1 < oldest))) {
        r->reset = true;
        since = oldest - 1;
    } else if (!it->has_since) {
        return;
    }
    if (since >= c->seq)
        return;
    size_t used = 0;
    r->entries = xcalloc(c->n ? c->n : 1, sizeof(pw_msg));
    for (size_t i = 0; i < c->n; i++) {
        mmsg *m = &c->hist[i];
        if (m->id <= since)
            continue;
        size_t cost = strlen(m->json) + 160; /* as read.lua */
        if (r->n > 0 && used + cost > it->budget) {
            r->more = true;
            break;
        }
        used += cost;
        r->entries[r->n++] = (pw_msg){.id = m->id, .time_ms = m->time,
                                      .json = rbuf_new(m->json, strlen(m->json))};
    }
}

/* ---- broker.h over the model --------------------------------------------------------- */

broker *broker_new(loop *l, const broker_config *cfg, const broker_hooks *hooks)
{
    (void)l;
    broker *b = xcalloc(1, sizeof *b);
    b->s = the_sim;
    b->cfg = *cfg;
    b->hooks = *hooks;
    return b;
}

void broker_start(broker *b) { (void)b; }

static void fail_reads(sim *s)
{
    s->cmd_dropping = true;
    qitem *it;
    while ((it = q_pop(&s->cmd))) {
        free_result(it);
        if (it->kind == Q_READ) {
            broker_read_result r = {.err = BROKER_EUNAVAIL, .errmsg = "connection lost"};
            it->cb(it->arg, &r);
        } else if (it->kind == Q_PUBLISH) {
            broker_pub_result r = {.err = BROKER_EUNAVAIL, .errmsg = "connection lost"};
            it->pcb(it->arg, &r);
        } else {
            broker_procs_result r = {.err = BROKER_EUNAVAIL};
            it->procs_cb(it->arg, &r);
        }
        free(it);
    }
    s->cmd_dropping = false;
}

void broker_free(broker *b)
{
    sim *s = b->s;
    memset(&b->hooks, 0, sizeof b->hooks);
    fail_reads(s);
    qitem *it;
    while ((it = q_pop(&s->subq_out)))
        free(it);
    while ((it = q_pop(&s->subq_in)))
        free(it);
    free(b);
}

/* During a drop the real broker still says ready while it fails the
 * pending callbacks, but nothing can be sent. */
bool broker_cmd_ready(const broker *b) { return b->s->cmd_ready || b->s->cmd_dropping; }
bool broker_sub_ready(const broker *b) { return b->s->sub_ready; }
const broker_stats *broker_get_stats(const broker *b) { return &b->stats; }
unsigned broker_retry_after_ms(const broker *b) { (void)b; return 1000; }

static int sub_send(broker *b, enum qkind kind, const char *channel)
{
    sim *s = b->s;
    if (!s->sub_ready)
        return -1;
    int i = chan_index(s, channel);
    if (i < 0)
        fail(s, "(UN)SUBSCRIBE of unknown channel %s", channel);
    qitem *it = xcalloc(1, sizeof *it);
    it->kind = kind;
    it->ch = i;
    q_push(&s->subq_out, it);
    say(s, "hub: %s %s", kind == Q_SUBSCRIBE ? "SUBSCRIBE" : "UNSUBSCRIBE", channel);
    return 0;
}

int broker_subscribe(broker *b, const char *channel) { return sub_send(b, Q_SUBSCRIBE, channel); }
int broker_unsubscribe(broker *b, const char *channel, int node)
{
    if (node != 0)
        fail(b->s, "UNSUBSCRIBE %s on node %d: the sim has one", channel, node);
    return sub_send(b, Q_UNSUBSCRIBE, channel);
}

int broker_publish(broker *b, const char *channel, const char *json, size_t json_len,
                   const char *idem_key, broker_pub_cb *cb, void *arg)
{
    sim *s = b->s;
    if (!s->cmd_ready || s->cmd_dropping)
        return -1;
    int i = chan_index(s, channel);
    if (i < 0 || json_len >= sizeof ((qitem *)0)->json)
        fail(s, "harness: publish to %s of %zu bytes is beyond the model", channel, json_len);
    qitem *it = xcalloc(1, sizeof *it);
    it->kind = Q_PUBLISH;
    it->ch = i;
    memcpy(it->json, json, json_len);
    snprintf(it->idem, sizeof it->idem, "%s", idem_key ? idem_key : "");
    it->pcb = cb;
    it->arg = arg;
    q_push(&s->cmd, it);
    say(s, "client: publish to %s", channel);
    return 0;
}

int broker_procs(broker *b, broker_procs_cb *cb, void *arg)
{
    sim *s = b->s;
    if (!s->cmd_ready || s->cmd_dropping)
        return -1;
    qitem *it = xcalloc(1, sizeof *it);
    it->kind = Q_PROCS;
    it->procs_cb = cb;
    it->arg = arg;
    q_push(&s->cmd, it);
    return 0;
}

/* Presence is not simulated: counts are accepted and forgotten, and
 * channel info is "not connected" (the worker answers 503). */
int broker_presence(broker *b, bool full, const char *const *names, const uint64_t *counts,
                    size_t n)
{
    (void)full, (void)names, (void)counts, (void)n;
    return broker_cmd_ready(b) ? 0 : -1;
}

int broker_channel_info(broker *b, const char *channel, broker_info_cb *cb, void *arg)
{
    (void)b, (void)channel, (void)cb, (void)arg;
    return -1;
}

int broker_channel_list(broker *b, broker_list_cb *cb, void *arg)
{
    (void)b, (void)cb, (void)arg;
    return -1;
}

int broker_goodbye(broker *b, void (*done)(void *arg), void *arg)
{
    (void)b, (void)done, (void)arg;
    return -1; /* as if not connected: done never runs */
}

int broker_read(broker *b, const char *channel, bool has_since, uint64_t since, const char *epoch,
                size_t budget, broker_read_cb *cb, void *arg)
{
    sim *s = b->s;
    if (!s->cmd_ready || s->cmd_dropping)
        return -1;
    int i = chan_index(s, channel);
    if (i < 0)
        fail(s, "read of unknown channel %s", channel);
    qitem *it = xcalloc(1, sizeof *it);
    it->kind = Q_READ;
    it->ch = i;
    it->has_since = has_since;
    it->since = since;
    snprintf(it->epoch, sizeof it->epoch, "%s", epoch ? epoch : "");
    it->budget = budget;
    it->cb = cb;
    it->arg = arg;
    q_push(&s->cmd, it);
    say(s, "hub: read %s since=%s%llu epoch=%s", channel, has_since ? "" : "none/",
        (unsigned long long)since, it->epoch);
    return 0;
}

/* ---- subscribers and the checker -------------------------------------------------------- */

static ssub *ssub_of(hub_sub *hs) { return (ssub *)(void *)hs; }

static void check_msg(sim *s, ssub *u, const char *epoch, const pw_msg *m)
{
    char want[96];
    snprintf(want, sizeof want, "\"%s/%llu\"", epoch, (unsigned long long)m->id);
    if (m->json->len != strlen(want) || memcmp(m->json->data, want, m->json->len) != 0)
        fail(s, "sub %d got %.*s as id %llu of epoch %s", (int)(u - s->subs), (int)m->json->len,
             m->json->data, (unsigned long long)m->id, epoch);
}

static void on_deliver(hub_sub *hs, hub_batch *b)
{
    ssub *u = ssub_of(hs);
    sim *s = u->s;
    int k = (int)(u - s->subs);
    if (!u->attached)
        fail(s, "delivery to detached sub %d", k);
    if (strcmp(b->channel, s->ch[u->ch].name) != 0)
        fail(s, "sub %d of %s got a batch of %s", k, s->ch[u->ch].name, b->channel);
    for (size_t i = 0; i < b->n; i++) {
        check_msg(s, u, b->epoch, b->msgs[i]);
        if (i && b->msgs[i]->id != b->msgs[i - 1]->id + 1)
            fail(s, "sub %d: batch not contiguous at %llu", k, (unsigned long long)b->msgs[i]->id);
    }
    if (b->reset) {
        /* SPEC.md's causes, from what the client knows: the epoch it named
         * or was given is not current, or its since is beyond the newest id
         * or older than the oldest retained one minus one. A client that
         * named no since and has nothing yet started at the hub's "now",
         * which may lie in an epoch Redis has already left (the hub learns
         * it later) or before history that is trimmed meanwhile: not
         * checkable from here, and a reset is then how it learns. */
        bool cause;
        if (!u->has_pos || (u->epoch[0] && strcmp(u->epoch, b->epoch) != 0))
            cause = true;
        else if (b->n == 0)
            cause = u->pos != b->newest_id;
        else
            cause = u->pos > b->newest_id || b->msgs[0]->id > u->pos + 1;
        if (!cause)
            fail(s, "sub %d at %s%llu of epoch %s reset without cause (newest %llu, %zu msgs)", k,
                 u->has_pos ? "" : "none/", (unsigned long long)u->pos,
                 u->epoch[0] ? u->epoch : "(none)", (unsigned long long)b->newest_id, b->n);
    } else {
        if (u->epoch[0] && strcmp(u->epoch, b->epoch) != 0)
            fail(s, "sub %d of epoch %s got epoch %s without a reset", k, u->epoch, b->epoch);
        if (b->n == 0)
            fail(s, "sub %d: empty batch without reset", k);
        uint64_t first = b->msgs[0]->id;
        if (u->has_pos && first != u->pos + 1)
            fail(s, "sub %d at %llu got %llu first (%s)", k, (unsigned long long)u->pos,
                 (unsigned long long)first, first > u->pos + 1 ? "gap" : "duplicate");
        /* Without since, any start is right: "the newest id when the
         * request arrives" is the hub's view, which pub/sub may lag, or a
         * read's, which concurrent publishes may pass. */
    }
    snprintf(u->epoch, sizeof u->epoch, "%s", b->epoch);
    u->pos = b->n ? b->msgs[b->n - 1]->id : b->newest_id;
    u->has_pos = true;
    u->answers++;
    say(s, "sub %d <- %zu msgs up to %llu%s%s", k, b->n, (unsigned long long)u->pos,
        b->reset ? " reset" : "", b->more ? " more" : "");
    if (!u->persistent)
        u->attached = false; /* the hub detached it before this call */
}

static void on_parked(hub_sub *hs)
{
    ssub *u = ssub_of(hs);
    say(u->s, "sub %d parked", (int)(u - u->s->subs));
}

static const hub_sub_ops sim_ops = {.deliver = on_deliver, .parked = on_parked};

/* ---- driving ------------------------------------------------------------------------ */

static uint64_t sim_clock(void *ctx) { return ((sim *)ctx)->now; }

sim *sim_new(unsigned history, unsigned batch_bytes, bool verbose)
{
    sim *s = xcalloc(1, sizeof *s);
    the_sim = s;
    s->verbose = verbose || getenv("HUB_SIM_VERBOSE");
    s->history = history < 1 ? 1 : history > HIST_MAX ? HIST_MAX : history;
    s->now = 1000000;
    s->gen = 1;
    snprintf(s->gen_s, sizeof s->gen_s, "g%07u", s->gen);
    for (int i = 0; i < SIM_CHANNELS; i++)
        snprintf(s->ch[i].name, sizeof s->ch[i].name, "c%d", i);
    s->nch = SIM_CHANNELS;
    log_init("hub_sim", verbose ? LOG_DEBUG : LOG_ERROR);
    s->l = loop_new();
    loop_set_clock(s->l, sim_clock, s);
    /* Tight bounds, so that runs meet them: channels past the cap are
     * refused or evict an unused one, and reads queue for a slot. */
    hub_config hc = {.broker = {.prefix = "pw:", .timeout_ms = 2000, .history = s->history},
                     .batch_bytes = batch_bytes,
                     .ring_bytes = batch_bytes / 2,
                     .linger_ms = 5000,
                     .max_channels = SIM_CHANNELS - 1,
                     .max_reads = 2};
    s->h = hub_new(s->l, &hc);
    s->b = hub_broker(s->h);
    hub_start(s->h);
    return s;
}

void sim_free(sim *s)
{
    hub_stats st = hub_get_stats(s->h);
    hub_sim_totals.refused += st.refused;
    hub_sim_totals.evicted += st.evicted;
    hub_sim_totals.steps += s->steps;
    for (int k = 0; k < SIM_SUBS; k++)
        if (s->subs[k].used && s->subs[k].attached)
            hub_unsubscribe(s->h, &s->subs[k].hs);
    hub_free(s->h);
    loop_free(s->l);
    free(s);
    the_sim = NULL;
}

loop *sim_loop(sim *s) { return s->l; }
hub *sim_hub(sim *s) { return s->h; }

static void check(sim *s)
{
    hub_check(s->h);
    uint64_t q = hub_get_stats(s->h).queued;
    if (q > hub_sim_totals.queued_max)
        hub_sim_totals.queued_max = q;
}

void sim_cmd_up(sim *s)
{
    if (s->cmd_ready)
        return;
    s->cmd_ready = true;
    say(s, "commands up");
    s->b->hooks.cmd_up(s->b->hooks.ctx);
    check(s);
}

void sim_cmd_drop(sim *s)
{
    if (!s->cmd_ready)
        return;
    say(s, "commands drop");
    fail_reads(s);
    s->cmd_ready = false;
    check(s);
}

void sim_sub_up(sim *s)
{
    if (s->sub_ready)
        return;
    s->sub_ready = true;
    say(s, "pub/sub up");
    s->b->hooks.sub_up(s->b->hooks.ctx);
    check(s);
}

void sim_sub_drop(sim *s)
{
    if (!s->sub_ready)
        return;
    say(s, "pub/sub drop");
    s->sub_ready = false;
    qitem *it;
    while ((it = q_pop(&s->subq_out)))
        free(it);
    while ((it = q_pop(&s->subq_in)))
        free(it);
    for (int i = 0; i < s->nch; i++)
        s->ch[i].subscribed = false;
    s->b->hooks.sub_down(s->b->hooks.ctx, 0);
    check(s);
}

/* The server drops one subscription and says so after what it delivered
 * before (a cluster slot moving to another shard). */
void sim_sub_lost(sim *s, int ch)
{
    mchan *c = &s->ch[ch];
    if (!s->sub_ready || !c->subscribed)
        return;
    say(s, "pub/sub: the server drops %s", c->name);
    c->subscribed = false;
    qitem *it = xcalloc(1, sizeof *it);
    it->kind = Q_LOST;
    it->ch = ch;
    q_push(&s->subq_in, it);
}

void sim_restart(sim *s, bool lossy, unsigned lose)
{
    say(s, "redis restart%s (lose %u)", lossy ? " lossy" : "", lose);
    sim_cmd_drop(s);
    sim_sub_drop(s);
    if (!lossy)
        return;
    s->gen++;
    snprintf(s->gen_s, sizeof s->gen_s, "g%07u", s->gen);
    for (int i = 0; i < s->nch; i++) {
        mchan *c = &s->ch[i];
        unsigned k = lose;
        while (k-- && c->seq) {
            if (c->n && c->hist[c->n - 1].id == c->seq)
                c->n--;
            c->seq--;
        }
        /* A new generation rewrites the epochs; the content carries the
         * epoch it was published with, so rename the survivors' content. */
        for (size_t j = 0; j < c->n; j++) {
            char ep[PW_EPOCH_MAX + 1];
            chan_epoch(s, c, ep);
            snprintf(c->hist[j].json, sizeof c->hist[j].json, "\"%s/%llu\"", ep,
                     (unsigned long long)c->hist[j].id);
        }
    }
}

void sim_forget(sim *s, int ch)
{
    mchan *c = &s->ch[ch % SIM_CHANNELS];
    say(s, "redis forgets %s", c->name);
    c->exists = false;
    c->seq = 0;
    c->n = 0;
}

/* The publish script (src/lua/publish.lua) on the model: json is the
 * content as a JSON literal; NULL for the sim's own, which names its epoch
 * and id (the checker recognises it). */
static uint64_t model_publish(sim *s, int i, const char *json, char *epoch_out)
{
    mchan *c = chan_meta(s, i);
    c->seq++;
    if (c->n == s->history) {
        memmove(c->hist, c->hist + 1, (c->n - 1) * sizeof *c->hist);
        c->n--;
    }
    mmsg *m = &c->hist[c->n++];
    m->id = c->seq;
    m->time = (int64_t)s->now;
    char ep[PW_EPOCH_MAX + 1];
    chan_epoch(s, c, ep);
    if (json)
        snprintf(m->json, sizeof m->json, "%s", json);
    else
        snprintf(m->json, sizeof m->json, "\"%s/%llu\"", ep, (unsigned long long)m->id);
    say(s, "publish %s id %llu", c->name, (unsigned long long)m->id);
    if (c->subscribed) {
        qitem *it = xcalloc(1, sizeof *it);
        it->kind = Q_MESSAGE;
        it->ch = i;
        buf p = BUF_INIT;
        env_pubsub_format(&p, ep, m->id, m->time, m->json, strlen(m->json));
        snprintf(it->payload, sizeof it->payload, "%s", p.data);
        buf_free(&p);
        q_push(&s->subq_in, it);
    }
    if (epoch_out)
        snprintf(epoch_out, PW_EPOCH_MAX + 1, "%s", ep);
    return m->id;
}

void sim_publish(sim *s, int ch) { model_publish(s, ch % SIM_CHANNELS, NULL, NULL); }

/* A client's publish with its Idempotency-Key (the script's rules). */
static void exec_publish(sim *s, qitem *it)
{
    broker_pub_result *r = &it->pres;
    memset(r, 0, sizeof *r);
    if (it->idem[0]) {
        for (unsigned k = 0; k < s->nidem && k < IDEM_MAX; k++) {
            idem_rec *d = &s->idem[k];
            if (d->ch == it->ch && !strcmp(d->key, it->idem)) {
                snprintf(r->epoch, sizeof r->epoch, "%s", d->epoch);
                r->id = d->id;
                r->duplicate = true;
                return;
            }
        }
    }
    r->id = model_publish(s, it->ch, it->json, r->epoch);
    if (it->idem[0]) {
        idem_rec *d = &s->idem[s->nidem++ % IDEM_MAX];
        d->ch = it->ch;
        snprintf(d->key, sizeof d->key, "%s", it->idem);
        snprintf(d->epoch, sizeof d->epoch, "%s", r->epoch);
        d->id = r->id;
    }
}

bool sim_cmd_exec(sim *s)
{
    for (qitem *it = s->cmd.head; it; it = it->next) {
        if (it->done)
            continue;
        if (it->kind == Q_READ) {
            exec_read(s, it);
            say(s, "redis runs read %s -> newest %llu, %zu msgs%s", s->ch[it->ch].name,
                (unsigned long long)it->res.newest, it->res.n, it->res.reset ? " reset" : "");
        } else if (it->kind == Q_PUBLISH) {
            exec_publish(s, it);
        }
        it->done = true;
        return true;
    }
    return false;
}

bool sim_cmd_reply(sim *s)
{
    qitem *it = s->cmd.head;
    if (!it || !it->done)
        return false;
    q_pop(&s->cmd);
    if (it->kind == Q_READ) {
        say(s, "reply of read %s", s->ch[it->ch].name);
        it->cb(it->arg, &it->res);
    } else if (it->kind == Q_PUBLISH) {
        it->pcb(it->arg, &it->pres);
    } else {
        broker_procs_result r = {0}; /* nobody heartbeats in the sim */
        it->procs_cb(it->arg, &r);
    }
    free_result(it);
    free(it);
    check(s);
    return true;
}

bool sim_sub_exec(sim *s)
{
    qitem *it = q_pop(&s->subq_out);
    if (!it)
        return false;
    mchan *c = &s->ch[it->ch];
    if (it->kind == Q_SUBSCRIBE) {
        c->subscribed = true;
        it->kind = Q_CONFIRM;
        q_push(&s->subq_in, it);
    } else {
        c->subscribed = false;
        free(it);
    }
    return true;
}

bool sim_sub_deliver(sim *s)
{
    qitem *it = q_pop(&s->subq_in);
    if (!it)
        return false;
    const char *name = s->ch[it->ch].name;
    if (it->kind == Q_CONFIRM) {
        say(s, "pub/sub: subscribed %s", name);
        s->b->hooks.subscribed(s->b->hooks.ctx, name);
    } else if (it->kind == Q_LOST) {
        say(s, "pub/sub: %s unsubscribed by the server", name);
        s->b->hooks.unsubscribed(s->b->hooks.ctx, name, 0);
    } else {
        say(s, "pub/sub: message %s", it->payload);
        s->b->hooks.message(s->b->hooks.ctx, name, it->payload, strlen(it->payload));
    }
    free(it);
    check(s);
    return true;
}

void sim_advance(sim *s, unsigned ms)
{
    s->now += ms;
    loop_run_once(s->l, 0);
    check(s);
}

int sim_subscribe(sim *s, int ch, bool persistent, long long since, int epoch)
{
    int k;
    for (k = 0; k < SIM_SUBS && s->subs[k].used && s->subs[k].attached; k++)
        ;
    if (k == SIM_SUBS)
        return -1;
    ssub *u = &s->subs[k];
    memset(u, 0, sizeof *u);
    u->used = true;
    u->s = s;
    u->ch = ch % SIM_CHANNELS;
    u->persistent = persistent;
    mchan *c = &s->ch[u->ch];
    char ep[PW_EPOCH_MAX + 1] = "";
    if (epoch == 1 && c->exists)
        chan_epoch(s, c, ep);
    else if (epoch == 2)
        snprintf(ep, sizeof ep, "nosuchepoch");
    snprintf(u->epoch, sizeof u->epoch, "%s", ep);
    u->has_pos = since >= 0;
    u->pos = since >= 0 ? (uint64_t)since : 0;
    u->attached = true;
    hub_sub_init(&u->hs, &sim_ops, persistent);
    say(s, "sub %d subscribes %s %s since=%lld epoch=%s", k, c->name,
        persistent ? "stream" : "poll", since, ep);
    if (hub_subscribe(s->h, &u->hs, c->name, since >= 0, u->pos, ep) < 0) {
        hub_sim_totals.refusals_seen++;
        say(s, "sub %d refused: every channel slot has subscribers", k);
        if (hub_get_stats(s->h).channels < SIM_CHANNELS - 1)
            fail(s, "sub %d refused with %llu channels", k,
                 (unsigned long long)hub_get_stats(s->h).channels);
        u->attached = false;
        u->used = false;
        check(s);
        return -1;
    }
    check(s);
    return k;
}

static ssub *live_sub(sim *s, int k)
{
    if (k < 0 || k >= SIM_SUBS || !s->subs[k].used || !s->subs[k].attached)
        return NULL;
    return &s->subs[k];
}

void sim_unsubscribe(sim *s, int k)
{
    ssub *u = live_sub(s, k);
    if (!u)
        return;
    say(s, "sub %d leaves", k);
    hub_unsubscribe(s->h, &u->hs);
    u->attached = false;
    check(s);
}

void sim_resume(sim *s, int k)
{
    ssub *u = live_sub(s, k);
    if (u && u->persistent)
        hub_sub_resume(s->h, &u->hs);
    check(s);
}

void sim_timeout(sim *s, int k)
{
    ssub *u = live_sub(s, k);
    if (!u || u->persistent)
        return;
    const char *epoch;
    uint64_t newest;
    const rbuf *json;
    if (hub_sub_idle(&u->hs, &epoch, &newest, &json)) {
        if (u->has_pos && newest != u->pos)
            fail(s, "sub %d at %llu answered idle with newest %llu", k, (unsigned long long)u->pos,
                 (unsigned long long)newest);
        if (u->epoch[0] && strcmp(u->epoch, epoch) != 0)
            fail(s, "sub %d of epoch %s answered idle in epoch %s", k, u->epoch, epoch);
        if (json) {
            char want[96];
            snprintf(want, sizeof want, "\"%s/%llu\"", epoch, (unsigned long long)newest);
            if (strcmp(json->data, want) != 0)
                fail(s, "sub %d idle answer content %s, not %s", k, json->data, want);
        }
        u->answers++;
        say(s, "sub %d answered idle at %llu", k, (unsigned long long)newest);
    } else {
        say(s, "sub %d gives up (503)", k);
    }
    hub_unsubscribe(s->h, &u->hs);
    u->attached = false;
    check(s);
}

uint64_t sim_newest(const sim *s, int ch) { return s->ch[ch % SIM_CHANNELS].seq; }
bool sim_sub_attached(const sim *s, int k) { return k >= 0 && k < SIM_SUBS && s->subs[k].attached; }
uint64_t sim_sub_pos(const sim *s, int k) { return s->subs[k].pos; }
int sim_sub_answers(const sim *s, int k) { return s->subs[k].answers; }

static void settle_rounds(sim *s)
{
    for (int round = 0; round < 60; round++) {
        sim_cmd_up(s);
        sim_sub_up(s);
        bool moved = false;
        for (int guard = 0; guard < 10000; guard++) {
            bool any = sim_sub_exec(s) || sim_sub_deliver(s) || sim_cmd_exec(s) || sim_cmd_reply(s);
            if (!any)
                break;
            moved = true;
        }
        for (int k = 0; k < SIM_SUBS; k++)
            if (s->subs[k].used && s->subs[k].attached && s->subs[k].hs.state == SUB_PAUSED) {
                hub_sub_resume(s->h, &s->subs[k].hs);
                moved = true;
            }
        if (!moved && round > 3)
            break;
        sim_advance(s, 1100); /* retry timers */
    }
}

void sim_settle(sim *s)
{
    say(s, "settle");
    settle_rounds(s);
    /* One more message on every channel: a view that is stale without
     * anybody knowing (state forgotten in Redis, a subscription lost in a
     * race) must be found out by it, as in reality. */
    for (int i = 0; i < s->nch; i++)
        sim_publish(s, i);
    settle_rounds(s);
    for (int k = 0; k < SIM_SUBS; k++) {
        ssub *u = &s->subs[k];
        if (!u->used || !u->attached)
            continue;
        mchan *c = &s->ch[u->ch];
        char ep[PW_EPOCH_MAX + 1];
        chan_epoch(s, c, ep);
        if (u->hs.state != SUB_PARKED)
            fail(s, "settled, but sub %d (%s) is stuck in state %d at %llu", k, c->name,
                 u->hs.state, (unsigned long long)u->pos);
        uint64_t pos = u->has_pos ? u->pos : u->hs.since;
        if (pos != c->seq || (u->epoch[0] && strcmp(u->epoch, ep) != 0))
            fail(s, "settled, but sub %d (%s) is at %llu of %s while Redis has %llu of %s", k,
                 c->name, (unsigned long long)pos, u->epoch, (unsigned long long)c->seq, ep);
    }
}

void sim_step(sim *s, uint8_t op, uint8_t arg)
{
    s->steps++;
    switch (op % 24) {
    case 0:
    case 1:
    case 2:
        sim_publish(s, arg);
        break;
    case 3:
    case 4:
        sim_cmd_exec(s);
        break;
    case 5:
    case 6:
        sim_cmd_reply(s);
        break;
    case 7:
        sim_sub_exec(s);
        break;
    case 8:
    case 9:
        sim_sub_deliver(s);
        break;
    case 10:
    case 11: {
        int ch = arg % SIM_CHANNELS;
        long long seq = (long long)s->ch[ch].seq;
        long long sinces[5] = {-1, 0, seq, seq > 2 ? seq - 2 : 0, seq + 3};
        sim_subscribe(s, ch, (arg >> 2) & 1, sinces[(arg >> 3) % 5], (arg >> 6) % 3);
        break;
    }
    case 12:
        sim_unsubscribe(s, arg % SIM_SUBS);
        break;
    case 13:
    case 14:
        sim_timeout(s, arg % SIM_SUBS);
        break;
    case 15:
        sim_resume(s, arg % SIM_SUBS);
        break;
    case 16:
        sim_advance(s, (unsigned)arg * 20);
        break;
    case 17:
        if (arg & 1)
            sim_cmd_drop(s);
        else
            sim_cmd_up(s);
        break;
    case 18:
        if (arg & 1)
            sim_sub_drop(s);
        else
            sim_sub_up(s);
        break;
    case 19:
        if (arg < 32)
            sim_restart(s, arg & 1, (arg >> 1) % 4);
        break;
    case 20:
        if (arg < 16)
            sim_forget(s, arg);
        else if (arg < 32)
            sim_sub_lost(s, arg % SIM_CHANNELS);
        break;
    case 21:
        while (sim_cmd_exec(s))
            ;
        break;
    case 22:
        while (sim_sub_exec(s) || sim_sub_deliver(s))
            ;
        break;
    default:
        sim_cmd_up(s);
        sim_sub_up(s);
        break;
    }
    check(s);
}
