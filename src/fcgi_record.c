/* fcgi_record.c - FastCGI response record encoding. No I/O here. */
#include "fcgi_record.h"

#include <string.h>

enum { FCGI_VERSION_1 = 1, FCGI_END_REQUEST = 3, FCGI_STDOUT = 6 };

static void put_header(char *h, uint8_t type, uint16_t reqid, uint16_t len)
{
    h[0] = FCGI_VERSION_1;
    h[1] = (char)type;
    h[2] = (char)(reqid >> 8);
    h[3] = (char)(reqid & 0xff);
    h[4] = (char)(len >> 8);
    h[5] = (char)(len & 0xff);
    h[6] = 0; /* padding length */
    h[7] = 0; /* reserved */
}

void fcgi_rec_stdout(buf *out, uint16_t reqid, const void *data, size_t len)
{
    const char *p = data;
    buf_grow(out, len + (len / FCGI_REC_MAX_BODY + 1) * FCGI_REC_HEADER);
    while (len) {
        size_t n = len > FCGI_REC_MAX_BODY ? FCGI_REC_MAX_BODY : len;
        char h[FCGI_REC_HEADER];
        put_header(h, FCGI_STDOUT, reqid, (uint16_t)n);
        buf_append(out, h, sizeof h);
        buf_append(out, p, n);
        p += n;
        len -= n;
    }
}

void fcgi_rec_end(buf *out, uint16_t reqid)
{
    char rec[FCGI_REC_HEADER * 3];
    put_header(rec, FCGI_STDOUT, reqid, 0);
    put_header(rec + 8, FCGI_END_REQUEST, reqid, 8);
    memset(rec + 16, 0, 8); /* appStatus 0, protocolStatus 0 (REQUEST_COMPLETE) */
    buf_append(out, rec, sizeof rec);
}

rbuf *fcgi_rec_response(uint16_t reqid, const char *head, size_t head_len, const char *body,
                        size_t body_len)
{
    buf b = BUF_INIT;
    buf_grow(&b, head_len + body_len + 64);
    /* Head and body in as few records as possible: nginx parses a record's
     * content across record boundaries anyway, but fewer records is fewer
     * headers to write. */
    if (head_len + body_len <= FCGI_REC_MAX_BODY) {
        char h[FCGI_REC_HEADER];
        put_header(h, FCGI_STDOUT, reqid, (uint16_t)(head_len + body_len));
        buf_append(&b, h, sizeof h);
        buf_append(&b, head, head_len);
        buf_append(&b, body, body_len);
    } else {
        fcgi_rec_stdout(&b, reqid, head, head_len);
        fcgi_rec_stdout(&b, reqid, body, body_len);
    }
    fcgi_rec_end(&b, reqid);
    rbuf *r = rbuf_new(b.data, b.len);
    buf_free(&b);
    return r;
}
