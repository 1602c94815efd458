/* metrics.h - a tiny HTTP/1.0 server for Prometheus metrics: GET /metrics
 * answers the text exposition format from a render callback; anything else
 * is 404. Meant for a private address (loopback or a unix socket), never
 * public.
 */
#ifndef PW_METRICS_H
#define PW_METRICS_H

#include "buf.h"
#include "loop.h"

typedef struct metrics_srv metrics_srv;
typedef void metrics_render(buf *out, void *ctx);

/* Listen on addr (host:port, unix:/path or /path, as net_listen). Returns
 * NULL with *why set on failure. */
metrics_srv *metrics_start(loop *l, const char *addr, metrics_render *render, void *ctx,
                           const char **why);
/* Close the listener and every open connection; a unix socket file is
 * removed. */
void metrics_stop(metrics_srv *m);

#endif
