/* fcgi_park.h - FastCGI requests accepted with libfcgi and then "parked"
 * lean: the parameters we need are copied, stdin is read to its end, and
 * libfcgi's per-request buffers (about 17 KB) are freed at once with
 * FCGX_Free(r, 0), keeping only the socket. Answers are written later as
 * raw records (fcgi_record.h) on that socket.
 *
 * libfcgi's accept path is blocking by design; with a non-blocking listen
 * socket FCGX_Accept_r returns -EAGAIN when nobody waits, and a receive
 * timeout on the listen socket (inherited by accepted sockets on Linux)
 * bounds the time a slow upstream can hold the loop while its parameters
 * and body are read.
 */
#ifndef PW_FCGI_PARK_H
#define PW_FCGI_PARK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "buf.h"

/* One accepted request, owned by the caller. */
typedef struct fcgi_accepted {
    int fd;             /* the connection from nginx, now non-blocking */
    uint16_t reqid;
    api_http http;      /* points into strings and body */
    char *strings;      /* one allocation holding the copied parameters */
    const char *remote_addr;
    buf body;
    bool body_too_large; /* more than max_body bytes arrived (and were discarded) */
} fcgi_accepted;

/* Initialise libfcgi once per process (FCGX_Init) and undo its signal
 * handlers' effects: SIGPIPE is ignored, termination signals are left to
 * the caller (signalfd). Returns 0 or -1. */
int fcgi_init(void);

/* Listen on spec: "unix:/path", "/path" (unix socket, mode 0666, a stale
 * socket file is replaced), or "host:port" / ":port" (TCP). The socket is
 * non-blocking with a receive timeout of recv_timeout_ms. Returns the fd, or
 * -1 with *why set. *unix_path receives the socket path ("" for TCP). */
int fcgi_listen(const char *spec, int backlog, unsigned recv_timeout_ms, char *unix_path,
                size_t path_cap, const char **why);

/* Accept one request if one is waiting. Returns 1 with *out filled (release
 * with fcgi_accepted_free, which does not close out->fd), 0 when none waits,
 * -1 when the listen socket failed (errno set). Requests that break the
 * protocol or stall are dropped inside and reported as 0 or the next one. */
int fcgi_accept(int listen_fd, size_t max_body, fcgi_accepted *out);

void fcgi_accepted_free(fcgi_accepted *a);

#endif
