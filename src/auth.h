/* auth.h - private channels and the tokens that open them.
 *
 * A channel is private when its name matches one of the configured
 * patterns; reading it (long-poll, EventSource, WebSocket) needs a token
 * that names it. Publishing needs the shared --publish-token (when set) or
 * a token whose publish list names the channel (for a private channel one
 * of the two always). Public channels stay open to read.
 *
 * Tokens are JWTs (RFC 7519) verified by libjwt: HS256/384/512 with a
 * shared secret, RS256/384/512 or ES256/384/512 with a PEM public key (the
 * servers then never hold the signing key). The key is chosen by the
 * token's alg family before the signature is checked, so a token cannot
 * pass a public key off as an HMAC secret; "none" is never accepted. exp
 * and nbf are honoured (with --jwt-leeway seconds of clock skew), aud and
 * iss checked when configured. The claim that grants channels:
 *
 *   "pushwire": {"subscribe": ["private:alice", "team.*"], "publish": ["team.*"]}
 *
 * A pattern is a channel name, or a prefix ending in '*' ("*" alone: every
 * channel). The same syntax lists private channels (--private-channels).
 *
 * Pure: no I/O after auth_new (which reads the key files); the time is the
 * caller's. An auth object keeps the claims of tokens whose signature
 * verified (a bounded cache keyed by the SHA-256 of the token's bytes), so
 * that a token sent again costs no signature check; every other check runs
 * on every call. Hence one auth per thread. Errors carry the HTTP status (401: no usable token, 403: a valid
 * token that does not grant this) and a static message safe to show: it
 * never contains the token.
 */
#ifndef PW_AUTH_H
#define PW_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define AUTH_TOKEN_MAX 8192 /* longer tokens are refused (401) */
#define AUTH_COOKIE "pushwire_token"

typedef struct auth_config {
    const char *private_channels; /* comma-separated patterns; NULL/"": none */
    const char *secret_file;      /* HS* secret (the file's bytes, one trailing newline dropped) */
    const char *public_key_file;  /* RS* or ES* PEM public key */
    const char *audience;         /* required aud when set */
    const char *issuer;           /* required iss when set */
    unsigned leeway;              /* seconds of clock skew allowed on exp/nbf */
} auth_config;

typedef struct auth auth;

enum auth_action { AUTH_SUBSCRIBE, AUTH_PUBLISH };

typedef struct auth_error {
    int status;          /* 401 or 403 */
    const char *message; /* static */
} auth_error;

/* A verified token: what it grants and until when. */
typedef struct auth_token auth_token;

/* Read the keys and parse the patterns. NULL with a message in err (for
 * the operator, at start-up) when a file cannot be read or a pattern is
 * malformed. Private channels without any key is an error too: nobody
 * could read them. */
auth *auth_new(const auth_config *cfg, char *err, size_t errlen);
void auth_free(auth *a);

/* Whether channel needs a token to be read. */
bool auth_is_private(const auth *a, const char *channel);
/* Whether tokens can be verified at all (a key is configured). */
bool auth_has_keys(const auth *a);

/* Verify token[0..len) at time now. Returns the token (auth_token_free it)
 * or NULL with *err (401). */
auth_token *auth_token_verify(const auth *a, const char *token, size_t len, time_t now,
                              auth_error *err);
void auth_token_free(auth_token *t);
/* Whether t grants action on channel. */
bool auth_token_allows(const auth_token *t, enum auth_action action, const char *channel);
/* When t stops being valid (exp plus leeway); 0 when it has no exp. */
time_t auth_token_expires(const auth_token *t);

/* One read of channel: 0 when allowed (public, or a valid token that
 * names it), else -1 with *err (401 no/invalid token, 403 not granted).
 * token may be NULL. *expires (may be NULL) gets the token's end for a
 * private channel (0: none), 0 for a public one. */
int auth_check_subscribe(const auth *a, const char *channel, const char *token, size_t len,
                         time_t now, time_t *expires, auth_error *err);

/* One publish to channel. It needs a credential when the channel is
 * private, when shared (the --publish-token) is set, or when always: the
 * shared token as "Authorization: Bearer", or a token (found as by
 * auth_find_token) that grants publishing to channel. A token offered where
 * none is needed must still be valid. Returns 0, or -1 with *err: 401 (no
 * credential, or an invalid token), 403 (the wrong shared token, or a token
 * that does not grant this channel). */
int auth_check_publish(const auth *a, const char *channel, const char *shared, bool always,
                       const char *authorization, const char *query, const char *cookie,
                       time_t now, auth_error *err);

/* The time tokens are checked against: the real-time clock's second
 * (time() may lag it by a tick, and a connection closed at a token's end
 * must not be reopened with it a moment later). */
time_t auth_now(void);

/* Milliseconds from now (the real-time clock) until the second when
 * begins, at least 1: how long a connection opened by a token that ends at
 * when may stay open. */
unsigned long long auth_ms_until(time_t when);

/* Verifications answered from the cache (for metrics and tests). */
unsigned long long auth_cache_hits(const auth *a);

/* Pattern match as described above. */
bool auth_pattern_match(const char *pattern, size_t plen, const char *channel);

/* Where a request carries its token, in this order: "Authorization:
 * Bearer T", the query parameter token=T, the cookie pushwire_token=T.
 * Sets *tok and *len to the raw bytes (inside the given strings; a query value
 * is not yet percent-decoded: tokens are base64url and dots, so a '%'
 * makes it invalid). Returns false when none is present. Any argument may
 * be NULL. */
bool auth_find_token(const char *authorization, const char *query, const char *cookie,
                     const char **tok, size_t *len);

/* Copy query to out with the value of every token= parameter replaced by
 * "[redacted]", for logs. Returns out. */
char *auth_redact_query(const char *query, char *out, size_t outlen);

#endif
