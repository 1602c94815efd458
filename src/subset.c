/* subset.c - the channels one connection follows (subset.h). */
#include "subset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

csub *subset_add(subset *s, void *owner, const hub_sub_ops *ops, bool persistent,
                 const char *name)
{
    csub *c = xcalloc(1, sizeof *c);
    hub_sub_init(&c->sub, ops, persistent);
    c->owner = owner;
    snprintf(c->name, sizeof c->name, "%s", name);
    if (s->tail)
        s->tail->next = c;
    else
        s->head = c;
    s->tail = c;
    s->n++;
    return c;
}

csub *subset_find(const subset *s, const char *name)
{
    for (csub *c = s->head; c; c = c->next)
        if (!strcmp(c->name, name))
            return c;
    return NULL;
}

void subset_del(hub *h, loop *l, subset *s, csub *c)
{
    if (h)
        hub_unsubscribe(h, &c->sub);
    timer_stop(l, &c->t);
    csub **pp = &s->head, *prev = NULL;
    while (*pp && *pp != c) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = c->next;
        if (s->tail == c)
            s->tail = prev;
        s->n--;
    }
    free(c);
}

void subset_clear(hub *h, loop *l, subset *s)
{
    while (s->head)
        subset_del(h, l, s, s->head);
}

void subset_detach(hub *h, loop *l, subset *s)
{
    for (csub *c = s->head; c; c = c->next) {
        if (h)
            hub_unsubscribe(h, &c->sub);
        timer_stop(l, &c->t);
    }
}

void subset_pause(hub *h, subset *s)
{
    for (csub *c = s->head; c; c = c->next) {
        if (c->paused || c->sub.state == SUB_DETACHED)
            continue;
        c->paused = true;
        hub_sub_pause(h, &c->sub);
    }
}

void subset_resume(hub *h, subset *s)
{
    for (csub *c = s->head; c; c = c->next) {
        if (!c->paused)
            continue;
        c->paused = false;
        if (c->sub.state != SUB_DETACHED)
            hub_sub_resume(h, &c->sub);
    }
}

void subset_positions(const subset *s, const csub *except, buf *out)
{
    bool first = true;
    for (const csub *c = s->head; c; c = c->next) {
        const hub_sub *hs = &c->sub;
        if (c == except || !hs->has_since)
            continue;
        buf_printf(out, "%s%s=", first ? "" : ",", c->name);
        if (hs->epoch[0] && !hs->epoch_filled)
            buf_printf(out, "%s:", hs->epoch);
        buf_printf(out, "%llu", (unsigned long long)hs->since);
        first = false;
    }
}
