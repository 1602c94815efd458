/* fuzz_worker.c - libFuzzer target for the worker's FastCGI connection
 * handling through its real code: src/worker_main.c (built with
 * PW_FUZZ_HOOKS: no listener, signals or main) on the real loop, conn, hub
 * and FastCGI parser, with tests/unit/hub_sim.c as Redis.
 *
 * The input is a script. Each operation is a byte, then its arguments:
 *   0 open a connection from "nginx" (a socketpair; at most four)
 *   1 a request built from five bytes on connection k: publish (form or
 *     JSON, with or without Idempotency-Key), long-poll (since, epoch,
 *     timeout), EventSource (Last-Event-ID), /healthz, keep-alive or not
 *   2 raw bytes (up to 64) on connection k
 *   3 read what came back on k: it must be whole FastCGI records (version
 *     1, a type a responder sends)
 *   4 shut down k's write side; 5 close k
 *   6 one loop round; 7 time passes
 *   8 Redis: run a command, answer one, run or deliver pub/sub, a publish
 *     of its own, a connection drop or return, a restart
 * ASan/UBSan and the hub's invariants (PW_CHECK_INVARIANTS) watch all of it;
 * at the end everything is closed and LeakSanitizer sees what is left.
 *
 *   scripts/run-fuzz builds it: clang -DPW_FUZZ_HOOKS -DPW_CHECK_INVARIANTS
 *   -fsanitize=fuzzer,address,undefined with src/worker_main.c, the worker's
 *   modules and tests/unit/hub_sim.c (instead of src/broker.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "hub_sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void worker_fuzz_start(loop *l, hub *h, unsigned max_content);
void worker_fuzz_adopt(int fd);
void worker_fuzz_stop(void);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_worker: %s\n", #cond);                                          \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define PEERS 4

typedef struct peer {
    int fd; /* -1: none */
    buf in; /* what came back, not yet parsed */
} peer;

typedef struct script {
    const uint8_t *p, *end;
} script;

static uint8_t next(script *s) { return s->p < s->end ? *s->p++ : 0; }

static void record(buf *b, int type, int reqid, const void *content, size_t n)
{
    uint8_t h[8] = {1, (uint8_t)type, (uint8_t)(reqid >> 8), (uint8_t)reqid,
                    (uint8_t)(n >> 8), (uint8_t)n, 0, 0};
    buf_append(b, h, 8);
    buf_append(b, content, n);
}

static void nv(buf *b, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    uint8_t l[2] = {(uint8_t)nl, (uint8_t)vl};
    buf_append(b, l, 2);
    buf_append(b, name, nl);
    buf_append(b, value, vl);
}

static const char *const channels[] = {"c0", "c1", "c2", "x:y"};

/* One request as nginx sends it, chosen by five bytes. */
static void request(buf *out, script *s)
{
    uint8_t kind = next(s), a = next(s), b = next(s), c = next(s), d = next(s);
    int reqid = d & 0x80 ? 1 + (d & 0x7) : 1;
    bool keep = d & 1;
    const char *ch = channels[a % 4];
    buf params = BUF_INIT, body = BUF_INIT;
    char q[160], tmp[160];
    switch (kind % 6) {
    case 0: /* publish, form */
    case 1: /* publish, JSON */
        if (kind % 6 == 0)
            buf_printf(&body, "content=m%u%s&channel=%s", b, c & 1 ? "%20%F0%9F%98%80" : "", ch);
        else
            buf_printf(&body, "{\"content\":\"m%u\",\"channel\":\"%s\"}", b, ch);
        nv(&params, "REQUEST_METHOD", "POST");
        nv(&params, "DOCUMENT_URI", "/chat");
        nv(&params, "CONTENT_TYPE", kind % 6 == 0 ? "application/x-www-form-urlencoded"
                                                  : "application/json");
        snprintf(tmp, sizeof tmp, "%zu", body.len);
        nv(&params, "CONTENT_LENGTH", tmp);
        if (c & 2) {
            snprintf(tmp, sizeof tmp, "k%u", c >> 2);
            nv(&params, "HTTP_IDEMPOTENCY_KEY", tmp);
        }
        break;
    case 2: /* long-poll */
    case 3: /* EventSource */
        snprintf(q, sizeof q, "channel=%s%s%u%s&timeout=%u", ch, b == 255 ? "" : "&since=",
                 b == 255 ? 0u : b, c & 1 ? "&epoch=g0000001e0000001" : "", (c >> 1) % 3);
        if (b == 255)
            snprintf(q, sizeof q, "channel=%s&timeout=%u", ch, (c >> 1) % 3);
        nv(&params, "REQUEST_METHOD", "GET");
        nv(&params, "DOCUMENT_URI", "/status");
        nv(&params, "QUERY_STRING", q);
        if (kind % 6 == 3) {
            nv(&params, "HTTP_ACCEPT", "text/event-stream");
            if (c & 8) {
                snprintf(tmp, sizeof tmp, "g0000001e0000001:%u", b);
                nv(&params, "HTTP_LAST_EVENT_ID", tmp);
            }
        }
        break;
    case 4:
        nv(&params, "REQUEST_METHOD", "GET");
        nv(&params, "DOCUMENT_URI", "/healthz");
        break;
    default: /* something else: a 404, a 405 */
        nv(&params, "REQUEST_METHOD", b & 1 ? "DELETE" : "GET");
        nv(&params, "DOCUMENT_URI", b & 2 ? "/chat" : "/nowhere");
        break;
    }
    uint8_t begin[8] = {0, 1, keep ? 1 : 0, 0, 0, 0, 0, 0};
    record(out, 1, reqid, begin, 8);
    record(out, 4, reqid, params.data, params.len);
    record(out, 4, reqid, "", 0);
    if (body.len)
        record(out, 5, reqid, body.data, body.len);
    record(out, 5, reqid, "", 0);
    buf_free(&params);
    buf_free(&body);
}

/* Everything the worker wrote must be whole records of a responder. */
static void drain(peer *pr)
{
    char tmp[65536];
    ssize_t n;
    while ((n = read(pr->fd, tmp, sizeof tmp)) > 0)
        buf_append(&pr->in, tmp, (size_t)n);
    if (!pr->in.len)
        return;
    size_t off = 0;
    while (pr->in.len - off >= 8) {
        const uint8_t *h = (const uint8_t *)pr->in.data + off;
        CHECK(h[0] == 1);
        CHECK(h[1] == 3 || h[1] == 6 || h[1] == 7 || h[1] == 10 || h[1] == 11);
        size_t len = 8 + ((size_t)h[4] << 8 | h[5]) + h[6];
        if (pr->in.len - off < len)
            break;
        off += len;
    }
    memmove(pr->in.data, pr->in.data + off, pr->in.len - off);
    pr->in.len -= off;
}

static void peer_close(peer *pr)
{
    if (pr->fd >= 0)
        close(pr->fd);
    pr->fd = -1;
    buf_free(&pr->in);
}

static void redis_step(sim *s, uint8_t op, uint8_t arg)
{
    switch (op % 10) {
    case 0:
    case 1:
        sim_cmd_exec(s);
        break;
    case 2:
    case 3:
        sim_cmd_reply(s);
        break;
    case 4:
        sim_sub_exec(s);
        break;
    case 5:
        sim_sub_deliver(s);
        break;
    case 6:
        sim_publish(s, arg);
        break;
    case 7:
        if (arg & 1)
            sim_cmd_drop(s);
        else
            sim_cmd_up(s);
        break;
    case 8:
        if (arg & 1)
            sim_sub_drop(s);
        else
            sim_sub_up(s);
        break;
    default:
        if (arg < 16)
            sim_restart(s, arg & 1, (arg >> 1) % 3);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8192)
        return 0;
    signal(SIGPIPE, SIG_IGN);
    sim *s = sim_new(16, 4096, false);
    loop *l = sim_loop(s);
    worker_fuzz_start(l, sim_hub(s), 64);
    sim_cmd_up(s);
    sim_sub_up(s);
    peer peers[PEERS];
    for (int i = 0; i < PEERS; i++)
        peers[i] = (peer){.fd = -1, .in = BUF_INIT};
    script sc = {data, data + size};
    while (sc.p < sc.end) {
        uint8_t op = next(&sc);
        peer *pr = &peers[next(&sc) % PEERS];
        switch (op % 9) {
        case 0:
            if (pr->fd < 0) {
                int sv[2];
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0) {
                    pr->fd = sv[1];
                    worker_fuzz_adopt(sv[0]);
                }
            }
            break;
        case 1:
        case 2:
            if (pr->fd >= 0) {
                buf out = BUF_INIT;
                if (op % 9 == 1) {
                    request(&out, &sc);
                } else {
                    size_t n = next(&sc) % 64;
                    while (n-- && sc.p < sc.end)
                        buf_putc(&out, (char)next(&sc));
                }
                if (out.len && write(pr->fd, out.data, out.len) < 0 && errno != EAGAIN)
                    peer_close(pr);
                buf_free(&out);
            }
            break;
        case 3:
            if (pr->fd >= 0)
                drain(pr);
            break;
        case 4:
            if (pr->fd >= 0)
                shutdown(pr->fd, SHUT_WR);
            break;
        case 5:
            peer_close(pr);
            break;
        case 6:
            loop_run_once(l, 0);
            break;
        case 7:
            sim_advance(s, (unsigned)next(&sc) * 40);
            break;
        default: {
            uint8_t a = next(&sc);
            redis_step(s, a, next(&sc));
            break;
        }
        }
    }
    for (int i = 0; i < 3; i++)
        loop_run_once(l, 0);
    for (int i = 0; i < PEERS; i++) {
        if (peers[i].fd >= 0)
            drain(&peers[i]);
        peer_close(&peers[i]);
    }
    worker_fuzz_stop();
    loop_run_once(l, 0);
    sim_free(s);
    return 0;
}
