/* test_utf8.c - cmocka tests for the strict UTF-8 validator (utf8.h).
 *
 * Every case is checked whole, split in two at every byte position, and one
 * byte at a time; the 8-byte ASCII fast path is exercised with misaligned
 * starts and every offset of a non-ASCII byte; random inputs are compared
 * with an independent code-point decoder. No I/O, no allocation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "utf8.h"

/* ---- helpers ---- */

/* Independent reference: decode code points and check the RFC 3629 rules. */
static bool ref_valid(const uint8_t *p, size_t n)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        uint32_t cp;
        size_t len;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1Fu;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0Fu;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07u;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + k] & 0x3Fu);
        }
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* Encode a code point (any value up to 0x10FFFF, surrogates included). */
static size_t enc(uint32_t cp, uint8_t *o)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static int feed_whole(const uint8_t *p, size_t n)
{
    utf8_state s;
    utf8_reset(&s);
    return utf8_feed(&s, p, n);
}

/* Feed one byte at a time (never takes the 8-byte fast path). Returns the
 * verdict of the last call, or UTF8_INVALID as soon as one call says so. */
static int feed_bytewise(const uint8_t *p, size_t n)
{
    utf8_state s;
    utf8_reset(&s);
    int rc = UTF8_OK;
    for (size_t i = 0; i < n; i++) {
        rc = utf8_feed(&s, p + i, 1);
        if (rc == UTF8_INVALID)
            return rc;
    }
    return rc;
}

/* Feed [0,k) then [k,n): the final verdict must equal the whole verdict. */
static int feed_split(const uint8_t *p, size_t n, size_t k, int *first)
{
    utf8_state s;
    utf8_reset(&s);
    *first = utf8_feed(&s, p, k);
    if (*first == UTF8_INVALID)
        return UTF8_INVALID;
    return utf8_feed(&s, p + k, n - k);
}

/* The verdict must be the same whole, split at every position, and byte by
 * byte; for a split of valid input the first half reports OK exactly at
 * character boundaries and INCOMPLETE inside a character. */
static void check_all_ways(const uint8_t *p, size_t n, int expect)
{
    int whole = feed_whole(p, n);
    if (whole != expect)
        fail_msg("whole verdict %d, expected %d (len %zu)", whole, expect, n);
    assert_int_equal(feed_bytewise(p, n), expect);
    assert_int_equal(utf8_valid(p, n), expect == UTF8_OK);
    for (size_t k = 0; k <= n; k++) {
        int first;
        int rc = feed_split(p, n, k, &first);
        if (rc != expect)
            fail_msg("split at %zu: verdict %d, expected %d", k, rc, expect);
        if (expect != UTF8_INVALID) {
            /* Valid so far: the prefix verdict says whether k is on a
             * character boundary (continuation bytes are 10xxxxxx). */
            if (k == n) {
                assert_int_equal(first, expect);
            } else {
                bool boundary = k == 0 || (p[k] & 0xC0) != 0x80;
                assert_int_equal(first, boundary ? UTF8_OK : UTF8_INCOMPLETE);
            }
        }
    }
}

#define B(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

/* ---- valid input ---- */

static void test_valid_ascii(void **state)
{
    (void)state;
    check_all_ways((const uint8_t *)"", 0, UTF8_OK);
    const char *s = "Hello, world! 0123456789 ~{}|\x7f\x01\t\n";
    check_all_ways((const uint8_t *)s, strlen(s), UTF8_OK);
    /* NUL is a valid UTF-8 character (the API refuses it separately). */
    check_all_ways(B(0x00), UTF8_OK);
    check_all_ways(B('a', 0x00, 'b'), UTF8_OK);
}

static void test_valid_multibyte(void **state)
{
    (void)state;
    check_all_ways(B(0xC3, 0xA9), UTF8_OK);             /* é */
    check_all_ways(B(0xE2, 0x82, 0xAC), UTF8_OK);       /* € */
    check_all_ways(B(0xF0, 0x9F, 0x98, 0x80), UTF8_OK); /* 😀 */
    check_all_ways(B(0xED, 0x9F, 0xBF), UTF8_OK);       /* U+D7FF */
    check_all_ways(B(0xEE, 0x80, 0x80), UTF8_OK);       /* U+E000 */
    check_all_ways(B(0xEF, 0xBF, 0xBD), UTF8_OK);       /* U+FFFD */
    check_all_ways(B(0xF4, 0x8F, 0xBF, 0xBF), UTF8_OK); /* U+10FFFF */
    check_all_ways(B(0xF3, 0xBF, 0xBF, 0xBF), UTF8_OK); /* U+FFFFF */
    const char *mixed = "a\xc3\xa9"
                        "b\xe2\x82\xac"
                        "c\xf0\x9f\x98\x80"
                        "d\xe2\x80\xa8";
    check_all_ways((const uint8_t *)mixed, strlen(mixed), UTF8_OK);
}

static void test_boundaries(void **state)
{
    (void)state;
    static const struct {
        uint32_t cp;
        size_t len;
        uint8_t bytes[4];
    } cases[] = {
        {0x0000, 1, {0x00}},
        {0x007F, 1, {0x7F}},
        {0x0080, 2, {0xC2, 0x80}},
        {0x07FF, 2, {0xDF, 0xBF}},
        {0x0800, 3, {0xE0, 0xA0, 0x80}},
        {0xD7FF, 3, {0xED, 0x9F, 0xBF}},
        {0xE000, 3, {0xEE, 0x80, 0x80}},
        {0xFFFF, 3, {0xEF, 0xBF, 0xBF}},
        {0x10000, 4, {0xF0, 0x90, 0x80, 0x80}},
        {0x10FFFF, 4, {0xF4, 0x8F, 0xBF, 0xBF}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t b[4];
        size_t n = enc(cases[i].cp, b);
        assert_int_equal(n, cases[i].len);
        assert_memory_equal(b, cases[i].bytes, n);
        check_all_ways(b, n, UTF8_OK);
    }
}

static void test_every_code_point(void **state)
{
    (void)state;
    uint8_t b[4];
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        size_t n = enc(cp, b);
        bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        if (utf8_valid(b, n) == surrogate)
            fail_msg("U+%04X: utf8_valid gave %d", (unsigned)cp, (int)surrogate);
    }
}

/* ---- invalid input ---- */

static void test_invalid_overlong(void **state)
{
    (void)state;
    check_all_ways(B(0xC0, 0x80), UTF8_INVALID);
    check_all_ways(B(0xC0, 0xAF), UTF8_INVALID);
    check_all_ways(B(0xC1, 0xBF), UTF8_INVALID);
    check_all_ways(B(0xE0, 0x80, 0x80), UTF8_INVALID);
    check_all_ways(B(0xE0, 0x9F, 0xBF), UTF8_INVALID); /* U+07FF in 3 bytes */
    check_all_ways(B(0xF0, 0x80, 0x80, 0x80), UTF8_INVALID);
    check_all_ways(B(0xF0, 0x8F, 0xBF, 0xBF), UTF8_INVALID); /* U+FFFF in 4 bytes */
    check_all_ways(B('a', 0xC0, 0x80, 'b'), UTF8_INVALID);
}

static void test_invalid_surrogates(void **state)
{
    (void)state;
    check_all_ways(B(0xED, 0xA0, 0x80), UTF8_INVALID); /* U+D800 */
    check_all_ways(B(0xED, 0xAD, 0xBF), UTF8_INVALID); /* U+DB7F */
    check_all_ways(B(0xED, 0xB0, 0x80), UTF8_INVALID); /* U+DC00 */
    check_all_ways(B(0xED, 0xBF, 0xBF), UTF8_INVALID); /* U+DFFF */
    /* A CESU-8 style pair is two surrogates: still invalid. */
    check_all_ways(B(0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80), UTF8_INVALID);
    uint8_t b[4];
    for (uint32_t cp = 0xD800; cp <= 0xDFFF; cp++) {
        size_t n = enc(cp, b);
        assert_int_equal(feed_whole(b, n), UTF8_INVALID);
    }
}

static void test_invalid_above_max(void **state)
{
    (void)state;
    check_all_ways(B(0xF4, 0x90, 0x80, 0x80), UTF8_INVALID); /* U+110000 */
    check_all_ways(B(0xF4, 0xBF, 0xBF, 0xBF), UTF8_INVALID);
    check_all_ways(B(0xF5, 0x80, 0x80, 0x80), UTF8_INVALID);
    check_all_ways(B(0xF7, 0xBF, 0xBF, 0xBF), UTF8_INVALID);
    check_all_ways(B(0xF8, 0x88, 0x80, 0x80, 0x80), UTF8_INVALID);
    check_all_ways(B(0xFC, 0x84, 0x80, 0x80, 0x80, 0x80), UTF8_INVALID);
    check_all_ways(B(0xFE), UTF8_INVALID);
    check_all_ways(B(0xFF), UTF8_INVALID);
    check_all_ways(B(0xFE, 0xFF), UTF8_INVALID);
    check_all_ways(B('a', 'b', 0xFF, 'c'), UTF8_INVALID);
    for (unsigned c = 0xF5; c <= 0xFF; c++) {
        uint8_t b[1] = {(uint8_t)c};
        assert_int_equal(feed_whole(b, 1), UTF8_INVALID);
    }
    for (unsigned c = 0xC0; c <= 0xC1; c++) {
        uint8_t b[1] = {(uint8_t)c};
        assert_int_equal(feed_whole(b, 1), UTF8_INVALID);
    }
}

static void test_invalid_continuation(void **state)
{
    (void)state;
    /* Lone continuation bytes. */
    for (unsigned c = 0x80; c <= 0xBF; c++) {
        uint8_t b[3] = {'a', (uint8_t)c, 'b'};
        assert_int_equal(feed_whole(b, 1 + 1), UTF8_INVALID);
        assert_int_equal(feed_whole(b + 1, 1), UTF8_INVALID);
        check_all_ways(b, 3, UTF8_INVALID);
    }
    check_all_ways(B(0xC3, 0xA9, 0xA9), UTF8_INVALID); /* one too many */
    check_all_ways(B(0xF0, 0x9F, 0x98, 0x80, 0x80), UTF8_INVALID);
    /* A non-continuation where one is needed. */
    check_all_ways(B(0xC3, 0x28), UTF8_INVALID);
    check_all_ways(B(0xC3, 0xC3, 0xA9), UTF8_INVALID);
    check_all_ways(B(0xE2, 0x28, 0xA1), UTF8_INVALID);
    check_all_ways(B(0xE2, 0x82, 0x28), UTF8_INVALID);
    check_all_ways(B(0xF0, 0x28, 0x8C, 0xBC), UTF8_INVALID);
    check_all_ways(B(0xF0, 0x90, 0x28, 0xBC), UTF8_INVALID);
    check_all_ways(B(0xF0, 0x9F, 0x98, 0x28), UTF8_INVALID);
    check_all_ways(B(0xE2, 0x82, 0xC0), UTF8_INVALID);
    check_all_ways(B(0xC3, 0x00), UTF8_INVALID);
}

static void test_truncated_at_end(void **state)
{
    (void)state;
    /* Valid prefixes of a character: incomplete, so not valid as a whole. */
    check_all_ways(B(0xC3), UTF8_INCOMPLETE);
    check_all_ways(B(0xC2), UTF8_INCOMPLETE);
    check_all_ways(B(0xDF), UTF8_INCOMPLETE);
    check_all_ways(B(0xE2), UTF8_INCOMPLETE);
    check_all_ways(B(0xE2, 0x82), UTF8_INCOMPLETE);
    check_all_ways(B(0xE0, 0xA0), UTF8_INCOMPLETE);
    check_all_ways(B(0xED, 0x9F), UTF8_INCOMPLETE);
    check_all_ways(B(0xF0), UTF8_INCOMPLETE);
    check_all_ways(B(0xF0, 0x9F), UTF8_INCOMPLETE);
    check_all_ways(B(0xF0, 0x9F, 0x98), UTF8_INCOMPLETE);
    check_all_ways(B(0xF4, 0x8F, 0xBF), UTF8_INCOMPLETE);
    check_all_ways(B('a', 'b', 'c', 0xE2, 0x82), UTF8_INCOMPLETE);
    /* Prefixes that no continuation can complete are refused at once. */
    check_all_ways(B(0xE0, 0x80), UTF8_INVALID);
    check_all_ways(B(0xE0, 0x9F), UTF8_INVALID);
    check_all_ways(B(0xED, 0xA0), UTF8_INVALID);
    check_all_ways(B(0xF0, 0x8F), UTF8_INVALID);
    check_all_ways(B(0xF4, 0x90), UTF8_INVALID);
    check_all_ways(B(0xC0), UTF8_INVALID);
    check_all_ways(B(0xF5), UTF8_INVALID);
}

/* Exhaustive over every 1-, 2- and 3-byte string and over 4-byte strings
 * with lead F0..F7, against the reference decoder. */
static void test_exhaustive_short(void **state)
{
    (void)state;
    uint8_t b[4];
    for (unsigned a = 0; a < 256; a++) {
        b[0] = (uint8_t)a;
        assert_int_equal(utf8_valid(b, 1), ref_valid(b, 1));
        for (unsigned c = 0; c < 256; c++) {
            b[1] = (uint8_t)c;
            if (utf8_valid(b, 2) != ref_valid(b, 2))
                fail_msg("%02x %02x", a, c);
            assert_int_equal(feed_whole(b, 2), feed_bytewise(b, 2));
        }
    }
    for (unsigned a = 0xC0; a < 0x100; a++) {
        for (unsigned c = 0; c < 256; c++) {
            for (unsigned d = 0; d < 256; d++) {
                b[0] = (uint8_t)a, b[1] = (uint8_t)c, b[2] = (uint8_t)d;
                if (utf8_valid(b, 3) != ref_valid(b, 3))
                    fail_msg("%02x %02x %02x", a, c, d);
            }
        }
    }
    static const uint8_t thirds[] = {0x00, 0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF};
    for (unsigned a = 0xF0; a < 0xF8; a++)
        for (unsigned c = 0; c < 256; c++)
            for (size_t x = 0; x < sizeof thirds; x++)
                for (size_t y = 0; y < sizeof thirds; y++) {
                    b[0] = (uint8_t)a, b[1] = (uint8_t)c, b[2] = thirds[x], b[3] = thirds[y];
                    if (utf8_valid(b, 4) != ref_valid(b, 4))
                        fail_msg("%02x %02x %02x %02x", a, c, thirds[x], thirds[y]);
                }
}

/* ---- incremental use ---- */

static void test_feed_state(void **state)
{
    (void)state;
    utf8_state s;
    utf8_reset(&s);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"", 0), UTF8_OK);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xE2", 1), UTF8_INCOMPLETE);
    /* An empty feed keeps the pending sequence. */
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"", 0), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\x82", 1), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xAC", 1), UTF8_OK);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"abc\xF0\x9F", 5), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\x98\x80xyz", 5), UTF8_OK);
    /* The narrowed range of the second byte survives a split after E0/ED/F0/F4. */
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xED", 1), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xA0", 1), UTF8_INVALID);
    utf8_reset(&s);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xF4", 1), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\x90", 1), UTF8_INVALID);
    utf8_reset(&s);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xE0", 1), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\x9F", 1), UTF8_INVALID);
    utf8_reset(&s);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xF0", 1), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\x8F", 1), UTF8_INVALID);
    /* After utf8_reset the state is usable again; zero-init works too. */
    utf8_reset(&s);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"ok", 2), UTF8_OK);
    utf8_state z = {0, 0, 0};
    assert_int_equal(utf8_feed(&z, (const uint8_t *)"\xC3", 1), UTF8_INCOMPLETE);
    assert_int_equal(utf8_feed(&z, (const uint8_t *)"\xA9", 1), UTF8_OK);
    utf8_state z2 = {0, 0, 0};
    assert_int_equal(utf8_feed(&z2, (const uint8_t *)"\xE0\xA0\x80", 3), UTF8_OK);
}

static void test_split_three_ways(void **state)
{
    (void)state;
    const char *s = "x\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 long enough ascii run \xf4\x8f\xbf\xbf!";
    size_t n = strlen(s);
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i <= n; i++)
        for (size_t j = i; j <= n; j++) {
            utf8_state st;
            utf8_reset(&st);
            assert_int_not_equal(utf8_feed(&st, p, i), UTF8_INVALID);
            assert_int_not_equal(utf8_feed(&st, p + i, j - i), UTF8_INVALID);
            assert_int_equal(utf8_feed(&st, p + j, n - j), UTF8_OK);
        }
}

/* ---- the 8-byte ASCII fast path ---- */

static void test_fast_path_mixed(void **state)
{
    (void)state;
    uint8_t buf[96];
    /* 7 ASCII then a multibyte character, at every misalignment. */
    for (size_t off = 0; off < 8; off++) {
        uint8_t *p = buf + off;
        memcpy(p, "abcdefg\xe2\x82\xac", 10);
        check_all_ways(p, 10, UTF8_OK);
        memcpy(p, "abcdefg\xe2\x82", 9);
        check_all_ways(p, 9, UTF8_INCOMPLETE);
        memcpy(p, "abcdefg\xe2\x28\xac", 10);
        check_all_ways(p, 10, UTF8_INVALID);
        memcpy(p, "abcdefgh\xc3\xa9ijklmnopqrstuvwxyz", 28);
        check_all_ways(p, 28, UTF8_OK);
    }
}

static void test_fast_path_every_offset(void **state)
{
    (void)state;
    uint8_t buf[80];
    for (size_t align = 0; align < 8; align++) {
        uint8_t *p = buf + align;
        for (size_t run = 0; run < 40; run++) {
            for (size_t tail = 0; tail < 16; tail++) {
                size_t n = run + 1 + tail;
                memset(p, 'A' + (int)(run % 26), n);
                /* A bad byte after `run` ASCII bytes, followed by ASCII. */
                static const uint8_t bad[] = {0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xFF};
                for (size_t b = 0; b < sizeof bad; b++) {
                    p[run] = bad[b];
                    if (feed_whole(p, n) != UTF8_INVALID)
                        fail_msg("align %zu run %zu tail %zu byte %02x accepted", align, run, tail,
                                 bad[b]);
                    assert_false(utf8_valid(p, n));
                }
                /* A good 2-byte character in the same place. */
                if (tail >= 1) {
                    p[run] = 0xC3, p[run + 1] = 0xA9;
                    assert_int_equal(feed_whole(p, n), UTF8_OK);
                    /* ...and a lead byte left without its continuation. */
                    p[run + 1] = 'z';
                    assert_int_equal(feed_whole(p, n), UTF8_INVALID);
                }
                /* A lead byte as the very last byte: incomplete. */
                memset(p, 'a', n);
                p[n - 1] = 0xE2;
                assert_int_equal(feed_whole(p, n), UTF8_INCOMPLETE);
            }
        }
    }
}

static void test_fast_path_high_bit_in_word(void **state)
{
    (void)state;
    /* A 32-byte ASCII run with a single non-ASCII byte at every position:
     * the word check must notice the high bit in any lane. */
    uint8_t p[40];
    for (size_t pos = 0; pos < 32; pos++) {
        memset(p, 'q', 32);
        p[pos] = 0x80;
        assert_int_equal(feed_whole(p, 32), UTF8_INVALID);
        p[pos] = 0xFF;
        assert_int_equal(feed_whole(p, 32), UTF8_INVALID);
        if (pos + 3 <= 32) {
            p[pos] = 0xEF, p[pos + 1] = 0xBF, p[pos + 2] = 0xBD;
            assert_int_equal(feed_whole(p, 32), UTF8_OK);
            p[pos + 1] = 0xC0;
            assert_int_equal(feed_whole(p, 32), UTF8_INVALID);
        }
    }
    /* Long pure ASCII runs of every length. */
    uint8_t big[300];
    memset(big, 'x', sizeof big);
    for (size_t n = 0; n <= sizeof big; n++)
        assert_int_equal(feed_whole(big, n), UTF8_OK);
    big[299] = 0x80;
    assert_int_equal(feed_whole(big, 300), UTF8_INVALID);
    assert_int_equal(feed_whole(big, 299), UTF8_OK);
}

/* ---- random inputs against the reference ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static void test_random_vs_reference(void **state)
{
    (void)state;
    static const uint8_t interesting[] = {
        0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
        0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFE, 0xFF};
    uint8_t p[64];
    size_t valid_count = 0;
    for (int iter = 0; iter < 200000; iter++) {
        size_t n = rnd() % sizeof p;
        size_t i = 0;
        while (i < n) {
            uint32_t r = rnd() % 10;
            if (r < 4) {
                p[i++] = (uint8_t)('a' + rnd() % 26);
            } else if (r < 7) {
                /* A valid character, so that long valid strings occur. */
                uint32_t cp = rnd() % 0x110000;
                if (cp >= 0xD800 && cp <= 0xDFFF)
                    cp = 0xFFFD;
                uint8_t e[4];
                size_t k = enc(cp, e);
                for (size_t j = 0; j < k && i < n; j++)
                    p[i++] = e[j];
            } else if (r < 9) {
                p[i++] = interesting[rnd() % sizeof interesting];
            } else {
                p[i++] = (uint8_t)rnd();
            }
        }
        size_t off = rnd() % 8; /* misaligned copy */
        uint8_t q[72];
        memcpy(q + off, p, n);
        bool want = ref_valid(p, n);
        valid_count += want;
        int whole = feed_whole(q + off, n);
        if ((whole == UTF8_OK) != want)
            fail_msg("iteration %d: verdict %d, reference %d", iter, whole, want);
        assert_int_equal(whole, feed_bytewise(p, n));
        size_t k = n ? rnd() % (n + 1) : 0;
        int first;
        assert_int_equal(feed_split(q + off, n, k, &first), whole);
    }
    /* The generator produced both kinds in quantity. */
    assert_true(valid_count > 10000);
    assert_true(valid_count < 190000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_ascii),
        cmocka_unit_test(test_valid_multibyte),
        cmocka_unit_test(test_boundaries),
        cmocka_unit_test(test_every_code_point),
        cmocka_unit_test(test_invalid_overlong),
        cmocka_unit_test(test_invalid_surrogates),
        cmocka_unit_test(test_invalid_above_max),
        cmocka_unit_test(test_invalid_continuation),
        cmocka_unit_test(test_truncated_at_end),
        cmocka_unit_test(test_exhaustive_short),
        cmocka_unit_test(test_feed_state),
        cmocka_unit_test(test_split_three_ways),
        cmocka_unit_test(test_fast_path_mixed),
        cmocka_unit_test(test_fast_path_every_offset),
        cmocka_unit_test(test_fast_path_high_bit_in_word),
        cmocka_unit_test(test_random_vs_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
