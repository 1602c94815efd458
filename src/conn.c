/* conn.c - the connection lifetime of conn.h: epoll interest, queued
 * writes, the flush-later list, close and deferred free. The only I/O is
 * read, writev (in outq) and close of the connection's own descriptor. */
#include "conn.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

/* Connections to write after this dispatch round (one loop per process). */
static struct {
    conn *head;
    reap_node node;
    bool queued;
} flushes;

static bool wants_read(const conn *c)
{
    return !c->read_off && (!c->read_pause || c->out.bytes < c->read_pause);
}

static void update_events(conn *c)
{
    if (c->closed)
        return;
    uint32_t ev = EPOLLRDHUP | (wants_read(c) ? EPOLLIN : 0) | (c->blocked ? EPOLLOUT : 0);
    if (ev != c->w.events)
        loop_mod(c->l, &c->w, ev);
}

static void conn_io(loop *l, io_watch *w, uint32_t revents)
{
    (void)l;
    conn *c = (conn *)((char *)w - offsetof(conn, w));
    if (c->closed)
        return;
    if (revents & EPOLLOUT) {
        if (conn_flush(c) < 0)
            return;
    }
    if (revents & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR))
        c->ops->on_read(c);
}

void conn_init(conn *c, loop *l, int fd, const conn_ops *ops, size_t read_pause)
{
    *c = (conn){.w = {.fd = fd, .cb = conn_io}, .ops = ops, .l = l, .read_pause = read_pause};
}

int conn_start(conn *c)
{
    return loop_add(c->l, &c->w, EPOLLRDHUP | (wants_read(c) ? EPOLLIN : 0));
}

ssize_t conn_read(conn *c, void *p, size_t n)
{
    if (c->closed) {
        errno = EBADF;
        return -1;
    }
    ssize_t r;
    do
        r = read(c->w.fd, p, n);
    while (r < 0 && errno == EINTR);
    return r;
}

size_t conn_push(conn *c, rbuf *r)
{
    if (c->closed)
        return 0;
    bool was_reading = wants_read(c);
    outq_push(&c->out, r);
    if (was_reading && !wants_read(c))
        update_events(c);
    return c->out.bytes;
}

size_t conn_push_bytes(conn *c, const void *p, size_t n)
{
    if (c->closed)
        return 0;
    rbuf *r = rbuf_new(p, n);
    size_t q = conn_push(c, r);
    rbuf_unref(r);
    return q;
}

int conn_flush(conn *c)
{
    if (c->closed)
        return -1;
    int rc = outq_write(&c->out, c->w.fd);
    if (rc < 0) {
        conn_close(c);
        return -1;
    }
    c->blocked = rc == 0;
    update_events(c);
    if (rc == 0)
        return 0;
    if (c->ops->on_drained)
        c->ops->on_drained(c);
    return c->closed ? -1 : 1;
}

static void flush_unlink(conn *c)
{
    if (!c->flush_queued)
        return;
    if (c->flush_prev)
        c->flush_prev->flush_next = c->flush_next;
    else
        flushes.head = c->flush_next;
    if (c->flush_next)
        c->flush_next->flush_prev = c->flush_prev;
    c->flush_prev = c->flush_next = NULL;
    c->flush_queued = false;
}

static void flush_run(reap_node *n)
{
    (void)n;
    flushes.queued = false;
    while (flushes.head) {
        conn *c = flushes.head;
        flush_unlink(c);
        conn_flush(c); /* may close c, or queue others: they come in this loop */
    }
}

void conn_flush_later(conn *c)
{
    if (c->closed || c->flush_queued)
        return;
    c->flush_queued = true;
    c->flush_prev = NULL;
    c->flush_next = flushes.head;
    if (flushes.head)
        flushes.head->flush_prev = c;
    flushes.head = c;
    if (!flushes.queued) {
        flushes.queued = true;
        loop_reap(c->l, &flushes.node, flush_run);
    }
}

void conn_drop_unstarted(conn *c)
{
    bool was_reading = wants_read(c);
    outq_drop_unstarted(&c->out);
    if (!was_reading && wants_read(c))
        update_events(c);
}

void conn_shutdown_write(conn *c)
{
    if (!c->closed)
        shutdown(c->w.fd, SHUT_WR);
}

void conn_pause_read(conn *c)
{
    c->read_off = true;
    update_events(c);
}

void conn_resume_read(conn *c)
{
    c->read_off = false;
    update_events(c);
}

static void free_cb(reap_node *n)
{
    conn *c = (conn *)((char *)n - offsetof(conn, reap));
    c->ops->on_free(c);
}

static void maybe_free(conn *c)
{
    if (!c->closed || c->holds || c->free_queued)
        return;
    c->free_queued = true;
    loop_reap(c->l, &c->reap, free_cb);
}

void conn_close(conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    flush_unlink(c);
    loop_del(c->l, &c->w);
    close(c->w.fd);
    c->w.fd = -1;
    outq_clear(&c->out);
    c->ops->on_close(c);
    maybe_free(c);
}

void conn_hold(conn *c) { c->holds++; }

void conn_release(conn *c)
{
    if (c->holds)
        c->holds--;
    maybe_free(c);
}
