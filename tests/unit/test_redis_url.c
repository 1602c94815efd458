/* test_redis_url.c - cmocka tests for REDIS_URL parsing (redis_url.h):
 * every accepted form with its exact fields, and refusals with a reason.
 * No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "redis_url.h"

typedef struct want {
    const char *host;
    int port;
    const char *path;
    const char *user;
    const char *password;
    int db;
} want;

static void expect_url(const char *s, const want *w)
{
    redis_url u;
    const char *why = NULL;
    /* Garbage first: the parser must reset every field. */
    memset(&u, 'X', sizeof u);
    int rc = redis_url_parse(s, &u, &why);
    if (rc != 0)
        fail_msg("[%s] refused: %s", s, why ? why : "(no reason)");
    assert_string_equal(u.host, w->host);
    assert_int_equal(u.port, w->port);
    assert_string_equal(u.path, w->path);
    assert_string_equal(u.user, w->user);
    assert_string_equal(u.password, w->password);
    assert_int_equal(u.db, w->db);
}

static void expect_refused(const char *s)
{
    redis_url u;
    const char *why = NULL;
    int rc = redis_url_parse(s, &u, &why);
    if (rc != -1)
        fail_msg("[%s] accepted (host [%s] port %d path [%s] db %d)", s ? s : "(null)", u.host,
                 u.port, u.path, u.db);
    assert_non_null(why);
    assert_true(strlen(why) > 0);
}

static void test_tcp_forms(void **state)
{
    (void)state;
    expect_url("redis://localhost", &(want){"localhost", 6379, "", "", "", 0});
    expect_url("redis://h:6380/2", &(want){"h", 6380, "", "", "", 2});
    expect_url("redis://:pa%40ss@h", &(want){"h", 6379, "", "", "pa@ss", 0});
    expect_url("redis://user:pw@h:1/0", &(want){"h", 1, "", "user", "pw", 0});
    expect_url("redis://[::1]:6379", &(want){"::1", 6379, "", "", "", 0});
    expect_url("redis://[::1]", &(want){"::1", 6379, "", "", "", 0});
    expect_url("redis://[2001:db8::7]:7000/1", &(want){"2001:db8::7", 7000, "", "", "", 1});
    expect_url("h:7000", &(want){"h", 7000, "", "", "", 0});
    expect_url("h", &(want){"h", 6379, "", "", "", 0});
    expect_url("127.0.0.1:6379", &(want){"127.0.0.1", 6379, "", "", "", 0});
    expect_url("redis://h/", &(want){"h", 6379, "", "", "", 0});
    expect_url("redis://h:65535/1048576", &(want){"h", 65535, "", "", "", 1048576});
    expect_url("redis://secret@h", &(want){"h", 6379, "", "", "secret", 0});
    expect_url("redis://u:p%3Aq%2F%25@h", &(want){"h", 6379, "", "u", "p:q/%", 0});
    /* '+' is literal in userinfo; the last '@' ends it; ':' splits once. */
    expect_url("redis://a+b:c+d@h", &(want){"h", 6379, "", "a+b", "c+d", 0});
    expect_url("redis://u:p@ss@h:2", &(want){"h", 2, "", "u", "p@ss", 0});
    expect_url("redis://u:a:b@h", &(want){"h", 6379, "", "u", "a:b", 0});
    expect_url("redis://:@h", &(want){"h", 6379, "", "", "", 0});
    expect_url("redis://my-redis.example.com:16379/15",
               &(want){"my-redis.example.com", 16379, "", "", "", 15});
}

static void test_unix_forms(void **state)
{
    (void)state;
    expect_url("unix:///tmp/r.sock", &(want){"", 6379, "/tmp/r.sock", "", "", 0});
    expect_url("unix:///tmp/r.sock?db=3", &(want){"", 6379, "/tmp/r.sock", "", "", 3});
    expect_url("unix:///", &(want){"", 6379, "/", "", "", 0});
    /* The longest path that fits sun_path (107 bytes + NUL). */
    char url[200], path[120];
    memset(path, 'p', sizeof path);
    path[0] = '/';
    path[107] = '\0';
    strcpy(url, "unix://");
    strcat(url, path);
    expect_url(url, &(want){"", 6379, path, "", "", 0});
    path[107] = 'p';
    path[108] = '\0';
    strcpy(url, "unix://");
    strcat(url, path);
    expect_refused(url);
}

static void test_cluster_forms(void **state)
{
    (void)state;
    redis_url u;
    const char *why;
    assert_int_equal(redis_url_parse("redis+cluster://a:7000,10.0.0.2,[::1]:7002/", &u, &why), 0);
    assert_true(redis_url_is_cluster(&u));
    assert_false(redis_url_is_sentinel(&u));
    assert_int_equal(u.nhosts, 3);
    assert_string_equal(u.hosts[0].host, "a");
    assert_int_equal(u.hosts[0].port, 7000);
    assert_string_equal(u.hosts[1].host, "10.0.0.2");
    assert_int_equal(u.hosts[1].port, 6379);
    assert_string_equal(u.hosts[2].host, "::1");
    assert_int_equal(u.hosts[2].port, 7002);
    assert_int_equal(u.db, 0);
    assert_int_equal(redis_url_parse("redis+cluster://u:p%40w@n1:1", &u, &why), 0);
    assert_string_equal(u.user, "u");
    assert_string_equal(u.password, "p@w");
    assert_int_equal(u.nhosts, 1);
    assert_int_equal(redis_url_parse("redis://h", &u, &why), 0);
    assert_false(redis_url_is_cluster(&u));
    const char *bad[] = {
        "redis+cluster://",
        "redis+cluster://n1/1",
        "redis+cluster://n1?x=1",
        "redis+cluster://n1,,n2",
        "redis+cluster://n1:0",
        "redis+cluster://a,b,c,d,e,f,g,h,i",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect_refused(bad[i]);
    char out[128];
    assert_string_equal(redis_url_redact("redis+cluster://u:secret@n1:1,n2:2", out, sizeof out),
                        "redis+cluster://u:***@n1:1,n2:2");
}

static void test_refusals(void **state)
{
    (void)state;
    expect_refused(NULL);
    expect_refused("");
    expect_refused("http://x");
    expect_refused("rediss://h");
    expect_refused("tcp://h:1");
    expect_refused("redis://h:0");
    expect_refused("redis://h:70000");
    expect_refused("redis://h:65536");
    expect_refused("redis://h:-1");
    expect_refused("redis://h:+1");
    expect_refused("redis://h: 1");
    expect_refused("redis://h:");
    expect_refused("redis://h:12ab");
    expect_refused("redis://h:1234567890");
    expect_refused("redis://h/x");
    expect_refused("redis://h/1x");
    expect_refused("redis://h/-1");
    expect_refused("redis://h/1048577");
    expect_refused("redis://h/1/2");
    expect_refused("redis://");
    expect_refused("redis://:6379");
    expect_refused("redis://u:p@");
    expect_refused("redis://u:p@:1");
    expect_refused("redis:///0");
    expect_refused("redis://[::1");
    expect_refused("redis://[::1]x");
    expect_refused("redis://[::1]:");
    expect_refused("redis://[]:6379");
    expect_refused("redis://:pa%4@h");
    expect_refused("redis://:pa%zz@h");
    expect_refused("redis://us%er:p@h");
    expect_refused("unix://rel/path");
    expect_refused("unix://");
    expect_refused("unix://?db=1");
    expect_refused("unix:///tmp/r.sock?db=");
    expect_refused("unix:///tmp/r.sock?db=x");
    expect_refused("unix:///tmp/r.sock?x=1");
    expect_refused("unix:///tmp/r.sock?db=1&x=2");
    /* Over-long fields. */
    char url[700];
    strcpy(url, "redis://");
    memset(url + 8, 'h', 256);
    url[8 + 256] = '\0';
    expect_refused(url); /* host of 256 */
    url[8 + 255] = '\0';
    expect_url(url, &(want){url + 8, 6379, "", "", "", 0}); /* 255 fits */
    strcpy(url, "redis://:");
    memset(url + 9, 'p', 256);
    strcpy(url + 9 + 256, "@h");
    expect_refused(url); /* password of 256 */
    strcpy(url, "redis://");
    memset(url + 8, 'u', 128);
    strcpy(url + 8 + 128, ":p@h");
    expect_refused(url); /* user of 128 */
}

static void test_percent_decoding(void **state)
{
    (void)state;
    /* Percent escapes are decoded in user and password only, and the size
     * limit applies to the encoded form. */
    char url[800];
    strcpy(url, "redis://:");
    size_t o = strlen(url);
    for (int i = 0; i < 85; i++) {
        memcpy(url + o, "%41", 3);
        o += 3;
    }
    strcpy(url + o, "@h");
    char pw[86];
    memset(pw, 'A', 85);
    pw[85] = '\0';
    expect_url(url, &(want){"h", 6379, "", "", pw, 0});
    expect_url("redis://%75ser:%70w@h", &(want){"h", 6379, "", "user", "pw", 0});
}

static void expect_sentinel(const char *s, const char *name, int db, const char *pw,
                            const char *spw, int n, const char *const *hosts, const int *ports)
{
    redis_url u;
    const char *why = NULL;
    memset(&u, 'X', sizeof u);
    if (redis_url_parse(s, &u, &why) != 0)
        fail_msg("[%s] refused: %s", s, why ? why : "(no reason)");
    assert_true(redis_url_is_sentinel(&u));
    assert_string_equal(u.master_name, name);
    assert_string_equal(u.host, "");
    assert_string_equal(u.path, "");
    assert_int_equal(u.db, db);
    assert_string_equal(u.password, pw);
    assert_string_equal(u.sentinel_password, spw);
    assert_int_equal(u.nhosts, n);
    for (int i = 0; i < n; i++) {
        assert_string_equal(u.hosts[i].host, hosts[i]);
        assert_int_equal(u.hosts[i].port, ports[i]);
    }
}

static void test_sentinel_forms(void **state)
{
    (void)state;
    expect_sentinel("redis+sentinel://s1/mymaster", "mymaster", 0, "", "", 1,
                    (const char *[]){"s1"}, (const int[]){26379});
    expect_sentinel("redis+sentinel://10.0.0.1:26380,s2,[::1]:5000/m/3", "m", 3, "", "", 3,
                    (const char *[]){"10.0.0.1", "s2", "::1"}, (const int[]){26380, 26379, 5000});
    expect_sentinel("redis+sentinel://:p%40w@s1:1,s2:2/mymaster?sentinel_password=s%26p",
                    "mymaster", 0, "p@w", "s&p", 2, (const char *[]){"s1", "s2"},
                    (const int[]){1, 2});
    expect_sentinel("redis+sentinel://a,b,c,d,e,f,g,h/x", "x", 0, "", "", 8,
                    (const char *[]){"a", "b", "c", "d", "e", "f", "g", "h"},
                    (const int[]){26379, 26379, 26379, 26379, 26379, 26379, 26379, 26379});
    /* A plain URL is not Sentinel. */
    redis_url u;
    const char *why;
    assert_int_equal(redis_url_parse("redis://h", &u, &why), 0);
    assert_false(redis_url_is_sentinel(&u));
    assert_int_equal(u.nhosts, 0);
    const char *bad[] = {
        "redis+sentinel://s1",
        "redis+sentinel://s1/",
        "redis+sentinel:///m",
        "redis+sentinel://s1,/m",
        "redis+sentinel://,s1/m",
        "redis+sentinel://s1:0/m",
        "redis+sentinel://s1:x/m",
        "redis+sentinel://s1/m/x",
        "redis+sentinel://s1/m/1/2",
        "redis+sentinel://s1/m?x=1",
        "redis+sentinel://s1/m?sentinel_password=a&b=c",
        "redis+sentinel://s1/m?sentinel_password=%zz",
        "redis+sentinel://s1/m n",
        "redis+sentinel://a,b,c,d,e,f,g,h,i/x",
        "redis+sentinel://[::1/m",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect_refused(bad[i]);
}

static void expect_redacted(const char *s, const char *shown)
{
    char out[512];
    memset(out, 'X', sizeof out);
    assert_string_equal(redis_url_redact(s, out, sizeof out), shown);
}

/* Every form keeps host, port and database and hides the password only. */
static void test_redaction(void **state)
{
    (void)state;
    expect_redacted("redis://127.0.0.1:6379", "redis://127.0.0.1:6379");
    expect_redacted("redis://:s3cret@redis:6379/2", "redis://:***@redis:6379/2");
    expect_redacted("redis://user:s3cret@redis", "redis://user:***@redis");
    expect_redacted("redis://s3cret@redis", "redis://***@redis");
    expect_redacted(":s3cret@host:1", ":***@host:1");
    expect_redacted("redis://u:p@ss@h", "redis://u:***@h"); /* the last '@' ends it */
    expect_redacted("redis://:p%40ss@h", "redis://:***@h");
    expect_redacted("unix:///run/redis.sock?db=3", "unix:///run/redis.sock?db=3");
    expect_redacted("redis+sentinel://:pw@s1,s2/m?sentinel_password=spw",
                    "redis+sentinel://:***@s1,s2/m?sentinel_password=***");
    expect_redacted("redis+sentinel://s1/m?sentinel_password=s@p",
                    "redis+sentinel://s1/m?sentinel_password=***");
    expect_redacted("redis+sentinel://u:pw@s1/m", "redis+sentinel://u:***@s1/m");
    expect_redacted("", "");
    expect_redacted(NULL, "");
    /* Truncated to the buffer, always terminated, never the password. */
    char small[12];
    assert_string_equal(redis_url_redact("redis://:s3cret@redis:6379", small, sizeof small),
                        "redis://:**");
    char one[1];
    assert_string_equal(redis_url_redact("redis://x", one, 1), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_forms),
        cmocka_unit_test(test_unix_forms),
        cmocka_unit_test(test_sentinel_forms),
        cmocka_unit_test(test_cluster_forms),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_percent_decoding),
        cmocka_unit_test(test_redaction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
