/* fuzz_ws_frame.c - libFuzzer target for the RFC 6455 frame parser and
 * encoders (src/ws_frame.c).
 *
 * No I/O: besides memory safety it checks that any chunking of the input
 * gives the same events, and that the encoders' output parses back. It
 * aborts on a mismatch so that libFuzzer keeps the input.
 *
 * Input: byte 0 picks max_message, byte 1 the chunking, the rest is the
 * client byte stream.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"
#include "ws_frame.h"

/* Everything outside the chunk being fed is poisoned, so ASan reports any
 * read past it without a malloc per chunk (which filled ASan's quarantine
 * and slowed the run). Granules are 8 bytes: a read past a chunk's end is
 * always caught, one just before its start only across a granule edge. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   __asan_poison_memory_region((p), (n))
#define UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#endif
#endif
#ifndef POISON
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A digest of everything a run reported, so runs can be compared without
 * storing their events. */
typedef struct run_result {
    uint64_t hash;
    size_t events;
    size_t consumed;
    int last;
} run_result;

static void mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ b[i]) * 0x100000001b3ULL;
}

static void check_event(const ws_event *ev)
{
    switch (ev->type) {
    case WS_EV_PING:
    case WS_EV_PONG:
        CHECK(ev->payload != NULL && ev->payload_len <= WS_CONTROL_MAX);
        break;
    case WS_EV_CLOSE:
        CHECK(ev->payload != NULL && ev->payload_len <= WS_CLOSE_REASON_MAX);
        CHECK(utf8_valid(ev->payload, ev->payload_len));
        CHECK(ev->code == 1005 || (ev->code >= 1000 && ev->code <= 4999));
        break;
    case WS_EV_MESSAGE:
        CHECK(ev->opcode == WS_OP_TEXT || ev->opcode == WS_OP_BINARY);
        break;
    case WS_EV_ERROR:
        CHECK(ev->reason != NULL);
        CHECK(ev->code == 1002 || ev->code == 1007 || ev->code == 1009);
        break;
    default:
        CHECK(0);
    }
}

/* Feed buf in chunks: chunk 0 means all at once, else sizes drawn from
 * 1..chunk with a small generator seeded by seed. The bytes are fed from an
 * exact-size copy in which only the current chunk is readable. */
static run_result run(const uint8_t *buf, size_t len, uint64_t max, size_t chunk, unsigned seed)
{
    ws_parser p;
    run_result r = {0xcbf29ce484222325ULL, 0, 0, WS_EV_NONE};
    size_t off = 0;
    uint8_t *copy = malloc(len ? len : 1);

    CHECK(copy != NULL);
    memcpy(copy, buf, len);
    POISON(copy, len);
    ws_parser_init(&p, max);
    while (off < len) {
        size_t n = len - off;
        if (chunk) {
            seed = seed * 1103515245u + 12345u;
            size_t want = 1 + (seed >> 8) % chunk;
            if (want < n)
                n = want;
        }
        uint8_t *c = copy + off;
        size_t used = 0;
        bool terminal = false;
        UNPOISON(c, n);
        for (;;) {
            ws_event ev;
            size_t k = ws_parser_feed(&p, c + used, n - used, &ev);
            CHECK(k <= n - used);
            used += k;
            if (ev.type == WS_EV_NONE) {
                CHECK(used == n);
                break;
            }
            check_event(&ev);
            r.events++;
            r.last = ev.type;
            mix(&r.hash, &ev.type, sizeof ev.type);
            mix(&r.hash, &ev.code, sizeof ev.code);
            mix(&r.hash, &ev.opcode, sizeof ev.opcode);
            mix(&r.hash, &ev.message_len, sizeof ev.message_len);
            if (ev.payload)
                mix(&r.hash, ev.payload, ev.payload_len);
            if (ev.type == WS_EV_ERROR || ev.type == WS_EV_CLOSE) {
                ws_event again;
                CHECK(ws_parser_feed(&p, c, n, &again) == 0);
                CHECK(again.type == (ev.type == WS_EV_ERROR ? WS_EV_ERROR : WS_EV_CLOSED));
                CHECK(again.type != WS_EV_ERROR || again.code == ev.code);
                terminal = true;
                break;
            }
            if (used == n)
                break;
        }
        POISON(c, n);
        if (terminal) {
            r.consumed = off + used;
            UNPOISON(copy, len);
            free(copy);
            return r;
        }
        off += n;
    }
    r.consumed = off;
    UNPOISON(copy, len);
    free(copy);
    return r;
}

static void same(run_result a, run_result b)
{
    CHECK(a.hash == b.hash);
    CHECK(a.events == b.events);
    CHECK(a.last == b.last);
    /* After an error the count is only how far the parser looked, which
     * depends on how much it was handed at once. */
    if (a.last != WS_EV_ERROR)
        CHECK(a.consumed == b.consumed);
}

/* Encode a close frame from fuzzed code and reason, and check its layout. */
static void fuzz_close(const uint8_t *data, size_t size)
{
    uint8_t out[2 + 2 + WS_CLOSE_REASON_MAX];
    char reason[200];
    size_t rl = size < sizeof reason - 1 ? size : sizeof reason - 1;
    uint16_t code = size >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 1000;

    memcpy(reason, data, rl);
    reason[rl] = '\0';
    size_t n = ws_frame_close(out, code, reason);
    CHECK(n >= 2 && n <= sizeof out);
    CHECK(out[0] == 0x88 && out[1] == n - 2);
    if (code == 0) {
        CHECK(n == 2);
        return;
    }
    size_t given = strlen(reason);
    size_t kept = n - 4;
    CHECK(kept <= given && kept <= WS_CLOSE_REASON_MAX);
    CHECK(memcmp(out + 4, reason, kept) == 0);
    CHECK(kept == given || given > WS_CLOSE_REASON_MAX);
    if (utf8_valid((const uint8_t *)reason, given))
        CHECK(utf8_valid(out + 4, kept));
}

/* Encode a header for a fuzzed length and decode it again. */
static void fuzz_header(const uint8_t *data, size_t size)
{
    uint8_t out[WS_FRAME_HEADER_MAX];
    uint64_t len = 0;
    for (size_t i = 0; i < 8 && i < size; i++)
        len = len << 8 | data[i];
    unsigned op = size > 8 ? data[8] & 0x1F : WS_OP_BINARY;

    size_t n = ws_frame_header(out, op, size & 1, len);
    if (op > 15 || len >> 63) {
        CHECK(n == 0);
        return;
    }
    CHECK(n == ws_frame_header_len(len));
    CHECK((out[0] & 0x0F) == op && (out[0] & 0x70) == 0);
    CHECK((size_t) !!(out[0] & 0x80) == (size & 1));
    CHECK((out[1] & 0x80) == 0);
    uint64_t back = out[1];
    if (back == 126) {
        CHECK(n == 4);
        back = (uint64_t)out[2] << 8 | out[3];
        CHECK(back >= 126 && back <= 0xFFFF);
    } else if (back == 127) {
        CHECK(n == 10);
        back = 0;
        for (int i = 0; i < 8; i++)
            back = back << 8 | out[2 + i];
        CHECK(back > 0xFFFF);
    } else {
        CHECK(n == 2);
    }
    CHECK(back == len);
}

/* Encode a control frame from fuzzed bytes; a ping or pong must parse back
 * to the same payload once masked as a client would send it. */
static void fuzz_control(const uint8_t *data, size_t size)
{
    uint8_t out[2 + WS_CONTROL_MAX], client[2 + 4 + WS_CONTROL_MAX];
    unsigned op = size ? data[0] & 0x0F : WS_OP_PING;
    size_t len = size > 1 ? size - 1 : 0;
    const uint8_t *pay = data + (size ? 1 : 0);

    size_t n = ws_frame_control(out, op, pay, len);
    if (op < WS_OP_CLOSE || op > WS_OP_PONG || len > WS_CONTROL_MAX) {
        CHECK(n == 0);
        return;
    }
    CHECK(n == 2 + len && out[0] == (0x80 | op) && out[1] == len);
    CHECK(len == 0 || memcmp(out + 2, pay, len) == 0);
    if (op == WS_OP_CLOSE)
        return;

    static const uint8_t key[4] = {0xA5, 0x0F, 0x3C, 0x81};
    ws_parser p;
    ws_event ev;
    client[0] = out[0];
    client[1] = (uint8_t)(0x80 | len);
    memcpy(client + 2, key, 4);
    for (size_t i = 0; i < len; i++)
        client[6 + i] = out[2 + i] ^ key[i & 3];
    ws_parser_init(&p, 0);
    CHECK(ws_parser_feed(&p, client, 6 + len, &ev) == 6 + len);
    CHECK(ev.type == (op == WS_OP_PING ? WS_EV_PING : WS_EV_PONG));
    CHECK(ev.payload_len == len && (len == 0 || memcmp(ev.payload, pay, len) == 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t chunks[] = {1, 2, 3, 5, 7, 16, 64, 300, 4096};

    if (size < 2)
        return 0;
    uint64_t max = data[0] < 0x80 ? 0 : (uint64_t)(data[0] & 0x7F) * 8;
    size_t chunk = chunks[data[1] % (sizeof chunks / sizeof chunks[0])];
    unsigned seed = data[1];
    const uint8_t *buf = data + 2;
    size_t len = size - 2;

    run_result whole = run(buf, len, max, 0, 0);
    same(whole, run(buf, len, max, 1, 0));
    same(whole, run(buf, len, max, chunk, seed));

    fuzz_close(buf, len);
    fuzz_header(buf, len);
    fuzz_control(buf, len);
    return 0;
}
