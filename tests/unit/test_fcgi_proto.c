/* Unit tests for src/fcgi_proto.c: requests as nginx sends them, fed whole,
 * split at every byte and one byte at a time; keep-alive; management
 * records; refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fastcgi.h>

#include "buf.h"
#include "fcgi_proto.h"

static void rec(buf *b, uint8_t type, uint16_t id, const void *data, size_t len, uint8_t pad)
{
    uint8_t h[8] = {1, type, (uint8_t)(id >> 8), (uint8_t)id, (uint8_t)(len >> 8), (uint8_t)len, pad, 0};
    buf_append(b, h, 8);
    buf_append(b, data, len);
    static const uint8_t zeros[255];
    buf_append(b, zeros, pad);
}

static void nv(buf *b, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    uint8_t l[8];
    size_t n = 0;
    if (nl < 128) {
        l[n++] = (uint8_t)nl;
    } else {
        l[n++] = (uint8_t)(0x80 | nl >> 24), l[n++] = (uint8_t)(nl >> 16);
        l[n++] = (uint8_t)(nl >> 8), l[n++] = (uint8_t)nl;
    }
    if (vl < 128) {
        l[n++] = (uint8_t)vl;
    } else {
        l[n++] = (uint8_t)(0x80 | vl >> 24), l[n++] = (uint8_t)(vl >> 16);
        l[n++] = (uint8_t)(vl >> 8), l[n++] = (uint8_t)vl;
    }
    buf_append(b, l, n);
    buf_append(b, name, nl);
    buf_append(b, value, vl);
}

/* A request as nginx encodes it: BEGIN, PARAMS (split over two records),
 * empty PARAMS, STDIN in records of at most chunk bytes, empty STDIN. */
static void request(buf *out, uint16_t id, bool keep, const char *method, const char *query,
                    const char *body, size_t chunk, uint8_t pad)
{
    uint8_t begin[8] = {0, FCGI_RESPONDER, keep ? FCGI_KEEP_CONN : 0, 0, 0, 0, 0, 0};
    rec(out, FCGI_BEGIN_REQUEST, id, begin, 8, 0);
    buf p = BUF_INIT;
    nv(&p, "REQUEST_METHOD", method);
    nv(&p, "DOCUMENT_URI", "/status");
    nv(&p, "QUERY_STRING", query);
    char big[300];
    memset(big, 'h', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    nv(&p, "HTTP_USER_AGENT", big); /* long value: 4-byte length */
    nv(&p, "CONTENT_TYPE", "application/x-www-form-urlencoded");
    nv(&p, "HTTP_IDEMPOTENCY_KEY", "");
    size_t half = p.len / 2;
    rec(out, FCGI_PARAMS, id, p.data, half, pad);
    rec(out, FCGI_PARAMS, id, p.data + half, p.len - half, 0);
    rec(out, FCGI_PARAMS, id, "", 0, 0);
    size_t bl = strlen(body);
    for (size_t off = 0; off < bl; off += chunk) {
        size_t n = bl - off < chunk ? bl - off : chunk;
        rec(out, FCGI_STDIN, id, body + off, n, pad);
    }
    rec(out, FCGI_STDIN, id, "", 0, 0);
    buf_free(&p);
}

typedef struct result {
    int requests, errors, mgmt, aborts;
    char method[16], query[64], body[256];
    bool idem_present, accept_present, keep;
    uint16_t reqid;
    uint8_t reply[128];
    size_t reply_len;
} result;

/* Feed data in pieces of at most step bytes (0: whole). */
static void run(const buf *in, size_t step, size_t max_body, result *r)
{
    fcgi_parser p;
    fcgi_parser_init(&p, 4096, max_body);
    memset(r, 0, sizeof *r);
    size_t off = 0;
    while (off < in->len) {
        size_t n = step ? step : in->len;
        if (n > in->len - off)
            n = in->len - off;
        size_t used_total = 0;
        while (used_total < n) {
            fcgi_ev ev;
            size_t u = fcgi_parser_feed(&p, (const uint8_t *)in->data + off + used_total,
                                        n - used_total, &ev);
            used_total += u;
            if (ev.type == FCGI_EV_REQUEST) {
                r->requests++;
                snprintf(r->method, sizeof r->method, "%s", fcgi_param(&p, FP_REQUEST_METHOD));
                snprintf(r->query, sizeof r->query, "%s", fcgi_param(&p, FP_QUERY_STRING));
                snprintf(r->body, sizeof r->body, "%.*s", (int)p.body.len,
                         p.body.data ? p.body.data : "");
                r->idem_present = fcgi_param(&p, FP_HTTP_IDEMPOTENCY_KEY) != NULL;
                r->accept_present = fcgi_param(&p, FP_HTTP_ACCEPT) != NULL;
                r->keep = p.keep_conn;
                r->reqid = p.reqid;
                fcgi_parser_next(&p);
            } else if (ev.type == FCGI_EV_ERROR) {
                r->errors++;
                break;
            } else if (ev.type == FCGI_EV_MANAGEMENT) {
                r->mgmt++;
                memcpy(r->reply, ev.reply, ev.reply_len);
                r->reply_len = ev.reply_len;
            } else if (ev.type == FCGI_EV_ABORT) {
                r->aborts++;
            } else if (u == 0) {
                break;
            }
        }
        if (r->errors)
            break;
        off += n;
    }
    fcgi_parser_free(&p);
}

static void check_all_splits(const buf *in, size_t max_body, void (*check)(const result *))
{
    result r;
    run(in, 0, max_body, &r);
    check(&r);
    run(in, 1, max_body, &r);
    check(&r);
    for (size_t step = 2; step < in->len; step += step < 40 ? 1 : 97) {
        run(in, step, max_body, &r);
        check(&r);
    }
    /* Split in two at every byte. */
    for (size_t cut = 1; cut < in->len; cut++) {
        fcgi_parser p;
        fcgi_parser_init(&p, 4096, max_body);
        int requests = 0;
        size_t parts[2][2] = {{0, cut}, {cut, in->len}};
        for (int k = 0; k < 2; k++) {
            size_t off = parts[k][0];
            while (off < parts[k][1]) {
                fcgi_ev ev;
                off += fcgi_parser_feed(&p, (const uint8_t *)in->data + off, parts[k][1] - off, &ev);
                if (ev.type == FCGI_EV_REQUEST) {
                    requests++;
                    fcgi_parser_next(&p);
                }
                assert_int_not_equal(ev.type, FCGI_EV_ERROR);
            }
        }
        fcgi_parser_free(&p);
        result whole;
        run(in, 0, max_body, &whole);
        assert_int_equal(requests, whole.requests);
    }
}

static void check_get(const result *r)
{
    assert_int_equal(r->requests, 1);
    assert_int_equal(r->errors, 0);
    assert_string_equal(r->method, "GET");
    assert_string_equal(r->query, "channel=a&since=5");
    assert_string_equal(r->body, "");
    assert_true(r->idem_present); /* present though empty */
    assert_false(r->accept_present);
    assert_int_equal(r->reqid, 1);
    assert_false(r->keep);
}

static void test_get_request_every_split(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    request(&in, 1, false, "GET", "channel=a&since=5", "", 8, 0);
    check_all_splits(&in, 1024, check_get);
    buf_free(&in);
}

static void check_post(const result *r)
{
    assert_int_equal(r->requests, 1);
    assert_string_equal(r->method, "POST");
    assert_string_equal(r->body, "content=hello+world&channel=x");
    assert_true(r->keep);
    assert_int_equal(r->reqid, 0x1234);
}

static void test_post_with_padding_every_split(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    request(&in, 0x1234, true, "POST", "", "content=hello+world&channel=x", 5, 3);
    check_all_splits(&in, 1024, check_post);
    buf_free(&in);
}

static void check_two(const result *r)
{
    assert_int_equal(r->requests, 2);
    assert_string_equal(r->method, "POST"); /* the second */
}

static void test_keep_alive_two_requests(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    request(&in, 1, true, "GET", "channel=a", "", 8, 0);
    request(&in, 1, true, "POST", "", "content=x", 8, 0);
    check_all_splits(&in, 1024, check_two);
    buf_free(&in);
}

static void test_body_over_limit_is_flagged_and_drained(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    char body[200];
    memset(body, 'b', sizeof body - 1);
    body[sizeof body - 1] = '\0';
    request(&in, 1, true, "POST", "", body, 64, 0);
    fcgi_parser p;
    fcgi_parser_init(&p, 4096, 100);
    fcgi_ev ev;
    size_t off = 0;
    int got = 0;
    while (off < in.len) {
        off += fcgi_parser_feed(&p, (const uint8_t *)in.data + off, in.len - off, &ev);
        if (ev.type == FCGI_EV_REQUEST) {
            got++;
            assert_true(p.body_too_large);
            assert_true(p.body.len <= 100);
        }
    }
    assert_int_equal(got, 1);
    fcgi_parser_free(&p);
    buf_free(&in);
}

static void test_params_over_limit_is_an_error(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    request(&in, 1, false, "GET", "", "", 8, 0);
    fcgi_parser p;
    fcgi_parser_init(&p, 100, 100); /* the user agent alone is 300 bytes */
    fcgi_ev ev;
    size_t off = 0;
    int errors = 0;
    while (off < in.len && !errors) {
        off += fcgi_parser_feed(&p, (const uint8_t *)in.data + off, in.len - off, &ev);
        errors += ev.type == FCGI_EV_ERROR;
    }
    assert_int_equal(errors, 1);
    /* Sticky: nothing more is taken. */
    assert_int_equal(fcgi_parser_feed(&p, (const uint8_t *)"x", 1, &ev), 0);
    assert_int_equal(ev.type, FCGI_EV_ERROR);
    fcgi_parser_free(&p);
    buf_free(&in);
}

static void test_bad_version_is_an_error(void **state)
{
    (void)state;
    uint8_t rec2[8] = {2, FCGI_BEGIN_REQUEST, 0, 1, 0, 8, 0, 0};
    fcgi_parser p;
    fcgi_parser_init(&p, 4096, 100);
    fcgi_ev ev;
    fcgi_parser_feed(&p, rec2, 8, &ev);
    assert_int_equal(ev.type, FCGI_EV_ERROR);
    fcgi_parser_free(&p);
}

static void test_malformed_pairs_are_an_error(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    uint8_t begin[8] = {0, FCGI_RESPONDER, 0};
    rec(&in, FCGI_BEGIN_REQUEST, 1, begin, 8, 0);
    rec(&in, FCGI_PARAMS, 1, "\x05" "\x40" "abc", 5, 0); /* lengths beyond the data */
    rec(&in, FCGI_PARAMS, 1, "", 0, 0);
    result r;
    run(&in, 0, 100, &r);
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.requests, 0);
    buf_free(&in);
}

static void test_multiplexed_request_is_refused(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    uint8_t begin[8] = {0, FCGI_RESPONDER, FCGI_KEEP_CONN};
    rec(&in, FCGI_BEGIN_REQUEST, 1, begin, 8, 0);
    rec(&in, FCGI_BEGIN_REQUEST, 2, begin, 8, 0);
    result r;
    run(&in, 0, 100, &r);
    assert_int_equal(r.mgmt, 1);
    assert_int_equal(r.reply_len, 16);
    assert_int_equal(r.reply[1], FCGI_END_REQUEST);
    assert_int_equal(r.reply[3], 2);
    assert_int_equal(r.reply[12], FCGI_CANT_MPX_CONN);
    buf_free(&in);
}

static void test_other_roles_are_refused(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    uint8_t begin[8] = {0, FCGI_AUTHORIZER, 0};
    rec(&in, FCGI_BEGIN_REQUEST, 7, begin, 8, 0);
    result r;
    run(&in, 0, 100, &r);
    assert_int_equal(r.mgmt, 1);
    assert_int_equal(r.reply[3], 7);
    assert_int_equal(r.reply[12], FCGI_UNKNOWN_ROLE);
    buf_free(&in);
}

static void test_get_values_and_unknown_types(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    buf q = BUF_INIT;
    nv(&q, "FCGI_MPXS_CONNS", "");
    rec(&in, FCGI_GET_VALUES, 0, q.data, q.len, 0);
    result r;
    run(&in, 0, 100, &r);
    assert_int_equal(r.mgmt, 1);
    assert_int_equal(r.reply[1], FCGI_GET_VALUES_RESULT);
    assert_non_null(memmem(r.reply, r.reply_len, "FCGI_MPXS_CONNS0", 16));
    buf_reset(&in);
    rec(&in, 42, 0, "xx", 2, 0);
    run(&in, 1, 100, &r);
    assert_int_equal(r.mgmt, 1);
    assert_int_equal(r.reply[1], FCGI_UNKNOWN_TYPE);
    assert_int_equal(r.reply[8], 42);
    buf_free(&q);
    buf_free(&in);
}

static void test_abort_of_active_request(void **state)
{
    (void)state;
    buf in = BUF_INIT;
    request(&in, 3, true, "GET", "channel=a", "", 8, 0);
    rec(&in, FCGI_ABORT_REQUEST, 3, "", 0, 0);
    fcgi_parser p;
    fcgi_parser_init(&p, 4096, 100);
    fcgi_ev ev;
    size_t off = 0;
    int requests = 0, aborts = 0;
    while (off < in.len) {
        off += fcgi_parser_feed(&p, (const uint8_t *)in.data + off, in.len - off, &ev);
        requests += ev.type == FCGI_EV_REQUEST;
        aborts += ev.type == FCGI_EV_ABORT;
    }
    assert_int_equal(requests, 1);
    assert_int_equal(aborts, 1);
    fcgi_parser_free(&p);
    buf_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_request_every_split),
        cmocka_unit_test(test_post_with_padding_every_split),
        cmocka_unit_test(test_keep_alive_two_requests),
        cmocka_unit_test(test_body_over_limit_is_flagged_and_drained),
        cmocka_unit_test(test_params_over_limit_is_an_error),
        cmocka_unit_test(test_bad_version_is_an_error),
        cmocka_unit_test(test_malformed_pairs_are_an_error),
        cmocka_unit_test(test_multiplexed_request_is_refused),
        cmocka_unit_test(test_other_roles_are_refused),
        cmocka_unit_test(test_get_values_and_unknown_types),
        cmocka_unit_test(test_abort_of_active_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
