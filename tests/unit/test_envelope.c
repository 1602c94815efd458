/* test_envelope.c - cmocka tests for the JSON envelopes and the pub/sub
 * payload (envelope.h): exact output bytes, JSON string escaping checked
 * against jansson, pub/sub format/parse round trips and refusals. No I/O.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

/* ---- env_json_string ---- */

static void expect_json_string(const char *in, size_t n, const char *want)
{
    buf b = BUF_INIT;
    env_json_string(&b, in, n);
    if (b.len != strlen(want) || memcmp(b.data, want, b.len) != 0)
        fail_msg("env_json_string gave [%s], want [%s]", b.data, want);
    assert_int_equal(b.data[b.len], '\0');
    buf_free(&b);
}

#define EJS(lit, want) expect_json_string(lit, sizeof(lit) - 1, want)

static void test_json_string_escapes(void **state)
{
    (void)state;
    EJS("", "\"\"");
    EJS("hello", "\"hello\"");
    EJS("a\"b", "\"a\\\"b\"");
    EJS("a\\b", "\"a\\\\b\"");
    EJS("\n", "\"\\n\"");
    EJS("\r", "\"\\r\"");
    EJS("\t", "\"\\t\"");
    EJS("\b", "\"\\b\"");
    EJS("\f", "\"\\f\"");
    EJS("\x01", "\"\\u0001\"");
    EJS("\x0b", "\"\\u000b\"");
    EJS("\x1b[0m", "\"\\u001b[0m\"");
    EJS("\x1f", "\"\\u001f\"");
    EJS("\x7f", "\"\\u007f\"");
    EJS(" ~/", "\" ~/\"");
    EJS("</script>", "\"</script>\"");
    EJS("\"\\\"\n", "\"\\\"\\\\\\\"\\n\"");
}

static void test_json_string_unicode(void **state)
{
    (void)state;
    EJS("\xe2\x80\xa8", "\"\\u2028\"");
    EJS("\xe2\x80\xa9", "\"\\u2029\"");
    EJS("a\xe2\x80\xa8"
        "b\xe2\x80\xa9"
        "c",
        "\"a\\u2028b\\u2029c\"");
    /* Neighbours of U+2028/U+2029 stay as they are. */
    EJS("\xe2\x80\xa7", "\"\xe2\x80\xa7\"");
    EJS("\xe2\x80\xaa", "\"\xe2\x80\xaa\"");
    EJS("\xe2\x81\xa8", "\"\xe2\x81\xa8\"");
    EJS("\xe2\x82\xac", "\"\xe2\x82\xac\"");
    EJS("caf\xc3\xa9", "\"caf\xc3\xa9\"");
    EJS("\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\"");
    EJS("\xef\xbb\xbf", "\"\xef\xbb\xbf\"");         /* BOM */
    EJS("\xc2\x80\xc2\x9f", "\"\xc2\x80\xc2\x9f\""); /* C1 controls are not escaped */
    EJS("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\"");
}

static void test_json_string_appends(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    buf_puts(&b, "x=");
    env_json_string(&b, "a\nb", 3);
    buf_putc(&b, ';');
    env_json_string(&b, "", 0);
    assert_string_equal(b.data, "x=\"a\\nb\";\"\"");
    assert_int_equal(b.len, strlen("x=\"a\\nb\";\"\""));
    /* The length argument bounds the input. */
    buf_reset(&b);
    env_json_string(&b, "abc\"def", 3);
    assert_string_equal(b.data, "\"abc\"");
    buf_free(&b);
}

static void test_json_string_worst_case(void **state)
{
    (void)state;
    /* Every byte needs 6 output bytes: the one up-front grow must be enough
     * (ASan watches the writes). */
    for (size_t n = 0; n < 300; n += 7) {
        char *in = malloc(n + 1);
        memset(in, 0x01, n);
        buf b = BUF_INIT;
        buf_puts(&b, "prefix");
        env_json_string(&b, in, n);
        assert_int_equal(b.len, 6 + 2 + 6 * n);
        for (size_t i = 0; i < n; i++)
            assert_memory_equal(b.data + 7 + 6 * i, "\\u0001", 6);
        buf_free(&b);
        free(in);
    }
    /* U+2028 repeated: 3 bytes in, 6 out. */
    buf b = BUF_INIT;
    char in[3 * 100];
    for (int i = 0; i < 100; i++)
        memcpy(in + 3 * i, "\xe2\x80\xa8", 3);
    env_json_string(&b, in, sizeof in);
    assert_int_equal(b.len, 2 + 600);
    buf_free(&b);
}

/* The literal must decode (jansson) back to exactly the input bytes, and
 * hold no raw control character, DEL, or raw U+2028/U+2029. */
static void check_round_trip(const char *s, size_t n)
{
    buf b = BUF_INIT;
    env_json_string(&b, s, n);
    for (size_t i = 0; i < b.len; i++) {
        unsigned char c = (unsigned char)b.data[i];
        if (c < 0x20 || c == 0x7f)
            fail_msg("raw byte 0x%02x in the literal at %zu", c, i);
    }
    assert_null(memmem(b.data, b.len, "\xe2\x80\xa8", 3));
    assert_null(memmem(b.data, b.len, "\xe2\x80\xa9", 3));
    json_error_t err;
    json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY, &err);
    if (!j)
        fail_msg("jansson refused [%s]: %s", b.data, err.text);
    assert_true(json_is_string(j));
    assert_int_equal(json_string_length(j), n);
    assert_memory_equal(json_string_value(j), s, n);
    /* Also through json_loads of the NUL-terminated literal. */
    json_t *j2 = json_loads(b.data, JSON_DECODE_ANY, &err);
    assert_non_null(j2);
    assert_true(json_equal(j, j2));
    json_decref(j2);
    json_decref(j);
    buf_free(&b);
}

static void test_json_string_round_trip(void **state)
{
    (void)state;
    char all[127];
    for (int c = 1; c <= 0x7f; c++) {
        char one = (char)c;
        check_round_trip(&one, 1);
        all[c - 1] = (char)c;
    }
    check_round_trip(all, sizeof all);
    static const char *const tricky[] = {
        "",
        "\"",
        "\\",
        "\\u0000",
        "\\\"",
        "\"\"\"",
        "</script><script>alert(1)</script>",
        "line1\nline2\r\n\ttab",
        "\xe2\x80\xa8\xe2\x80\xa9",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf",
        "\xef\xbf\xbf\xef\xbf\xbe\xef\xbb\xbf",
        "\xc2\x80\xc2\x85\xc2\x9f",
        "\x7f\x7f\x01\x1f \\n",
        "{\"content\":\"x\"}",
        "\xed\x9f\xbf\xee\x80\x80",
    };
    for (size_t i = 0; i < sizeof tricky / sizeof tricky[0]; i++)
        check_round_trip(tricky[i], strlen(tricky[i]));
    /* Every code point from U+0001 to U+10FFFF (no surrogates), in blocks. */
    buf s = BUF_INIT;
    for (uint32_t cp = 1; cp <= 0x10FFFF; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        char e[4];
        size_t k;
        if (cp < 0x80)
            e[0] = (char)cp, k = 1;
        else if (cp < 0x800)
            e[0] = (char)(0xC0 | cp >> 6), e[1] = (char)(0x80 | (cp & 0x3F)), k = 2;
        else if (cp < 0x10000)
            e[0] = (char)(0xE0 | cp >> 12), e[1] = (char)(0x80 | (cp >> 6 & 0x3F)),
            e[2] = (char)(0x80 | (cp & 0x3F)), k = 3;
        else
            e[0] = (char)(0xF0 | cp >> 18), e[1] = (char)(0x80 | (cp >> 12 & 0x3F)),
            e[2] = (char)(0x80 | (cp >> 6 & 0x3F)), e[3] = (char)(0x80 | (cp & 0x3F)), k = 4;
        buf_append(&s, e, k);
        if (s.len > 60000 || cp == 0x10FFFF) {
            check_round_trip(s.data, s.len);
            buf_reset(&s);
        }
    }
    buf_free(&s);
}

/* ---- answers ---- */

static pw_msg *mk_msg(uint64_t id, int64_t t, const char *json)
{
    pw_msg *m = malloc(sizeof *m);
    assert_non_null(m);
    m->id = id;
    m->time_ms = t;
    m->json = rbuf_new(json, strlen(json));
    return m;
}

static void free_msg(pw_msg *m)
{
    rbuf_unref(m->json);
    free(m);
}

static void expect_buf(buf *b, const char *want)
{
    if (b->len != strlen(want) || memcmp(b->data, want, b->len) != 0)
        fail_msg("got  [%s]\nwant [%s]", b->data, want);
}

/* The answer must also be valid JSON (an object, one trailing newline). */
static void expect_json_object(const buf *b)
{
    json_error_t err;
    json_t *j = json_loadb(b->data, b->len, 0, &err);
    if (!j)
        fail_msg("not JSON: %s [%s]", err.text, b->data);
    assert_true(json_is_object(j));
    json_decref(j);
}

static void test_status_no_messages(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    env_status(&b, "default", "E1", NULL, 0, false, false, 0, NULL);
    expect_buf(&b, "{\"channel\":\"default\",\"epoch\":\"E1\",\"id\":0,\"content\":\"\","
                   "\"messages\":[]}");
    expect_json_object(&b);
    buf_reset(&b);
    rbuf *newest = rbuf_new("\"last one\"", 10);
    env_status(&b, "c", "ep-2", NULL, 0, false, false, 41, newest);
    expect_buf(&b, "{\"channel\":\"c\",\"epoch\":\"ep-2\",\"id\":41,\"content\":\"last one\","
                   "\"messages\":[]}");
    expect_json_object(&b);
    buf_reset(&b);
    env_status(&b, "c", "E", NULL, 0, true, false, 41, newest);
    expect_buf(&b, "{\"channel\":\"c\",\"epoch\":\"E\",\"id\":41,\"content\":\"last one\","
                   "\"messages\":[],\"reset\":true}");
    rbuf_unref(newest);
    buf_free(&b);
}

static void test_status_one_message(void **state)
{
    (void)state;
    pw_msg *m = mk_msg(5, 1700000000123LL, "\"hi \\\"you\\\"\"");
    pw_msg *const msgs[] = {m};
    buf b = BUF_INIT;
    /* newest_id/newest_json are ignored when there are messages. */
    rbuf *other = rbuf_new("\"other\"", 7);
    env_status(&b, "room:1", "E1", msgs, 1, false, false, 99, other);
    expect_buf(&b,
               "{\"channel\":\"room:1\",\"epoch\":\"E1\",\"id\":5,\"content\":\"hi \\\"you\\\"\","
               "\"messages\":[{\"id\":5,\"content\":\"hi \\\"you\\\"\","
               "\"time\":1700000000123}]}");
    expect_json_object(&b);
    rbuf_unref(other);
    buf_free(&b);
    free_msg(m);
}

static void test_status_three_messages_flags(void **state)
{
    (void)state;
    pw_msg *m1 = mk_msg(7, 1000, "\"a\"");
    pw_msg *m2 = mk_msg(8, 2000, "\"b\\nc\"");
    pw_msg *m3 = mk_msg(9, -5, "\"\"");
    pw_msg *const msgs[] = {m1, m2, m3};
    const char *list = "\"messages\":[{\"id\":7,\"content\":\"a\",\"time\":1000},"
                       "{\"id\":8,\"content\":\"b\\nc\",\"time\":2000},"
                       "{\"id\":9,\"content\":\"\",\"time\":0}]";
    char want[512];
    buf b = BUF_INIT;

    env_status(&b, "c", "E", msgs, 3, false, false, 0, NULL);
    snprintf(want, sizeof want,
             "{\"channel\":\"c\",\"epoch\":\"E\",\"id\":9,\"content\":\"\",%s}", list);
    expect_buf(&b, want);
    expect_json_object(&b);

    buf_reset(&b);
    env_status(&b, "c", "E", msgs, 3, true, true, 0, NULL);
    snprintf(want, sizeof want,
             "{\"channel\":\"c\",\"epoch\":\"E\",\"id\":9,\"content\":\"\",%s,"
             "\"reset\":true,\"more\":true}",
             list);
    expect_buf(&b, want);
    expect_json_object(&b);

    buf_reset(&b);
    env_status(&b, "c", "E", msgs, 2, false, true, 0, NULL);
    expect_buf(&b, "{\"channel\":\"c\",\"epoch\":\"E\",\"id\":8,\"content\":\"b\\nc\","
                   "\"messages\":[{\"id\":7,\"content\":\"a\",\"time\":1000},"
                   "{\"id\":8,\"content\":\"b\\nc\",\"time\":2000}],\"more\":true}");

    /* Large ids are written in full. */
    buf_reset(&b);
    m1->id = 999999999999999ULL;
    env_status(&b, "c", "E", msgs, 1, false, false, 0, NULL);
    expect_buf(&b, "{\"channel\":\"c\",\"epoch\":\"E\",\"id\":999999999999999,\"content\":\"a\","
                   "\"messages\":[{\"id\":999999999999999,\"content\":\"a\",\"time\":1000}]}");
    buf_free(&b);
    free_msg(m1);
    free_msg(m2);
    free_msg(m3);
}

static void test_publish_ok_and_error(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    env_publish_ok(&b, 42, "chan_1", "E-9");
    expect_buf(&b, "{\"id\":42,\"channel\":\"chan_1\",\"epoch\":\"E-9\"}\n");
    expect_json_object(&b);
    buf_reset(&b);
    env_publish_ok(&b, 0, "c", "e");
    expect_buf(&b, "{\"id\":0,\"channel\":\"c\",\"epoch\":\"e\"}\n");
    buf_reset(&b);
    env_pub_result res[3] = {{.channel = "a", .id = 7, .epoch = "E1"},
                             {.channel = "b", .error = "Redis is \"down\""},
                             {.channel = "a", .id = 8, .epoch = "E1"}};
    env_publish_results(&b, res, 3);
    expect_buf(&b, "{\"results\":[{\"id\":7,\"channel\":\"a\",\"epoch\":\"E1\"},"
                   "{\"channel\":\"b\",\"error\":\"Redis is \\\"down\\\"\"},"
                   "{\"id\":8,\"channel\":\"a\",\"epoch\":\"E1\"}]}\n");
    expect_json_object(&b);
    buf_reset(&b);
    env_publish_results(&b, res, 1);
    expect_buf(&b, "{\"results\":[{\"id\":7,\"channel\":\"a\",\"epoch\":\"E1\"}]}\n");
    buf_reset(&b);
    env_error(&b, "missing field: content");
    expect_buf(&b, "{\"error\":\"missing field: content\"}\n");
    buf_reset(&b);
    env_error(&b, "bad \"x\"\\y\n\x01\xe2\x80\xa8");
    expect_buf(&b, "{\"error\":\"bad \\\"x\\\"\\\\y\\n\\u0001\\u2028\"}\n");
    expect_json_object(&b);
    buf_reset(&b);
    env_error(&b, "");
    expect_buf(&b, "{\"error\":\"\"}\n");
    buf_free(&b);
    env_channel_error(&b, "the token does not allow reading this channel", "p:bob");
    expect_buf(&b, "{\"error\":\"the token does not allow reading this channel\",\"channel\":\"p:bob\"}\n");
    buf_free(&b);
}

static void test_push_message_and_reset(void **state)
{
    (void)state;
    pw_msg *m = mk_msg(3, 1700000000000LL, "\"hi\"");
    buf b = BUF_INIT;
    env_push_message(&b, "c", "E", m);
    expect_buf(&b, "{\"channel\":\"c\",\"epoch\":\"E\",\"id\":3,\"content\":\"hi\","
                   "\"time\":1700000000000}");
    expect_json_object(&b);
    buf_reset(&b);
    m->time_ms = -1;
    env_push_message(&b, "c", "E", m);
    expect_buf(&b, "{\"channel\":\"c\",\"epoch\":\"E\",\"id\":3,\"content\":\"hi\",\"time\":0}");
    buf_reset(&b);
    env_push_reset(&b, "room.a", "E:2", 17);
    expect_buf(&b, "{\"channel\":\"room.a\",\"epoch\":\"E:2\",\"reset\":true,\"id\":17}");
    expect_json_object(&b);
    buf_reset(&b);
    env_push_reset(&b, "c", "E", 0);
    expect_buf(&b, "{\"channel\":\"c\",\"epoch\":\"E\",\"reset\":true,\"id\":0}");
    buf_free(&b);
    free_msg(m);
}

/* ---- pub/sub payload ---- */

static void test_pubsub_format(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    env_pubsub_format(&b, "E1", 42, 1700000000123LL, "\"hi there\"", 10);
    expect_buf(&b, "E1 42 1700000000123 \"hi there\"");
    buf_reset(&b);
    env_pubsub_format(&b, "E1", 0, -7, "\"\"", 2);
    expect_buf(&b, "E1 0 0 \"\"");
    buf_free(&b);
}

/* Parse from an exact-size heap copy so that over-reads show. */
static int parse_exact(const char *s, size_t n, pubsub_view *v, char **keep)
{
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    int rc = env_pubsub_parse(p, n, v);
    *keep = p;
    return rc;
}

static void test_pubsub_parse(void **state)
{
    (void)state;
    const char *s = "E1 42 1700000000123 \"hi there\"";
    pubsub_view v;
    char *p;
    assert_int_equal(parse_exact(s, strlen(s), &v, &p), 0);
    assert_int_equal(v.epoch_len, 2);
    assert_memory_equal(v.epoch, "E1", 2);
    assert_ptr_equal(v.epoch, p);
    assert_int_equal(v.id, 42);
    assert_int_equal(v.time_ms, 1700000000123LL);
    assert_int_equal(v.json_len, 10);
    assert_memory_equal(v.json, "\"hi there\"", 10);
    assert_ptr_equal(v.json, p + 20);
    free(p);

    /* The JSON part is everything after the third space, spaces included,
     * and may hold any bytes between its quotes. */
    static const char odd[] = "a 1 2 \"x y\0z \"";
    assert_int_equal(parse_exact(odd, sizeof odd - 1, &v, &p), 0);
    assert_int_equal(v.json_len, 8);
    assert_memory_equal(v.json, "\"x y\0z \"", 8);
    free(p);

    s = "e 0 0 \"\"";
    assert_int_equal(parse_exact(s, strlen(s), &v, &p), 0);
    assert_int_equal(v.id, 0);
    assert_int_equal(v.time_ms, 0);
    assert_int_equal(v.json_len, 2);
    free(p);
}

static void round_trip(const char *epoch, uint64_t id, int64_t t, const char *json)
{
    buf b = BUF_INIT;
    env_pubsub_format(&b, epoch, id, t, json, strlen(json));
    pubsub_view v;
    char *p;
    assert_int_equal(parse_exact(b.data, b.len, &v, &p), 0);
    assert_int_equal(v.epoch_len, strlen(epoch));
    assert_memory_equal(v.epoch, epoch, v.epoch_len);
    assert_int_equal(v.id, id);
    assert_int_equal(v.time_ms, t < 0 ? 0 : t);
    assert_int_equal(v.json_len, strlen(json));
    assert_memory_equal(v.json, json, v.json_len);
    /* Formatting the view again gives the same bytes. */
    char ep[PW_EPOCH_MAX + 1];
    memcpy(ep, v.epoch, v.epoch_len);
    ep[v.epoch_len] = '\0';
    buf b2 = BUF_INIT;
    env_pubsub_format(&b2, ep, v.id, v.time_ms, v.json, v.json_len);
    assert_int_equal(b2.len, b.len);
    assert_memory_equal(b2.data, b.data, b.len);
    free(p);
    buf_free(&b);
    buf_free(&b2);
}

static void test_pubsub_round_trip(void **state)
{
    (void)state;
    char ep64[PW_EPOCH_MAX + 1];
    const char *alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:";
    memcpy(ep64, alphabet, 64);
    ep64[64] = '\0';
    round_trip("E1", 1, 1700000000000LL, "\"hello\"");
    round_trip(ep64, 999999999999999ULL, 999999999999999LL, "\"x\"");
    round_trip("_-.:", 0, 0, "\"\"");
    round_trip("1700000000:abcdef", 12345, 1, "\"a \\\"quoted\\\" \\u2028 caf\xc3\xa9\"");
    round_trip("z", 7, -100, "\"   \"");
    round_trip(alphabet + 60, 10, 20, "\"tail\"");
}

static void expect_parse_fail(const char *s, size_t n)
{
    pubsub_view v;
    char *p;
    int rc = parse_exact(s, n, &v, &p);
    free(p);
    if (rc != -1)
        fail_msg("env_pubsub_parse accepted [%.*s]", (int)n, s);
}

#define PF(lit) expect_parse_fail(lit, sizeof(lit) - 1)

static void test_pubsub_refusals(void **state)
{
    (void)state;
    /* Missing fields. */
    PF("");
    PF("E1");
    PF("E1 ");
    PF("E1 42");
    PF("E1 42 ");
    PF("E1 42 17");
    PF("E1 42 17 ");
    PF("E1 42 17 \"");
    PF(" 42 17 \"x\"");
    PF("E1  42 17 \"x\"");
    PF("E1 42  17 \"x\"");
    PF("E1 42 17  \"x\"");
    /* Bad epoch characters. */
    PF("E!1 42 17 \"x\"");
    PF("E/1 42 17 \"x\"");
    PF("E\"1 42 17 \"x\"");
    PF("E\\1 42 17 \"x\"");
    PF("E\x01 42 17 \"x\"");
    PF("E\xc3\xa9 42 17 \"x\"");
    PF("E\t1 42 17 \"x\"");
    PF("E\0001 42 17 \"x\"");
    /* Epoch of 65 characters. */
    char big[128];
    memset(big, 'e', 65);
    memcpy(big + 65, " 1 2 \"x\"", 8);
    expect_parse_fail(big, 73);
    memset(big, 'e', 64);
    memcpy(big + 64, " 1 2 \"x\"", 8);
    pubsub_view v;
    char *p;
    assert_int_equal(parse_exact(big, 72, &v, &p), 0);
    assert_int_equal(v.epoch_len, 64);
    free(p);
    /* Bad numbers: 16 digits, signs, letters. */
    PF("E 1234567890123456 17 \"x\"");
    PF("E 42 1234567890123456 \"x\"");
    PF("E -1 17 \"x\"");
    PF("E +1 17 \"x\"");
    PF("E 4a 17 \"x\"");
    PF("E 42 -17 \"x\"");
    PF("E 42 1.5 \"x\"");
    PF("E 0x1 17 \"x\"");
    /* JSON not a quoted string. */
    PF("E 42 17 x");
    PF("E 42 17 \"x");
    PF("E 42 17 x\"");
    PF("E 42 17 {\"a\":1}");
    PF("E 42 17 null");
    PF("E 42 17 5");
    PF("E 42 17 \"x\" ");
    PF("E 42 17 \"x\"\n");
}

static void test_parse_u64(void **state)
{
    (void)state;
    uint64_t v = 77;
    assert_int_equal(env_parse_u64("0", 1, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(env_parse_u64("123", 3, &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(env_parse_u64("007", 3, &v), 0);
    assert_int_equal(v, 7);
    assert_int_equal(env_parse_u64("999999999999999", 15, &v), 0);
    assert_int_equal(v, 999999999999999ULL);
    assert_int_equal(env_parse_u64("000000000000001", 15, &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(env_parse_u64("123", 2, &v), 0); /* n bounds the input */
    assert_int_equal(v, 12);
    v = 5;
    assert_int_equal(env_parse_u64("1000000000000000", 16, &v), -1);
    assert_int_equal(env_parse_u64("0000000000000000", 16, &v), -1);
    assert_int_equal(env_parse_u64("18446744073709551616", 20, &v), -1);
    assert_int_equal(env_parse_u64("", 0, &v), -1);
    assert_int_equal(env_parse_u64("12a", 3, &v), -1);
    assert_int_equal(env_parse_u64("-1", 2, &v), -1);
    assert_int_equal(env_parse_u64("+1", 2, &v), -1);
    assert_int_equal(env_parse_u64(" 1", 2, &v), -1);
    assert_int_equal(env_parse_u64("1 ", 2, &v), -1);
    assert_int_equal(env_parse_u64("1\0", 2, &v), -1);
    assert_int_equal(env_parse_u64("/", 1, &v), -1);
    assert_int_equal(env_parse_u64(":", 1, &v), -1);
    assert_int_equal(v, 5); /* untouched on failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_string_escapes),
        cmocka_unit_test(test_json_string_unicode),
        cmocka_unit_test(test_json_string_appends),
        cmocka_unit_test(test_json_string_worst_case),
        cmocka_unit_test(test_json_string_round_trip),
        cmocka_unit_test(test_status_no_messages),
        cmocka_unit_test(test_status_one_message),
        cmocka_unit_test(test_status_three_messages_flags),
        cmocka_unit_test(test_publish_ok_and_error),
        cmocka_unit_test(test_push_message_and_reset),
        cmocka_unit_test(test_pubsub_format),
        cmocka_unit_test(test_pubsub_parse),
        cmocka_unit_test(test_pubsub_round_trip),
        cmocka_unit_test(test_pubsub_refusals),
        cmocka_unit_test(test_parse_u64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
