/* test_form.c - cmocka tests for urlencoded parsing (form.h): pair
 * iteration, %XX / '+' decoding and encoded key comparison. Inputs are
 * copied into exact-size heap buffers so that ASan catches any read past
 * the given length. No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "form.h"

/* Exact-size, not NUL-terminated copy of s. */
static char *dup_exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    return p;
}

/* Iterate s and compare with the expected "k=v" list (each expected pair is
 * given as key and value strings). */
static void expect_pairs(const char *s, size_t npairs, const char *const *kv)
{
    size_t n = strlen(s);
    char *p = dup_exact(s, n);
    form_iter it;
    form_iter_init(&it, p, n);
    const char *k, *v;
    size_t kl, vl;
    for (size_t i = 0; i < npairs; i++) {
        assert_true(form_next(&it, &k, &kl, &v, &vl));
        assert_int_equal(kl, strlen(kv[2 * i]));
        assert_memory_equal(k, kv[2 * i], kl);
        assert_int_equal(vl, strlen(kv[2 * i + 1]));
        assert_memory_equal(v, kv[2 * i + 1], vl);
        /* Slices point into the input. */
        assert_true(k >= p && k + kl <= p + n);
        assert_true(v >= p && v + vl <= p + n);
    }
    assert_false(form_next(&it, &k, &kl, &v, &vl));
    /* Exhausted stays exhausted. */
    assert_false(form_next(&it, &k, &kl, &v, &vl));
    free(p);
}

static void test_next_basic(void **state)
{
    (void)state;
    const char *const two[] = {"a", "1", "b", "2"};
    expect_pairs("a=1&b=2", 2, two);
    const char *const one[] = {"a", "1"};
    expect_pairs("&&a=1&", 1, one);
    expect_pairs("a=1", 1, one);
    expect_pairs("&a=1", 1, one);
    expect_pairs("a=1&&&", 1, one);
}

static void test_next_edge(void **state)
{
    (void)state;
    const char *const bare[] = {"a", ""};
    expect_pairs("a", 1, bare);
    expect_pairs("a=", 1, bare);
    const char *const nokey[] = {"", "b"};
    expect_pairs("=b", 1, nokey);
    const char *const eq[] = {"", ""};
    expect_pairs("=", 1, eq);
    expect_pairs("", 0, NULL);
    expect_pairs("&", 0, NULL);
    expect_pairs("&&&", 0, NULL);
    /* Only the first '=' separates key and value; values stay encoded. */
    const char *const multi[] = {"a", "b=c", "x%20y", "1+2", "k", ""};
    expect_pairs("a=b=c&x%20y=1+2&k", 3, multi);
}

static void test_next_bare_value_pointer(void **state)
{
    (void)state;
    /* A pair without '=' has an empty value (vlen 0). */
    const char *s = "flag&x=1";
    form_iter it;
    form_iter_init(&it, s, strlen(s));
    const char *k, *v;
    size_t kl, vl;
    assert_true(form_next(&it, &k, &kl, &v, &vl));
    assert_int_equal(kl, 4);
    assert_memory_equal(k, "flag", 4);
    assert_int_equal(vl, 0);
    assert_true(form_next(&it, &k, &kl, &v, &vl));
    assert_int_equal(kl, 1);
    assert_int_equal(vl, 1);
    assert_memory_equal(v, "1", 1);
    assert_false(form_next(&it, &k, &kl, &v, &vl));
}

static void test_next_respects_length(void **state)
{
    (void)state;
    /* The iterator stops at len, not at NUL nor at the end of the string. */
    const char *s = "a=1&b=2&c=3";
    form_iter it;
    form_iter_init(&it, s, 5); /* "a=1&b" */
    const char *k, *v;
    size_t kl, vl;
    assert_true(form_next(&it, &k, &kl, &v, &vl));
    assert_int_equal(kl, 1);
    assert_int_equal(vl, 1);
    assert_true(form_next(&it, &k, &kl, &v, &vl));
    assert_int_equal(kl, 1);
    assert_memory_equal(k, "b", 1);
    assert_int_equal(vl, 0);
    assert_false(form_next(&it, &k, &kl, &v, &vl));
    /* Embedded NUL bytes are ordinary bytes. */
    static const char nul[] = {'a', '=', '\0', 'x', '&', 'b', '=', '2'};
    form_iter_init(&it, nul, sizeof nul);
    assert_true(form_next(&it, &k, &kl, &v, &vl));
    assert_int_equal(kl, 1);
    assert_int_equal(vl, 2);
    assert_memory_equal(v, "\0x", 2);
    assert_true(form_next(&it, &k, &kl, &v, &vl));
    assert_memory_equal(k, "b", 1);
    assert_false(form_next(&it, &k, &kl, &v, &vl));
}

/* Decode into an exact-size heap buffer (decoding never grows). */
static ssize_t decode(const char *in, size_t n, char **outp)
{
    char *src = dup_exact(in, n);
    char *out = malloc(n ? n : 1);
    assert_non_null(out);
    ssize_t r = form_decode(src, n, out);
    free(src);
    *outp = out;
    if (r >= 0)
        assert_true((size_t)r <= n);
    return r;
}

static void expect_decode(const char *in, const char *want, size_t want_len)
{
    char *out;
    ssize_t r = decode(in, strlen(in), &out);
    if (r != (ssize_t)want_len)
        fail_msg("form_decode(\"%s\") gave %zd, want %zu", in, r, want_len);
    assert_memory_equal(out, want, want_len);
    free(out);
}

static void expect_decode_error(const char *in)
{
    char *out;
    ssize_t r = decode(in, strlen(in), &out);
    if (r != -1)
        fail_msg("form_decode(\"%s\") gave %zd, want -1", in, r);
    free(out);
}

static void test_decode(void **state)
{
    (void)state;
    expect_decode("", "", 0);
    expect_decode("abc", "abc", 3);
    expect_decode("+", " ", 1);
    expect_decode("++", "  ", 2);
    expect_decode("%20", " ", 1);
    expect_decode("%2B", "+", 1);
    expect_decode("%2b", "+", 1);
    expect_decode("%e2%82%AC", "\xe2\x82\xac", 3);
    expect_decode("%E2%82%ac", "\xe2\x82\xac", 3);
    expect_decode("a+b%2Bc", "a b+c", 5);
    expect_decode("%25", "%", 1);
    expect_decode("%2541", "%41", 3); /* decoded once only */
    expect_decode("%00", "\0", 1);
    expect_decode("%FF%fe", "\xff\xfe", 2);
    expect_decode("x%3D1%26y", "x=1&y", 5);
    expect_decode("%41%42%43", "ABC", 3);
    expect_decode("caf%C3%A9+%E2%82%AC%21", "caf\xc3\xa9 \xe2\x82\xac!", 10);
    /* Bytes that are not escapes pass through, including raw UTF-8. */
    expect_decode("\xc3\xa9=&", "\xc3\xa9=&", 4);
}

static void test_decode_malformed(void **state)
{
    (void)state;
    expect_decode_error("%");
    expect_decode_error("%4");
    expect_decode_error("%zz");
    expect_decode_error("%%41");
    expect_decode_error("%4g");
    expect_decode_error("%g4");
    expect_decode_error("% 1");
    expect_decode_error("%+1");
    expect_decode_error("%-1");
    expect_decode_error("abc%");
    expect_decode_error("abc%4");
    expect_decode_error("%41%");
    expect_decode_error("%41%4");
    expect_decode_error("a+b%2Bc%x");
    expect_decode_error("%\xc3\xa9");
}

static void test_decode_length_bound(void **state)
{
    (void)state;
    /* The length argument bounds decoding: "%41" cut to 2 bytes is
     * malformed, and bytes after len are not read. */
    const char *s = "%41%42";
    char out[8];
    assert_int_equal(form_decode(s, 2, out), -1);
    assert_int_equal(form_decode(s, 3, out), 1);
    assert_int_equal(out[0], 'A');
    assert_int_equal(form_decode(s, 5, out), -1);
    assert_int_equal(form_decode(s, 0, out), 0);
}

static void test_key_is(void **state)
{
    (void)state;
    assert_true(form_key_is("content", 7, "content"));
    assert_true(form_key_is("cont%65nt", 9, "content"));
    assert_true(form_key_is("%63%6F%6E%74%65%6E%74", 21, "content"));
    assert_true(form_key_is("%63%6f%6e%74%65%6e%74", 21, "content"));
    assert_true(form_key_is("ch%61nnel", 9, "channel"));
    assert_false(form_key_is("Content", 7, "content"));
    assert_false(form_key_is("contents", 8, "content"));
    assert_false(form_key_is("conten", 6, "content"));
    assert_false(form_key_is("cont%6", 6, "content"));
    assert_false(form_key_is("cont%6xnt", 9, "content"));
    assert_false(form_key_is("cont%65nt%00", 12, "content"));
    assert_false(form_key_is("cont+nt", 7, "content"));
    assert_false(form_key_is("", 0, "content"));
    assert_false(form_key_is("%2563ontent", 11, "content")); /* decodes to "%63ontent" */
    assert_true(form_key_is("a%20b", 5, "a b"));
    /* klen bounds the comparison. */
    assert_true(form_key_is("channelXYZ", 7, "channel"));
    assert_false(form_key_is("channel", 6, "channel"));
    /* An exact-size, unterminated key. */
    char *k = dup_exact("cont%65nt", 9);
    assert_true(form_key_is(k, 9, "content"));
    assert_false(form_key_is(k, 8, "content"));
    free(k);
}

/* form.h: "True when the encoded key k equals name once decoded." That must
 * hold for any name, not only short ones: a fully percent-encoded 70-byte
 * name is 210 bytes, more than form_key_is's 192-byte scratch buffer. */
static void test_key_is_long_name(void **state)
{
    (void)state;
    char name[71], key[211];
    for (int i = 0; i < 70; i++) {
        name[i] = (char)('a' + i % 26);
        key[3 * i] = '%';
        key[3 * i + 1] = "0123456789ABCDEF"[(unsigned char)name[i] >> 4];
        key[3 * i + 2] = "0123456789ABCDEF"[name[i] & 15];
    }
    name[70] = '\0';
    key[210] = '\0';
    /* 64 characters (192 encoded bytes) fit the scratch buffer. */
    char name64[65];
    memcpy(name64, name, 64);
    name64[64] = '\0';
    assert_true(form_key_is(key, 192, name64));
    assert_true(form_key_is(key, 210, name));
}

/* Same contract with '+': "a+b" decodes to "a b", but form_key_is only
 * decodes keys that contain a '%'. (Latent: no name in use has a space.) */
static void test_key_is_plus_without_percent(void **state)
{
    (void)state;
    assert_true(form_key_is("a%20b", 5, "a b"));
    assert_true(form_key_is("a+b%20c", 7, "a b c"));
    assert_true(form_key_is("a+b", 3, "a b"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_basic),
        cmocka_unit_test(test_next_edge),
        cmocka_unit_test(test_next_bare_value_pointer),
        cmocka_unit_test(test_next_respects_length),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_decode_malformed),
        cmocka_unit_test(test_decode_length_bound),
        cmocka_unit_test(test_key_is),
        cmocka_unit_test(test_key_is_long_name),
        cmocka_unit_test(test_key_is_plus_without_percent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
