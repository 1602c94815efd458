/* cluster_slots.c - Redis Cluster slot routing (see cluster_slots.h). */
#include "cluster_slots.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint16_t slots_crc16(const char *data, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)data[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

unsigned slots_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return slots_crc16(open + 1, (size_t)(close - open - 1)) % SLOTS_COUNT;
    }
    return slots_crc16(key, len) % SLOTS_COUNT;
}

void slots_init(slot_map *m)
{
    for (unsigned s = 0; s < SLOTS_COUNT; s++)
        m->owner[s] = SLOTS_NONE;
    m->nnodes = 0;
}

int slots_node(slot_map *m, const char *host, int port)
{
    if (!host[0] || port <= 0 || port > 65535)
        return -1;
    char addr[SLOTS_ADDR_MAX];
    int n = snprintf(addr, sizeof addr, "%s:%d", host, port);
    if (n < 0 || (size_t)n >= sizeof addr)
        return -1;
    for (unsigned i = 0; i < m->nnodes; i++)
        if (strcmp(m->node[i], addr) == 0)
            return (int)i;
    if (m->nnodes == SLOTS_MAX_NODES)
        return -1;
    memcpy(m->node[m->nnodes], addr, (size_t)n + 1);
    return (int)m->nnodes++;
}

/* An integer element, or -1. */
static long long int_of(const redisReply *e)
{
    return e && e->type == REDIS_REPLY_INTEGER ? e->integer : -1;
}

int slots_load(slot_map *m, const redisReply *r, const char *answered_host)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return -1;
    /* Check everything first: a bad reply leaves the map as it was. */
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements < 3)
            return -1;
        long long a = int_of(e->element[0]), b = int_of(e->element[1]);
        if (a < 0 || b < a || b >= SLOTS_COUNT)
            return -1;
        const redisReply *node = e->element[2];
        if (!node || node->type != REDIS_REPLY_ARRAY || node->elements < 2 ||
            node->element[0]->type != REDIS_REPLY_STRING || int_of(node->element[1]) < 0)
            return -1;
    }
    slot_map next = *m;
    for (unsigned s = 0; s < SLOTS_COUNT; s++)
        next.owner[s] = SLOTS_NONE;
    int owned = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        const redisReply *node = e->element[2];
        const char *host = node->element[0]->str;
        if (!host[0])
            host = answered_host ? answered_host : "";
        int idx =
            strcmp(host, "?") == 0 ? -1 : slots_node(&next, host, (int)int_of(node->element[1]));
        if (idx < 0)
            continue;
        for (long long s = int_of(e->element[0]); s <= int_of(e->element[1]); s++) {
            if (next.owner[s] == SLOTS_NONE)
                owned++;
            next.owner[s] = (uint16_t)idx;
        }
    }
    *m = next;
    return owned;
}

const char *slots_owner(const slot_map *m, unsigned slot)
{
    if (slot >= SLOTS_COUNT || m->owner[slot] == SLOTS_NONE)
        return NULL;
    return m->node[m->owner[slot]];
}

int slots_parse_redirect(const char *err, slots_redirect *out)
{
    bool ask;
    const char *p;
    if (strncmp(err, "MOVED ", 6) == 0) {
        ask = false;
        p = err + 6;
    } else if (strncmp(err, "ASK ", 4) == 0) {
        ask = true;
        p = err + 4;
    } else {
        return 0;
    }
    char *end;
    if (*p < '0' || *p > '9')
        return -1;
    unsigned long slot = strtoul(p, &end, 10);
    if (slot >= SLOTS_COUNT || *end != ' ')
        return -1;
    const char *addr = end + 1;
    const char *colon = strrchr(addr, ':');
    if (!colon || colon[1] < '0' || colon[1] > '9')
        return -1;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (*end || port == 0 || port > 65535)
        return -1;
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof out->host || memchr(addr, ' ', hl))
        return -1;
    out->ask = ask;
    out->slot = (unsigned)slot;
    memcpy(out->host, addr, hl);
    out->host[hl] = '\0';
    out->port = (int)port;
    return 1;
}

int slots_apply(slot_map *m, const slots_redirect *rd, const char *answered)
{
    if (rd->ask || rd->slot >= SLOTS_COUNT)
        return -1;
    char host[256];
    if (rd->host[0]) {
        snprintf(host, sizeof host, "%s", rd->host);
    } else {
        /* the node that answered, without its port */
        const char *colon = answered ? strrchr(answered, ':') : NULL;
        size_t hl = colon ? (size_t)(colon - answered) : 0;
        if (!hl || hl >= sizeof host)
            return -1;
        memcpy(host, answered, hl);
        host[hl] = '\0';
    }
    int idx = slots_node(m, host, rd->port);
    if (idx >= 0)
        m->owner[rd->slot] = (uint16_t)idx;
    return idx;
}
