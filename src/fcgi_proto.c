/* fcgi_proto.c - FastCGI responder-side record parser. No I/O here.
 *
 * A record is an 8-byte header, contentLength bytes and paddingLength
 * bytes; the parser keeps only the header and the bytes it needs (the
 * parameters of the active request and up to max_body of its stdin), so a
 * byte stream split anywhere gives the same events.
 */
#include "fcgi_proto.h"

#include <fastcgi.h>
#include <string.h>

enum { ST_HDR, ST_CONTENT, ST_PADDING, ST_ERROR };

static const char *const wanted_names[FP_COUNT] = {
    [FP_REQUEST_METHOD] = "REQUEST_METHOD",
    [FP_DOCUMENT_URI] = "DOCUMENT_URI",
    [FP_QUERY_STRING] = "QUERY_STRING",
    [FP_CONTENT_TYPE] = "CONTENT_TYPE",
    [FP_HTTP_ACCEPT] = "HTTP_ACCEPT",
    [FP_HTTP_IDEMPOTENCY_KEY] = "HTTP_IDEMPOTENCY_KEY",
    [FP_HTTP_AUTHORIZATION] = "HTTP_AUTHORIZATION",
    [FP_HTTP_LAST_EVENT_ID] = "HTTP_LAST_EVENT_ID",
    [FP_HTTP_COOKIE] = "HTTP_COOKIE",
    [FP_HTTP_ORIGIN] = "HTTP_ORIGIN",
    [FP_HTTP_HOST] = "HTTP_HOST",
    [FP_HTTP_SEC_FETCH_SITE] = "HTTP_SEC_FETCH_SITE",
};

static void reset_request(fcgi_parser *p)
{
    p->have_request = p->params_done = p->stdin_done = p->delivered = false;
    p->body_too_large = false;
    p->keep_conn = false;
    p->reqid = 0;
    buf_free(&p->params);
    buf_free(&p->body);
    for (int i = 0; i < FP_COUNT; i++)
        p->off[i] = -1, p->len[i] = 0;
}

void fcgi_parser_init(fcgi_parser *p, size_t max_params, size_t max_body)
{
    memset(p, 0, sizeof *p);
    p->max_params = max_params;
    p->max_body = max_body;
    reset_request(p);
}

void fcgi_parser_next(fcgi_parser *p)
{
    reset_request(p);
}

void fcgi_parser_free(fcgi_parser *p)
{
    buf_free(&p->params);
    buf_free(&p->body);
}

const char *fcgi_param(const fcgi_parser *p, enum fcgi_param_id id)
{
    return p->off[id] < 0 ? NULL : p->params.data + p->off[id];
}

static size_t fail(fcgi_parser *p, fcgi_ev *ev, const char *why, size_t used)
{
    p->state = ST_ERROR;
    ev->type = FCGI_EV_ERROR;
    ev->error = why;
    return used;
}

/* An 8-byte record header into out. */
static void put_header(uint8_t *out, uint8_t type, uint16_t id, uint16_t len)
{
    out[0] = FCGI_VERSION_1;
    out[1] = type;
    out[2] = (uint8_t)(id >> 8);
    out[3] = (uint8_t)id;
    out[4] = (uint8_t)(len >> 8);
    out[5] = (uint8_t)len;
    out[6] = out[7] = 0;
}

static void reply_end_request(fcgi_ev *ev, uint16_t id, uint8_t protocol_status)
{
    put_header(ev->reply, FCGI_END_REQUEST, id, 8);
    memset(ev->reply + 8, 0, 8);
    ev->reply[12] = protocol_status;
    ev->reply_len = 16;
    ev->type = FCGI_EV_MANAGEMENT;
}

/* Read a name or value length of the name-value pair encoding. */
static int nv_len(const uint8_t *p, size_t avail, size_t *used, uint32_t *len)
{
    if (avail < 1)
        return -1;
    if (!(p[0] & 0x80)) {
        *len = p[0];
        *used = 1;
        return 0;
    }
    if (avail < 4)
        return -1;
    *len = ((uint32_t)(p[0] & 0x7f) << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    *used = 4;
    return 0;
}

/* Find the wanted parameters in the collected pairs and append their values,
 * NUL-terminated, after the pairs. Returns -1 on malformed pairs. */
static int index_params(fcgi_parser *p)
{
    size_t end = p->params.len, pos = 0;
    while (pos < end) {
        const uint8_t *d = (const uint8_t *)p->params.data;
        size_t u1, u2;
        uint32_t nl, vl;
        if (nv_len(d + pos, end - pos, &u1, &nl) < 0)
            return -1;
        if (nv_len(d + pos + u1, end - pos - u1, &u2, &vl) < 0)
            return -1;
        size_t start = pos + u1 + u2;
        if (nl > end - start || vl > end - start - nl)
            return -1;
        const char *name = p->params.data + start;
        for (int i = 0; i < FP_COUNT; i++) {
            if (p->off[i] < 0 && strlen(wanted_names[i]) == nl &&
                memcmp(wanted_names[i], name, nl) == 0) {
                size_t voff = start + nl;
                size_t at = p->params.len;
                buf_grow(&p->params, vl + 1);
                /* buf_grow may move the data: copy from the new location. */
                memmove(p->params.data + at, p->params.data + voff, vl);
                p->params.len = at + vl;
                p->params.data[p->params.len++] = '\0';
                p->params.data[p->params.len] = '\0';
                p->off[i] = (int32_t)at;
                p->len[i] = vl;
                break;
            }
        }
        pos = start + nl + vl;
    }
    return 0;
}

static void management(fcgi_parser *p, fcgi_ev *ev)
{
    if (p->type == FCGI_GET_VALUES) {
        /* Answer the three standard variables whatever was asked. */
        static const char *const kv[][2] = {
            {"FCGI_MAX_CONNS", "10000"}, {"FCGI_MAX_REQS", "10000"}, {"FCGI_MPXS_CONNS", "0"}};
        uint8_t *o = ev->reply + 8;
        for (size_t i = 0; i < 3; i++) {
            size_t nl = strlen(kv[i][0]), vl = strlen(kv[i][1]);
            *o++ = (uint8_t)nl;
            *o++ = (uint8_t)vl;
            memcpy(o, kv[i][0], nl);
            memcpy(o + nl, kv[i][1], vl);
            o += nl + vl;
        }
        size_t len = (size_t)(o - ev->reply - 8);
        _Static_assert(sizeof ev->reply >= 8 + 3 * 2 + 14 + 13 + 15 + 5 + 5 + 1,
                       "GET_VALUES_RESULT must fit the reply buffer");
        put_header(ev->reply, FCGI_GET_VALUES_RESULT, 0, (uint16_t)len);
        ev->reply_len = 8 + len;
    } else {
        put_header(ev->reply, FCGI_UNKNOWN_TYPE, 0, 8);
        memset(ev->reply + 8, 0, 8);
        ev->reply[8] = p->type;
        ev->reply_len = 16;
    }
    ev->type = FCGI_EV_MANAGEMENT;
}

/* The current record's content is complete (or empty). */
static void record_done(fcgi_parser *p, fcgi_ev *ev)
{
    if (p->rec_id == 0) {
        management(p, ev);
        return;
    }
    switch (p->type) {
    case FCGI_BEGIN_REQUEST: {
        uint16_t role = (uint16_t)(p->begin[0] << 8 | p->begin[1]);
        if (p->have_request) {
            reply_end_request(ev, p->rec_id, FCGI_CANT_MPX_CONN);
            return;
        }
        if (p->begin_len < 8 || role != FCGI_RESPONDER) {
            reply_end_request(ev, p->rec_id, FCGI_UNKNOWN_ROLE);
            return;
        }
        p->have_request = true;
        p->reqid = p->rec_id;
        p->keep_conn = p->begin[2] & FCGI_KEEP_CONN;
        return;
    }
    case FCGI_ABORT_REQUEST:
        if (p->have_request && p->rec_id == p->reqid)
            ev->type = FCGI_EV_ABORT;
        return;
    default:
        return;
    }
}

static bool active(const fcgi_parser *p) { return p->have_request && p->rec_id == p->reqid; }

size_t fcgi_parser_feed(fcgi_parser *p, const uint8_t *data, size_t len, fcgi_ev *ev)
{
    size_t used = 0;
    ev->type = FCGI_EV_NONE;
    ev->reply_len = 0;
    ev->error = NULL;
    if (p->state == ST_ERROR)
        return fail(p, ev, "connection already failed", 0);
    while (used < len) {
        if (p->state == ST_HDR) {
            size_t n = 8 - p->hdr_len;
            if (n > len - used)
                n = len - used;
            memcpy(p->hdr + p->hdr_len, data + used, n);
            p->hdr_len = (uint8_t)(p->hdr_len + n);
            used += n;
            if (p->hdr_len < 8)
                break;
            p->hdr_len = 0;
            if (p->hdr[0] != FCGI_VERSION_1)
                return fail(p, ev, "unsupported FastCGI version", used);
            p->type = p->hdr[1];
            p->rec_id = (uint16_t)(p->hdr[2] << 8 | p->hdr[3]);
            p->remaining = (uint32_t)(p->hdr[4] << 8 | p->hdr[5]);
            p->padding = p->hdr[6];
            p->begin_len = 0;
            bool streams = p->type == FCGI_PARAMS || p->type == FCGI_STDIN;
            if (streams && active(p) && p->remaining == 0) {
                /* An empty record ends its stream. */
                if (p->type == FCGI_PARAMS && !p->params_done) {
                    p->params_done = true;
                    if (index_params(p) < 0)
                        return fail(p, ev, "malformed FastCGI parameters", used);
                } else if (p->type == FCGI_STDIN) {
                    p->stdin_done = true;
                }
            }
            p->state = p->remaining ? ST_CONTENT : (p->padding ? ST_PADDING : ST_HDR);
            if (p->state == ST_HDR) {
                record_done(p, ev);
                if (ev->type != FCGI_EV_NONE)
                    return used;
            }
        } else if (p->state == ST_CONTENT) {
            size_t n = p->remaining;
            if (n > len - used)
                n = len - used;
            const uint8_t *d = data + used;
            if (p->rec_id == 0) {
                /* Management content (GET_VALUES names) is not needed. */
            } else if (p->type == FCGI_BEGIN_REQUEST) {
                for (size_t i = 0; i < n && p->begin_len < 8; i++)
                    p->begin[p->begin_len++] = d[i];
            } else if (p->type == FCGI_PARAMS && active(p) && !p->params_done) {
                if (p->params.len + n > p->max_params)
                    return fail(p, ev, "FastCGI parameters over the limit", used + n);
                if (!p->params.cap)
                    buf_grow(&p->params, 2048); /* nginx sends ~1 KB: one allocation */
                buf_append(&p->params, d, n);
            } else if (p->type == FCGI_STDIN && active(p) && !p->stdin_done) {
                if (p->body.len + n <= p->max_body)
                    buf_append(&p->body, d, n);
                else
                    p->body_too_large = true;
            }
            p->remaining -= (uint32_t)n;
            used += n;
            if (p->remaining)
                break;
            p->state = p->padding ? ST_PADDING : ST_HDR;
            if (p->state == ST_HDR) {
                record_done(p, ev);
                if (ev->type != FCGI_EV_NONE)
                    return used;
            }
        } else if (p->state == ST_PADDING) {
            size_t n = p->padding;
            if (n > len - used)
                n = len - used;
            p->padding = (uint8_t)(p->padding - n);
            used += n;
            if (p->padding)
                break;
            p->state = ST_HDR;
            record_done(p, ev);
            if (ev->type != FCGI_EV_NONE)
                return used;
        }
        if (p->have_request && p->params_done && p->stdin_done && !p->delivered) {
            p->delivered = true;
            ev->type = FCGI_EV_REQUEST;
            return used;
        }
    }
    if (p->have_request && p->params_done && p->stdin_done && !p->delivered) {
        p->delivered = true;
        ev->type = FCGI_EV_REQUEST;
    }
    return used;
}
