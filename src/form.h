/* form.h - application/x-www-form-urlencoded (and query string) decoding.
 *
 * Pure functions over caller-owned bytes; nothing is allocated here.
 */
#ifndef PW_FORM_H
#define PW_FORM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct form_iter {
    const char *p, *end;
} form_iter;

void form_iter_init(form_iter *it, const char *s, size_t len);

/* Next "key=value" pair, separated by '&' (empty pairs are skipped). The
 * slices point into the input and are still encoded; a pair without '='
 * has an empty value. Returns true while a pair was produced. */
bool form_next(form_iter *it, const char **k, size_t *klen, const char **v, size_t *vlen);

/* Decode '+' and %XX escapes of in[0..len) into out, which must hold len
 * bytes (decoding never grows). Returns the decoded length, or -1 when an
 * escape is malformed ("%", "%4", "%zz"). Decoded bytes are not checked:
 * the caller validates UTF-8 and refuses NUL where it matters. */
ssize_t form_decode(const char *in, size_t len, char *out);

/* True when the encoded key k equals name once decoded. */
bool form_key_is(const char *k, size_t klen, const char *name);

#endif
