/* utf8.c - strict UTF-8 validation. Pure: no allocation, no I/O.
 *
 * The ranges follow RFC 3629 section 4 (the "UTF8-octets" grammar): the
 * second byte of E0, ED, F0 and F4 sequences has a narrower range, which is
 * how overlongs, surrogates and code points above U+10FFFF are refused.
 */
#include "utf8.h"

int utf8_feed(utf8_state *s, const uint8_t *p, size_t len)
{
    size_t i = 0;
    uint8_t need = s->need, lo = s->lo, hi = s->hi;

    while (i < len) {
        uint8_t c = p[i];
        if (need == 0) {
            /* Fast path: skip ASCII eight bytes at a time when aligned runs
             * allow it; plain loop otherwise. */
            if (c < 0x80) {
                i++;
                while (i + 8 <= len) {
                    uint64_t w;
                    __builtin_memcpy(&w, p + i, 8);
                    if (w & 0x8080808080808080ULL)
                        break;
                    i += 8;
                }
                continue;
            }
            lo = 0x80, hi = 0xBF;
            if (c >= 0xC2 && c <= 0xDF) {
                need = 1;
            } else if (c >= 0xE0 && c <= 0xEF) {
                need = 2;
                if (c == 0xE0)
                    lo = 0xA0; /* overlong */
                else if (c == 0xED)
                    hi = 0x9F; /* surrogates */
            } else if (c >= 0xF0 && c <= 0xF4) {
                need = 3;
                if (c == 0xF0)
                    lo = 0x90; /* overlong */
                else if (c == 0xF4)
                    hi = 0x8F; /* above U+10FFFF */
            } else {
                return UTF8_INVALID;
            }
        } else {
            if (c < lo || c > hi)
                return UTF8_INVALID;
            lo = 0x80, hi = 0xBF;
            need--;
        }
        i++;
    }
    s->need = need, s->lo = lo, s->hi = hi;
    return need ? UTF8_INCOMPLETE : UTF8_OK;
}

bool utf8_valid(const uint8_t *p, size_t len)
{
    utf8_state s;
    utf8_reset(&s);
    return utf8_feed(&s, p, len) == UTF8_OK;
}
