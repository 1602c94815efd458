/* fuzz_fcgi.c - libFuzzer target for the FastCGI record parser
 * (fcgi_proto.h). The same input is fed whole and in chunks whose sizes come
 * from the input itself; both must give the same sequence of events, and a
 * completed request's parameters must be NUL-terminated strings.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fcgi_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_EVENTS 256

static size_t events(const uint8_t *data, size_t size, size_t chunk_seed, int *out)
{
    fcgi_parser p;
    fcgi_parser_init(&p, 2048, 4096);
    size_t n = 0, off = 0, k = 0;
    while (off < size && n < MAX_EVENTS) {
        size_t step = chunk_seed ? 1 + (data[k++ % size] % 17) : size - off;
        if (step > size - off)
            step = size - off;
        size_t end = off + step;
        while (off < end && n < MAX_EVENTS) {
            fcgi_ev ev;
            size_t used = fcgi_parser_feed(&p, data + off, end - off, &ev);
            off += used;
            if (ev.type != FCGI_EV_NONE)
                out[n++] = (int)ev.type;
            if (ev.type == FCGI_EV_REQUEST) {
                for (int i = 0; i < FP_COUNT; i++) {
                    const char *v = fcgi_param(&p, (enum fcgi_param_id)i);
                    if (v && strlen(v) > 2048)
                        abort();
                }
                if (p.body.len > 4096)
                    abort();
                fcgi_parser_next(&p);
            }
            if (ev.type == FCGI_EV_MANAGEMENT && ev.reply_len > sizeof ev.reply)
                abort();
            if (ev.type == FCGI_EV_ERROR) {
                off = size;
                break;
            }
            if (!used && ev.type == FCGI_EV_NONE)
                break;
        }
        off = end > off ? end : off;
    }
    fcgi_parser_free(&p);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int a[MAX_EVENTS], b[MAX_EVENTS];
    size_t na = events(data, size, 0, a);
    size_t nb = events(data, size, 1, b);
    /* Chunking must not change what happens (up to the first error). */
    size_t m = na < nb ? na : nb;
    if (na < MAX_EVENTS && nb < MAX_EVENTS && (na != nb || memcmp(a, b, m * sizeof a[0]) != 0))
        abort();
    return 0;
}
