/* ws_frame.c - RFC 6455 frame parser (client to server) and encoders
 * (server to client).
 *
 * No I/O and no allocation here: the parser works on the bytes it is handed
 * and keeps its whole state in the caller's ws_parser.
 */
#include "ws_frame.h"

#include <string.h>

/* Parser states. Zero must be "expecting a frame header" so that a
 * zero-filled ws_parser is ready to use. */
enum { ST_HEADER = 0, ST_PAYLOAD, ST_ERROR, ST_CLOSED };

/* Text payload is unmasked into a stack buffer of this size, one chunk at a
 * time, so that validation needs no per-client memory. */
#define UNMASK_CHUNK 512

void ws_parser_init(ws_parser *p, uint64_t max_message)
{
    memset(p, 0, sizeof *p);
    p->max_message = max_message;
    p->hdr_need = 2;
    utf8_reset(&p->utf8);
}

void ws_parser_set_text_sink(ws_parser *p, ws_text_sink *sink, void *ctx)
{
    p->text_sink = sink;
    p->sink_ctx = ctx;
}

static bool is_control(unsigned opcode)
{
    return opcode >= WS_OP_CLOSE;
}

static bool is_known_opcode(unsigned opcode)
{
    return opcode <= WS_OP_BINARY || (opcode >= WS_OP_CLOSE && opcode <= WS_OP_PONG);
}

/* The close codes a peer may send (RFC 6455 section 7.4 and the IANA
 * registry): 1004-1006 and 1015 are reserved for local use and must never
 * appear on the wire, and 1016-2999 are unassigned. */
static bool close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1003)
        return true;
    if (code >= 1007 && code <= 1014)
        return true;
    return code >= 3000 && code <= 4999;
}

/* Enter the sticky error state and describe it in *ev. */
static void fail(ws_parser *p, ws_event *ev, uint16_t code, const char *reason)
{
    p->state = ST_ERROR;
    p->error_code = code;
    p->error = reason;
    ev->type = WS_EV_ERROR;
    ev->code = code;
    ev->reason = reason;
}

/* Check what the first two header bytes alone decide, so that a bad frame
 * is refused before the rest of its header arrives, and work out how long
 * the header is. Returns false after fail(). */
static bool header_start(ws_parser *p, ws_event *ev)
{
    uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
    unsigned opcode = b0 & 0x0F, len7 = b1 & 0x7F;

    p->fin = (b0 & 0x80) != 0;
    p->opcode = (uint8_t)opcode;

    /* No extension is ever negotiated, so RSV1-3 have no meaning. */
    if (b0 & 0x70) {
        fail(p, ev, WS_CLOSE_PROTOCOL, "reserved bits set");
        return false;
    }
    if (!is_known_opcode(opcode)) {
        fail(p, ev, WS_CLOSE_PROTOCOL, "reserved opcode");
        return false;
    }
    if (!(b1 & 0x80)) {
        fail(p, ev, WS_CLOSE_PROTOCOL, "client frame not masked");
        return false;
    }
    if (is_control(opcode)) {
        if (!p->fin) {
            fail(p, ev, WS_CLOSE_PROTOCOL, "fragmented control frame");
            return false;
        }
        if (len7 > WS_CONTROL_MAX) {
            fail(p, ev, WS_CLOSE_PROTOCOL, "control frame too long");
            return false;
        }
    } else if (opcode == WS_OP_CONT) {
        if (!p->msg_opcode) {
            fail(p, ev, WS_CLOSE_PROTOCOL, "continuation without a message");
            return false;
        }
    } else if (p->msg_opcode) {
        fail(p, ev, WS_CLOSE_PROTOCOL, "new message inside a fragmented one");
        return false;
    }

    p->hdr_need = (uint8_t)(2 + 4 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0));
    return true;
}

/* The whole header is in hdr: decode the length and the mask, apply the
 * message size limit and start the payload. Returns false after fail(). */
static bool header_end(ws_parser *p, ws_event *ev)
{
    unsigned len7 = p->hdr[1] & 0x7F;
    const uint8_t *q = p->hdr + 2;
    uint64_t len;

    if (len7 == 126) {
        len = (uint64_t)q[0] << 8 | q[1];
        q += 2;
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | q[i];
        q += 8;
        if (len >> 63) {
            fail(p, ev, WS_CLOSE_PROTOCOL, "invalid frame length");
            return false;
        }
    } else {
        len = len7;
    }
    memcpy(p->mask, q, 4);
    p->mask_pos = 0;

    if (!is_control(p->opcode)) {
        uint64_t max = p->max_message ? p->max_message : UINT64_MAX;
        if (p->opcode != WS_OP_CONT) {
            p->msg_opcode = p->opcode;
            p->message_len = 0;
            utf8_reset(&p->utf8);
        }
        /* message_len never exceeds max, so the subtraction cannot wrap;
         * checking here refuses an oversized message before reading it. */
        if (len > max - p->message_len) {
            fail(p, ev, WS_CLOSE_TOO_BIG, "message too big");
            return false;
        }
        p->message_len += len;
    } else {
        p->ctl_len = 0;
    }

    p->remaining = len;
    p->hdr_len = 0;
    p->hdr_need = 2;
    p->state = ST_PAYLOAD;
    return true;
}

/* A control frame's payload is complete in ctl: report it. A close frame
 * is checked here, once whole, since its payload is at most 125 bytes. */
static void control_end(ws_parser *p, ws_event *ev)
{
    unsigned code;

    p->state = ST_HEADER;
    if (p->opcode != WS_OP_CLOSE) {
        ev->type = p->opcode == WS_OP_PING ? WS_EV_PING : WS_EV_PONG;
        ev->payload = p->ctl;
        ev->payload_len = p->ctl_len;
        return;
    }

    if (p->ctl_len == 1) {
        fail(p, ev, WS_CLOSE_PROTOCOL, "close payload of one byte");
        return;
    }
    code = WS_CLOSE_NO_STATUS;
    if (p->ctl_len >= 2) {
        code = (unsigned)p->ctl[0] << 8 | p->ctl[1];
        if (!close_code_valid(code)) {
            fail(p, ev, WS_CLOSE_PROTOCOL, "invalid close code");
            return;
        }
        if (!utf8_valid(p->ctl + 2, p->ctl_len - 2u)) {
            fail(p, ev, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in close reason");
            return;
        }
    }
    /* The reason starts after the code; for an empty close frame this is
     * still a valid pointer, with length 0. */
    ev->type = WS_EV_CLOSE;
    ev->code = (uint16_t)code;
    ev->payload = p->ctl + 2;
    ev->payload_len = p->ctl_len >= 2 ? p->ctl_len - 2u : 0;
    p->state = ST_CLOSED;
}

/* Consume up to n payload bytes of a control frame into ctl. */
static void control_take(ws_parser *p, const uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p->ctl[p->ctl_len++] = buf[i] ^ p->mask[p->mask_pos++ & 3];
}

/* Consume n payload bytes of a data frame. Binary payload is skipped
 * unread; text payload is unmasked chunk by chunk and validated, so an
 * invalid sequence is refused as soon as its bytes arrive. Returns false
 * after fail(). */
static bool data_take(ws_parser *p, const uint8_t *buf, size_t n, ws_event *ev)
{
    uint8_t chunk[UNMASK_CHUNK];

    if (p->msg_opcode != WS_OP_TEXT)
        return true;
    while (n > 0) {
        size_t k = n < sizeof chunk ? n : sizeof chunk;
        for (size_t i = 0; i < k; i++)
            chunk[i] = buf[i] ^ p->mask[p->mask_pos++ & 3];
        if (utf8_feed(&p->utf8, chunk, k) == UTF8_INVALID) {
            fail(p, ev, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in text message");
            return false;
        }
        if (p->text_sink)
            p->text_sink(p->sink_ctx, chunk, k);
        buf += k;
        n -= k;
    }
    return true;
}

/* A data frame's payload is complete. Returns true when that ended the
 * message (an event, MESSAGE or ERROR, is then in *ev). */
static bool data_end(ws_parser *p, ws_event *ev)
{
    p->state = ST_HEADER;
    if (!p->fin)
        return false;
    /* Feeding no bytes asks whether the validator stands on a character
     * boundary (any non-NULL pointer will do). */
    if (p->msg_opcode == WS_OP_TEXT && utf8_feed(&p->utf8, p->ctl, 0) != UTF8_OK) {
        fail(p, ev, WS_CLOSE_INVALID_DATA, "text message ends inside a UTF-8 sequence");
        return true;
    }
    ev->type = WS_EV_MESSAGE;
    ev->opcode = p->msg_opcode;
    ev->message_len = p->message_len;
    p->msg_opcode = 0;
    p->message_len = 0;
    return true;
}

size_t ws_parser_feed(ws_parser *p, const uint8_t *buf, size_t len, ws_event *ev)
{
    size_t off = 0;

    memset(ev, 0, sizeof *ev);
    if (p->state == ST_ERROR) {
        ev->type = WS_EV_ERROR;
        ev->code = p->error_code;
        ev->reason = p->error;
        return 0;
    }
    if (p->state == ST_CLOSED) {
        ev->type = WS_EV_CLOSED;
        return 0;
    }
    /* No bytes can complete nothing: a frame whose payload is all there
     * (or empty) completes in the call that read its header. Returning here
     * also keeps a NULL buf out of pointer arithmetic. */
    if (len == 0)
        return 0;

    for (;;) {
        if (p->state == ST_HEADER) {
            if (p->hdr_len < 2) {
                while (p->hdr_len < 2 && off < len)
                    p->hdr[p->hdr_len++] = buf[off++];
                if (p->hdr_len < 2)
                    return off;
                if (!header_start(p, ev))
                    return off;
            }
            while (p->hdr_len < p->hdr_need && off < len)
                p->hdr[p->hdr_len++] = buf[off++];
            if (p->hdr_len < p->hdr_need)
                return off;
            if (!header_end(p, ev))
                return off;
        }

        /* ST_PAYLOAD: remaining may already be 0 (an empty frame), which
         * must complete here without waiting for more input. */
        size_t avail = len - off;
        size_t n = p->remaining < avail ? (size_t)p->remaining : avail;
        if (is_control(p->opcode)) {
            control_take(p, buf + off, n);
        } else if (!data_take(p, buf + off, n, ev)) {
            return off + n;
        }
        off += n;
        p->remaining -= n;
        if (p->remaining > 0)
            return off;

        if (is_control(p->opcode)) {
            control_end(p, ev);
            return off;
        }
        if (data_end(p, ev))
            return off;
    }
}

size_t ws_frame_header_len(uint64_t payload_len)
{
    if (payload_len >> 63)
        return 0;
    if (payload_len < 126)
        return 2;
    return payload_len <= 0xFFFF ? 4 : 10;
}

size_t ws_frame_header(uint8_t out[WS_FRAME_HEADER_MAX], unsigned opcode, bool fin,
                       uint64_t payload_len)
{
    size_t n = ws_frame_header_len(payload_len);

    if (opcode > 0xF || n == 0)
        return 0;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    if (n == 2) {
        out[1] = (uint8_t)payload_len;
    } else if (n == 4) {
        out[1] = 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
    } else {
        out[1] = 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
    }
    return n;
}

size_t ws_frame_close(uint8_t out[2 + 2 + WS_CLOSE_REASON_MAX], uint16_t code, const char *reason)
{
    size_t n = 0;

    out[0] = 0x80 | WS_OP_CLOSE;
    if (code == 0) {
        out[1] = 0;
        return 2;
    }
    if (reason) {
        while (n <= WS_CLOSE_REASON_MAX && reason[n])
            n++;
        /* Too long: cut before the character that straddles the limit, by
         * backing off while the byte at the cut is a continuation byte. */
        if (n > WS_CLOSE_REASON_MAX) {
            n = WS_CLOSE_REASON_MAX;
            while (n > 0 && ((unsigned char)reason[n] & 0xC0) == 0x80)
                n--;
        }
    }
    out[1] = (uint8_t)(2 + n);
    out[2] = (uint8_t)(code >> 8);
    out[3] = (uint8_t)code;
    if (n)
        memcpy(out + 4, reason, n);
    return 4 + n;
}

size_t ws_frame_control(uint8_t out[2 + WS_CONTROL_MAX], unsigned opcode, const uint8_t *payload,
                        size_t len)
{
    if (!is_control(opcode) || !is_known_opcode(opcode) || len > WS_CONTROL_MAX)
        return 0;
    out[0] = (uint8_t)(0x80 | opcode);
    out[1] = (uint8_t)len;
    if (len)
        memcpy(out + 2, payload, len);
    return 2 + len;
}
