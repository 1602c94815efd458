/* test_ws_handshake.c - cmocka tests for the WebSocket upgrade request parser
 * and the handshake response builders.
 *
 * Requests are built in memory and parsed from exact-size heap copies, so
 * that ASan catches any read past the end. No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws_handshake.h"

#define MAX_HEAD 8192

/* The RFC 6455 section 1.3 request, with X-Forwarded-For and X-Real-IP as
 * the proxy in front of the relay adds them. */
static const char rfc_request[] = "GET /chat?room=1&x=2 HTTP/1.1\r\n"
                                  "Host: server.example.com\r\n"
                                  "Upgrade: websocket\r\n"
                                  "Connection: Upgrade\r\n"
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                  "Origin: http://example.com\r\n"
                                  "Sec-WebSocket-Protocol: chat, superchat\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"
                                  "X-Real-IP: 192.0.2.7\r\n"
                                  "\r\n";

/* Parse s[0..len) from an exact-size heap copy. */
static int parse_n(const char *s, size_t len, size_t max_head, ws_request *req)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, s, len);
    int st = ws_handshake_parse(copy, len, max_head, req);
    free(copy);
    return st;
}

static int parse(const char *s)
{
    ws_request req;
    return parse_n(s, strlen(s), MAX_HEAD, &req);
}

static bool slice_is(ws_slice s, const char *want)
{
    return s.p && s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

/* A request with the four mandatory headers replaced or removed: each
 * argument is a whole header line (without CRLF), or "" to leave it out. */
static char req_buf[4096];
static const char *request(const char *line1, const char *host, const char *upgrade,
                           const char *connection, const char *key, const char *version,
                           const char *extra)
{
    size_t n = 0;
    const char *parts[] = {line1, host, upgrade, connection, key, version, extra};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (!parts[i][0])
            continue;
        int k = snprintf(req_buf + n, sizeof req_buf - n, "%s\r\n", parts[i]);
        assert_true(k > 0 && (size_t)k < sizeof req_buf - n);
        n += (size_t)k;
    }
    assert_true(n + 3 <= sizeof req_buf);
    memcpy(req_buf + n, "\r\n", 3);
    return req_buf;
}

#define L1   "GET /ws HTTP/1.1"
#define HOST "Host: relay.example"
#define UPG  "Upgrade: websocket"
#define CONN "Connection: Upgrade"
#define KEY  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
#define VER  "Sec-WebSocket-Version: 13"

static void test_rfc_example(void **state)
{
    ws_request req;
    char accept[WS_ACCEPT_LEN + 1];
    size_t n = strlen(rfc_request);
    (void)state;

    assert_int_equal(parse_n(rfc_request, n, MAX_HEAD, &req), WS_HS_OK);
    /* The slices point into the (freed) copy; parse again in place. */
    assert_int_equal(ws_handshake_parse(rfc_request, n, MAX_HEAD, &req), WS_HS_OK);
    assert_int_equal(req.head_len, n);
    assert_true(slice_is(req.method, "GET"));
    assert_true(slice_is(req.target, "/chat?room=1&x=2"));
    assert_true(slice_is(req.path, "/chat"));
    assert_true(slice_is(req.query, "room=1&x=2"));
    assert_true(slice_is(req.host, "server.example.com"));
    assert_true(slice_is(req.origin, "http://example.com"));
    assert_true(slice_is(req.key, "dGhlIHNhbXBsZSBub25jZQ=="));
    assert_true(slice_is(req.version, "13"));
    assert_true(slice_is(req.forwarded_for, "10.0.0.1, 192.0.2.7"));
    assert_true(slice_is(req.real_ip, "192.0.2.7"));

    assert_int_equal(ws_handshake_accept_key(req.key.p, req.key.len, accept), WS_ACCEPT_LEN);
    assert_string_equal(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_minimal_request(void **state)
{
    ws_request req;
    const char *s = request(L1, HOST, UPG, CONN, KEY, VER, "");
    (void)state;
    assert_int_equal(ws_handshake_parse(s, strlen(s), MAX_HEAD, &req), WS_HS_OK);
    assert_true(slice_is(req.path, "/ws"));
    assert_null(req.query.p);
    assert_null(req.origin.p);
    assert_null(req.forwarded_for.p);
    assert_null(req.real_ip.p);

    /* An empty query is present but empty. */
    s = request("GET /ws? HTTP/1.1", HOST, UPG, CONN, KEY, VER, "Origin:");
    assert_int_equal(ws_handshake_parse(s, strlen(s), MAX_HEAD, &req), WS_HS_OK);
    assert_non_null(req.query.p);
    assert_int_equal(req.query.len, 0);
    assert_non_null(req.origin.p);
    assert_int_equal(req.origin.len, 0);
}

static void test_byte_by_byte(void **state)
{
    ws_request req;
    size_t n = strlen(rfc_request);
    (void)state;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(parse_n(rfc_request, i, MAX_HEAD, &req), WS_HS_PARTIAL);
    assert_int_equal(parse_n(rfc_request, n, MAX_HEAD, &req), WS_HS_OK);
    assert_int_equal(req.head_len, n);
}

static void test_bytes_after_head(void **state)
{
    char buf[1024];
    ws_request req;
    size_t n = strlen(rfc_request);
    (void)state;
    memcpy(buf, rfc_request, n);
    /* A masked close frame right behind the head belongs to the stream. */
    memcpy(buf + n, "\x88\x80\x01\x02\x03\x04", 6);
    assert_int_equal(parse_n(buf, n + 6, MAX_HEAD, &req), WS_HS_OK);
    assert_int_equal(req.head_len, n);
    /* Even a second head does not confuse it. */
    memcpy(buf + n, rfc_request, n);
    assert_int_equal(parse_n(buf, 2 * n, MAX_HEAD, &req), WS_HS_OK);
    assert_int_equal(req.head_len, n);
}

static void test_method(void **state)
{
    (void)state;
    assert_int_equal(parse(request("POST /ws HTTP/1.1", HOST, UPG, CONN, KEY, VER, "")), 405);
    assert_int_equal(parse(request("get /ws HTTP/1.1", HOST, UPG, CONN, KEY, VER, "")), 405);
    assert_int_equal(parse(request("HEAD /ws HTTP/1.1", HOST, UPG, CONN, KEY, VER, "")), 405);
    assert_int_equal(parse(request("GETX /ws HTTP/1.1", HOST, UPG, CONN, KEY, VER, "")), 405);
    assert_int_equal(parse(request("G(T /ws HTTP/1.1", HOST, UPG, CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(" GET /ws HTTP/1.1", HOST, UPG, CONN, KEY, VER, "")), 400);
}

static void test_request_line(void **state)
{
    static const char *const bad[] = {
        "GET /ws HTTP/1.0",
        "GET /ws HTTP/0.9",
        "GET /ws HTTP/1.",
        "GET /ws HTTP/1.1 ",
        "GET /ws HTTP/11",
        "GET /ws http/1.1",
        "GET /ws",
        "GET  /ws HTTP/1.1",
        "GET ws HTTP/1.1",
        "GET * HTTP/1.1",
        "GET http://h/ws HTTP/1.1",
        "GET /w#s HTTP/1.1",
        "GET /w\x7fs HTTP/1.1",
        "GET /\xc3\xa9 HTTP/1.1",
        "GET /ws HTTP/1.1x",
        "GET",
        "",
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *s = request(bad[i], HOST, UPG, CONN, KEY, VER, "");
        if (parse(s) != 400)
            fail_msg("request line \"%s\" got %d", bad[i], parse(s));
    }
    assert_int_equal(parse(request("GET /ws HTTP/1.2", HOST, UPG, CONN, KEY, VER, "")), WS_HS_OK);
    assert_int_equal(parse(request("GET /ws HTTP/2.0", HOST, UPG, CONN, KEY, VER, "")), WS_HS_OK);
}

static void test_host(void **state)
{
    (void)state;
    assert_int_equal(parse(request(L1, "", UPG, CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(L1, "Host:", UPG, CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(L1, "Host: a b", UPG, CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, VER, "Host: other")), 400);
    assert_int_equal(parse(request(L1, "host:relay:8080", UPG, CONN, KEY, VER, "")), WS_HS_OK);
}

static void test_upgrade_header(void **state)
{
    (void)state;
    assert_int_equal(parse(request(L1, HOST, "", CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(L1, HOST, "Upgrade: h2c", CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(L1, HOST, "Upgrade: websockets", CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(L1, HOST, "Upgrade:", CONN, KEY, VER, "")), 400);
    assert_int_equal(parse(request(L1, HOST, "Upgrade: WebSocket", CONN, KEY, VER, "")), WS_HS_OK);
    assert_int_equal(parse(request(L1, HOST, "Upgrade: h2c, websocket", CONN, KEY, VER, "")),
                     WS_HS_OK);
    assert_int_equal(parse(request(L1, HOST, "Upgrade: h2c", CONN, KEY, VER, "Upgrade: websocket")),
                     WS_HS_OK);
}

static void test_connection_tokens(void **state)
{
    static const char *const ok[] = {
        "Connection: Upgrade",
        "Connection: upgrade",
        "Connection: UPGRADE",
        "Connection: keep-alive, Upgrade",
        "Connection: Upgrade,keep-alive",
        "Connection:\tkeep-alive ,\t upgrade \t",
        "Connection: close,,Upgrade,",
    };
    static const char *const bad[] = {
        "",
        "Connection: keep-alive",
        "Connection: Upgraded",
        "Connection: keep-alive Upgrade",
        "Connection: Up grade",
        "Connection:",
    };
    (void)state;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        if (parse(request(L1, HOST, UPG, ok[i], KEY, VER, "")) != WS_HS_OK)
            fail_msg("refused \"%s\"", ok[i]);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse(request(L1, HOST, UPG, bad[i], KEY, VER, "")) != 400)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    /* Split over two Connection headers. */
    assert_int_equal(
        parse(request(L1, HOST, UPG, "Connection: keep-alive", KEY, VER, "Connection: Upgrade")),
        WS_HS_OK);
}

static void test_header_name_case(void **state)
{
    ws_request req;
    const char *s =
        request(L1, "hOST: relay.example", "UPGRADE: websocket", "connection: Upgrade",
                "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", "SEC-WEBSOCKET-VERSION:13",
                "oRiGiN:   https://a.example  ");
    (void)state;
    assert_int_equal(ws_handshake_parse(s, strlen(s), MAX_HEAD, &req), WS_HS_OK);
    assert_true(slice_is(req.origin, "https://a.example"));
    assert_true(slice_is(req.version, "13"));
}

static void test_key(void **state)
{
    static const char *const bad[] = {
        "",
        "Sec-WebSocket-Key:",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=",   /* 23 chars */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ===", /* 25 chars */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ===",  /* 15 bytes */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQQ=",  /* 17 bytes */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==",  /* non-canonical */
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ-==",  /* base64url */
        "Sec-WebSocket-Key: dGhlIHNhbX BzZSBub25jZQ==",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA",
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse(request(L1, HOST, UPG, CONN, bad[i], VER, "")) != 400)
            fail_msg("accepted key \"%s\"", bad[i]);
    }
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, VER, KEY)), 400);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, VER,
                                   "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==")),
                     400);
    assert_int_equal(
        parse(request(L1, HOST, UPG, CONN, "Sec-WebSocket-Key: +/+/+/+/+/+/+/+/+/+/+w==", VER, "")),
        WS_HS_OK);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN,
                                   "Sec-WebSocket-Key:  AAAAAAAAAAAAAAAAAAAAAA== ", VER, "")),
                     WS_HS_OK);
}

static void test_version(void **state)
{
    (void)state;
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, "", "")), 426);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, "Sec-WebSocket-Version: 8", "")), 426);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, "Sec-WebSocket-Version: 130", "")),
                     426);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, "Sec-WebSocket-Version: 13, 8", "")),
                     426);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, "Sec-WebSocket-Version:", "")), 426);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, "Sec-WebSocket-Version: 13 ", "")),
                     WS_HS_OK);
    /* Repeated: ambiguous, so a bad request rather than a version problem. */
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, VER, VER)), 400);
}

static void test_header_syntax(void **state)
{
    static const char *const bad[] = {
        "X-Folded: a\r\n b",  /* obs-fold */
        "X-Folded: a\r\n\tb", /* obs-fold with a tab */
        " X-Leading: space",  /* also obs-fold */
        "X-Space : before colon",
        "X-No-Colon",
        ": no name",
        "X(Bad): name",
        "X-Nul: a\x01z",
        "X-Del: a\x7fz",
        "X-Bare-CR: a\rb",
        "X-Bare-LF: a\nb",
        "Transfer-Encoding: chunked",
        "Content-Length: 5",
        "Content-Length: 00",
        "Origin: https://a.example\r\nOrigin: https://b.example",
        "X-Real-IP: 1.2.3.4\r\nX-Real-IP: 5.6.7.8",
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse(request(L1, HOST, UPG, CONN, KEY, VER, bad[i])) != 400)
            fail_msg("accepted header \"%s\"", bad[i]);
    }
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, VER, "Content-Length: 0")), WS_HS_OK);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, VER, "X-Obs-Text: caf\xc3\xa9")),
                     WS_HS_OK);
    assert_int_equal(parse(request(L1, HOST, UPG, CONN, KEY, VER, "X-Empty:")), WS_HS_OK);
}

static void test_nul_in_header(void **state)
{
    char buf[512];
    ws_request req;
    const char *s = request(L1, HOST, UPG, CONN, KEY, VER, "X-Nul: a~z");
    size_t n = strlen(s);
    (void)state;
    memcpy(buf, s, n);
    *(char *)memchr(buf, '~', n) = '\0';
    assert_int_equal(parse_n(buf, n, MAX_HEAD, &req), 400);
}

static void test_line_endings(void **state)
{
    ws_request req;
    /* Bare LF line endings are refused, and as soon as one is seen. */
    static const char lf[] = "GET /ws HTTP/1.1\nHost: a\n\n";
    (void)state;
    assert_int_equal(parse(lf), 400);
    assert_int_equal(parse_n(lf, 17, MAX_HEAD, &req), 400);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\nHost: a\n\r\n"), 400);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\n\n"), 400);
    assert_int_equal(parse("GET /ws HTTP/1.1\r\r\n\r\n"), 400);
    /* A lone CR at the end may still be followed by LF. */
    assert_int_equal(parse_n("GET /ws HTTP/1.1\r", 17, MAX_HEAD, &req), WS_HS_PARTIAL);
    /* An empty line first ends an empty head. */
    assert_int_equal(parse("\r\n"), 400);
    assert_int_equal(parse("\r\nGET /ws HTTP/1.1\r\n\r\n"), 400);
}

static void test_oversized_head(void **state)
{
    ws_request req;
    char big[600];
    const char *s = request(L1, HOST, UPG, CONN, KEY, VER, "");
    size_t n = strlen(s);
    (void)state;

    /* The head exactly fills max_head: accepted. */
    assert_int_equal(parse_n(s, n, n, &req), WS_HS_OK);
    /* One byte short of room for the end. */
    assert_int_equal(parse_n(s, n, n - 1, &req), 431);
    assert_int_equal(parse_n(s, n - 1, n - 1, &req), 431);
    assert_int_equal(parse_n(s, n - 2, n - 1, &req), WS_HS_PARTIAL);
    /* Lots of bytes, no end. */
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5);
    assert_int_equal(parse_n(big, sizeof big, 512, &req), 431);
    assert_int_equal(parse_n(big, 511, 512, &req), WS_HS_PARTIAL);
    assert_int_equal(parse_n(big, 0, 512, &req), WS_HS_PARTIAL);
    assert_int_equal(ws_handshake_parse(NULL, 0, 512, &req), WS_HS_PARTIAL);
    assert_int_equal(parse_n(big, 0, 0, &req), 431);
}

static void test_accept_key(void **state)
{
    char out[WS_ACCEPT_LEN + 1];
    char long_key[65];
    (void)state;
    assert_int_equal(ws_handshake_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), WS_ACCEPT_LEN);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* Only key_len bytes count. */
    assert_int_equal(ws_handshake_accept_key("dGhlIHNhbXBsZSBub25jZQ==trailing", 24, out),
                     WS_ACCEPT_LEN);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* SHA-1 of the GUID alone, base64. */
    assert_int_equal(ws_handshake_accept_key("", 0, out), WS_ACCEPT_LEN);
    assert_int_equal(strlen(out), WS_ACCEPT_LEN);
    memset(long_key, 'A', sizeof long_key);
    assert_int_equal(ws_handshake_accept_key(long_key, 64, out), WS_ACCEPT_LEN);
    assert_int_equal(ws_handshake_accept_key(long_key, 65, out), 0);
    assert_string_equal(out, "");
}

static void test_response_101(void **state)
{
    char out[256];
    static const char want[] = "HTTP/1.1 101 Switching Protocols\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                               "\r\n";
    (void)state;
    size_t n = ws_handshake_response_101(out, sizeof out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(n, sizeof want - 1);
    assert_string_equal(out, want);
    assert_int_equal(ws_handshake_response_101(out, sizeof want, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                     sizeof want - 1);
    assert_int_equal(
        ws_handshake_response_101(out, sizeof want - 1, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), 0);
    assert_true(sizeof want <= 160);
}

/* Check the shape of a refusal: status line, headers, a JSON body whose
 * length matches Content-Length. */
static void check_error(int status, const char *status_line, const char *body, const char *extra)
{
    char out[256];
    size_t n = ws_handshake_response_error(out, sizeof out, status);
    char cl[64];

    assert_true(n > 0);
    assert_int_equal(strlen(out), n);
    assert_true(strncmp(out, status_line, strlen(status_line)) == 0);
    assert_non_null(strstr(out, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(out, "\r\nConnection: close\r\n"));
    const char *sep = strstr(out, "\r\n\r\n");
    assert_non_null(sep);
    assert_string_equal(sep + 4, body);
    snprintf(cl, sizeof cl, "\r\nContent-Length: %zu\r\n", strlen(body));
    assert_non_null(strstr(out, cl));
    if (extra)
        assert_non_null(strstr(out, extra));
    /* Too small a buffer: nothing usable. */
    assert_int_equal(ws_handshake_response_error(out, n, status), 0);
    assert_int_equal(ws_handshake_response_error(out, n + 1, status), n);
    assert_int_equal(ws_handshake_response_error(NULL, 0, status), 0);
}

static void test_response_error(void **state)
{
    (void)state;
    check_error(400, "HTTP/1.1 400 Bad Request\r\n", "{\"error\":\"bad_request\"}", NULL);
    check_error(403, "HTTP/1.1 403 Forbidden\r\n", "{\"error\":\"forbidden\"}", NULL);
    check_error(405, "HTTP/1.1 405 Method Not Allowed\r\n", "{\"error\":\"method_not_allowed\"}",
                "\r\nAllow: GET\r\n");
    check_error(426, "HTTP/1.1 426 Upgrade Required\r\n", "{\"error\":\"upgrade_required\"}",
                "\r\nSec-WebSocket-Version: 13\r\n");
    check_error(426, "HTTP/1.1 426 ", "{\"error\":\"upgrade_required\"}",
                "\r\nUpgrade: websocket\r\n");
    check_error(431, "HTTP/1.1 431 Request Header Fields Too Large\r\n",
                "{\"error\":\"headers_too_large\"}", NULL);
    check_error(503, "HTTP/1.1 503 Service Unavailable\r\n", "{\"error\":\"unavailable\"}",
                "\r\nRetry-After: ");
    check_error(418, "HTTP/1.1 500 Internal Server Error\r\n", "{\"error\":\"internal_error\"}",
                NULL);
    check_error(0, "HTTP/1.1 500 ", "{\"error\":\"internal_error\"}", NULL);
}

/* What parse returns should be answered with a complete response. */
static void test_every_status_has_a_response(void **state)
{
    static const int st[] = {400, 405, 426, 431};
    char out[256];
    (void)state;
    for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
        char line[32];
        snprintf(line, sizeof line, "HTTP/1.1 %d ", st[i]);
        assert_true(ws_handshake_response_error(out, sizeof out, st[i]) > 0);
        assert_true(strncmp(out, line, strlen(line)) == 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_example),
        cmocka_unit_test(test_minimal_request),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_bytes_after_head),
        cmocka_unit_test(test_method),
        cmocka_unit_test(test_request_line),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_upgrade_header),
        cmocka_unit_test(test_connection_tokens),
        cmocka_unit_test(test_header_name_case),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_header_syntax),
        cmocka_unit_test(test_nul_in_header),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_oversized_head),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_response_101),
        cmocka_unit_test(test_response_error),
        cmocka_unit_test(test_every_status_has_a_response),
    };
    return cmocka_run_group_tests_name("ws_handshake", tests, NULL, NULL);
}
