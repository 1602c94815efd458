/* test_origin.c - cmocka tests for the WebSocket Origin allow-list
 * (origin_allowed in src/origin.c).
 *
 * Origin and Host are handed over as exact-size heap copies without a NUL,
 * as the relay hands over slices of the request buffer, so that ASan
 * catches any read past the header values. No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "origin.h"

/* origin_allowed(allow, origin, host) with origin/host NULL meaning the
 * header is absent; both are copied to exact-size, unterminated buffers. */
static bool allowed(const char *allow, const char *origin, const char *host)
{
    char *o = NULL, *h = NULL;
    size_t ol = 0, hl = 0;
    if (origin) {
        ol = strlen(origin);
        o = malloc(ol ? ol : 1);
        assert_non_null(o);
        memcpy(o, origin, ol);
    }
    if (host) {
        hl = strlen(host);
        h = malloc(hl ? hl : 1);
        assert_non_null(h);
        memcpy(h, host, hl);
    }
    bool r = origin_allowed(allow, o, ol, h, hl);
    free(o);
    free(h);
    return r;
}

/* ---- the default rule: Origin host:port must equal Host --------------------------- */

static void test_default_same_host_and_port(void **state)
{
    (void)state;
    assert_true(allowed(NULL, "http://h:8080", "h:8080"));
    assert_true(allowed("", "http://h:8080", "h:8080"));
    assert_true(allowed(NULL, "http://127.0.0.1:8080", "127.0.0.1:8080"));
    assert_true(allowed(NULL, "https://app.example.com", "app.example.com"));
}

static void test_default_other_port_or_host_refused(void **state)
{
    (void)state;
    assert_false(allowed(NULL, "http://h:8080", "h:8081"));
    assert_false(allowed(NULL, "http://h:8081", "h:8080"));
    assert_false(allowed(NULL, "http://h:8080", "h"));
    assert_false(allowed(NULL, "http://h", "h:8080"));
    assert_false(allowed(NULL, "http://evil.example", "h:8080"));
    assert_false(allowed(NULL, "http://evil.example", "127.0.0.1:8080"));
    /* Prefixes and suffixes of the host are other hosts. */
    assert_false(allowed(NULL, "http://h.example.evil:8080", "h.example:8080"));
    assert_false(allowed(NULL, "http://h.exampl:8080", "h.example:8080"));
    assert_false(allowed(NULL, "http://xh:8080", "h:8080"));
    assert_false(allowed(NULL, "http://h:80800", "h:8080"));
}

static void test_default_ports_normalised(void **state)
{
    (void)state;
    /* The scheme's default port may be written or left out on either side. */
    assert_true(allowed(NULL, "http://h", "h:80"));
    assert_true(allowed(NULL, "http://h:80", "h"));
    assert_true(allowed(NULL, "http://h:80", "h:80"));
    assert_true(allowed(NULL, "https://h", "h:443"));
    assert_true(allowed(NULL, "https://h:443", "h"));
    assert_true(allowed(NULL, "https://h", "h"));
    /* ... but only the origin scheme's own default. */
    assert_false(allowed(NULL, "http://h", "h:443"));
    assert_false(allowed(NULL, "https://h", "h:80"));
    /* ":80" is only a port when it is the whole port. */
    assert_false(allowed(NULL, "http://h", "h:8080"));
    assert_false(allowed(NULL, "http://h:8080", "h:80"));
    assert_false(allowed(NULL, "http://h:180", "h"));
}

static void test_default_case_insensitive_host(void **state)
{
    (void)state;
    assert_true(allowed(NULL, "http://H.Example.COM:8080", "h.example.com:8080"));
    assert_true(allowed(NULL, "http://h.example.com:8080", "H.EXAMPLE.com:8080"));
    assert_true(allowed(NULL, "HTTP://h:8080", "h:8080"));
    assert_true(allowed(NULL, "HTTPS://h", "h:443"));
}

static void test_default_trailing_slash_tolerated(void **state)
{
    (void)state;
    assert_true(allowed(NULL, "http://h:8080/", "h:8080"));
    assert_true(allowed(NULL, "https://h/", "h:443"));
    /* A path is not an origin. */
    assert_false(allowed(NULL, "http://h:8080/x", "h:8080"));
    assert_false(allowed(NULL, "http://h:8080/x/", "h:8080"));
}

static void test_opaque_and_malformed_origins_refused(void **state)
{
    (void)state;
    assert_false(allowed(NULL, "null", "h:8080"));
    assert_false(allowed(NULL, "null", "null"));
    assert_false(allowed(NULL, "", "h:8080"));
    assert_false(allowed(NULL, "h:8080", "h:8080"));
    assert_false(allowed(NULL, "://h:8080", "h:8080"));
    assert_false(allowed(NULL, "http://", "h:8080"));
    assert_false(allowed(NULL, "http:///", "h:8080"));
    assert_false(allowed(NULL, "http:/h:8080", "h:8080"));
    assert_false(allowed(NULL, "file://", "h:8080"));
    /* The same garbage is refused by an explicit list too. */
    assert_false(allowed("http://h:8080", "null", "h:8080"));
}

static void test_no_origin_allowed(void **state)
{
    (void)state;
    /* Not a browser: nothing to protect, whatever the rule and Host. */
    assert_true(allowed(NULL, NULL, "h:8080"));
    assert_true(allowed("", NULL, "h:8080"));
    assert_true(allowed("http://a.example", NULL, "h:8080"));
    assert_true(allowed(NULL, NULL, NULL));
}

static void test_default_without_host_refused(void **state)
{
    (void)state;
    assert_false(allowed(NULL, "http://h:8080", NULL));
    assert_false(allowed(NULL, "http://h:8080", ""));
    assert_false(allowed("", "http://h", NULL));
}

/* ---- "*" and explicit lists --------------------------------------------------------- */

static void test_star_allows_any_origin(void **state)
{
    (void)state;
    assert_true(allowed("*", "http://evil.example", "h:8080"));
    assert_true(allowed("*", "https://a.example:8443", "h:8080"));
    assert_true(allowed("*", "http://h:8080", NULL));
    assert_true(allowed("*", NULL, "h:8080"));
}

static void test_explicit_list(void **state)
{
    (void)state;
    const char *one = "http://a.example";
    assert_true(allowed(one, "http://a.example", "h:8080"));
    assert_true(allowed(one, "http://a.example:80", "h:8080"));
    assert_true(allowed(one, "http://A.EXAMPLE", "whatever"));
    assert_true(allowed(one, "http://a.example/", "h:8080"));
    assert_true(allowed(one, "http://a.example", NULL)); /* Host irrelevant with a list */
    /* The request's own host is no longer implied. */
    assert_false(allowed(one, "http://h:8080", "h:8080"));
    assert_false(allowed(one, "http://evil.example", "h:8080"));
    assert_false(allowed(one, "http://a.example:8080", "h:8080"));
    assert_false(allowed(one, "http://a.example.evil", "h:8080"));
    assert_false(allowed(one, "http://b.a.example", "h:8080"));
    assert_false(allowed(one, "http://a.exampl", "h:8080"));
}

static void test_explicit_list_with_spaces(void **state)
{
    (void)state;
    const char *list = "http://a.example,  https://b.example:8443 , http://c.example:80,http://[::1]:8080 ";
    assert_true(allowed(list, "http://a.example", "h"));
    assert_true(allowed(list, "https://b.example:8443", "h"));
    assert_true(allowed(list, "http://c.example", "h"));
    assert_true(allowed(list, "http://c.example:80", "h"));
    assert_true(allowed(list, "http://[::1]:8080", "h"));
    assert_false(allowed(list, "https://b.example", "h"));
    assert_false(allowed(list, "http://b.example:8443", "h"));
    assert_false(allowed(list, "http://d.example", "h"));
    assert_false(allowed(list, "http://[::1]", "h"));
    /* Empty items and stray commas match nothing (and do not crash). */
    assert_false(allowed(",", "http://a.example", "h"));
    assert_false(allowed(" , ,", "http://a.example", "h"));
    assert_true(allowed(",,http://a.example,,", "http://a.example", "h"));
    /* A malformed entry is skipped, the next one still counts. */
    assert_true(allowed("a.example,http://a.example", "http://a.example", "h"));
    assert_false(allowed("a.example", "http://a.example", "h"));
}

static void test_scheme_mismatch_refused(void **state)
{
    (void)state;
    assert_false(allowed("http://a.example", "https://a.example", "h"));
    assert_false(allowed("https://a.example", "http://a.example", "h"));
    assert_false(allowed("http://a.example:443", "https://a.example", "h"));
    assert_false(allowed("https://a.example:80", "http://a.example", "h"));
    assert_true(allowed("HTTPS://a.example", "https://a.example", "h"));
}

/* ---- IPv6 literals ---------------------------------------------------------------- */

static void test_ipv6(void **state)
{
    (void)state;
    assert_true(allowed(NULL, "http://[::1]:8080", "[::1]:8080"));
    assert_false(allowed(NULL, "http://[::1]:8080", "[::1]:8081"));
    assert_false(allowed(NULL, "http://[::1]:8080", "[::2]:8080"));
    assert_false(allowed(NULL, "http://[::1]:8080", "127.0.0.1:8080"));
    assert_true(allowed(NULL, "http://[::1]", "[::1]:80"));
    assert_true(allowed(NULL, "http://[::1]:80", "[::1]"));
    assert_true(allowed(NULL, "https://[::1]", "[::1]:443"));
    assert_true(allowed(NULL, "http://[2001:DB8::1]:8080", "[2001:db8::1]:8080"));
    /* An address ending in "80" has no port to strip. */
    assert_false(allowed(NULL, "http://[::80]", "[::]"));
    assert_true(allowed(NULL, "http://[::80]", "[::80]"));
    assert_true(allowed("http://[::1]:8080", "http://[::1]:8080", "h"));
    assert_false(allowed("http://[::1]:8080", "http://[::1]:8081", "h"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_same_host_and_port),
        cmocka_unit_test(test_default_other_port_or_host_refused),
        cmocka_unit_test(test_default_ports_normalised),
        cmocka_unit_test(test_default_case_insensitive_host),
        cmocka_unit_test(test_default_trailing_slash_tolerated),
        cmocka_unit_test(test_opaque_and_malformed_origins_refused),
        cmocka_unit_test(test_no_origin_allowed),
        cmocka_unit_test(test_default_without_host_refused),
        cmocka_unit_test(test_star_allows_any_origin),
        cmocka_unit_test(test_explicit_list),
        cmocka_unit_test(test_explicit_list_with_spaces),
        cmocka_unit_test(test_scheme_mismatch_refused),
        cmocka_unit_test(test_ipv6),
    };
    return cmocka_run_group_tests_name("origin", tests, NULL, NULL);
}
