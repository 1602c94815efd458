/* redis_url.c - REDIS_URL parsing. No I/O here. */
#include "redis_url.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"

static int copy_decoded(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return -1;
    /* '+' is literal in URLs' userinfo; decode only %XX. */
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            char tmp[3];
            if (n - i < 3 || form_decode(s + i, 3, tmp) != 1 || tmp[0] == '\0')
                return -1;
            dst[o++] = tmp[0];
            i += 2;
        } else {
            dst[o++] = s[i];
        }
    }
    dst[o] = '\0';
    return 0;
}

static int parse_int(const char *s, size_t n, int lo, int hi, int *out)
{
    if (n == 0 || n > 9)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int redis_url_parse(const char *s, redis_url *out, const char **why)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!s || !*s) {
        *why = "empty Redis URL";
        return -1;
    }
    if (strncmp(s, "unix://", 7) == 0) {
        const char *p = s + 7;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 0 || n >= sizeof out->path || p[0] != '/') {
            *why = "unix:// URL needs an absolute socket path";
            return -1;
        }
        memcpy(out->path, p, n);
        if (q) {
            if (strncmp(q, "?db=", 4) != 0 || parse_int(q + 4, strlen(q + 4), 0, 1 << 20, &out->db) < 0) {
                *why = "bad ?db= in unix:// URL";
                return -1;
            }
        }
        return 0;
    }
    const char *p = s;
    if (strncmp(p, "redis://", 8) == 0)
        p += 8;
    else if (strstr(p, "://")) {
        *why = "unsupported URL scheme (use redis:// or unix://; TLS is not built in)";
        return -1;
    }
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (copy_decoded(out->user, sizeof out->user, p, (size_t)(colon - p)) < 0 ||
                copy_decoded(out->password, sizeof out->password, colon + 1,
                             (size_t)(at - colon - 1)) < 0) {
                *why = "bad credentials in Redis URL";
                return -1;
            }
        } else if (copy_decoded(out->password, sizeof out->password, p, (size_t)(at - p)) < 0) {
            *why = "bad password in Redis URL";
            return -1;
        }
        p = at + 1;
    }
    const char *slash = strchr(p, '/');
    size_t hostport = slash ? (size_t)(slash - p) : strlen(p);
    const char *hp_end = p + hostport;
    const char *host = p, *host_end;
    const char *port = NULL;
    if (*p == '[') { /* [IPv6]:port */
        const char *rb = memchr(p, ']', hostport);
        if (!rb) {
            *why = "bad IPv6 address in Redis URL";
            return -1;
        }
        host = p + 1;
        host_end = rb;
        if (rb + 1 < hp_end) {
            if (rb[1] != ':') {
                *why = "bad host:port in Redis URL";
                return -1;
            }
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', hostport);
        host_end = colon ? colon : hp_end;
        if (colon)
            port = colon + 1;
    }
    size_t hl = (size_t)(host_end - host);
    if (hl == 0 || hl >= sizeof out->host) {
        *why = "missing host in Redis URL";
        return -1;
    }
    memcpy(out->host, host, hl);
    if (port && parse_int(port, (size_t)(hp_end - port), 1, 65535, &out->port) < 0) {
        *why = "bad port in Redis URL";
        return -1;
    }
    if (slash && slash[1]) {
        if (parse_int(slash + 1, strlen(slash + 1), 0, 1 << 20, &out->db) < 0) {
            *why = "bad database number in Redis URL";
            return -1;
        }
    }
    return 0;
}

char *redis_url_redact(const char *s, char *out, size_t cap)
{
    if (!cap)
        return out;
    if (!s)
        s = "";
    const char *p = strncmp(s, "redis://", 8) == 0 ? s + 8 : s;
    /* The same user-info as redis_url_parse: up to the last '@'. */
    const char *at = strncmp(s, "unix://", 7) == 0 ? NULL : strrchr(p, '@');
    if (!at) {
        snprintf(out, cap, "%s", s);
        return out;
    }
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *keep_end = colon ? colon + 1 : p; /* scheme and user stay */
    snprintf(out, cap, "%.*s***%s", (int)(keep_end - s), s, at);
    return out;
}
