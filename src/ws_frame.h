/* ws_frame.h - RFC 6455 framing: a resumable parser for client-to-server
 * frames and encoders for server-to-client frames.
 *
 * Pure protocol code: no I/O, no allocation, no clocks. The caller owns the
 * sockets and buffers; this module only looks at bytes it is handed.
 */
#ifndef PW_WS_FRAME_H
#define PW_WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "utf8.h"

/* Frame opcodes (RFC 6455 section 5.2). */
enum {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close codes this module produces or reports (RFC 6455 section 7.4.1). */
enum {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_NO_STATUS = 1005, /* reported for a close frame without payload; never sent */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
};

/* Largest control frame payload, and the largest close reason that fits in
 * one next to the 2-byte code. */
#define WS_CONTROL_MAX      125
#define WS_CLOSE_REASON_MAX 123

/* Largest frame header ws_frame_header can produce: 2 + 8 length bytes
 * (server frames carry no mask). */
#define WS_FRAME_HEADER_MAX 10

typedef enum ws_event_type {
    WS_EV_NONE = 0, /* no event: every byte handed in was consumed, feed more */
    WS_EV_PING,     /* a ping arrived: payload/payload_len; answer with a pong */
    WS_EV_PONG,     /* a pong arrived: payload/payload_len */
    WS_EV_CLOSE,    /* the peer closed: code (1005 when absent), payload/payload_len = reason */
    WS_EV_MESSAGE,  /* a data message ended: opcode, message_len; its payload is not kept */
    WS_EV_ERROR,    /* protocol violation: code is the close code to send, reason a static string */
    WS_EV_CLOSED,   /* feed after WS_EV_CLOSE: the parser takes no more input */
} ws_event_type;

/* What one ws_parser_feed call reports. Only the fields named for the event
 * type are meaningful; the others are zero / NULL. */
typedef struct ws_event {
    ws_event_type type;
    uint8_t opcode;         /* MESSAGE: WS_OP_TEXT or WS_OP_BINARY */
    uint16_t code;          /* CLOSE: the peer's code; ERROR: the code to send back */
    const uint8_t *payload; /* PING, PONG: payload; CLOSE: reason (valid UTF-8, not NUL-terminated);
                               points into the parser, valid until the next feed call */
    size_t payload_len;     /* 0..125 for PING and PONG, 0..123 for CLOSE */
    uint64_t message_len;   /* MESSAGE: total payload bytes over all its fragments */
    const char *reason;     /* ERROR: short static text, fit for the close frame reason */
} ws_event;

/* Parser state for one client connection. Caller-allocated (it is meant to
 * sit inside the connection struct: about 200 bytes, no heap), initialised
 * with ws_parser_init or by zero-filling, which equals ws_parser_init(p, 0).
 * The fields are private; they are declared here only so the struct can be
 * embedded. Data message payloads are validated and dropped, never stored:
 * only control frame payloads (at most 125 bytes) are kept, in ctl. A
 * caller that wants text messages sets a sink after ws_parser_init
 * (ws_parser_set_text_sink): it is handed each text
 * payload chunk, unmasked, as it is validated (binary payload is skipped),
 * and keeps what it wants itself. */
typedef void ws_text_sink(void *ctx, const uint8_t *data, size_t n);
typedef struct ws_parser {
    uint64_t max_message; /* limit on one data message's payload; 0: none */
    uint64_t message_len; /* payload bytes announced so far for the data message in progress */
    uint64_t remaining;   /* payload bytes of the current frame not yet consumed */
    const char *error;    /* sticky error reason once state is ERROR */
    uint16_t error_code;
    uint8_t state;      /* private enum in ws_frame.c */
    uint8_t hdr_len;    /* header bytes collected in hdr */
    uint8_t hdr_need;   /* header bytes needed for the current frame (2 until known) */
    uint8_t opcode;     /* current frame's opcode */
    uint8_t fin;        /* current frame's FIN bit */
    uint8_t mask_pos;   /* index into mask of the next payload byte */
    uint8_t msg_opcode; /* WS_OP_TEXT / WS_OP_BINARY while a data message is in progress, else 0 */
    uint8_t ctl_len;    /* control payload bytes collected in ctl */
    uint8_t hdr[14];
    uint8_t mask[4];
    utf8_state utf8; /* validator for the text message in progress */
    uint8_t ctl[WS_CONTROL_MAX];
    ws_text_sink *text_sink; /* NULL: text payload is dropped (ws_parser_init) */
    void *sink_ctx;
} ws_parser;

/* Reset p for a new connection. max_message bounds the total payload of one
 * data message (all fragments together); a message announcing more gets
 * WS_EV_ERROR with code 1009 as soon as the header saying so arrives. 0 means
 * no limit (the payload is never stored, so this only bounds what a client
 * may make the relay read and validate). */
void ws_parser_init(ws_parser *p, uint64_t max_message);

/* Hand every later text payload chunk to sink(ctx, ...); NULL stops it. */
void ws_parser_set_text_sink(ws_parser *p, ws_text_sink *sink, void *ctx);

/* Consume client bytes from buf[0..len) and stop after at most one event.
 * Returns how many bytes were consumed and fills *ev:
 *   WS_EV_NONE: all len bytes were consumed and no event completed; call again
 *     when more bytes arrive.
 *   WS_EV_PING / PONG / CLOSE / MESSAGE: the event ended at buf[return - 1];
 *     call again with buf + return for the rest. Payload pointers in *ev stay
 *     valid until the next call on p.
 *   WS_EV_ERROR: the client broke the protocol; send a close frame with
 *     ev->code and ev->reason (ws_frame_close) and close the connection.
 *     The count returned then only says how far the parser looked.
 *   After WS_EV_ERROR, every later call returns 0 with the same error; after
 *   WS_EV_CLOSE, every later call returns 0 with WS_EV_CLOSED. In both cases
 *   the bytes are left untouched.
 * Never reads outside buf[0..len); buf may be NULL when len is 0. */
size_t ws_parser_feed(ws_parser *p, const uint8_t *buf, size_t len, ws_event *ev);

/* Header length for a server frame carrying payload_len bytes: 2, 4 or 10,
 * or 0 when payload_len does not fit a frame (2^63 or more). */
size_t ws_frame_header_len(uint64_t payload_len);

/* Write an unmasked server frame header into out (at most 10 bytes) and
 * return its length, 2, 4 or 10 (the shortest encoding). The caller writes
 * the payload right after it. Returns 0, writing nothing, when opcode is not
 * 0..15 or payload_len is 2^63 or more. The header does not depend on the
 * client, so the relay encodes a published message once and sends the same
 * bytes to every client. */
size_t ws_frame_header(uint8_t out[WS_FRAME_HEADER_MAX], unsigned opcode, bool fin,
                       uint64_t payload_len);

/* Write a complete close frame into out and return its length (2 to 127).
 * code 0 gives an empty close payload (no code, no reason); otherwise the
 * payload is the code then reason (NUL-terminated, may be NULL), cut to 123
 * bytes at a UTF-8 character boundary. The caller sends it and then stops
 * sending data frames. */
size_t ws_frame_close(uint8_t out[2 + 2 + WS_CLOSE_REASON_MAX], uint16_t code, const char *reason);

/* Write a complete control frame (ping, pong or close) carrying payload[0..len)
 * into out and return its length, 2 + len. Returns 0, writing nothing, when
 * len exceeds 125 or opcode is not a control opcode. A pong answering a
 * WS_EV_PING is ws_frame_control(out, WS_OP_PONG, ev.payload, ev.payload_len). */
size_t ws_frame_control(uint8_t out[2 + WS_CONTROL_MAX], unsigned opcode, const uint8_t *payload,
                        size_t len);

#endif
