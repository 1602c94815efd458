/* origin.c - Origin allow-list checks. No I/O here. */
#include "origin.h"

#include <string.h>
#include <strings.h>

/* Split "scheme://host[:port]" into scheme and host[:port] with the
 * scheme's default port removed. Returns false when malformed. */
static bool origin_parts(const char *o, size_t n, const char **scheme, size_t *slen,
                         const char **hp, size_t *hplen)
{
    const char *sep = NULL;
    for (size_t i = 0; i + 2 < n; i++)
        if (o[i] == ':' && o[i + 1] == '/' && o[i + 2] == '/') {
            sep = o + i;
            break;
        }
    if (!sep || sep == o)
        return false;
    *scheme = o;
    *slen = (size_t)(sep - o);
    *hp = sep + 3;
    *hplen = n - (size_t)(*hp - o);
    while (*hplen && (*hp)[*hplen - 1] == '/')
        (*hplen)--; /* a trailing slash is not part of an origin, be lenient */
    if (!*hplen || memchr(*hp, '/', *hplen))
        return false;
    return true;
}

static size_t strip_default_port(const char *hp, size_t n, const char *scheme, size_t slen)
{
    const char *def = NULL;
    if ((slen == 4 && !strncasecmp(scheme, "http", 4)) || (slen == 2 && !strncasecmp(scheme, "ws", 2)))
        def = ":80";
    else if ((slen == 5 && !strncasecmp(scheme, "https", 5)) ||
             (slen == 3 && !strncasecmp(scheme, "wss", 3)))
        def = ":443";
    if (def) {
        size_t dl = strlen(def);
        if (n > dl && !memcmp(hp + n - dl, def, dl))
            return n - dl;
    }
    return n;
}

static bool same(const char *a, size_t al, const char *b, size_t bl)
{
    return al == bl && strncasecmp(a, b, al) == 0;
}

bool origin_allowed(const char *allow, const char *origin, size_t origin_len, const char *host,
                    size_t host_len)
{
    if (!origin)
        return true; /* not a browser: nothing to protect against */
    if (allow && !strcmp(allow, "*"))
        return true;
    const char *scheme, *hp;
    size_t slen, hplen;
    if (!origin_parts(origin, origin_len, &scheme, &slen, &hp, &hplen))
        return false; /* "null" and other opaque origins */
    hplen = strip_default_port(hp, hplen, scheme, slen);
    if (!allow || !*allow) {
        if (!host || !host_len)
            return false;
        /* Host carries no scheme: compare with the port removed for either
         * default so "example.com" matches "http://example.com:80". */
        size_t h1 = strip_default_port(host, host_len, scheme, slen);
        return same(hp, hplen, host, h1);
    }
    const char *p = allow;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t t = n;
        while (t && p[t - 1] == ' ')
            t--;
        const char *as, *ahp;
        size_t asl, ahl;
        if (t && origin_parts(p, t, &as, &asl, &ahp, &ahl)) {
            ahl = strip_default_port(ahp, ahl, as, asl);
            if (same(as, asl, scheme, slen) && same(ahp, ahl, hp, hplen))
                return true;
        }
        p += n;
    }
    return false;
}
