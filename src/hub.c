/* hub.c - per-channel subscription, sync and delivery logic.
 *
 * Channel life: UNSUB -> SUBSCRIBING -> SUBSCRIBED; once subscribed, a
 * "sync" read fetches (epoch, newest id, newest message) and from then on the
 * channel is synced: pub/sub messages extend a contiguous ring. Any doubt (a
 * lost pub/sub connection, a gap, another epoch) un-syncs the channel and
 * every subscriber waits for the next sync, which re-reads from Redis.
 * No socket I/O here.
 */
#include "hub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"

#define RING_MAX    64  /* messages kept per channel */
#define PENDING_MAX 256 /* pub/sub messages buffered while a sync read runs */

enum ch_sub_state { CH_UNSUB, CH_SUBSCRIBING, CH_SUBSCRIBED };

/* A pub/sub message that arrived while the channel's sync read ran. */
typedef struct pending_msg {
    pw_msg m;
    char epoch[PW_EPOCH_MAX + 1];
} pending_msg;

struct hub_read {
    hub *h;
    hub_channel *ch;
    hub_read *next; /* in the channel's list of reads */
    hub_sub *subs;  /* waiting subscribers (op list) */
    bool sync;      /* the channel's sync read (no subscribers) */
    bool has_since;
    uint64_t since;
    char epoch[PW_EPOCH_MAX + 1];
    uint64_t gen; /* channel subscription generation when sent */
};

struct hub_channel {
    char name[PW_CHANNEL_MAX + 1];
    hub_channel *hnext;
    hub *h;
    hub_sub *subs;
    size_t nsubs;
    hub_read *reads;
    hub_channel *idle_prev, *idle_next; /* on the idle list while nsubs == 0 */
    uint8_t sub_state;
    int sub_node; /* where the subscription was sent (broker_subscribe) */
    bool synced;
    bool sync_inflight;
    bool resync_after; /* pub/sub overflowed the pending queue during a sync */
    uint64_t sub_gen;  /* bumped on every subscription confirmation */
    char epoch[PW_EPOCH_MAX + 1];
    uint64_t last_id;
    pw_msg ring[RING_MAX];
    size_t ring_start, ring_n, ring_bytes;
    pending_msg *pending;
    size_t pending_n;
    timer linger;
    timer retry;
    uint64_t reported; /* the subscriber count Redis has for us (presence) */
};

struct hub {
    loop *l;
    hub_config cfg;
    broker *b;
    hub_channel **table;
    size_t buckets;
    hub_stats stats;
    unsigned depth; /* nesting of entry points; invariants hold at 0 */
    hub_channel *idle_head, *idle_tail; /* channels without subscribers, oldest first */
    hub_sub *queue_head, *queue_tail;   /* subscribers waiting for a read slot */
    timer presence;
    bool presence_full; /* Redis may have lost our counts: write them all */
    buf gone;           /* NUL-separated channels freed while Redis counted them */
};

/* Every entry point (public call, broker hook, timer) is bracketed so that
 * the sanitizer build checks the invariants when the outermost one returns;
 * inside, while a delivery loop runs, they need not hold. */
#ifdef PW_CHECK_INVARIANTS
#define HUB_ENTER(h) ((h)->depth++)
#define HUB_LEAVE(h) ((--(h)->depth == 0) ? hub_check(h) : (void)0)
#else
#define HUB_ENTER(h) ((void)(h))
#define HUB_LEAVE(h) ((void)(h))
#endif

static void ch_sync(hub_channel *ch);
static void ch_unsync(hub_channel *ch);
static void sub_process(hub *h, hub_sub *s);
static void ch_process_waiting(hub_channel *ch);

/* ---- channel table ------------------------------------------------------ */

static size_t name_hash(const char *s)
{
    size_t x = 1469598103934665603ULL;
    while (*s)
        x = (x ^ (unsigned char)*s++) * 1099511628211ULL;
    return x;
}

static hub_channel *ch_find(hub *h, const char *name)
{
    for (hub_channel *c = h->table[name_hash(name) & (h->buckets - 1)]; c; c = c->hnext)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void table_grow(hub *h)
{
    size_t nb = h->buckets * 2;
    hub_channel **t = xcalloc(nb, sizeof *t);
    for (size_t i = 0; i < h->buckets; i++) {
        for (hub_channel *c = h->table[i], *next; c; c = next) {
            next = c->hnext;
            size_t j = name_hash(c->name) & (nb - 1);
            c->hnext = t[j];
            t[j] = c;
        }
    }
    free(h->table);
    h->table = t;
    h->buckets = nb;
}

static void linger_cb(loop *l, timer *t);
static void retry_cb(loop *l, timer *t);

static void idle_add(hub *h, hub_channel *c)
{
    c->idle_next = NULL;
    c->idle_prev = h->idle_tail;
    if (h->idle_tail)
        h->idle_tail->idle_next = c;
    else
        h->idle_head = c;
    h->idle_tail = c;
}

static void idle_del(hub *h, hub_channel *c)
{
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else if (h->idle_head == c)
        h->idle_head = c->idle_next;
    else
        return; /* not on the list */
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        h->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
}

static void ch_free(hub_channel *ch);

/* Drop the longest-unused channel without subscribers or reads in flight,
 * to make room under max_channels. Returns false when there is none. */
static bool evict_one(hub *h)
{
    for (hub_channel *c = h->idle_head; c; c = c->idle_next) {
        if (c->reads)
            continue;
        if (c->sub_state != CH_UNSUB)
            broker_unsubscribe(h->b, c->name, c->sub_node);
        ch_free(c);
        h->stats.evicted++;
        return true;
    }
    return false;
}

/* The channel named, created (idle) if need be; NULL at max_channels. */
static hub_channel *ch_get(hub *h, const char *name)
{
    hub_channel *c = ch_find(h, name);
    if (c)
        return c;
    if (h->cfg.max_channels && h->stats.channels >= h->cfg.max_channels && !evict_one(h))
        return NULL;
    if (h->stats.channels + 1 > h->buckets)
        table_grow(h);
    c = xcalloc(1, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    c->h = h;
    c->linger.cb = linger_cb;
    c->retry.cb = retry_cb;
    size_t j = name_hash(name) & (h->buckets - 1);
    c->hnext = h->table[j];
    h->table[j] = c;
    h->stats.channels++;
    idle_add(h, c);
    return c;
}

static void ring_clear(hub_channel *ch)
{
    for (size_t i = 0; i < ch->ring_n; i++)
        rbuf_unref(ch->ring[(ch->ring_start + i) % RING_MAX].json);
    ch->ring_start = ch->ring_n = ch->ring_bytes = 0;
}

static void pending_clear(hub_channel *ch)
{
    for (size_t i = 0; i < ch->pending_n; i++)
        rbuf_unref(ch->pending[i].m.json);
    free(ch->pending);
    ch->pending = NULL;
    ch->pending_n = 0;
}

static void ch_free(hub_channel *ch)
{
    hub *h = ch->h;
    hub_channel **pp = &h->table[name_hash(ch->name) & (h->buckets - 1)];
    while (*pp != ch)
        pp = &(*pp)->hnext;
    *pp = ch->hnext;
    timer_stop(h->l, &ch->linger);
    timer_stop(h->l, &ch->retry);
    idle_del(h, ch);
    ring_clear(ch);
    pending_clear(ch);
    if (ch->reported)
        buf_append(&h->gone, ch->name, strlen(ch->name) + 1);
    h->stats.channels--;
    free(ch);
}

static void linger_cb(loop *l, timer *t)
{
    hub_channel *ch = (hub_channel *)((char *)t - offsetof(hub_channel, linger));
    hub *h = ch->h;
    if (ch->nsubs)
        return;
    if (ch->reads) { /* a read still refers to the channel */
        timer_start(l, t, 1000);
        return;
    }
    HUB_ENTER(h);
    if (ch->sub_state != CH_UNSUB)
        broker_unsubscribe(h->b, ch->name, ch->sub_node);
    ch_free(ch);
    HUB_LEAVE(h);
}

static void retry_cb(loop *l, timer *t)
{
    (void)l;
    hub_channel *ch = (hub_channel *)((char *)t - offsetof(hub_channel, retry));
    hub *h = ch->h;
    HUB_ENTER(h);
    if (ch->synced)
        ch_process_waiting(ch);
    else
        ch_sync(ch);
    HUB_LEAVE(h);
}

/* ---- subscriber lists ------------------------------------------------------ */

static void sub_link(hub_channel *ch, hub_sub *s)
{
    s->ch = ch;
    s->prev = NULL;
    s->next = ch->subs;
    if (ch->subs)
        ch->subs->prev = s;
    ch->subs = s;
    if (!ch->nsubs++)
        idle_del(ch->h, ch);
    ch->h->stats.subs++;
    timer_stop(ch->h->l, &ch->linger);
}

static void op_unlink(hub_sub *s)
{
    hub_read *op = s->op;
    if (!op)
        return;
    if (s->op_prev)
        s->op_prev->op_next = s->op_next;
    else
        op->subs = s->op_next;
    if (s->op_next)
        s->op_next->op_prev = s->op_prev;
    s->op = NULL;
    s->op_prev = s->op_next = NULL;
}

/* ---- the read queue ------------------------------------------------------- */

static void queue_add(hub *h, hub_sub *s)
{
    s->op_next = NULL;
    s->op_prev = h->queue_tail;
    if (h->queue_tail)
        h->queue_tail->op_next = s;
    else
        h->queue_head = s;
    h->queue_tail = s;
    h->stats.queued++;
}

static void queue_del(hub *h, hub_sub *s)
{
    if (s->state != SUB_QUEUED)
        return;
    if (s->op_prev)
        s->op_prev->op_next = s->op_next;
    else
        h->queue_head = s->op_next;
    if (s->op_next)
        s->op_next->op_prev = s->op_prev;
    else
        h->queue_tail = s->op_prev;
    s->op_prev = s->op_next = NULL;
    h->stats.queued--;
}

static void set_state(hub *h, hub_sub *s, uint8_t st)
{
    if (s->state == SUB_PARKED)
        h->stats.parked--;
    if (st == SUB_PARKED)
        h->stats.parked++;
    s->state = st;
}

static void sub_unlink(hub_sub *s)
{
    hub_channel *ch = s->ch;
    if (!ch)
        return;
    hub *h = ch->h;
    op_unlink(s);
    queue_del(h, s);
    set_state(h, s, SUB_DETACHED);
    if (s->prev)
        s->prev->next = s->next;
    else
        ch->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->ch = NULL;
    ch->nsubs--;
    h->stats.subs--;
    if (!ch->nsubs) {
        idle_add(h, ch);
        timer_start(h->l, &ch->linger, h->cfg.linger_ms);
    }
}

/* ---- delivery ------------------------------------------------------------------ */

static void batch_done(hub_batch *b)
{
    if (b->cache && b->cache_free)
        b->cache_free(b->cache);
    b->cache = NULL;
}

/* Hand b to s and advance s. One-shot subscribers are detached first. */
static void deliver(hub *h, hub_sub *s, hub_batch *b)
{
    h->stats.batches++;
    h->stats.messages_out += b->n;
    if (!s->persistent) {
        sub_unlink(s);
        s->ops->deliver(s, b);
        return;
    }
    s->since = b->n ? b->msgs[b->n - 1]->id : b->newest_id;
    s->has_since = true;
    snprintf(s->epoch, sizeof s->epoch, "%s", b->epoch);
    s->epoch_filled = s->since_filled = false; /* the client knows them now */
    set_state(h, s, b->more ? SUB_PAUSED : SUB_WAIT);
    s->ops->deliver(s, b);
}

static void park(hub *h, hub_sub *s)
{
    if (!s->epoch[0]) {
        snprintf(s->epoch, sizeof s->epoch, "%s", s->ch->epoch);
        s->epoch_filled = true;
    }
    set_state(h, s, SUB_PARKED);
    if (s->ops->parked)
        s->ops->parked(s);
}

static pw_msg *ring_at(hub_channel *ch, size_t i) { return &ch->ring[(ch->ring_start + i) % RING_MAX]; }

static uint64_t ring_first(hub_channel *ch) { return ch->ring_n ? ring_at(ch, 0)->id : 0; }

static void ring_push(hub *h, hub_channel *ch, const pw_msg *m)
{
    while (ch->ring_n && (ch->ring_n == RING_MAX || ch->ring_bytes + m->json->len > h->cfg.ring_bytes)) {
        pw_msg *old = ring_at(ch, 0);
        ch->ring_bytes -= old->json->len;
        rbuf_unref(old->json);
        ch->ring_start = (ch->ring_start + 1) % RING_MAX;
        ch->ring_n--;
    }
    pw_msg *slot = &ch->ring[(ch->ring_start + ch->ring_n) % RING_MAX];
    *slot = *m;
    rbuf_ref(slot->json);
    ch->ring_n++;
    ch->ring_bytes += m->json->len;
}

/* s holds an epoch that has ended (the channel or a read has another).
 * When the hub filled it in for a client that named a since but no epoch
 * and has been given nothing, the client has no position in that epoch: it
 * keeps its since under SPEC.md's rules for a since without epoch (reset
 * only when outside the retained ids). Returns true then. Otherwise (the
 * client named or was given the epoch, or named no since, so that its "now"
 * was in the ended epoch) Redis decides, with a reset. */
static bool sub_drop_filled_epoch(hub_sub *s)
{
    if (!s->epoch_filled || s->since_filled)
        return false;
    s->epoch[0] = '\0';
    s->epoch_filled = false;
    s->verified = false;
    return true;
}

/* Deliver ring messages after s->since to s. The ring is contiguous and
 * covers since+1 (checked by the caller). */
static void deliver_from_ring(hub *h, hub_sub *s)
{
    hub_channel *ch = s->ch;
    pw_msg *list[RING_MAX];
    size_t n = 0;
    for (size_t i = 0; i < ch->ring_n; i++) {
        pw_msg *m = ring_at(ch, i);
        if (m->id > s->since)
            list[n++] = m;
    }
    hub_batch b = {.channel = ch->name, .epoch = ch->epoch, .msgs = list, .n = n};
    deliver(h, s, &b);
    batch_done(&b);
}

/* ---- reads ------------------------------------------------------------------------ */

static void read_reply(void *arg, const broker_read_result *r);

static void read_free(hub_read *op)
{
    hub_channel *ch = op->ch;
    hub_read **pp = &ch->reads;
    while (*pp && *pp != op)
        pp = &(*pp)->next;
    if (*pp)
        *pp = op->next;
    free(op);
}

/* Join s to a read of (since, epoch) on its channel, sending one if none is
 * in flight: 10,000 clients that resume from the same id cost one read. */
static void sub_read(hub *h, hub_sub *s)
{
    hub_channel *ch = s->ch;
    hub_read *op;
    for (op = ch->reads; op; op = op->next)
        if (!op->sync && op->has_since == s->has_since && op->since == s->since &&
            strcmp(op->epoch, s->epoch) == 0 && op->gen == ch->sub_gen)
            break;
    if (!op && h->cfg.max_reads && h->stats.reads >= h->cfg.max_reads) {
        set_state(h, s, SUB_QUEUED); /* queue_pump sends it when a read ends */
        queue_add(h, s);
        return;
    }
    if (!op) {
        op = xcalloc(1, sizeof *op);
        op->h = h;
        op->ch = ch;
        op->has_since = s->has_since;
        op->since = s->since;
        snprintf(op->epoch, sizeof op->epoch, "%s", s->epoch);
        op->gen = ch->sub_gen;
        if (broker_read(h->b, ch->name, op->has_since, op->since, op->epoch, h->cfg.batch_bytes,
                        read_reply, op) < 0) {
            free(op);
            set_state(h, s, SUB_WAIT); /* cmd_up or the retry timer resumes it */
            if (broker_cmd_ready(h->b))
                timer_start(h->l, &ch->retry, 500);
            return;
        }
        op->next = ch->reads;
        ch->reads = op;
        h->stats.reads++;
    }
    s->op = op;
    s->op_prev = NULL;
    s->op_next = op->subs;
    if (op->subs)
        op->subs->op_prev = s;
    op->subs = s;
    set_state(h, s, SUB_READING);
}

static void apply_sync(hub *h, hub_channel *ch, const broker_read_result *r);

static void read_result(hub_read *op, const broker_read_result *r);
static void queue_pump(hub *h);
static void read_deliver(hub *h, hub_channel *ch, hub_sub *list, const broker_read_result *r,
                         bool continuous);

static void read_reply(void *arg, const broker_read_result *r)
{
    hub_read *op = arg;
    hub *h = op->h;
    HUB_ENTER(h);
    read_result(op, r);
    HUB_LEAVE(h);
}

static void read_result(hub_read *op, const broker_read_result *r)
{
    hub *h = op->h;
    hub_channel *ch = op->ch;
    bool continuous = ch->sub_state == CH_SUBSCRIBED && op->gen == ch->sub_gen;

    if (op->sync) {
        ch->sync_inflight = false;
        read_free(op);
        if (r->err || !continuous) {
            /* What pub/sub brought meanwhile belongs to this read: the next
             * sync reads a newer state anyway. */
            pending_clear(ch);
            ch->resync_after = false;
        }
        if (r->err) {
            if (broker_cmd_ready(h->b))
                timer_start(h->l, &ch->retry, 1000);
            return;
        }
        if (continuous)
            apply_sync(h, ch, r);
        else
            ch_sync(ch); /* sent before the latest (re)subscription: ask again */
        return;
    }

    /* Detach the waiting subscribers from the op first: delivering may
     * free them. */
    hub_sub *list = op->subs;
    for (hub_sub *s = list; s; s = s->op_next)
        s->op = NULL;
    read_free(op);
    h->stats.reads--;
    read_deliver(h, ch, list, r, continuous);
    queue_pump(h);
}

/* Serve queued subscribers while read slots are free. */
static void queue_pump(hub *h)
{
    while (h->queue_head && (!h->cfg.max_reads || h->stats.reads < h->cfg.max_reads)) {
        hub_sub *s = h->queue_head;
        queue_del(h, s);
        set_state(h, s, SUB_WAIT);
        sub_process(h, s);
    }
}

/* Hand a read's result to the subscribers that waited on it. */
static void read_deliver(hub *h, hub_channel *ch, hub_sub *list, const broker_read_result *r,
                         bool continuous)
{
    if (r->err) {
        for (hub_sub *s = list, *next; s; s = next) {
            next = s->op_next;
            s->op_prev = s->op_next = NULL;
            set_state(h, s, SUB_WAIT);
        }
        if (broker_cmd_ready(h->b))
            timer_start(h->l, &ch->retry, 1000);
        return;
    }

    /* Redis answered with another epoch than the one the channel is synced
     * to: the channel's state was forgotten or lost in Redis without a
     * message telling us (a TTL expiry, a restart). Our view is stale; sync
     * again, else subscribers holding the new epoch would read forever. */
    if (continuous && ch->synced && strcmp(r->epoch, ch->epoch) != 0) {
        log_info("channel %s: Redis has epoch %s, not %s; resyncing", ch->name, r->epoch,
                 ch->epoch);
        ch_unsync(ch);
        ch_sync(ch);
    }

    pw_msg **msgs = r->n ? xmalloc(r->n * sizeof *msgs) : NULL;
    for (size_t i = 0; i < r->n; i++)
        msgs[i] = &r->entries[i];
    hub_batch b = {.channel = ch->name,
                   .epoch = r->epoch,
                   .msgs = msgs,
                   .n = r->n,
                   .reset = r->reset,
                   .more = r->more,
                   .newest_id = r->newest,
                   .newest_json = r->newest_msg ? r->newest_msg->json : NULL};
    for (hub_sub *s = list, *next; s; s = next) {
        next = s->op_next;
        s->op_prev = s->op_next = NULL;
        if (r->reset && strcmp(r->epoch, s->epoch) != 0 && sub_drop_filled_epoch(s)) {
            set_state(h, s, SUB_WAIT);
            if (continuous)
                sub_process(h, s); /* asks again, without the epoch */
            continue;
        }
        if (r->reset || r->n) {
            bool one_shot = !s->persistent;
            deliver(h, s, &b);
            if (one_shot || !s->ch)
                continue;
            s->verified = continuous;
            if (s->state == SUB_WAIT)
                sub_process(h, s);
        } else {
            /* Up to date as of the read. Parking relies on pub/sub having
             * been continuous since before the read was sent. */
            if (!s->has_since) {
                s->has_since = true;
                s->since = r->newest;
                s->since_filled = true;
            }
            if (!s->epoch[0])
                s->epoch_filled = true;
            snprintf(s->epoch, sizeof s->epoch, "%s", r->epoch);
            s->verified = continuous;
            set_state(h, s, SUB_WAIT);
            if (continuous)
                sub_process(h, s);
        }
    }
    batch_done(&b);
    free(msgs);
}

/* ---- channel sync ---------------------------------------------------------------- */

static void ch_unsync(hub_channel *ch)
{
    hub *h = ch->h;
    ch->synced = false;
    ring_clear(ch);
    for (hub_sub *s = ch->subs; s; s = s->next)
        if (s->state == SUB_PARKED)
            set_state(h, s, SUB_WAIT);
}

static void ch_sync(hub_channel *ch)
{
    hub *h = ch->h;
    if (ch->sub_state != CH_SUBSCRIBED || ch->sync_inflight || ch->synced)
        return;
    hub_read *op = xcalloc(1, sizeof *op);
    op->h = h;
    op->ch = ch;
    op->sync = true;
    op->gen = ch->sub_gen;
    if (broker_read(h->b, ch->name, false, 0, "", h->cfg.batch_bytes, read_reply, op) < 0) {
        free(op);
        return; /* cmd_up resumes */
    }
    op->next = ch->reads;
    ch->reads = op;
    ch->sync_inflight = true;
    h->stats.resyncs++;
}

/* A live message in order: extend the ring and answer the parked. */
static void ch_live(hub *h, hub_channel *ch, const pw_msg *m)
{
    ring_push(h, ch, m);
    ch->last_id = m->id;
    pw_msg *one = ring_at(ch, ch->ring_n - 1);
    hub_batch b = {.channel = ch->name, .epoch = ch->epoch, .msgs = &one, .n = 1};
    for (hub_sub *s = ch->subs, *next; s; s = next) {
        next = s->next;
        if (s->state == SUB_PARKED && s->since == m->id) {
            /* It was parked ahead (a read gave it m first): now idle. */
            if (s->ops->parked)
                s->ops->parked(s);
            continue;
        }
        if (s->state != SUB_PARKED || s->since + 1 != m->id)
            continue;
        bool persistent = s->persistent;
        deliver(h, s, &b);
        if (persistent && s->ch && s->state == SUB_WAIT)
            set_state(h, s, SUB_PARKED); /* caught up */
    }
    batch_done(&b);
}

/* Returns false when m breaks continuity (the channel is then un-synced and
 * a new sync started). */
static bool ch_accept(hub *h, hub_channel *ch, const char *epoch, const pw_msg *m)
{
    if (strcmp(epoch, ch->epoch) != 0 || m->id > ch->last_id + 1) {
        log_info("channel %s: %s; resyncing from history", ch->name,
                 strcmp(epoch, ch->epoch) != 0 ? "new epoch" : "gap in pub/sub");
        ch_unsync(ch);
        ch_sync(ch);
        return false;
    }
    if (m->id <= ch->last_id)
        return true; /* already known */
    ch_live(h, ch, m);
    return true;
}

static void apply_sync(hub *h, hub_channel *ch, const broker_read_result *r)
{
    ring_clear(ch);
    snprintf(ch->epoch, sizeof ch->epoch, "%s", r->epoch);
    ch->last_id = r->newest;
    if (r->newest_msg)
        ring_push(h, ch, r->newest_msg);
    ch->synced = true;
    /* Messages that arrived while the read ran. */
    pending_msg *pend = ch->pending;
    size_t pn = ch->pending_n;
    ch->pending = NULL;
    ch->pending_n = 0;
    bool ok = !ch->resync_after;
    ch->resync_after = false;
    for (size_t i = 0; i < pn; i++) {
        if (ok && ch->synced)
            ok = ch_accept(h, ch, pend[i].epoch, &pend[i].m);
        rbuf_unref(pend[i].m.json);
    }
    free(pend);
    if (!ok) {
        ch_unsync(ch);
        ch_sync(ch);
        return;
    }
    ch_process_waiting(ch);
}

static void ch_process_waiting(hub_channel *ch)
{
    hub *h = ch->h;
    for (hub_sub *s = ch->subs, *next; s; s = next) {
        next = s->next;
        if (s->state == SUB_WAIT)
            sub_process(h, s);
        /* sub_process may deliver to and detach s, never next. */
    }
}

static void ch_subscribe(hub_channel *ch)
{
    if (ch->sub_state != CH_UNSUB)
        return;
    int node = broker_subscribe(ch->h->b, ch->name);
    if (node >= 0) {
        ch->sub_state = CH_SUBSCRIBING;
        ch->sub_node = node;
    }
}

/* ---- the decision for one subscriber ------------------------------------------- */

static void sub_process(hub *h, hub_sub *s)
{
    hub_channel *ch = s->ch;
    if (ch->sub_state != CH_SUBSCRIBED || !ch->synced) {
        set_state(h, s, SUB_WAIT);
        ch_subscribe(ch);
        ch_sync(ch);
        /* "No since" means the newest id when the request arrives, not when
         * the channel is ready: ask Redis now (one read for all such
         * subscribers), so a message published meanwhile is not skipped. */
        if (!s->has_since && broker_cmd_ready(h->b))
            sub_read(h, s);
        return;
    }
    if (s->epoch[0] && strcmp(s->epoch, ch->epoch) != 0 && !sub_drop_filled_epoch(s)) {
        sub_read(h, s); /* Redis decides: reset, or the epoch moved on meanwhile */
        return;
    }
    if (!s->has_since) {
        s->has_since = true;
        s->since = ch->last_id;
        s->since_filled = true;
        s->verified = true;
        park(h, s);
        return;
    }
    if (s->since == ch->last_id || (s->since > ch->last_id && s->verified)) {
        park(h, s);
        return;
    }
    if (s->since < ch->last_id && ch->ring_n && ring_first(ch) <= s->since + 1) {
        if (!s->epoch[0])
            snprintf(s->epoch, sizeof s->epoch, "%s", ch->epoch);
        bool persistent = s->persistent;
        deliver_from_ring(h, s);
        if (persistent && s->ch && s->state == SUB_WAIT)
            sub_process(h, s);
        return;
    }
    sub_read(h, s);
}

/* ---- broker hooks ------------------------------------------------------------------ */

static void message_in(hub *h, const char *name, const char *payload, size_t len);

/* Write the subscriber counts that changed since the last time (all of
 * them when Redis may have lost ours), and the channels freed since. */
static void presence_cb(loop *l, timer *t)
{
    hub *h = (hub *)((char *)t - offsetof(hub, presence));
    timer_start(l, t, h->cfg.presence_ms);
    if (!broker_cmd_ready(h->b))
        return;
    size_t cap = h->stats.channels + 16, n = 0;
    const char **names = xcalloc(cap, sizeof *names);
    uint64_t *counts = xcalloc(cap, sizeof *counts);
    bool full = h->presence_full;
    for (size_t i = 0; i < h->buckets; i++)
        for (hub_channel *c = h->table[i]; c; c = c->hnext) {
            if (!full && c->nsubs == c->reported)
                continue;
            if (full && c->nsubs == 0)
                continue;
            if (n == cap) {
                cap *= 2;
                names = xrealloc(names, cap * sizeof *names);
                counts = xrealloc(counts, cap * sizeof *counts);
            }
            names[n] = c->name;
            counts[n++] = c->nsubs;
        }
    size_t ngone = 0;
    for (size_t off = 0; !full && off < h->gone.len; off += strlen(h->gone.data + off) + 1)
        ngone++;
    if (ngone) {
        names = xrealloc(names, (n + ngone) * sizeof *names);
        counts = xrealloc(counts, (n + ngone) * sizeof *counts);
        for (size_t off = 0; off < h->gone.len; off += strlen(h->gone.data + off) + 1) {
            names[n] = h->gone.data + off;
            counts[n++] = 0;
        }
    }
    if (broker_presence(h->b, full, names, counts, n) == 0) {
        h->presence_full = false;
        buf_reset(&h->gone);
        for (size_t i = 0; i < h->buckets; i++)
            for (hub_channel *c = h->table[i]; c; c = c->hnext)
                c->reported = c->nsubs;
    } else {
        h->presence_full = true;
    }
    free(names);
    free(counts);
}

/* Something became reachable (a connection, or a slot map naming other
 * owners): subscribe every channel that is not, then let every channel
 * make progress. One entry for both kinds of news: a new slot map makes
 * commands and subscriptions possible at once, and the invariants hold
 * only once both were acted on, whichever hook comes first. */
static void hub_wake(hub *h)
{
    HUB_ENTER(h);
    for (size_t i = 0; i < h->buckets; i++)
        for (hub_channel *c = h->table[i]; c; c = c->hnext)
            if (c->nsubs)
                ch_subscribe(c);
    for (size_t i = 0; i < h->buckets; i++)
        for (hub_channel *c = h->table[i]; c; c = c->hnext) {
            if (c->synced)
                ch_process_waiting(c);
            else
                ch_sync(c);
        }
    queue_pump(h);
    HUB_LEAVE(h);
}

static void on_cmd_up(void *ctx)
{
    hub *h = ctx;
    h->presence_full = true;
    hub_wake(h);
}

static void on_sub_up(void *ctx) { hub_wake(ctx); }

/* The subscription is gone: the channel waits for the next one, and
 * re-reads from Redis what it missed meanwhile. */
static void ch_lost(hub_channel *c)
{
    c->sub_state = CH_UNSUB;
    pending_clear(c);
    ch_unsync(c);
}

static void on_sub_down(void *ctx, int node)
{
    hub *h = ctx;
    HUB_ENTER(h);
    for (size_t i = 0; i < h->buckets; i++)
        for (hub_channel *c = h->table[i]; c; c = c->hnext)
            if (c->sub_state == CH_UNSUB || c->sub_node == node)
                ch_lost(c);
    /* The same channels may be served elsewhere (another shard now). */
    for (size_t i = 0; i < h->buckets; i++)
        for (hub_channel *c = h->table[i]; c; c = c->hnext)
            if (c->nsubs)
                ch_subscribe(c);
    HUB_LEAVE(h);
}

static void on_unsubscribed(void *ctx, const char *name, int node)
{
    hub *h = ctx;
    hub_channel *ch = ch_find(h, name);
    if (!ch || ch->sub_state == CH_UNSUB || ch->sub_node != node)
        return;
    HUB_ENTER(h);
    ch_lost(ch);
    if (ch->nsubs)
        ch_subscribe(ch);
    HUB_LEAVE(h);
}

static void on_subscribed(void *ctx, const char *name)
{
    hub *h = ctx;
    hub_channel *ch = ch_find(h, name);
    if (!ch || ch->sub_state == CH_SUBSCRIBED)
        return;
    HUB_ENTER(h);
    ch->sub_state = CH_SUBSCRIBED;
    ch->sub_gen++;
    ch_unsync(ch);
    ch_sync(ch);
    HUB_LEAVE(h);
}

static void on_message(void *ctx, const char *name, const char *payload, size_t len)
{
    hub *h = ctx;
    HUB_ENTER(h);
    message_in(h, name, payload, len);
    HUB_LEAVE(h);
}

static void message_in(hub *h, const char *name, const char *payload, size_t len)
{
    hub_channel *ch = ch_find(h, name);
    if (!ch || ch->sub_state != CH_SUBSCRIBED)
        return;
    pubsub_view v;
    if (env_pubsub_parse(payload, len, &v) < 0) {
        log_warn("channel %s: malformed pub/sub payload dropped (%zu bytes)", name, len);
        return;
    }
    h->stats.live_messages++;
    char epoch[PW_EPOCH_MAX + 1];
    memcpy(epoch, v.epoch, v.epoch_len);
    epoch[v.epoch_len] = '\0';
    pw_msg m = {.id = v.id, .time_ms = v.time_ms, .json = rbuf_new(v.json, v.json_len)};
    if (!ch->synced) {
        if (ch->sync_inflight) {
            /* Kept for after the sync, which compares epochs and ids. */
            if (ch->pending_n < PENDING_MAX) {
                if (!ch->pending)
                    ch->pending = xmalloc(PENDING_MAX * sizeof *ch->pending);
                pending_msg *p = &ch->pending[ch->pending_n++];
                p->m = m;
                memcpy(p->epoch, epoch, sizeof epoch);
                m.json = NULL;
            } else {
                ch->resync_after = true;
            }
        }
        rbuf_unref(m.json);
        return;
    }
    ch_accept(h, ch, epoch, &m);
    rbuf_unref(m.json);
}

/* ---- public API ---------------------------------------------------------------------- */

hub *hub_new(loop *l, const hub_config *cfg)
{
    hub *h = xcalloc(1, sizeof *h);
    h->l = l;
    h->cfg = *cfg;
    if (h->cfg.ring_bytes > h->cfg.batch_bytes)
        h->cfg.ring_bytes = h->cfg.batch_bytes;
    h->buckets = 64;
    h->table = xcalloc(h->buckets, sizeof *h->table);
    broker_hooks hooks = {.ctx = h,
                          .cmd_up = on_cmd_up,
                          .sub_up = on_sub_up,
                          .sub_down = on_sub_down,
                          .subscribed = on_subscribed,
                          .unsubscribed = on_unsubscribed,
                          .message = on_message};
    h->b = broker_new(l, &cfg->broker, &hooks);
    h->presence.cb = presence_cb;
    return h;
}

void hub_start(hub *h)
{
    broker_start(h->b);
    if (h->cfg.presence_ms)
        timer_start(h->l, &h->presence, h->cfg.presence_ms);
}

void hub_free(hub *h)
{
    if (!h)
        return;
    /* Reads in flight get their callbacks (with errors) while the broker
     * closes; their channels must still exist then. */
    broker_free(h->b);
    timer_stop(h->l, &h->presence);
    for (size_t i = 0; i < h->buckets; i++)
        while (h->table[i])
            ch_free(h->table[i]);
    buf_free(&h->gone);
    free(h->table);
    free(h);
}

broker *hub_broker(hub *h) { return h->b; }

hub_stats hub_get_stats(const hub *h) { return h->stats; }

void hub_sub_init(hub_sub *s, const hub_sub_ops *ops, bool persistent)
{
    memset(s, 0, sizeof *s);
    s->ops = ops;
    s->persistent = persistent;
}

int hub_subscribe(hub *h, hub_sub *s, const char *channel, bool has_since, uint64_t since,
                  const char *epoch)
{
    HUB_ENTER(h);
    hub_channel *ch = ch_get(h, channel);
    if (!ch) {
        h->stats.refused++;
        HUB_LEAVE(h);
        return -1;
    }
    s->has_since = has_since;
    s->since = has_since ? since : 0;
    s->verified = false;
    snprintf(s->epoch, sizeof s->epoch, "%s", epoch ? epoch : "");
    s->epoch_filled = s->since_filled = false;
    sub_link(ch, s);
    set_state(h, s, SUB_WAIT);
    sub_process(h, s);
    HUB_LEAVE(h);
    return 0;
}

void hub_unsubscribe(hub *h, hub_sub *s)
{
    HUB_ENTER(h);
    sub_unlink(s);
    HUB_LEAVE(h);
}

void hub_sub_pause(hub *h, hub_sub *s)
{
    if (s->ch && s->persistent && (s->state == SUB_WAIT || s->state == SUB_PARKED)) {
        HUB_ENTER(h);
        set_state(h, s, SUB_PAUSED);
        HUB_LEAVE(h);
    }
}

void hub_sub_resume(hub *h, hub_sub *s)
{
    if (s->ch && s->state == SUB_PAUSED) {
        HUB_ENTER(h);
        set_state(h, s, SUB_WAIT);
        sub_process(h, s);
        HUB_LEAVE(h);
    }
}

const char *hub_sub_channel(const hub_sub *s) { return s->ch ? s->ch->name : ""; }

bool hub_sub_idle(const hub_sub *s, const char **epoch, uint64_t *newest, const rbuf **newest_json)
{
    hub_channel *ch = s->ch;
    /* Parked at the channel's newest id. Parked ahead of it (a read saw a
     * message pub/sub has not brought yet) is not idle: its content is not
     * here, and it is about to arrive. */
    if (!ch || s->state != SUB_PARKED || !ch->synced || s->since != ch->last_id ||
        strcmp(s->epoch, ch->epoch) != 0)
        return false;
    *epoch = ch->epoch;
    *newest = ch->last_id;
    *newest_json = NULL;
    if (ch->ring_n) {
        pw_msg *m = ring_at(ch, ch->ring_n - 1);
        if (m->id == ch->last_id)
            *newest_json = m->json;
    }
    return true;
}

/* ---- invariants ------------------------------------------------------------------------ */

static void violated(const hub_channel *ch, const char *what)
{
    log_error("hub invariant violated on channel %s: %s", ch ? ch->name : "-", what);
    fprintf(stderr, "hub invariant violated on channel %s: %s\n", ch ? ch->name : "-", what);
    abort();
}

#define CHECK(ch, cond)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            violated(ch, #cond);                                                                   \
    } while (0)

static void check_channel(const hub *h, const hub_channel *ch, size_t *subs, size_t *parked)
{
    CHECK(ch, ch->h == h);
    CHECK(ch, !ch->synced || ch->sub_state == CH_SUBSCRIBED);
    CHECK(ch, ch->synced || ch->ring_n == 0);
    for (size_t i = 1; i < ch->ring_n; i++)
        CHECK(ch, ring_at((hub_channel *)ch, i)->id == ring_at((hub_channel *)ch, i - 1)->id + 1);
    CHECK(ch, ch->ring_n == 0 || ring_at((hub_channel *)ch, ch->ring_n - 1)->id == ch->last_id);
    size_t syncs = 0;
    for (const hub_read *op = ch->reads; op; op = op->next) {
        CHECK(ch, op->ch == ch);
        syncs += op->sync;
        CHECK(ch, !op->sync || !op->subs);
        for (const hub_sub *s = op->subs; s; s = s->op_next)
            CHECK(ch, s->op == op && s->state == SUB_READING && s->ch == ch);
    }
    CHECK(ch, syncs == (ch->sync_inflight ? 1u : 0u));
    CHECK(ch, ch->pending_n == 0 || (ch->sync_inflight && !ch->synced));
    bool ready_cmd = broker_cmd_ready(h->b), ready_sub = broker_sub_ready(h->b);
    size_t n = 0;
    for (const hub_sub *s = ch->subs; s; s = s->next) {
        n++;
        CHECK(ch, s->ch == ch);
        CHECK(ch, s->state != SUB_DETACHED);
        CHECK(ch, (s->state == SUB_READING) == (s->op != NULL));
        if (s->state == SUB_PARKED) {
            (*parked)++;
            CHECK(ch, ch->synced && s->has_since && strcmp(s->epoch, ch->epoch) == 0);
            CHECK(ch, s->since == ch->last_id || (s->since > ch->last_id && s->verified));
        }
        /* Progress is scheduled for every waiting subscriber. */
        if (s->state == SUB_WAIT && ch->synced)
            CHECK(ch, timer_armed(&ch->retry) || !ready_cmd);
    }
    CHECK(ch, n == ch->nsubs);
    *subs += n;
    if (ch->nsubs) {
        CHECK(ch, ch->sub_state != CH_UNSUB || !ready_sub);
        if (ch->sub_state == CH_SUBSCRIBED && !ch->synced)
            CHECK(ch, ch->sync_inflight || timer_armed(&ch->retry) || !ready_cmd);
    }
}

void hub_check(const hub *h)
{
    size_t channels = 0, subs = 0, parked = 0, idle = 0, reads = 0, queued = 0;
    for (size_t i = 0; i < h->buckets; i++)
        for (const hub_channel *c = h->table[i]; c; c = c->hnext) {
            channels++;
            idle += c->nsubs == 0;
            check_channel(h, c, &subs, &parked);
            for (const hub_read *op = c->reads; op; op = op->next)
                reads += !op->sync;
        }
    CHECK(NULL, channels == h->stats.channels);
    CHECK(NULL, subs == h->stats.subs);
    CHECK(NULL, parked == h->stats.parked);
    CHECK(NULL, !h->cfg.max_channels || channels <= h->cfg.max_channels);
    size_t on_list = 0;
    for (const hub_channel *c = h->idle_head; c; c = c->idle_next) {
        on_list++;
        CHECK(c, c->nsubs == 0 && (c->idle_next ? c->idle_next->idle_prev == c : h->idle_tail == c));
    }
    CHECK(NULL, on_list == idle);
    CHECK(NULL, reads == h->stats.reads);
    for (const hub_sub *s = h->queue_head; s; s = s->op_next) {
        queued++;
        CHECK(s->ch, s->state == SUB_QUEUED && s->ch && !s->op);
    }
    CHECK(NULL, queued == h->stats.queued);
    /* Waiting for a slot only while the slots are taken. */
    CHECK(NULL, !queued || !h->cfg.max_reads || reads >= h->cfg.max_reads ||
                    !broker_cmd_ready(h->b));
}
