/* test_sentinel_watch.c - cmocka tests for the +switch-master payload parser
 * (sentinel_watch.h): the new address of our master, nothing for another
 * master's or a malformed announcement. No I/O. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "sentinel_watch.h"

static int parse(const char *payload, const char *name, redis_hostport *out)
{
    memset(out, 'X', sizeof *out);
    return sw_parse_switch(payload, strlen(payload), name, out);
}

static void test_switch_parsed(void **state)
{
    (void)state;
    redis_hostport m;
    assert_int_equal(parse("mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster", &m), 1);
    assert_string_equal(m.host, "127.0.0.1");
    assert_int_equal(m.port, 6380);
    assert_int_equal(parse("m ::1 1 2001:db8::1 65535", "m", &m), 1);
    assert_string_equal(m.host, "2001:db8::1");
    assert_int_equal(m.port, 65535);
    assert_int_equal(parse("m a 1 redis-b.example 7000", "m", &m), 1);
    assert_string_equal(m.host, "redis-b.example");
}

static void test_switch_refused(void **state)
{
    (void)state;
    redis_hostport m;
    const char *bad[] = {
        "other 127.0.0.1 6379 127.0.0.1 6380", /* another master */
        "mymasterx 127.0.0.1 6379 127.0.0.1 6380",
        "mymaster 127.0.0.1 6379 127.0.0.1", /* four fields */
        "mymaster 127.0.0.1 6379 127.0.0.1 6380 extra",
        "mymaster 127.0.0.1 6379 127.0.0.1 0",
        "mymaster 127.0.0.1 6379 127.0.0.1 65536",
        "mymaster 127.0.0.1 6379 127.0.0.1 80x",
        "mymaster 127.0.0.1 6379 127.0.0.1 -1",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(parse(bad[i], "mymaster", &m), 0);
    /* A host longer than the address field, and a payload past the buffer. */
    char big[1000];
    memset(big, 'h', sizeof big);
    memcpy(big, "mymaster a 1 ", 13);
    strcpy(big + 13 + 300, " 1");
    assert_int_equal(parse(big, "mymaster", &m), 0);
    memset(big, 'h', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(sw_parse_switch(big, strlen(big), "mymaster", &m), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_switch_parsed),
        cmocka_unit_test(test_switch_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
