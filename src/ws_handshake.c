/* ws_handshake.c - parse the WebSocket upgrade request and build the
 * responses (RFC 6455 section 4, RFC 9112 for the HTTP/1.1 syntax).
 *
 * No I/O here and no allocation of its own; the parser must stay safe on any
 * bytes, since it sees whatever a client sends first.
 */
#include "ws_handshake.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* RFC 9110 section 5.6.2: tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Field values may hold visible ASCII, spaces, tabs and obs-text; any other
 * control character (NUL, DEL, ...) is refused. */
static bool is_field_vchar(unsigned char c)
{
    return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7F);
}

static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

static bool slice_ieq(const char *p, size_t len, const char *lit)
{
    size_t n = strlen(lit);

    if (len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (lower((unsigned char)p[i]) != lower((unsigned char)lit[i]))
            return false;
    }
    return true;
}

/* True when the comma-separated list in p[0..len) holds token (compared
 * case-insensitively, elements trimmed of spaces and tabs). */
static bool list_has_token(const char *p, size_t len, const char *token)
{
    size_t i = 0;

    while (i <= len) {
        size_t start = i, end;
        while (i < len && p[i] != ',')
            i++;
        end = i;
        while (start < end && (p[start] == ' ' || p[start] == '\t'))
            start++;
        while (end > start && (p[end - 1] == ' ' || p[end - 1] == '\t'))
            end--;
        if (slice_ieq(p + start, end - start, token))
            return true;
        i++;
    }
    return false;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* A Sec-WebSocket-Key must be the base64 of 16 bytes: 22 characters and
 * "==". The 22nd character carries 4 unused bits, which must be zero for
 * the encoding to be the canonical one a real base64 encoder produces. */
static bool key_valid(const char *p, size_t len)
{
    if (len != WS_KEY_LEN || p[22] != '=' || p[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++) {
        if (b64_value((unsigned char)p[i]) < 0)
            return false;
    }
    return (b64_value((unsigned char)p[21]) & 0x0F) == 0;
}

/* Host must be present and non-empty (RFC 6455 section 4.1, item 4), and
 * an authority holds no whitespace or non-ASCII bytes. */
static bool host_valid(ws_slice h)
{
    if (!h.p || h.len == 0)
        return false;
    for (size_t i = 0; i < h.len; i++) {
        unsigned char c = (unsigned char)h.p[i];
        if (c <= 0x20 || c >= 0x7F)
            return false;
    }
    return true;
}

/* Find the end of the head in buf[0..lim). Returns the head length (through
 * the blank line), 0 when it has not ended yet, or -1 for a bare CR or a
 * bare LF, which are refused as soon as they are seen. */
static long head_end(const char *buf, size_t lim)
{
    size_t line = 0;

    for (size_t i = 0; i < lim; i++) {
        if (buf[i] == '\r') {
            if (i + 1 < lim && buf[i + 1] != '\n')
                return -1;
        } else if (buf[i] == '\n') {
            if (i == 0 || buf[i - 1] != '\r')
                return -1;
            if (i - line == 1)
                return (long)(i + 1);
            line = i + 1;
        }
    }
    return 0;
}

/* Parse "GET /target HTTP/1.1" in line[0..len). Returns 0 or a status. */
static int parse_request_line(const char *line, size_t len, ws_request *req)
{
    size_t i = 0, start;

    while (i < len && is_tchar((unsigned char)line[i]))
        i++;
    if (i == 0 || i >= len || line[i] != ' ')
        return 400;
    req->method.p = line;
    req->method.len = i;
    i++;

    /* origin-form only: a path starting with '/', visible ASCII, no
     * fragment. The relay sits behind a proxy that sends origin-form. */
    start = i;
    while (i < len && (unsigned char)line[i] > 0x20 && (unsigned char)line[i] < 0x7F &&
           line[i] != '#')
        i++;
    if (i == start || i >= len || line[i] != ' ' || line[start] != '/')
        return 400;
    req->target.p = line + start;
    req->target.len = i - start;
    i++;

    /* HTTP-version = "HTTP/" DIGIT "." DIGIT, and at least 1.1. */
    if (len - i != 8 || memcmp(line + i, "HTTP/", 5) != 0 || line[i + 6] != '.')
        return 400;
    char major = line[i + 5], minor = line[i + 7];
    if (major < '0' || major > '9' || minor < '0' || minor > '9')
        return 400;
    if (major == '0' || (major == '1' && minor == '0'))
        return 400;

    const char *q = memchr(req->target.p, '?', req->target.len);
    req->path.p = req->target.p;
    req->path.len = q ? (size_t)(q - req->target.p) : req->target.len;
    if (q) {
        req->query.p = q + 1;
        req->query.len = req->target.len - req->path.len - 1;
    }

    if (req->method.len != 3 || memcmp(req->method.p, "GET", 3) != 0)
        return 405;
    return 0;
}

/* What the header lines told, beyond the slices kept in ws_request. */
typedef struct hs_flags {
    bool upgrade;    /* an Upgrade header lists "websocket" */
    bool connection; /* a Connection header lists "Upgrade" */
    bool bad;        /* a repeated single-valued header, or a body */
} hs_flags;

/* Store a single-valued header, refusing a second occurrence. */
static void set_once(ws_slice *s, const char *v, size_t vlen, hs_flags *f)
{
    if (s->p)
        f->bad = true;
    s->p = v;
    s->len = vlen;
}

static void take_header(const char *name, size_t nlen, const char *v, size_t vlen, ws_request *req,
                        hs_flags *f)
{
    if (slice_ieq(name, nlen, "host")) {
        set_once(&req->host, v, vlen, f);
    } else if (slice_ieq(name, nlen, "upgrade")) {
        f->upgrade |= list_has_token(v, vlen, "websocket");
    } else if (slice_ieq(name, nlen, "connection")) {
        f->connection |= list_has_token(v, vlen, "upgrade");
    } else if (slice_ieq(name, nlen, "sec-websocket-key")) {
        set_once(&req->key, v, vlen, f);
    } else if (slice_ieq(name, nlen, "sec-websocket-version")) {
        set_once(&req->version, v, vlen, f);
    } else if (slice_ieq(name, nlen, "origin")) {
        set_once(&req->origin, v, vlen, f);
    } else if (slice_ieq(name, nlen, "authorization")) {
        set_once(&req->authorization, v, vlen, f);
    } else if (slice_ieq(name, nlen, "cookie")) {
        req->cookie.p = v;
        req->cookie.len = vlen;
    } else if (slice_ieq(name, nlen, "x-real-ip")) {
        set_once(&req->real_ip, v, vlen, f);
    } else if (slice_ieq(name, nlen, "x-forwarded-for")) {
        /* A list header that proxies may repeat; the last one holds the
         * hops nearest to us. */
        req->forwarded_for.p = v;
        req->forwarded_for.len = vlen;
    } else if (slice_ieq(name, nlen, "transfer-encoding")) {
        /* Bytes after the head are WebSocket frames, so a request body
         * could only be a smuggling attempt or a confused client. */
        f->bad = true;
    } else if (slice_ieq(name, nlen, "content-length")) {
        if (!(vlen == 1 && v[0] == '0'))
            f->bad = true;
    }
}

/* Parse one header line line[0..len) (without its CRLF). Returns 0 or 400. */
static int parse_header_line(const char *line, size_t len, ws_request *req, hs_flags *f)
{
    size_t i = 0, vs, ve;

    /* A line starting with whitespace is obs-fold (RFC 9112 section 5.2). */
    while (i < len && is_tchar((unsigned char)line[i]))
        i++;
    if (i == 0 || i >= len || line[i] != ':')
        return 400;
    vs = i + 1;
    ve = len;
    for (size_t k = vs; k < ve; k++) {
        if (!is_field_vchar((unsigned char)line[k]))
            return 400;
    }
    while (vs < ve && (line[vs] == ' ' || line[vs] == '\t'))
        vs++;
    while (ve > vs && (line[ve - 1] == ' ' || line[ve - 1] == '\t'))
        ve--;
    take_header(line, i, line + vs, ve - vs, req, f);
    return 0;
}

int ws_handshake_parse(const char *buf, size_t len, size_t max_head, ws_request *req)
{
    size_t lim = len < max_head ? len : max_head;
    long end = head_end(buf, lim);
    hs_flags f = {false, false, false};
    size_t pos, eol;
    int st;

    memset(req, 0, sizeof *req);
    if (end < 0)
        return 400;
    if (end == 0)
        return len >= max_head ? 431 : WS_HS_PARTIAL;
    req->head_len = (size_t)end;

    /* Each line ends with CRLF (head_end checked), and the last line is the
     * empty one, so memchr always finds a LF before head_len. */
    eol = (size_t)((const char *)memchr(buf, '\n', req->head_len) - buf);
    st = parse_request_line(buf, eol - 1, req);
    if (st)
        return st;
    for (pos = eol + 1; pos < req->head_len - 2; pos = eol + 1) {
        eol = (size_t)((const char *)memchr(buf + pos, '\n', req->head_len - pos) - buf);
        st = parse_header_line(buf + pos, eol - 1 - pos, req, &f);
        if (st)
            return st;
    }

    if (f.bad || !host_valid(req->host))
        return 400;
    if (!f.upgrade || !f.connection)
        return 400;
    if (!req->key.p || !key_valid(req->key.p, req->key.len))
        return 400;
    if (!req->version.p || !(req->version.len == 2 && memcmp(req->version.p, "13", 2) == 0))
        return 426;
    return WS_HS_OK;
}

size_t ws_handshake_accept_key(const char *key, size_t key_len, char out[WS_ACCEPT_LEN + 1])
{
    unsigned char in[64 + sizeof ws_guid];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    out[0] = '\0';
    if (key_len > 64)
        return 0;
    memcpy(in, key, key_len);
    memcpy(in + key_len, ws_guid, sizeof ws_guid - 1);
    if (!EVP_Digest(in, key_len + sizeof ws_guid - 1, md, &md_len, EVP_sha1(), NULL) ||
        md_len != 20)
        return 0;
    /* EVP_EncodeBlock writes the 28 characters and a NUL. */
    if (EVP_EncodeBlock((unsigned char *)out, md, 20) != WS_ACCEPT_LEN) {
        out[0] = '\0';
        return 0;
    }
    return WS_ACCEPT_LEN;
}

/* snprintf's result as a length, or 0 when the output was cut or failed. */
static size_t fitted(int n, size_t cap)
{
    if (n < 0 || (size_t)n >= cap)
        return 0;
    return (size_t)n;
}

size_t ws_handshake_response_101(char *out, size_t cap, const char *accept)
{
    int n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "\r\n",
                     accept);
    return fitted(n, cap);
}

size_t ws_handshake_response_error(char *out, size_t cap, int status)
{
    const char *phrase, *error, *extra = "";
    char body[64];
    int blen;

    switch (status) {
    case 400:
        phrase = "Bad Request", error = "bad_request";
        break;
    case 401:
        phrase = "Unauthorized", error = "unauthorized";
        extra = "WWW-Authenticate: Bearer realm=\"pushwire\"\r\n";
        break;
    case 403:
        phrase = "Forbidden", error = "forbidden";
        break;
    case 404:
        phrase = "Not Found", error = "not_found";
        break;
    case 405:
        phrase = "Method Not Allowed", error = "method_not_allowed";
        extra = "Allow: GET\r\n";
        break;
    case 426:
        phrase = "Upgrade Required", error = "upgrade_required";
        extra = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
        break;
    case 431:
        phrase = "Request Header Fields Too Large", error = "headers_too_large";
        break;
    case 503:
        phrase = "Service Unavailable", error = "unavailable";
        extra = "Retry-After: 5\r\n";
        break;
    default:
        status = 500;
        phrase = "Internal Server Error", error = "internal_error";
        break;
    }
    blen = snprintf(body, sizeof body, "{\"error\":\"%s\"}", error);
    if (fitted(blen, sizeof body) == 0)
        return 0;
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %d\r\n"
                     "Connection: close\r\n"
                     "%s"
                     "\r\n"
                     "%s",
                     status, phrase, blen, extra, body);
    return fitted(n, cap);
}
