/* loop.c - epoll dispatch, a binary min-heap of timers, deferred reaping.
 *
 * Level-triggered epoll: handlers read or write until EAGAIN or until they
 * have done a fair share, and the loop calls them again if more remains.
 */
#include "loop.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

#define LOOP_BATCH 256

struct loop {
    int epfd;
    bool stopping;
    uint64_t now;
    uint64_t (*clock)(void *ctx); /* NULL: CLOCK_MONOTONIC */
    void *clock_ctx;
    timer **heap; /* heap[1..count] */
    size_t count, cap;
    reap_node *reap_head;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int64_t loop_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

loop *loop_new(void)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0)
        return NULL;
    loop *l = xcalloc(1, sizeof *l);
    l->epfd = fd;
    l->now = mono_ms();
    l->cap = 64;
    l->heap = xmalloc(sizeof(timer *) * (l->cap + 1));
    return l;
}

static void run_reaps(loop *l);

void loop_free(loop *l)
{
    if (!l)
        return;
    run_reaps(l);
    close(l->epfd);
    free(l->heap);
    free(l);
}

int loop_add(loop *l, io_watch *w, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, w->fd, &ev) < 0)
        return -1;
    w->events = events;
    return 0;
}

int loop_mod(loop *l, io_watch *w, uint32_t events)
{
    if (w->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
        return -1;
    w->events = events;
    return 0;
}

void loop_del(loop *l, io_watch *w)
{
    if (w->fd >= 0 && w->events) {
        struct epoll_event ev = {0};
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, &ev);
    }
    w->events = 0;
}

uint64_t loop_now(const loop *l) { return l->now; }

static uint64_t clock_ms(const loop *l) { return l->clock ? l->clock(l->clock_ctx) : mono_ms(); }

void loop_update_time(loop *l) { l->now = clock_ms(l); }

void loop_set_clock(loop *l, uint64_t (*now_ms)(void *ctx), void *ctx)
{
    l->clock = now_ms;
    l->clock_ctx = ctx;
    l->now = clock_ms(l);
}

size_t loop_timer_count(const loop *l) { return l->count; }

static void heap_set(loop *l, size_t i, timer *t)
{
    l->heap[i] = t;
    t->heap_idx = i;
}

static void heap_up(loop *l, size_t i)
{
    timer *t = l->heap[i];
    while (i > 1 && l->heap[i / 2]->deadline > t->deadline) {
        heap_set(l, i, l->heap[i / 2]);
        i /= 2;
    }
    heap_set(l, i, t);
}

static void heap_down(loop *l, size_t i)
{
    timer *t = l->heap[i];
    for (;;) {
        size_t c = i * 2;
        if (c > l->count)
            break;
        if (c + 1 <= l->count && l->heap[c + 1]->deadline < l->heap[c]->deadline)
            c++;
        if (l->heap[c]->deadline >= t->deadline)
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

void timer_stop(loop *l, timer *t)
{
    size_t i = t->heap_idx;
    if (!i)
        return;
    timer *last = l->heap[l->count--];
    t->heap_idx = 0;
    if (last == t)
        return;
    heap_set(l, i, last);
    if (i > 1 && l->heap[i / 2]->deadline > last->deadline)
        heap_up(l, i);
    else
        heap_down(l, i);
}

void timer_start(loop *l, timer *t, uint64_t delay_ms)
{
    timer_stop(l, t);
    t->deadline = l->now + delay_ms;
    if (l->count == l->cap) {
        l->cap *= 2;
        l->heap = xrealloc(l->heap, sizeof(timer *) * (l->cap + 1));
    }
    l->count++;
    heap_set(l, l->count, t);
    heap_up(l, l->count);
}

void loop_reap(loop *l, reap_node *n, reap_cb *fn)
{
    n->fn = fn;
    n->next = l->reap_head;
    l->reap_head = n;
}

static void run_reaps(loop *l)
{
    while (l->reap_head) {
        reap_node *n = l->reap_head;
        l->reap_head = n->next;
        n->fn(n);
    }
}

static void run_timers(loop *l)
{
    /* Only timers due when this round began: one re-armed with delay 0 from
     * its callback runs in the next round, after I/O, not in a busy loop. */
    size_t budget = l->count;
    while (budget-- && l->count && l->heap[1]->deadline <= l->now) {
        timer *t = l->heap[1];
        timer_stop(l, t);
        t->cb(l, t);
    }
}

void loop_stop(loop *l) { l->stopping = true; }

int loop_run_once(loop *l, int max_wait_ms)
{
    struct epoll_event evs[LOOP_BATCH];
    int timeout = max_wait_ms;
    if (l->count) {
        uint64_t d = l->heap[1]->deadline;
        int due = d <= l->now ? 0 : (int)(d - l->now > 60000 ? 60000 : d - l->now);
        if (timeout < 0 || due < timeout)
            timeout = due;
    }
    if (l->reap_head)
        timeout = 0;
    int n = epoll_wait(l->epfd, evs, LOOP_BATCH, timeout);
    if (n < 0 && errno != EINTR)
        return -1;
    l->now = clock_ms(l);
    for (int i = 0; i < n; i++) {
        io_watch *w = evs[i].data.ptr;
        if (w->fd < 0 || !w->events)
            continue; /* closed earlier in this batch */
        w->cb(l, w, evs[i].events);
    }
    run_reaps(l);
    run_timers(l);
    run_reaps(l);
    return 0;
}

int loop_run(loop *l)
{
    while (!l->stopping)
        if (loop_run_once(l, -1) < 0)
            return -1;
    return 0;
}
