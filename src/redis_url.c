/* redis_url.c - REDIS_URL parsing. No I/O here. */
#include "redis_url.h"

#include <stdbool.h>
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

/* host[:port] or [v6]:port in p[0..n), into host/port (port stays as given
 * when absent). Returns 0, or -1 with *why. */
static int parse_hostport(const char *p, size_t n, char *host, size_t cap, int *port,
                          const char **why)
{
    const char *hp_end = p + n;
    const char *h = p, *h_end;
    const char *pt = NULL;
    if (n && *p == '[') { /* [IPv6]:port */
        const char *rb = memchr(p, ']', n);
        if (!rb) {
            *why = "bad IPv6 address in Redis URL";
            return -1;
        }
        h = p + 1;
        h_end = rb;
        if (rb + 1 < hp_end) {
            if (rb[1] != ':') {
                *why = "bad host:port in Redis URL";
                return -1;
            }
            pt = rb + 2;
        }
    } else {
        const char *colon = memchr(p, ':', n);
        h_end = colon ? colon : hp_end;
        if (colon)
            pt = colon + 1;
    }
    size_t hl = (size_t)(h_end - h);
    if (hl == 0 || hl >= cap) {
        *why = "missing host in Redis URL";
        return -1;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (pt && parse_int(pt, (size_t)(hp_end - pt), 1, 65535, port) < 0) {
        *why = "bad port in Redis URL";
        return -1;
    }
    return 0;
}

/* A list "h1[:p1],h2[:p2]..." ending at end, into out->hosts. */
static int parse_hosts(const char *p, const char *end, int defport, const char *what,
                       redis_url *out, const char **why)
{
    for (const char *h = p; h <= end;) {
        const char *comma = memchr(h, ',', (size_t)(end - h));
        const char *he = comma ? comma : end;
        if (out->nhosts == REDIS_URL_MAX_HOSTS) {
            *why = what;
            return -1;
        }
        redis_hostport *s = &out->hosts[out->nhosts];
        s->port = defport;
        if (parse_hostport(h, (size_t)(he - h), s->host, sizeof s->host, &s->port, why) < 0)
            return -1;
        out->nhosts++;
        h = he + 1;
    }
    return 0;
}

/* The seed nodes of redis+cluster://: "h1[:p1],h2[:p2]...[/]", with the
 * user-info already taken. */
static int parse_cluster(const char *p, redis_url *out, const char **why)
{
    size_t n = strlen(p);
    if (n && p[n - 1] == '/')
        n--;
    if (memchr(p, '/', n) || memchr(p, '?', n)) {
        *why = "redis+cluster:// URL takes only host[:port],... (a cluster has no database but 0)";
        return -1;
    }
    out->cluster = 1;
    return parse_hosts(p, p + n, 6379, "too many seed nodes in Redis URL (at most 8)", out, why);
}

/* The sentinels' part of redis+sentinel://: "h1[:p1],h2[:p2]/master[/db]"
 * and the query, with the user-info already taken. */
static int parse_sentinel(const char *p, redis_url *out, const char **why)
{
    const char *q = strchr(p, '?');
    const char *end = q ? q : p + strlen(p);
    const char *slash = memchr(p, '/', (size_t)(end - p));
    if (!slash) {
        *why = "redis+sentinel:// URL needs /master-name after the sentinels";
        return -1;
    }
    if (parse_hosts(p, slash, 26379, "too many sentinels in Redis URL (at most 8)", out, why) < 0)
        return -1;
    const char *name = slash + 1;
    const char *ne = memchr(name, '/', (size_t)(end - name));
    const char *name_end = ne ? ne : end;
    size_t nl = (size_t)(name_end - name);
    if (nl == 0 || nl >= sizeof out->master_name) {
        *why = "missing master name in redis+sentinel:// URL";
        return -1;
    }
    for (size_t i = 0; i < nl; i++)
        if ((unsigned char)name[i] <= ' ' || name[i] == '%') {
            *why = "bad master name in redis+sentinel:// URL";
            return -1;
        }
    memcpy(out->master_name, name, nl);
    if (ne && ne + 1 < end && parse_int(ne + 1, (size_t)(end - ne - 1), 0, 1 << 20, &out->db) < 0) {
        *why = "bad database number in Redis URL";
        return -1;
    }
    if (q) {
        static const char key[] = "?sentinel_password=";
        if (strncmp(q, key, sizeof key - 1) != 0 || strchr(q + 1, '&') ||
            copy_decoded(out->sentinel_password, sizeof out->sentinel_password, q + sizeof key - 1,
                         strlen(q + sizeof key - 1)) < 0) {
            *why = "bad query in redis+sentinel:// URL (only ?sentinel_password=)";
            return -1;
        }
    }
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
    bool sentinel = false, cluster = false;
    if (strncmp(p, "redis://", 8) == 0) {
        p += 8;
    } else if (strncmp(p, "redis+sentinel://", 17) == 0) {
        p += 17;
        sentinel = true;
    } else if (strncmp(p, "redis+cluster://", 16) == 0) {
        p += 16;
        cluster = true;
    } else if (strstr(p, "://")) {
        *why = "unsupported URL scheme (use redis://, redis+sentinel://, redis+cluster:// or "
               "unix://; TLS is not built in)";
        return -1;
    }
    /* The user-info ends at the last '@' before any query. */
    const char *qm = sentinel ? strchr(p, '?') : NULL;
    const char *at = NULL;
    for (const char *x = p; *x && x != qm; x++)
        if (*x == '@')
            at = x;
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
    if (sentinel)
        return parse_sentinel(p, out, why);
    if (cluster)
        return parse_cluster(p, out, why);
    const char *slash = strchr(p, '/');
    size_t hostport = slash ? (size_t)(slash - p) : strlen(p);
    if (parse_hostport(p, hostport, out->host, sizeof out->host, &out->port, why) < 0)
        return -1;
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
    bool sentinel = strncmp(s, "redis+sentinel://", 17) == 0;
    const char *p = strncmp(s, "redis://", 8) == 0           ? s + 8
                    : sentinel                               ? s + 17
                    : strncmp(s, "redis+cluster://", 16) == 0 ? s + 16
                                                             : s;
    /* The same user-info as redis_url_parse: up to the last '@' (before a
     * Sentinel URL's query). */
    const char *qm = sentinel ? strchr(p, '?') : NULL;
    const char *at = NULL;
    if (strncmp(s, "unix://", 7) != 0)
        for (const char *x = p; *x && x != qm; x++)
            if (*x == '@')
                at = x;
    size_t o = 0;
    const char *rest = s;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *keep_end = colon ? colon + 1 : p; /* scheme and user stay */
        int n = snprintf(out, cap, "%.*s***", (int)(keep_end - s), s);
        o = n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
        rest = at;
    }
    const char *sp = qm ? strstr(qm, "sentinel_password=") : NULL;
    if (sp) {
        sp += 18;
        snprintf(out + o, cap - o, "%.*s***", (int)(sp - rest), rest);
    } else {
        snprintf(out + o, cap - o, "%s", rest);
    }
    return out;
}
