/* daemon.h - what the worker and the relay do alike: the options they share
 * (Redis, prefix, metrics, id, logging), process set-up (log, default id,
 * open-file limit, termination signals on a signalfd) and the metrics every
 * process exports. Each binary keeps only what is its own.
 */
#ifndef PW_DAEMON_H
#define PW_DAEMON_H

#include <stddef.h>

#include "auth.h"
#include "broker.h"
#include "buf.h"
#include "hub.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "opts.h"
#include "redis_url.h"

typedef struct daemon_common {
    const char *redis, *prefix, *metrics, *id;
    unsigned redis_timeout, heartbeat_ms, history_ttl, backlog;
    unsigned max_channels, max_reads;
    unsigned wait_replicas;
    enum log_level log_level;
    /* Who may read and publish what (auth.h), and which browser origins
     * may open WebSockets and publish (origin.h). */
    const char *origins, *private_channels, *jwt_secret_file, *jwt_public_key_file;
    const char *jwt_audience, *jwt_issuer;
    unsigned jwt_leeway;
    auth *auth; /* built by daemon_setup; auth_free it at exit */
    char idbuf[160];
} daemon_common;

#define DAEMON_COMMON_DEFAULTS                                                                     \
    {                                                                                              \
        .redis = "redis://127.0.0.1:6379", .prefix = "pw:", .metrics = "", .id = "",               \
        .redis_timeout = 2000, .heartbeat_ms = 1000, .history_ttl = 86400, .backlog = 4096,        \
        .max_channels = 10000, .max_reads = 32, .log_level = LOG_INFO, .origins = "",              \
        .private_channels = "", .jwt_secret_file = "", .jwt_public_key_file = "",                  \
        .jwt_audience = "", .jwt_issuer = "", .jwt_leeway = 0,                                     \
    }

#define DAEMON_COMMON_OPTIONS 19

/* Write the shared option definitions (DAEMON_COMMON_OPTIONS of them) into
 * out; they point into c. */
void daemon_options(opt_def *out, daemon_common *c);

/* After opts_parse: start logging as prog, give the process an id (host:pid
 * unless --id), parse the Redis URL, read the token keys (c->auth), raise the open-file limit to the hard
 * limit, ignore SIGPIPE and route SIGTERM/SIGINT to a signalfd. Returns the
 * signalfd, or -1 after printing why. */
int daemon_setup(daemon_common *c, const char *prog, redis_url *url);

/* The running process: loop, hub, listener, signals, metrics, and the
 * stop sequence (stop accepting, leave the heartbeat set, finish what is
 * open within a grace period). The binary supplies how many of its
 * connections are still open and what to do when a stop begins. */
typedef struct daemon_rt {
    loop *l;
    hub *h;
    io_watch lw; /* the listener; fd -1 once closed */
    io_watch sigw;
    char unix_path[108];
    metrics_srv *metrics;
    bool accepting, stopping, goodbye_pending;
    timer accept_retry, stop_timer;
    size_t (*open_count)(void);             /* stop once this is 0 */
    bool (*may_accept)(void);               /* under the binary's limits */
    void (*on_stop)(const char *why);       /* the binary's part of a stop */
    void (*on_grace_over)(void);            /* last chance to answer */
} daemon_rt;

/* Create the loop, listen on listen_spec (accept callback on_accept), start
 * the hub and its broker (kind, history), serve metrics when configured and
 * watch the signalfd. The caller sets open_count, may_accept, on_stop and
 * on_grace_over before. Returns 0, or -1 after logging why. */
int daemon_start(daemon_rt *d, daemon_common *c, const redis_url *url, int sigfd,
                 const char *kind, unsigned history, const char *listen_spec, int reuseport,
                 io_cb *on_accept, metrics_render *render);

/* Stop accepting for retry_ms (0: until daemon_accept_resume), e.g. out of
 * descriptors or at the connection limit. */
void daemon_accept_pause(daemon_rt *d, unsigned retry_ms);
/* Accept again if the binary's limits allow it (not while stopping). */
void daemon_accept_resume(daemon_rt *d);

/* Call when a connection closes: ends the loop once a stop has begun and
 * nothing is left. */
void daemon_maybe_stop(daemon_rt *d);

/* After loop_run: close the listener, the metrics and the signalfd, and
 * free the loop (the binary frees the hub and its connections before). */
void daemon_finish(daemon_rt *d);

/* One Prometheus metric with its HELP and TYPE lines. */
void metric_put(buf *o, const char *name, const char *type, const char *help, uint64_t v);

/* The metrics every process exports: channels, messages in and out,
 * resyncs, Redis connection state, reconnects and stalls, resident memory. */
void daemon_metrics(buf *o, hub *h);

#endif
