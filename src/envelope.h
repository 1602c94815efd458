/* envelope.h - the JSON that leaves the system: long-poll answers, publish
 * answers, errors, WebSocket and EventSource messages, and the compact
 * pub/sub payload that carries a message between processes through Redis.
 *
 * Pure formatting and parsing over buffers; no I/O. Message contents travel
 * already encoded as JSON string literals (escaped once, at publish time), so
 * building an answer is concatenation, never re-escaping.
 */
#ifndef PW_ENVELOPE_H
#define PW_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define PW_CHANNEL_MAX 64
#define PW_EPOCH_MAX   64

/* One stored message. json is the content as a JSON string literal with its
 * quotes, shared by every holder (ring, pending answers). */
typedef struct pw_msg {
    uint64_t id;
    int64_t time_ms;
    rbuf *json;
} pw_msg;

/* Append s[0..n) (valid UTF-8, no NUL) as a quoted JSON string. Escapes '"',
 * '\\', control characters, DEL, and U+2028/U+2029 (so the literal is also
 * safe inside JavaScript source). */
void env_json_string(buf *b, const char *s, size_t n);

/* The long-poll answer for one channel (no newline after it):
 * {"channel":C,"epoch":E,"id":ID,"content":CONTENT,"messages":[...]
 *  [,"reset":true][,"more":true]}
 * With messages (n > 0) id/content are those of msgs[n-1]; otherwise the
 * caller's newest_id / newest_json (NULL means ""). */
void env_status(buf *b, const char *channel, const char *epoch, pw_msg *const *msgs, size_t n,
                bool reset, bool more, uint64_t newest_id, const rbuf *newest_json);

/* {"id":ID,"channel":C,"epoch":E} */
void env_publish_ok(buf *b, uint64_t id, const char *channel, const char *epoch);

/* The answer to a batch publish: {"results":[R,...]}\n with R the object
 * env_publish_ok writes (no newline) for a stored message, or
 * {"channel":C,"error":MSG} for one that was not. */
typedef struct env_pub_result {
    const char *channel;
    const char *error; /* NULL: stored as id in epoch */
    uint64_t id;
    const char *epoch;
} env_pub_result;
void env_publish_results(buf *b, const env_pub_result *r, size_t n);

/* {"error":MSG} ; msg is escaped. */
void env_error(buf *b, const char *msg);

/* {"error":MSG,"channel":C}: a refusal that concerns one channel of the
 * request (a 401/403 on a list of several says which). */
void env_channel_error(buf *b, const char *msg, const char *channel);

/* The end of a token that opened channel (EventSource event "expired"):
 * {"type":"expired","channel":C,"error":"token expired"} */
void env_expired(buf *b, const char *channel);

/* WebSocket answers to a client's control message:
 * {"type":"refreshed","channel":C,"expires":T}       (T: unix seconds, 0: none)
 * {"type":"error","channel":C,"status":S,"error":MSG}  (C, MSG escaped; no
 *                                                      "channel" when C is "") */
void env_refreshed(buf *b, const char *channel, long long expires);
void env_control_error(buf *b, const char *channel, int status, const char *msg);

/* A WebSocket / EventSource message object:
 * {"channel":C,"epoch":E,"id":N,"content":...,"time":T} */
void env_push_message(buf *b, const char *channel, const char *epoch, const pw_msg *m);

/* {"channel":C,"epoch":E,"reset":true,"id":NEWEST} */
void env_push_reset(buf *b, const char *channel, const char *epoch, uint64_t newest);

/* The pub/sub payload: "EPOCH ID TIME JSON". */
void env_pubsub_format(buf *b, const char *epoch, uint64_t id, int64_t time_ms, const char *json,
                       size_t json_len);

typedef struct pubsub_view {
    const char *epoch;
    size_t epoch_len;
    uint64_t id;
    int64_t time_ms;
    const char *json;
    size_t json_len;
} pubsub_view;

/* Parse a pub/sub payload; the view points into p. Returns 0, or -1 when the
 * payload is not of the form above (the message is then dropped and logged by
 * the caller; a resync from history recovers it). */
int env_pubsub_parse(const char *p, size_t n, pubsub_view *out);

/* Parse an unsigned decimal of at most 15 digits (ids fit a Lua number
 * exactly). Returns 0 or -1. */
int env_parse_u64(const char *s, size_t n, uint64_t *out);

#endif
