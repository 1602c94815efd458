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
    /* Decode on the fly and compare, so keys of any length work. */
    size_t n = 0, i = 0;
    while (i < klen) {
        char c = k[i];
        if (c == '+') {
            c = ' ';
            i++;
        } else if (c == '%') {
            int hi, lo;
            if (klen - i < 3 || (hi = hexval((unsigned char)k[i + 1])) < 0 ||
                (lo = hexval((unsigned char)k[i + 2])) < 0)
                return false;
            c = (char)(hi << 4 | lo);
            i += 3;
        } else {
            i++;
        }
        if (name[n] == '\0' || name[n] != c)
            return false;
        n++;
    }
    return name[n] == '\0';
}
