/* daemon.c - shared set-up of the two daemons. Touches process state
 * (signals, limits) but no sockets. */
#include "daemon.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

void daemon_options(opt_def *out, daemon_common *c)
{
    const opt_def defs[DAEMON_COMMON_OPTIONS] = {
        {"redis", "REDIS_URL", OPT_STR, &c->redis, 0, 0, "URL",
         "Redis: redis://[[user]:pass@]host[:port][/db] or unix:///path[?db=N]"},
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
        {"id", "PW_ID", OPT_STR, &c->id, 0, 0, "NAME",
         "name in heartbeats and /healthz (default host:pid)"},
        {"log-level", "PW_LOG_LEVEL", OPT_LEVEL, &c->log_level, 0, 0, "LEVEL",
         "error, warn, info or debug; one line per event on stderr"},
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

int daemon_signal(int sigfd)
{
    struct signalfd_siginfo si;
    if (read(sigfd, &si, sizeof si) != sizeof si)
        return 0;
    return (int)si.ssi_signo;
}

broker_config daemon_broker_config(const daemon_common *c, const redis_url *url,
                                   const char *kind, unsigned history)
{
    broker_config b = {.url = *url,
                       .prefix = c->prefix,
                       .timeout_ms = c->redis_timeout,
                       .history = history,
                       .history_ttl = c->history_ttl,
                       .idem_ttl = 600,
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
    metric_put(o, "pushwire_messages_received_total", "counter",
               "Messages received from pub/sub.", hs.live_messages);
    metric_put(o, "pushwire_messages_delivered_total", "counter",
               "Messages delivered to subscribers (one per subscriber).", hs.messages_out);
    metric_put(o, "pushwire_resyncs_total", "counter", "Channel resyncs from Redis history.",
               hs.resyncs);
    buf_printf(o, "# HELP pushwire_redis_up Redis connections ready (1) or not (0).\n"
                  "# TYPE pushwire_redis_up gauge\n"
                  "pushwire_redis_up{conn=\"commands\"} %d\npushwire_redis_up{conn=\"pubsub\"} %d\n",
               broker_cmd_ready(b), broker_sub_ready(b));
    metric_put(o, "pushwire_redis_reconnects_total", "counter",
               "Redis connections (re)established.", bs->cmd_connects + bs->sub_connects);
    metric_put(o, "pushwire_redis_timeouts_total", "counter", "Redis stalls detected.",
               bs->timeouts);
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
