/* outq.h - a per-connection queue of shared byte blobs waiting to be
 * written, with a byte count so that callers can bound it.
 *
 * The same rbuf can sit in 10,000 queues; nothing is copied. A queue with
 * one blob (the common case: one long-poll answer) allocates nothing.
 */
#ifndef PW_OUTQ_H
#define PW_OUTQ_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct outq {
    rbuf *one;    /* used while the queue holds at most one blob */
    rbuf **ring;  /* otherwise: a ring of cap entries */
    uint32_t head, n, cap;
    size_t off;   /* bytes of the head blob already written */
    size_t bytes; /* bytes not yet written */
} outq;

#define OUTQ_INIT {NULL, NULL, 0, 0, 0, 0, 0}

/* Append r; the queue takes one reference of its own. */
void outq_push(outq *q, rbuf *r);

/* Write as much as the socket takes (writev). Returns 1 when the queue is
 * empty, 0 when the socket is full (wait for EPOLLOUT), -1 on an error
 * (errno set; the peer is gone). */
int outq_write(outq *q, int fd);

/* Drop everything queued. */
void outq_clear(outq *q);

/* Drop what has not started to go out, keeping a partly written blob so
 * that the byte stream stays well-formed (a frame is never cut). */
void outq_drop_unstarted(outq *q);

#endif
