/* test_loop.c - cmocka tests for the epoll loop (loop.h): timer order,
 * re-arming, stopping and moving timers, I/O watches on pipes, deferred
 * reaping. Every test bounds its run with a guard timer so that a bug
 * fails the test instead of hanging it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

#define container_of(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))

/* ---- a guard that stops a run that takes too long ---- */

static bool guard_fired;

static void guard_cb(loop *l, timer *t)
{
    (void)t;
    guard_fired = true;
    loop_stop(l);
}

static void run_guarded(loop *l, timer *guard, uint64_t ms)
{
    guard_fired = false;
    memset(guard, 0, sizeof *guard);
    guard->cb = guard_cb;
    timer_start(l, guard, ms);
    assert_int_equal(loop_run(l), 0);
    assert_false(guard_fired);
    timer_stop(l, guard);
}

/* ---- timer order ---- */

typedef struct tnode {
    timer t;
    int idx;
    int fired;
    uint64_t fired_at;
} tnode;

static struct {
    int order[512];
    int n, want;
} rec;

static void record_cb(loop *l, timer *t)
{
    tnode *n = container_of(t, tnode, t);
    assert_false(timer_armed(t)); /* disarmed before its callback */
    assert_true(loop_now(l) >= t->deadline);
    n->fired++;
    n->fired_at = loop_now(l);
    rec.order[rec.n++] = n->idx;
    if (rec.n == rec.want)
        loop_stop(l);
}

static uint64_t rng = 88172645463325252ULL;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static void test_timers_fire_in_order(void **state)
{
    (void)state;
    loop *l = loop_new();
    assert_non_null(l);
    enum { N = 50 };
    tnode nodes[N];
    memset(&rec, 0, sizeof rec);
    rec.want = N;
    for (int i = 0; i < N; i++) {
        memset(&nodes[i], 0, sizeof nodes[i]);
        nodes[i].idx = i;
        nodes[i].t.cb = record_cb;
        assert_false(timer_armed(&nodes[i].t));
        timer_start(l, &nodes[i].t, rnd() % 31);
        assert_true(timer_armed(&nodes[i].t));
    }
    assert_int_equal(loop_timer_count(l), N);
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(rec.n, N);
    assert_int_equal(loop_timer_count(l), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(nodes[i].fired, 1);
        assert_false(timer_armed(&nodes[i].t));
    }
    /* Deadline order (ties in any order). */
    for (int i = 1; i < N; i++)
        if (nodes[rec.order[i - 1]].t.deadline > nodes[rec.order[i]].t.deadline)
            fail_msg("timer %d (deadline %llu) fired before timer %d (deadline %llu)",
                     rec.order[i - 1], (unsigned long long)nodes[rec.order[i - 1]].t.deadline,
                     rec.order[i], (unsigned long long)nodes[rec.order[i]].t.deadline);
    loop_free(l);
}

static void test_timer_heap_stress(void **state)
{
    (void)state;
    /* Many timers (beyond the initial heap capacity), with random stops and
     * restarts before running: the survivors fire once each, in order. */
    loop *l = loop_new();
    enum { N = 500 };
    tnode *nodes = calloc(N, sizeof *nodes);
    assert_non_null(nodes);
    for (int i = 0; i < N; i++) {
        nodes[i].idx = i;
        nodes[i].t.cb = record_cb;
        timer_start(l, &nodes[i].t, rnd() % 40);
    }
    int armed = N;
    for (int k = 0; k < 2000; k++) {
        tnode *n = &nodes[rnd() % N];
        if (rnd() % 3 == 0) {
            if (timer_armed(&n->t))
                armed--;
            timer_stop(l, &n->t);
        } else {
            if (!timer_armed(&n->t))
                armed++;
            timer_start(l, &n->t, rnd() % 40);
        }
        assert_int_equal(loop_timer_count(l), (size_t)armed);
    }
    memset(&rec, 0, sizeof rec);
    rec.want = armed;
    assert_true(armed > 0);
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(rec.n, armed);
    assert_int_equal(loop_timer_count(l), 0);
    for (int i = 1; i < rec.n; i++)
        assert_true(nodes[rec.order[i - 1]].t.deadline <= nodes[rec.order[i]].t.deadline);
    int fired = 0;
    for (int i = 0; i < N; i++) {
        assert_true(nodes[i].fired <= 1);
        fired += nodes[i].fired;
    }
    assert_int_equal(fired, armed);
    free(nodes);
    loop_free(l);
}

/* ---- re-arming, stopping, moving ---- */

typedef struct rearm {
    timer t;
    int count, limit;
    uint64_t times[8];
} rearm;

static void rearm_cb(loop *l, timer *t)
{
    rearm *r = container_of(t, rearm, t);
    r->times[r->count++] = loop_now(l);
    if (r->count < r->limit) {
        timer_start(l, t, 2);
        assert_true(timer_armed(t));
        assert_int_equal(t->deadline, loop_now(l) + 2);
    } else {
        loop_stop(l);
    }
}

static void test_timer_rearm_in_callback(void **state)
{
    (void)state;
    loop *l = loop_new();
    rearm r;
    memset(&r, 0, sizeof r);
    r.limit = 4;
    r.t.cb = rearm_cb;
    timer_start(l, &r.t, 1);
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(r.count, 4);
    for (int i = 1; i < 4; i++)
        assert_true(r.times[i] >= r.times[i - 1] + 2);
    assert_false(timer_armed(&r.t));
    assert_int_equal(loop_timer_count(l), 0);
    loop_free(l);
}

static void test_timer_stop(void **state)
{
    (void)state;
    loop *l = loop_new();
    tnode a, b, c;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b), memset(&c, 0, sizeof c);
    a.idx = 0, b.idx = 1, c.idx = 2;
    a.t.cb = b.t.cb = c.t.cb = record_cb;
    memset(&rec, 0, sizeof rec);
    rec.want = 1;
    timer_start(l, &a.t, 5);
    timer_start(l, &b.t, 15);
    assert_int_equal(loop_timer_count(l), 2);
    timer_stop(l, &a.t); /* armed */
    assert_false(timer_armed(&a.t));
    assert_int_equal(loop_timer_count(l), 1);
    timer_stop(l, &a.t); /* again: no-op */
    timer_stop(l, &c.t); /* never armed: no-op */
    assert_int_equal(loop_timer_count(l), 1);
    assert_true(timer_armed(&b.t));
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(rec.n, 1);
    assert_int_equal(rec.order[0], 1);
    assert_int_equal(a.fired, 0);
    assert_int_equal(b.fired, 1);
    assert_int_equal(c.fired, 0);
    /* Stopping the top of a bigger heap keeps the others in order. */
    loop *l2 = loop_new();
    tnode n[6];
    memset(n, 0, sizeof n);
    memset(&rec, 0, sizeof rec);
    rec.want = 4;
    for (int i = 0; i < 6; i++) {
        n[i].idx = i;
        n[i].t.cb = record_cb;
        timer_start(l2, &n[i].t, (uint64_t)(i + 1) * 3);
    }
    timer_stop(l2, &n[0].t); /* the root */
    timer_stop(l2, &n[3].t); /* an inner node */
    assert_int_equal(loop_timer_count(l2), 4);
    run_guarded(l2, &guard, 5000);
    assert_int_equal(rec.n, 4);
    assert_int_equal(rec.order[0], 1);
    assert_int_equal(rec.order[1], 2);
    assert_int_equal(rec.order[2], 4);
    assert_int_equal(rec.order[3], 5);
    loop_free(l2);
    loop_free(l);
}

static void test_timer_restart_moves(void **state)
{
    (void)state;
    loop *l = loop_new();
    tnode a, b, c;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b), memset(&c, 0, sizeof c);
    a.idx = 0, b.idx = 1, c.idx = 2;
    a.t.cb = b.t.cb = c.t.cb = record_cb;
    memset(&rec, 0, sizeof rec);
    rec.want = 3;
    timer_start(l, &a.t, 5);
    timer_start(l, &b.t, 10);
    timer_start(l, &c.t, 1000);
    timer_start(l, &a.t, 20); /* later: moves after b */
    timer_start(l, &c.t, 1);  /* earlier: moves first */
    assert_int_equal(loop_timer_count(l), 3);
    assert_int_equal(a.t.deadline, loop_now(l) + 20);
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(rec.n, 3);
    assert_int_equal(rec.order[0], 2);
    assert_int_equal(rec.order[1], 1);
    assert_int_equal(rec.order[2], 0);
    assert_int_equal(a.fired, 1);
    assert_int_equal(c.fired, 1);
    loop_free(l);
}

static void test_timer_zero_delay_and_time(void **state)
{
    (void)state;
    loop *l = loop_new();
    uint64_t t0 = loop_now(l);
    int64_t wall = loop_wall_ms();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ref = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    assert_true(wall <= ref && ref - wall < 1000);
    tnode a;
    memset(&a, 0, sizeof a);
    a.t.cb = record_cb;
    memset(&rec, 0, sizeof rec);
    rec.want = 1;
    timer_start(l, &a.t, 0);
    assert_int_equal(a.t.deadline, t0);
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(a.fired, 1);
    /* The cached time moves only when refreshed. */
    struct timespec d = {0, 20 * 1000000};
    nanosleep(&d, NULL);
    uint64_t before = loop_now(l);
    assert_int_equal(loop_now(l), before);
    loop_update_time(l);
    assert_true(loop_now(l) >= before + 20);
    loop_free(l);
}

/* ---- I/O watches ---- */

typedef struct pwatch {
    io_watch w;
    int rfd, wfd;
    int calls;
    uint32_t revents;
    char got[16];
    size_t got_len;
    struct pwatch *other; /* closed by this one's callback, if set */
    reap_node reap;
    int *log;
    int *log_n;
} pwatch;

static void mk_pipe(pwatch *p, io_cb *cb)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
    memset(p, 0, sizeof *p);
    p->rfd = fds[0];
    p->wfd = fds[1];
    p->w.fd = fds[0];
    p->w.cb = cb;
}

static void close_pipe(loop *l, pwatch *p)
{
    loop_del(l, &p->w);
    if (p->rfd >= 0)
        close(p->rfd);
    close(p->wfd);
    p->rfd = -1;
    p->w.fd = -1;
}

static void pipe_cb(loop *l, io_watch *w, uint32_t revents)
{
    pwatch *p = container_of(w, pwatch, w);
    p->calls++;
    p->revents = revents;
    ssize_t r = read(w->fd, p->got + p->got_len, sizeof p->got - p->got_len);
    if (r > 0)
        p->got_len += (size_t)r;
    loop_del(l, w);
    loop_stop(l);
}

static void test_io_watch_pipe(void **state)
{
    (void)state;
    loop *l = loop_new();
    pwatch p;
    mk_pipe(&p, pipe_cb);
    assert_int_equal(loop_add(l, &p.w, EPOLLIN), 0);
    assert_int_equal(p.w.events, EPOLLIN);
    assert_int_equal(loop_mod(l, &p.w, EPOLLIN), 0); /* same mask: no-op */
    assert_int_equal(write(p.wfd, "ping", 4), 4);
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(p.calls, 1);
    assert_true(p.revents & EPOLLIN);
    assert_int_equal(p.got_len, 4);
    assert_memory_equal(p.got, "ping", 4);
    assert_int_equal(p.w.events, 0);
    loop_del(l, &p.w); /* not registered: no-op */
    /* Adding the same fd twice fails with EEXIST; a bad fd with EBADF. */
    assert_int_equal(loop_add(l, &p.w, EPOLLIN), 0);
    assert_int_equal(loop_add(l, &p.w, EPOLLIN), -1);
    assert_int_equal(errno, EEXIST);
    io_watch bad = {.fd = -1, .events = 0, .cb = pipe_cb};
    assert_int_equal(loop_add(l, &bad, EPOLLIN), -1);
    assert_int_equal(errno, EBADF);
    assert_int_equal(bad.events, 0);
    loop_del(l, &p.w);
    /* loop_mod switches interest: EPOLLOUT on the write end is ready. */
    loop *l2 = loop_new();
    pwatch out;
    memset(&out, 0, sizeof out);
    out.w.fd = p.wfd;
    out.w.cb = pipe_cb;
    out.rfd = -1;
    assert_int_equal(loop_add(l2, &out.w, EPOLLIN), 0);
    assert_int_equal(loop_mod(l2, &out.w, EPOLLOUT), 0);
    assert_int_equal(out.w.events, EPOLLOUT);
    run_guarded(l2, &guard, 5000);
    assert_int_equal(out.calls, 1);
    assert_true(out.revents & EPOLLOUT);
    assert_int_equal(out.w.events, 0);
    loop_free(l2);
    close_pipe(l, &p);
    loop_free(l);
}

static void test_io_watch_hangup(void **state)
{
    (void)state;
    loop *l = loop_new();
    pwatch p;
    mk_pipe(&p, pipe_cb);
    assert_int_equal(loop_add(l, &p.w, EPOLLIN), 0);
    close(p.wfd);
    p.wfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(p.calls, 1);
    assert_true(p.revents & EPOLLHUP);
    assert_int_equal(p.got_len, 0);
    close_pipe(l, &p);
    loop_free(l);
}

/* Two pipes ready in the same batch; whichever callback runs first closes
 * the other watch, whose pending event must then be dropped. */
static int batch_calls;

static void killer_cb(loop *l, io_watch *w, uint32_t revents)
{
    (void)revents;
    pwatch *p = container_of(w, pwatch, w);
    p->calls++;
    batch_calls++;
    char tmp[8];
    assert_true(read(w->fd, tmp, sizeof tmp) > 0);
    pwatch *o = p->other;
    loop_del(l, &o->w);
    close(o->rfd);
    o->rfd = -1;
    o->w.fd = -1;
    loop_del(l, w);
    loop_stop(l);
}

static void test_closed_watch_skipped_in_batch(void **state)
{
    (void)state;
    loop *l = loop_new();
    pwatch a, b;
    mk_pipe(&a, killer_cb);
    mk_pipe(&b, killer_cb);
    a.other = &b;
    b.other = &a;
    assert_int_equal(loop_add(l, &a.w, EPOLLIN), 0);
    assert_int_equal(loop_add(l, &b.w, EPOLLIN), 0);
    assert_int_equal(write(a.wfd, "a", 1), 1);
    assert_int_equal(write(b.wfd, "b", 1), 1);
    batch_calls = 0;
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(batch_calls, 1);
    assert_int_equal(a.calls + b.calls, 1);
    close_pipe(l, &a);
    close_pipe(l, &b);
    loop_free(l);
}

/* ---- deferred reaping ---- */

enum { EV_CB_A = 1, EV_CB_B = 2, EV_REAP = 3, EV_TIMER = 4, EV_TIMER_REAP = 5 };

static int events[16];
static int nevents;

static void reap_fn(reap_node *n)
{
    (void)n;
    events[nevents++] = EV_REAP;
}

static void reaping_cb(loop *l, io_watch *w, uint32_t revents)
{
    (void)revents;
    pwatch *p = container_of(w, pwatch, w);
    char tmp[8];
    assert_true(read(w->fd, tmp, sizeof tmp) > 0);
    events[nevents++] = p->calls; /* EV_CB_A or EV_CB_B, preset */
    loop_del(l, w);
    /* The first callback of the batch queues a reap; it must not run
     * before the batch's other callback. */
    static bool queued;
    if (nevents == 1) {
        queued = true;
        loop_reap(l, &p->reap, reap_fn);
    }
    if (nevents == 2) {
        assert_true(queued);
        queued = false;
        loop_stop(l);
    }
}

static void test_reap_after_batch(void **state)
{
    (void)state;
    loop *l = loop_new();
    pwatch a, b;
    mk_pipe(&a, reaping_cb);
    mk_pipe(&b, reaping_cb);
    a.calls = EV_CB_A;
    b.calls = EV_CB_B;
    assert_int_equal(loop_add(l, &a.w, EPOLLIN), 0);
    assert_int_equal(loop_add(l, &b.w, EPOLLIN), 0);
    assert_int_equal(write(a.wfd, "a", 1), 1);
    assert_int_equal(write(b.wfd, "b", 1), 1);
    nevents = 0;
    timer guard;
    run_guarded(l, &guard, 5000);
    /* Both callbacks, then the reap (run before loop_run returned). */
    assert_int_equal(nevents, 3);
    assert_true(events[0] == EV_CB_A || events[0] == EV_CB_B);
    assert_true(events[1] == EV_CB_A || events[1] == EV_CB_B);
    assert_int_not_equal(events[0], events[1]);
    assert_int_equal(events[2], EV_REAP);
    close_pipe(l, &a);
    close_pipe(l, &b);
    loop_free(l);
}

typedef struct obj {
    timer t;
    reap_node reap;
    char *payload;
} obj;

static void obj_free(reap_node *n)
{
    obj *o = container_of(n, obj, reap);
    events[nevents++] = EV_TIMER_REAP;
    free(o->payload);
    free(o);
}

static void obj_timer_cb(loop *l, timer *t)
{
    obj *o = container_of(t, obj, t);
    events[nevents++] = EV_TIMER;
    /* The object dies in its own callback; memory stays valid until the
     * reap runs. */
    loop_reap(l, &o->reap, obj_free);
    assert_non_null(o->payload);
    loop_stop(l);
}

static void test_reap_from_timer(void **state)
{
    (void)state;
    loop *l = loop_new();
    obj *o = calloc(1, sizeof *o);
    o->payload = malloc(100);
    o->t.cb = obj_timer_cb;
    timer_start(l, &o->t, 1);
    nevents = 0;
    timer guard;
    run_guarded(l, &guard, 5000);
    assert_int_equal(nevents, 2);
    assert_int_equal(events[0], EV_TIMER);
    assert_int_equal(events[1], EV_TIMER_REAP);
    loop_free(l);
}

static int free_reaps;

static void counting_free(reap_node *n)
{
    free_reaps++;
    free(n);
}

static void test_loop_free_runs_reaps(void **state)
{
    (void)state;
    loop *l = loop_new();
    free_reaps = 0;
    for (int i = 0; i < 5; i++) {
        reap_node *n = malloc(sizeof *n);
        loop_reap(l, n, counting_free);
    }
    assert_int_equal(free_reaps, 0);
    loop_free(l); /* LeakSanitizer checks the nodes were freed */
    assert_int_equal(free_reaps, 5);
    loop_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timers_fire_in_order),
        cmocka_unit_test(test_timer_heap_stress),
        cmocka_unit_test(test_timer_rearm_in_callback),
        cmocka_unit_test(test_timer_stop),
        cmocka_unit_test(test_timer_restart_moves),
        cmocka_unit_test(test_timer_zero_delay_and_time),
        cmocka_unit_test(test_io_watch_pipe),
        cmocka_unit_test(test_io_watch_hangup),
        cmocka_unit_test(test_closed_watch_skipped_in_batch),
        cmocka_unit_test(test_reap_after_batch),
        cmocka_unit_test(test_reap_from_timer),
        cmocka_unit_test(test_loop_free_runs_reaps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
