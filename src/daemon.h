/* daemon.h - what the worker and the relay do alike: the options they share
 * (Redis, prefix, metrics, id, logging), process set-up (log, default id,
 * open-file limit, termination signals on a signalfd) and the metrics every
 * process exports. Each binary keeps only what is its own.
 */
#ifndef PW_DAEMON_H
#define PW_DAEMON_H

#include <stddef.h>

#include "broker.h"
#include "buf.h"
#include "hub.h"
#include "log.h"
#include "opts.h"
#include "redis_url.h"

typedef struct daemon_common {
    const char *redis, *prefix, *metrics, *id;
    unsigned redis_timeout, heartbeat_ms, history_ttl, backlog;
    enum log_level log_level;
    char idbuf[160];
} daemon_common;

#define DAEMON_COMMON_DEFAULTS                                                                     \
    {                                                                                              \
        .redis = "redis://127.0.0.1:6379", .prefix = "pw:", .metrics = "", .id = "",               \
        .redis_timeout = 2000, .heartbeat_ms = 1000, .history_ttl = 86400, .backlog = 4096,        \
        .log_level = LOG_INFO,                                                                     \
    }

#define DAEMON_COMMON_OPTIONS 9

/* Write the shared option definitions (DAEMON_COMMON_OPTIONS of them) into
 * out; they point into c. */
void daemon_options(opt_def *out, daemon_common *c);

/* After opts_parse: start logging as prog, give the process an id (host:pid
 * unless --id), parse the Redis URL, raise the open-file limit to the hard
 * limit, ignore SIGPIPE and route SIGTERM/SIGINT to a signalfd. Returns the
 * signalfd, or -1 after printing why. */
int daemon_setup(daemon_common *c, const char *prog, redis_url *url);

/* Read the signalfd: the signal number, or 0 when none is pending. */
int daemon_signal(int sigfd);

/* The broker settings of a process of this kind. */
broker_config daemon_broker_config(const daemon_common *c, const redis_url *url,
                                   const char *kind, unsigned history);

/* One Prometheus metric with its HELP and TYPE lines. */
void metric_put(buf *o, const char *name, const char *type, const char *help, uint64_t v);

/* The metrics every process exports: channels, messages in and out,
 * resyncs, Redis connection state, reconnects and stalls, resident memory. */
void daemon_metrics(buf *o, hub *h);

#endif
