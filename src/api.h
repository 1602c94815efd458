/* api.h - the HTTP API's request rules: routing, parameters, bodies, limits.
 *
 * Pure functions: they take the request's method, path, query, headers and
 * body as bytes and return a typed request or an (HTTP status, message) pair.
 * No I/O and no Redis here; the transports (FastCGI worker, relay) call this.
 */
#ifndef PW_API_H
#define PW_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envelope.h"

#define PW_IDEM_KEY_MAX 128

/* ROUTE_CHANNELS: "/channels" (the list) and "/channels/NAME" (one). */
enum api_route { ROUTE_CHAT, ROUTE_STATUS, ROUTE_HEALTHZ, ROUTE_CHANNELS, ROUTE_NOT_FOUND };

/* The parts of an HTTP request the API looks at. Missing ones are NULL. */
typedef struct api_http {
    const char *method;
    const char *path; /* without the query */
    const char *query;
    const char *content_type;
    const char *accept;
    const char *idempotency_key;
    const char *authorization;
    const char *last_event_id;
    const char *cookie;
    const char *origin;
    const char *host;
    const char *sec_fetch_site;
    const char *body;
    size_t body_len;
} api_http;

typedef struct api_limits {
    size_t max_content;       /* decoded content bytes (default 65536) */
    unsigned default_timeout; /* seconds */
    unsigned max_timeout;     /* seconds */
    bool allow_empty;         /* "channel=" means no channel yet (a WebSocket subscribes in band) */
} api_limits;

typedef struct api_error {
    int status;          /* 400, 401, 403, 405, 413, 415 */
    const char *message; /* static string */
    const char *allow;   /* for 405: the Allow header value */
} api_error;

/* One message of a publish. */
typedef struct api_msg {
    char channel[PW_CHANNEL_MAX + 1];
    char *content; /* decoded, malloc'ed, owned by the api_publish */
    size_t content_len;
} api_msg;

/* Messages of one POST /chat request in one batch: always at least one.
 * Form bodies and {"content": ...} are one message; {"messages": [...]} is
 * 1..API_BATCH_MAX of them (batch set: the answer is {"results": [...]}),
 * kept in the order given (one channel's messages get ascending ids in
 * that order). */
#define API_BATCH_MAX 1000
typedef struct api_publish {
    api_msg *msgs; /* n of them, malloc'ed: api_publish_free */
    size_t n;
    bool batch;
    char idem_key[PW_IDEM_KEY_MAX + 1]; /* "" when absent */
} api_publish;

/* The Idempotency-Key of message i: the request's key for a single
 * message, KEY#i in a batch (a retried batch publishes none twice). */
void api_publish_idem_key(const api_publish *p, size_t i, char *out, size_t cap);

/* One channel of a subscribe request and where the client stands in it. */
typedef struct api_chan {
    char channel[PW_CHANNEL_MAX + 1];
    bool has_since;
    uint64_t since;
    char epoch[PW_EPOCH_MAX + 1]; /* "" when absent */
} api_chan;

/* Hard cap of the channels one connection may follow (--max-subscriptions). */
#define API_SUBS_MAX 1000

typedef struct api_poll {
    api_chan *chans; /* the caller's array (api_parse_poll) */
    size_t n;        /* channels listed: 1.., or 0 for "channel=" when allow_empty */
    bool multi;      /* several channels: answers and event ids in the list form */
    unsigned timeout; /* seconds, already capped */
    bool event_stream; /* Accept: text/event-stream */
} api_poll;

enum api_route api_route(const char *path);

/* Reason phrase for the statuses this system sends ("OK", "Not Found"...). */
const char *api_status_text(int status);

/* True when s[0..n) is a valid channel name: [A-Za-z0-9_.:-]{1,64}. */
bool api_channel_valid(const char *s, size_t n);

/* Check method and everything about a publish. On success returns 0 and
 * fills *out (call api_publish_free later); on failure returns -1 with *err
 * set and nothing to free. */
int api_parse_publish(const api_http *in, const api_limits *lim, api_publish *out,
                      api_error *err);
void api_publish_free(api_publish *p);

/* Check method and parameters of GET /status (long-poll, EventSource,
 * WebSocket). The channels, at most cap of them, go into chans[]:
 *   channel=a,b,c             a list of distinct names (default: "default");
 *   since=N [&epoch=E]        the position when there is one channel;
 *   since=a=E:5,b=7           a position list: CHANNEL=[EPOCH:]ID items (an
 *                             item splits at its first '=', its position at
 *                             the last ':'), for any number of channels;
 *   timeout=S                 long-poll hold, capped.
 * For EventSource, Last-Event-ID (what we send as event ids: "EPOCH:ID",
 * or a position list) stands for the positions when the query gives none;
 * a malformed one is ignored. Returns 0, or -1 with *err set. */
int api_parse_poll(const api_http *in, const api_limits *lim, api_poll *out, api_chan *chans,
                   size_t cap, api_error *err);

/* Apply a position list s[0..n) to the channels of out. strict: a
 * malformed item, a channel not in out or named twice is an error (-1
 * with 400); otherwise such items are skipped. */
int api_parse_position_list(const char *s, size_t n, api_poll *out, bool strict, api_error *err);

/* Whether a publish may come from where the browser says it does (CSRF: a
 * page on another site can POST a form here with the visitor's cookies).
 * Refused: an Origin that origin_allowed(allow, ...) refuses, or a
 * Sec-Fetch-Site of "cross-site" or "same-site" without an allowed Origin.
 * A request with neither header (curl, a backend) is not a browser's and
 * passes. Returns 0, or -1 with 403. */
int api_check_publish_origin(const api_http *in, const char *allow, api_error *err);

/* Publishing restricted by a shared token: NULL/"" token means open.
 * Returns 0 when allowed, else -1 with 401 (no credential) or 403 (wrong). */
int api_check_publish_auth(const char *authorization, const char *token, api_error *err);

#endif
