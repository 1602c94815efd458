/* fuzz_pubsub.c - libFuzzer target for the pub/sub payload
 * ("EPOCH ID TIME JSON", envelope.h).
 *
 * The input is parsed from an exact-size heap copy (ASan catches reads past
 * the end). On success the view is checked against the format's rules and
 * formatted back with env_pubsub_format:
 *   - when ID and TIME are written canonically (no leading zeros, as
 *     env_pubsub_format and the Lua publisher write them), the result must
 *     equal the input byte for byte;
 *   - otherwise (env_parse_u64 accepts "007") the result must parse to the
 *     same view and be a fixed point of parse+format.
 *
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_pubsub.c src/envelope.c src/buf.c -o /tmp/fuzz_pubsub
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static bool epoch_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || c == ':';
}

/* Format v into b (the epoch needs a terminated copy). */
static void format_view(buf *b, const pubsub_view *v)
{
    char ep[PW_EPOCH_MAX + 1];
    CHECK(v->epoch_len >= 1 && v->epoch_len <= PW_EPOCH_MAX);
    memcpy(ep, v->epoch, v->epoch_len);
    ep[v->epoch_len] = '\0';
    env_pubsub_format(b, ep, v->id, v->time_ms, v->json, v->json_len);
}

static bool same_view(const pubsub_view *a, const pubsub_view *b)
{
    return a->epoch_len == b->epoch_len && memcmp(a->epoch, b->epoch, a->epoch_len) == 0 &&
           a->id == b->id && a->time_ms == b->time_ms && a->json_len == b->json_len &&
           memcmp(a->json, b->json, a->json_len) == 0;
}

/* True when the number field starting at p (up to the next space) has no
 * leading zero, i.e. is written as buf_put_u64 writes it. */
static bool canonical_number(const char *p, const char *end)
{
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    CHECK(sp != NULL);
    return sp - p == 1 || p[0] != '0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *p = malloc(size ? size : 1);
    if (!p)
        abort();
    if (size)
        memcpy(p, data, size);
    pubsub_view v;
    if (env_pubsub_parse(p, size, &v) != 0) {
        free(p);
        return 0;
    }
    const char *end = p + size;
    /* The view points into the input and follows the rules. */
    CHECK(v.epoch == p);
    CHECK(v.epoch_len >= 1 && v.epoch_len <= PW_EPOCH_MAX);
    for (size_t i = 0; i < v.epoch_len; i++)
        CHECK(epoch_char(v.epoch[i]));
    CHECK(v.id <= 999999999999999ULL);
    CHECK(v.time_ms >= 0 && v.time_ms <= 999999999999999LL);
    CHECK(v.json >= p && v.json + v.json_len == end);
    CHECK(v.json_len >= 2 && v.json[0] == '"' && v.json[v.json_len - 1] == '"');

    buf b = BUF_INIT;
    format_view(&b, &v);

    const char *id_field = p + v.epoch_len + 1;
    const char *time_field = memchr(id_field, ' ', (size_t)(end - id_field));
    CHECK(time_field != NULL);
    time_field++;
    bool canonical = canonical_number(id_field, end) && canonical_number(time_field, end);
    if (canonical) {
        CHECK(b.len == size);
        CHECK(memcmp(b.data, p, size) == 0);
    } else {
        CHECK(b.len < size);
    }

    /* Whatever the input, the formatted payload parses to the same view and
     * formatting it again changes nothing. */
    char *q = malloc(b.len);
    if (!q)
        abort();
    memcpy(q, b.data, b.len);
    pubsub_view w;
    CHECK(env_pubsub_parse(q, b.len, &w) == 0);
    CHECK(same_view(&v, &w));
    buf b2 = BUF_INIT;
    format_view(&b2, &w);
    CHECK(b2.len == b.len && memcmp(b2.data, b.data, b.len) == 0);

    buf_free(&b2);
    free(q);
    buf_free(&b);
    free(p);
    return 0;
}
