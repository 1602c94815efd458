/* test_cluster_slots.c - Redis Cluster slot routing (src/cluster_slots.c):
 * CRC16 and hash tags against values redis-server 7.0 gives for CLUSTER
 * KEYSLOT, CLUSTER SLOTS replies built here as hiredis would, MOVED/ASK.
 * No I/O. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_slots.h"

static void test_key_slots(void **state)
{
    (void)state;
    assert_int_equal(slots_crc16("123456789", 9), 0x31C3); /* the XMODEM check value */
    static const struct {
        const char *key;
        unsigned slot;
    } cases[] = {
        /* from redis-server 7.0.15: CLUSTER KEYSLOT */
        {"123456789", 12739},
        {"foo", 12182},
        {"bar", 5061},
        {"hello", 866},
        {"{user1000}.following", 3443},
        {"foo{}{bar}", 8363},
        {"foo{{bar}}zap", 4015},
        {"foo{bar}{zap}", 5061},
        {"pw:{room.1}:log", 9572},
        {"{", 4092},
        {"}{", 12793},
        {"a{b", 13340},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned got = slots_key_slot(cases[i].key, strlen(cases[i].key));
        if (got != cases[i].slot)
            fail_msg("slot of '%s': %u, want %u", cases[i].key, got, cases[i].slot);
    }
    /* every key of a channel in one slot */
    assert_int_equal(slots_key_slot("pw:{c}:log", 10), slots_key_slot("pw:{c}:meta", 11));
    assert_int_equal(slots_key_slot("x{c}", 4), slots_key_slot("c", 1));
}

/* ---- replies as hiredis builds them ----------------------------------------------- */

static redisReply *rep(int type)
{
    redisReply *r = calloc(1, sizeof *r);
    r->type = type;
    return r;
}

static redisReply *integer(long long v)
{
    redisReply *r = rep(REDIS_REPLY_INTEGER);
    r->integer = v;
    return r;
}

static redisReply *str(const char *s)
{
    redisReply *r = rep(REDIS_REPLY_STRING);
    r->str = strdup(s);
    r->len = strlen(s);
    return r;
}

static redisReply *arr(size_t n, ...)
{
    redisReply *r = rep(REDIS_REPLY_ARRAY);
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        r->element[i] = va_arg(ap, redisReply *);
    va_end(ap);
    return r;
}

static redisReply *node(const char *host, int port)
{
    return arr(3, str(host), integer(port), str("0880d357110e1bab9e38bb393020f83ff6e5d62c"));
}

static void test_load(void **state)
{
    (void)state;
    slot_map *m = malloc(sizeof *m);
    slots_init(m);
    assert_null(slots_owner(m, 0));
    /* three masters (one with a replica), the middle one by an empty host */
    redisReply *r =
        arr(3, arr(4, integer(0), integer(5460), node("10.0.0.1", 7000), node("10.0.0.4", 7003)),
            arr(3, integer(5461), integer(10922), node("", 7001)),
            arr(3, integer(10923), integer(16383), node("10.0.0.3", 7002)));
    assert_int_equal(slots_load(m, r, "10.0.0.2"), 16384);
    freeReplyObject(r);
    assert_string_equal(slots_owner(m, 0), "10.0.0.1:7000");
    assert_string_equal(slots_owner(m, 5460), "10.0.0.1:7000");
    assert_string_equal(slots_owner(m, 5461), "10.0.0.2:7001");
    assert_string_equal(slots_owner(m, 16383), "10.0.0.3:7002");
    assert_int_equal(m->nnodes, 3); /* replicas are not masters */
    /* an unknown endpoint, a gap: unowned; the nodes stay listed */
    r = arr(2, arr(3, integer(0), integer(99), node("?", 7000)),
            arr(3, integer(200), integer(299), node("10.0.0.9", 7009)));
    assert_int_equal(slots_load(m, r, "10.0.0.2"), 100);
    freeReplyObject(r);
    assert_null(slots_owner(m, 0));
    assert_null(slots_owner(m, 150));
    assert_string_equal(slots_owner(m, 250), "10.0.0.9:7009");
    assert_int_equal(m->nnodes, 4);
    /* malformed replies leave the map as it was */
    redisReply *bad[] = {
        str("OK"),
        arr(1, arr(2, integer(0), integer(10))),
        arr(1, arr(3, integer(10), integer(5), node("h", 1))),
        arr(1, arr(3, integer(0), integer(16384), node("h", 1))),
        arr(1, arr(3, integer(0), integer(1), arr(1, str("h")))),
        arr(1, arr(3, str("0"), integer(1), node("h", 1))),
        arr(1, arr(3, integer(0), integer(1), arr(2, integer(1), integer(2)))),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(slots_load(m, bad[i], "x"), -1);
        freeReplyObject(bad[i]);
    }
    assert_int_equal(slots_load(m, NULL, "x"), -1);
    assert_string_equal(slots_owner(m, 250), "10.0.0.9:7009");
    assert_null(slots_owner(m, SLOTS_COUNT));
    free(m);
}

static void test_redirects(void **state)
{
    (void)state;
    slots_redirect rd;
    assert_int_equal(slots_parse_redirect("MOVED 3999 127.0.0.1:6381", &rd), 1);
    assert_false(rd.ask);
    assert_int_equal(rd.slot, 3999);
    assert_string_equal(rd.host, "127.0.0.1");
    assert_int_equal(rd.port, 6381);
    assert_int_equal(slots_parse_redirect("ASK 16383 ::1:7002", &rd), 1);
    assert_true(rd.ask);
    assert_string_equal(rd.host, "::1");
    assert_int_equal(rd.port, 7002);
    assert_int_equal(slots_parse_redirect("MOVED 12 :7005", &rd), 1);
    assert_string_equal(rd.host, "");
    assert_int_equal(slots_parse_redirect("ERR unknown command", &rd), 0);
    assert_int_equal(slots_parse_redirect("CLUSTERDOWN Hash slot not served", &rd), 0);
    assert_int_equal(slots_parse_redirect("MOVEDX 1 h:1", &rd), 0);
    const char *bad[] = {"MOVED ",       "MOVED 16384 h:1", "MOVED x h:1",     "MOVED 1 h",
                         "MOVED 1 h:",   "MOVED 1 h:0",     "MOVED 1 h:65536", "MOVED 1 h:12x",
                         "MOVED 1  h:1", "MOVED 1",         "ASK -1 h:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (slots_parse_redirect(bad[i], &rd) != -1)
            fail_msg("'%s' accepted", bad[i]);

    slot_map *m = malloc(sizeof *m);
    slots_init(m);
    assert_int_equal(slots_parse_redirect("MOVED 3999 10.0.0.5:7005", &rd), 1);
    assert_int_equal(slots_apply(m, &rd, "10.0.0.1:7000"), 0);
    assert_string_equal(slots_owner(m, 3999), "10.0.0.5:7005");
    assert_null(slots_owner(m, 4000));
    /* the same node again: the same index */
    assert_int_equal(slots_parse_redirect("MOVED 4000 10.0.0.5:7005", &rd), 1);
    assert_int_equal(slots_apply(m, &rd, "10.0.0.1:7000"), 0);
    /* an empty host is the node that answered */
    assert_int_equal(slots_parse_redirect("MOVED 1 :7009", &rd), 1);
    assert_int_equal(slots_apply(m, &rd, "10.0.0.1:7000"), 1);
    assert_string_equal(slots_owner(m, 1), "10.0.0.1:7009");
    assert_int_equal(slots_apply(m, &rd, NULL), -1);
    /* ASK changes nothing */
    assert_int_equal(slots_parse_redirect("ASK 3999 10.0.0.6:7006", &rd), 1);
    assert_int_equal(slots_apply(m, &rd, "10.0.0.1:7000"), -1);
    assert_string_equal(slots_owner(m, 3999), "10.0.0.5:7005");
    free(m);
}

static void test_node_table(void **state)
{
    (void)state;
    slot_map *m = malloc(sizeof *m);
    slots_init(m);
    char host[32];
    for (int i = 0; i < SLOTS_MAX_NODES; i++) {
        snprintf(host, sizeof host, "10.1.%d.%d", i / 250, i % 250);
        assert_int_equal(slots_node(m, host, 7000), i);
    }
    assert_int_equal(slots_node(m, "10.9.9.9", 7000), -1); /* full */
    assert_int_equal(slots_node(m, "10.1.0.0", 7000), 0);  /* known */
    assert_int_equal(slots_node(m, "", 7000), -1);
    assert_int_equal(slots_node(m, "h", 0), -1);
    char longhost[400];
    memset(longhost, 'h', sizeof longhost - 1);
    longhost[sizeof longhost - 1] = '\0';
    slots_init(m);
    assert_int_equal(slots_node(m, longhost, 1), -1);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_slots),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_node_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
