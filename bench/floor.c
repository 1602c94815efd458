/* floor.c - the floor of pushwire's shape (issue 13): null backends behind
 * the same nginx, answering from memory with no Redis, no hub and no
 * epoch logic, so that every pushwire figure through nginx can be stated
 * as a percentage above the best this architecture can do.
 *
 *   floor --fcgi unix:PATH --ws HOST:PORT [--ws unix:PATH]
 * (two --ws: nginx reaches one over a unix socket, the direct case the other)
 *
 * One process, one epoll loop:
 * - a FastCGI responder (src/fcgi_proto.c, kept-alive connections as nginx
 *   uses them): POST /chat stores the content as message id N+1 in a ring
 *   and answers {"id":N+1,...}; GET /status?since=K answers at once with
 *   what the ring holds after K, or holds the request until the next
 *   publish; held requests are answered from one pre-encoded record set;
 *   with Accept: text/event-stream the request stays open as an EventSource
 *   stream and every publish is one pre-encoded stdout record to all;
 * - a WebSocket upstream (src/ws_handshake.c): after the 101, every publish
 *   is written to every client as one pre-encoded frame.
 * Client frames are read and dropped. Answers use pushwire's envelope
 * ({"channel","epoch","id","content","messages":[...]}) with one channel
 * and a fixed epoch, which is all bench/loadgen reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "fcgi_proto.h"
#include "fcgi_record.h"
#include "ws_frame.h"
#include "ws_handshake.h"

#define RING      4096 /* messages kept for a since that is behind */
#define MAX_FDS   65536
#define MAX_BATCH (256 * 1024)

enum kind { K_NONE, K_LISTEN_FCGI, K_LISTEN_WS, K_FCGI, K_WS_HEAD, K_WS };

typedef struct fconn {
    enum kind kind;
    int fd;
    buf in, out;     /* out: bytes not yet written */
    fcgi_parser fp;  /* K_FCGI */
    bool held;       /* a long-poll waits for the next publish */
    bool sse;        /* an EventSource stream: every publish is written */
    uint16_t reqid;
    bool close_after; /* the web server did not ask to keep the connection */
} fconn;

typedef struct msg {
    uint64_t id;
    rbuf *json; /* {"id":N,"content":...,"time":T} */
} msg;

static fconn *conns[MAX_FDS];
static int ep;
static msg ring[RING];
static uint64_t last_id;
static unsigned long long published, delivered_polls, delivered_ws, delivered_sse;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void watch(fconn *c, uint32_t ev, int op)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &e) < 0 && op != EPOLL_CTL_DEL)
        die("epoll_ctl");
}

static void conn_close(fconn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    buf_free(&c->in);
    buf_free(&c->out);
    if (c->kind == K_FCGI)
        fcgi_parser_free(&c->fp);
    free(c);
}

/* Write what is pending; keep EPOLLOUT while something is. Returns false
 * when the connection was closed. */
static bool flush_out(fconn *c)
{
    while (c->out.len) {
        ssize_t n = write(c->fd, c->out.data, c->out.len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            watch(c, EPOLLIN | EPOLLOUT | EPOLLRDHUP, EPOLL_CTL_MOD);
            return true;
        }
        if (n <= 0) {
            conn_close(c);
            return false;
        }
        memmove(c->out.data, c->out.data + n, c->out.len - (size_t)n);
        c->out.len -= (size_t)n;
    }
    watch(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
    return true;
}

static void send_bytes(fconn *c, const void *p, size_t n)
{
    if (!c->out.len) { /* the common case: straight to the socket */
        ssize_t w = write(c->fd, p, n);
        if (w == (ssize_t)n)
            return;
        if (w < 0)
            w = 0;
        p = (const char *)p + w, n -= (size_t)w;
    }
    buf_append(&c->out, p, n);
    flush_out(c);
}

/* ---- FastCGI ---------------------------------------------------------------- */

static void fcgi_answer(fconn *c, const char *body, size_t len)
{
    static const char head[] = "Status: 200 OK\r\nContent-Type: application/json\r\n"
                               "Cache-Control: no-store\r\n\r\n";
    rbuf *r = fcgi_rec_response(c->reqid, head, sizeof head - 1, body, len);
    c->held = false;
    fcgi_parser_next(&c->fp);
    bool close_it = c->close_after;
    send_bytes(c, r->data, r->len);
    rbuf_unref(r);
    if (close_it && conns[c->fd] == c && !c->out.len)
        conn_close(c);
}

/* The long-poll answer for since: every ring message after it (up to the
 * batch budget), or 0 bytes when there is none. */
static size_t poll_body(buf *b, uint64_t since)
{
    uint64_t from = since + 1;
    if (last_id >= RING && from <= last_id - RING)
        from = last_id - RING + 1;
    if (from > last_id)
        return 0;
    buf_printf(b, "{\"channel\":\"default\",\"epoch\":\"floor\",\"id\":%llu,\"messages\":[",
               (unsigned long long)last_id);
    for (uint64_t id = from; id <= last_id; id++) {
        rbuf *j = ring[id % RING].json;
        if (id > from)
            buf_puts(b, ",");
        buf_append(b, j->data, j->len);
        if (b->len > MAX_BATCH)
            break;
    }
    buf_puts(b, "]}\n");
    return b->len;
}

/* The content of a publish body: {"content":"..."} or content=... */
static void content_of(const char *body, size_t n, const char *ctype, buf *out)
{
    if (ctype && strncmp(ctype, "application/json", 16) == 0) {
        const char *p = memmem(body, n, "\"content\":\"", 11);
        if (!p)
            return;
        p += 11;
        const char *e = p;
        while (e < body + n && *e != '"')
            e += *e == '\\' ? 2 : 1;
        buf_append(out, p, (size_t)(e > body + n ? body + n - p : e - p));
        return;
    }
    const char *p = memmem(body, n, "content=", 8);
    if (!p)
        return;
    for (p += 8; p < body + n && *p != '&'; p++) {
        char ch = *p;
        if (ch == '+')
            ch = ' ';
        else if (ch == '%' && p + 2 < body + n) {
            char hex[3] = {p[1], p[2], 0};
            ch = (char)strtol(hex, NULL, 16);
            p += 2;
        }
        if (ch == '"' || ch == '\\')
            buf_append(out, "\\", 1);
        buf_append(out, &ch, 1);
    }
}

static void publish(const char *content, size_t n)
{
    uint64_t id = ++last_id;
    buf j = BUF_INIT;
    buf_printf(&j, "{\"id\":%llu,\"content\":\"", (unsigned long long)id);
    buf_append(&j, content, n);
    buf_printf(&j, "\",\"time\":%lld}", now_ms());
    msg *m = &ring[id % RING];
    if (m->json)
        rbuf_unref(m->json);
    m->id = id;
    m->json = rbuf_from_buf(&j);
    buf_free(&j);
    published++;
    /* One long-poll body and one WebSocket frame for everyone. */
    buf body = BUF_INIT;
    buf_printf(&body, "{\"channel\":\"default\",\"epoch\":\"floor\",\"id\":%llu,\"messages\":[",
               (unsigned long long)id);
    buf_append(&body, m->json->data, m->json->len);
    buf_puts(&body, "]}\n");
    buf frame = BUF_INIT, ws = BUF_INIT, ev = BUF_INIT, sse = BUF_INIT;
    buf_printf(&ws, "{\"channel\":\"default\",\"epoch\":\"floor\",\"id\":%llu,\"content\":\"",
               (unsigned long long)id);
    buf_append(&ws, content, n);
    buf_printf(&ws, "\",\"time\":%lld}", now_ms());
    uint8_t hdr[WS_FRAME_HEADER_MAX];
    size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, ws.len);
    buf_append(&frame, hdr, hl);
    buf_append(&frame, ws.data, ws.len);
    buf_printf(&ev, "id: floor:%llu\ndata: ", (unsigned long long)id);
    buf_append(&ev, ws.data, ws.len);
    buf_puts(&ev, "\n\n");
    int sse_reqid = -1;
    for (int fd = 0; fd < MAX_FDS; fd++) {
        fconn *c = conns[fd];
        if (!c)
            continue;
        if (c->kind == K_FCGI && c->held) {
            delivered_polls++;
            fcgi_answer(c, body.data, body.len);
        } else if (c->kind == K_WS) {
            delivered_ws++;
            send_bytes(c, frame.data, frame.len);
        } else if (c->kind == K_FCGI && c->sse) {
            if (sse_reqid != c->reqid) { /* nginx uses request id 1: one record for all */
                sse.len = 0;
                fcgi_rec_stdout(&sse, c->reqid, ev.data, ev.len);
                sse_reqid = c->reqid;
            }
            delivered_sse++;
            send_bytes(c, sse.data, sse.len);
        }
    }
    buf_free(&body);
    buf_free(&frame);
    buf_free(&ws);
    buf_free(&ev);
    buf_free(&sse);
}

static void fcgi_request(fconn *c)
{
    const char *method = fcgi_param(&c->fp, FP_REQUEST_METHOD);
    const char *uri = fcgi_param(&c->fp, FP_DOCUMENT_URI);
    const char *query = fcgi_param(&c->fp, FP_QUERY_STRING);
    c->reqid = c->fp.reqid;
    c->close_after = !c->fp.keep_conn;
    if (method && strcmp(method, "POST") == 0 && uri && strcmp(uri, "/chat") == 0) {
        buf content = BUF_INIT;
        content_of(c->fp.body.data ? c->fp.body.data : "", c->fp.body.len,
                   fcgi_param(&c->fp, FP_CONTENT_TYPE), &content);
        publish(content.data ? content.data : "", content.len);
        buf_free(&content);
        if (conns[c->fd] != c)
            return;
        char ans[128];
        int n = snprintf(ans, sizeof ans,
                         "{\"id\":%llu,\"channel\":\"default\",\"epoch\":\"floor\"}\n",
                         (unsigned long long)last_id);
        fcgi_answer(c, ans, (size_t)n);
        return;
    }
    const char *accept = fcgi_param(&c->fp, FP_HTTP_ACCEPT);
    if (accept && strstr(accept, "text/event-stream")) {
        static const char head[] = "Status: 200 OK\r\nContent-Type: text/event-stream\r\n"
                                   "Cache-Control: no-store\r\nX-Accel-Buffering: no\r\n\r\n";
        buf r = BUF_INIT;
        fcgi_rec_stdout(&r, c->reqid, head, sizeof head - 1);
        fcgi_parser_next(&c->fp);
        c->sse = true; /* until nginx closes the connection */
        send_bytes(c, r.data, r.len);
        buf_free(&r);
        return;
    }
    const char *s = query ? strstr(query, "since=") : NULL;
    if (s) {
        buf b = BUF_INIT;
        if (poll_body(&b, strtoull(s + 6, NULL, 10))) {
            fcgi_answer(c, b.data, b.len);
            buf_free(&b);
            return;
        }
        buf_free(&b);
    }
    c->held = true; /* until the next publish */
}

static void fcgi_input(fconn *c)
{
    size_t off = 0;
    while (off < c->in.len && conns[c->fd] == c) {
        fcgi_ev ev;
        off += fcgi_parser_feed(&c->fp, (const uint8_t *)c->in.data + off, c->in.len - off, &ev);
        if (ev.type == FCGI_EV_REQUEST)
            fcgi_request(c);
        else if (ev.type == FCGI_EV_MANAGEMENT)
            send_bytes(c, ev.reply, ev.reply_len);
        else if (ev.type == FCGI_EV_ERROR || ev.type == FCGI_EV_ABORT) {
            conn_close(c);
            return;
        } else if (ev.type == FCGI_EV_NONE)
            break;
    }
    if (conns[c->fd] == c)
        c->in.len = 0;
}

/* ---- WebSocket ----------------------------------------------------------------- */

static void ws_head(fconn *c)
{
    ws_request req;
    int st = ws_handshake_parse(c->in.data, c->in.len, 8192, &req);
    if (st == WS_HS_PARTIAL)
        return; /* more to come */
    if (st != WS_HS_OK) {
        char out[256];
        size_t n = ws_handshake_response_error(out, sizeof out, st);
        send_bytes(c, out, n);
        conn_close(c);
        return;
    }
    char accept[WS_ACCEPT_LEN + 1], out[256];
    ws_handshake_accept_key(req.key.p, req.key.len, accept);
    size_t n = ws_handshake_response_101(out, sizeof out, accept);
    c->kind = K_WS;
    c->in.len = 0;
    send_bytes(c, out, n);
}

/* ---- the loop ------------------------------------------------------------------ */

static fconn *conn_new(int fd, enum kind k)
{
    if (fd >= MAX_FDS) {
        close(fd);
        return NULL;
    }
    fconn *c = calloc(1, sizeof *c);
    c->fd = fd;
    c->kind = k;
    if (k == K_FCGI)
        fcgi_parser_init(&c->fp, 64 * 1024, 1 << 20);
    conns[fd] = c;
    watch(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_ADD);
    return c;
}

static int listen_on(const char *spec)
{
    int fd;
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", spec + 5);
        unlink(a.sun_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
            die(spec);
    } else {
        const char *colon = strrchr(spec, ':');
        if (!colon)
            die("address");
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
        char host[64];
        snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
        inet_pton(AF_INET, host, &a.sin_addr);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
            die(spec);
    }
    if (listen(fd, 4096) < 0)
        die("listen");
    return fd;
}

static volatile sig_atomic_t stop;
static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    const char *fcgi = NULL, *ws[2] = {NULL, NULL};
    int nws = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--fcgi"))
            fcgi = argv[i + 1];
        else if (!strcmp(argv[i], "--ws") && nws < 2)
            ws[nws++] = argv[i + 1];
    }
    if (!fcgi || !nws) {
        fprintf(stderr, "usage: floor --fcgi unix:PATH --ws HOST:PORT [--ws unix:PATH]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    ep = epoll_create1(EPOLL_CLOEXEC);
    conn_new(listen_on(fcgi), K_LISTEN_FCGI);
    for (int i = 0; i < nws; i++)
        conn_new(listen_on(ws[i]), K_LISTEN_WS);
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            fconn *c = evs[i].data.ptr;
            if (c->kind == K_LISTEN_FCGI || c->kind == K_LISTEN_WS) {
                int fd;
                while ((fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c->kind == K_LISTEN_WS) {
                        int one = 1;
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    }
                    conn_new(fd, c->kind == K_LISTEN_FCGI ? K_FCGI : K_WS_HEAD);
                }
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && !flush_out(c))
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                char tmp[65536];
                ssize_t r = read(c->fd, tmp, sizeof tmp);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                    conn_close(c);
                    continue;
                }
                if (r < 0)
                    continue;
                if (c->kind == K_WS)
                    continue; /* client frames: dropped */
                buf_append(&c->in, tmp, (size_t)r);
                if (c->kind == K_FCGI)
                    fcgi_input(c);
                else
                    ws_head(c);
            }
        }
    }
    fprintf(stderr, "floor: published %llu, long-poll answers %llu, WebSocket frames %llu, events %llu\n",
            published, delivered_polls, delivered_ws, delivered_sse);
    return 0;
}
