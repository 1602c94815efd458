/* test_fcgi_record.c - cmocka tests for FastCGI response record encoding
 * (fcgi_record.h): exact header bytes, splitting at 65535-byte records, and
 * whole responses parsed back record by record. No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fcgi_record.h"

enum { T_END_REQUEST = 3, T_STDOUT = 6 };

static void check_header(const unsigned char *h, unsigned type, uint16_t reqid, uint16_t len)
{
    assert_int_equal(h[0], 1); /* FCGI_VERSION_1 */
    assert_int_equal(h[1], type);
    assert_int_equal(h[2], reqid >> 8);
    assert_int_equal(h[3], reqid & 0xff);
    assert_int_equal(h[4], len >> 8);
    assert_int_equal(h[5], len & 0xff);
    assert_int_equal(h[6], 0); /* paddingLength */
    assert_int_equal(h[7], 0); /* reserved */
}

/* A deterministic, position-dependent pattern so that misplaced bytes show. */
static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)((i * 31 + seed + (i >> 8)) & 0xff);
    return p;
}

static void test_end(void **state)
{
    (void)state;
    static const unsigned char want1[24] = {
        1, 6, 0, 1, 0, 0, 0, 0, /* empty STDOUT */
        1, 3, 0, 1, 0, 8, 0, 0, /* END_REQUEST, length 8 */
        0, 0, 0, 0, 0, 0, 0, 0, /* appStatus 0, REQUEST_COMPLETE, reserved */
    };
    buf b = BUF_INIT;
    fcgi_rec_end(&b, 1);
    assert_int_equal(b.len, 24);
    assert_memory_equal(b.data, want1, 24);
    /* Appends; request id big-endian. */
    fcgi_rec_end(&b, 0x1234);
    assert_int_equal(b.len, 48);
    static const unsigned char want2[24] = {
        1, 6, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 0x12, 0x34, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    };
    assert_memory_equal(b.data + 24, want2, 24);
    buf_reset(&b);
    fcgi_rec_end(&b, 0xFFFF);
    check_header((const unsigned char *)b.data, T_STDOUT, 0xFFFF, 0);
    check_header((const unsigned char *)b.data + 8, T_END_REQUEST, 0xFFFF, 8);
    buf_free(&b);
}

/* fcgi_rec_stdout of n bytes: records of 65535 then the rest, no padding. */
static void check_stdout(size_t n, uint16_t reqid)
{
    unsigned char *data = pattern(n, (unsigned)n);
    buf b = BUF_INIT;
    buf_puts(&b, "pre");
    fcgi_rec_stdout(&b, reqid, data, n);
    size_t nrec = (n + 65534) / 65535;
    assert_int_equal(b.len, 3 + n + 8 * nrec);
    assert_memory_equal(b.data, "pre", 3);
    const unsigned char *p = (const unsigned char *)b.data + 3;
    size_t off = 0;
    for (size_t r = 0; r < nrec; r++) {
        size_t len = n - off > 65535 ? 65535 : n - off;
        check_header(p, T_STDOUT, reqid, (uint16_t)len);
        assert_memory_equal(p + 8, data + off, len);
        p += 8 + len;
        off += len;
    }
    assert_int_equal(off, n);
    assert_ptr_equal(p, (const unsigned char *)b.data + b.len);
    buf_free(&b);
    free(data);
}

static void test_stdout_sizes(void **state)
{
    (void)state;
    check_stdout(0, 1);
    check_stdout(1, 1);
    check_stdout(255, 0x1234);
    check_stdout(256, 0x1234);
    check_stdout(65534, 1);
    check_stdout(65535, 1);
    check_stdout(65536, 0x1234);
    check_stdout(131070, 1);
    check_stdout(131071, 1);
    check_stdout(200000, 0x1234);
}

static void test_stdout_exact_small(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    fcgi_rec_stdout(&b, 1, "x", 1);
    assert_int_equal(b.len, 9);
    assert_memory_equal(b.data, "\x01\x06\x00\x01\x00\x01\x00\x00x", 9);
    buf_reset(&b);
    fcgi_rec_stdout(&b, 0x1234, "", 0);
    assert_int_equal(b.len, 0); /* nothing: an empty STDOUT would end the stream */
    buf_free(&b);
}

/* Parse records back: concatenated STDOUT content, and check that the
 * stream is STDOUT* with content, one empty STDOUT, one END_REQUEST. */
static void parse_response(const rbuf *r, uint16_t reqid, buf *content)
{
    const unsigned char *p = (const unsigned char *)r->data, *end = p + r->len;
    bool ended = false, got_end = false;
    while (p < end) {
        assert_true(end - p >= 8);
        assert_int_equal(p[0], 1);
        assert_int_equal((p[2] << 8) | p[3], reqid);
        size_t len = (size_t)(p[4] << 8 | p[5]);
        size_t pad = p[6];
        assert_int_equal(pad, 0);
        assert_int_equal(p[7], 0);
        assert_true((size_t)(end - p) >= 8 + len + pad);
        assert_false(got_end); /* nothing after END_REQUEST */
        if (p[1] == T_STDOUT) {
            assert_false(ended); /* no STDOUT after the empty one */
            if (len == 0)
                ended = true;
            else
                buf_append(content, p + 8, len);
        } else {
            assert_int_equal(p[1], T_END_REQUEST);
            assert_true(ended);
            assert_int_equal(len, 8);
            static const unsigned char zero[8];
            assert_memory_equal(p + 8, zero, 8);
            got_end = true;
        }
        p += 8 + len + pad;
    }
    assert_true(got_end);
}

static void check_response(uint16_t reqid, size_t head_len, size_t body_len, size_t max_records)
{
    unsigned char *head = pattern(head_len, 7), *body = pattern(body_len, 99);
    rbuf *r = fcgi_rec_response(reqid, (const char *)head, head_len, (const char *)body, body_len);
    assert_non_null(r);
    assert_int_equal(r->refs, 1);
    assert_int_equal(r->data[r->len], '\0');
    buf content = BUF_INIT;
    parse_response(r, reqid, &content);
    assert_int_equal(content.len, head_len + body_len);
    assert_memory_equal(content.data, head, head_len);
    assert_memory_equal(content.data + head_len, body, body_len);
    /* Not more records than needed (plus the two end records). */
    size_t records = 0;
    for (size_t off = 0; off < r->len; records++)
        off += 8 + (size_t)((unsigned char)r->data[off + 4] << 8 | (unsigned char)r->data[off + 5]);
    assert_true(records <= max_records + 2);
    /* Total size: payload, one header per record, 8 bytes END_REQUEST body. */
    assert_int_equal(r->len, head_len + body_len + 8 * records + 8);
    buf_free(&content);
    rbuf_unref(r);
    free(head);
    free(body);
}

static void test_response_small(void **state)
{
    (void)state;
    const char *head = "Status: 200 OK\r\nContent-Type: application/json\r\n\r\n";
    const char *body = "{\"id\":1}\n";
    rbuf *r = fcgi_rec_response(1, head, strlen(head), body, strlen(body));
    size_t n = strlen(head) + strlen(body);
    /* One STDOUT record with head and body, then the end. */
    assert_int_equal(r->len, 8 + n + 24);
    check_header((const unsigned char *)r->data, T_STDOUT, 1, (uint16_t)n);
    assert_memory_equal(r->data + 8, head, strlen(head));
    assert_memory_equal(r->data + 8 + strlen(head), body, strlen(body));
    static const unsigned char end1[24] = {
        1, 6, 0, 1, 0, 0, 0, 0, 1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    };
    assert_memory_equal(r->data + 8 + n, end1, 24);
    rbuf_unref(r);

    check_response(1, 50, 10, 1);
    check_response(0x1234, 50, 10, 1);
    check_response(0x1234, 50, 0, 1);
    check_response(1, 65535, 0, 1);
    check_response(1, 65000, 535, 1);
}

static void test_response_large(void **state)
{
    (void)state;
    check_response(1, 60, 100 * 1024, 3);
    check_response(0x1234, 60, 100 * 1024, 3);
    check_response(0x1234, 65000, 536, 2);
    check_response(1, 100, 200000, 5);
    check_response(1, 70000, 70000, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_end),
        cmocka_unit_test(test_stdout_sizes),
        cmocka_unit_test(test_stdout_exact_small),
        cmocka_unit_test(test_response_small),
        cmocka_unit_test(test_response_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
