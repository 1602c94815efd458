/* fcgi_proto.h - the responder side of the FastCGI protocol (FastCGI 1.0
 * specification, sections 3-6) as a resumable parser: bytes from the web
 * server in, request events out. No I/O and no allocation beyond the
 * bounded parameter buffer it owns.
 *
 * Why not libfcgi's FCGX_Accept_r: it reads each new connection's request
 * with blocking calls and cannot take a second request on a kept-alive
 * connection from an event loop. nginx's `fastcgi_keep_conn on` saves a
 * connect/accept/close per long-poll on both sides, which the benchmark
 * showed to be the largest cost of a fan-out (see docs/BENCHMARKS.md).
 * The record layout constants come from libfcgi's <fastcgi.h>.
 */
#ifndef PW_FCGI_PROTO_H
#define PW_FCGI_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The parameters the worker uses; everything else nginx sends is skipped. */
enum fcgi_param_id {
    FP_REQUEST_METHOD,
    FP_DOCUMENT_URI,
    FP_QUERY_STRING,
    FP_CONTENT_TYPE,
    FP_HTTP_ACCEPT,
    FP_HTTP_IDEMPOTENCY_KEY,
    FP_HTTP_AUTHORIZATION,
    FP_HTTP_LAST_EVENT_ID,
    FP_HTTP_COOKIE,
    FP_HTTP_ORIGIN,
    FP_HTTP_HOST,
    FP_HTTP_SEC_FETCH_SITE,
    FP_COUNT
};

typedef enum fcgi_ev_type {
    FCGI_EV_NONE,        /* all input consumed; feed more */
    FCGI_EV_REQUEST,     /* a request's parameters and body are complete */
    FCGI_EV_ABORT,       /* FCGI_ABORT_REQUEST for the active request */
    FCGI_EV_MANAGEMENT,  /* a management record (request id 0): reply in ev->reply */
    FCGI_EV_ERROR,       /* protocol violation or limit: close the connection */
} fcgi_ev_type;

typedef struct fcgi_ev {
    fcgi_ev_type type;
    const char *error;       /* FCGI_EV_ERROR: static text for the log */
    uint8_t reply[128];      /* FCGI_EV_MANAGEMENT: records to write back */
    size_t reply_len;
} fcgi_ev;

/* Per-connection parser. Zero-initialise with fcgi_parser_init. After
 * FCGI_EV_REQUEST the request (parameters, body) stays readable through the
 * accessors below until fcgi_parser_next is called. */
typedef struct fcgi_parser {
    uint8_t hdr[8];
    uint8_t hdr_len;
    uint8_t state;      /* private */
    uint8_t type;       /* current record type */
    bool keep_conn;     /* the web server asked to keep the connection */
    bool have_request;  /* BEGIN_REQUEST seen for the active request */
    bool params_done, stdin_done, delivered;
    uint16_t reqid;     /* the active request */
    uint16_t rec_id;    /* current record's request id */
    uint32_t remaining; /* content bytes left in the current record */
    uint8_t padding;    /* padding bytes left after the content */
    uint8_t begin[8];   /* BEGIN_REQUEST body being collected */
    uint8_t begin_len;
    size_t max_params, max_body;
    bool body_too_large;
    buf params;         /* raw name-value pairs of the active request */
    buf body;           /* stdin of the active request (up to max_body) */
    /* Offsets into params.data of the wanted values, -1 when absent. */
    int32_t off[FP_COUNT];
    uint32_t len[FP_COUNT];
} fcgi_parser;

/* max_params bounds the parameter bytes of one request, max_body its stdin
 * (more stdin is read and discarded, and fcgi_body_too_large reports it). */
void fcgi_parser_init(fcgi_parser *p, size_t max_params, size_t max_body);

/* Consume up to len bytes; stops after one event. Returns bytes consumed.
 * Records for another request id than the active one are refused with an
 * END_REQUEST(CANT_MPX_CONN) reply via FCGI_EV_MANAGEMENT (nginx never
 * multiplexes). After FCGI_EV_ERROR the parser takes nothing more. */
size_t fcgi_parser_feed(fcgi_parser *p, const uint8_t *data, size_t len, fcgi_ev *ev);

/* Forget the answered request and get ready for the next one on the same
 * connection; releases the parameter and body buffers' memory. */
void fcgi_parser_next(fcgi_parser *p);

/* Release memory; the parser must be initialised again before reuse. */
void fcgi_parser_free(fcgi_parser *p);

/* A wanted parameter of the completed request as a NUL-terminated string,
 * or NULL when nginx did not send it. Valid until fcgi_parser_next. */
const char *fcgi_param(const fcgi_parser *p, enum fcgi_param_id id);

#endif
