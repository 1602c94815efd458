/* redis_url.h - parse REDIS_URL: redis://[[user]:password@]host[:port][/db],
 * unix:///path/to.sock[?db=N], plain host[:port], or Sentinel:
 *
 *   redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/master[/db]
 *                   [?sentinel_password=PW]
 *
 * where the hosts are sentinels (port 26379 by default), master is the name
 * the sentinels monitor, the credentials are those of the Redis servers and
 * sentinel_password (percent-encoded) is the sentinels' own, if they have
 * one; or Redis Cluster:
 *
 *   redis+cluster://[[user]:password@]host1[:port1][,host2[:port2]...][/]
 *
 * where the hosts are seed nodes (port 6379 by default; any one of them
 * answering is enough: the rest of the cluster is learnt from CLUSTER
 * SLOTS) and the credentials are every node's. A cluster has only
 * database 0. Pure; no I/O. */
#ifndef PW_REDIS_URL_H
#define PW_REDIS_URL_H

#include <stddef.h>

#define REDIS_URL_MAX_HOSTS 8

typedef struct redis_hostport {
    char host[256];
    int port;
} redis_hostport;

typedef struct redis_url {
    char host[256];  /* empty for unix sockets and Sentinel */
    int port;        /* default 6379 */
    char path[108];  /* unix socket path, empty for TCP */
    char user[128];  /* empty: no ACL user (AUTH password only) */
    char password[256];
    int db;          /* 0 by default */
    /* Sentinel: the master's name (empty otherwise); hosts are the
     * sentinels. Cluster: cluster is 1 and hosts are the seed nodes. */
    char master_name[128];
    int cluster;
    int nhosts;
    redis_hostport hosts[REDIS_URL_MAX_HOSTS];
    char sentinel_password[256];
} redis_url;

static inline int redis_url_is_sentinel(const redis_url *u) { return u->master_name[0] != 0; }
static inline int redis_url_is_cluster(const redis_url *u) { return u->cluster != 0; }

/* Returns 0, or -1 with a static reason in *why. Percent-escapes in the user
 * and password are decoded. */
int redis_url_parse(const char *s, redis_url *out, const char **why);

/* The URL s as it may be shown in logs and --help: the password (or a
 * user-info without a colon, which is a password) and a sentinel_password
 * replaced by "***", the rest unchanged. Writes at most cap bytes with a NUL (truncated if need
 * be) and returns out. s need not be valid. */
char *redis_url_redact(const char *s, char *out, size_t cap);

#endif
