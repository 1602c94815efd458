/* utf8.h - strict UTF-8 validation (RFC 3629), whole-buffer and incremental.
 *
 * Pure functions over bytes: no allocation, no I/O. "Strict" means what
 * RFC 3629 and RFC 6455 require: no overlong forms, no surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF, no 0xC0/0xC1/0xF5..0xFF bytes.
 */
#ifndef PW_UTF8_H
#define PW_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Incremental validator state. Zero-initialise (or utf8_reset) before the
 * first utf8_feed; the struct is small and may live inside other objects. */
typedef struct utf8_state {
    uint8_t need; /* continuation bytes still expected for this sequence */
    uint8_t lo;   /* allowed range for the next continuation byte */
    uint8_t hi;
} utf8_state;

enum { UTF8_OK = 0, UTF8_INCOMPLETE = 1, UTF8_INVALID = -1 };

static inline void utf8_reset(utf8_state *s) { s->need = 0, s->lo = 0x80, s->hi = 0xBF; }

/* Feed len bytes continuing the sequence in *s. Returns UTF8_INVALID as soon
 * as the bytes cannot start or continue valid UTF-8 (the state is then
 * undefined until utf8_reset), UTF8_INCOMPLETE when the bytes end inside a
 * multi-byte sequence (more may follow), UTF8_OK when they end on a character
 * boundary. Fragmented WebSocket text messages are validated with this. */
int utf8_feed(utf8_state *s, const uint8_t *p, size_t len);

/* True when p[0..len) is complete, valid UTF-8. */
bool utf8_valid(const uint8_t *p, size_t len);

#endif
