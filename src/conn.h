/* conn.h - one connection lifetime for every server loop of the project:
 * the worker's FastCGI connections from nginx, the relay's WebSocket
 * clients and the metrics listener's requests. A non-blocking socket on the
 * loop, its queue of shared blobs (outq), read interest that follows
 * backpressure, one close path and deferred free.
 *
 * Lifetime (after nginx's ngx_close_connection with r->count, and libuv's
 * uv_close):
 *
 *   conn_init -> conn_start -> ... -> conn_close -> on_close (once)
 *             -> on_free, once no callback is in flight (conn_hold /
 *                conn_release) and the current dispatch round is over.
 *
 * - conn_close is the only way out, from the owner or from this module (a
 *   write error). It is idempotent; afterwards the fd is closed, the queue
 *   is dropped, and no event or callback of this module reaches the owner
 *   except on_free.
 * - Memory of a connection is released in on_free and nowhere else, so an
 *   owner may close a connection from any callback, even one that runs
 *   inside a loop over other connections, and a reply from Redis that still
 *   holds the connection (conn_hold) finds valid memory: it checks
 *   conn_is_closed and calls conn_release.
 * - Reading pauses while more than read_pause bytes wait to be written (a
 *   peer that sends but does not read cannot make us queue answers without
 *   bound) and while the owner asks (conn_pause_read); EPOLLRDHUP stays
 *   watched, so a peer that leaves is still noticed.
 * - conn_flush_later writes after the current dispatch round: every blob
 *   queued meanwhile goes out in one writev.
 *
 * Owners embed a conn and find themselves from it with offsetof.
 */
#ifndef PW_CONN_H
#define PW_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "loop.h"
#include "outq.h"

typedef struct conn conn;
typedef void conn_cb(conn *c);

typedef struct conn_ops {
    /* Readable, or the peer closed or failed: read with conn_read until it
     * returns -1 with EAGAIN (or the owner has seen enough this round). */
    conn_cb *on_read;
    /* Optional: everything queued has been written. */
    conn_cb *on_drained;
    /* conn_close ran: release what the owner holds besides memory (hub
     * subscriptions, timers, list links, counters). Called once. */
    conn_cb *on_close;
    /* Free the owner's memory; the connection is not touched again. */
    conn_cb *on_free;
} conn_ops;

struct conn {
    io_watch w;
    reap_node reap;
    outq out;
    const conn_ops *ops;
    loop *l;
    conn *flush_prev, *flush_next; /* on the flush-later list */
    size_t read_pause;             /* 0: never pause for backpressure */
    uint32_t holds;
    bool closed, blocked, flush_queued, free_queued, read_off;
};

/* Take fd (non-blocking) for this connection; nothing is watched yet. */
void conn_init(conn *c, loop *l, int fd, const conn_ops *ops, size_t read_pause);
/* Watch the socket. Returns 0, or -1 with errno (the caller closes c). */
int conn_start(conn *c);

/* Read up to n bytes: > 0 read, 0 at EOF, -1 with errno (EAGAIN: nothing
 * now). A closed connection reads -1 with EBADF. */
ssize_t conn_read(conn *c, void *p, size_t n);

/* Queue r (the queue takes its own reference) or a copy of p[0..n). Nothing
 * is written yet. Returns the bytes now queued; queuing on a closed
 * connection drops the data. */
size_t conn_push(conn *c, rbuf *r);
size_t conn_push_bytes(conn *c, const void *p, size_t n);
static inline size_t conn_queued(const conn *c) { return c->out.bytes; }

/* Write what is queued. Returns 1 when all is written (on_drained ran), 0
 * when the socket is full (the rest goes when it is writable), -1 when the
 * connection is closed (a write error closes it). */
int conn_flush(conn *c);
/* Write after the current dispatch round. */
void conn_flush_later(conn *c);

/* Drop queued blobs that have not started to go out (a partly written one
 * stays, so that the byte stream stays well-formed). */
void conn_drop_unstarted(conn *c);
/* No more writing (after a final frame): shutdown(SHUT_WR). */
void conn_shutdown_write(conn *c);

void conn_pause_read(conn *c);
void conn_resume_read(conn *c);

void conn_close(conn *c);
static inline bool conn_is_closed(const conn *c) { return c->closed; }
static inline int conn_fd(const conn *c) { return c->w.fd; }

/* A callback that will come back to c is in flight (e.g. a command in
 * Redis): c's memory stays until the matching conn_release, even if c is
 * closed meanwhile. */
void conn_hold(conn *c);
void conn_release(conn *c);

#endif
