/* fcgi_park.c - accept FastCGI requests with libfcgi, then keep only the
 * socket. Blocking reads happen only inside FCGX_Accept_r and the stdin
 * loop, bounded by the listen socket's receive timeout.
 */
#include "fcgi_park.h"

#include <errno.h>
#include <fcgiapp.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "net.h"

int fcgi_init(void)
{
    if (FCGX_Init() != 0)
        return -1;
    /* libfcgi installed its own SIGPIPE handler only if none was set;
     * write errors are handled where they happen. */
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int fcgi_listen(const char *spec, int backlog, unsigned recv_timeout_ms, char *unix_path,
                size_t path_cap, const char **why)
{
    int fd = net_listen(spec, backlog, 0, unix_path, path_cap, why);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = recv_timeout_ms / 1000,
                         .tv_usec = (suseconds_t)(recv_timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* The parameters a request needs, copied out of libfcgi's environment. */
static const char *const wanted[] = {
    "REQUEST_METHOD", "DOCUMENT_URI",       "QUERY_STRING",       "CONTENT_TYPE",
    "HTTP_ACCEPT",    "HTTP_IDEMPOTENCY_KEY", "HTTP_AUTHORIZATION", "HTTP_LAST_EVENT_ID",
    "REMOTE_ADDR",    "SCRIPT_NAME",
};
enum { P_METHOD, P_URI, P_QUERY, P_CTYPE, P_ACCEPT, P_IDEM, P_AUTH, P_LEID, P_REMOTE, P_SCRIPT,
       P_COUNT };

static void copy_params(FCGX_Request *r, fcgi_accepted *a)
{
    const char *vals[P_COUNT];
    size_t total = 0;
    for (int i = 0; i < P_COUNT; i++) {
        vals[i] = FCGX_GetParam(wanted[i], r->envp);
        if (vals[i])
            total += strlen(vals[i]) + 1;
    }
    a->strings = xmalloc(total ? total : 1);
    char *p = a->strings;
    const char *copies[P_COUNT];
    for (int i = 0; i < P_COUNT; i++) {
        copies[i] = NULL;
        if (!vals[i])
            continue;
        size_t n = strlen(vals[i]) + 1;
        memcpy(p, vals[i], n);
        copies[i] = p;
        p += n;
    }
    a->http.method = copies[P_METHOD];
    a->http.path = copies[P_URI] ? copies[P_URI] : copies[P_SCRIPT];
    a->http.query = copies[P_QUERY];
    a->http.content_type = copies[P_CTYPE];
    a->http.accept = copies[P_ACCEPT];
    a->http.idempotency_key = copies[P_IDEM];
    a->http.authorization = copies[P_AUTH];
    a->http.last_event_id = copies[P_LEID];
    a->remote_addr = copies[P_REMOTE];
}

int fcgi_accept(int listen_fd, size_t max_body, fcgi_accepted *out)
{
    memset(out, 0, sizeof *out);
    out->fd = -1;
    FCGX_Request r;
    FCGX_InitRequest(&r, listen_fd, FCGI_FAIL_ACCEPT_ON_INTR);
    int rc = FCGX_Accept_r(&r);
    if (rc < 0) {
        FCGX_Free(&r, 1);
        if (rc == -EAGAIN || rc == -EWOULDBLOCK || rc == -EINTR || rc == -ETIMEDOUT)
            return 0;
        errno = rc > -10000 ? -rc : EIO;
        return -1;
    }
    /* Read stdin to its end so the socket holds nothing unread when we
     * close it (unread data would turn the close into a reset). */
    char chunk[16384];
    size_t cap_discard = max_body * 16 + 65536;
    size_t seen = 0;
    for (;;) {
        int n = FCGX_GetStr(chunk, sizeof chunk, r.in);
        if (n <= 0)
            break;
        seen += (size_t)n;
        if (out->body.len + (size_t)n <= max_body)
            buf_append(&out->body, chunk, (size_t)n);
        else
            out->body_too_large = true;
        if (seen > cap_discard)
            break;
    }
    if (FCGX_GetError(r.in) != 0 || seen > cap_discard) {
        /* A stalled or broken upstream; nothing sensible to answer. */
        FCGX_Free(&r, 1);
        buf_free(&out->body);
        return 0;
    }
    copy_params(&r, out);
    out->reqid = (uint16_t)r.requestId;
    out->fd = r.ipcFd;
    r.ipcFd = -1;
    FCGX_Free(&r, 0); /* frees the 17 KB of stream buffers and the params */
    if (set_nonblock(out->fd) < 0) {
        close(out->fd);
        fcgi_accepted_free(out);
        return 0;
    }
    out->http.body = out->body.data ? out->body.data : "";
    out->http.body_len = out->body.len;
    return 1;
}

void fcgi_accepted_free(fcgi_accepted *a)
{
    free(a->strings);
    a->strings = NULL;
    buf_free(&a->body);
    memset(&a->http, 0, sizeof a->http);
}
