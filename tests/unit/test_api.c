/* test_api.c - cmocka tests for the HTTP API request rules (api.h):
 * routing, channel names, POST /chat bodies (form and JSON), GET /status
 * parameters, EventSource resumption and the publish token.
 *
 * Bodies are passed as exact-size heap copies (no terminating NUL) so that
 * ASan catches reads past body_len; LeakSanitizer checks that refusals leave
 * nothing allocated. No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "buf.h"

static const api_limits LIM = {.max_content = 16, .default_timeout = 30, .max_timeout = 60};

static const char *const FORM = "application/x-www-form-urlencoded";
static const char *const JSON = "application/json";

/* ---- routing, status text, channel names ---- */

static void test_route(void **state)
{
    (void)state;
    assert_int_equal(api_route("/chat"), ROUTE_CHAT);
    assert_int_equal(api_route("/status"), ROUTE_STATUS);
    assert_int_equal(api_route("/ws"), ROUTE_STATUS);
    assert_int_equal(api_route("/healthz"), ROUTE_HEALTHZ);
    assert_int_equal(api_route(NULL), ROUTE_NOT_FOUND);
    assert_int_equal(api_route(""), ROUTE_NOT_FOUND);
    assert_int_equal(api_route("/"), ROUTE_NOT_FOUND);
    assert_int_equal(api_route("/chat/"), ROUTE_NOT_FOUND);
    assert_int_equal(api_route("/Chat"), ROUTE_NOT_FOUND);
    assert_int_equal(api_route("/status?x=1"), ROUTE_NOT_FOUND); /* path has no query */
    assert_int_equal(api_route("chat"), ROUTE_NOT_FOUND);
    assert_int_equal(api_route("/chatx"), ROUTE_NOT_FOUND);
    assert_int_equal(api_route("/healthz/"), ROUTE_NOT_FOUND);
}

static void test_status_text(void **state)
{
    (void)state;
    assert_string_equal(api_status_text(200), "OK");
    assert_string_equal(api_status_text(400), "Bad Request");
    assert_string_equal(api_status_text(401), "Unauthorized");
    assert_string_equal(api_status_text(403), "Forbidden");
    assert_string_equal(api_status_text(404), "Not Found");
    assert_string_equal(api_status_text(405), "Method Not Allowed");
    assert_string_equal(api_status_text(413), "Payload Too Large");
    assert_string_equal(api_status_text(415), "Unsupported Media Type");
    assert_string_equal(api_status_text(429), "Too Many Requests");
    assert_string_equal(api_status_text(503), "Service Unavailable");
    assert_non_null(api_status_text(299));
}

static void test_channel_valid(void **state)
{
    (void)state;
    char s[80];
    memset(s, 'a', sizeof s);
    assert_true(api_channel_valid(s, 1));
    assert_true(api_channel_valid(s, 64));
    assert_false(api_channel_valid(s, 0));
    assert_false(api_channel_valid(s, 65));
    assert_false(api_channel_valid("", 0));
    const char *ok = "AZaz09_.:-";
    for (size_t i = 0; ok[i]; i++)
        assert_true(api_channel_valid(ok + i, 1));
    assert_true(api_channel_valid(ok, strlen(ok)));
    assert_true(api_channel_valid("room:1.a-b_c", 12));
    /* Every other byte is refused, alone and inside a valid name. */
    for (int c = 0; c < 256; c++) {
        bool allowed = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '_' || c == '.' || c == ':' || c == '-';
        char one = (char)c;
        char mid[3] = {'a', (char)c, 'b'};
        if (api_channel_valid(&one, 1) != allowed || api_channel_valid(mid, 3) != allowed)
            fail_msg("byte 0x%02x: expected %s", c, allowed ? "allowed" : "refused");
    }
    assert_false(api_channel_valid("a/b", 3));
    assert_false(api_channel_valid("a b", 3));
    assert_false(api_channel_valid("a%20", 4));
    assert_false(api_channel_valid("caf\xc3\xa9", 5));
    /* n bounds the check. */
    assert_true(api_channel_valid("ab/", 2));
}

/* ---- POST /chat ---- */

typedef struct req {
    const char *method, *query, *ct, *idem;
    const char *body; /* NULL: no body */
    size_t body_len;  /* 0 with a body: strlen */
} req;

static int publish(const req *r, const api_limits *lim, api_publish *out, api_error *err)
{
    api_http in;
    memset(&in, 0, sizeof in);
    in.method = r->method ? r->method : "POST";
    in.path = "/chat";
    in.query = r->query;
    in.content_type = r->ct;
    in.idempotency_key = r->idem;
    char *copy = NULL;
    if (r->body) {
        size_t n = r->body_len ? r->body_len : strlen(r->body);
        copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, r->body, n);
        in.body = copy;
        in.body_len = n;
    }
    memset(err, 0x5a, sizeof *err);
    int rc = api_parse_publish(&in, lim, out, err);
    free(copy);
    return rc;
}

/* Expect success with exactly this content and channel. */
static void pub_ok(const req *r, const char *content, size_t content_len, const char *channel)
{
    api_publish p;
    api_error err;
    int rc = publish(r, &LIM, &p, &err);
    if (rc != 0)
        fail_msg("refused with %d: %s", err.status, err.message);
    assert_int_equal(p.n, 1);
    assert_false(p.batch);
    assert_int_equal(p.msgs[0].content_len, content_len);
    assert_non_null(p.msgs[0].content);
    assert_memory_equal(p.msgs[0].content, content, content_len);
    assert_int_equal(p.msgs[0].content[content_len], '\0');
    assert_string_equal(p.msgs[0].channel, channel);
    api_publish_free(&p);
    assert_null(p.msgs);
    assert_int_equal(p.n, 0);
}

/* Expect a refusal with this status; nothing may be left to free. */
static void pub_fail_lim(const req *r, const api_limits *lim, int status)
{
    api_publish p;
    api_error err;
    int rc = publish(r, lim, &p, &err);
    if (rc != -1 || err.status != status)
        fail_msg("got rc %d status %d (%s), want status %d", rc, rc ? err.status : 200,
                 rc ? err.message : p.msgs[0].content, status);
    assert_non_null(err.message);
    assert_true(strlen(err.message) > 0);
    assert_null(p.msgs);
    assert_int_equal(p.n, 0);
    if (status == 405)
        assert_string_equal(err.allow, "POST");
    else
        assert_null(err.allow);
    api_publish_free(&p); /* harmless after a refusal */
}

static void pub_fail(const req *r, int status)
{
    pub_fail_lim(r, &LIM, status);
}

static void test_publish_form(void **state)
{
    (void)state;
    pub_ok(&(req){.ct = FORM, .body = "content=hello"}, "hello", 5, "default");
    pub_ok(&(req){.ct = FORM, .body = "content=a+b%2Bc"}, "a b+c", 5, "default");
    pub_ok(&(req){.ct = FORM, .body = "content=caf%C3%A9"}, "caf\xc3\xa9", 5, "default");
    pub_ok(&(req){.ct = FORM, .body = "content=caf\xc3\xa9"}, "caf\xc3\xa9", 5, "default");
    pub_ok(&(req){.ct = FORM, .body = "content="}, "", 0, "default");
    pub_ok(&(req){.ct = FORM, .body = "content"}, "", 0, "default");
    pub_ok(&(req){.ct = FORM, .body = "x=1&content=%26%3D&y"}, "&=", 2, "default");
    pub_ok(&(req){.ct = FORM, .body = "cont%65nt=hi"}, "hi", 2, "default");
    pub_ok(&(req){.ct = FORM, .body = "content=%0A%09%22%5C"}, "\n\t\"\\", 4, "default");
    pub_ok(&(req){.ct = FORM, .body = "&&content=x&&"}, "x", 1, "default");
    pub_ok(&(req){.ct = FORM, .body = "content=%E2%80%A8"}, "\xe2\x80\xa8", 3, "default");
}

static void test_publish_json(void **state)
{
    (void)state;
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"hello\"}"}, "hello", 5, "default");
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"\\u00e9\"}"}, "\xc3\xa9", 2, "default");
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"caf\xc3\xa9\"}"}, "caf\xc3\xa9", 5,
           "default");
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"\\ud83d\\ude00\"}"}, "\xf0\x9f\x98\x80", 4,
           "default");
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"a\\\"b\\\\c\\n\"}"}, "a\"b\\c\n", 6,
           "default");
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"\"}"}, "", 0, "default");
    pub_ok(&(req){.ct = JSON, .body = " {\"other\":[1,{}],\"content\":\"x\"} \n"}, "x", 1,
           "default");
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"x\",\"channel\":\"room.1\"}"}, "x", 1,
           "room.1");
    pub_ok(&(req){.ct = JSON, .body = "{\"content\":\"a+b%2B\"}"}, "a+b%2B", 6, "default");
}

static void test_publish_content_type(void **state)
{
    (void)state;
    const char *ok_form[] = {
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded;charset=UTF-8",
        "application/x-www-form-urlencoded; charset=\"UTF-8\"",
        "Application/X-WWW-Form-Urlencoded",
        "  application/x-www-form-urlencoded ; charset=utf8",
        "application/x-www-form-urlencoded;",
    };
    for (size_t i = 0; i < sizeof ok_form / sizeof ok_form[0]; i++)
        pub_ok(&(req){.ct = ok_form[i], .body = "content=x"}, "x", 1, "default");
    const char *ok_json[] = {
        "application/json; charset=utf-8",
        "application/json; charset=\"UTF-8\"",
        "APPLICATION/JSON",
        "application/json;charset=utf-8 ",
    };
    for (size_t i = 0; i < sizeof ok_json / sizeof ok_json[0]; i++)
        pub_ok(&(req){.ct = ok_json[i], .body = "{\"content\":\"x\"}"}, "x", 1, "default");

    const char *bad_charset[] = {
        "application/json; charset=latin1",
        "application/json; charset=iso-8859-1",
        "application/x-www-form-urlencoded; charset=utf-16",
        "application/json; charset=",
        "application/json; charset=\"utf-8",
        "application/json; boundary=x",
        "application/json; charset=utf-8; foo=bar",
    };
    for (size_t i = 0; i < sizeof bad_charset / sizeof bad_charset[0]; i++)
        pub_fail(&(req){.ct = bad_charset[i], .body = "{\"content\":\"x\"}"}, 415);
    const char *bad_type[] = {
        NULL,
        "",
        "text/plain",
        "text/plain; charset=utf-8",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json-patch+json",
        "application/x-www-form-urlencodedx",
        "json",
    };
    for (size_t i = 0; i < sizeof bad_type / sizeof bad_type[0]; i++)
        pub_fail(&(req){.ct = bad_type[i], .body = "content=x"}, 415);
}

static void test_publish_method(void **state)
{
    (void)state;
    pub_fail(&(req){.method = "GET", .ct = FORM, .body = "content=x"}, 405);
    pub_fail(&(req){.method = "PUT", .ct = FORM, .body = "content=x"}, 405);
    pub_fail(&(req){.method = "post", .ct = FORM, .body = "content=x"}, 405);
    pub_fail(&(req){.method = "", .ct = FORM, .body = "content=x"}, 405);
    /* Method is checked before anything else. */
    pub_fail(&(req){.method = "GET", .query = "channel=a/b", .ct = "text/plain"}, 405);
    /* A missing method. */
    api_http in;
    memset(&in, 0, sizeof in);
    api_publish p;
    api_error err;
    assert_int_equal(api_parse_publish(&in, &LIM, &p, &err), -1);
    assert_int_equal(err.status, 405);
    assert_string_equal(err.allow, "POST");
    assert_null(p.msgs);
}

static void test_publish_missing_or_twice(void **state)
{
    (void)state;
    pub_fail(&(req){.ct = FORM, .body = "channel=x"}, 400);
    pub_fail(&(req){.ct = FORM, .body = ""}, 400);
    pub_fail(&(req){.ct = FORM}, 400);
    pub_fail(&(req){.ct = FORM, .body = "contents=x&Content=y&content%=z"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"channel\":\"x\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = ""}, 400);
    pub_fail(&(req){.ct = JSON}, 400);
    /* Given twice: refused even when both are equal. */
    pub_fail(&(req){.ct = FORM, .body = "content=a&content=b"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=a&content=a"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=a&cont%65nt=b"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=&content"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"a\",\"content\":\"b\"}"}, 400);
}

static void test_publish_json_shape(void **state)
{
    (void)state;
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":5}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":null}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":true}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":[\"x\"]}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":{\"a\":\"b\"}}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "[\"content\",\"x\"]"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "[]"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "\"x\""}, 400);
    pub_fail(&(req){.ct = JSON, .body = "5"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "null"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"x\""}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"x\"} {}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{'content':'x'}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "content=x"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"x\",\"channel\":5}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"x\",\"channel\":null}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"x\",\"channel\":\"\"}"}, 400);
}

static void test_publish_bad_bytes(void **state)
{
    (void)state;
    /* NUL. */
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"a\\u0000b\"}"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=a%00b"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=a\0b", .body_len = 11}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"a\0b\"}", .body_len = 17}, 400);
    /* Invalid UTF-8. */
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"\xc3\x28\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"\xff\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"\xed\xa0\x80\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"\xc0\xaf\"}"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%C3%28"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%ED%A0%80"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%C3"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%FF"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=\xff"}, 400);
    /* Lone surrogates in JSON escapes. */
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"\\ud800\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"\\udc00\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"\\ud83d x\"}"}, 400);
    /* Malformed escapes in forms. */
    pub_fail(&(req){.ct = FORM, .body = "content=%"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%4"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%zz"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=100%"}, 400);
}

static void test_publish_size(void **state)
{
    (void)state;
    char body[512], want[64];
    memset(want, 'a', sizeof want);
    /* JSON: exactly max_content (16) bytes ok, 17 refused. */
    snprintf(body, sizeof body, "{\"content\":\"%.16s\"}", want);
    pub_ok(&(req){.ct = JSON, .body = body}, want, 16, "default");
    snprintf(body, sizeof body, "{\"content\":\"%.17s\"}", want);
    pub_fail(&(req){.ct = JSON, .body = body}, 413);
    /* JSON escapes count decoded: 16 x \u00e9 is 32 bytes, 8 is 16 bytes. */
    strcpy(body, "{\"content\":\"");
    for (int i = 0; i < 8; i++)
        strcat(body, "\\u00e9");
    strcat(body, "\"}");
    char e8[16];
    for (int i = 0; i < 8; i++)
        e8[2 * i] = '\xc3', e8[2 * i + 1] = '\xa9';
    pub_ok(&(req){.ct = JSON, .body = body}, e8, 16, "default");
    strcpy(body, "{\"content\":\"");
    for (int i = 0; i < 9; i++)
        strcat(body, "\\u00e9");
    strcat(body, "\"}");
    pub_fail(&(req){.ct = JSON, .body = body}, 413);

    /* Form, raw bytes. */
    snprintf(body, sizeof body, "content=%.16s", want);
    pub_ok(&(req){.ct = FORM, .body = body}, want, 16, "default");
    snprintf(body, sizeof body, "content=%.17s", want);
    pub_fail(&(req){.ct = FORM, .body = body}, 413);
    /* Form, all percent-encoded: 48 encoded bytes decode to 16. */
    strcpy(body, "content=");
    for (int i = 0; i < 16; i++)
        strcat(body, "%61");
    pub_ok(&(req){.ct = FORM, .body = body}, want, 16, "default");
    strcat(body, "%61");
    pub_fail(&(req){.ct = FORM, .body = body}, 413);
    /* Far too large (early refusal before decoding). */
    char *huge = malloc(10000);
    memcpy(huge, "content=", 8);
    memset(huge + 8, 'b', 10000 - 9);
    huge[9999] = '\0';
    pub_fail(&(req){.ct = FORM, .body = huge}, 413);
    free(huge);
    /* Size is refused before UTF-8 is checked, in both encodings. */
    snprintf(body, sizeof body, "content=%.16s%%FF", want);
    pub_fail(&(req){.ct = FORM, .body = body}, 413);
    /* max_content 0: only empty content. */
    api_limits zero = LIM;
    zero.max_content = 0;
    pub_fail_lim(&(req){.ct = FORM, .body = "content=x"}, &zero, 413);
    pub_fail_lim(&(req){.ct = JSON, .body = "{\"content\":\"x\"}"}, &zero, 413);
}

static void test_publish_channel(void **state)
{
    (void)state;
    pub_ok(&(req){.query = "channel=q", .ct = FORM, .body = "content=x"}, "x", 1, "q");
    pub_ok(&(req){.ct = FORM, .body = "channel=b&content=x"}, "x", 1, "b");
    pub_ok(&(req){.ct = FORM, .body = "content=x&channel=b"}, "x", 1, "b");
    pub_ok(&(req){.query = "channel=same", .ct = FORM, .body = "channel=same&content=x"}, "x", 1,
           "same");
    pub_fail(&(req){.query = "channel=one", .ct = FORM, .body = "channel=two&content=x"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "channel=one&channel=two&content=x"}, 400);
    pub_ok(&(req){.ct = FORM, .body = "channel=one&channel=one&content=x"}, "x", 1, "one");
    pub_ok(&(req){.query = "channel=j", .ct = JSON, .body = "{\"content\":\"x\"}"}, "x", 1, "j");
    pub_ok(
        &(req){.query = "channel=j", .ct = JSON, .body = "{\"content\":\"x\",\"channel\":\"j\"}"},
        "x", 1, "j");
    pub_fail(
        &(req){.query = "channel=j", .ct = JSON, .body = "{\"content\":\"x\",\"channel\":\"k\"}"},
        400);
    /* Encoded names decode first. */
    pub_ok(&(req){.query = "channel=a%2Eb%3Ac", .ct = FORM, .body = "content=x"}, "x", 1, "a.b:c");
    pub_ok(&(req){.query = "ch%61nnel=zz&other=1", .ct = FORM, .body = "content=x"}, "x", 1, "zz");
    /* Invalid names, in the query and in either body. */
    pub_fail(&(req){.query = "channel=a/b", .ct = FORM, .body = "content=x"}, 400);
    pub_fail(&(req){.query = "channel=a+b", .ct = FORM, .body = "content=x"}, 400);
    pub_fail(&(req){.query = "channel=a%20b", .ct = FORM, .body = "content=x"}, 400);
    pub_fail(&(req){.query = "channel=a%25", .ct = FORM, .body = "content=x"}, 400);
    pub_fail(&(req){.query = "channel=", .ct = FORM, .body = "content=x"}, 400);
    pub_fail(&(req){.query = "channel", .ct = FORM, .body = "content=x"}, 400);
    pub_fail(&(req){.query = "channel=%zz", .ct = FORM, .body = "content=x"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=x&channel=a%2Fb"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=x&channel=caf%C3%A9"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"x\",\"channel\":\"a b\"}"}, 400);
    char q[256], name[70];
    memset(name, 'c', sizeof name);
    snprintf(q, sizeof q, "channel=%.64s", name);
    pub_ok(&(req){.query = q, .ct = FORM, .body = "content=x"}, "x", 1,
           "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
    snprintf(q, sizeof q, "channel=%.65s", name);
    pub_fail(&(req){.query = q, .ct = FORM, .body = "content=x"}, 400);
    char body[256];
    snprintf(body, sizeof body, "{\"content\":\"x\",\"channel\":\"%.65s\"}", name);
    pub_fail(&(req){.ct = JSON, .body = body}, 400);
    /* 64 characters, every one percent-encoded (192 bytes), is fine. */
    strcpy(q, "channel=");
    for (int i = 0; i < 64; i++)
        strcat(q, "%63");
    pub_ok(&(req){.query = q, .ct = FORM, .body = "content=x"}, "x", 1,
           "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
    /* The channel is checked even when the content is refused later. */
    pub_fail(&(req){.query = "channel=bad!", .ct = "text/plain"}, 400);
}

/* {"messages":[...]}: every item checked, in order, channels per item
 * (the query's as the default); anything wrong refuses the whole batch. */
static void test_publish_batch(void **state)
{
    (void)state;
    api_publish p;
    api_error err;
    req r = {.ct = JSON, .query = "channel=q",
             .body = "{\"messages\":[{\"content\":\"a\"},{\"content\":\"b\",\"channel\":\"q\"},"
                     "{\"content\":\"\\u00e9\"}]}"};
    assert_int_equal(publish(&r, &LIM, &p, &err), 0);
    assert_true(p.batch);
    assert_int_equal(p.n, 3);
    assert_string_equal(p.msgs[0].content, "a");
    assert_string_equal(p.msgs[1].content, "b");
    assert_string_equal(p.msgs[2].content, "\xc3\xa9");
    assert_int_equal(p.msgs[2].content_len, 2);
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(p.msgs[i].channel, "q");
    api_publish_free(&p);
    assert_null(p.msgs);

    r = (req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\",\"channel\":\"a\"},"
                                  "{\"content\":\"y\",\"channel\":\"b\"},{\"content\":\"z\"}]}"};
    assert_int_equal(publish(&r, &LIM, &p, &err), 0);
    assert_string_equal(p.msgs[0].channel, "a");
    assert_string_equal(p.msgs[1].channel, "b");
    assert_string_equal(p.msgs[2].channel, "default");
    char key[PW_IDEM_KEY_MAX + 16];
    api_publish_idem_key(&p, 1, key, sizeof key);
    assert_string_equal(key, "");
    strcpy(p.idem_key, "k1");
    api_publish_idem_key(&p, 1, key, sizeof key);
    assert_string_equal(key, "k1#1");
    api_publish_free(&p);

    /* One message: the key is the request's own. */
    r = (req){.ct = JSON, .body = "{\"content\":\"x\"}", .idem = "k2"};
    assert_int_equal(publish(&r, &LIM, &p, &err), 0);
    api_publish_idem_key(&p, 0, key, sizeof key);
    assert_string_equal(key, "k2");
    api_publish_free(&p);

    /* A channel that differs from the query's, a bad item anywhere, the
     * wrong shapes, and too many: nothing is kept. */
    pub_fail(&(req){.ct = JSON, .query = "channel=q", .body = "{\"messages\":[{\"content\":\"x\",\"channel\":\"r\"}]}"},
             400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\"},{\"content\":1}]}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\"},{\"channel\":\"a\"}]}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\"},{\"content\":\"y\",\"channel\":\"a/b\"}]}"},
             400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\"},\"y\"]}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[]}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":{\"content\":\"x\"}}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\"}],\"content\":\"y\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\"}],\"channel\":\"a\"}"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"x\"},{\"content\":\"a\\u0000b\"}]}"}, 400);
    buf big = BUF_INIT;
    buf_puts(&big, "{\"messages\":[");
    for (int i = 0; i <= API_BATCH_MAX; i++)
        buf_puts(&big, i ? ",{\"content\":\"x\"}" : "{\"content\":\"x\"}");
    buf_puts(&big, "]}");
    buf_putc(&big, '\0');
    pub_fail(&(req){.ct = JSON, .body = big.data}, 400);
    /* exactly API_BATCH_MAX is fine */
    big.len -= 2 + 1 + 16; /* drop one item, "]}" and the NUL */
    buf_puts(&big, "]}");
    buf_putc(&big, '\0');
    assert_int_equal(publish(&(req){.ct = JSON, .body = big.data}, &LIM, &p, &err), 0);
    assert_int_equal(p.n, API_BATCH_MAX);
    api_publish_free(&p);
    buf_free(&big);
    /* each item's content is bounded as a single one */
    api_limits small = LIM;
    small.max_content = 3;
    pub_fail_lim(&(req){.ct = JSON, .body = "{\"messages\":[{\"content\":\"abc\"},{\"content\":\"abcd\"}]}"}, &small,
                 413);
}

static void test_publish_idempotency_key(void **state)
{
    (void)state;
    api_publish p;
    api_error err;
    req r = {.ct = FORM, .body = "content=x", .idem = "abc-123_XYZ~!"};
    assert_int_equal(publish(&r, &LIM, &p, &err), 0);
    assert_string_equal(p.idem_key, "abc-123_XYZ~!");
    api_publish_free(&p);
    r.idem = NULL;
    assert_int_equal(publish(&r, &LIM, &p, &err), 0);
    assert_string_equal(p.idem_key, "");
    api_publish_free(&p);
    r.idem = "";
    assert_int_equal(publish(&r, &LIM, &p, &err), 0);
    assert_string_equal(p.idem_key, "");
    api_publish_free(&p);
    char key[200];
    memset(key, 'k', sizeof key);
    key[128] = '\0';
    r.idem = key;
    assert_int_equal(publish(&r, &LIM, &p, &err), 0);
    assert_int_equal(strlen(p.idem_key), 128);
    assert_memory_equal(p.idem_key, key, 128);
    api_publish_free(&p);
    key[128] = 'k';
    key[129] = '\0';
    pub_fail(&r, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=x", .idem = "a b"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=x", .idem = "a\tb"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=x", .idem = "\x7f"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=x", .idem = "caf\xc3\xa9"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=x", .idem = " "}, 400);
}

static void test_publish_failure_after_alloc(void **state)
{
    (void)state;
    /* Refusals that happen after the content was decoded must free it
     * (LeakSanitizer checks at exit). */
    pub_fail(&(req){.ct = FORM, .body = "content=ok&channel=bad/name"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=ok&content=again"}, 400);
    pub_fail(&(req){.query = "channel=a", .ct = FORM, .body = "content=ok&channel=b"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%C3%28"}, 400);
    pub_fail(&(req){.ct = FORM, .body = "content=%zz"}, 400);
    pub_fail(&(req){.ct = JSON, .body = "{\"content\":\"ok\",\"channel\":\"bad/name\"}"}, 400);
    pub_fail(&(req){.ct = JSON,
                    .body = "{\"content\":\"ok\",\"extra\":[1,2,{\"x\":\"y\"}],"
                            "\"channel\":7}"},
             400);
}

/* ---- GET /status ---- */

typedef struct preq {
    const char *method, *query, *accept, *lei;
} preq;

static int poll_parse(const preq *r, api_poll *out, api_error *err)
{
    api_http in;
    memset(&in, 0, sizeof in);
    in.method = r->method ? r->method : "GET";
    in.path = "/status";
    in.query = r->query;
    in.accept = r->accept;
    in.last_event_id = r->lei;
    memset(err, 0x5a, sizeof *err);
    static api_chan chans[8];
    return api_parse_poll(&in, &LIM, out, chans, 8, err);
}

static api_poll poll_ok(const preq *r)
{
    api_poll p;
    api_error err;
    if (poll_parse(r, &p, &err) != 0)
        fail_msg("query [%s] refused with %d: %s", r->query ? r->query : "(null)", err.status,
                 err.message);
    return p;
}

static void poll_fail(const preq *r, int status)
{
    api_poll p;
    api_error err;
    int rc = poll_parse(r, &p, &err);
    if (rc != -1 || err.status != status)
        fail_msg("query [%s]: rc %d status %d, want %d", r->query ? r->query : "(null)", rc,
                 rc ? err.status : 200, status);
    assert_non_null(err.message);
    if (status == 405)
        assert_string_equal(err.allow, "GET");
    else
        assert_null(err.allow);
}

static void test_poll_defaults(void **state)
{
    (void)state;
    api_poll p = poll_ok(&(preq){0});
    assert_string_equal(p.chans[0].channel, "default");
    assert_false(p.chans[0].has_since);
    assert_int_equal(p.chans[0].since, 0);
    assert_string_equal(p.chans[0].epoch, "");
    assert_int_equal(p.timeout, 30);
    assert_false(p.event_stream);
    p = poll_ok(&(preq){.query = ""});
    assert_string_equal(p.chans[0].channel, "default");
    assert_int_equal(p.timeout, 30);
    p = poll_ok(&(preq){.query = "channel=h"});
    assert_string_equal(p.chans[0].channel, "h");
    /* Unknown parameters are ignored. */
    p = poll_ok(&(preq){.query = "_=1700000000123&foo&bar=%zz&channel=c&x=/"});
    assert_string_equal(p.chans[0].channel, "c");
    assert_false(p.chans[0].has_since);
}

static void test_poll_method(void **state)
{
    (void)state;
    poll_fail(&(preq){.method = "POST"}, 405);
    poll_fail(&(preq){.method = "HEAD"}, 405); /* a held HEAD makes no sense */
    poll_fail(&(preq){.method = "PUT", .query = "since=1"}, 405);
    poll_fail(&(preq){.method = "get"}, 405);
    poll_fail(&(preq){.method = ""}, 405);
    api_http in;
    memset(&in, 0, sizeof in);
    api_poll p;
    api_error err;
    assert_int_equal(api_parse_poll(&in, &LIM, &p, (api_chan[1]){0}, 1, &err), -1);
    assert_int_equal(err.status, 405);
    assert_string_equal(err.allow, "GET");
}

static void test_poll_since(void **state)
{
    (void)state;
    api_poll p = poll_ok(&(preq){.query = "since=0"});
    assert_true(p.chans[0].has_since);
    assert_int_equal(p.chans[0].since, 0);
    p = poll_ok(&(preq){.query = "since=123"});
    assert_true(p.chans[0].has_since);
    assert_int_equal(p.chans[0].since, 123);
    p = poll_ok(&(preq){.query = "since=999999999999999"});
    assert_int_equal(p.chans[0].since, 999999999999999ULL);
    p = poll_ok(&(preq){.query = "since=%31%32"});
    assert_int_equal(p.chans[0].since, 12);
    p = poll_ok(&(preq){.query = "since=5&since=5"});
    assert_int_equal(p.chans[0].since, 5);
    p = poll_ok(&(preq){.query = "since=5&since=005"});
    assert_int_equal(p.chans[0].since, 5);
    poll_fail(&(preq){.query = "since=1000000000000000"}, 400);
    poll_fail(&(preq){.query = "since=-1"}, 400);
    poll_fail(&(preq){.query = "since=abc"}, 400);
    poll_fail(&(preq){.query = "since="}, 400);
    poll_fail(&(preq){.query = "since"}, 400);
    poll_fail(&(preq){.query = "since=1+"}, 400);
    poll_fail(&(preq){.query = "since=1.0"}, 400);
    poll_fail(&(preq){.query = "since=%zz"}, 400);
    poll_fail(&(preq){.query = "since=5&since=6"}, 400);
    poll_fail(&(preq){.query = "since=1234567890123456789012345678901234567890"}, 400);
}

static void test_poll_timeout(void **state)
{
    (void)state;
    api_poll p = poll_ok(&(preq){.query = "timeout=10"});
    assert_int_equal(p.timeout, 10);
    p = poll_ok(&(preq){.query = "timeout=0"});
    assert_int_equal(p.timeout, 0);
    p = poll_ok(&(preq){.query = "timeout=60"});
    assert_int_equal(p.timeout, 60);
    p = poll_ok(&(preq){.query = "timeout=61"});
    assert_int_equal(p.timeout, 60);
    p = poll_ok(&(preq){.query = "timeout=999999999999999"});
    assert_int_equal(p.timeout, 60);
    p = poll_ok(&(preq){.query = "timeout=10&timeout=10"});
    assert_int_equal(p.timeout, 10);
    poll_fail(&(preq){.query = "timeout=10&timeout=11"}, 400);
    poll_fail(&(preq){.query = "timeout=abc"}, 400);
    poll_fail(&(preq){.query = "timeout="}, 400);
    poll_fail(&(preq){.query = "timeout=-1"}, 400);
    poll_fail(&(preq){.query = "timeout=1.5"}, 400);
}

/* A repeated timeout above the cap (max_timeout 60): the second value is
 * compared with the already-capped first one. "timeout=100&timeout=100" is
 * refused as "two different timeout values" (100 != 60) although the values
 * are equal, and "timeout=100&timeout=60" is accepted although they differ.
 * Expected: compare the values as given, like since/epoch/channel. */
static void test_poll_timeout_repeated_above_cap(void **state)
{
    (void)state;
    api_poll p = poll_ok(&(preq){.query = "timeout=100&timeout=100"});
    assert_int_equal(p.timeout, 60);
    poll_fail(&(preq){.query = "timeout=100&timeout=60"}, 400);
    poll_fail(&(preq){.query = "timeout=60&timeout=100"}, 400);
}

static void test_poll_epoch_channel(void **state)
{
    (void)state;
    api_poll p = poll_ok(&(preq){.query = "epoch=1700000000:ab-c_d.e"});
    assert_string_equal(p.chans[0].epoch, "1700000000:ab-c_d.e");
    p = poll_ok(&(preq){.query = "epoch=E1&epoch=E1&channel=x&channel=x"});
    assert_string_equal(p.chans[0].epoch, "E1");
    assert_string_equal(p.chans[0].channel, "x");
    p = poll_ok(&(preq){.query = "epoch=a%3Ab"});
    assert_string_equal(p.chans[0].epoch, "a:b");
    char q[300], name[70];
    memset(name, 'e', sizeof name);
    snprintf(q, sizeof q, "epoch=%.64s", name);
    p = poll_ok(&(preq){.query = q});
    assert_int_equal(strlen(p.chans[0].epoch), 64);
    snprintf(q, sizeof q, "epoch=%.65s", name);
    poll_fail(&(preq){.query = q}, 400);
    poll_fail(&(preq){.query = "epoch=a!b"}, 400);
    poll_fail(&(preq){.query = "epoch=a/b"}, 400);
    poll_fail(&(preq){.query = "epoch=a%20b"}, 400);
    poll_fail(&(preq){.query = "epoch="}, 400);
    poll_fail(&(preq){.query = "epoch=%"}, 400);
    poll_fail(&(preq){.query = "epoch=E1&epoch=E2"}, 400);
    poll_fail(&(preq){.query = "channel=a&channel=b"}, 400);
    poll_fail(&(preq){.query = "channel=a/b"}, 400);
    poll_fail(&(preq){.query = "channel="}, 400);
    snprintf(q, sizeof q, "channel=%.65s", name);
    poll_fail(&(preq){.query = q}, 400);
    p = poll_ok(&(preq){.query = "channel=room.1&since=4&epoch=E&timeout=5"});
    assert_string_equal(p.chans[0].channel, "room.1");
    assert_true(p.chans[0].has_since);
    assert_int_equal(p.chans[0].since, 4);
    assert_string_equal(p.chans[0].epoch, "E");
    assert_int_equal(p.timeout, 5);
}

static void test_poll_channel_lists(void **state)
{
    (void)state;
    api_poll p = poll_ok(&(preq){.query = "channel=a,b.c,p:x"});
    assert_int_equal(p.n, 3);
    assert_true(p.multi);
    assert_string_equal(p.chans[0].channel, "a");
    assert_string_equal(p.chans[1].channel, "b.c");
    assert_string_equal(p.chans[2].channel, "p:x");
    for (size_t i = 0; i < 3; i++)
        assert_false(p.chans[i].has_since);
    p = poll_ok(&(preq){.query = "channel=a"});
    assert_int_equal(p.n, 1);
    assert_false(p.multi);
    /* Positions: CHANNEL=[EPOCH:]ID, split at the first '=' and last ':'. */
    p = poll_ok(&(preq){.query = "channel=a,p:x,c&since=p:x%3DE:1:7,a=3"});
    assert_true(p.chans[0].has_since);
    assert_int_equal(p.chans[0].since, 3);
    assert_string_equal(p.chans[0].epoch, "");
    assert_true(p.chans[1].has_since);
    assert_int_equal(p.chans[1].since, 7);
    assert_string_equal(p.chans[1].epoch, "E:1");
    assert_false(p.chans[2].has_since);
    p = poll_ok(&(preq){.query = "since=a=E:5&channel=a"}); /* one channel, list form */
    assert_int_equal(p.chans[0].since, 5);
    assert_string_equal(p.chans[0].epoch, "E");
    static const char *const bad[] = {
        "channel=a,a", "channel=a,", "channel=,a", "channel=a,,b", "channel=a,b/c",
        "channel=a,b&since=3", "channel=a,b&epoch=E", "channel=a,b&since=c=1",
        "channel=a,b&since=a=1,a=2", "channel=a,b&since=a=x", "channel=a,b&since=a=E:",
        "channel=a,b&since=a=:4", "channel=a,b&since=a", "channel=a,b&since=a=1&epoch=E",
        "channel=a,b,c,d,e,f,g,h,i", /* more than the 8 the test gives room for */
        "since=3&channel=", "channel=a&channel=a,b",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        poll_fail(&(preq){.query = bad[i]}, 400);
    p = poll_ok(&(preq){.query = "channel=a,b,c,d,e,f,g,h"});
    assert_int_equal(p.n, 8);
    /* Last-Event-ID carrying a position list, for several channels; bad
     * items are skipped. */
    const char *es = "text/event-stream";
    p = poll_ok(&(preq){.query = "channel=a,b,c", .accept = es, .lei = "a=E:4,b=9,zz=1,c=bad"});
    assert_int_equal(p.chans[0].since, 4);
    assert_string_equal(p.chans[0].epoch, "E");
    assert_int_equal(p.chans[1].since, 9);
    assert_false(p.chans[2].has_since);
    /* A query position wins over the header. */
    p = poll_ok(&(preq){.query = "channel=a,b&since=b=1", .accept = es, .lei = "a=E:4"});
    assert_false(p.chans[0].has_since);
    assert_int_equal(p.chans[1].since, 1);
}

static void test_poll_empty_channel_allowed(void **state)
{
    (void)state;
    api_http in = {.method = "GET", .path = "/status", .query = "channel="};
    api_limits lim = LIM;
    lim.allow_empty = true;
    api_chan chans[4];
    api_poll p;
    api_error err;
    assert_int_equal(api_parse_poll(&in, &lim, &p, chans, 4, &err), 0);
    assert_int_equal(p.n, 0);
    in.query = "";
    assert_int_equal(api_parse_poll(&in, &lim, &p, chans, 4, &err), 0);
    assert_int_equal(p.n, 1);
    assert_string_equal(p.chans[0].channel, "default");
}

static void test_poll_event_stream(void **state)
{
    (void)state;
    assert_true(poll_ok(&(preq){.accept = "text/event-stream"}).event_stream);
    assert_true(poll_ok(&(preq){.accept = "TEXT/Event-Stream"}).event_stream);
    assert_true(poll_ok(&(preq){.accept = "text/html, text/event-stream;q=0.9"}).event_stream);
    assert_true(poll_ok(&(preq){.accept = "text/html,text/event-stream"}).event_stream);
    assert_true(poll_ok(&(preq){.accept = " text/event-stream ; charset=utf-8"}).event_stream);
    assert_true(poll_ok(&(preq){.accept = "application/json;q=1, text/event-stream"}).event_stream);
    assert_false(poll_ok(&(preq){0}).event_stream);
    assert_false(poll_ok(&(preq){.accept = ""}).event_stream);
    assert_false(poll_ok(&(preq){.accept = "*/*"}).event_stream);
    assert_false(poll_ok(&(preq){.accept = "application/json"}).event_stream);
    assert_false(poll_ok(&(preq){.accept = "text/event-streamx"}).event_stream);
    assert_false(poll_ok(&(preq){.accept = "text/event"}).event_stream);
    assert_false(poll_ok(&(preq){.accept = "x-text/event-stream"}).event_stream);
    assert_false(poll_ok(&(preq){.accept = "text/html;text/event-stream"}).event_stream);
    assert_false(poll_ok(&(preq){.accept = ",,, ;;"}).event_stream);
}

static void test_poll_last_event_id(void **state)
{
    (void)state;
    const char *es = "text/event-stream";
    api_poll p = poll_ok(&(preq){.accept = es, .lei = "E1:42"});
    assert_true(p.chans[0].has_since);
    assert_int_equal(p.chans[0].since, 42);
    assert_string_equal(p.chans[0].epoch, "E1");
    /* The epoch may contain ':'; the id follows the last one. */
    p = poll_ok(&(preq){.accept = es, .lei = "1700000000:abc:7"});
    assert_int_equal(p.chans[0].since, 7);
    assert_string_equal(p.chans[0].epoch, "1700000000:abc");
    /* Not an event stream: ignored. */
    p = poll_ok(&(preq){.lei = "E1:42"});
    assert_false(p.chans[0].has_since);
    assert_string_equal(p.chans[0].epoch, "");
    p = poll_ok(&(preq){.accept = "application/json", .lei = "E1:42"});
    assert_false(p.chans[0].has_since);
    /* The query's since wins (and the header's epoch is not used then). */
    p = poll_ok(&(preq){.query = "since=5", .accept = es, .lei = "E1:42"});
    assert_int_equal(p.chans[0].since, 5);
    assert_string_equal(p.chans[0].epoch, "");
    p = poll_ok(&(preq){.query = "since=5&epoch=Q", .accept = es, .lei = "E1:42"});
    assert_int_equal(p.chans[0].since, 5);
    assert_string_equal(p.chans[0].epoch, "Q");
    /* The query's epoch wins over the header's. */
    p = poll_ok(&(preq){.query = "epoch=Q", .accept = es, .lei = "E1:42"});
    assert_int_equal(p.chans[0].since, 42);
    assert_string_equal(p.chans[0].epoch, "Q");
    /* Malformed headers are ignored. */
    static const char *const bad[] = {"garbage", "E1:", "E1:x", "E1:-1", "E1:1000000000000000",
                                      "E1:4 2",  ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = poll_ok(&(preq){.accept = es, .lei = bad[i]});
        if (p.chans[0].has_since || p.chans[0].epoch[0])
            fail_msg("Last-Event-ID [%s] was used", bad[i]);
    }
}

/* ---- publish token ---- */

static void auth_fail(const char *authz, const char *token, int status)
{
    api_error err;
    memset(&err, 0x5a, sizeof err);
    assert_int_equal(api_check_publish_auth(authz, token, &err), -1);
    if (err.status != status)
        fail_msg("[%s] vs [%s]: status %d, want %d", authz ? authz : "(null)", token, err.status,
                 status);
    assert_non_null(err.message);
    assert_null(err.allow);
}

static void test_publish_auth(void **state)
{
    (void)state;
    api_error err;
    assert_int_equal(api_check_publish_auth(NULL, NULL, &err), 0);
    assert_int_equal(api_check_publish_auth("Bearer x", NULL, &err), 0);
    assert_int_equal(api_check_publish_auth(NULL, "", &err), 0);
    assert_int_equal(api_check_publish_auth("garbage", "", &err), 0);
    assert_int_equal(api_check_publish_auth("Bearer right", "right", &err), 0);
    assert_int_equal(api_check_publish_auth("bearer right", "right", &err), 0);
    assert_int_equal(api_check_publish_auth("Bearer  right", "right", &err), 0);
    auth_fail(NULL, "right", 401);
    auth_fail("", "right", 401);
    auth_fail("Basic x", "right", 401);
    auth_fail("Basic cmlnaHQ=", "right", 401);
    auth_fail("right", "right", 401);
    auth_fail("Bearer", "right", 401);
    auth_fail("Bearer wrong", "right", 403);
    auth_fail("Bearer ", "right", 403);
    auth_fail("Bearer righ", "right", 403);
    auth_fail("Bearer rightx", "right", 403);
    auth_fail("Bearer Right", "right", 403);
    auth_fail("Bearer r", "right", 403);
    auth_fail("Bearer right ", "right", 403);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_status_text),
        cmocka_unit_test(test_channel_valid),
        cmocka_unit_test(test_publish_form),
        cmocka_unit_test(test_publish_json),
        cmocka_unit_test(test_publish_content_type),
        cmocka_unit_test(test_publish_method),
        cmocka_unit_test(test_publish_missing_or_twice),
        cmocka_unit_test(test_publish_json_shape),
        cmocka_unit_test(test_publish_bad_bytes),
        cmocka_unit_test(test_publish_size),
        cmocka_unit_test(test_publish_channel),
        cmocka_unit_test(test_publish_idempotency_key),
        cmocka_unit_test(test_publish_batch),
        cmocka_unit_test(test_publish_failure_after_alloc),
        cmocka_unit_test(test_poll_defaults),
        cmocka_unit_test(test_poll_method),
        cmocka_unit_test(test_poll_since),
        cmocka_unit_test(test_poll_timeout),
        cmocka_unit_test(test_poll_timeout_repeated_above_cap),
        cmocka_unit_test(test_poll_epoch_channel),
        cmocka_unit_test(test_poll_channel_lists),
        cmocka_unit_test(test_poll_empty_channel_allowed),
        cmocka_unit_test(test_poll_event_stream),
        cmocka_unit_test(test_poll_last_event_id),
        cmocka_unit_test(test_publish_auth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
