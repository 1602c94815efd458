/* metrics.c - the metrics listener: accept, read one request head, answer,
 * close. Connections are few and short; each has a 5 s deadline. */
#include "metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "net.h"

#define HEAD_MAX 4096

typedef struct mconn {
    conn c; /* socket, queue, lifetime (conn.h) */
    timer deadline;
    metrics_srv *srv;
    struct mconn *prev, *next;
    size_t len;
    bool answered;
    char head[HEAD_MAX];
} mconn;

struct metrics_srv {
    loop *l;
    io_watch lw;
    metrics_render *render;
    void *ctx;
    mconn *conns;
    char unix_path[108]; /* removed at stop; "" for TCP */
};

static mconn *mconn_of(conn *cc) { return (mconn *)(void *)cc; }

static void mconn_free(conn *cc) { free(mconn_of(cc)); }

static void mconn_closed(conn *cc)
{
    mconn *c = mconn_of(cc);
    timer_stop(c->srv->l, &c->deadline);
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

/* The answer is out: done (HTTP/1.0, Connection: close). */
static void mconn_drained(conn *cc)
{
    if (mconn_of(cc)->answered)
        conn_close(cc);
}

static void mconn_read(conn *cc);

static const conn_ops mconn_ops = {
    .on_read = mconn_read,
    .on_drained = mconn_drained,
    .on_close = mconn_closed,
    .on_free = mconn_free,
};

static void mconn_answer(mconn *c)
{
    c->answered = true;
    buf body = BUF_INIT, resp = BUF_INIT;
    int status = 404;
    if (strncmp(c->head, "GET /metrics ", 13) == 0 || strncmp(c->head, "GET /metrics?", 13) == 0) {
        status = 200;
        c->srv->render(&body, c->srv->ctx);
    } else {
        buf_puts(&body, "not found: try GET /metrics\n");
    }
    buf_printf(&resp,
               "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
               "Connection: close\r\n\r\n",
               status, status == 200 ? "OK" : "Not Found",
               status == 200 ? "text/plain; version=0.0.4" : "text/plain", body.len);
    buf_append(&resp, body.data, body.len);
    rbuf *r = rbuf_from_buf(&resp);
    conn_push(&c->c, r);
    rbuf_unref(r);
    buf_free(&body);
    buf_free(&resp);
    conn_flush(&c->c);
}

static void mconn_read(conn *cc)
{
    mconn *c = mconn_of(cc);
    char sink[512];
    if (c->answered) {
        /* Whatever else the peer sends is ignored; EOF or an error ends it. */
        ssize_t n;
        while ((n = conn_read(cc, sink, sizeof sink)) > 0)
            ;
        if (n == 0 || errno != EAGAIN)
            conn_close(cc);
        return;
    }
    ssize_t n = conn_read(cc, c->head + c->len, HEAD_MAX - 1 - c->len);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        conn_close(cc);
        return;
    }
    c->len += (size_t)n;
    c->head[c->len] = '\0';
    if (strstr(c->head, "\r\n\r\n") || strstr(c->head, "\n\n") || c->len == HEAD_MAX - 1)
        mconn_answer(c);
}

static void mconn_deadline(loop *l, timer *t)
{
    (void)l;
    conn_close(&((mconn *)((char *)t - offsetof(mconn, deadline)))->c);
}

static void listen_io(loop *l, io_watch *w, uint32_t revents)
{
    (void)revents;
    metrics_srv *m = (metrics_srv *)((char *)w - offsetof(metrics_srv, lw));
    for (int i = 0; i < 16; i++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        mconn *c = xcalloc(1, sizeof *c);
        c->srv = m;
        conn_init(&c->c, l, fd, &mconn_ops, 0);
        c->deadline.cb = mconn_deadline;
        c->next = m->conns;
        if (m->conns)
            m->conns->prev = c;
        m->conns = c;
        timer_start(l, &c->deadline, 5000);
        if (conn_start(&c->c) < 0)
            conn_close(&c->c);
    }
}

metrics_srv *metrics_start(loop *l, const char *addr, metrics_render *render, void *ctx,
                           const char **why)
{
    char path[108];
    int fd = net_listen(addr, 64, 0, path, sizeof path, why);
    if (fd < 0)
        return NULL;
    metrics_srv *m = xcalloc(1, sizeof *m);
    memcpy(m->unix_path, path, sizeof path);
    m->l = l;
    m->render = render;
    m->ctx = ctx;
    m->lw.fd = fd;
    m->lw.cb = listen_io;
    loop_add(l, &m->lw, EPOLLIN);
    return m;
}

void metrics_stop(metrics_srv *m)
{
    if (!m)
        return;
    while (m->conns)
        conn_close(&m->conns->c);
    loop_del(m->l, &m->lw);
    close(m->lw.fd);
    m->lw.fd = -1;
    if (m->unix_path[0])
        unlink(m->unix_path);
    free(m);
}
