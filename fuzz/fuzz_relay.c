/* fuzz_relay.c - libFuzzer target for the relay's client state machine
 * through its real code: src/relay_main.c (built with PW_FUZZ_HOOKS: no
 * listener, signals or main) on the real loop, conn, hub, handshake and
 * frame parser, with tests/unit/hub_sim.c as Redis.
 *
 * The input is a script. Each operation is a byte, then its arguments:
 *   0 open a client connection (a socketpair; at most four)
 *   1 an upgrade request built from four bytes on client k (path, channel,
 *     since, epoch, Origin, a missing or bad header)
 *   2 a frame built from bytes (opcode, FIN, mask or not, payload up to 200
 *     bytes, close codes, oversized lengths) on k; with the operation byte
 *     at 240 or more, an in-band control message instead (subscribe,
 *     unsubscribe, refresh or an unknown type; channel, since, epoch, token
 *     each there or not, well-formed or not, split over two frames or not)
 *   3 raw bytes (up to 64) on k
 *   4 read what came back on k: an HTTP answer head, then only well-formed
 *     unmasked server frames (every frame starts where the last ended)
 *   5 shut down k's write side; 6 close k
 *   7 one loop round; 8 time passes (pings, handshake deadlines, lingers)
 *   9 Redis: run or answer a command, pub/sub, a publish of its own, drops,
 *     a restart
 * Queues are small (--max-queue 4 KiB) and at most three handshakes may be
 * pending, so the cut-offs and evictions run too. ASan/UBSan, the hub's
 * invariants and LeakSanitizer watch all of it.
 */
#include <errno.h>
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
void relay_fuzz_start(loop *l, hub *h, unsigned max_queue);
void relay_fuzz_adopt(int fd);
void relay_fuzz_stop(void);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_relay: %s\n", #cond);                                           \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#define PEERS 4

typedef struct peer {
    int fd;
    buf in;
    bool head_done; /* the HTTP answer head has been seen */
} peer;

typedef struct script {
    const uint8_t *p, *end;
} script;

static uint8_t next(script *s) { return s->p < s->end ? *s->p++ : 0; }

static const char *const channels[] = {"c0", "c1", "c2", "bad channel!", "c0,c2,c1", ""};
#define NCHANNELS (sizeof channels / sizeof channels[0])

static void upgrade(buf *out, script *s)
{
    uint8_t a = next(s), b = next(s), c = next(s), d = next(s);
    const char *path = a & 1 ? "/ws" : a & 2 ? "/nowhere" : "/status";
    buf_printf(out, "GET %s?channel=%s", path, channels[(a >> 2) % NCHANNELS]);
    if (b == 254)
        buf_puts(out, "&since=c0=3,c2=g0000001e0000001:5,c1");
    else if (b != 255)
        buf_printf(out, "&since=%u", b);
    if (c & 1)
        buf_printf(out, "&epoch=%s", c & 2 ? "g0000001e0000001" : "old");
    buf_puts(out, " HTTP/1.1\r\nHost: relay.test\r\n");
    if (!(d & 1))
        buf_puts(out, "Upgrade: websocket\r\nConnection: Upgrade\r\n");
    if (!(d & 2))
        buf_puts(out, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
    buf_puts(out, d & 4 ? "Sec-WebSocket-Version: 8\r\n" : "Sec-WebSocket-Version: 13\r\n");
    if (d & 8)
        buf_puts(out, d & 16 ? "Origin: http://relay.test\r\n" : "Origin: http://evil.test\r\n");
    if (!(d & 32))
        buf_puts(out, "\r\n");
}

static void frame(buf *out, script *s)
{
    uint8_t a = next(s), b = next(s);
    uint8_t op = a & 0xF;
    bool fin = !(a & 0x10), masked = !(a & 0x20);
    size_t n = b % 200;
    uint8_t h[14];
    size_t hl = 2;
    h[0] = (uint8_t)((fin ? 0x80 : 0) | (a & 0x40) | op); /* 0x40: RSV1 now and then */
    if (a & 0x80 && n < 126) { /* a length that says more than the frame has */
        h[1] = 127;
        memset(h + 2, 0, 8);
        h[9] = 200;
        hl = 10;
    } else if (n < 126) {
        h[1] = (uint8_t)n;
    } else {
        h[1] = 126;
        h[2] = 0;
        h[3] = (uint8_t)n;
        hl = 4;
    }
    if (masked) {
        h[1] |= 0x80;
        memcpy(h + hl, "\x12\x34\x56\x78", 4);
        hl += 4;
    }
    buf_append(out, h, hl);
    for (size_t i = 0; i < n; i++) {
        uint8_t v = op == 8 && i < 2 ? (uint8_t)(i ? 0xE8 : 0x03) : next(s); /* close 1000 */
        buf_putc(out, (char)(masked ? v ^ "\x12\x34\x56\x78"[i % 4] : v));
    }
}

/* A masked client frame of opcode op carrying p[0..n). */
static void client_frame(buf *out, uint8_t op, bool fin, const char *p, size_t n)
{
    uint8_t h[8] = {(uint8_t)((fin ? 0x80 : 0) | op)};
    size_t hl = 2;
    if (n < 126) {
        h[1] = (uint8_t)(0x80 | n);
    } else {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        hl = 4;
    }
    memcpy(h + hl, "\x12\x34\x56\x78", 4);
    buf_append(out, h, hl + 4);
    for (size_t i = 0; i < n; i++)
        buf_putc(out, (char)(p[i] ^ "\x12\x34\x56\x78"[i % 4]));
}

static const char *const control_types[] = {"subscribe", "unsubscribe", "refresh", "bogus"};

/* An in-band control message (the relay's subscribe/unsubscribe/refresh). */
static void control(buf *out, script *s)
{
    uint8_t a = next(s), b = next(s), c = next(s);
    buf m = BUF_INIT;
    buf_printf(&m, "{\"type\":\"%s\"", control_types[a % 4]);
    if (!(a & 4))
        buf_printf(&m, ",\"channel\":\"%s\"", channels[(a >> 3) % NCHANNELS]);
    if (b != 255)
        buf_printf(&m, ",\"since\":%u", b);
    if (c & 1)
        buf_printf(&m, ",\"epoch\":\"%s\"", c & 2 ? "g0000001e0000001" : "old");
    if (c & 4)
        buf_puts(&m, ",\"token\":\"eyJhbGciOiJIUzI1NiJ9.e30.x\"");
    if (c & 8)
        buf_puts(&m, c & 2 ? ",\"since\":\"bad\"" : ",\"since\":-1");
    if (!(c & 16))
        buf_putc(&m, '}');
    if (c & 32 && m.len > 1) { /* a text frame and a continuation */
        client_frame(out, 1, false, m.data, m.len / 2);
        client_frame(out, 0, true, m.data + m.len / 2, m.len - m.len / 2);
    } else {
        client_frame(out, 1, true, m.data, m.len);
    }
    buf_free(&m);
}

/* An HTTP head, then only whole unmasked server frames. */
static void drain(peer *pr)
{
    char tmp[65536];
    ssize_t n;
    while ((n = read(pr->fd, tmp, sizeof tmp)) > 0)
        buf_append(&pr->in, tmp, (size_t)n);
    if (!pr->in.len)
        return;
    size_t off = 0;
    if (!pr->head_done) {
        char *end = memmem(pr->in.data, pr->in.len, "\r\n\r\n", 4);
        if (!end)
            return;
        CHECK(pr->in.len >= 12 && memcmp(pr->in.data, "HTTP/1.1 ", 9) == 0);
        bool switching = memcmp(pr->in.data + 9, "101", 3) == 0;
        off = (size_t)(end - pr->in.data) + 4;
        if (!switching) { /* a refusal: its body, then the connection ends */
            pr->in.len = 0;
            pr->head_done = true;
            return;
        }
        pr->head_done = true;
    }
    while (pr->in.len - off >= 2) {
        const uint8_t *h = (const uint8_t *)pr->in.data + off;
        uint8_t op = h[0] & 0xF;
        CHECK((h[0] & 0x70) == 0);   /* no RSV bits */
        CHECK((h[1] & 0x80) == 0);   /* server frames are never masked */
        CHECK(op == 1 || op == 8 || op == 9 || op == 10);
        size_t len = h[1] & 0x7F, hl = 2;
        if (len == 126) {
            if (pr->in.len - off < 4)
                break;
            len = (size_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (len == 127) {
            if (pr->in.len - off < 10)
                break;
            len = 0;
            for (int i = 2; i < 10; i++)
                len = len << 8 | h[i];
            hl = 10;
            CHECK(len < (1u << 24));
        }
        if (op >= 8)
            CHECK(len <= 125 && (h[0] & 0x80));
        if (pr->in.len - off < hl + len)
            break;
        off += hl + len;
    }
    memmove(pr->in.data, pr->in.data + off, pr->in.len - off);
    pr->in.len -= off;
}

static void peer_close(peer *pr)
{
    if (pr->fd >= 0)
        close(pr->fd);
    pr->fd = -1;
    pr->head_done = false;
    buf_free(&pr->in);
}

static void redis_step(sim *s, uint8_t op, uint8_t arg)
{
    switch (op % 9) {
    case 0:
        sim_cmd_exec(s);
        break;
    case 1:
        sim_cmd_reply(s);
        break;
    case 2:
        sim_sub_exec(s);
        break;
    case 3:
    case 4:
        sim_sub_deliver(s);
        break;
    case 5:
    case 6:
        sim_publish(s, arg);
        break;
    case 7:
        if (arg & 2)
            arg & 1 ? sim_cmd_drop(s) : sim_cmd_up(s);
        else
            arg & 1 ? sim_sub_drop(s) : sim_sub_up(s);
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
    relay_fuzz_start(l, sim_hub(s), 4096);
    sim_cmd_up(s);
    sim_sub_up(s);
    peer peers[PEERS];
    for (int i = 0; i < PEERS; i++)
        peers[i] = (peer){.fd = -1, .in = BUF_INIT};
    script sc = {data, data + size};
    while (sc.p < sc.end) {
        uint8_t op = next(&sc);
        peer *pr = &peers[next(&sc) % PEERS];
        switch (op % 10) {
        case 0:
            if (pr->fd < 0) {
                int sv[2];
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0) {
                    pr->fd = sv[1];
                    relay_fuzz_adopt(sv[0]);
                }
            }
            break;
        case 1:
        case 2:
        case 3:
            if (pr->fd >= 0) {
                buf out = BUF_INIT;
                if (op % 10 == 1) {
                    upgrade(&out, &sc);
                } else if (op % 10 == 2) {
                    if (op >= 240)
                        control(&out, &sc);
                    else
                        frame(&out, &sc);
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
        case 4:
            if (pr->fd >= 0)
                drain(pr);
            break;
        case 5:
            if (pr->fd >= 0)
                shutdown(pr->fd, SHUT_WR);
            break;
        case 6:
            peer_close(pr);
            break;
        case 7:
            loop_run_once(l, 0);
            break;
        case 8:
            sim_advance(s, (unsigned)next(&sc) * 200);
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
    relay_fuzz_stop();
    loop_run_once(l, 0);
    sim_free(s);
    return 0;
}
