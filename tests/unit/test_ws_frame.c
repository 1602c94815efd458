/* test_ws_frame.c - cmocka tests for the RFC 6455 frame parser and encoders.
 *
 * Every parser case is fed whole, split in two at every byte position, and
 * one byte at a time, and must give the same events each way. No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "ws_frame.h"
#include "utf8.h"

/* ---- building client frames ---- */

/* Large enough for a 64-bit-length frame of 65536 bytes plus a few more. */
static uint8_t wire[140000];
static size_t wire_len;
static unsigned mask_seed;

static void put_raw(const void *p, size_t n)
{
    assert_true(wire_len + n <= sizeof wire);
    memcpy(wire + wire_len, p, n);
    wire_len += n;
}

enum { LEN_MIN = 0, LEN_16 = 16, LEN_64 = 64 };

/* Append one client frame. rsv is the three RSV bits (0..7); lenform forces
 * a 16- or 64-bit length encoding; every frame gets a different mask key so
 * that unmasking with a stale key would show. */
static void put_frame_ex(bool fin, unsigned rsv, unsigned opcode, const void *payload, size_t len,
                         int lenform, bool masked)
{
    uint8_t h[14], key[4];
    size_t n = 0;
    const uint8_t *src = payload;

    h[n++] = (uint8_t)((fin ? 0x80 : 0) | (rsv << 4) | opcode);
    uint8_t mbit = masked ? 0x80 : 0;
    if (lenform == LEN_64 || (lenform == LEN_MIN && len > 0xFFFF)) {
        h[n++] = mbit | 127;
        for (int i = 0; i < 8; i++)
            h[n++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    } else if (lenform == LEN_16 || len > 125) {
        h[n++] = mbit | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = mbit | (uint8_t)len;
    }
    mask_seed = mask_seed * 1103515245u + 12345u;
    for (int i = 0; i < 4; i++)
        key[i] = (uint8_t)(mask_seed >> (8 * i + 3));
    if (masked) {
        memcpy(h + n, key, 4);
        n += 4;
    }
    put_raw(h, n);
    assert_true(wire_len + len <= sizeof wire);
    for (size_t i = 0; i < len; i++)
        wire[wire_len + i] = masked ? src[i] ^ key[i & 3] : src[i];
    wire_len += len;
}

static void put_frame(bool fin, unsigned opcode, const void *payload, size_t len)
{
    put_frame_ex(fin, 0, opcode, payload, len, LEN_MIN, true);
}

static void put_str(bool fin, unsigned opcode, const char *s)
{
    put_frame(fin, opcode, s, strlen(s));
}

static void put_close(uint16_t code, const char *reason)
{
    uint8_t b[2 + 200];
    size_t n = strlen(reason);
    b[0] = (uint8_t)(code >> 8);
    b[1] = (uint8_t)code;
    memcpy(b + 2, reason, n);
    put_frame(true, WS_OP_CLOSE, b, 2 + n);
}

/* ---- running the parser and comparing events ---- */

typedef struct rec_ev {
    ws_event_type type;
    uint8_t opcode;
    uint16_t code;
    uint64_t message_len;
    size_t payload_len;
    uint8_t payload[WS_CONTROL_MAX];
} rec_ev;

typedef struct rec {
    rec_ev ev[32];
    size_t n;
    bool done;  /* a terminal event (ERROR or CLOSE) was seen */
    size_t fed; /* bytes the parser consumed in total */
} rec;

/* What a test expects: pay is the payload (PING/PONG) or reason (CLOSE). */
typedef struct exp_ev {
    ws_event_type type;
    uint8_t opcode;
    uint16_t code;
    uint64_t message_len;
    const char *pay;
    size_t pay_len;
} exp_ev;

/* Table-like macros: kept on one line each. */
/* clang-format off */
#define E_MSG(op, n)          {WS_EV_MESSAGE, (op), 0, (n), NULL, 0}
#define E_TEXT(n)             E_MSG(WS_OP_TEXT, n)
#define E_BIN(n)              E_MSG(WS_OP_BINARY, n)
#define E_PING(s)             {WS_EV_PING, 0, 0, 0, (s), sizeof(s) - 1}
#define E_PONG(s)             {WS_EV_PONG, 0, 0, 0, (s), sizeof(s) - 1}
#define E_CLOSE(c, s)         {WS_EV_CLOSE, 0, (c), 0, (s), sizeof(s) - 1}
#define E_ERR(c)              {WS_EV_ERROR, 0, (c), 0, NULL, 0}
#define EXPECT(max, ...)      expect_events((max), (const exp_ev[]){__VA_ARGS__}, \
                                            sizeof((const exp_ev[]){__VA_ARGS__}) / sizeof(exp_ev))
/* clang-format on */

/* Feed buf[0..n) to p, recording events, as a network loop would. */
static void feed_chunk(ws_parser *p, const uint8_t *buf, size_t n, rec *r)
{
    size_t off = 0;

    while (off < n && !r->done) {
        ws_event ev;
        size_t k = ws_parser_feed(p, buf + off, n - off, &ev);
        assert_true(k <= n - off);
        off += k;
        r->fed += k;
        if (ev.type == WS_EV_NONE) {
            assert_int_equal(off, n);
            break;
        }
        assert_true(r->n < sizeof r->ev / sizeof r->ev[0]);
        rec_ev *e = &r->ev[r->n++];
        memset(e, 0, sizeof *e);
        e->type = ev.type;
        e->opcode = ev.opcode;
        e->code = ev.code;
        e->message_len = ev.message_len;
        switch (ev.type) {
        case WS_EV_PING:
        case WS_EV_PONG:
        case WS_EV_CLOSE:
            assert_non_null(ev.payload);
            assert_true(ev.payload_len <= WS_CONTROL_MAX);
            e->payload_len = ev.payload_len;
            memcpy(e->payload, ev.payload, ev.payload_len);
            break;
        case WS_EV_ERROR:
            assert_non_null(ev.reason);
            assert_true(ev.code == 1002 || ev.code == 1007 || ev.code == 1009);
            break;
        case WS_EV_MESSAGE:
            assert_true(ev.opcode == WS_OP_TEXT || ev.opcode == WS_OP_BINARY);
            break;
        default:
            fail_msg("unexpected event %d", (int)ev.type);
        }
        if (ev.type == WS_EV_ERROR || ev.type == WS_EV_CLOSE) {
            /* Terminal: later calls consume nothing and say so. */
            ws_event again;
            size_t k2 = ws_parser_feed(p, wire, wire_len, &again);
            assert_int_equal(k2, 0);
            if (ev.type == WS_EV_ERROR) {
                assert_int_equal(again.type, WS_EV_ERROR);
                assert_int_equal(again.code, ev.code);
                assert_ptr_equal(again.reason, ev.reason);
            } else {
                assert_int_equal(again.type, WS_EV_CLOSED);
            }
            r->done = true;
        }
    }
}

static void compare(const rec *r, const exp_ev *e, size_t ne, const char *mode, size_t at)
{
    if (r->n != ne)
        fail_msg("%s (split %zu): %zu events, expected %zu (first type %d)", mode, at, r->n, ne,
                 r->n ? (int)r->ev[0].type : -1);
    for (size_t i = 0; i < ne; i++) {
        const rec_ev *g = &r->ev[i];
        if (g->type != e[i].type)
            fail_msg("%s (split %zu): event %zu type %d, expected %d (code %u)", mode, at, i,
                     (int)g->type, (int)e[i].type, g->code);
        switch (g->type) {
        case WS_EV_MESSAGE:
            assert_int_equal(g->opcode, e[i].opcode);
            assert_int_equal(g->message_len, e[i].message_len);
            break;
        case WS_EV_ERROR:
            if (g->code != e[i].code)
                fail_msg("%s (split %zu): error code %u, expected %u", mode, at, g->code,
                         e[i].code);
            break;
        case WS_EV_CLOSE:
            assert_int_equal(g->code, e[i].code);
            /* fall through */
        default:
            assert_int_equal(g->payload_len, e[i].pay_len);
            if (e[i].pay_len)
                assert_memory_equal(g->payload, e[i].pay, e[i].pay_len);
            break;
        }
    }
    /* Without a terminal event, every byte must have been consumed. */
    if (!r->done)
        assert_int_equal(r->fed, wire_len);
}

static void run_split(uint64_t max, size_t at, rec *r)
{
    ws_parser p;
    ws_parser_init(&p, max);
    memset(r, 0, sizeof *r);
    feed_chunk(&p, wire, at, r);
    feed_chunk(&p, wire + at, wire_len - at, r);
}

/* Run wire[0..wire_len) whole, split at every position (a sample of them
 * for long inputs), and one byte at a time; each must give exactly e[]. */
static void expect_events(uint64_t max, const exp_ev *e, size_t ne)
{
    static rec r;
    ws_parser p;

    run_split(max, wire_len, &r);
    compare(&r, e, ne, "whole", wire_len);

    for (size_t at = 1; at < wire_len; at++) {
        if (wire_len > 2048 && at > 300 && at + 300 < wire_len && at % 997 != 0)
            continue;
        run_split(max, at, &r);
        compare(&r, e, ne, "split", at);
    }

    ws_parser_init(&p, max);
    memset(&r, 0, sizeof r);
    for (size_t i = 0; i < wire_len && !r.done; i++)
        feed_chunk(&p, wire + i, 1, &r);
    compare(&r, e, ne, "bytewise", 1);

    wire_len = 0;
}

static int setup(void **state)
{
    (void)state;
    wire_len = 0;
    mask_seed = 1;
    return 0;
}

/* ---- basic frames ---- */

static void test_rfc_example_hello(void **state)
{
    /* RFC 6455 section 5.7: a single-frame masked text message "Hello". */
    static const uint8_t hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                    0x7f, 0x9f, 0x4d, 0x51, 0x58};
    (void)state;
    put_raw(hello, sizeof hello);
    EXPECT(0, E_TEXT(5));
}

static void test_zero_filled_parser(void **state)
{
    static const uint8_t hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                    0x7f, 0x9f, 0x4d, 0x51, 0x58};
    ws_parser p;
    ws_event ev;
    (void)state;
    memset(&p, 0, sizeof p);
    assert_int_equal(ws_parser_feed(&p, hello, sizeof hello, &ev), sizeof hello);
    assert_int_equal(ev.type, WS_EV_MESSAGE);
    assert_int_equal(ev.opcode, WS_OP_TEXT);
    assert_int_equal(ev.message_len, 5);
    assert_int_equal(ws_parser_feed(&p, NULL, 0, &ev), 0);
    assert_int_equal(ev.type, WS_EV_NONE);
}

static void test_empty_feed_mid_frame(void **state)
{
    /* A text frame cut inside its payload, then empty and NULL feeds. */
    static const uint8_t part[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f};
    static const uint8_t rest[] = {0x4d, 0x51, 0x58};
    ws_parser p;
    ws_event ev;
    (void)state;
    ws_parser_init(&p, 0);
    assert_int_equal(ws_parser_feed(&p, part, sizeof part, &ev), sizeof part);
    assert_int_equal(ev.type, WS_EV_NONE);
    assert_int_equal(ws_parser_feed(&p, NULL, 0, &ev), 0);
    assert_int_equal(ev.type, WS_EV_NONE);
    assert_int_equal(ws_parser_feed(&p, rest, 0, &ev), 0);
    assert_int_equal(ev.type, WS_EV_NONE);
    assert_int_equal(ws_parser_feed(&p, rest, sizeof rest, &ev), sizeof rest);
    assert_int_equal(ev.type, WS_EV_MESSAGE);
    assert_int_equal(ev.message_len, 5);
}

static void test_parser_is_small(void **state)
{
    (void)state;
    assert_true(sizeof(ws_parser) <= 256);
}

static void test_several_messages(void **state)
{
    static const uint8_t bin[] = {0x00, 0xff, 0xfe, 0x80, 0xc0};
    (void)state;
    put_str(true, WS_OP_TEXT, "first");
    put_frame(true, WS_OP_BINARY, bin, sizeof bin); /* not UTF-8, and need not be */
    put_str(true, WS_OP_PING, "p");
    put_str(true, WS_OP_TEXT, "");
    put_str(true, WS_OP_PONG, "");
    put_str(true, WS_OP_BINARY, "");
    EXPECT(0, E_TEXT(5), E_BIN(5), E_PING("p"), E_TEXT(0), E_PONG(""), E_BIN(0));
}

static void test_unmasked(void **state)
{
    (void)state;
    put_frame_ex(true, 0, WS_OP_TEXT, "hi", 2, LEN_MIN, false);
    EXPECT(0, E_ERR(1002));
    put_frame_ex(true, 0, WS_OP_PING, "", 0, LEN_MIN, false);
    EXPECT(0, E_ERR(1002));
    /* The first frame is fine; the unmasked second one is not. */
    put_str(true, WS_OP_TEXT, "ok");
    put_frame_ex(true, 0, WS_OP_BINARY, "x", 1, LEN_MIN, false);
    EXPECT(0, E_TEXT(2), E_ERR(1002));
}

static void test_rsv_bits(void **state)
{
    (void)state;
    for (unsigned rsv = 1; rsv < 8; rsv++) {
        put_frame_ex(true, rsv, WS_OP_TEXT, "Hello", 5, LEN_MIN, true);
        EXPECT(0, E_ERR(1002));
        put_frame_ex(true, rsv, WS_OP_PING, "", 0, LEN_MIN, true);
        EXPECT(0, E_ERR(1002));
        /* Autobahn 3.x: valid traffic first, then the bad frame. */
        put_str(true, WS_OP_TEXT, "Hello");
        put_frame_ex(true, rsv, WS_OP_TEXT, "Hello", 5, LEN_MIN, true);
        put_str(true, WS_OP_PING, "");
        EXPECT(0, E_TEXT(5), E_ERR(1002));
    }
}

static void test_reserved_opcodes(void **state)
{
    static const unsigned ops[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    (void)state;
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        put_frame(true, ops[i], "", 0);
        EXPECT(0, E_ERR(1002));
        put_str(true, WS_OP_TEXT, "x");
        put_frame(true, ops[i], "reserved", 8);
        put_str(true, WS_OP_PING, "");
        EXPECT(0, E_TEXT(1), E_ERR(1002));
    }
}

/* ---- control frames ---- */

static void test_ping_pong(void **state)
{
    uint8_t p125[125];
    (void)state;
    for (size_t i = 0; i < sizeof p125; i++)
        p125[i] = (uint8_t)(i * 7);
    put_str(true, WS_OP_PING, "");
    put_str(true, WS_OP_PING, "Hello");
    put_frame(true, WS_OP_PING, p125, sizeof p125);
    put_str(true, WS_OP_PONG, "unsolicited");
    EXPECT(0, E_PING(""), E_PING("Hello"), {WS_EV_PING, 0, 0, 0, (const char *)p125, 125},
           E_PONG("unsolicited"));
}

static void test_control_too_long(void **state)
{
    uint8_t big[126] = {0};
    (void)state;
    put_frame(true, WS_OP_PING, big, 126);
    EXPECT(0, E_ERR(1002));
    put_frame(true, WS_OP_PONG, big, 126);
    EXPECT(0, E_ERR(1002));
    put_frame(true, WS_OP_CLOSE, big, 126);
    EXPECT(0, E_ERR(1002));
    /* Even a short payload in the 16-bit form is a 126 length byte. */
    put_frame_ex(true, 0, WS_OP_PING, "a", 1, LEN_16, true);
    EXPECT(0, E_ERR(1002));
    /* Refused from the first two bytes, before the payload arrives. */
    put_frame(true, WS_OP_PING, big, 126);
    wire_len = 2;
    EXPECT(0, E_ERR(1002));
}

static void test_control_fragmented(void **state)
{
    (void)state;
    put_str(false, WS_OP_PING, "a");
    EXPECT(0, E_ERR(1002));
    put_str(false, WS_OP_PONG, "a");
    EXPECT(0, E_ERR(1002));
    put_str(false, WS_OP_CLOSE, "");
    EXPECT(0, E_ERR(1002));
}

/* ---- fragmentation ---- */

static void test_fragmented_with_controls(void **state)
{
    (void)state;
    put_str(false, WS_OP_TEXT, "Hel");
    put_str(true, WS_OP_PING, "abc");
    put_str(false, WS_OP_CONT, "lo");
    put_str(true, WS_OP_PONG, "");
    put_str(false, WS_OP_CONT, "");
    put_str(true, WS_OP_PING, "");
    put_str(true, WS_OP_CONT, " world");
    put_str(true, WS_OP_BINARY, "next");
    EXPECT(0, E_PING("abc"), E_PONG(""), E_PING(""), E_TEXT(11), E_BIN(4));

    put_str(false, WS_OP_BINARY, "ab");
    put_str(true, WS_OP_CONT, "cd");
    EXPECT(0, E_BIN(4));

    /* A close between fragments ends everything there. */
    put_str(false, WS_OP_TEXT, "frag");
    put_close(1000, "bye");
    put_str(true, WS_OP_CONT, "ment");
    EXPECT(0, E_CLOSE(1000, "bye"));
}

static void test_fragmentation_errors(void **state)
{
    (void)state;
    put_str(true, WS_OP_CONT, "orphan");
    EXPECT(0, E_ERR(1002));
    put_str(false, WS_OP_CONT, "orphan");
    EXPECT(0, E_ERR(1002));
    put_str(true, WS_OP_TEXT, "done");
    put_str(true, WS_OP_CONT, "late");
    EXPECT(0, E_TEXT(4), E_ERR(1002));
    put_str(false, WS_OP_TEXT, "a");
    put_str(true, WS_OP_TEXT, "b");
    EXPECT(0, E_ERR(1002));
    put_str(false, WS_OP_TEXT, "a");
    put_str(false, WS_OP_BINARY, "b");
    EXPECT(0, E_ERR(1002));
    put_str(false, WS_OP_BINARY, "a");
    put_str(true, WS_OP_PING, "");
    put_str(true, WS_OP_TEXT, "b");
    EXPECT(0, E_PING(""), E_ERR(1002));
}

/* ---- lengths ---- */

static void test_long_frames(void **state)
{
    static uint8_t big[65537];
    (void)state;
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)('a' + i % 26);

    put_frame(true, WS_OP_BINARY, big, 126); /* 16-bit length */
    EXPECT(0, E_BIN(126));
    put_frame(true, WS_OP_TEXT, big, 65535); /* largest 16-bit length */
    EXPECT(0, E_TEXT(65535));
    put_frame(true, WS_OP_TEXT, big, 65536); /* 64-bit length */
    EXPECT(0, E_TEXT(65536));
    put_frame(false, WS_OP_BINARY, big, 65537);
    put_str(true, WS_OP_PING, "mid");
    put_frame(true, WS_OP_CONT, big, 300);
    EXPECT(0, E_PING("mid"), E_BIN(65837));
}

static void test_nonminimal_lengths(void **state)
{
    (void)state;
    put_frame_ex(true, 0, WS_OP_TEXT, "Hello", 5, LEN_16, true);
    put_frame_ex(true, 0, WS_OP_TEXT, "Hello", 5, LEN_64, true);
    put_frame_ex(true, 0, WS_OP_BINARY, "", 0, LEN_64, true);
    EXPECT(0, E_TEXT(5), E_TEXT(5), E_BIN(0));
}

static void test_length_msb(void **state)
{
    static const uint8_t hdr[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    static const uint8_t max[] = {0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                  0xFF, 0xFF, 0xFF, 1,    2,    3,    4};
    (void)state;
    put_raw(hdr, sizeof hdr);
    EXPECT(0, E_ERR(1002));
    put_raw(max, sizeof max);
    EXPECT(0, E_ERR(1002));
}

static void test_max_message(void **state)
{
    static uint8_t buf[200];
    (void)state;
    memset(buf, 'x', sizeof buf);

    put_frame(true, WS_OP_TEXT, buf, 100);
    EXPECT(100, E_TEXT(100));
    put_frame(true, WS_OP_TEXT, buf, 101);
    EXPECT(100, E_ERR(1009));
    put_frame(true, WS_OP_BINARY, buf, 101);
    EXPECT(100, E_ERR(1009));

    /* Fragments add up; control frames in between do not count. */
    put_frame(false, WS_OP_TEXT, buf, 60);
    put_frame(true, WS_OP_PING, buf, 50);
    put_frame(true, WS_OP_CONT, buf, 40);
    put_frame(true, WS_OP_BINARY, buf, 100);
    EXPECT(100, {WS_EV_PING, 0, 0, 0, (const char *)buf, 50}, E_TEXT(100), E_BIN(100));
    put_frame(false, WS_OP_TEXT, buf, 60);
    put_frame(false, WS_OP_CONT, buf, 40);
    put_frame(true, WS_OP_CONT, buf, 1);
    EXPECT(100, E_ERR(1009));
    put_frame(false, WS_OP_TEXT, buf, 60);
    put_frame(false, WS_OP_CONT, buf, 40);
    put_frame(true, WS_OP_CONT, buf, 0);
    EXPECT(100, E_TEXT(100));

    /* Decided from the header alone: no payload byte has arrived. */
    put_frame(true, WS_OP_BINARY, buf, 101);
    wire_len = 2 + 4;
    EXPECT(100, E_ERR(1009));
    put_frame_ex(true, 0, WS_OP_BINARY, buf, 200, LEN_64, true);
    wire_len = 2 + 8 + 4;
    EXPECT(100, E_ERR(1009));
}

static void test_max_message_huge_header(void **state)
{
    /* A 2^62-byte frame announced with no limit set is accepted as a header:
     * the parser would read and drop it; two of them would overflow. */
    static const uint8_t hdr[] = {0x02, 0xFF, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    ws_parser p;
    ws_event ev;
    (void)state;
    ws_parser_init(&p, 0);
    assert_int_equal(ws_parser_feed(&p, hdr, sizeof hdr, &ev), sizeof hdr);
    assert_int_equal(ev.type, WS_EV_NONE);
    ws_parser_init(&p, 1u << 20);
    assert_int_equal(ws_parser_feed(&p, hdr, sizeof hdr, &ev), sizeof hdr);
    assert_int_equal(ev.type, WS_EV_ERROR);
    assert_int_equal(ev.code, 1009);
}

/* ---- UTF-8 ---- */

static void test_utf8_straddles_frames(void **state)
{
    /* "κόσμε" (Autobahn 6.2): split inside characters across frames. */
    static const char kosme[] = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
    size_t n = sizeof kosme - 1;
    (void)state;

    put_frame(false, WS_OP_TEXT, kosme, 1);
    put_frame(false, WS_OP_CONT, kosme + 1, 3);
    put_str(true, WS_OP_PING, "");
    put_frame(true, WS_OP_CONT, kosme + 4, n - 4);
    EXPECT(0, E_PING(""), E_TEXT(11));

    /* One byte per frame (Autobahn 6.2.4). */
    for (size_t i = 0; i < n; i++)
        put_frame(i + 1 == n, i == 0 ? WS_OP_TEXT : WS_OP_CONT, kosme + i, 1);
    EXPECT(0, E_TEXT(11));

    /* Every pair of split points. */
    for (size_t a = 0; a <= n; a++) {
        for (size_t b = a; b <= n; b++) {
            put_frame(false, WS_OP_TEXT, kosme, a);
            put_frame(false, WS_OP_CONT, kosme + a, b - a);
            put_frame(true, WS_OP_CONT, kosme + b, n - b);
            EXPECT(0, E_TEXT(11));
        }
    }
}

static void test_utf8_valid_boundaries(void **state)
{
    static const char *const ok[] = {
        "\x00",
        "\x7f",
        "\xc2\x80",
        "\xdf\xbf",
        "\xe0\xa0\x80",
        "\xef\xbf\xbf",
        "\xef\xbf\xbe",
        "\xed\x9f\xbf",
        "\xee\x80\x80",
        "\xf0\x90\x80\x80",
        "\xf4\x8f\xbf\xbf",
        "\xf3\xbf\xbf\xbf",
    };
    (void)state;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t n = ok[i][0] ? strlen(ok[i]) : 1;
        put_frame(true, WS_OP_TEXT, ok[i], n);
        EXPECT(0, E_TEXT(n));
    }
}

/* Markus Kuhn's UTF-8 decoder stress test, the malformed parts, and the
 * Autobahn 6.x cases built from them. */
static const char *const bad_utf8[] = {
    /* 3.1 unexpected continuation bytes */
    "\x80",
    "\xbf",
    "\x80\xbf",
    "\x80\xbf\x80",
    "a\x80",
    /* 3.2 lonely start characters */
    "\xc0 ",
    "\xc1 ",
    "\xdf ",
    "\xe0 ",
    "\xef ",
    "\xf0 ",
    "\xf4 ",
    "\xf7 ",
    /* 3.3 sequences with the last continuation byte missing */
    "\xc2",
    "\xe0\xa0",
    "\xf0\x90\x80",
    "\xdf",
    "\xef\xbf",
    "\xf4\x8f\xbf",
    /* 3.4 concatenation of truncated sequences */
    "\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf",
    /* 3.5 impossible bytes */
    "\xfe",
    "\xff",
    "\xfe\xfe\xff\xff",
    "\xf5\x80\x80\x80",
    "\xf8\x88\x80\x80\x80",
    /* 4.1 overlong ASCII '/' */
    "\xc0\xaf",
    "\xe0\x80\xaf",
    "\xf0\x80\x80\xaf",
    "\xf8\x80\x80\x80\xaf",
    "\xfc\x80\x80\x80\x80\xaf",
    /* 4.2 maximum overlongs */
    "\xc1\xbf",
    "\xe0\x9f\xbf",
    "\xf0\x8f\xbf\xbf",
    /* 4.3 overlong NUL */
    "\xc0\x80",
    "\xe0\x80\x80",
    "\xf0\x80\x80\x80",
    /* 5.1 single surrogates */
    "\xed\xa0\x80",
    "\xed\xad\xbf",
    "\xed\xae\x80",
    "\xed\xaf\xbf",
    "\xed\xb0\x80",
    "\xed\xbe\x80",
    "\xed\xbf\xbf",
    /* 5.2 paired surrogates */
    "\xed\xa0\x80\xed\xb0\x80",
    "\xed\xaf\xbf\xed\xbf\xbf",
    /* above U+10FFFF */
    "\xf4\x90\x80\x80",
    "\xf4\xbf\xbf\xbf",
    "\xf7\xbf\xbf\xbf",
    /* Autobahn 6.3.1: valid text with a surrogate inside */
    "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
};

static void test_utf8_invalid_single_frame(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        put_str(true, WS_OP_TEXT, bad_utf8[i]);
        EXPECT(0, E_ERR(1007));
    }
}

static void test_utf8_invalid_fragmented(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        const char *s = bad_utf8[i];
        size_t n = strlen(s);
        /* One byte per frame, after a ping between fragments. */
        put_str(false, WS_OP_TEXT, "ok ");
        put_str(true, WS_OP_PING, "");
        for (size_t k = 0; k < n; k++)
            put_frame(false, WS_OP_CONT, s + k, 1);
        put_str(true, WS_OP_CONT, "");
        EXPECT(0, E_PING(""), E_ERR(1007));
    }
}

static void test_utf8_fail_fast(void **state)
{
    static char text[1000];
    (void)state;
    memset(text, 'a', sizeof text);
    text[10] = (char)0xff;
    /* Only the header and 20 payload bytes arrive: the error must not wait
     * for the rest of the frame (Autobahn 6.4). */
    put_frame(true, WS_OP_TEXT, text, sizeof text);
    wire_len = 4 + 4 + 20;
    EXPECT(0, E_ERR(1007));

    /* Same inside a fragmented message that never finishes. */
    put_str(false, WS_OP_TEXT, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5");
    put_str(false, WS_OP_CONT, "\xf4\x90\x80\x80");
    put_frame(false, WS_OP_CONT, text, 20);
    EXPECT(0, E_ERR(1007));

    /* A 4-byte sequence made invalid by its second byte, split over frames. */
    put_str(false, WS_OP_TEXT, "\xf4");
    put_str(false, WS_OP_CONT, "\x90");
    EXPECT(0, E_ERR(1007));
}

static void test_utf8_truncated_at_end(void **state)
{
    (void)state;
    put_str(false, WS_OP_TEXT, "abc\xe2\x82");
    put_str(true, WS_OP_CONT, "");
    EXPECT(0, E_ERR(1007));
    put_str(false, WS_OP_TEXT, "abc\xe2");
    put_str(true, WS_OP_CONT, "\x82\xac");
    EXPECT(0, E_TEXT(6));
    put_str(true, WS_OP_TEXT, "\xf0\x9f\x98");
    EXPECT(0, E_ERR(1007));
    /* Binary messages are not validated. */
    put_str(true, WS_OP_BINARY, "\xf0\x9f\x98");
    EXPECT(0, E_BIN(3));
}

static void test_utf8_long_text(void **state)
{
    /* Multi-byte characters crossing the parser's unmask chunks. */
    static char text[4000];
    const char *euro = "\xe2\x82\xac";
    (void)state;
    for (size_t i = 0; i + 3 <= sizeof text; i += 3)
        memcpy(text + i, euro, 3);
    put_frame(true, WS_OP_TEXT, text, 3999);
    EXPECT(0, E_TEXT(3999));
    text[2000] = (char)0xc0;
    put_frame(true, WS_OP_TEXT, text, 3999);
    EXPECT(0, E_ERR(1007));
}

/* ---- close frames ---- */

static void test_close_empty(void **state)
{
    (void)state;
    put_frame(true, WS_OP_CLOSE, "", 0);
    EXPECT(0, E_CLOSE(1005, ""));
    /* Anything after the close is left alone. */
    put_frame(true, WS_OP_CLOSE, "", 0);
    put_str(true, WS_OP_TEXT, "after");
    put_str(true, WS_OP_PING, "after");
    EXPECT(0, E_CLOSE(1005, ""));
}

static void test_close_one_byte(void **state)
{
    (void)state;
    put_frame(true, WS_OP_CLOSE, "\x03", 1);
    EXPECT(0, E_ERR(1002));
}

static void test_close_codes(void **state)
{
    static const uint16_t ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                  1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    static const uint16_t bad[] = {0,    1,    999,  1004, 1005, 1006,   1015, 1016,
                                   1100, 2000, 2999, 5000, 6000, 0x8000, 65535};
    (void)state;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        put_close(ok[i], "");
        EXPECT(0, {WS_EV_CLOSE, 0, ok[i], 0, "", 0});
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_close(bad[i], "");
        EXPECT(0, E_ERR(1002));
    }
}

static void test_close_reason(void **state)
{
    char r123[124];
    (void)state;
    put_close(1000, "Hello \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5");
    EXPECT(0, E_CLOSE(1000, "Hello \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"));
    memset(r123, 'r', 123);
    r123[123] = '\0';
    put_close(4999, r123);
    EXPECT(0, {WS_EV_CLOSE, 0, 4999, 0, r123, 123});
    put_close(1000, "bad \xed\xa0\x80 reason");
    EXPECT(0, E_ERR(1007));
    put_close(1000, "cut \xe2\x82");
    EXPECT(0, E_ERR(1007));
    /* An invalid code wins over an invalid reason. */
    put_close(1005, "\xff");
    EXPECT(0, E_ERR(1002));
}

static void test_sticky_error(void **state)
{
    ws_parser p;
    ws_event ev;
    static const uint8_t bad[] = {0x83, 0x80, 1, 2, 3, 4};
    static const uint8_t ping[] = {0x89, 0x80, 1, 2, 3, 4};
    (void)state;
    ws_parser_init(&p, 0);
    assert_int_equal(ws_parser_feed(&p, bad, sizeof bad, &ev), 1 + 1);
    assert_int_equal(ev.type, WS_EV_ERROR);
    assert_int_equal(ev.code, 1002);
    assert_string_equal(ev.reason, "reserved opcode");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ws_parser_feed(&p, ping, sizeof ping, &ev), 0);
        assert_int_equal(ev.type, WS_EV_ERROR);
        assert_int_equal(ev.code, 1002);
    }
}

/* ---- encoders ---- */

static void check_header(uint64_t len, unsigned op, bool fin, const uint8_t *want, size_t want_len)
{
    uint8_t out[WS_FRAME_HEADER_MAX];
    memset(out, 0xEE, sizeof out);
    assert_int_equal(ws_frame_header(out, op, fin, len), want_len);
    assert_int_equal(ws_frame_header_len(len), want_len);
    assert_memory_equal(out, want, want_len);
}

static void test_encode_header(void **state)
{
    (void)state;
    check_header(0, WS_OP_TEXT, true, (const uint8_t[]){0x81, 0x00}, 2);
    check_header(125, WS_OP_BINARY, true, (const uint8_t[]){0x82, 0x7D}, 2);
    check_header(126, WS_OP_TEXT, true, (const uint8_t[]){0x81, 0x7E, 0x00, 0x7E}, 4);
    check_header(65535, WS_OP_TEXT, true, (const uint8_t[]){0x81, 0x7E, 0xFF, 0xFF}, 4);
    check_header(65536, WS_OP_TEXT, true,
                 (const uint8_t[]){0x81, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00}, 10);
    check_header(1ull << 32, WS_OP_BINARY, true,
                 (const uint8_t[]){0x82, 0x7F, 0, 0, 0, 0x01, 0, 0, 0, 0}, 10);
    check_header((1ull << 63) - 1, WS_OP_BINARY, true,
                 (const uint8_t[]){0x82, 0x7F, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, 10);
    check_header(3, WS_OP_TEXT, false, (const uint8_t[]){0x01, 0x03}, 2);
    check_header(3, WS_OP_CONT, true, (const uint8_t[]){0x80, 0x03}, 2);

    uint8_t out[WS_FRAME_HEADER_MAX];
    assert_int_equal(ws_frame_header(out, 16, true, 1), 0);
    assert_int_equal(ws_frame_header(out, WS_OP_TEXT, true, 1ull << 63), 0);
    assert_int_equal(ws_frame_header_len(1ull << 63), 0);
}

/* Turn a server frame from the encoders into a masked client frame and
 * check that the parser reads back what was encoded. */
static void client_copy(const uint8_t *frame, size_t n)
{
    size_t hl = (frame[1] & 0x7F) == 126 ? 4 : (frame[1] & 0x7F) == 127 ? 10 : 2;
    put_frame(frame[0] & 0x80, frame[0] & 0x0F, frame + hl, n - hl);
}

static void test_encode_close(void **state)
{
    uint8_t out[2 + 2 + WS_CLOSE_REASON_MAX];
    char reason[300];
    size_t n;
    (void)state;

    n = ws_frame_close(out, 1000, "bye");
    assert_int_equal(n, 7);
    assert_memory_equal(out, ((const uint8_t[]){0x88, 0x05, 0x03, 0xE8, 'b', 'y', 'e'}), 7);
    client_copy(out, n);
    EXPECT(0, E_CLOSE(1000, "bye"));

    n = ws_frame_close(out, 1002, NULL);
    assert_int_equal(n, 4);
    assert_memory_equal(out, ((const uint8_t[]){0x88, 0x02, 0x03, 0xEA}), 4);

    n = ws_frame_close(out, 0, "ignored");
    assert_int_equal(n, 2);
    assert_memory_equal(out, ((const uint8_t[]){0x88, 0x00}), 2);
    client_copy(out, n);
    EXPECT(0, E_CLOSE(1005, ""));

    /* Long ASCII is cut at 123 bytes: a 125-byte payload. */
    memset(reason, 'a', 200);
    reason[200] = '\0';
    n = ws_frame_close(out, 4000, reason);
    assert_int_equal(n, 2 + 125);
    assert_int_equal(out[1], 125);
    client_copy(out, n);
    EXPECT(0, {WS_EV_CLOSE, 0, 4000, 0, reason, 123});

    /* Exactly 123 bytes stay whole. */
    reason[123] = '\0';
    assert_int_equal(ws_frame_close(out, 4000, reason), 2 + 125);

    /* A 2-byte character straddling the limit is dropped whole. */
    memset(reason, 'a', 122);
    memcpy(reason + 122, "\xc3\xa9zz", 5);
    n = ws_frame_close(out, 1011, reason);
    assert_int_equal(n, 4 + 122);
    assert_true(utf8_valid(out + 4, n - 4));

    /* 3- and 4-byte characters too. */
    memset(reason, 'a', 121);
    memcpy(reason + 121, "\xe2\x82\xac", 4);
    n = ws_frame_close(out, 1011, reason);
    assert_int_equal(n, 4 + 121);
    memset(reason, 'a', 122);
    memcpy(reason + 122, "\xf0\x9f\x98\x80", 5);
    n = ws_frame_close(out, 1011, reason);
    assert_int_equal(n, 4 + 122);
    memset(reason, 'a', 120);
    memcpy(reason + 120, "\xf0\x9f\x98\x80", 5);
    n = ws_frame_close(out, 1011, reason);
    assert_int_equal(n, 4 + 120);
    /* Ending exactly at the limit, it is kept. */
    memset(reason, 'a', 119);
    memcpy(reason + 119, "\xf0\x9f\x98\x80", 5);
    n = ws_frame_close(out, 1011, reason);
    assert_int_equal(n, 4 + 123);
    client_copy(out, n);
    EXPECT(0, {WS_EV_CLOSE, 0, 1011, 0, reason, 123});
}

static void test_encode_control(void **state)
{
    uint8_t out[2 + WS_CONTROL_MAX], big[126] = {0};
    (void)state;
    assert_int_equal(ws_frame_control(out, WS_OP_PONG, (const uint8_t *)"abc", 3), 5);
    assert_memory_equal(out, ((const uint8_t[]){0x8A, 0x03, 'a', 'b', 'c'}), 5);
    client_copy(out, 5);
    EXPECT(0, E_PONG("abc"));
    assert_int_equal(ws_frame_control(out, WS_OP_PING, NULL, 0), 2);
    assert_memory_equal(out, ((const uint8_t[]){0x89, 0x00}), 2);
    assert_int_equal(ws_frame_control(out, WS_OP_PING, big, 125), 127);
    assert_int_equal(ws_frame_control(out, WS_OP_PING, big, 126), 0);
    assert_int_equal(ws_frame_control(out, WS_OP_TEXT, big, 1), 0);
    assert_int_equal(ws_frame_control(out, 0xB, big, 1), 0);
}

static void test_encode_message_roundtrip(void **state)
{
    /* header + payload, as the relay sends a published message. */
    static uint8_t frame[WS_FRAME_HEADER_MAX + 70000];
    (void)state;
    static const size_t lens[] = {0, 125, 126, 65535, 65536, 69000};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t h = ws_frame_header(frame, WS_OP_TEXT, true, lens[i]);
        memset(frame + h, 'z', lens[i]);
        client_copy(frame, h + lens[i]);
        EXPECT(0, E_TEXT(lens[i]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_rfc_example_hello, setup),
        cmocka_unit_test_setup(test_zero_filled_parser, setup),
        cmocka_unit_test_setup(test_empty_feed_mid_frame, setup),
        cmocka_unit_test_setup(test_parser_is_small, setup),
        cmocka_unit_test_setup(test_several_messages, setup),
        cmocka_unit_test_setup(test_unmasked, setup),
        cmocka_unit_test_setup(test_rsv_bits, setup),
        cmocka_unit_test_setup(test_reserved_opcodes, setup),
        cmocka_unit_test_setup(test_ping_pong, setup),
        cmocka_unit_test_setup(test_control_too_long, setup),
        cmocka_unit_test_setup(test_control_fragmented, setup),
        cmocka_unit_test_setup(test_fragmented_with_controls, setup),
        cmocka_unit_test_setup(test_fragmentation_errors, setup),
        cmocka_unit_test_setup(test_long_frames, setup),
        cmocka_unit_test_setup(test_nonminimal_lengths, setup),
        cmocka_unit_test_setup(test_length_msb, setup),
        cmocka_unit_test_setup(test_max_message, setup),
        cmocka_unit_test_setup(test_max_message_huge_header, setup),
        cmocka_unit_test_setup(test_utf8_straddles_frames, setup),
        cmocka_unit_test_setup(test_utf8_valid_boundaries, setup),
        cmocka_unit_test_setup(test_utf8_invalid_single_frame, setup),
        cmocka_unit_test_setup(test_utf8_invalid_fragmented, setup),
        cmocka_unit_test_setup(test_utf8_fail_fast, setup),
        cmocka_unit_test_setup(test_utf8_truncated_at_end, setup),
        cmocka_unit_test_setup(test_utf8_long_text, setup),
        cmocka_unit_test_setup(test_close_empty, setup),
        cmocka_unit_test_setup(test_close_one_byte, setup),
        cmocka_unit_test_setup(test_close_codes, setup),
        cmocka_unit_test_setup(test_close_reason, setup),
        cmocka_unit_test_setup(test_sticky_error, setup),
        cmocka_unit_test_setup(test_encode_header, setup),
        cmocka_unit_test_setup(test_encode_close, setup),
        cmocka_unit_test_setup(test_encode_control, setup),
        cmocka_unit_test_setup(test_encode_message_roundtrip, setup),
    };
    return cmocka_run_group_tests_name("ws_frame", tests, NULL, NULL);
}
