/* envelope.c - JSON formatting of answers and messages, and the pub/sub
 * payload format. No I/O here. */
#include "envelope.h"

#include <string.h>

static const char hexdig[] = "0123456789abcdef";

void env_json_string(buf *b, const char *s, size_t n)
{
    /* Worst case 6 bytes per input byte; grow once. */
    buf_grow(b, n * 6 + 2);
    char *o = b->data + b->len;
    *o++ = '"';
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned char c = *p;
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) {
            if (c == 0xE2 && end - p >= 3 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
                memcpy(o, p[2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
                o += 6;
                p += 3;
                continue;
            }
            *o++ = (char)c;
            p++;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hexdig[c >> 4];
            *o++ = hexdig[c & 15];
        }
        p++;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

static void put_field_str(buf *b, const char *name, const char *val)
{
    /* Channel names and epochs are restricted to [A-Za-z0-9_.:-]: no escaping
     * needed, which api.c and env_pubsub_parse guarantee. */
    buf_putc(b, '"');
    buf_puts(b, name);
    buf_puts(b, "\":\"");
    buf_puts(b, val);
    buf_putc(b, '"');
}

static void put_msg_object(buf *b, const pw_msg *m)
{
    buf_puts(b, "{\"id\":");
    buf_put_u64(b, m->id);
    buf_puts(b, ",\"content\":");
    buf_append(b, m->json->data, m->json->len);
    buf_puts(b, ",\"time\":");
    buf_put_u64(b, (uint64_t)(m->time_ms < 0 ? 0 : m->time_ms));
    buf_putc(b, '}');
}

void env_status(buf *b, const char *channel, const char *epoch, pw_msg *const *msgs, size_t n,
                bool reset, bool more, uint64_t newest_id, const rbuf *newest_json)
{
    buf_putc(b, '{');
    put_field_str(b, "channel", channel);
    buf_putc(b, ',');
    put_field_str(b, "epoch", epoch);
    uint64_t id = n ? msgs[n - 1]->id : newest_id;
    const rbuf *content = n ? msgs[n - 1]->json : newest_json;
    buf_puts(b, ",\"id\":");
    buf_put_u64(b, id);
    buf_puts(b, ",\"content\":");
    if (content)
        buf_append(b, content->data, content->len);
    else
        buf_puts(b, "\"\"");
    buf_puts(b, ",\"messages\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_putc(b, ',');
        put_msg_object(b, msgs[i]);
    }
    buf_putc(b, ']');
    if (reset)
        buf_puts(b, ",\"reset\":true");
    if (more)
        buf_puts(b, ",\"more\":true");
    buf_putc(b, '}');
}

static void put_publish_ok(buf *b, uint64_t id, const char *channel, const char *epoch)
{
    buf_puts(b, "{\"id\":");
    buf_put_u64(b, id);
    buf_putc(b, ',');
    put_field_str(b, "channel", channel);
    buf_putc(b, ',');
    put_field_str(b, "epoch", epoch);
    buf_putc(b, '}');
}

void env_publish_ok(buf *b, uint64_t id, const char *channel, const char *epoch)
{
    put_publish_ok(b, id, channel, epoch);
    buf_putc(b, '\n');
}

void env_publish_results(buf *b, const env_pub_result *r, size_t n)
{
    buf_puts(b, "{\"results\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            buf_putc(b, ',');
        if (r[i].error) {
            buf_putc(b, '{');
            put_field_str(b, "channel", r[i].channel);
            buf_puts(b, ",\"error\":");
            env_json_string(b, r[i].error, strlen(r[i].error));
            buf_putc(b, '}');
        } else
            put_publish_ok(b, r[i].id, r[i].channel, r[i].epoch);
    }
    buf_puts(b, "]}\n");
}

void env_error(buf *b, const char *msg)
{
    buf_puts(b, "{\"error\":");
    env_json_string(b, msg, strlen(msg));
    buf_puts(b, "}\n");
}

void env_channel_error(buf *b, const char *msg, const char *channel)
{
    buf_puts(b, "{\"error\":");
    env_json_string(b, msg, strlen(msg));
    buf_putc(b, ',');
    put_field_str(b, "channel", channel);
    buf_puts(b, "}\n");
}

void env_expired(buf *b, const char *channel)
{
    buf_puts(b, "{\"type\":\"expired\",");
    put_field_str(b, "channel", channel);
    buf_puts(b, ",\"error\":\"token expired\"}");
}

void env_refreshed(buf *b, const char *channel, long long expires)
{
    buf_puts(b, "{\"type\":\"refreshed\",");
    put_field_str(b, "channel", channel);
    buf_printf(b, ",\"expires\":%lld}", expires);
}

void env_control_error(buf *b, const char *channel, int status, const char *msg)
{
    buf_puts(b, "{\"type\":\"error\",");
    if (channel && channel[0]) {
        buf_puts(b, "\"channel\":");
        env_json_string(b, channel, strlen(channel));
        buf_putc(b, ',');
    }
    buf_printf(b, "\"status\":%d,\"error\":", status);
    env_json_string(b, msg, strlen(msg));
    buf_putc(b, '}');
}

void env_push_message(buf *b, const char *channel, const char *epoch, const pw_msg *m)
{
    buf_putc(b, '{');
    put_field_str(b, "channel", channel);
    buf_putc(b, ',');
    put_field_str(b, "epoch", epoch);
    buf_puts(b, ",\"id\":");
    buf_put_u64(b, m->id);
    buf_puts(b, ",\"content\":");
    buf_append(b, m->json->data, m->json->len);
    buf_puts(b, ",\"time\":");
    buf_put_u64(b, (uint64_t)(m->time_ms < 0 ? 0 : m->time_ms));
    buf_putc(b, '}');
}

void env_push_reset(buf *b, const char *channel, const char *epoch, uint64_t newest)
{
    buf_putc(b, '{');
    put_field_str(b, "channel", channel);
    buf_putc(b, ',');
    put_field_str(b, "epoch", epoch);
    buf_puts(b, ",\"reset\":true,\"id\":");
    buf_put_u64(b, newest);
    buf_putc(b, '}');
}

void env_pubsub_format(buf *b, const char *epoch, uint64_t id, int64_t time_ms, const char *json,
                       size_t json_len)
{
    buf_puts(b, epoch);
    buf_putc(b, ' ');
    buf_put_u64(b, id);
    buf_putc(b, ' ');
    buf_put_u64(b, (uint64_t)(time_ms < 0 ? 0 : time_ms));
    buf_putc(b, ' ');
    buf_append(b, json, json_len);
}

int env_parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 15)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

static bool epoch_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.' || c == ':';
}

int env_pubsub_parse(const char *p, size_t n, pubsub_view *out)
{
    const char *end = p + n, *sp;
    sp = memchr(p, ' ', n);
    if (!sp || sp == p || sp - p > PW_EPOCH_MAX)
        return -1;
    for (const char *q = p; q < sp; q++)
        if (!epoch_char(*q))
            return -1;
    out->epoch = p;
    out->epoch_len = (size_t)(sp - p);
    p = sp + 1;
    sp = memchr(p, ' ', (size_t)(end - p));
    if (!sp || env_parse_u64(p, (size_t)(sp - p), &out->id) < 0)
        return -1;
    p = sp + 1;
    uint64_t t;
    sp = memchr(p, ' ', (size_t)(end - p));
    if (!sp || env_parse_u64(p, (size_t)(sp - p), &t) < 0)
        return -1;
    out->time_ms = (int64_t)t;
    p = sp + 1;
    if (end - p < 2 || p[0] != '"' || end[-1] != '"')
        return -1;
    out->json = p;
    out->json_len = (size_t)(end - p);
    return 0;
}
