/* test_outq.c - cmocka tests for the shared-blob write queue (outq.h) over
 * a non-blocking AF_UNIX socketpair: exact bytes out, byte accounting,
 * partial writes against a full socket, errors, and reference counting
 * (LeakSanitizer reports any reference left behind).
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

#include "outq.h"

/* sv[0]: the writer (outq side), sv[1]: the peer. Both non-blocking. */
static void mk_pair(int sv[2], int sndbuf)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    if (sndbuf > 0) {
        assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf), 0);
        assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof sndbuf), 0);
    }
}

/* Read everything available from fd into b (until EAGAIN). */
static size_t drain(int fd, buf *b)
{
    size_t total = 0;
    char tmp[65536];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0) {
            assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
            return total;
        }
        if (r == 0)
            return total;
        buf_append(b, tmp, (size_t)r);
        total += (size_t)r;
    }
}

static rbuf *mk_blob(size_t n, unsigned seed)
{
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('A' + (i * 7 + seed) % 26);
    rbuf *r = rbuf_new(p, n);
    free(p);
    return r;
}

static void test_single_blob_allocates_nothing(void **state)
{
    (void)state;
    outq q = OUTQ_INIT;
    rbuf *r = rbuf_new("hello", 5);
    outq_push(&q, r);
    assert_int_equal(r->refs, 2);
    assert_null(q.ring);
    assert_ptr_equal(q.one, r);
    assert_int_equal(q.n, 1);
    assert_int_equal(q.bytes, 5);
    int sv[2];
    mk_pair(sv, 0);
    assert_int_equal(outq_write(&q, sv[0]), 1);
    assert_int_equal(q.n, 0);
    assert_int_equal(q.bytes, 0);
    assert_null(q.one);
    assert_int_equal(r->refs, 1);
    buf got = BUF_INIT;
    drain(sv[1], &got);
    assert_int_equal(got.len, 5);
    assert_memory_equal(got.data, "hello", 5);
    /* An empty queue writes nothing and reports "empty". */
    assert_int_equal(outq_write(&q, sv[0]), 1);
    assert_int_equal(drain(sv[1], &got), 0);
    buf_free(&got);
    rbuf_unref(r);
    close(sv[0]);
    close(sv[1]);
}

static void test_push_write_concat(void **state)
{
    (void)state;
    rbuf *a = rbuf_new("hello ", 6), *b = rbuf_new("world", 5), *z = rbuf_new("", 0),
         *c = rbuf_new("!\n", 2);
    outq q = OUTQ_INIT;
    outq_push(&q, a);
    outq_push(&q, b);
    outq_push(&q, a); /* the same blob twice */
    outq_push(&q, z); /* zero-length: ignored */
    outq_push(&q, c);
    outq_push(&q, z);
    assert_int_equal(q.n, 4);
    assert_int_equal(q.bytes, 6 + 5 + 6 + 2);
    assert_int_equal(a->refs, 3);
    assert_int_equal(b->refs, 2);
    assert_int_equal(z->refs, 1);
    assert_int_equal(c->refs, 2);
    int sv[2];
    mk_pair(sv, 0);
    assert_int_equal(outq_write(&q, sv[0]), 1);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(q.n, 0);
    assert_null(q.ring); /* freed once empty */
    assert_int_equal(a->refs, 1);
    assert_int_equal(b->refs, 1);
    assert_int_equal(c->refs, 1);
    buf got = BUF_INIT;
    drain(sv[1], &got);
    assert_int_equal(got.len, 19);
    assert_memory_equal(got.data, "hello worldhello !\n", 19);
    /* Reusable after emptying: one blob again, then a ring again. */
    outq_push(&q, b);
    assert_null(q.ring);
    outq_push(&q, c);
    assert_non_null(q.ring);
    assert_int_equal(outq_write(&q, sv[0]), 1);
    buf_reset(&got);
    drain(sv[1], &got);
    assert_int_equal(got.len, 7);
    assert_memory_equal(got.data, "world!\n", 7);
    /* A queue with only an empty blob pushed stays empty. */
    outq_push(&q, z);
    assert_int_equal(q.n, 0);
    assert_int_equal(outq_write(&q, sv[0]), 1);
    buf_free(&got);
    rbuf_unref(a);
    rbuf_unref(b);
    rbuf_unref(c);
    rbuf_unref(z);
    close(sv[0]);
    close(sv[1]);
}

static void test_many_blobs(void **state)
{
    (void)state;
    /* More blobs than one writev takes (64), through several ring growths. */
    enum { N = 300 };
    rbuf *blobs[N];
    outq q = OUTQ_INIT;
    buf want = BUF_INIT;
    for (int i = 0; i < N; i++) {
        blobs[i] = mk_blob((size_t)(1 + i % 17), (unsigned)i);
        outq_push(&q, blobs[i]);
        buf_append(&want, blobs[i]->data, blobs[i]->len);
    }
    assert_int_equal(q.n, N);
    assert_int_equal(q.bytes, want.len);
    int sv[2];
    mk_pair(sv, 0);
    assert_int_equal(outq_write(&q, sv[0]), 1);
    assert_int_equal(q.bytes, 0);
    buf got = BUF_INIT;
    drain(sv[1], &got);
    assert_int_equal(got.len, want.len);
    assert_memory_equal(got.data, want.data, want.len);
    for (int i = 0; i < N; i++) {
        assert_int_equal(blobs[i]->refs, 1);
        rbuf_unref(blobs[i]);
    }
    buf_free(&got);
    buf_free(&want);
    close(sv[0]);
    close(sv[1]);
}

static void test_full_socket(void **state)
{
    (void)state;
    int sv[2];
    mk_pair(sv, 4096);
    enum { NB = 6 };
    rbuf *blobs[NB];
    outq q = OUTQ_INIT;
    buf want = BUF_INIT;
    for (int i = 0; i < NB; i++) {
        blobs[i] = mk_blob(256 * 1024 + (size_t)i * 1000, (unsigned)i * 3);
        outq_push(&q, blobs[i]);
        buf_append(&want, blobs[i]->data, blobs[i]->len);
    }
    size_t total = want.len;
    assert_int_equal(q.bytes, total);
    buf got = BUF_INIT;
    int rc = outq_write(&q, sv[0]);
    assert_int_equal(rc, 0); /* socket full long before 1.5 MB */
    assert_true(q.bytes > 0);
    assert_true(q.bytes < total);
    int rounds = 0, pushed_late = 0;
    rbuf *late = mk_blob(5000, 77);
    while (rc == 0) {
        size_t before = got.len;
        drain(sv[1], &got);
        /* Accounting: what the peer got plus what is queued is everything. */
        assert_int_equal(got.len + q.bytes, total);
        assert_true(got.len > before || rounds == 0 || q.bytes == 0);
        /* Push more while the ring's head has moved (wrap-around). */
        if (rounds == 3 && !pushed_late) {
            outq_push(&q, late);
            outq_push(&q, late);
            buf_append(&want, late->data, late->len);
            buf_append(&want, late->data, late->len);
            total += 2 * late->len;
            pushed_late = 1;
        }
        rc = outq_write(&q, sv[0]);
        assert_true(rc == 0 || rc == 1);
        assert_true(++rounds < 100000);
    }
    assert_int_equal(rc, 1);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(q.n, 0);
    drain(sv[1], &got);
    assert_int_equal(got.len, total);
    assert_memory_equal(got.data, want.data, total);
    assert_true(rounds > 3);
    assert_int_equal(late->refs, 1);
    for (int i = 0; i < NB; i++) {
        assert_int_equal(blobs[i]->refs, 1);
        rbuf_unref(blobs[i]);
    }
    rbuf_unref(late);
    buf_free(&got);
    buf_free(&want);
    close(sv[0]);
    close(sv[1]);
}

static void test_partial_head_offset(void **state)
{
    (void)state;
    /* One large blob written across many calls: q.off advances inside it. */
    int sv[2];
    mk_pair(sv, 4096);
    rbuf *r = mk_blob(300000, 5);
    outq q = OUTQ_INIT;
    outq_push(&q, r);
    buf got = BUF_INIT;
    int rc;
    while ((rc = outq_write(&q, sv[0])) == 0) {
        assert_true(q.off > 0 && q.off < r->len);
        assert_int_equal(q.bytes, r->len - q.off);
        drain(sv[1], &got);
    }
    assert_int_equal(rc, 1);
    assert_int_equal(q.off, 0);
    drain(sv[1], &got);
    assert_int_equal(got.len, r->len);
    assert_memory_equal(got.data, r->data, r->len);
    assert_int_equal(r->refs, 1);
    rbuf_unref(r);
    buf_free(&got);
    close(sv[0]);
    close(sv[1]);
}

static void test_closed_peer(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    int sv[2];
    mk_pair(sv, 0);
    close(sv[1]);
    rbuf *a = rbuf_new("abc", 3), *b = rbuf_new("defg", 4);
    outq q = OUTQ_INIT;
    outq_push(&q, a);
    outq_push(&q, b);
    errno = 0;
    assert_int_equal(outq_write(&q, sv[0]), -1);
    assert_int_equal(errno, EPIPE);
    /* Nothing was consumed; clearing releases the references. */
    assert_int_equal(q.bytes, 7);
    assert_int_equal(q.n, 2);
    outq_clear(&q);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(q.n, 0);
    assert_null(q.ring);
    assert_null(q.one);
    assert_int_equal(a->refs, 1);
    assert_int_equal(b->refs, 1);
    /* A bad descriptor is an error too. */
    outq_push(&q, a);
    assert_int_equal(outq_write(&q, -1), -1);
    assert_int_equal(errno, EBADF);
    outq_clear(&q);
    rbuf_unref(a);
    rbuf_unref(b);
    close(sv[0]);
}

static void test_clear_releases(void **state)
{
    (void)state;
    /* The queue's references are the last ones: clear must free them
     * (LeakSanitizer would report otherwise). */
    outq q = OUTQ_INIT;
    for (int i = 0; i < 50; i++) {
        rbuf *r = mk_blob((size_t)(10 + i), (unsigned)i);
        outq_push(&q, r);
        rbuf_unref(r);
    }
    assert_int_equal(q.n, 50);
    outq_clear(&q);
    assert_int_equal(q.n, 0);
    assert_int_equal(q.bytes, 0);
    assert_null(q.ring);
    /* Single-blob case, and clearing an empty queue. */
    rbuf *r = mk_blob(10, 1);
    outq_push(&q, r);
    rbuf_unref(r);
    outq_clear(&q);
    assert_null(q.one);
    outq_clear(&q);
    /* Clear after a partial write. */
    int sv[2];
    mk_pair(sv, 4096);
    r = mk_blob(200000, 2);
    outq_push(&q, r);
    outq_push(&q, r);
    rbuf_unref(r);
    assert_int_equal(outq_write(&q, sv[0]), 0);
    assert_true(q.off > 0);
    outq_clear(&q);
    assert_int_equal(q.off, 0);
    assert_int_equal(q.bytes, 0);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_blob_allocates_nothing),
        cmocka_unit_test(test_push_write_concat),
        cmocka_unit_test(test_many_blobs),
        cmocka_unit_test(test_full_socket),
        cmocka_unit_test(test_partial_head_offset),
        cmocka_unit_test(test_closed_peer),
        cmocka_unit_test(test_clear_releases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
