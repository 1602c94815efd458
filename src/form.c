/* form.c - urlencoded decoding (WHATWG application/x-www-form-urlencoded
 * parsing, strict about malformed escapes). No allocation, no I/O. */
#include "form.h"

#include <string.h>

void form_iter_init(form_iter *it, const char *s, size_t len)
{
    it->p = s;
    it->end = s + len;
}

bool form_next(form_iter *it, const char **k, size_t *klen, const char **v, size_t *vlen)
{
    while (it->p < it->end) {
        const char *start = it->p;
        const char *amp = memchr(start, '&', (size_t)(it->end - start));
        const char *stop = amp ? amp : it->end;
        it->p = amp ? amp + 1 : it->end;
        if (stop == start)
            continue;
        const char *eq = memchr(start, '=', (size_t)(stop - start));
        *k = start;
        if (eq) {
            *klen = (size_t)(eq - start);
            *v = eq + 1;
            *vlen = (size_t)(stop - eq - 1);
        } else {
            *klen = (size_t)(stop - start);
            *v = stop;
            *vlen = 0;
        }
        return true;
    }
    return false;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

ssize_t form_decode(const char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '+') {
            out[o++] = ' ';
        } else if (c == '%') {
            if (len - i < 3)
                return -1;
            int hi = hexval((unsigned char)in[i + 1]), lo = hexval((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = (char)c;
        }
    }
    return (ssize_t)o;
}

bool form_key_is(const char *k, size_t klen, const char *name)
{
    size_t nlen = strlen(name);
    if (klen == nlen && memcmp(k, name, nlen) == 0)
        return true;
    /* Rare: an encoded key ("cont%65nt"). Decode into a small buffer. */
    if (klen > 3 * nlen || !memchr(k, '%', klen))
        return false;
    char tmp[192];
    if (klen > sizeof tmp)
        return false;
    ssize_t n = form_decode(k, klen, tmp);
    return n == (ssize_t)nlen && memcmp(tmp, name, nlen) == 0;
}
