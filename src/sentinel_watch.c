/* sentinel_watch.c - +switch-master from the sentinels (sentinel_watch.h). */
#include "sentinel_watch.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define SWITCH_CHANNEL "+switch-master"

int sw_parse_switch(const char *payload, size_t len, const char *name, redis_hostport *out)
{
    char buf[700];
    if (len >= sizeof buf)
        return 0;
    memcpy(buf, payload, len);
    buf[len] = '\0';
    char *save = NULL;
    char *f[5];
    int n = 0;
    for (char *t = strtok_r(buf, " ", &save); t && n < 6; t = strtok_r(NULL, " ", &save))
        if (n < 5)
            f[n++] = t;
        else
            return 0; /* more than five fields */
    if (n != 5 || strcmp(f[0], name) != 0 || strlen(f[3]) >= sizeof out->host)
        return 0;
    char *end = NULL;
    long port = strtol(f[4], &end, 10);
    if (!end || *end || port <= 0 || port > 65535)
        return 0;
    snprintf(out->host, sizeof out->host, "%s", f[3]);
    out->port = (int)port;
    return 1;
}

/* The watched sentinel, as a plain URL with the sentinels' password. */
static void point_at(sentinel_watch *w)
{
    const redis_url *s = w->src;
    const redis_hostport *hp = &s->hosts[w->next % (unsigned)s->nhosts];
    memset(&w->url, 0, sizeof w->url);
    snprintf(w->url.host, sizeof w->url.host, "%s", hp->host);
    w->url.port = hp->port;
    snprintf(w->url.password, sizeof w->url.password, "%s", s->sentinel_password);
}

static void watch_handshake(void *ctx, redis_conn *c)
{
    (void)ctx;
    const char *argv[2] = {"SUBSCRIBE", SWITCH_CHANNEL};
    size_t lens[2] = {9, sizeof SWITCH_CHANNEL - 1};
    rc_push_send(c, 2, argv, lens);
    rc_ready(c);
}

static void watch_down(void *ctx, redis_conn *c, bool was_ready, const char *why)
{
    (void)c, (void)was_ready, (void)why;
    sentinel_watch *w = ctx;
    w->next++;
    point_at(w); /* read by the next attempt */
}

static void watch_push(void *ctx, redis_conn *c, void *reply)
{
    (void)c;
    sentinel_watch *w = ctx;
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3)
        return;
    const redisReply *kind = r->element[0], *chan = r->element[1], *msg = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "message") != 0 ||
        chan->type != REDIS_REPLY_STRING || strcmp(chan->str, SWITCH_CHANNEL) != 0 ||
        msg->type != REDIS_REPLY_STRING)
        return;
    redis_hostport m;
    if (!sw_parse_switch(msg->str, msg->len, w->src->master_name, &m))
        return;
    log_warn("sentinel %s:%d announces a failover: master %s is now at %s:%d", w->url.host,
             w->url.port, w->src->master_name, m.host, m.port);
    if (w->switched)
        w->switched(w->ctx, &m);
}

void sw_init(sentinel_watch *w, loop *l, const redis_url *src, unsigned timeout_ms,
             sw_switched_cb *switched, void *ctx)
{
    *w = (sentinel_watch){.src = src, .switched = switched, .ctx = ctx};
    point_at(w);
    redis_conn_hooks h = {
        .ctx = w, .handshake = watch_handshake, .down = watch_down, .push = watch_push};
    rc_init(&w->c, l, &w->url, "sentinel watch", timeout_ms, true, &h);
}

void sw_start(sentinel_watch *w)
{
    rc_start(&w->c);
}

void sw_free(sentinel_watch *w)
{
    rc_free(&w->c);
}
