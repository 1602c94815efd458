/* test_conn.c - cmocka tests for the connection lifetime (conn.h) on real
 * socketpairs and the real loop: queued writes and on_drained, reading and
 * EOF, backpressure pausing reads, close from inside a round with writes
 * pending (the relay's flush list once became a cycle there), holds that
 * keep memory across a close, and write errors. Every test checks that
 * on_close and on_free ran exactly once per connection.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

typedef struct tconn {
    conn c;
    int closes, frees, drains, reads;
    ssize_t last_read;
    char got[256];
    size_t got_len;
    bool close_on_read;
    struct tconn *close_other; /* closed from this one's on_read */
    struct tconn *flush_other; /* queued for a later flush from on_read */
} tconn;

static int frees_total;

static tconn *of(conn *c) { return (tconn *)(void *)c; }

static void t_read(conn *c)
{
    tconn *t = of(c);
    t->reads++;
    char tmp[64];
    ssize_t n;
    while ((n = conn_read(c, tmp, sizeof tmp)) > 0) {
        if (t->got_len + (size_t)n <= sizeof t->got) {
            memcpy(t->got + t->got_len, tmp, (size_t)n);
            t->got_len += (size_t)n;
        }
    }
    t->last_read = n;
    if (t->close_other)
        conn_close(&t->close_other->c);
    if (t->flush_other) {
        conn_push_bytes(&t->flush_other->c, "late", 4);
        conn_flush_later(&t->flush_other->c);
    }
    if (n == 0 || (n < 0 && errno != EAGAIN) || t->close_on_read)
        conn_close(c);
}

static void t_drained(conn *c) { of(c)->drains++; }
static void t_close(conn *c) { of(c)->closes++; }
static void t_free(conn *c)
{
    of(c)->frees++;
    frees_total++;
}

static const conn_ops ops = {t_read, t_drained, t_close, t_free};

static loop *L;

static int pair(tconn *t, size_t read_pause)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    memset(t, 0, sizeof *t);
    conn_init(&t->c, L, sv[0], &ops, read_pause);
    assert_int_equal(conn_start(&t->c), 0);
    return sv[1];
}

static void rounds(int n)
{
    for (int i = 0; i < n; i++)
        loop_run_once(L, 10);
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    L = loop_new();
    frees_total = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    loop_free(L);
    return 0;
}

static void test_write_read_eof(void **state)
{
    (void)state;
    tconn t;
    int peer = pair(&t, 0);
    conn_push_bytes(&t.c, "hello ", 6);
    conn_push_bytes(&t.c, "world", 5);
    assert_int_equal(conn_queued(&t.c), 11);
    assert_int_equal(conn_flush(&t.c), 1);
    assert_int_equal(t.drains, 1);
    char got[32] = {0};
    assert_int_equal(read(peer, got, sizeof got), 11);
    assert_string_equal(got, "hello world");
    assert_int_equal(write(peer, "ping", 4), 4);
    rounds(1);
    assert_int_equal(t.got_len, 4);
    assert_memory_equal(t.got, "ping", 4);
    close(peer);
    rounds(2);
    assert_int_equal(t.last_read, 0);
    assert_int_equal(t.closes, 1);
    assert_int_equal(t.frees, 1);
}

/* A peer that sends and never reads: once read_pause bytes wait to be
 * written, the connection stops reading (what it would answer stays
 * bounded); when the peer reads, reading resumes. */
static void test_backpressure_pauses_reading(void **state)
{
    (void)state;
    tconn t;
    int peer = pair(&t, 4096);
    int sb = 4096;
    setsockopt(peer, SOL_SOCKET, SO_RCVBUF, &sb, sizeof sb);
    setsockopt(t.c.w.fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
    char big[8192];
    memset(big, 'x', sizeof big);
    while (conn_queued(&t.c) < 100000)
        conn_push_bytes(&t.c, big, sizeof big);
    assert_int_equal(conn_flush(&t.c), 0); /* the socket is full */
    assert_true(conn_queued(&t.c) > 4096);
    int before = t.reads;
    assert_int_equal(write(peer, "more", 4), 4);
    rounds(3);
    assert_int_equal(t.reads, before); /* not read while blocked */
    /* The peer reads everything: the queue drains and reading resumes. */
    char sink[65536];
    for (int i = 0; i < 200 && (conn_queued(&t.c) || t.reads == before); i++) {
        while (read(peer, sink, sizeof sink) > 0)
            ;
        rounds(1);
    }
    assert_int_equal(conn_queued(&t.c), 0);
    assert_true(t.reads > before);
    assert_memory_equal(t.got, "more", 4);
    conn_close(&t.c);
    rounds(1);
    assert_int_equal(t.frees, 1);
    close(peer);
}

/* Found on main (relay): a connection closed while queued for a later
 * flush left the flush list inconsistent, and a later queueing in the same
 * round made the reap list a cycle (heap-use-after-free under ASan). */
static void test_close_with_flush_pending_in_the_same_round(void **state)
{
    (void)state;
    tconn a, b, c, d;
    int pa = pair(&a, 0), pb = pair(&b, 0), pc = pair(&c, 0), pd = pair(&d, 0);
    conn_push_bytes(&a.c, "A", 1);
    conn_flush_later(&a.c);
    conn_push_bytes(&b.c, "B", 1);
    conn_flush_later(&b.c);
    /* In the round: d's read closes a and b (both on the list), then queues c. */
    d.close_other = &a;
    d.flush_other = &c;
    assert_int_equal(write(pd, "x", 1), 1);
    rounds(1);
    conn_close(&b.c);
    conn_push_bytes(&c.c, "C", 1);
    conn_flush_later(&c.c);
    conn_flush_later(&c.c); /* twice: once on the list */
    rounds(2);
    char got[16] = {0};
    assert_int_equal(read(pc, got, sizeof got), 5);
    assert_memory_equal(got, "lateC", 5);
    assert_int_equal(read(pa, got, sizeof got), 0); /* closed, "A" never sent */
    assert_int_equal(a.closes + a.frees + b.closes + b.frees, 4);
    conn_close(&c.c);
    conn_close(&d.c);
    rounds(1);
    assert_int_equal(frees_total, 4);
    close(pa), close(pb), close(pc), close(pd);
}

/* Found on main (worker): a request closed while its publish was in Redis
 * was freed, and the reply wrote freed memory. A hold keeps it. */
static void test_hold_keeps_memory_across_close(void **state)
{
    (void)state;
    tconn t;
    int peer = pair(&t, 0);
    conn_hold(&t.c);
    conn_close(&t.c);
    conn_close(&t.c); /* idempotent */
    rounds(2);
    assert_int_equal(t.closes, 1);
    assert_int_equal(t.frees, 0); /* still held */
    assert_true(conn_is_closed(&t.c));
    assert_int_equal(conn_push_bytes(&t.c, "x", 1), 0); /* dropped */
    assert_int_equal(conn_flush(&t.c), -1);
    conn_release(&t.c);
    assert_int_equal(t.frees, 0); /* after the round, not inside it */
    rounds(1);
    assert_int_equal(t.frees, 1);
    close(peer);
}

static void test_write_error_closes_once(void **state)
{
    (void)state;
    tconn t;
    int peer = pair(&t, 0);
    close(peer);
    conn_push_bytes(&t.c, "to nobody", 9);
    assert_int_equal(conn_flush(&t.c), -1);
    assert_true(conn_is_closed(&t.c));
    rounds(1);
    assert_int_equal(t.closes, 1);
    assert_int_equal(t.frees, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_read_eof, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_pauses_reading, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_flush_pending_in_the_same_round, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hold_keeps_memory_across_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_error_closes_once, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
