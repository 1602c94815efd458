/* fuzz_api.c - libFuzzer target for the HTTP API request rules (api.h).
 *
 * Input layout: one control byte, then fields separated by 0xFF bytes:
 *   query, body, method, content-type, accept, idempotency-key,
 *   last-event-id, authorization, token
 * The control byte picks a method, a content type and limits from small
 * tables (or takes them raw from the fields), so the fuzzer reaches the
 * body parsers without having to guess media types first.
 *
 * Strings are NUL-terminated heap copies; the body is an exact-size copy
 * without terminator so that ASan catches reads past body_len. Accepted
 * requests are checked against the documented guarantees and freed.
 *
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
 *     fuzz/fuzz_api.c src/api.c src/form.c src/utf8.c src/envelope.c src/buf.c \
 *     -ljansson -o /tmp/fuzz_api
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "envelope.h"
#include "utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { F_QUERY, F_BODY, F_METHOD, F_CT, F_ACCEPT, F_IDEM, F_LEI, F_AUTHZ, F_TOKEN, F_COUNT };

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static char *dup_str(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    if (n)
        memcpy(s, p, n);
    s[n] = '\0'; /* an embedded NUL just ends the string early */
    return s;
}

static bool channel_ok(const char *c)
{
    return api_channel_valid(c, strlen(c));
}

static void check_msg(const api_msg *m, const api_limits *lim)
{
    CHECK(channel_ok(m->channel));
    CHECK(m->content != NULL);
    CHECK(m->content_len <= lim->max_content);
    CHECK(m->content[m->content_len] == '\0');
    CHECK(memchr(m->content, '\0', m->content_len) == NULL);
    CHECK(utf8_valid((const uint8_t *)m->content, m->content_len));

    /* Accepted content is carried faithfully: its JSON literal decodes back
     * to the same bytes. */
    buf b = BUF_INIT;
    env_json_string(&b, m->content, m->content_len);
    json_error_t jerr;
    json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY, &jerr);
    CHECK(j && json_is_string(j));
    CHECK(json_string_length(j) == m->content_len);
    CHECK(memcmp(json_string_value(j), m->content, m->content_len) == 0);
    json_decref(j);
    buf_free(&b);
}

static void check_publish(const api_publish *p, const api_limits *lim)
{
    CHECK(p->n >= 1 && p->n <= API_BATCH_MAX && p->msgs != NULL);
    CHECK(p->batch || p->n == 1);
    size_t kl = strlen(p->idem_key);
    CHECK(kl <= PW_IDEM_KEY_MAX);
    for (size_t i = 0; i < kl; i++)
        CHECK((unsigned char)p->idem_key[i] > 0x20 && (unsigned char)p->idem_key[i] < 0x7f);
    for (size_t i = 0; i < p->n; i++) {
        check_msg(&p->msgs[i], lim);
        /* each message's key: the request's, or KEY#i; distinct in a batch */
        char key[PW_IDEM_KEY_MAX + 16];
        api_publish_idem_key(p, i, key, sizeof key);
        CHECK(strlen(key) < sizeof key - 1);
        CHECK(!kl == !key[0]);
        CHECK(strncmp(key, p->idem_key, kl) == 0);
        CHECK(!p->batch || !kl || strtoul(key + kl + 1, NULL, 10) == i);
    }
}

static void check_poll(const api_poll *p, const api_limits *lim, size_t cap)
{
    CHECK(p->n >= 1 && p->n <= cap);
    CHECK(p->multi == (p->n > 1));
    CHECK(p->timeout <= lim->max_timeout || p->timeout == lim->default_timeout);
    for (size_t i = 0; i < p->n; i++) {
        const api_chan *c = &p->chans[i];
        CHECK(channel_ok(c->channel));
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(p->chans[j].channel, c->channel) != 0);
        CHECK(c->epoch[0] == '\0' || channel_ok(c->epoch));
        if (c->has_since)
            CHECK(c->since <= 999999999999999ULL);
        else
            CHECK(c->since == 0);
    }
}

static void check_error(const api_error *e)
{
    CHECK(e->message != NULL && e->message[0] != '\0');
    CHECK(e->status == 400 || e->status == 401 || e->status == 403 || e->status == 405 ||
          e->status == 413 || e->status == 415);
    CHECK((e->status == 405) == (e->allow != NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    data++, size--;

    const uint8_t *fp[F_COUNT];
    size_t fl[F_COUNT];
    size_t nf = 0, start = 0;
    for (size_t i = 0; i <= size && nf < F_COUNT; i++) {
        if (i == size || data[i] == 0xFF) {
            fp[nf] = data + start;
            fl[nf] = i - start;
            nf++;
            start = i + 1;
        }
    }
    for (; nf < F_COUNT; nf++)
        fp[nf] = data + size, fl[nf] = 0;

    static const char *const methods[] = {"POST", "GET", "HEAD", NULL};
    static const char *const types[] = {
        "application/x-www-form-urlencoded",
        "application/json",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/json; charset=\"UTF-8\"",
        "text/plain",
        NULL, /* raw field */
        NULL, /* absent */
        "application/json;charset=latin1",
    };
    static const api_limits limits[] = {
        {65536, 30, 60},
        {16, 30, 60},
        {0, 0, 0},
        {3, 5, 1},
    };

    char *query = dup_str(fp[F_QUERY], fl[F_QUERY]);
    char *method = dup_str(fp[F_METHOD], fl[F_METHOD]);
    char *ct = dup_str(fp[F_CT], fl[F_CT]);
    char *accept = dup_str(fp[F_ACCEPT], fl[F_ACCEPT]);
    char *idem = dup_str(fp[F_IDEM], fl[F_IDEM]);
    char *lei = dup_str(fp[F_LEI], fl[F_LEI]);
    char *authz = dup_str(fp[F_AUTHZ], fl[F_AUTHZ]);
    char *token = dup_str(fp[F_TOKEN], fl[F_TOKEN]);
    char *body = malloc(fl[F_BODY] ? fl[F_BODY] : 1);
    if (!body)
        abort();
    if (fl[F_BODY])
        memcpy(body, fp[F_BODY], fl[F_BODY]);

    api_http in;
    memset(&in, 0, sizeof in);
    in.method = methods[ctl & 3] ? methods[ctl & 3] : method;
    in.path = query;
    unsigned t = (ctl >> 2) & 7;
    in.content_type = t == 5 ? ct : types[t];
    in.query = (ctl & 0x20) && !fl[F_QUERY] ? NULL : query;
    in.accept = (ctl & 0x20) ? "text/html, text/event-stream;q=0.9" : accept;
    in.idempotency_key = idem;
    in.last_event_id = lei;
    in.authorization = authz;
    in.body = fl[F_BODY] || (ctl & 0x40) ? body : NULL;
    in.body_len = fl[F_BODY];
    const api_limits *lim = &limits[(ctl >> 6) & 3];

    (void)api_route(in.path);
    (void)api_status_text((int)fl[F_QUERY] + 100 * (ctl & 7));
    (void)api_channel_valid(body, fl[F_BODY]);

    api_publish pub;
    api_error err;
    memset(&err, 0, sizeof err);
    if (api_parse_publish(&in, lim, &pub, &err) == 0) {
        check_publish(&pub, lim);
        api_publish_free(&pub);
        CHECK(pub.msgs == NULL && pub.n == 0);
    } else {
        check_error(&err);
        CHECK(pub.msgs == NULL && pub.n == 0);
    }

    api_poll poll;
    api_chan chans[8];
    memset(&err, 0, sizeof err);
    if (api_parse_poll(&in, lim, &poll, chans, 8, &err) == 0)
        check_poll(&poll, lim, 8);
    else
        check_error(&err);

    memset(&err, 0, sizeof err);
    if (api_check_publish_auth(in.authorization, token, &err) == 0) {
        /* Allowed only when open or when the token matches exactly. */
        if (token[0]) {
            CHECK(strncasecmp(authz, "Bearer ", 7) == 0);
            const char *g = authz + 7;
            while (*g == ' ')
                g++;
            CHECK(strcmp(g, token) == 0);
        }
    } else {
        CHECK(err.status == 401 || err.status == 403);
        CHECK(token[0] != '\0');
    }

    free(query);
    free(method);
    free(ct);
    free(accept);
    free(idem);
    free(lei);
    free(authz);
    free(token);
    free(body);
    return 0;
}
