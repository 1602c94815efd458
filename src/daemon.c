/* daemon.c - shared set-up of the two daemons. Touches process state
 * (signals, limits) but no sockets. */
#include "daemon.h"
#include "net.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

void daemon_options(opt_def *out, daemon_common *c)
{
    const opt_def defs[DAEMON_COMMON_OPTIONS] = {
        {"redis", "REDIS_URL", OPT_URL, &c->redis, 0, 0, "URL",
         "Redis: redis://[[user]:pass@]host[:port][/db], unix:///path[?db=N] or "
         "redis+sentinel://[[user]:pass@]host[:port][,host[:port]...]/master[/db]"
         "[?sentinel_password=PW]"},
        {"redis-wait-replicas", "PW_REDIS_WAIT_REPLICAS", OPT_UINT, &c->wait_replicas, 0, 64, "N",
         "acknowledge and deliver a publish only once N replicas have it (WAIT): a failover then "
         "keeps epochs and loses nothing (the same in every process)"},
        {"prefix", "PW_PREFIX", OPT_STR, &c->prefix, 0, 0, "STR",
         "prefix of every Redis key and pub/sub channel (the same in every process)"},
        {"redis-timeout", "PW_REDIS_TIMEOUT", OPT_UINT, &c->redis_timeout, 50, 600000, "MS",
         "Redis unanswered this long counts as down"},
        {"heartbeat", "PW_HEARTBEAT_MS", OPT_UINT, &c->heartbeat_ms, 50, 600000, "MS",
         "heartbeat (for /healthz) and pub/sub liveness probe interval"},
        {"history-ttl", "PW_HISTORY_TTL", OPT_UINT, &c->history_ttl, 1, 315360000, "SECONDS",
         "a channel idle this long may be forgotten (the same in every process)"},
        {"metrics", "PW_METRICS", OPT_STR, &c->metrics, 0, 0, "ADDR",
         "serve Prometheus metrics at http://ADDR/metrics (keep it private)"},
        {"backlog", "PW_BACKLOG", OPT_UINT, &c->backlog, 1, 65535, "N", "listen backlog"},
        {"max-channels", "PW_MAX_CHANNELS", OPT_UINT, &c->max_channels, 1, 10000000, "N",
         "channels followed at once; past it unused ones are dropped, else clients get 503"},
        {"max-history-reads", "PW_MAX_HISTORY_READS", OPT_UINT, &c->max_reads, 1, 100000, "N",
         "history reads in Redis at once (each up to 1 MiB); more wait their turn"},
        {"id", "PW_ID", OPT_STR, &c->id, 0, 0, "NAME",
         "name in heartbeats and /healthz (default host:pid)"},
        {"log-level", "PW_LOG_LEVEL", OPT_LEVEL, &c->log_level, 0, 0, "LEVEL",
         "error, warn, info or debug; one line per event on stderr"},
        {"origins", "PW_ORIGINS", OPT_STR, &c->origins, 0, 0, "LIST",
         "browser Origins allowed to open WebSockets and to POST /chat (comma-separated, or *; "
         "default: the request's Host)"},
        {"private-channels", "PW_PRIVATE_CHANNELS", OPT_STR, &c->private_channels, 0, 0, "LIST",
         "channels readable only with a token: names, prefixes ending in *, or *"},
        {"jwt-secret-file", "PW_JWT_SECRET_FILE", OPT_STR, &c->jwt_secret_file, 0, 0, "FILE",
         "HS256/384/512 token secret (at least 32 bytes)"},
        {"jwt-public-key-file", "PW_JWT_PUBLIC_KEY_FILE", OPT_STR, &c->jwt_public_key_file, 0, 0,
         "FILE", "PEM public key for RS256/384/512 or ES256/384/512 tokens"},
        {"jwt-audience", "PW_JWT_AUDIENCE", OPT_STR, &c->jwt_audience, 0, 0, "STR",
         "tokens must carry this aud"},
        {"jwt-issuer", "PW_JWT_ISSUER", OPT_STR, &c->jwt_issuer, 0, 0, "STR",
         "tokens must carry this iss"},
        {"jwt-leeway", "PW_JWT_LEEWAY", OPT_UINT, &c->jwt_leeway, 0, 3600, "SECONDS",
         "clock skew allowed on a token's exp and nbf"},
    };
    memcpy(out, defs, sizeof defs);
}

int daemon_setup(daemon_common *c, const char *prog, redis_url *url)
{
    log_init(prog, c->log_level);
    if (!c->id[0]) {
        char host[64] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(c->idbuf, sizeof c->idbuf, "%s:%d", host, (int)getpid());
        c->id = c->idbuf;
    }
    const char *why;
    if (redis_url_parse(c->redis, url, &why) < 0) {
        fprintf(stderr, "error: --redis: %s\n", why);
        return -1;
    }
    if (redis_url_is_cluster(url) && strpbrk(c->prefix, "{}")) {
        /* Every key of a channel shares the hash tag {CHANNEL}, which
         * must be the first braces of the key. */
        fprintf(stderr, "error: --prefix must not contain { or } with a redis+cluster:// URL\n");
        return -1;
    }
    auth_config ac = {.private_channels = c->private_channels,
                      .secret_file = c->jwt_secret_file,
                      .public_key_file = c->jwt_public_key_file,
                      .audience = c->jwt_audience,
                      .issuer = c->jwt_issuer,
                      .leeway = c->jwt_leeway};
    char aerr[256];
    c->auth = auth_new(&ac, aerr, sizeof aerr);
    if (!c->auth) {
        fprintf(stderr, "error: %s\n", aerr);
        return -1;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Write errors are handled where they happen. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        perror("signalfd");
    return fd;
}

/* Read the signalfd: the signal number, or 0 when none is pending. */
static int daemon_signal(int sigfd)
{
    struct signalfd_siginfo si;
    if (read(sigfd, &si, sizeof si) != sizeof si)
        return 0;
    return (int)si.ssi_signo;
}

/* The broker settings of a process of this kind. */
static broker_config daemon_broker_config(const daemon_common *c, const redis_url *url,
                                          const char *kind, unsigned history)
{
    broker_config b = {.url = *url,
                       .prefix = c->prefix,
                       .timeout_ms = c->redis_timeout,
                       .history = history,
                       .history_ttl = c->history_ttl,
                       .idem_ttl = 600,
                       .wait_replicas = c->wait_replicas,
                       .heartbeat_ms = c->heartbeat_ms,
                       .proc_kind = kind,
                       .proc_id = c->id};
    return b;
}

void metric_put(buf *o, const char *name, const char *type, const char *help, uint64_t v)
{
    buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
               (unsigned long long)v);
}

void daemon_metrics(buf *o, hub *h)
{
    hub_stats hs = hub_get_stats(h);
    broker *b = hub_broker(h);
    const broker_stats *bs = broker_get_stats(b);
    metric_put(o, "pushwire_channels", "gauge", "Channels this process follows.", hs.channels);
    metric_put(o, "pushwire_subscribers", "gauge",
               "Subscriptions held now (one per channel per connection; GET /channels sums "
               "them over every process).",
               hs.subs);
    metric_put(o, "pushwire_messages_received_total", "counter", "Messages received from pub/sub.",
               hs.live_messages);
    metric_put(o, "pushwire_messages_delivered_total", "counter",
               "Messages delivered to subscribers (one per subscriber).", hs.messages_out);
    metric_put(o, "pushwire_resyncs_total", "counter", "Channel resyncs from Redis history.",
               hs.resyncs);
    metric_put(o, "pushwire_history_reads", "gauge", "History reads in Redis now.", hs.reads);
    metric_put(o, "pushwire_history_reads_queued", "gauge",
               "Subscribers waiting for a history read slot (--max-history-reads).", hs.queued);
    metric_put(o, "pushwire_channels_refused_total", "counter",
               "Subscriptions refused at --max-channels.", hs.refused);
    metric_put(o, "pushwire_channels_evicted_total", "counter",
               "Unused channels dropped to make room under --max-channels.", hs.evicted);
    buf_printf(o,
               "# HELP pushwire_redis_up Redis connections ready (1) or not (0).\n"
               "# TYPE pushwire_redis_up gauge\n"
               "pushwire_redis_up{conn=\"commands\"} %d\npushwire_redis_up{conn=\"pubsub\"} %d\n",
               broker_cmd_ready(b), broker_sub_ready(b));
    metric_put(o, "pushwire_redis_reconnects_total", "counter",
               "Redis connections (re)established.", bs->cmd_connects + bs->sub_connects);
    metric_put(o, "pushwire_redis_timeouts_total", "counter", "Redis stalls detected.",
               bs->timeouts);
    metric_put(o, "pushwire_redis_failovers_total", "counter",
               "Sentinel +switch-master announcements acted on.", bs->failovers);
    metric_put(o, "pushwire_redis_redirects_total", "counter",
               "Redis Cluster MOVED and ASK redirections followed.", bs->redirects);
    metric_put(o, "pushwire_redis_slot_map_loads_total", "counter",
               "Redis Cluster slot maps loaded (CLUSTER SLOTS).", bs->slot_refreshes);
    long rss_pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        long size;
        if (fscanf(f, "%ld %ld", &size, &rss_pages) != 2)
            rss_pages = 0;
        fclose(f);
    }
    metric_put(o, "process_resident_memory_bytes", "gauge", "Resident memory.",
               (uint64_t)rss_pages * (uint64_t)sysconf(_SC_PAGESIZE));
}

/* ---- the running process -------------------------------------------------------- */

#define SHUTDOWN_GRACE_MS 5000

static daemon_rt *the_daemon; /* one per process: signal and timer callbacks find it */

static void goodbye_done(void *arg)
{
    daemon_rt *d = arg;
    d->goodbye_pending = false;
    daemon_maybe_stop(d);
}

static void begin_stop(daemon_rt *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = true;
    d->goodbye_pending = broker_goodbye(hub_broker(d->h), goodbye_done, d) == 0;
    if (d->accepting)
        loop_del(d->l, &d->lw);
    d->accepting = false;
    timer_stop(d->l, &d->accept_retry);
    if (d->lw.fd >= 0) {
        close(d->lw.fd);
        d->lw.fd = -1;
    }
    if (d->unix_path[0])
        unlink(d->unix_path);
    d->unix_path[0] = '\0';
    d->on_stop(why);
    timer_start(d->l, &d->stop_timer, SHUTDOWN_GRACE_MS);
    daemon_maybe_stop(d);
}

static void signal_io(loop *l, io_watch *w, uint32_t revents)
{
    (void)l, (void)revents;
    int sig;
    while ((sig = daemon_signal(w->fd)))
        begin_stop(the_daemon, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

static void stop_timer_cb(loop *l, timer *t)
{
    (void)t;
    daemon_rt *d = the_daemon;
    log_warn("shutdown grace period over with %zu connections open; exiting", d->open_count());
    if (d->on_grace_over)
        d->on_grace_over();
    loop_stop(l);
}

static void accept_retry_cb(loop *l, timer *t)
{
    (void)l, (void)t;
    daemon_accept_resume(the_daemon);
}

void daemon_accept_pause(daemon_rt *d, unsigned retry_ms)
{
    if (d->accepting) {
        loop_del(d->l, &d->lw);
        d->accepting = false;
    }
    if (retry_ms)
        timer_start(d->l, &d->accept_retry, retry_ms);
}

void daemon_accept_resume(daemon_rt *d)
{
    if (d->accepting || d->stopping || d->lw.fd < 0 || (d->may_accept && !d->may_accept()))
        return;
    if (loop_add(d->l, &d->lw, EPOLLIN) == 0)
        d->accepting = true;
}

void daemon_maybe_stop(daemon_rt *d)
{
    if (d->stopping && !d->goodbye_pending && d->open_count() == 0)
        loop_stop(d->l);
}

int daemon_start(daemon_rt *d, daemon_common *c, const redis_url *url, int sigfd, const char *kind,
                 unsigned history, const char *listen_spec, int reuseport, io_cb *on_accept,
                 metrics_render *render)
{
    the_daemon = d;
    d->l = loop_new();
    if (!d->l) {
        log_error("epoll: %s", strerror(errno));
        return -1;
    }
    const char *why;
    int lfd = net_listen(listen_spec, (int)c->backlog, reuseport, d->unix_path, sizeof d->unix_path,
                         &why);
    if (lfd < 0) {
        log_error("cannot listen on %s: %s", listen_spec, why);
        return -1;
    }
    d->lw.fd = lfd;
    d->lw.cb = on_accept;
    d->accept_retry.cb = accept_retry_cb;
    d->stop_timer.cb = stop_timer_cb;
    d->sigw.fd = sigfd;
    d->sigw.cb = signal_io;
    loop_add(d->l, &d->sigw, EPOLLIN);
    hub_config hc = {
        .broker = daemon_broker_config(c, url, kind, history),
        .batch_bytes = 1 << 20,
        .ring_bytes = 512 << 10,
        .linger_ms = 60000,
        .max_channels = c->max_channels,
        .max_reads = c->max_reads,
        .presence_ms = c->heartbeat_ms,
    };
    d->h = hub_new(d->l, &hc);
    hub_start(d->h);
    if (c->metrics[0]) {
        d->metrics = metrics_start(d->l, c->metrics, render, NULL, &why);
        if (!d->metrics) {
            log_error("cannot serve metrics on %s: %s", c->metrics, why);
            return -1;
        }
    }
    daemon_accept_resume(d);
    char shown[512];
    log_info("listening on %s (redis %s, id %s%s%s)", listen_spec,
             redis_url_redact(c->redis, shown, sizeof shown), c->id,
             c->metrics[0] ? ", metrics " : "", c->metrics);
    return 0;
}

void daemon_finish(daemon_rt *d)
{
    metrics_stop(d->metrics);
    d->metrics = NULL;
    timer_stop(d->l, &d->accept_retry);
    timer_stop(d->l, &d->stop_timer);
    if (d->lw.fd >= 0) {
        loop_del(d->l, &d->lw);
        close(d->lw.fd);
        d->lw.fd = -1;
    }
    if (d->unix_path[0])
        unlink(d->unix_path);
    loop_del(d->l, &d->sigw);
    close(d->sigw.fd);
    loop_free(d->l);
    d->l = NULL;
}
