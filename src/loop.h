/* loop.h - a single-threaded epoll event loop with a timer heap.
 *
 * Watches and timers are embedded in the objects that own them (no
 * allocation per registration). The loop never frees anything it did not
 * allocate; objects that die during a dispatch batch are handed to
 * loop_reap so that later events of the same batch still find valid memory
 * (they see fd == -1 and are skipped), as redis freeClientAsync does.
 */
#ifndef PW_LOOP_H
#define PW_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

typedef struct loop loop;
typedef struct io_watch io_watch;
typedef struct timer timer;
typedef struct reap_node reap_node;

typedef void io_cb(loop *l, io_watch *w, uint32_t revents);
typedef void timer_cb(loop *l, timer *t);
typedef void reap_cb(reap_node *n);

struct io_watch {
    int fd;          /* -1 once closed: pending events are then dropped */
    uint32_t events; /* currently registered EPOLL* mask, 0 when not added */
    io_cb *cb;
};

struct timer {
    uint64_t deadline; /* loop_now() milliseconds */
    size_t heap_idx;   /* 1-based position in the heap; 0 when not armed */
    timer_cb *cb;
};

struct reap_node {
    reap_node *next;
    reap_cb *fn;
};

/* Create a loop. Returns NULL with errno set when epoll_create1 fails. */
loop *loop_new(void);
/* Run pending reaps, then free the loop; watches and timers must have been
 * removed by their owners. */
void loop_free(loop *l);

/* Register, change or remove interest in w->fd. Return 0 or -1 with errno.
 * loop_del is a no-op for a watch that is not registered. */
int loop_add(loop *l, io_watch *w, uint32_t events);
int loop_mod(loop *l, io_watch *w, uint32_t events);
void loop_del(loop *l, io_watch *w);

/* Arm t to fire after delay_ms (re-arming moves it). The callback runs once;
 * it may re-arm the timer. */
void timer_start(loop *l, timer *t, uint64_t delay_ms);
void timer_stop(loop *l, timer *t);
static inline bool timer_armed(const timer *t) { return t->heap_idx != 0; }

/* Monotonic milliseconds, refreshed once per loop iteration. */
uint64_t loop_now(const loop *l);
/* Wall-clock milliseconds since the epoch (not cached). */
int64_t loop_wall_ms(void);
/* Refresh the cached time now (after a long computation). */
void loop_update_time(loop *l);

/* Run fn(n) after the current dispatch batch. n must stay valid until then;
 * queueing the same node twice is a bug. */
void loop_reap(loop *l, reap_node *n, reap_cb *fn);

/* Run until loop_stop; returns 0, or -1 if epoll_wait failed (errno set). */
int loop_run(loop *l);
/* One round: wait up to max_wait_ms (-1: until the next timer or event) for
 * I/O, dispatch it, run due timers and reaps. Returns 0 or -1 as loop_run. */
int loop_run_once(loop *l, int max_wait_ms);

/* Take the time from now_ms(ctx) instead of CLOCK_MONOTONIC: simulations
 * and tests drive timers with a clock of their own. */
void loop_set_clock(loop *l, uint64_t (*now_ms)(void *ctx), void *ctx);
void loop_stop(loop *l);

/* Number of armed timers (for metrics and tests). */
size_t loop_timer_count(const loop *l);

#endif
