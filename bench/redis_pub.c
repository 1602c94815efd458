/* redis_pub.c - how many publishes per second the Redis tier itself takes:
 * pushwire's own publish script (src/lua/publish.lua, as the workers send
 * it), pipelined straight to one Redis or to the masters of a Redis Cluster
 * (routed by slot with src/cluster_slots.c), over random channels, for a
 * bounded time. No nginx, no worker: what is left is Redis's own cost, so
 * one Redis and a sharded cluster compare on the CPU they get.
 *
 *   redis_pub --nodes HOST:PORT[,HOST:PORT...] [--cluster] [--seconds 5]
 *             [--channels 1000] [--pipeline 64] [--conns 2]
 *
 * With --cluster the nodes are seeds: the masters come from CLUSTER SLOTS.
 * Prints one JSON line: {"publishes": N, "seconds": S, "per_second": R,
 * "errors": E, "masters": M}.
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_slots.h"
#include "lua_scripts.h"

#define MAX_CONNS 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static redisContext *connect_to(const char *addr)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        fprintf(stderr, "redis_pub: bad address %s\n", addr);
        exit(2);
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    redisContext *c = redisConnect(host, atoi(colon + 1));
    if (!c || c->err) {
        fprintf(stderr, "redis_pub: cannot connect to %s: %s\n", addr, c ? c->errstr : "oom");
        exit(1);
    }
    return c;
}

typedef struct conn {
    redisContext *c;
    int node;
    unsigned inflight;
} conn;

int main(int argc, char **argv)
{
    const char *nodes = NULL;
    int cluster = 0;
    double seconds = 5;
    unsigned channels = 1000, pipeline = 64, per_node = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--cluster"))
            cluster = 1;
        else if (!strcmp(a, "--nodes") && v)
            nodes = v, i++;
        else if (!strcmp(a, "--seconds") && v)
            seconds = atof(v), i++;
        else if (!strcmp(a, "--channels") && v)
            channels = (unsigned)atoi(v), i++;
        else if (!strcmp(a, "--pipeline") && v)
            pipeline = (unsigned)atoi(v), i++;
        else if (!strcmp(a, "--conns") && v)
            per_node = (unsigned)atoi(v), i++;
        else {
            fprintf(stderr, "usage: redis_pub --nodes HOST:PORT[,...] [--cluster] [--seconds S] "
                            "[--channels N] [--pipeline P] [--conns C]\n");
            return 2;
        }
    }
    if (!nodes || !channels || !pipeline || !per_node || seconds <= 0 || seconds > 600) {
        fprintf(stderr, "redis_pub: --nodes is needed; counts must be positive, seconds at most 600\n");
        return 2;
    }
    static slot_map map;
    slots_init(&map);
    char first[SLOTS_ADDR_MAX];
    snprintf(first, sizeof first, "%.*s", (int)strcspn(nodes, ","), nodes);
    if (cluster) {
        redisContext *c = connect_to(first);
        redisReply *r = redisCommand(c, "CLUSTER SLOTS");
        char host[256];
        snprintf(host, sizeof host, "%.*s", (int)(strrchr(first, ':') - first), first);
        if (!r || slots_load(&map, r, host) != SLOTS_COUNT) {
            fprintf(stderr, "redis_pub: CLUSTER SLOTS from %s does not cover every slot\n", first);
            return 1;
        }
        freeReplyObject(r);
        redisFree(c);
    } else {
        const char *colon = strrchr(first, ':');
        char host[256];
        snprintf(host, sizeof host, "%.*s", (int)(colon - first), first);
        int idx = slots_node(&map, host, atoi(colon + 1));
        for (unsigned s = 0; s < SLOTS_COUNT; s++)
            map.owner[s] = (uint16_t)idx;
    }
    /* Masters: the nodes that own slots. */
    unsigned owns[SLOTS_MAX_NODES] = {0};
    for (unsigned s = 0; s < SLOTS_COUNT; s++)
        owns[map.owner[s]]++;
    conn conns[MAX_CONNS];
    unsigned nconns = 0, masters = 0;
    char sha[41] = "";
    for (unsigned n = 0; n < map.nnodes; n++) {
        if (!owns[n])
            continue;
        masters++;
        for (unsigned k = 0; k < per_node && nconns < MAX_CONNS; k++) {
            conns[nconns] = (conn){.c = connect_to(map.node[n]), .node = (int)n};
            redisReply *r = redisCommand(conns[nconns].c, "SCRIPT LOAD %s", lua_publish);
            if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
                fprintf(stderr, "redis_pub: SCRIPT LOAD failed on %s\n", map.node[n]);
                return 1;
            }
            memcpy(sha, r->str, 41);
            freeReplyObject(r);
            nconns++;
        }
    }
    /* Channels bucketed by the node serving them, so that each connection
     * sends only what its node serves. */
    char (*names)[40] = calloc(channels, sizeof *names);
    int *node_of = calloc(channels, sizeof *node_of);
    for (unsigned i = 0; i < channels; i++) {
        snprintf(names[i], sizeof names[i], "b%u", i);
        char key[64];
        int kl = snprintf(key, sizeof key, cluster ? "pw:{%s}:ch" : "pw:ch:%s", names[i]);
        node_of[i] = map.owner[slots_key_slot(key, (size_t)kl)];
    }
    const char *content = "\"throughput test\"";
    unsigned long long done = 0, errors = 0;
    unsigned seed = 12345;
    double t0 = now_s(), end = t0 + seconds;
    while (now_s() < end) {
        for (unsigned k = 0; k < nconns; k++) {
            conn *cn = &conns[k];
            for (unsigned p = 0; p < pipeline; p++) {
                unsigned ch;
                do
                    ch = (seed = seed * 1103515245u + 12345u) % channels;
                while (node_of[ch] != cn->node);
                char srv[64], meta[64], hist[64], idem[80], pubch[64];
                const char *n = names[ch];
                if (cluster) {
                    snprintf(meta, sizeof meta, "pw:{%s}:ch", n);
                    snprintf(srv, sizeof srv, "%s", meta);
                    snprintf(hist, sizeof hist, "pw:{%s}:h", n);
                    snprintf(idem, sizeof idem, "pw:{%s}:idem/", n);
                    snprintf(pubch, sizeof pubch, "pw:{%s}:msg", n);
                } else {
                    snprintf(srv, sizeof srv, "pw:server");
                    snprintf(meta, sizeof meta, "pw:ch:%s", n);
                    snprintf(hist, sizeof hist, "pw:h:%s", n);
                    snprintf(idem, sizeof idem, "pw:idem:%s/", n);
                    snprintf(pubch, sizeof pubch, "pw:msg:%s", n);
                }
                const char *av[19] = {"EVALSHA", sha, "4", srv, meta, hist, idem,
                                      cluster ? "bench@bench" : "bench", cluster ? "0010" : "0000",
                                      "0000abcd", "0000beef", "3600", content, "1000", pubch,
                                      "0", "60", "0", cluster ? "SPUBLISH" : "PUBLISH"};
                redisAppendCommandArgv(cn->c, 19, av, NULL);
                cn->inflight++;
            }
            /* Flush every connection before reading any: the nodes work in
             * parallel. */
            int wdone = 0;
            while (!wdone)
                if (redisBufferWrite(cn->c, &wdone) != REDIS_OK) {
                    fprintf(stderr, "redis_pub: write failed\n");
                    return 1;
                }
        }
        for (unsigned k = 0; k < nconns; k++) {
            conn *cn = &conns[k];
            for (; cn->inflight; cn->inflight--) {
                redisReply *r = NULL;
                if (redisGetReply(cn->c, (void **)&r) != REDIS_OK || !r) {
                    fprintf(stderr, "redis_pub: connection lost\n");
                    return 1;
                }
                if (r->type == REDIS_REPLY_ARRAY)
                    done++;
                else if (errors++ == 0)
                    fprintf(stderr, "redis_pub: %s\n", r->type == REDIS_REPLY_ERROR ? r->str : "?");
                freeReplyObject(r);
            }
        }
    }
    double took = now_s() - t0;
    printf("{\"publishes\": %llu, \"seconds\": %.2f, \"per_second\": %.0f, \"errors\": %llu, "
           "\"masters\": %u}\n",
           done, took, (double)done / took, errors, masters);
    for (unsigned k = 0; k < nconns; k++)
        redisFree(conns[k].c);
    free(names);
    free(node_of);
    return errors ? 1 : 0;
}
