/* ws_handshake.h - the WebSocket opening handshake (RFC 6455 section 4):
 * parse the client's HTTP/1.1 upgrade request, build the responses.
 *
 * No I/O here, and no allocation of its own (only OpenSSL's digest inside
 * ws_handshake_accept_key may allocate): the parser reads a caller's buffer
 * and the builders write into a caller's buffer.
 */
#ifndef PW_WS_HANDSHAKE_H
#define PW_WS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

/* ws_handshake_parse results besides an HTTP error status. The parser
 * returns the status to answer with, and puts the head length in the
 * request, because byte counts and HTTP statuses would overlap in one int. */
enum {
    WS_HS_PARTIAL = 0, /* the head has not ended yet: read more and parse again */
    WS_HS_OK = 101,    /* a valid upgrade request: answer 101 */
};

/* Length of a Sec-WebSocket-Key (base64 of 16 bytes) and of an accept value
 * (base64 of a 20-byte SHA-1), without the NUL. */
#define WS_KEY_LEN    24
#define WS_ACCEPT_LEN 28

/* A piece of the request buffer. p is NULL when the header was absent; a
 * present header with an empty value has p != NULL and len 0. */
typedef struct ws_slice {
    const char *p;
    size_t len;
} ws_slice;

/* What ws_handshake_parse found. Every slice points into the buffer given to
 * it and is valid as long as that buffer is; values are trimmed of leading
 * and trailing spaces and tabs, and are not NUL-terminated. */
typedef struct ws_request {
    size_t head_len;        /* bytes of the head, through the blank line */
    ws_slice method;        /* "GET" (also filled when the answer is 405) */
    ws_slice target;        /* the request target, e.g. "/ws/chan?since=1" */
    ws_slice path;          /* target up to '?' */
    ws_slice query;         /* after '?' (p == NULL when there is no '?') */
    ws_slice host;          /* Host: always present in a request that parsed */
    ws_slice origin;        /* Origin: p == NULL when absent (non-browser client) */
    ws_slice key;           /* Sec-WebSocket-Key: 24 base64 characters */
    ws_slice version;       /* Sec-WebSocket-Version: "13" */
    ws_slice forwarded_for; /* X-Forwarded-For, the last one when repeated, or absent */
    ws_slice real_ip;       /* X-Real-IP, or absent */
    ws_slice authorization; /* Authorization, or absent */
    ws_slice cookie;        /* Cookie (the last one when repeated), or absent */
} ws_request;

/* Parse the request head at buf[0..len). Reads only bytes before the end of
 * the head and never past len or max_head; *req is overwritten. Returns:
 *   WS_HS_OK (101): a valid upgrade request of req->head_len bytes; any bytes
 *     after it belong to the WebSocket stream. Answer with
 *     ws_handshake_accept_key and ws_handshake_response_101.
 *   WS_HS_PARTIAL (0): no end of head yet and fewer than max_head bytes in
 *     buf; call again with the same bytes plus more.
 *   an HTTP status (400, 405, 426, 431): answer it with
 *     ws_handshake_response_error and close the connection. 431 means
 *     max_head bytes came without the end of the head.
 * An Upgrade header without the token "websocket" or a Connection header
 * without the token "Upgrade" (both case-insensitive comma lists, possibly
 * over several lines) gets 400.
 * Choices: a method other than GET gets 405 (the response says Allow: GET);
 * a bare LF or bare CR ends nothing and gets 400 (only CRLF line endings);
 * obs-fold, whitespace before a colon, control characters, a request target
 * not starting with '/', HTTP versions below 1.1, a missing, empty or
 * repeated Host (or one holding whitespace or non-ASCII bytes), a missing,
 * malformed or repeated Sec-WebSocket-Key (canonical base64 of 16 bytes is
 * required), a repeated Origin, X-Real-IP or Sec-WebSocket-Version,
 * Transfer-Encoding, and a Content-Length other than 0 all get 400; a missing
 * or wrong Sec-WebSocket-Version gets 426. */
int ws_handshake_parse(const char *buf, size_t len, size_t max_head, ws_request *req);

/* Compute the Sec-WebSocket-Accept value for key[0..key_len):
 * base64(SHA-1(key + the RFC 6455 GUID)), written NUL-terminated into out.
 * Returns WS_ACCEPT_LEN, or 0 (out is then "") when key_len exceeds 64 or
 * the digest fails; the parser only ever hands over 24-byte keys. */
size_t ws_handshake_accept_key(const char *key, size_t key_len, char out[WS_ACCEPT_LEN + 1]);

/* Write the 101 Switching Protocols response carrying accept (from
 * ws_handshake_accept_key) into out, NUL-terminated. Returns its length
 * without the NUL, or 0 when it does not fit in cap (160 bytes always do). */
size_t ws_handshake_response_101(char *out, size_t cap, const char *accept);

/* Write a complete refusal for status (400, 401, 403, 404, 405, 426, 431, 503; any
 * other status is answered as 500) into out, NUL-terminated: status line,
 * Content-Type: application/json, Content-Length, Connection: close, and
 * a body {"error":"..."}; 401 adds WWW-Authenticate: Bearer, 405 adds Allow: GET, 426 adds Upgrade: websocket
 * and Sec-WebSocket-Version: 13, 503 adds Retry-After. Returns the length
 * without the NUL, or 0 when it does not fit in cap (256 bytes always do).
 * The caller sends it and closes the connection. */
size_t ws_handshake_response_error(char *out, size_t cap, int status);

#endif
