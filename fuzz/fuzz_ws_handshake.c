/* fuzz_ws_handshake.c - libFuzzer target for the upgrade request parser and
 * the response builders (src/ws_handshake.c).
 *
 * No I/O: besides memory safety it checks the parser's promises (statuses,
 * slices inside the head, prefixes of a good head being partial) and aborts
 * when one breaks, so that libFuzzer keeps the input.
 *
 * Input: byte 0 picks max_head, the rest is what the client sent.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws_handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_slice(ws_slice s, const char *buf, size_t head_len)
{
    if (!s.p) {
        CHECK(s.len == 0);
        return;
    }
    CHECK(s.p >= buf && s.len <= head_len && (size_t)(s.p - buf) <= head_len - s.len);
}

/* Parse buf[0..len) from an exact-size copy, so that ASan sees any read
 * past len. */
static int parse_copy(const char *buf, size_t len, size_t max_head, ws_request *req)
{
    char *c = malloc(len ? len : 1);
    CHECK(c != NULL);
    memcpy(c, buf, len);
    int st = ws_handshake_parse(c, len, max_head, req);
    free(c);
    return st;
}

static void check_ok(const char *buf, size_t len, size_t max_head, const ws_request *req)
{
    char accept[WS_ACCEPT_LEN + 1], resp[160];
    ws_request again;
    size_t h = req->head_len;

    CHECK(h >= 4 && h <= len && h <= max_head);
    CHECK(memcmp(buf + h - 4, "\r\n\r\n", 4) == 0);
    check_slice(req->method, buf, h);
    check_slice(req->target, buf, h);
    check_slice(req->path, buf, h);
    check_slice(req->query, buf, h);
    check_slice(req->host, buf, h);
    check_slice(req->origin, buf, h);
    check_slice(req->key, buf, h);
    check_slice(req->version, buf, h);
    check_slice(req->forwarded_for, buf, h);
    check_slice(req->real_ip, buf, h);
    CHECK(req->method.len == 3 && memcmp(req->method.p, "GET", 3) == 0);
    CHECK(req->target.len >= 1 && req->target.p[0] == '/');
    CHECK(req->host.p && req->host.len > 0);
    CHECK(req->key.len == WS_KEY_LEN);
    CHECK(req->version.len == 2 && memcmp(req->version.p, "13", 2) == 0);

    CHECK(ws_handshake_accept_key(req->key.p, req->key.len, accept) == WS_ACCEPT_LEN);
    CHECK(strlen(accept) == WS_ACCEPT_LEN);
    size_t n = ws_handshake_response_101(resp, sizeof resp, accept);
    CHECK(n > 0 && n < sizeof resp && strlen(resp) == n);

    /* Only the head matters: the head alone, with exactly enough room,
     * parses the same; one byte less is not yet a head. */
    CHECK(parse_copy(buf, h, h, &again) == WS_HS_OK && again.head_len == h);
    CHECK(parse_copy(buf, h - 1, max_head, &again) == WS_HS_PARTIAL);
    CHECK(parse_copy(buf, h, h - 1, &again) == 431);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ws_request req;
    char resp[256];

    if (size < 1)
        return 0;
    size_t max_head = 16 + (size_t)data[0] * 32;
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;

    int st = ws_handshake_parse(buf, len, max_head, &req);
    switch (st) {
    case WS_HS_OK:
        check_ok(buf, len, max_head, &req);
        break;
    case WS_HS_PARTIAL:
        CHECK(len < max_head);
        break;
    case 431:
        CHECK(len >= max_head);
        break;
    case 400:
    case 405:
    case 426:
        break;
    default:
        CHECK(0);
    }
    if (st != WS_HS_OK && st != WS_HS_PARTIAL) {
        size_t n = ws_handshake_response_error(resp, sizeof resp, st);
        CHECK(n > 0 && strlen(resp) == n);
    }
    return 0;
}
