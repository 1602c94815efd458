/* api.c - request validation for /chat and /status. No I/O here.
 *
 * Every refusal names the problem in plain words; the caller turns
 * (status, message) into a JSON error body.
 */
#include "api.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "form.h"
#include "origin.h"
#include "utf8.h"

enum api_route api_route(const char *path)
{
    if (!path)
        return ROUTE_NOT_FOUND;
    if (strcmp(path, "/chat") == 0)
        return ROUTE_CHAT;
    if (strcmp(path, "/status") == 0 || strcmp(path, "/ws") == 0)
        return ROUTE_STATUS;
    if (strcmp(path, "/healthz") == 0)
        return ROUTE_HEALTHZ;
    if (strcmp(path, "/channels") == 0 || strncmp(path, "/channels/", 10) == 0)
        return ROUTE_CHANNELS;
    return ROUTE_NOT_FOUND;
}

const char *api_status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

static bool channel_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == ':' || c == '-';
}

bool api_channel_valid(const char *s, size_t n)
{
    if (n < 1 || n > PW_CHANNEL_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!channel_char((unsigned char)s[i]))
            return false;
    return true;
}

static int fail(api_error *err, int status, const char *msg)
{
    err->status = status;
    err->message = msg;
    err->allow = NULL;
    return -1;
}

/* Set channel from a (decoded) value; a second, different value is an error. */
static int set_channel(char *channel, bool *have, const char *v, size_t n, api_error *err)
{
    if (!api_channel_valid(v, n))
        return fail(err, 400, "invalid channel: use 1-64 characters of A-Z a-z 0-9 _ . : -");
    if (*have && (strlen(channel) != n || memcmp(channel, v, n) != 0))
        return fail(err, 400, "two different channel values");
    memcpy(channel, v, n);
    channel[n] = '\0';
    *have = true;
    return 0;
}

/* Decode one query/form value into a bounded stack buffer. */
static int decode_small(const char *v, size_t vlen, char *out, size_t cap, size_t *outlen)
{
    if (vlen > cap * 3)
        return -1;
    char tmp[PW_CHANNEL_MAX * 3 + 8];
    if (vlen > sizeof tmp)
        return -1;
    ssize_t n = form_decode(v, vlen, tmp);
    if (n < 0 || (size_t)n > cap)
        return -1;
    memcpy(out, tmp, (size_t)n);
    *outlen = (size_t)n;
    return 0;
}

static int query_channel(const char *query, char *channel, bool *have, api_error *err)
{
    if (!query)
        return 0;
    form_iter it;
    const char *k, *v;
    size_t kl, vl;
    form_iter_init(&it, query, strlen(query));
    while (form_next(&it, &k, &kl, &v, &vl)) {
        if (!form_key_is(k, kl, "channel"))
            continue;
        char val[PW_CHANNEL_MAX + 1];
        size_t n;
        if (decode_small(v, vl, val, PW_CHANNEL_MAX, &n) < 0)
            return fail(err, 400, "invalid channel: use 1-64 characters of A-Z a-z 0-9 _ . : -");
        if (set_channel(channel, have, val, n, err) < 0)
            return -1;
    }
    return 0;
}

/* Media type check: "type/subtype" optionally followed by parameters, of
 * which only charset=utf-8 is accepted. Returns 1 form, 2 json, 0 other,
 * -1 unsupported charset. */
static int media_type(const char *ct)
{
    if (!ct)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, "; \t");
    int kind = 0;
    if (n == 33 && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0)
        kind = 1;
    else if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        kind = 2;
    else
        return 0;
    const char *p = ct + n;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        if (!*p)
            break;
        size_t plen = strcspn(p, ";");
        const char *val = NULL;
        if (plen >= 8 && strncasecmp(p, "charset=", 8) == 0)
            val = p + 8;
        if (!val)
            return -1;
        size_t vlen = plen - 8;
        while (vlen && (val[vlen - 1] == ' ' || val[vlen - 1] == '\t'))
            vlen--;
        if (vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"')
            val++, vlen -= 2;
        if (!((vlen == 5 && strncasecmp(val, "utf-8", 5) == 0) ||
              (vlen == 4 && strncasecmp(val, "utf8", 4) == 0)))
            return -1;
        p += plen;
    }
    return kind;
}

static int check_content(const char *s, size_t n, const api_limits *lim, api_error *err)
{
    if (n > lim->max_content)
        return fail(err, 413, "content too large");
    if (memchr(s, '\0', n))
        return fail(err, 400, "content contains a NUL character");
    if (!utf8_valid((const uint8_t *)s, n))
        return fail(err, 400, "content is not valid UTF-8");
    return 0;
}

static int parse_form_body(const api_http *in, const api_limits *lim, api_msg *out,
                           bool *have_channel, api_error *err)
{
    form_iter it;
    const char *k, *v;
    size_t kl, vl;
    bool have_content = false;
    form_iter_init(&it, in->body ? in->body : "", in->body_len);
    while (form_next(&it, &k, &kl, &v, &vl)) {
        if (form_key_is(k, kl, "content")) {
            if (have_content)
                return fail(err, 400, "content given twice");
            /* Cheap early refusal before decoding: every decoded byte needs
             * at least one and at most three encoded bytes. */
            if (vl / 3 > lim->max_content)
                return fail(err, 413, "content too large");
            out->content = xmalloc(vl + 1);
            ssize_t n = form_decode(v, vl, out->content);
            if (n < 0)
                return fail(err, 400, "malformed percent-encoding in content");
            out->content[n] = '\0';
            out->content_len = (size_t)n;
            have_content = true;
            if (check_content(out->content, out->content_len, lim, err) < 0)
                return -1;
        } else if (form_key_is(k, kl, "channel")) {
            char val[PW_CHANNEL_MAX + 1];
            size_t n;
            if (decode_small(v, vl, val, PW_CHANNEL_MAX, &n) < 0)
                return fail(err, 400,
                            "invalid channel: use 1-64 characters of A-Z a-z 0-9 _ . : -");
            if (set_channel(out->channel, have_channel, val, n, err) < 0)
                return -1;
        }
    }
    if (!have_content)
        return fail(err, 400, "missing field: content");
    return 0;
}

/* One {"content": ..., "channel": ...} object into m; the channel is the
 * object's, else `deflt` (the query's, or "default"). */
static int parse_json_msg(json_t *o, const api_limits *lim, const char *deflt, bool have_deflt,
                          api_msg *m, api_error *err)
{
    json_t *content = json_object_get(o, "content");
    if (!content)
        return fail(err, 400, "missing field: content");
    if (!json_is_string(content))
        return fail(err, 400, "content must be a string");
    bool have = have_deflt;
    strcpy(m->channel, deflt);
    json_t *ch = json_object_get(o, "channel");
    if (ch) {
        if (!json_is_string(ch))
            return fail(err, 400, "channel must be a string");
        if (set_channel(m->channel, &have, json_string_value(ch), json_string_length(ch), err) < 0)
            return -1;
    }
    size_t n = json_string_length(content);
    if (check_content(json_string_value(content), n, lim, err) < 0)
        return -1;
    m->content = xstrndup(json_string_value(content), n);
    m->content_len = n;
    return 0;
}

static int parse_json_body(const api_http *in, const api_limits *lim, api_publish *out,
                           const char *channel, bool have_channel, api_error *err)
{
    json_error_t jerr;
    /* jansson refuses invalid UTF-8, "\u0000" (without JSON_ALLOW_NUL) and
     * lone surrogates: exactly what cannot be carried faithfully. */
    json_t *root = json_loadb(in->body ? in->body : "", in->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(err, 400, "body is not valid JSON (or contains NUL or invalid Unicode)");
    int rc = -1;
    if (!json_is_object(root)) {
        fail(err, 400, "JSON body must be an object");
        goto out;
    }
    json_t *list = json_object_get(root, "messages");
    if (!list) {
        out->msgs = xcalloc(1, sizeof *out->msgs);
        out->n = 1;
        rc = parse_json_msg(root, lim, channel, have_channel, &out->msgs[0], err);
        goto out;
    }
    /* A batch: every item is checked before anything is published. */
    if (json_object_get(root, "content") || json_object_get(root, "channel")) {
        fail(err, 400, "a batch gives content and channel per message, in \"messages\"");
        goto out;
    }
    if (!json_is_array(list) || json_array_size(list) < 1 || json_array_size(list) > API_BATCH_MAX) {
        fail(err, 400, "messages must be an array of 1 to 1000 objects");
        goto out;
    }
    out->batch = true;
    out->msgs = xcalloc(json_array_size(list), sizeof *out->msgs);
    for (size_t k = 0; k < json_array_size(list); k++) {
        json_t *o = json_array_get(list, k);
        out->n = k + 1; /* so that api_publish_free frees what was parsed */
        if (!json_is_object(o)) {
            fail(err, 400, "each of messages must be an object");
            goto out;
        }
        if (parse_json_msg(o, lim, channel, have_channel, &out->msgs[k], err) < 0)
            goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static bool idem_key_valid(const char *k)
{
    size_t n = strlen(k);
    if (n < 1 || n > PW_IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
            return false;
    return true;
}

int api_parse_publish(const api_http *in, const api_limits *lim, api_publish *out,
                      api_error *err)
{
    memset(out, 0, sizeof *out);
    if (!in->method || strcmp(in->method, "POST") != 0) {
        fail(err, 405, "method not allowed: use POST");
        err->allow = "POST";
        return -1;
    }
    bool have_channel = false;
    char channel[PW_CHANNEL_MAX + 1] = "default";
    if (query_channel(in->query, channel, &have_channel, err) < 0)
        return -1;
    if (in->idempotency_key && in->idempotency_key[0]) {
        if (!idem_key_valid(in->idempotency_key))
            return fail(err, 400, "invalid Idempotency-Key: 1-128 visible ASCII characters");
        strcpy(out->idem_key, in->idempotency_key);
    }
    int kind = media_type(in->content_type);
    int rc;
    if (kind == 1) {
        out->msgs = xcalloc(1, sizeof *out->msgs);
        out->n = 1;
        strcpy(out->msgs[0].channel, channel);
        rc = parse_form_body(in, lim, &out->msgs[0], &have_channel, err);
    } else if (kind == 2)
        rc = parse_json_body(in, lim, out, channel, have_channel, err);
    else if (kind < 0)
        rc = fail(err, 415, "unsupported charset: only utf-8");
    else
        rc = fail(err, 415,
                  "unsupported Content-Type: use application/x-www-form-urlencoded or "
                  "application/json");
    if (rc < 0) {
        api_publish_free(out);
        return -1;
    }
    return 0;
}

void api_publish_free(api_publish *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->msgs[i].content);
    free(p->msgs);
    p->msgs = NULL;
    p->n = 0;
}

void api_publish_idem_key(const api_publish *p, size_t i, char *out, size_t cap)
{
    if (!p->idem_key[0])
        snprintf(out, cap, "%s", "");
    else if (p->batch)
        snprintf(out, cap, "%s#%zu", p->idem_key, i);
    else
        snprintf(out, cap, "%s", p->idem_key);
}

static bool epoch_valid(const char *s, size_t n)
{
    /* Epochs are opaque to clients but made by us from this alphabet; a
     * longer or stranger one cannot be current, yet it is refused rather
     * than treated as a reset so that garbage is reported as such. */
    return api_channel_valid(s, n);
}

static bool accepts_event_stream(const char *accept)
{
    if (!accept)
        return false;
    const char *p = accept;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ",;");
        size_t t = n;
        while (t && (p[t - 1] == ' ' || p[t - 1] == '\t'))
            t--;
        if (t == 17 && strncasecmp(p, "text/event-stream", 17) == 0)
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* The api_chan of name in out, or NULL. */
static api_chan *find_chan(api_poll *out, const char *name, size_t n)
{
    for (size_t i = 0; i < out->n; i++)
        if (strlen(out->chans[i].channel) == n && memcmp(out->chans[i].channel, name, n) == 0)
            return &out->chans[i];
    return NULL;
}

/* channel=a,b,c (decoded) into out->chans. */
static int parse_channel_list(const char *v, size_t n, api_poll *out, size_t cap, api_error *err)
{
    static const char bad[] = "invalid channel: use 1-64 characters of A-Z a-z 0-9 _ . : -";
    for (size_t i = 0; i <= n;) {
        size_t e = i;
        while (e < n && v[e] != ',')
            e++;
        if (!api_channel_valid(v + i, e - i))
            return fail(err, 400, bad);
        if (find_chan(out, v + i, e - i))
            return fail(err, 400, "a channel is named twice");
        if (out->n == cap)
            return fail(err, 400, "too many channels for one connection (--max-subscriptions)");
        api_chan *c = &out->chans[out->n++];
        memset(c, 0, sizeof *c);
        memcpy(c->channel, v + i, e - i);
        c->channel[e - i] = '\0';
        i = e + 1;
    }
    return 0;
}

/* Split a position "[EPOCH:]ID" (s[0..n)) at its last ':'. */
static int parse_position(const char *s, size_t n, uint64_t *id, char *epoch)
{
    size_t colon = n;
    while (colon > 0 && s[colon - 1] != ':')
        colon--;
    size_t digits = colon ? n - colon : n;
    if (env_parse_u64(s + (colon ? colon : 0), digits, id) < 0)
        return -1;
    epoch[0] = '\0';
    if (colon) {
        size_t el = colon - 1;
        if (el == 0 || el > PW_EPOCH_MAX || !epoch_valid(s, el))
            return -1;
        memcpy(epoch, s, el);
        epoch[el] = '\0';
    }
    return 0;
}

int api_parse_position_list(const char *s, size_t n, api_poll *out, bool strict, api_error *err)
{
    for (size_t i = 0; i < n;) {
        size_t e = i;
        while (e < n && s[e] != ',')
            e++;
        const char *item = s + i, *eq = memchr(item, '=', e - i);
        size_t il = e - i;
        i = e + 1;
        uint64_t id;
        char epoch[PW_EPOCH_MAX + 1];
        api_chan *c = eq ? find_chan(out, item, (size_t)(eq - item)) : NULL;
        bool ok = eq && parse_position(eq + 1, il - (size_t)(eq + 1 - item), &id, epoch) == 0;
        if (!ok) {
            if (strict)
                return fail(err, 400, "invalid since: a message id, or a list of CHANNEL=[EPOCH:]ID");
            continue;
        }
        if (!c) {
            if (strict)
                return fail(err, 400, "since names a channel that channel= does not list");
            continue;
        }
        if (c->has_since) {
            if (strict)
                return fail(err, 400, "since names a channel twice");
            continue;
        }
        c->has_since = true;
        c->since = id;
        strcpy(c->epoch, epoch);
    }
    return 0;
}

/* Whether two since values say the same: equal bytes, or equal ids. */
static bool same_since(const char *a, size_t al, const char *b, size_t bl)
{
    if (al == bl && memcmp(a, b, al) == 0)
        return true;
    char va[24], vb[24];
    size_t na, nb;
    uint64_t ia, ib;
    return decode_small(a, al, va, 20, &na) == 0 && env_parse_u64(va, na, &ia) == 0 &&
           decode_small(b, bl, vb, 20, &nb) == 0 && env_parse_u64(vb, nb, &ib) == 0 && ia == ib;
}

int api_parse_poll(const api_http *in, const api_limits *lim, api_poll *out, api_chan *chans,
                   size_t cap, api_error *err)
{
    memset(out, 0, sizeof *out);
    out->chans = chans;
    out->timeout = lim->default_timeout;
    if (!in->method || strcmp(in->method, "GET") != 0) {
        fail(err, 405, "method not allowed: use GET");
        err->allow = "GET";
        return -1;
    }
    bool have_channel = false, have_epoch = false, have_timeout = false;
    bool have_since = false, since_list = false;
    uint64_t raw_timeout = 0, since = 0;
    char epoch[PW_EPOCH_MAX + 1] = "";
    const char *since_v = NULL, *chan_v = NULL;
    size_t since_vl = 0, chan_vl = 0;
    form_iter it;
    const char *k, *v;
    size_t kl, vl;
    const char *q = in->query ? in->query : "";
    char *list = NULL; /* a decoded list value */
    int rc = -1;
    form_iter_init(&it, q, strlen(q));
    while (form_next(&it, &k, &kl, &v, &vl)) {
        char val[PW_CHANNEL_MAX + 1];
        size_t n;
        if (form_key_is(k, kl, "channel")) {
            if (have_channel) {
                if (chan_vl == vl && memcmp(chan_v, v, vl) == 0)
                    continue; /* the same value again */
                fail(err, 400, "two different channel values: list several as channel=a,b,c");
                goto out;
            }
            have_channel = true;
            chan_v = v;
            chan_vl = vl;
            free(list);
            list = xmalloc(vl + 1);
            ssize_t dn = form_decode(v, vl, list);
            if (dn < 0) {
                fail(err, 400, "invalid channel: use 1-64 characters of A-Z a-z 0-9 _ . : -");
                goto out;
            }
            if (dn == 0 && lim->allow_empty)
                continue;
            if (parse_channel_list(list, (size_t)dn, out, cap, err) < 0)
                goto out;
        } else if (form_key_is(k, kl, "since")) {
            if (since_v && !same_since(since_v, since_vl, v, vl)) {
                fail(err, 400, "two different since values");
                goto out;
            }
            since_v = v;
            since_vl = vl;
        } else if (form_key_is(k, kl, "epoch")) {
            if (decode_small(v, vl, val, PW_EPOCH_MAX, &n) < 0 || !epoch_valid(val, n)) {
                fail(err, 400, "invalid epoch");
                goto out;
            }
            if (have_epoch && (strlen(epoch) != n || memcmp(epoch, val, n) != 0)) {
                fail(err, 400, "two different epoch values");
                goto out;
            }
            memcpy(epoch, val, n);
            epoch[n] = '\0';
            have_epoch = true;
        } else if (form_key_is(k, kl, "timeout")) {
            uint64_t t;
            if (decode_small(v, vl, val, 20, &n) < 0 || env_parse_u64(val, n, &t) < 0) {
                fail(err, 400, "invalid timeout: whole seconds");
                goto out;
            }
            if (have_timeout && t != raw_timeout) {
                fail(err, 400, "two different timeout values");
                goto out;
            }
            have_timeout = true;
            raw_timeout = t;
            out->timeout = t > lim->max_timeout ? lim->max_timeout : (unsigned)t;
        }
    }
    if (!have_channel) {
        strcpy(out->chans[0].channel, "default");
        out->chans[0].has_since = false;
        out->chans[0].since = 0;
        out->chans[0].epoch[0] = '\0';
        out->n = 1;
    }
    out->multi = out->n > 1;
    if (since_v) {
        free(list);
        list = xmalloc(since_vl + 1);
        ssize_t dn = form_decode(since_v, since_vl, list);
        if (dn >= 0 && memchr(list, '=', (size_t)dn)) {
            since_list = true;
            if (api_parse_position_list(list, (size_t)dn, out, true, err) < 0)
                goto out;
        } else if (dn < 0 || env_parse_u64(list, (size_t)dn, &since) < 0) {
            fail(err, 400, "invalid since: a message id (decimal integer)");
            goto out;
        } else {
            have_since = true;
        }
    }
    if (have_since || (have_epoch && !since_list)) {
        if (out->n != 1) {
            fail(err, 400, out->n ? "several channels: give since as CHANNEL=[EPOCH:]ID,..."
                                  : "since without a channel");
            goto out;
        }
        out->chans[0].has_since = have_since;
        out->chans[0].since = since;
        strcpy(out->chans[0].epoch, epoch);
    } else if (have_epoch) {
        fail(err, 400, "with a list of positions, epochs go in it (CHANNEL=EPOCH:ID)");
        goto out;
    }
    out->event_stream = accepts_event_stream(in->accept);
    const char *lei = in->last_event_id;
    bool any_since = false;
    for (size_t i = 0; i < out->n; i++)
        any_since |= out->chans[i].has_since;
    if (out->event_stream && !any_since && lei && lei[0]) {
        /* Last-Event-ID is what we sent: "EPOCH:ID", or a position list
         * for several channels. A malformed one is ignored, as browsers
         * resend whatever they last saw. */
        size_t ll = strlen(lei);
        if (memchr(lei, '=', ll)) {
            api_parse_position_list(lei, ll, out, false, err);
        } else if (out->n == 1) {
            uint64_t s;
            char e[PW_EPOCH_MAX + 1];
            if (parse_position(lei, ll, &s, e) == 0 && e[0]) {
                if (!have_epoch)
                    strcpy(out->chans[0].epoch, e);
                out->chans[0].has_since = true;
                out->chans[0].since = s;
            }
        }
    }
    rc = 0;
out:
    free(list);
    return rc;
}

int api_check_publish_origin(const api_http *in, const char *allow, api_error *err)
{
    const char *host = in->host ? in->host : "";
    if (in->origin)
        return origin_allowed(allow, in->origin, strlen(in->origin), host, strlen(host))
                   ? 0
                   : fail(err, 403, "cross-origin publish refused: this Origin may not post here "
                                    "(see --origins)");
    const char *site = in->sec_fetch_site;
    if (site && (strcasecmp(site, "cross-site") == 0 || strcasecmp(site, "same-site") == 0))
        return fail(err, 403, "cross-site publish refused (Sec-Fetch-Site)");
    return 0;
}

int api_check_publish_auth(const char *authorization, const char *token, api_error *err)
{
    if (!token || !token[0])
        return 0;
    if (!authorization || !authorization[0])
        return fail(err, 401, "publishing requires Authorization: Bearer <token>");
    if (strncasecmp(authorization, "Bearer ", 7) != 0)
        return fail(err, 401, "publishing requires Authorization: Bearer <token>");
    const char *given = authorization + 7;
    while (*given == ' ')
        given++;
    /* Constant-time comparison over the expected length. */
    size_t tl = strlen(token), gl = strlen(given);
    unsigned char diff = (unsigned char)(tl != gl);
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned char)(token[i] ^ (i < gl ? given[i] : 0));
    if (diff)
        return fail(err, 403, "wrong publish token");
    return 0;
}
