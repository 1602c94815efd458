/*
 * loadgen - push fan-out load generator for pushwire, the Tornado demo, Nchan and Socket.IO.
 *
 * One thread, one epoll loop (level triggered).  Opens N subscribers (HTTP
 * long-poll or WebSocket) at a bounded rate, waits until all are held,
 * publishes M messages I ms apart (each carrying "bench <seq> <t_ns> <runid> "),
 * records for every (subscriber, message) the receive time, and reports
 * deliveries, losses, duplicates, reordering, latency, fan-out completion,
 * publish latency/status, server RSS and CPU.  See bench/README-loadgen.md.
 *
 * Build: gcc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror \
 *            -o build/bench/loadgen bench/loadgen.c
 * Uses libc only (the WebSocket key is the fixed RFC 6455 sample key).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ config */

enum { SRV_PUSHWIRE, SRV_TORNADO, SRV_NCHAN, SRV_SOCKETIO };
enum { MODE_LP, MODE_WS, MODE_SSE };
static const char *const srv_names[] = {"pushwire", "tornado", "nchan", "socketio"};
static const char *const mode_names[] = {"longpoll", "ws", "sse"};

#define MAX_PIDS 64
#define MAX_PUBCONNS 64
#define SCRATCH_SIZE (256 * 1024)
#define MAX_HDR 65536
#define MAX_BODY (64u * 1024 * 1024)
#define OBUF 512
#define TOKLEN_MAX 64

static struct {
    int mode, server;
    const char *host;
    int port, pub_port; /* pub_port 0: same as port */
    const char *path, *pub_path, *channel;
    int subs, messages, size;
    double interval_ms; /* fractional: rates above 1,000 a second */
    double connect_rate;
    int connect_inflight, connect_timeout_ms, retries;
    /* Several processes on one run (bench/run's 100k case): followers hold
     * subscribers and publish nothing; the leader publishes once held_count
     * lines are in held_file. All share runid; source_ip spreads them. */
    int follow, held_count;
    const char *held_file, *source_ip, *runid_arg;
    double settle_s, max_seconds, connect_phase_s;
    int hold_ms, hold_max_ms, reconnect_delay_ms;
    int poll_timeout; /* pushwire ?timeout=T, -1 = not sent */
    int pub_conns, pub_form;
    const char *json_out, *pids_str, *pids_cmd;
    int verbose;
} C;

/* ------------------------------------------------------------------ time */

static int64_t T0; /* CLOCK_MONOTONIC ns at start */

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - T0;
}

static double cpu_self_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------------------------ server procs */

static int npids;
static int pids[MAX_PIDS];
static long rss_before[MAX_PIDS], rss_after[MAX_PIDS], rss_end[MAX_PIDS];
static long long cpu_pub0[MAX_PIDS], cpu_pub1[MAX_PIDS];

static long read_rss_kb(int pid)
{
    char fn[64], line[256];
    snprintf(fn, sizeof fn, "/proc/%d/status", pid);
    FILE *f = fopen(fn, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* utime+stime in clock ticks, -1 if gone */
static long long read_cpu_ticks(int pid)
{
    char fn[64], buf[1024];
    snprintf(fn, sizeof fn, "/proc/%d/stat", pid);
    int fd = open(fn, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    p++;
    /* fields after ')': 3 state ... 14 utime (index 11), 15 stime (index 12) */
    long long ut = 0, st = 0;
    for (int i = 0; i <= 12; i++) {
        while (*p == ' ')
            p++;
        if (!*p)
            return -1;
        if (i == 11)
            ut = strtoll(p, NULL, 10);
        if (i == 12)
            st = strtoll(p, NULL, 10);
        while (*p && *p != ' ')
            p++;
    }
    return ut + st;
}

static long long cpu_sum(long long *out)
{
    long long s = 0;
    for (int i = 0; i < npids; i++) {
        long long t = read_cpu_ticks(pids[i]);
        if (out)
            out[i] = t;
        if (t > 0)
            s += t;
    }
    return s;
}

static void rss_sample(long *out)
{
    for (int i = 0; i < npids; i++)
        out[i] = read_rss_kb(pids[i]);
}

static void add_pids_from(const char *s)
{
    while (s && *s) {
        while (*s && !isdigit((unsigned char)*s))
            s++;
        if (!*s)
            break;
        long v = strtol(s, (char **)&s, 10);
        if (v > 0 && npids < MAX_PIDS)
            pids[npids++] = (int)v;
    }
}

/* ------------------------------------------------------------------ subscribers */

enum { ST_IDLE, ST_QUEUED, ST_CONNECTING, ST_SEND, ST_WAIT, ST_OPEN, ST_DEAD };

struct sub {
    int fd;
    uint8_t state;
    uint8_t ready;       /* held at least once on the current connection */
    uint8_t inflight;    /* counted in n_inflight */
    uint8_t want_out;    /* EPOLLOUT registered */
    uint8_t retries;
    uint8_t has_since;
    uint8_t ws_frag_op;
    uint8_t ever_ok;     /* had a 200 long-poll answer / WebSocket handshake, ever */
    uint8_t epoch_len, etag_len, lm_len;
    uint16_t out_len, out_off;
    const char *outp;
    int64_t t_state; /* when the connection attempt started */
    char *in;        /* spill buffer for partial responses/frames */
    uint32_t in_len, in_cap;
    char *frag; /* fragmented WebSocket message */
    uint32_t frag_len, frag_cap;
    int32_t max_seq;
    uint32_t nrecv;
    int64_t since;
    char epoch[64];
    char etag[64];
    char lm[64];
    char obuf[OBUF];
};

static struct sub *subs;
static int N, M;
static uint32_t *recv_us; /* [sub*M + seq], us since T0, 0 = not received */
static char runid[9];
static int ep;
static char *scratch;
static char hostport[300];

/* connect queues: immediate and delayed (fixed delay, so FIFO == time order) */
struct q {
    int *idx;
    int64_t *due;
    size_t head, tail, cap;
};
static struct q q_now, q_later;
static int64_t RETRY_DELAY_NS = 200 * 1000000LL; /* --reconnect-delay-ms */

static void q_init(struct q *q, size_t cap)
{
    q->cap = cap + 1;
    q->idx = calloc(q->cap, sizeof(int));
    q->due = calloc(q->cap, sizeof(int64_t));
    q->head = q->tail = 0;
    if (!q->idx || !q->due) {
        perror("calloc");
        exit(2);
    }
}
static inline int q_empty(const struct q *q) { return q->head == q->tail; }
static void q_push(struct q *q, int i, int64_t due)
{
    q->idx[q->tail] = i;
    q->due[q->tail] = due;
    q->tail = (q->tail + 1) % q->cap;
}
static int q_pop(struct q *q)
{
    int i = q->idx[q->head];
    q->head = (q->head + 1) % q->cap;
    return i;
}

/* ------------------------------------------------------------------ statistics */

static struct {
    long connect_attempts, connect_failures, connect_refused, connect_timeouts, handshake_failures;
    long dead;
    long reconnects, disconnects, ws_closes, ws_pings;
    long lp_responses, lp_empty, lp_http_errors, proto_errors;
    long pw_resets, pw_more;
    long received, dups, ooo, foreign;
    long status_counts_other;
    long long bytes_in;
    long events;
} S;

static int n_ready, n_inflight, n_started, complete_subs, held_at_pub;

/* publish records */
static int64_t *pub_send_ns, *pub_done_ns;
static int *pub_status;
static int64_t *pub_sched_ns;

/* ------------------------------------------------------------------ phases */

enum { PH_CONNECT, PH_HOLD, PH_PUBLISH, PH_SETTLE, PH_DONE };
static int phase = PH_CONNECT;
static int64_t t_connect_end, t_hold_start, t_pub_start, t_last_pub, t_end, t_hard, t_connect_deadline;
static double self_cpu_start, self_cpu_connect_end, self_cpu_pub_start, self_cpu_end;
static int64_t waited_ns_pub; /* time spent inside epoll_wait during publish+settle */
static long wakeups_pub, events_pub, max_batch_pub, big_batches_pub; /* epoll_wait batches, publish+settle */
static int next_pub, pubs_answered;
static const char *end_reason = "?";
static volatile sig_atomic_t got_signal;
static int64_t tb_next; /* connect token bucket */
static long long cpu_hold_last;
static int64_t t_hold_sample;

/* ------------------------------------------------------------------ helpers */

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void vlog(const char *fmt, ...)
{
    if (!C.verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%8.3f] ", mono_ns() / 1e9);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static struct sockaddr_in server_addr, pub_addr;

#define TAG_SUB 1ULL
#define TAG_PUB 2ULL
static inline uint64_t ev_data(uint64_t tag, uint32_t idx) { return (tag << 32) | idx; }

static void ep_ctl(int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev = {.events = events, .data.u64 = data};
    if (epoll_ctl(ep, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl: %s", strerror(errno));
}

static int tcp_connect_to(const struct sockaddr_in *addr, int *fd_out);
static struct sockaddr_in source_addr; /* --source-ip; sin_family 0: none */

static int tcp_connect(int *fd_out) { return tcp_connect_to(&server_addr, fd_out); }

static int tcp_connect_to(const struct sockaddr_in *addr, int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (source_addr.sin_family && addr == &server_addr) {
        /* the port is chosen at connect(), per destination: one source
           address is not bound by the ephemeral range across servers */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (const struct sockaddr *)&source_addr, sizeof source_addr) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    int r = connect(fd, (const struct sockaddr *)addr, sizeof *addr);
    if (r < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    *fd_out = fd;
    return r == 0 ? 1 : 0; /* 1 = connected already */
}

/* percent-encode into dst, returns length */
static size_t urlenc(char *dst, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '%';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    dst[o] = 0;
    return o;
}

/* ------------------------------------------------------------------ HTTP response parser */

struct hresp {
    int status;
    int close;
    const char *body;
    size_t body_len;
    const char *etag, *lm, *wsaccept;
    size_t etag_len, lm_len, wsaccept_len;
};

static int hdr_is(const char *line, size_t n, const char *name, const char **val, size_t *vlen)
{
    size_t nl = strlen(name);
    if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl))
        return 0;
    const char *v = line + nl + 1, *e = line + n;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *val = v;
    *vlen = (size_t)(e - v);
    return 1;
}

static int contains_ci(const char *v, size_t n, const char *word)
{
    size_t w = strlen(word);
    for (size_t i = 0; i + w <= n; i++)
        if (!strncasecmp(v + i, word, w))
            return 1;
    return 0;
}

/*
 * Parse one complete HTTP/1.x response at p[0..len).
 * Returns bytes consumed (>0), 0 if incomplete, -1 on a protocol error.
 * A chunked body is decoded in place (only once complete).  headers_only: the
 * response has no body (101 handshake).
 */
static long http_parse(char *p, size_t len, int eof, struct hresp *h, int headers_only)
{
    memset(h, 0, sizeof *h);
    char *he = memmem(p, len, "\r\n\r\n", 4);
    if (!he)
        return len > MAX_HDR ? -1 : 0;
    size_t hlen = (size_t)(he - p) + 4;
    if (len < 12 || memcmp(p, "HTTP/1.", 7))
        return -1;
    int minor = p[7] - '0';
    if (p[8] != ' ' || !isdigit((unsigned char)p[9]) || !isdigit((unsigned char)p[10]) ||
        !isdigit((unsigned char)p[11]))
        return -1;
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    int keepalive = 0, chunked = 0, have_cl = 0;
    unsigned long long cl = 0;
    char *line = memchr(p, '\n', hlen);
    line = line ? line + 1 : he;
    while (line < he + 2) {
        char *nl = memchr(line, '\n', (size_t)(he + 2 - line));
        if (!nl)
            break;
        size_t n = (size_t)(nl - line);
        if (n && line[n - 1] == '\r')
            n--;
        const char *v;
        size_t vl;
        if (hdr_is(line, n, "content-length", &v, &vl)) {
            char tmp[32];
            if (vl == 0 || vl >= sizeof tmp)
                return -1;
            memcpy(tmp, v, vl);
            tmp[vl] = 0;
            char *end;
            cl = strtoull(tmp, &end, 10);
            if (*end)
                return -1;
            have_cl = 1;
        } else if (hdr_is(line, n, "transfer-encoding", &v, &vl)) {
            if (contains_ci(v, vl, "chunked"))
                chunked = 1;
        } else if (hdr_is(line, n, "connection", &v, &vl)) {
            if (contains_ci(v, vl, "close"))
                h->close = 1;
            if (contains_ci(v, vl, "keep-alive"))
                keepalive = 1;
        } else if (hdr_is(line, n, "etag", &v, &vl)) {
            h->etag = v;
            h->etag_len = vl;
        } else if (hdr_is(line, n, "last-modified", &v, &vl)) {
            h->lm = v;
            h->lm_len = vl;
        } else if (hdr_is(line, n, "sec-websocket-accept", &v, &vl)) {
            h->wsaccept = v;
            h->wsaccept_len = vl;
        }
        line = nl + 1;
    }
    if (minor == 0 && !keepalive)
        h->close = 1;
    char *body = p + hlen;
    size_t avail = len - hlen;
    if (headers_only || (h->status >= 100 && h->status < 200) || h->status == 204 || h->status == 304) {
        h->body = body;
        h->body_len = 0;
        return (long)hlen;
    }
    if (chunked) {
        /* pass 1: check completeness */
        size_t q = 0, total_data = 0;
        for (;;) {
            char *crlf = memmem(body + q, avail - q, "\r\n", 2);
            if (!crlf)
                return (avail - q > 1024) ? -1 : 0;
            char *end;
            unsigned long long sz = strtoull(body + q, &end, 16);
            if (end == body + q)
                return -1;
            size_t after = (size_t)(crlf - body) + 2;
            if (sz == 0) {
                /* trailers until empty line */
                size_t t = after;
                for (;;) {
                    char *c2 = memmem(body + t, avail - t, "\r\n", 2);
                    if (!c2)
                        return (avail - t > 4096) ? -1 : 0;
                    size_t ll = (size_t)(c2 - (body + t));
                    t += ll + 2;
                    if (ll == 0)
                        break;
                }
                q = t;
                break;
            }
            if (sz > MAX_BODY)
                return -1;
            if (avail < after + sz + 2)
                return 0;
            if (body[after + sz] != '\r' || body[after + sz + 1] != '\n')
                return -1;
            total_data += sz;
            q = after + sz + 2;
        }
        /* pass 2: decode in place */
        size_t r = 0, w = 0;
        for (;;) {
            char *crlf = memmem(body + r, avail - r, "\r\n", 2);
            unsigned long long sz = strtoull(body + r, NULL, 16);
            size_t after = (size_t)(crlf - body) + 2;
            if (sz == 0)
                break;
            memmove(body + w, body + after, sz);
            w += sz;
            r = after + sz + 2;
        }
        (void)total_data;
        h->body = body;
        h->body_len = w;
        return (long)(hlen + q);
    }
    if (have_cl) {
        if (cl > MAX_BODY)
            return -1;
        if (avail < cl)
            return 0;
        h->body = body;
        h->body_len = (size_t)cl;
        return (long)(hlen + cl);
    }
    /* delimited by close */
    if (!eof)
        return avail > MAX_BODY ? -1 : 0;
    h->close = 1;
    h->body = body;
    h->body_len = avail;
    return (long)len;
}

/* ------------------------------------------------------------------ minimal JSON (top level) */

static const char *js_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

static const char *js_str(const char *p, const char *e) /* p at '"' */
{
    p++;
    while (p < e) {
        if (*p == '\\')
            p += 2;
        else if (*p == '"')
            return p + 1;
        else
            p++;
    }
    return NULL;
}

static const char *js_val(const char *p, const char *e)
{
    p = js_ws(p, e);
    if (p >= e)
        return NULL;
    if (*p == '"')
        return js_str(p, e);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < e) {
            char c = *p;
            if (c == '"') {
                p = js_str(p, e);
                if (!p)
                    return NULL;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\r' && *p != '\n' &&
           *p != '\t')
        p++;
    return p;
}

struct pwmsg {
    int has_id, reset, more;
    int64_t id;
    const char *epoch;
    size_t epoch_len;
    const char *msgs, *content;
    size_t msgs_len, content_len;
};

/* top-level keys of a pushwire answer/frame; returns 0 if it is not a JSON object */
static int pw_parse(const char *p, size_t n, struct pwmsg *m)
{
    memset(m, 0, sizeof *m);
    const char *e = p + n;
    p = js_ws(p, e);
    if (p >= e || *p != '{')
        return 0;
    p++;
    for (;;) {
        p = js_ws(p, e);
        if (p >= e)
            return 0;
        if (*p == '}')
            return 1;
        if (*p != '"')
            return 0;
        const char *k0 = p + 1;
        p = js_str(p, e);
        if (!p)
            return 0;
        size_t kl = (size_t)(p - 1 - k0);
        p = js_ws(p, e);
        if (p >= e || *p != ':')
            return 0;
        const char *v0 = js_ws(p + 1, e);
        const char *v1 = js_val(v0, e);
        if (!v1)
            return 0;
#define KEY(s) (kl == sizeof(s) - 1 && !memcmp(k0, s, kl))
        if (KEY("id")) {
            const char *d = v0;
            if (d < v1 && *d == '"')
                d++;
            if (d < v1 && (isdigit((unsigned char)*d) || *d == '-')) {
                m->id = strtoll(d, NULL, 10);
                m->has_id = 1;
            }
        } else if (KEY("epoch")) {
            if (*v0 == '"') {
                m->epoch = v0 + 1;
                m->epoch_len = (size_t)(v1 - v0 - 2);
            } else {
                m->epoch = v0;
                m->epoch_len = (size_t)(v1 - v0);
            }
        } else if (KEY("reset")) {
            m->reset = (*v0 == 't');
        } else if (KEY("more")) {
            m->more = (*v0 == 't');
        } else if (KEY("messages")) {
            m->msgs = v0;
            m->msgs_len = (size_t)(v1 - v0);
        } else if (KEY("content")) {
            m->content = v0;
            m->content_len = (size_t)(v1 - v0);
        }
#undef KEY
        p = js_ws(v1, e);
        if (p < e && *p == ',')
            p++;
    }
}

/* ------------------------------------------------------------------ deliveries */

static inline void record(int si, uint32_t seq, int64_t now)
{
    struct sub *s = &subs[si];
    uint32_t *slot = &recv_us[(size_t)si * (size_t)M + seq];
    if (*slot) {
        S.dups++;
        return;
    }
    int64_t us = now / 1000;
    *slot = us < 1 ? 1 : (uint32_t)us;
    S.received++;
    if ((int32_t)seq < s->max_seq)
        S.ooo++;
    else
        s->max_seq = (int32_t)seq;
    if (++s->nrecv == (uint32_t)M)
        complete_subs++;
}

/* find "bench <seq> <t_ns> <runid>" tokens; returns the number found (ours) */
static int scan_tokens(int si, const char *p, size_t n, int64_t now)
{
    const char *e = p + n;
    int found = 0;
    while (p < e) {
        const char *q = memmem(p, (size_t)(e - p), "bench ", 6);
        if (!q)
            break;
        q += 6;
        p = q;
        uint64_t seq = 0;
        int nd = 0;
        while (q < e && isdigit((unsigned char)*q) && nd < 10) {
            seq = seq * 10 + (uint64_t)(*q - '0');
            q++;
            nd++;
        }
        if (!nd || q >= e || *q != ' ')
            continue;
        q++;
        nd = 0;
        int64_t t_abs = 0;
        while (q < e && isdigit((unsigned char)*q)) {
            if (nd < 19)
                t_abs = t_abs * 10 + (*q - '0');
            q++;
            nd++;
        }
        if (!nd || q >= e || *q != ' ')
            continue;
        q++;
        if (e - q < 8 || memcmp(q, runid, 8) || seq >= (uint64_t)M) {
            S.foreign++;
            continue;
        }
        if (C.follow && !pub_send_ns[seq]) /* the leader's send time */
            pub_send_ns[seq] = t_abs - T0 > 0 ? t_abs - T0 : 1;
        record(si, (uint32_t)seq, now);
        found++;
        p = q + 8;
    }
    return found;
}

/* a payload (long-poll body or WebSocket message) for subscriber si */
static int handle_payload(int si, const char *p, size_t n, int64_t now)
{
    struct sub *s = &subs[si];
    S.bytes_in += (long long)n;
    if (C.server != SRV_PUSHWIRE)
        return scan_tokens(si, p, n, now);
    struct pwmsg m;
    if (!pw_parse(p, n, &m)) {
        S.proto_errors++;
        return scan_tokens(si, p, n, now);
    }
    if (m.has_id) {
        s->since = m.id;
        s->has_since = 1;
    }
    if (m.epoch && m.epoch_len < sizeof s->epoch) {
        memcpy(s->epoch, m.epoch, m.epoch_len);
        s->epoch_len = (uint8_t)m.epoch_len;
    }
    if (m.reset)
        S.pw_resets++;
    if (m.more)
        S.pw_more++;
    /* the top-level "content" of a long-poll answer repeats the last message:
       scan "messages" when present, "content" otherwise */
    if (m.msgs)
        return scan_tokens(si, m.msgs, m.msgs_len, now);
    if (m.content)
        return scan_tokens(si, m.content, m.content_len, now);
    return 0;
}

/* ------------------------------------------------------------------ requests */

static char *lp_static, *ws_static;
static size_t lp_static_len, ws_static_len;
static const char WS_KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char WS_ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/* path + query for a subscriber into buf */
static int sub_target(struct sub *s, char *buf, size_t cap)
{
    if (C.server != SRV_PUSHWIRE)
        return snprintf(buf, cap, "%s", C.path);
    char ch[200] = "", ep_enc[200] = "";
    int n = snprintf(buf, cap, "%s", C.path);
    char sep = strchr(C.path, '?') ? '&' : '?';
    if (C.channel) {
        urlenc(ch, sizeof ch, C.channel, strlen(C.channel));
        n += snprintf(buf + n, cap - (size_t)n, "%cchannel=%s", sep, ch);
        sep = '&';
    }
    if (s->has_since) {
        n += snprintf(buf + n, cap - (size_t)n, "%csince=%" PRId64, sep, s->since);
        sep = '&';
        if (s->epoch_len) {
            urlenc(ep_enc, sizeof ep_enc, s->epoch, s->epoch_len);
            n += snprintf(buf + n, cap - (size_t)n, "&epoch=%s", ep_enc);
        }
    }
    if (C.mode == MODE_LP && C.poll_timeout >= 0)
        n += snprintf(buf + n, cap - (size_t)n, "%ctimeout=%d", sep, C.poll_timeout);
    return n;
}

static void build_request(struct sub *s)
{
    if (C.mode == MODE_SSE) {
        /* HTTP/1.0: the stream comes unchunked and ends with the connection */
        char tgt[320];
        sub_target(s, tgt, sizeof tgt);
        int n = snprintf(s->obuf, OBUF, "GET %s HTTP/1.0\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n",
                         tgt, hostport);
        s->outp = s->obuf;
        s->out_len = (uint16_t)(n < OBUF ? n : OBUF - 1);
    } else if (C.mode == MODE_WS) {
        if (C.server != SRV_PUSHWIRE) {
            s->outp = ws_static;
            s->out_len = (uint16_t)ws_static_len;
        } else {
            char tgt[320];
            sub_target(s, tgt, sizeof tgt);
            int n = snprintf(s->obuf, OBUF,
                             "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                             tgt, hostport, WS_KEY);
            s->outp = s->obuf;
            s->out_len = (uint16_t)(n < OBUF ? n : OBUF - 1);
        }
    } else if (C.server == SRV_TORNADO) {
        s->outp = lp_static;
        s->out_len = (uint16_t)lp_static_len;
    } else if (C.server == SRV_NCHAN) {
        int n = snprintf(s->obuf, OBUF, "GET %s HTTP/1.1\r\nHost: %s\r\n", C.path, hostport);
        if (s->etag_len)
            n += snprintf(s->obuf + n, OBUF - (size_t)n, "If-None-Match: %.*s\r\n", (int)s->etag_len, s->etag);
        if (s->lm_len)
            n += snprintf(s->obuf + n, OBUF - (size_t)n, "If-Modified-Since: %.*s\r\n", (int)s->lm_len, s->lm);
        n += snprintf(s->obuf + n, OBUF - (size_t)n, "\r\n");
        s->outp = s->obuf;
        s->out_len = (uint16_t)(n < OBUF ? n : OBUF - 1);
    } else {
        char tgt[320];
        sub_target(s, tgt, sizeof tgt);
        int n = snprintf(s->obuf, OBUF, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n\r\n", tgt,
                         hostport);
        s->outp = s->obuf;
        s->out_len = (uint16_t)(n < OBUF ? n : OBUF - 1);
    }
    s->out_off = 0;
}

/* ------------------------------------------------------------------ subscriber lifecycle */

static inline int sidx(struct sub *s) { return (int)(s - subs); }

static void sub_set_events(struct sub *s, int want_out)
{
    if (s->want_out == want_out)
        return;
    s->want_out = (uint8_t)want_out;
    ep_ctl(EPOLL_CTL_MOD, s->fd, EPOLLIN | (want_out ? EPOLLOUT : 0), ev_data(TAG_SUB, (uint32_t)sidx(s)));
}

static void sub_close_fd(struct sub *s)
{
    if (s->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    if (s->ready) {
        s->ready = 0;
        n_ready--;
    }
    if (s->inflight) {
        s->inflight = 0;
        n_inflight--;
    }
    s->in_len = 0;
    s->frag_len = 0;
    s->out_len = s->out_off = 0;
    s->want_out = 0;
    s->state = ST_IDLE;
}

static void sub_enqueue(struct sub *s, int delayed)
{
    s->state = ST_QUEUED;
    if (delayed)
        q_push(&q_later, sidx(s), mono_ns() + RETRY_DELAY_NS);
    else
        q_push(&q_now, sidx(s), 0);
}

/* failure before the subscriber was held: a connect failure (retried) */
static void sub_connect_failed(struct sub *s, const char *why)
{
    S.connect_failures++;
    vlog("sub %d connect failure: %s", sidx(s), why);
    sub_close_fd(s);
    if (phase == PH_DONE)
        return;
    if (s->retries < C.retries) {
        s->retries++;
        sub_enqueue(s, 1);
    } else {
        s->state = ST_DEAD;
        S.dead++;
    }
}

/* drop the connection of a held subscriber and reconnect (delayed after errors) */
static void sub_reconnect(struct sub *s, int delayed)
{
    sub_close_fd(s);
    if (phase == PH_DONE)
        return;
    S.reconnects++;
    sub_enqueue(s, delayed);
}

static void sub_mark_ready(struct sub *s)
{
    if (!s->ready) {
        s->ready = 1;
        n_ready++;
    }
    if (s->inflight) {
        s->inflight = 0;
        n_inflight--;
    }
}

/* write pending output; returns -1 if the subscriber was closed */
static int sub_flush(struct sub *s)
{
    while (s->out_off < s->out_len) {
        ssize_t w = send(s->fd, s->outp + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                sub_set_events(s, 1);
                return 0;
            }
            if (errno == EINTR)
                continue;
            if (s->ready) {
                S.disconnects++;
                sub_reconnect(s, 1);
            } else
                sub_connect_failed(s, strerror(errno));
            return -1;
        }
        s->out_off = (uint16_t)(s->out_off + w);
    }
    s->out_len = s->out_off = 0;
    sub_set_events(s, 0);
    if (s->state == ST_SEND) {
        s->state = ST_WAIT;
        if (C.mode == MODE_LP)
            sub_mark_ready(s); /* request sent, not answered: held */
    }
    return 0;
}

static void sub_on_connected(struct sub *s)
{
    s->state = ST_SEND;
    build_request(s);
    sub_flush(s);
}

static void sub_start(struct sub *s)
{
    int fd = -1;
    S.connect_attempts++;
    n_started++;
    int r = tcp_connect(&fd);
    s->t_state = mono_ns();
    if (r < 0) {
        if (r == -ECONNREFUSED)
            S.connect_refused++;
        s->state = ST_IDLE;
        sub_connect_failed(s, strerror(-r));
        return;
    }
    s->fd = fd;
    s->inflight = 1;
    n_inflight++;
    s->want_out = (r == 0);
    ep_ctl(EPOLL_CTL_ADD, fd, EPOLLIN | (r == 0 ? EPOLLOUT : 0), ev_data(TAG_SUB, (uint32_t)sidx(s)));
    if (r == 1)
        sub_on_connected(s);
    else
        s->state = ST_CONNECTING;
}

/* masked client frame (pong/close) appended to the output buffer */
static void sub_send_ctrl(struct sub *s, int op, const char *payload, size_t n)
{
    if (n > 125)
        n = 125;
    if (s->out_off < s->out_len && s->outp != s->obuf) {
        /* pending shared bytes (cannot happen once open, but be safe) */
        return;
    }
    if (s->out_off >= s->out_len)
        s->out_len = s->out_off = 0;
    if (s->out_len + 6 + n > OBUF)
        return;
    char *o = s->obuf + s->out_len;
    static const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    o[0] = (char)(0x80 | op);
    o[1] = (char)(0x80 | n);
    memcpy(o + 2, mask, 4);
    for (size_t i = 0; i < n; i++)
        o[6 + i] = (char)(payload[i] ^ mask[i & 3]);
    s->outp = s->obuf;
    s->out_len = (uint16_t)(s->out_len + 6 + n);
    sub_flush(s);
}

/* ---- long-poll responses */

/* returns bytes consumed, or -1 if the subscriber was closed/reset */
static long lp_process(struct sub *s, char *data, size_t len, int eof)
{
    size_t off = 0;
    int64_t now = mono_ns();
    while (off < len) {
        struct hresp h;
        long rc = http_parse(data + off, len - off, eof, &h, 0);
        if (rc == 0)
            break;
        if (rc < 0) {
            S.proto_errors++;
            if (s->ready) {
                S.disconnects++;
                sub_reconnect(s, 1);
            } else
                sub_connect_failed(s, "bad HTTP response");
            return -1;
        }
        off += (size_t)rc;
        if (s->state != ST_WAIT) {
            /* response before the request was fully written: treat as error */
            S.proto_errors++;
            sub_reconnect(s, 1);
            return -1;
        }
        S.lp_responses++;
        if (h.status == 200) {
            s->ever_ok = 1;
            if (!s->ready)
                sub_mark_ready(s);
            if (handle_payload(sidx(s), h.body, h.body_len, now) == 0)
                S.lp_empty++;
            if (C.server == SRV_NCHAN) {
                if (h.etag && h.etag_len < sizeof s->etag) {
                    memcpy(s->etag, h.etag, h.etag_len);
                    s->etag_len = (uint8_t)h.etag_len;
                }
                if (h.lm && h.lm_len < sizeof s->lm) {
                    memcpy(s->lm, h.lm, h.lm_len);
                    s->lm_len = (uint8_t)h.lm_len;
                }
            }
        } else if (h.status == 304 || h.status == 204 || h.status == 408) {
            S.lp_empty++;
        } else {
            S.lp_http_errors++;
            vlog("sub %d long-poll status %d", sidx(s), h.status);
            if (s->ready && s->ever_ok) {
                S.disconnects++;
                sub_reconnect(s, 1);
            } else
                sub_connect_failed(s, "long-poll HTTP error");
            return -1;
        }
        if (phase == PH_DONE) {
            sub_close_fd(s);
            return -1;
        }
        if (h.close) {
            sub_reconnect(s, 0);
            return -1;
        }
        /* re-poll at once on the same connection */
        s->state = ST_SEND;
        build_request(s);
        if (sub_flush(s) < 0)
            return -1;
    }
    return (long)off;
}

/* ---- WebSocket */

/* Socket.IO over Engine.IO 4 (one packet per frame): "0{..}" open -> send
 * "40" (connect to the main namespace); "40{..}" the connect ack: held from
 * here (the server joined the room before acking); "2" ping -> "3" pong;
 * "42[..]" an event: a payload. */
static void sio_packet(struct sub *s, const char *p, size_t n)
{
    if (n >= 1 && p[0] == '0')
        sub_send_ctrl(s, 0x1, "40", 2);
    else if (n == 1 && p[0] == '2')
        sub_send_ctrl(s, 0x1, "3", 1);
    else if (n >= 2 && p[0] == '4' && p[1] == '0')
        sub_mark_ready(s);
    else if (n >= 2 && p[0] == '4' && p[1] == '2')
        handle_payload(sidx(s), p, n, mono_ns());
    else if (!(n >= 2 && p[0] == '4' && p[1] == '1') && !(n == 1 && p[0] == '6'))
        S.proto_errors++;
}

static int ws_message(struct sub *s, const char *p, size_t n)
{
    if (C.server == SRV_SOCKETIO)
        sio_packet(s, p, n);
    else
        handle_payload(sidx(s), p, n, mono_ns());
    return 0;
}

/* The head of a streaming answer (a WebSocket 101, an EventSource 200):
 * bytes consumed and the subscriber open and held, 0 for more to come, or
 * -1 when it failed (the subscriber was closed). */
static long stream_head(struct sub *s, char *data, size_t len)
{
    struct hresp h;
    long rc = http_parse(data, len, 0, &h, 1);
    if (rc == 0)
        return 0;
    int ok = rc > 0 && (C.mode == MODE_SSE ? h.status == 200
                                           : h.status == 101 && h.wsaccept &&
                                                 h.wsaccept_len == sizeof WS_ACCEPT - 1 &&
                                                 !memcmp(h.wsaccept, WS_ACCEPT, h.wsaccept_len));
    if (!ok) {
        S.handshake_failures++;
        vlog("sub %d: handshake failed (status %d)", sidx(s), rc < 0 ? -1 : h.status);
        sub_connect_failed(s, "handshake");
        return -1;
    }
    s->state = ST_OPEN;
    s->ever_ok = 1;
    if (C.server != SRV_SOCKETIO) /* Socket.IO: once the namespace is joined */
        sub_mark_ready(s);
    return rc;
}

/* frames after the head; returns bytes consumed, or -1 if closed/reset */
static long ws_process(struct sub *s, char *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        unsigned char *f = (unsigned char *)data + off;
        size_t avail = len - off;
        if (avail < 2)
            break;
        int fin = f[0] & 0x80, op = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t plen = f[1] & 0x7f;
        size_t hl = 2;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = ((uint64_t)f[2] << 8) | f[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | f[2 + i];
            hl = 10;
        }
        if (plen > MAX_BODY) {
            S.proto_errors++;
            S.disconnects++;
            sub_reconnect(s, 1);
            return -1;
        }
        size_t mo = hl;
        if (masked)
            hl += 4;
        if (avail < hl + plen)
            break;
        char *pl = (char *)f + hl;
        if (masked)
            for (uint64_t i = 0; i < plen; i++)
                pl[i] ^= (char)f[mo + (i & 3)];
        off += hl + (size_t)plen;
        switch (op) {
        case 0x1:
        case 0x2:
            if (fin) {
                ws_message(s, pl, (size_t)plen);
            } else {
                s->frag_len = 0;
                s->ws_frag_op = (uint8_t)op;
                goto append;
            }
            break;
        case 0x0:
        append:
            if (s->frag_len + plen > MAX_BODY) {
                S.proto_errors++;
                S.disconnects++;
                sub_reconnect(s, 1);
                return -1;
            }
            if (s->frag_len + plen > s->frag_cap) {
                uint32_t nc = s->frag_cap ? s->frag_cap : 4096;
                while (nc < s->frag_len + plen)
                    nc *= 2;
                char *nb = realloc(s->frag, nc);
                if (!nb)
                    die("out of memory");
                s->frag = nb;
                s->frag_cap = nc;
            }
            memcpy(s->frag + s->frag_len, pl, (size_t)plen);
            s->frag_len += (uint32_t)plen;
            if (fin) {
                ws_message(s, s->frag, s->frag_len);
                s->frag_len = 0;
            }
            break;
        case 0x8:
            S.ws_closes++;
            sub_send_ctrl(s, 0x8, pl, plen >= 2 ? 2 : 0);
            if (s->fd >= 0) {
                if (phase == PH_DONE)
                    sub_close_fd(s);
                else {
                    S.disconnects++;
                    sub_reconnect(s, 1);
                }
            }
            return -1;
        case 0x9:
            S.ws_pings++;
            sub_send_ctrl(s, 0xA, pl, (size_t)plen);
            if (s->fd < 0)
                return -1;
            break;
        case 0xA:
            break;
        default:
            S.proto_errors++;
            break;
        }
    }
    return (long)off;
}

/* ---- EventSource */

/* complete events ("\n\n"-terminated) of the stream: every data line is a
 * payload (pushwire: one message's JSON; Nchan: the content itself) */
static long sse_process(struct sub *s, char *data, size_t len)
{
    size_t off = 0;
    int64_t now = mono_ns();
    while (off < len) {
        char *ev = data + off, *end = memmem(ev, len - off, "\n\n", 2);
        if (!end)
            break;
        for (char *l = ev; l < end;) {
            char *nl = memchr(l, '\n', (size_t)(end - l));
            char *le = nl ? nl : end;
            if (le - l >= 5 && !memcmp(l, "data:", 5)) {
                char *v = l + 5;
                if (v < le && *v == ' ')
                    v++;
                handle_payload(sidx(s), v, (size_t)(le - v), now);
            }
            l = le + 1;
        }
        off = (size_t)(end - data) + 2;
    }
    return (long)off;
}

static long sub_process(struct sub *s, char *data, size_t len, int eof)
{
    if (C.mode == MODE_LP)
        return lp_process(s, data, len, eof);
    size_t off = 0;
    if (s->state == ST_WAIT) {
        long rc = stream_head(s, data, len);
        if (rc <= 0)
            return rc;
        off = (size_t)rc;
    }
    long used = C.mode == MODE_SSE ? sse_process(s, data + off, len - off)
                                   : ws_process(s, data + off, len - off);
    return used < 0 ? -1 : (long)off + used;
}

static void sub_handle_eof(struct sub *s, int err)
{
    if (s->ready && s->ever_ok) {
        S.disconnects++;
        vlog("sub %d: connection %s", sidx(s), err ? "error" : "closed by server");
        sub_reconnect(s, 1);
    } else {
        sub_connect_failed(s, err ? "read error" : "closed before held");
    }
}

static void sub_read(struct sub *s)
{
    for (int loops = 0; loops < 4; loops++) {
        char *buf;
        size_t base, cap;
        if (s->in_len) {
            if (s->in_cap - s->in_len < 16384) {
                uint32_t nc = s->in_cap * 2;
                if (nc > MAX_BODY + MAX_HDR * 2)
                    nc = MAX_BODY + MAX_HDR * 2;
                if (nc <= s->in_len) {
                    S.proto_errors++;
                    sub_reconnect(s, 1);
                    return;
                }
                char *nb = realloc(s->in, nc);
                if (!nb)
                    die("out of memory");
                s->in = nb;
                s->in_cap = nc;
            }
            buf = s->in;
            base = s->in_len;
            cap = s->in_cap;
        } else {
            buf = scratch;
            base = 0;
            cap = SCRATCH_SIZE;
        }
        ssize_t r = recv(s->fd, buf + base, cap - base, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR)
                continue;
            sub_handle_eof(s, 1);
            return;
        }
        int eof = (r == 0);
        size_t len = base + (size_t)r;
        if (len) {
            long used = sub_process(s, buf, len, eof);
            if (used < 0)
                return; /* closed or reset */
            size_t left = len - (size_t)used;
            if (buf == scratch) {
                if (left) {
                    if (s->in_cap < left + 16384) {
                        uint32_t nc = 16384;
                        while (nc < left + 16384)
                            nc *= 2;
                        char *nb = realloc(s->in, nc);
                        if (!nb)
                            die("out of memory");
                        s->in = nb;
                        s->in_cap = nc;
                    }
                    memcpy(s->in, scratch + used, left);
                }
                s->in_len = (uint32_t)left;
            } else {
                if (used && left)
                    memmove(s->in, s->in + used, left);
                s->in_len = (uint32_t)left;
            }
        }
        if (eof) {
            sub_handle_eof(s, 0);
            return;
        }
        if ((size_t)r < cap - base)
            return; /* drained */
    }
}

static void sub_event(struct sub *s, uint32_t evs)
{
    if (s->fd < 0)
        return;
    if (s->state == ST_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
            err = errno;
        if (err) {
            if (err == ECONNREFUSED)
                S.connect_refused++;
            sub_connect_failed(s, strerror(err));
            return;
        }
        if (!(evs & (EPOLLOUT | EPOLLIN | EPOLLHUP | EPOLLERR)))
            return;
        sub_on_connected(s);
        return;
    }
    if ((evs & EPOLLOUT) && s->out_off < s->out_len) {
        if (sub_flush(s) < 0)
            return;
    }
    if (evs & (EPOLLIN | EPOLLHUP | EPOLLERR))
        sub_read(s);
}

/* ------------------------------------------------------------------ publisher */

enum { PC_CLOSED, PC_CONNECTING, PC_IDLE, PC_BUSY };
struct pubconn {
    int fd, state, seq;
    char *out;
    size_t out_len, out_off, out_cap;
    char *in;
    size_t in_len, in_cap;
    int want_out;
};
static struct pubconn pcs[MAX_PUBCONNS];
static int *pub_queue, pq_head, pq_tail;
static long pub_errors;
static size_t content_len_actual;

static void pc_close(struct pubconn *p)
{
    if (p->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
        close(p->fd);
    }
    p->fd = -1;
    p->state = PC_CLOSED;
    p->in_len = 0;
    p->want_out = 0;
}

static void pc_fail(struct pubconn *p)
{
    if (p->seq >= 0 && pub_status[p->seq] == 0) {
        pub_status[p->seq] = -1;
        pub_done_ns[p->seq] = mono_ns();
        pubs_answered++;
        pub_errors++;
    }
    p->seq = -1;
    pc_close(p);
}

static void pc_set_out(struct pubconn *p, int want)
{
    if (p->want_out == want)
        return;
    p->want_out = want;
    ep_ctl(EPOLL_CTL_MOD, p->fd, EPOLLIN | (want ? EPOLLOUT : 0), ev_data(TAG_PUB, (uint32_t)(p - pcs)));
}

static void pc_flush(struct pubconn *p)
{
    while (p->out_off < p->out_len) {
        ssize_t w = send(p->fd, p->out + p->out_off, p->out_len - p->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) {
                pc_set_out(p, 1);
                return;
            }
            if (errno == EINTR)
                continue;
            pc_fail(p);
            return;
        }
        p->out_off += (size_t)w;
    }
    pc_set_out(p, 0);
}

/* content: "bench <seq> <t_ns> <runid> xxxx..." padded to C.size bytes */
static size_t build_content(char *dst, int seq, int64_t t)
{
    /* t as CLOCK_MONOTONIC, not since T0: followers (--follow) read it */
    int n = snprintf(dst, TOKLEN_MAX, "bench %d %" PRId64 " %s ", seq, t + T0, runid);
    size_t len = (size_t)n;
    if ((size_t)C.size > len) {
        memset(dst + len, 'x', (size_t)C.size - len);
        len = (size_t)C.size;
    }
    dst[len] = 0;
    return len;
}

static void pub_send(struct pubconn *p, int seq)
{
    int64_t t = mono_ns();
    char *content = p->out + p->out_cap / 2; /* second half as temp */
    size_t cl = build_content(content, seq, t);
    content_len_actual = cl;
    char hdr[1024], body_prefix[16];
    const char *ctype;
    size_t blen;
    if (C.pub_form) {
        for (size_t i = 0; i < cl; i++)
            if (content[i] == ' ')
                content[i] = '+';
        ctype = "application/x-www-form-urlencoded";
        strcpy(body_prefix, "content=");
        blen = 8 + cl;
    } else {
        ctype = "application/json";
        strcpy(body_prefix, "{\"content\":\"");
        blen = 12 + cl + 2;
    }
    char tgt[400];
    if (C.server == SRV_PUSHWIRE && C.channel && !strchr(C.pub_path, '?')) {
        char ch[200];
        urlenc(ch, sizeof ch, C.channel, strlen(C.channel));
        snprintf(tgt, sizeof tgt, "%s?channel=%s", C.pub_path, ch);
    } else
        snprintf(tgt, sizeof tgt, "%s", C.pub_path);
    int hn = snprintf(hdr, sizeof hdr,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nAccept: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      tgt, hostport, ctype, blen);
    /* assemble: hdr + prefix + content (+ "\"}") ; content lives in the upper half */
    size_t o = 0;
    memcpy(p->out, hdr, (size_t)hn);
    o += (size_t)hn;
    size_t pl = strlen(body_prefix);
    memcpy(p->out + o, body_prefix, pl);
    o += pl;
    memmove(p->out + o, content, cl);
    o += cl;
    if (!C.pub_form) {
        memcpy(p->out + o, "\"}", 2);
        o += 2;
    }
    p->out_len = o;
    p->out_off = 0;
    p->seq = seq;
    p->in_len = 0;
    pub_send_ns[seq] = t;
    p->state = (p->state == PC_CONNECTING) ? PC_CONNECTING : PC_BUSY;
    if (p->state == PC_BUSY)
        pc_flush(p);
}

static int pc_open(struct pubconn *p)
{
    int fd = -1;
    int r = tcp_connect_to(&pub_addr, &fd);
    if (r < 0)
        return -1;
    p->fd = fd;
    p->want_out = (r == 0);
    p->state = r == 1 ? PC_IDLE : PC_CONNECTING;
    ep_ctl(EPOLL_CTL_ADD, fd, EPOLLIN | (r == 0 ? EPOLLOUT : 0), ev_data(TAG_PUB, (uint32_t)(p - pcs)));
    return 0;
}

static void publish(int seq)
{
    struct pubconn *idle = NULL, *closed = NULL;
    for (int i = 0; i < C.pub_conns; i++) {
        if (pcs[i].state == PC_IDLE && !idle)
            idle = &pcs[i];
        if (pcs[i].state == PC_CLOSED && !closed)
            closed = &pcs[i];
    }
    if (idle) {
        pub_send(idle, seq);
        return;
    }
    if (closed) {
        if (pc_open(closed) == 0) {
            pub_send(closed, seq);
            return;
        }
        pub_status[seq] = -1;
        pub_send_ns[seq] = pub_done_ns[seq] = mono_ns();
        pubs_answered++;
        pub_errors++;
        return;
    }
    pub_queue[pq_tail++] = seq; /* all connections busy */
}

static void pc_next(struct pubconn *p)
{
    if (pq_head < pq_tail && p->state == PC_IDLE)
        pub_send(p, pub_queue[pq_head++]);
}

static void pc_event(struct pubconn *p, uint32_t evs)
{
    if (p->fd < 0)
        return;
    if (p->state == PC_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof err;
        getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        if (err) {
            pc_fail(p);
            return;
        }
        if (p->seq >= 0 && p->out_len) {
            p->state = PC_BUSY;
            pc_flush(p);
        } else {
            p->state = PC_IDLE;
            pc_set_out(p, 0);
            pc_next(p);
        }
        return;
    }
    if ((evs & EPOLLOUT) && p->out_off < p->out_len)
        pc_flush(p);
    if (p->fd < 0 || !(evs & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    if (p->in_cap - p->in_len < 4096) {
        size_t nc = p->in_cap ? p->in_cap * 2 : 16384;
        char *nb = realloc(p->in, nc);
        if (!nb)
            die("out of memory");
        p->in = nb;
        p->in_cap = nc;
    }
    ssize_t r = recv(p->fd, p->in + p->in_len, p->in_cap - p->in_len, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    int eof = r <= 0;
    if (r > 0)
        p->in_len += (size_t)r;
    if (p->state == PC_BUSY && p->in_len) {
        struct hresp h;
        long rc = http_parse(p->in, p->in_len, eof, &h, 0);
        if (rc < 0) {
            pc_fail(p);
            return;
        }
        if (rc > 0) {
            int seq = p->seq;
            pub_status[seq] = h.status;
            pub_done_ns[seq] = mono_ns();
            pubs_answered++;
            p->seq = -1;
            memmove(p->in, p->in + rc, p->in_len - (size_t)rc);
            p->in_len -= (size_t)rc;
            if (h.close || eof) {
                pc_close(p);
                /* a fresh connection for whatever is queued */
                if (pq_head < pq_tail && pc_open(p) == 0 && p->state == PC_IDLE)
                    pc_next(p);
                else if (pq_head < pq_tail && p->state == PC_CONNECTING) {
                    /* sent when connected */
                }
                return;
            }
            p->state = PC_IDLE;
            pc_next(p);
            return;
        }
    }
    if (eof)
        pc_fail(p);
}

/* ------------------------------------------------------------------ connect scheduler and phases */

static void run_connects(int64_t now)
{
    int64_t period = C.connect_rate > 0 ? (int64_t)(1e9 / C.connect_rate) : 0;
    for (;;) {
        if (phase == PH_DONE || n_inflight >= C.connect_inflight)
            return;
        struct q *q = NULL;
        if (!q_empty(&q_now))
            q = &q_now;
        else if (!q_empty(&q_later) && q_later.due[q_later.head] <= now)
            q = &q_later;
        if (!q)
            return;
        if (phase == PH_CONNECT && period) {
            if (tb_next > now)
                return;
            if (tb_next < now - 20 * period)
                tb_next = now - 20 * period; /* small burst allowance */
            tb_next += period;
        }
        struct sub *s = &subs[q_pop(q)];
        if (s->state == ST_QUEUED)
            sub_start(s);
    }
}

static void check_connect_timeouts(int64_t now)
{
    int64_t lim = (int64_t)C.connect_timeout_ms * 1000000LL;
    for (int i = 0; i < N; i++) {
        struct sub *s = &subs[i];
        if (s->fd >= 0 && !s->ready && s->state >= ST_CONNECTING && s->state <= ST_WAIT && now - s->t_state > lim) {
            S.connect_timeouts++;
            sub_connect_failed(s, "connect timeout");
        }
    }
}

static int all_subs_settled(void)
{
    for (int i = 0; i < N; i++)
        if (subs[i].state == ST_QUEUED || subs[i].state == ST_IDLE)
            return 0;
    return 1;
}

static void finish(int64_t now, const char *why);

/* --held-file holds at least --held-count lines (the followers are held) */
static int others_held(void)
{
    if (!C.held_file || C.follow)
        return 1;
    FILE *f = fopen(C.held_file, "r");
    if (!f)
        return 0;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n >= C.held_count;
}

static void start_publish(int64_t now)
{
    if (!others_held())
        return; /* tick calls again */
    rss_sample(rss_after);
    cpu_sum(cpu_pub0);
    self_cpu_pub_start = cpu_self_s();
    held_at_pub = n_ready;
    t_pub_start = now;
    next_pub = 0;
    phase = PH_PUBLISH;
    if (C.follow) {
        /* publish nothing: say so, and wait for the leader's messages */
        phase = PH_SETTLE;
        if (C.held_file) {
            FILE *f = fopen(C.held_file, "a");
            if (!f)
                die("%s: %s", C.held_file, strerror(errno));
            fprintf(f, "held %d\n", n_ready);
            fclose(f);
        }
        vlog("following: %d held", held_at_pub);
        if (held_at_pub == 0)
            finish(now, "no subscriber could be held");
        return;
    }
    vlog("publish phase: %d held, %d messages every %g ms", held_at_pub, M, C.interval_ms);
    if (held_at_pub == 0)
        finish(now, "no subscriber could be held (nothing published)");
}

static void finish(int64_t now, const char *why)
{
    if (phase == PH_DONE)
        return;
    if (phase < PH_PUBLISH) {
        /* never got to publish: still take the samples */
        rss_sample(rss_after);
        cpu_sum(cpu_pub0);
        self_cpu_pub_start = cpu_self_s();
        t_pub_start = now;
    }
    cpu_sum(cpu_pub1);
    rss_sample(rss_end);
    self_cpu_end = cpu_self_s();
    t_end = now;
    end_reason = why;
    phase = PH_DONE;
}

static void tick(int64_t now)
{
    if (got_signal) {
        finish(now, "interrupted");
        return;
    }
    if (now >= t_hard) {
        finish(now, "hard cap (--max-seconds)");
        return;
    }
    switch (phase) {
    case PH_CONNECT:
        run_connects(now);
        if (n_ready >= N || (n_ready + S.dead >= N && all_subs_settled() && n_inflight == 0) ||
            now >= t_connect_deadline) {
            t_connect_end = now;
            self_cpu_connect_end = cpu_self_s();
            phase = PH_HOLD;
            t_hold_start = t_hold_sample = now;
            cpu_hold_last = cpu_sum(NULL);
            vlog("connect phase done: %d held, %ld failures, %.3f s", n_ready, S.connect_failures,
                 (now - 0) / 1e9);
        }
        break;
    case PH_HOLD:
        run_connects(now);
        if (now - t_hold_start < (int64_t)C.hold_ms * 1000000LL)
            break;
        if (npids == 0 || now - t_hold_start >= (int64_t)C.hold_max_ms * 1000000LL) {
            start_publish(now);
            break;
        }
        if (now - t_hold_sample >= 200000000LL) {
            long long c = cpu_sum(NULL);
            long long d = c - cpu_hold_last;
            double win = (now - t_hold_sample) / 1e9;
            cpu_hold_last = c;
            t_hold_sample = now;
            /* idle: server used < 5% of one core over the window */
            if ((double)d / (double)sysconf(_SC_CLK_TCK) <= 0.05 * win + 1e-9)
                start_publish(now);
        }
        break;
    case PH_PUBLISH:
        run_connects(now);
        while (next_pub < M && now >= t_pub_start + (int64_t)((double)next_pub * C.interval_ms * 1e6)) {
            pub_sched_ns[next_pub] = t_pub_start + (int64_t)((double)next_pub * C.interval_ms * 1e6);
            publish(next_pub);
            next_pub++;
        }
        if (next_pub >= M)
            phase = PH_SETTLE;
        break;
    case PH_SETTLE:
        run_connects(now);
        if (complete_subs >= held_at_pub && (C.follow || pubs_answered >= M) && held_at_pub > 0) {
            finish(now, "all deliveries complete");
            break;
        }
        /* publishes are serialized: the settle clock starts when the last one is
           actually sent (it may wait behind slow answers), not when it was due */
        t_last_pub = pub_send_ns[M - 1];
        if (t_last_pub > 0 && now - t_last_pub >= (int64_t)(C.settle_s * 1e9))
            finish(now, "settle timeout");
        break;
    default:
        break;
    }
}

static int64_t next_wake(int64_t now)
{
    int64_t w = now + (phase <= PH_HOLD ? 5000000LL : 50000000LL);
    if (phase == PH_PUBLISH && next_pub < M) {
        int64_t d = t_pub_start + (int64_t)((double)next_pub * C.interval_ms * 1e6);
        if (d < w)
            w = d;
    }
    if (n_inflight < C.connect_inflight) {
        if (!q_empty(&q_now)) {
            int64_t d = phase == PH_CONNECT ? tb_next : now;
            if (d < w)
                w = d;
        } else if (!q_empty(&q_later) && q_later.due[q_later.head] < w)
            w = q_later.due[q_later.head];
    }
    if (t_hard < w)
        w = t_hard;
    return w;
}

/* ------------------------------------------------------------------ report */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}
static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static size_t pct_idx(size_t n, double p)
{
    if (!n)
        return 0;
    double r = p * (double)n;
    size_t i = (size_t)r;
    if ((double)i < r)
        i++;
    if (i == 0)
        i = 1;
    if (i > n)
        i = n;
    return i - 1;
}

static void report(void)
{
    long long expected = (long long)N * M;
    /* latency over all deliveries */
    uint32_t *lat = malloc(sizeof(uint32_t) * (size_t)(S.received ? S.received : 1));
    size_t nl = 0;
    int64_t *comp = calloc((size_t)M, sizeof(int64_t));
    int *comp_n = calloc((size_t)M, sizeof(int));
    if (!lat || !comp || !comp_n)
        die("out of memory");
    double lat_sum = 0;
    for (int i = 0; i < N; i++) {
        for (int m = 0; m < M; m++) {
            uint32_t r = recv_us[(size_t)i * M + m];
            if (!r)
                continue;
            int64_t d = (int64_t)r * 1000 - pub_send_ns[m];
            if (d < 0)
                d = 0;
            if (nl < (size_t)S.received)
                lat[nl++] = (uint32_t)(d / 1000);
            lat_sum += (double)d / 1000.0;
            if (d > comp[m])
                comp[m] = d;
            comp_n[m]++;
        }
    }
    qsort(lat, nl, sizeof *lat, cmp_u32);
    int64_t *compv = malloc(sizeof(int64_t) * (size_t)M);
    int ncomp = 0, msgs_all = 0;
    for (int m = 0; m < M; m++) {
        if (comp_n[m])
            compv[ncomp++] = comp[m];
        if (comp_n[m] >= (held_at_pub > 0 ? held_at_pub : N))
            msgs_all++;
    }
    qsort(compv, (size_t)ncomp, sizeof *compv, cmp_i64);
    /* publish */
    int64_t *plat = malloc(sizeof(int64_t) * (size_t)M);
    int npl = 0;
    int codes[16], code_n[16], ncodes = 0;
    int64_t lag_max = 0;
    for (int m = 0; m < next_pub && m < M; m++) {
        if (pub_send_ns[m] - pub_sched_ns[m] > lag_max)
            lag_max = pub_send_ns[m] - pub_sched_ns[m];
        if (pub_status[m] > 0)
            plat[npl++] = pub_done_ns[m] - pub_send_ns[m];
        int c = pub_status[m], k;
        for (k = 0; k < ncodes; k++)
            if (codes[k] == c)
                break;
        if (k == ncodes && ncodes < 16) {
            codes[ncodes] = c;
            code_n[ncodes++] = 0;
        }
        if (k < 16)
            code_n[k]++;
    }
    qsort(plat, (size_t)npl, sizeof *plat, cmp_i64);
    int nsent = 0, nok = 0;
    for (int m = 0; m < M; m++) {
        if (pub_send_ns[m] > 0 && pub_status[m] != -1)
            nsent++;
        if (pub_status[m] >= 200 && pub_status[m] < 300)
            nok++;
    }
    long long expected_sent = (long long)N * nsent;
    long clk = sysconf(_SC_CLK_TCK);
    long long cpu_d = 0;
    for (int i = 0; i < npids; i++)
        if (cpu_pub0[i] >= 0 && cpu_pub1[i] >= 0)
            cpu_d += cpu_pub1[i] - cpu_pub0[i];
    double cpu_s = (double)cpu_d / (double)clk;
    long rss_b = 0, rss_a = 0, rss_e = 0;
    for (int i = 0; i < npids; i++) {
        rss_b += rss_before[i] > 0 ? rss_before[i] : 0;
        rss_a += rss_after[i] > 0 ? rss_after[i] : 0;
        rss_e += rss_end[i] > 0 ? rss_end[i] : 0;
    }
    int held = held_at_pub;
    double per_sub_kib = held ? (double)(rss_a - rss_b) / held : 0;
    double pub_wall = (t_end - t_pub_start) / 1e9;
    double self_pub = self_cpu_end - self_cpu_pub_start;
    double self_conn = self_cpu_connect_end - self_cpu_start;
    double conn_wall = t_connect_end / 1e9;
    long lost = (long)(expected - S.received);

    printf("loadgen: server=%s mode=%s %s:%d path=%s pub=%s subs=%d messages=%d interval=%gms size=%zu runid=%s\n",
           srv_names[C.server], mode_names[C.mode], C.host, C.port, C.path, C.pub_path, N, M, C.interval_ms,
           content_len_actual, runid);
    printf("end: %s after %.3f s (connect %.3f s, publish+settle %.3f s)\n", end_reason, t_end / 1e9, conn_wall,
           pub_wall);
    printf("connect: held %d/%d at publish start, attempts %ld, failures %ld (refused %ld, timeouts %ld, "
           "handshake %ld), gave up %ld, rate %.0f/s\n",
           held, N, S.connect_attempts, S.connect_failures, S.connect_refused, S.connect_timeouts,
           S.handshake_failures, S.dead, conn_wall > 0 ? n_started / conn_wall : 0.0);
    printf("during run: reconnects %ld, disconnects %ld, ws close frames %ld, ws pings %ld, long-poll answers %ld "
           "(empty %ld, http errors %ld), protocol errors %ld, pushwire resets %ld, more %ld\n",
           S.reconnects, S.disconnects, S.ws_closes, S.ws_pings, S.lp_responses, S.lp_empty, S.lp_http_errors,
           S.proto_errors, S.pw_resets, S.pw_more);
    printf("deliveries: expected %lld (%d subs x %d messages), received %ld (%.2f%%), lost %ld, duplicated %ld, "
           "out of order %ld, foreign tokens %ld\n",
           expected, N, M, S.received, expected ? 100.0 * S.received / expected : 0.0, lost, S.dups, S.ooo,
           S.foreign);
    if (nsent < M || nok < M)
        printf("  note: only %d of %d messages were sent (%d answered 2xx): %lld deliveries expected for the sent "
               "ones, %lld lost among them\n",
               nsent, M, nok, expected_sent, expected_sent - S.received);
    printf("latency (publish send -> receive): p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms, mean %.2f ms\n",
           nl ? lat[pct_idx(nl, .5)] / 1e3 : 0, nl ? lat[pct_idx(nl, .9)] / 1e3 : 0,
           nl ? lat[pct_idx(nl, .99)] / 1e3 : 0, nl ? lat[nl - 1] / 1e3 : 0, nl ? lat_sum / nl / 1e3 : 0);
    printf("fan-out completion (last subscriber to get a message): p50 %.2f ms, max %.2f ms; messages reaching all "
           "%d held: %d/%d\n",
           ncomp ? compv[pct_idx((size_t)ncomp, .5)] / 1e6 : 0, ncomp ? compv[ncomp - 1] / 1e6 : 0, held, msgs_all,
           M);
    printf("publish: sent %d, answered %d, status:", nsent, pubs_answered);
    for (int k = 0; k < ncodes; k++) {
        if (codes[k] == 0)
            printf(" unanswered=%d", code_n[k]);
        else if (codes[k] == -1)
            printf(" error=%d", code_n[k]);
        else
            printf(" %d=%d", codes[k], code_n[k]);
    }
    printf("; latency p50 %.2f ms, p90 %.2f ms, max %.2f ms; max schedule lag %.2f ms\n",
           npl ? plat[pct_idx((size_t)npl, .5)] / 1e6 : 0, npl ? plat[pct_idx((size_t)npl, .9)] / 1e6 : 0,
           npl ? plat[npl - 1] / 1e6 : 0, lag_max / 1e6);
    if (npids) {
        printf("server RSS: before %ld KiB, held %ld KiB, end %ld KiB; delta %.2f KiB per held subscriber\n", rss_b,
               rss_a, rss_e, per_sub_kib);
        for (int i = 0; i < npids; i++)
            printf("  pid %d: RSS %ld -> %ld -> %ld KiB (%.2f KiB/sub), CPU %.2f s\n", pids[i], rss_before[i],
                   rss_after[i], rss_end[i], held ? (double)(rss_after[i] - rss_before[i]) / held : 0.0,
                   (double)(cpu_pub1[i] - cpu_pub0[i]) / (double)clk);
        printf("server CPU during publish+settle: %.2f s, %.1f us per delivered message\n", cpu_s,
               S.received ? cpu_s * 1e6 / S.received : 0.0);
    } else {
        printf("server RSS/CPU: not measured (no --pids)\n");
    }
    printf("loadgen CPU: connect phase %.2f s (%.0f%% of %.2f s), publish+settle %.3f s (%.1f%% of %.2f s); loop busy "
           "%.1f%% of publish+settle; %.2f us per delivery\n",
           self_conn, conn_wall > 0 ? 100 * self_conn / conn_wall : 0.0, conn_wall, self_pub,
           pub_wall > 0 ? 100 * self_pub / pub_wall : 0.0, pub_wall,
           pub_wall > 0 ? 100.0 * (1.0 - waited_ns_pub / 1e9 / pub_wall) : 0.0, S.received ? self_pub * 1e6 / S.received : 0.0);
    if (pub_wall > 0 && 100.0 * (1.0 - waited_ns_pub / 1e9 / pub_wall) > 40.0)
        printf("WARNING: the loadgen's event loop was busy %.0f%% of publish+settle: latency and fan-out figures may "
               "be partly client-bound (it shares the CPU with the server)\n",
               100.0 * (1.0 - waited_ns_pub / 1e9 / pub_wall));
    printf("loadgen event loop (publish+settle): %ld wakeups, %.1f events per wakeup, max batch %ld, batches >= 64: "
           "%ld\n",
           wakeups_pub, wakeups_pub ? (double)events_pub / wakeups_pub : 0.0, max_batch_pub, big_batches_pub);

    if (C.json_out) {
        FILE *f = fopen(C.json_out, "w");
        if (!f) {
            fprintf(stderr, "loadgen: cannot write %s: %s\n", C.json_out, strerror(errno));
        } else {
            fprintf(f, "{\"server\":\"%s\",\"mode\":\"%s\",\"host\":\"%s\",\"port\":%d,\"path\":\"%s\",\"pub_path\":\"%s\","
                       "\"channel\":\"%s\",\"subs\":%d,\"messages\":%d,\"interval_ms\":%g,\"size\":%zu,\"runid\":\"%s\",",
                    srv_names[C.server], mode_names[C.mode], C.host, C.port, C.path, C.pub_path,
                    C.channel ? C.channel : "", N, M, C.interval_ms, content_len_actual, runid);
            fprintf(f, "\"end_reason\":\"%s\",\"duration_s\":%.3f,\"connect_s\":%.3f,\"publish_settle_s\":%.3f,",
                    end_reason, t_end / 1e9, conn_wall, pub_wall);
            fprintf(f, "\"connect\":{\"held\":%d,\"attempts\":%ld,\"failures\":%ld,\"refused\":%ld,\"timeouts\":%ld,"
                       "\"handshake_failures\":%ld,\"gave_up\":%ld},",
                    held, S.connect_attempts, S.connect_failures, S.connect_refused, S.connect_timeouts,
                    S.handshake_failures, S.dead);
            fprintf(f, "\"run\":{\"reconnects\":%ld,\"disconnects\":%ld,\"ws_close_frames\":%ld,\"ws_pings\":%ld,"
                       "\"lp_answers\":%ld,\"lp_empty\":%ld,\"lp_http_errors\":%ld,\"protocol_errors\":%ld,"
                       "\"pushwire_resets\":%ld,\"pushwire_more\":%ld,\"bytes_payload\":%lld},",
                    S.reconnects, S.disconnects, S.ws_closes, S.ws_pings, S.lp_responses, S.lp_empty,
                    S.lp_http_errors, S.proto_errors, S.pw_resets, S.pw_more, S.bytes_in);
            fprintf(f, "\"deliveries\":{\"expected\":%lld,\"received\":%ld,\"lost\":%ld,\"duplicated\":%ld,"
                       "\"out_of_order\":%ld,\"foreign\":%ld,\"messages_sent\":%d,\"expected_for_sent\":%lld,"
                       "\"lost_among_sent\":%lld},",
                    expected, S.received, lost, S.dups, S.ooo, S.foreign, nsent, expected_sent,
                    expected_sent - S.received);
            fprintf(f, "\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f,\"mean\":%.3f},",
                    nl ? lat[pct_idx(nl, .5)] / 1e3 : 0, nl ? lat[pct_idx(nl, .9)] / 1e3 : 0,
                    nl ? lat[pct_idx(nl, .99)] / 1e3 : 0, nl ? lat[nl - 1] / 1e3 : 0, nl ? lat_sum / nl / 1e3 : 0);
            fprintf(f, "\"fanout_completion_ms\":{\"p50\":%.3f,\"max\":%.3f,\"messages_to_all\":%d,\"per_message\":[",
                    ncomp ? compv[pct_idx((size_t)ncomp, .5)] / 1e6 : 0, ncomp ? compv[ncomp - 1] / 1e6 : 0,
                    msgs_all);
            for (int m = 0; m < M; m++)
                fprintf(f, "%s{\"ms\":%.3f,\"subs\":%d}", m ? "," : "", comp[m] / 1e6, comp_n[m]);
            fprintf(f, "]},");
            fprintf(f, "\"publish\":{\"sent\":%d,\"answered\":%d,\"status\":{", nsent, pubs_answered);
            for (int k = 0; k < ncodes; k++)
                fprintf(f, "%s\"%d\":%d", k ? "," : "", codes[k], code_n[k]);
            fprintf(f, "},\"latency_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"max\":%.3f},\"max_schedule_lag_ms\":%.3f},",
                    npl ? plat[pct_idx((size_t)npl, .5)] / 1e6 : 0, npl ? plat[pct_idx((size_t)npl, .9)] / 1e6 : 0,
                    npl ? plat[npl - 1] / 1e6 : 0, lag_max / 1e6);
            fprintf(f, "\"server_procs\":{\"pids\":[");
            for (int i = 0; i < npids; i++)
                fprintf(f, "%s{\"pid\":%d,\"rss_before_kib\":%ld,\"rss_held_kib\":%ld,\"rss_end_kib\":%ld,"
                           "\"rss_per_sub_kib\":%.3f,\"cpu_s\":%.3f}",
                        i ? "," : "", pids[i], rss_before[i], rss_after[i], rss_end[i],
                        held ? (double)(rss_after[i] - rss_before[i]) / held : 0.0,
                        (double)(cpu_pub1[i] - cpu_pub0[i]) / (double)clk);
            fprintf(f, "],\"measured\":%s,\"rss_before_kib\":%ld,\"rss_held_kib\":%ld,\"rss_end_kib\":%ld,"
                       "\"rss_per_sub_kib\":%.3f,\"cpu_s\":%.3f,\"cpu_us_per_delivery\":%.3f},",
                    npids ? "true" : "false", rss_b, rss_a, rss_e, per_sub_kib, cpu_s,
                    S.received ? cpu_s * 1e6 / S.received : 0.0);
            fprintf(f, "\"loadgen\":{\"cpu_connect_s\":%.3f,\"cpu_publish_settle_s\":%.3f,"
                       "\"cpu_publish_settle_pct\":%.2f,\"loop_busy_pct\":%.2f,\"cpu_us_per_delivery\":%.3f,"
                       "\"wakeups\":%ld,\"events_per_wakeup\":%.2f,\"max_batch\":%ld,\"batches_ge_64\":%ld}}\n",
                    self_conn, self_pub, pub_wall > 0 ? 100 * self_pub / pub_wall : 0.0,
                    pub_wall > 0 ? 100.0 * (1.0 - waited_ns_pub / 1e9 / pub_wall) : 0.0,
                    S.received ? self_pub * 1e6 / S.received : 0.0, wakeups_pub,
                    wakeups_pub ? (double)events_pub / wakeups_pub : 0.0, max_batch_pub, big_batches_pub);
            fclose(f);
        }
    }
    free(lat);
    free(comp);
    free(comp_n);
    free(compv);
    free(plat);
}

/* ------------------------------------------------------------------ main */

static void on_sig(int sig)
{
    (void)sig;
    got_signal = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen --port P [options]\n"
            "Push fan-out load generator (single thread, epoll).\n\n"
            "  --mode longpoll|ws|sse    subscriber transport (default longpoll; sse: EventSource)\n"
            "  --server pushwire|tornado|nchan|socketio   protocol flavour (default pushwire; socketio:\n"
            "                            Engine.IO 4 over WebSocket, --mode ws only)\n"
            "  --host IPv4               server address (default 127.0.0.1)\n"
            "  --port P                  server port (required)\n"
            "  --path PATH               subscribe path (default /status; tornado ws: /ws, the\n"
            "                            combined app; use /status for run.sh ... websocket)\n"
            "  --pub-path PATH           publish path (default /chat)\n"
            "  --pub-port P              publish to this port (default: --port), e.g. nginx\n"
            "                            while the subscribers talk to a relay directly\n"
            "  --channel C               pushwire: channel=C on subscribe and publish URLs\n"
            "  --subs N                  subscribers (default 100)\n"
            "  --messages M              messages to publish (default 20)\n"
            "  --interval-ms I           between publishes (default 200)\n"
            "  --size BYTES              content length incl. token (default 64; min ~40)\n"
            "  --pub-format json|form    publish body (default: json; form for tornado)\n"
            "  --pub-conns K             keep-alive publish connections (default 1 = publishes\n"
            "                            serialized; >1 lets publishes overlap, and the server may\n"
            "                            then order them differently, counted as out of order)\n"
            "  --connect-rate R          new subscriber connections per second (default 1000)\n"
            "  --connect-inflight K      max connections not yet held (default 64)\n"
            "  --connect-timeout-ms T    per-connection connect/handshake timeout (default 5000)\n"
            "  --connect-phase S         give up waiting for all N held after S s\n"
            "                            (default 10 + 3*N/rate)\n"
            "  --retries K               retries per subscriber on connect failure (default 3)\n"
            "  --hold-ms T               wait after all are held before publishing (default 500);\n"
            "                            with --pids also until server CPU < 5%% (max --hold-max-ms,\n"
            "                            default 10000)\n"
            "  --timeout S, --settle S   wait after the last publish is sent (default 5 s; ends\n"
            "                            early when every held subscriber has every message)\n"
            "  --poll-timeout T          pushwire long-poll: send &timeout=T (default: not sent)\n"
            "  --reconnect-delay-ms T    delay before reconnecting after a connect failure, an\n"
            "                            error or a server close of a held subscriber (default\n"
            "                            200); long-poll 'Connection: close' reconnects at once\n"
            "  --max-seconds S           hard cap on the whole run (default 120)\n"
            "  --source-ip A             bind subscribers to this address (e.g. 127.0.0.7)\n"
            "  --runid X                 the 8-character run id (shared by the processes of one run)\n"
            "  --follow                  publish nothing: count the messages of a leader with the\n"
            "                            same --runid (latency from the send time in its token)\n"
            "  --held-file F             a follower appends a line to F once its subscribers are\n"
            "                            held; the leader publishes once F has --held-count lines\n"
            "  --held-count K            (leader) followers to wait for\n"
            "  --pids PID,PID,...        server processes for RSS (VmRSS) and CPU (utime+stime)\n"
            "  --pids-from-cmd 'CMD'     shell command printing server pids\n"
            "  --json FILE               write all figures as one JSON object\n"
            "  -v, --verbose             progress and errors on stderr\n"
            "  -h, --help                this text\n"
            "Exit status: 0 if deliveries were measured, 1 if nothing was delivered, 2 on usage\n"
            "errors.  Details: bench/README-loadgen.md\n");
}

int main(int argc, char **argv)
{
    C.mode = MODE_LP;
    C.server = SRV_PUSHWIRE;
    C.host = "127.0.0.1";
    C.pub_path = "/chat";
    C.subs = 100;
    C.messages = 20;
    C.interval_ms = 200;
    C.size = 64;
    C.connect_rate = 1000;
    C.connect_inflight = 64;
    C.connect_timeout_ms = 5000;
    C.retries = 3;
    C.settle_s = 5;
    C.max_seconds = 120;
    C.connect_phase_s = -1;
    C.hold_ms = 500;
    C.hold_max_ms = 10000;
    C.reconnect_delay_ms = 200;
    C.poll_timeout = -1;
    C.pub_conns = 1;
    C.pub_form = -1;

    enum {
        OPT_MODE = 256, OPT_SERVER, OPT_HOST, OPT_PORT, OPT_PUBPORT, OPT_PATH, OPT_PUBPATH, OPT_CHANNEL, OPT_SUBS, OPT_MSGS, OPT_INTERVAL,
        OPT_SIZE, OPT_RATE, OPT_INFLIGHT, OPT_CTO, OPT_CPHASE, OPT_RETRIES, OPT_HOLD, OPT_HOLDMAX, OPT_SETTLE, OPT_PTO, OPT_MAXS,
        OPT_PIDS, OPT_PIDSCMD, OPT_RDELAY, OPT_JSON, OPT_PUBFMT, OPT_PUBCONNS, OPT_FOLLOW, OPT_HELDFILE,
        OPT_HELDCOUNT, OPT_SRCIP, OPT_RUNID
    };
    static const struct option opts[] = {
        {"mode", 1, 0, OPT_MODE},
        {"server", 1, 0, OPT_SERVER},
        {"host", 1, 0, OPT_HOST},
        {"port", 1, 0, OPT_PORT},
        {"path", 1, 0, OPT_PATH},
        {"pub-path", 1, 0, OPT_PUBPATH},
        {"pub-port", 1, 0, OPT_PUBPORT},
        {"channel", 1, 0, OPT_CHANNEL},
        {"subs", 1, 0, OPT_SUBS},
        {"messages", 1, 0, OPT_MSGS},
        {"interval-ms", 1, 0, OPT_INTERVAL},
        {"size", 1, 0, OPT_SIZE},
        {"connect-rate", 1, 0, OPT_RATE},
        {"connect-inflight", 1, 0, OPT_INFLIGHT},
        {"connect-timeout-ms", 1, 0, OPT_CTO},
        {"connect-phase", 1, 0, OPT_CPHASE},
        {"follow", 0, 0, OPT_FOLLOW},
        {"held-file", 1, 0, OPT_HELDFILE},
        {"held-count", 1, 0, OPT_HELDCOUNT},
        {"source-ip", 1, 0, OPT_SRCIP},
        {"runid", 1, 0, OPT_RUNID},
        {"retries", 1, 0, OPT_RETRIES},
        {"hold-ms", 1, 0, OPT_HOLD},
        {"hold-max-ms", 1, 0, OPT_HOLDMAX},
        {"timeout", 1, 0, OPT_SETTLE},
        {"settle", 1, 0, OPT_SETTLE},
        {"poll-timeout", 1, 0, OPT_PTO},
        {"max-seconds", 1, 0, OPT_MAXS},
        {"pids", 1, 0, OPT_PIDS},
        {"pids-from-cmd", 1, 0, OPT_PIDSCMD},
        {"json", 1, 0, OPT_JSON},
        {"reconnect-delay-ms", 1, 0, OPT_RDELAY},
        {"pub-format", 1, 0, OPT_PUBFMT},
        {"pub-conns", 1, 0, OPT_PUBCONNS},
        {"verbose", 0, 0, 'v'},
        {"help", 0, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
        switch (c) {
        case OPT_MODE:
            if (!strcmp(optarg, "longpoll") || !strcmp(optarg, "lp"))
                C.mode = MODE_LP;
            else if (!strcmp(optarg, "ws") || !strcmp(optarg, "websocket"))
                C.mode = MODE_WS;
            else if (!strcmp(optarg, "sse") || !strcmp(optarg, "eventsource"))
                C.mode = MODE_SSE;
            else
                die("--mode longpoll|ws|sse");
            break;
        case OPT_SERVER:
            if (!strcmp(optarg, "pushwire"))
                C.server = SRV_PUSHWIRE;
            else if (!strcmp(optarg, "tornado"))
                C.server = SRV_TORNADO;
            else if (!strcmp(optarg, "nchan"))
                C.server = SRV_NCHAN;
            else if (!strcmp(optarg, "socketio"))
                C.server = SRV_SOCKETIO;
            else
                die("--server pushwire|tornado|nchan|socketio");
            break;
        case OPT_HOST: C.host = optarg; break;
        case OPT_PORT: C.port = atoi(optarg); break;
        case OPT_PATH: C.path = optarg; break;
        case OPT_PUBPATH: C.pub_path = optarg; break;
        case OPT_PUBPORT: C.pub_port = atoi(optarg); break;
        case OPT_CHANNEL: C.channel = optarg; break;
        case OPT_SUBS: C.subs = atoi(optarg); break;
        case OPT_MSGS: C.messages = atoi(optarg); break;
        case OPT_INTERVAL: C.interval_ms = atof(optarg); break;
        case OPT_SIZE: C.size = atoi(optarg); break;
        case OPT_RATE: C.connect_rate = atof(optarg); break;
        case OPT_INFLIGHT: C.connect_inflight = atoi(optarg); break;
        case OPT_CTO: C.connect_timeout_ms = atoi(optarg); break;
        case OPT_CPHASE: C.connect_phase_s = atof(optarg); break;
        case OPT_FOLLOW: C.follow = 1; break;
        case OPT_HELDFILE: C.held_file = optarg; break;
        case OPT_HELDCOUNT: C.held_count = atoi(optarg); break;
        case OPT_SRCIP: C.source_ip = optarg; break;
        case OPT_RUNID: C.runid_arg = optarg; break;
        case OPT_RETRIES: C.retries = atoi(optarg); break;
        case OPT_HOLD: C.hold_ms = atoi(optarg); break;
        case OPT_HOLDMAX: C.hold_max_ms = atoi(optarg); break;
        case OPT_SETTLE: C.settle_s = atof(optarg); break;
        case OPT_PTO: C.poll_timeout = atoi(optarg); break;
        case OPT_MAXS: C.max_seconds = atof(optarg); break;
        case OPT_PIDS: C.pids_str = optarg; break;
        case OPT_PIDSCMD: C.pids_cmd = optarg; break;
        case OPT_JSON: C.json_out = optarg; break;
        case OPT_RDELAY: C.reconnect_delay_ms = atoi(optarg); break;
        case OPT_PUBFMT:
            if (!strcmp(optarg, "json"))
                C.pub_form = 0;
            else if (!strcmp(optarg, "form"))
                C.pub_form = 1;
            else
                die("--pub-format json|form");
            break;
        case OPT_PUBCONNS: C.pub_conns = atoi(optarg); break;
        case 'v': C.verbose = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc)
        die("unexpected argument '%s' (see --help)", argv[optind]);
    if (C.port <= 0 || C.port > 65535)
        die("--port is required (1-65535)");
    if (C.subs < 1 || C.messages < 1 || C.interval_ms < 0 || C.size < 0 || C.size > 1 << 20)
        die("bad --subs/--messages/--interval-ms/--size");
    if ((long long)C.subs * C.messages > 50000000LL)
        die("--subs * --messages must be <= 50,000,000");
    if (C.max_seconds <= 0 || C.max_seconds > 3600)
        die("--max-seconds must be in (0, 3600]");
    if (C.pub_conns < 1 || C.pub_conns > MAX_PUBCONNS)
        die("--pub-conns 1..%d", MAX_PUBCONNS);
    if (C.connect_inflight < 1)
        C.connect_inflight = 1;
    if (C.retries < 0 || C.retries > 255)
        C.retries = 3;
    if (!C.path)
        C.path = (C.server == SRV_TORNADO && C.mode == MODE_WS) ? "/ws"
                 : C.server == SRV_SOCKETIO                      ? "/socket.io/?EIO=4&transport=websocket"
                                                                 : "/status";
    if (C.server == SRV_SOCKETIO && C.mode != MODE_WS)
        die("--server socketio: only --mode ws (Socket.IO's WebSocket transport)");
    if (C.pub_form < 0)
        C.pub_form = (C.server == SRV_TORNADO);
    if (C.connect_phase_s < 0)
        C.connect_phase_s = 10 + 3.0 * C.subs / (C.connect_rate > 0 ? C.connect_rate : 1000);
    if (strlen(C.path) > 200 || strlen(C.pub_path) > 200 || (C.channel && strlen(C.channel) > 60) ||
        strlen(C.host) > 64)
        die("path/channel/host too long");
    N = C.subs;
    M = C.messages;
    if (C.server == SRV_NCHAN && M > 100)
        fprintf(stderr, "loadgen: warning: --messages %d > 100 (the Nchan anchor's buffer length): a subscriber that "
                        "falls 100 messages behind would resume with an expired id, which crashes Nchan 1.3.6\n",
                M);
    if (C.reconnect_delay_ms < 0)
        C.reconnect_delay_ms = 0;
    RETRY_DELAY_NS = (int64_t)C.reconnect_delay_ms * 1000000LL;

    struct timespec ts0;
    clock_gettime(CLOCK_MONOTONIC, &ts0);
    T0 = (int64_t)ts0.tv_sec * 1000000000LL + ts0.tv_nsec - 1000000LL; /* so mono_ns() > 0 */
    self_cpu_start = cpu_self_s();

    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)C.port);
    if (inet_pton(AF_INET, C.host, &server_addr.sin_addr) != 1)
        die("--host must be an IPv4 address");
    pub_addr = server_addr;
    if (C.pub_port > 0 && C.pub_port <= 65535)
        pub_addr.sin_port = htons((uint16_t)C.pub_port);
    snprintf(hostport, sizeof hostport, "%s:%d", C.host, C.port);

    /* fds: N subscribers + publishers + a few */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)N + C.pub_conns + 32 > rl.rlim_cur)
            die("--subs %d needs %d fds, RLIMIT_NOFILE is %llu", N, N + C.pub_conns + 32,
                (unsigned long long)rl.rlim_cur);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sig;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* pids */
    if (C.pids_str)
        add_pids_from(C.pids_str);
    if (C.pids_cmd) {
        FILE *pf = popen(C.pids_cmd, "r");
        if (!pf)
            die("--pids-from-cmd: %s", strerror(errno));
        char line[4096];
        while (fgets(line, sizeof line, pf))
            add_pids_from(line);
        pclose(pf);
    }
    for (int i = 0; i < npids; i++)
        if (read_rss_kb(pids[i]) < 0)
            die("pid %d: cannot read /proc/%d/status", pids[i], pids[i]);

    /* run id */
    {
        unsigned v = (unsigned)getpid() ^ (unsigned)ts0.tv_nsec ^ (unsigned)(ts0.tv_sec << 12);
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (read(fd, &v, sizeof v) != (ssize_t)sizeof v)
                v ^= 0x5bd1e995u;
            close(fd);
        }
        snprintf(runid, sizeof runid, "%08x", v);
        if (C.runid_arg) {
            if (strlen(C.runid_arg) != 8)
                die("--runid: 8 characters");
            memcpy(runid, C.runid_arg, 8);
        }
    }
    if (C.source_ip) {
        source_addr.sin_family = AF_INET;
        if (inet_pton(AF_INET, C.source_ip, &source_addr.sin_addr) != 1)
            die("--source-ip: not an IPv4 address: %s", C.source_ip);
    }

    subs = calloc((size_t)N, sizeof *subs);
    recv_us = calloc((size_t)N * (size_t)M, sizeof *recv_us);
    pub_send_ns = calloc((size_t)M, sizeof(int64_t));
    pub_done_ns = calloc((size_t)M, sizeof(int64_t));
    pub_sched_ns = calloc((size_t)M, sizeof(int64_t));
    pub_status = calloc((size_t)M, sizeof(int));
    pub_queue = calloc((size_t)M, sizeof(int));
    scratch = malloc(SCRATCH_SIZE);
    if (!subs || !recv_us || !pub_send_ns || !pub_done_ns || !pub_sched_ns || !pub_status || !pub_queue || !scratch)
        die("out of memory");
    q_init(&q_now, (size_t)N);
    q_init(&q_later, (size_t)N);
    for (int i = 0; i < N; i++) {
        subs[i].fd = -1;
        subs[i].max_seq = -1;
        subs[i].state = ST_QUEUED;
        q_push(&q_now, i, 0);
    }
    for (int i = 0; i < MAX_PUBCONNS; i++) {
        pcs[i].fd = -1;
        pcs[i].seq = -1;
        pcs[i].out_cap = 2 * ((size_t)C.size * 3 + 2048);
        pcs[i].out = malloc(pcs[i].out_cap);
        if (!pcs[i].out)
            die("out of memory");
    }
    /* shared request bytes */
    {
        char buf[1024];
        int n = snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", C.path, hostport);
        lp_static = strdup(buf);
        lp_static_len = (size_t)n;
        n = snprintf(buf, sizeof buf,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     C.path, hostport, WS_KEY);
        ws_static = strdup(buf);
        ws_static_len = (size_t)n;
    }

    {
        char tmp[TOKLEN_MAX + 8];
        int n = snprintf(tmp, sizeof tmp, "bench %d %" PRId64 " %s ", M - 1, (int64_t)1000000000000LL, runid);
        content_len_actual = (size_t)C.size > (size_t)n ? (size_t)C.size : (size_t)n; /* typical */
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));

    rss_sample(rss_before);
    int64_t now = mono_ns();
    t_hard = now + (int64_t)(C.max_seconds * 1e9);
    t_connect_deadline = now + (int64_t)(C.connect_phase_s * 1e9);
    tb_next = now;
    vlog("runid %s: %d %s subscribers to %s (%s)", runid, N, mode_names[C.mode], hostport, srv_names[C.server]);

    struct epoll_event evs[1024];
    int64_t last_to_check = now, last_progress = now;
    while (phase != PH_DONE) {
        now = mono_ns();
        tick(now);
        if (phase == PH_DONE)
            break;
        if (now - last_to_check >= 500000000LL) {
            check_connect_timeouts(now);
            last_to_check = now;
        }
        if (C.verbose && now - last_progress >= 1000000000LL) {
            vlog("phase %d: ready %d inflight %d received %ld/%lld", phase, n_ready, n_inflight, S.received,
                 (long long)N * M);
            last_progress = now;
        }
        int64_t w = next_wake(now);
        int to = w <= now ? 0 : (int)((w - now + 999999) / 1000000);
        int64_t t_wait0 = mono_ns();
        int n = epoll_wait(ep, evs, 1024, to);
        int64_t t_wait1 = mono_ns();
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            uint64_t d = evs[i].data.u64;
            uint32_t idx = (uint32_t)d;
            S.events++;
            if ((d >> 32) == TAG_SUB)
                sub_event(&subs[idx], evs[i].events);
            else if ((d >> 32) == TAG_PUB)
                pc_event(&pcs[idx], evs[i].events);
        }
        if (phase >= PH_PUBLISH) {
            waited_ns_pub += t_wait1 - t_wait0;
            if (n > 0) {
                wakeups_pub++;
                events_pub += n;
                if (n > max_batch_pub)
                    max_batch_pub = n;
                if (n >= 64)
                    big_batches_pub++;
            }
        }
    }
    for (int i = 0; i < N; i++)
        if (subs[i].fd >= 0)
            sub_close_fd(&subs[i]);
    for (int i = 0; i < MAX_PUBCONNS; i++)
        if (pcs[i].fd >= 0)
            pc_close(&pcs[i]);
    report();
    /* exit status: 0 = deliveries were measured, 1 = nothing was delivered */
    return S.received > 0 ? 0 : 1;
}
