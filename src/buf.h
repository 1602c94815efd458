/* buf.h - growable byte buffers and shared, reference-counted byte blobs.
 *
 * buf: a private, growable buffer (the git strbuf idea). rbuf: an immutable
 * blob shared by every reader, e.g. one encoded answer written to 10,000
 * sockets. No I/O here. Allocation failure aborts: the daemons treat OOM as
 * fatal rather than threading ENOMEM through every formatter.
 */
#ifndef PW_BUF_H
#define PW_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct buf {
    char *data; /* NUL-terminated after every operation (when cap > 0) */
    size_t len;
    size_t cap;
} buf;

#define BUF_INIT {NULL, 0, 0}

/* Ensure room for extra more bytes plus the terminating NUL. */
void buf_grow(buf *b, size_t extra);
void buf_append(buf *b, const void *p, size_t n);
void buf_puts(buf *b, const char *s);
void buf_putc(buf *b, char c);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_put_u64(buf *b, uint64_t v);
static inline void buf_reset(buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}
/* Frees the storage; the buf is empty and reusable afterwards. */
void buf_free(buf *b);

/* Shared immutable bytes with one allocation. rbuf_new copies p; rbuf_from_buf
 * copies b's bytes and resets b (its storage is kept for reuse). The creator
 * holds one reference; every further holder takes one with rbuf_ref, and each
 * calls rbuf_unref once. */
typedef struct rbuf {
    uint32_t refs;
    size_t len;
    char data[]; /* NUL-terminated */
} rbuf;

rbuf *rbuf_new(const void *p, size_t n);
rbuf *rbuf_from_buf(buf *b);
static inline rbuf *rbuf_ref(rbuf *r)
{
    r->refs++;
    return r;
}
void rbuf_unref(rbuf *r);

/* Allocation helpers that abort on failure. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrndup(const char *s, size_t n);

#endif
