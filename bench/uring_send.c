/*
 * uring_send - what batched submission with io_uring would save the relay.
 *
 * The relay writes each client's queued frames with one writev per client
 * per event-loop round. This holds N loopback TCP connections (both ends
 * in this process, receivers drained outside the measured part), writes
 * SIZE bytes to every one of them R times, and reports the CPU time
 * (user + system) per write for three ways of doing it:
 *   writev      one writev(2) per connection (what the relay does);
 *   uring-writev IORING_OP_WRITEV, BATCH per io_uring_enter;
 *   uring-send  IORING_OP_SEND, BATCH per io_uring_enter.
 * Non-blocking sockets: io_uring attempts each write inline, as writev.
 *
 *   build/bench/uring_send [N [ROUNDS [BATCH [SIZE]]]]   (default 9000 10 256 100)
 *
 * Prints one JSON object. Needs liburing (liburing-dev); bench/Makefile
 * builds it only when pkg-config finds it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static double cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

enum { WRITEV, URING_WRITEV, URING_SEND, NWAYS };
static const char *const names[] = {"writev", "uring-writev", "uring-send"};

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 9000, rounds = argc > 2 ? atoi(argv[2]) : 10;
    int batch = argc > 3 ? atoi(argv[3]) : 256, size = argc > 4 ? atoi(argv[4]) : 100;
    if (n < 1 || rounds < 1 || batch < 1 || batch > 4096 || size < 1 || size > 65536) {
        fprintf(stderr, "usage: uring_send [N [ROUNDS [BATCH(1-4096) [SIZE(1-65536)]]]]\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((rlim_t)n * 2 + 16 > rl.rlim_cur) {
            fprintf(stderr, "uring_send: %d connections need %d descriptors\n", n, n * 2 + 16);
            return 2;
        }
    }
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096) ||
        getsockname(ls, (struct sockaddr *)&a, &al))
        die("listen");
    int *cl = malloc(sizeof(int) * (size_t)n), *sv = malloc(sizeof(int) * (size_t)n);
    char *msg = malloc((size_t)size), *rb = malloc(1 << 20);
    if (!cl || !sv || !msg || !rb)
        die("malloc");
    memset(msg, 'x', (size_t)size);
    for (int i = 0; i < n; i++) {
        cl[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (cl[i] < 0 || connect(cl[i], (struct sockaddr *)&a, sizeof a))
            die("connect");
        if ((sv[i] = accept(ls, NULL, NULL)) < 0)
            die("accept");
        fcntl(sv[i], F_SETFL, O_NONBLOCK);
        fcntl(cl[i], F_SETFL, O_NONBLOCK);
        setsockopt(sv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    struct io_uring ring;
    if (io_uring_queue_init((unsigned)batch, &ring, 0) < 0) {
        fprintf(stderr, "uring_send: io_uring unavailable here\n");
        return 3;
    }
    struct iovec iov = {msg, (size_t)size};
    double spent[NWAYS] = {0};
    /* rounds interleave the three ways so that the machine's noise hits all */
    for (int r = 0; r < rounds; r++) {
        for (int w = 0; w < NWAYS; w++) {
            double c0 = cpu_s();
            if (w == WRITEV) {
                for (int i = 0; i < n; i++)
                    if (writev(sv[i], &iov, 1) != size)
                        die("writev");
            } else {
                for (int i = 0; i < n;) {
                    int k = 0;
                    for (; k < batch && i < n; k++, i++) {
                        struct io_uring_sqe *s = io_uring_get_sqe(&ring);
                        if (w == URING_SEND)
                            io_uring_prep_send(s, sv[i], msg, (size_t)size, MSG_NOSIGNAL);
                        else
                            io_uring_prep_writev(s, sv[i], &iov, 1, 0);
                    }
                    if (io_uring_submit_and_wait(&ring, (unsigned)k) < 0)
                        die("io_uring_submit_and_wait");
                    struct io_uring_cqe *cq;
                    unsigned head, got = 0;
                    io_uring_for_each_cqe(&ring, head, cq)
                    {
                        if (cq->res != size) {
                            fprintf(stderr, "uring_send: a write returned %d\n", cq->res);
                            return 1;
                        }
                        got++;
                    }
                    io_uring_cq_advance(&ring, got);
                    if ((int)got != k) {
                        fprintf(stderr, "uring_send: %u of %d completions\n", got, k);
                        return 1;
                    }
                }
            }
            spent[w] += cpu_s() - c0;
            for (int i = 0; i < n; i++)
                while (read(cl[i], rb, 1 << 20) > 0)
                    ;
        }
    }
    printf("{\"connections\":%d,\"rounds\":%d,\"batch\":%d,\"size\":%d", n, rounds, batch, size);
    for (int w = 0; w < NWAYS; w++)
        printf(",\"%s_us_per_write\":%.2f", names[w], spent[w] * 1e6 / ((double)n * rounds));
    printf("}\n");
    io_uring_queue_exit(&ring);
    return 0;
}
