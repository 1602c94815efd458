/* outq.c - queued writes of shared blobs with writev. The only I/O is the
 * writev in outq_write; nothing here closes or polls the descriptor. */
#include "outq.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

#define OUTQ_IOV 64

static rbuf *at(const outq *q, uint32_t i)
{
    return q->ring ? q->ring[(q->head + i) % q->cap] : q->one;
}

void outq_push(outq *q, rbuf *r)
{
    if (!r->len)
        return; /* nothing to write; keeps outq_write's progress invariant */
    rbuf_ref(r);
    q->bytes += r->len;
    if (!q->ring && q->n == 0) {
        q->one = r;
        q->n = 1;
        return;
    }
    if (!q->ring) {
        q->cap = 4;
        q->ring = xmalloc(q->cap * sizeof *q->ring);
        q->ring[0] = q->one;
        q->one = NULL;
        q->head = 0;
    } else if (q->n == q->cap) {
        rbuf **nr = xmalloc(q->cap * 2 * sizeof *nr);
        for (uint32_t i = 0; i < q->n; i++)
            nr[i] = q->ring[(q->head + i) % q->cap];
        free(q->ring);
        q->ring = nr;
        q->head = 0;
        q->cap *= 2;
    }
    q->ring[(q->head + q->n) % q->cap] = r;
    q->n++;
}

static void pop(outq *q)
{
    rbuf_unref(at(q, 0));
    q->off = 0;
    q->n--;
    if (q->ring) {
        q->head = (q->head + 1) % q->cap;
        if (q->n == 0) {
            free(q->ring);
            q->ring = NULL;
            q->head = q->cap = 0;
        }
    } else {
        q->one = NULL;
    }
}

int outq_write(outq *q, int fd)
{
    while (q->n) {
        struct iovec iov[OUTQ_IOV];
        int cnt = 0;
        for (uint32_t i = 0; i < q->n && cnt < OUTQ_IOV; i++, cnt++) {
            rbuf *r = at(q, i);
            size_t off = i == 0 ? q->off : 0;
            iov[cnt].iov_base = r->data + off;
            iov[cnt].iov_len = r->len - off;
        }
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        size_t left = (size_t)w;
        q->bytes -= left;
        while (left) {
            rbuf *r = at(q, 0);
            size_t avail = r->len - q->off;
            if (left >= avail) {
                left -= avail;
                pop(q);
            } else {
                q->off += left;
                left = 0;
            }
        }
    }
    return 1;
}

void outq_clear(outq *q)
{
    while (q->n)
        pop(q);
    q->bytes = 0;
}

void outq_drop_unstarted(outq *q)
{
    if (!q->n || q->off == 0) {
        outq_clear(q);
        return;
    }
    while (q->n > 1) {
        /* Pop from the tail: the head is partly written. */
        uint32_t last = q->n - 1;
        rbuf *r = at(q, last);
        q->bytes -= r->len;
        rbuf_unref(r);
        q->n--;
    }
}
