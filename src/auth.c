/* auth.c - private channels and JWTs (see auth.h). */
#include "auth.h"

#include <errno.h>
#include <jansson.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "buf.h"
#include "form.h"

#define KEY_MAX (64 * 1024)

/* Tokens whose signature verified, by the SHA-256 of their bytes. A
 * long-poll client sends the same token with every poll (and a poll on
 * several private channels checks it once per channel), and libjwt parses
 * the PEM key and checks the signature on every call: HS256 costs the
 * worker about 23 us per poll, RS256 about 530, ES256 about 580 (bench/run,
 * "token check"; a hit costs about 4). A hit skips the header parse, the signature and the
 * claims parse; exp, nbf, aud, iss and the grants are checked on every call
 * (from the stored claims). Direct-mapped: a miss replaces the slot, so the
 * memory is bounded by CACHE_SLOTS tokens of at most CACHE_TOKEN_MAX bytes
 * (longer ones are verified every time). A forged token differs in its
 * signature bytes, so it never finds a slot: only the exact bytes that
 * verified once do. */
#define CACHE_SLOTS 1024
#define CACHE_TOKEN_MAX 2048

typedef struct cache_slot {
    unsigned char digest[32];
    json_t *claims; /* NULL: empty */
} cache_slot;

typedef struct token_cache {
    cache_slot slot[CACHE_SLOTS];
    unsigned long long hits;
} token_cache;

struct auth {
    char *patterns; /* comma-separated, validated */
    unsigned char *secret;
    int secret_len;
    unsigned char *pubkey;
    int pubkey_len;
    char *audience, *issuer;
    unsigned leeway;
    token_cache *cache; /* written through a const auth: one thread per process */
};

struct auth_token {
    json_t *subscribe, *publish; /* arrays of pattern strings (borrowed from claims) */
    json_t *claims;
    time_t expires;
};

static int fail(auth_error *err, int status, const char *msg)
{
    err->status = status;
    err->message = msg;
    return -1;
}

/* ---- patterns ------------------------------------------------------------------- */

bool auth_pattern_match(const char *pattern, size_t plen, const char *channel)
{
    size_t cl = strlen(channel);
    if (plen && pattern[plen - 1] == '*')
        return cl >= plen - 1 && memcmp(pattern, channel, plen - 1) == 0;
    return cl == plen && memcmp(pattern, channel, plen) == 0;
}

/* A pattern is a channel name, optionally ending in '*', or "*". */
static bool pattern_valid(const char *p, size_t n)
{
    if (n == 1 && p[0] == '*')
        return true;
    if (n && p[n - 1] == '*')
        n--;
    return api_channel_valid(p, n);
}

static bool list_matches(const char *list, const char *channel)
{
    if (!list)
        return false;
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if (n && auth_pattern_match(p, n, channel))
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}

/* ---- set-up ---------------------------------------------------------------------- */

static int read_file(const char *path, unsigned char **out, int *len, bool strip_newline,
                     char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char *data = xmalloc(KEY_MAX + 1);
    size_t n = fread(data, 1, KEY_MAX + 1, f);
    fclose(f);
    if (n > KEY_MAX) {
        free(data);
        snprintf(err, errlen, "%s: larger than %d bytes", path, KEY_MAX);
        return -1;
    }
    if (strip_newline && n && data[n - 1] == '\n')
        n--;
    if (strip_newline && n && data[n - 1] == '\r')
        n--;
    if (n == 0) {
        free(data);
        snprintf(err, errlen, "%s is empty", path);
        return -1;
    }
    data[n] = '\0';
    *out = data;
    *len = (int)n;
    return 0;
}

auth *auth_new(const auth_config *cfg, char *err, size_t errlen)
{
    auth *a = xcalloc(1, sizeof *a);
    a->leeway = cfg->leeway;
    a->cache = xcalloc(1, sizeof *a->cache);
    const char *pats = cfg->private_channels ? cfg->private_channels : "";
    buf b = BUF_INIT;
    for (const char *p = pats; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (!n)
            break;
        if (!pattern_valid(p, n)) {
            snprintf(err, errlen, "private channels: '%.*s' is not a channel name or prefix*",
                     (int)(n > 80 ? 80 : n), p);
            buf_free(&b);
            auth_free(a);
            return NULL;
        }
        if (b.len)
            buf_putc(&b, ',');
        buf_append(&b, p, n);
        p += n;
    }
    a->patterns = xstrndup(b.data ? b.data : "", b.len);
    buf_free(&b);
    if (cfg->secret_file && cfg->secret_file[0] &&
        read_file(cfg->secret_file, &a->secret, &a->secret_len, true, err, errlen) < 0) {
        auth_free(a);
        return NULL;
    }
    if (a->secret && a->secret_len < 32) {
        snprintf(err, errlen, "%s: an HMAC secret needs at least 32 bytes (RFC 7518 3.2)",
                 cfg->secret_file);
        auth_free(a);
        return NULL;
    }
    if (cfg->public_key_file && cfg->public_key_file[0]) {
        if (read_file(cfg->public_key_file, &a->pubkey, &a->pubkey_len, false, err, errlen) < 0) {
            auth_free(a);
            return NULL;
        }
        if (!strstr((char *)a->pubkey, "-----BEGIN PUBLIC KEY-----")) {
            snprintf(err, errlen, "%s: not a PEM public key (-----BEGIN PUBLIC KEY-----)",
                     cfg->public_key_file);
            auth_free(a);
            return NULL;
        }
    }
    if (a->patterns[0] && !auth_has_keys(a)) {
        snprintf(err, errlen, "private channels need a key to verify tokens "
                              "(--jwt-secret-file or --jwt-public-key-file)");
        auth_free(a);
        return NULL;
    }
    if (cfg->audience && cfg->audience[0])
        a->audience = xstrndup(cfg->audience, strlen(cfg->audience));
    if (cfg->issuer && cfg->issuer[0])
        a->issuer = xstrndup(cfg->issuer, strlen(cfg->issuer));
    return a;
}

void auth_free(auth *a)
{
    if (!a)
        return;
    free(a->patterns);
    if (a->secret)
        memset(a->secret, 0, (size_t)a->secret_len);
    free(a->secret);
    free(a->pubkey);
    free(a->audience);
    free(a->issuer);
    for (size_t i = 0; a->cache && i < CACHE_SLOTS; i++)
        json_decref(a->cache->slot[i].claims);
    free(a->cache);
    free(a);
}

unsigned long long auth_cache_hits(const auth *a) { return a ? a->cache->hits : 0; }

bool auth_is_private(const auth *a, const char *channel)
{
    return a && list_matches(a->patterns, channel);
}

bool auth_has_keys(const auth *a) { return a && (a->secret || a->pubkey); }

/* ---- tokens ---------------------------------------------------------------------- */

void auth_token_free(auth_token *t)
{
    if (!t)
        return;
    json_decref(t->claims);
    free(t);
}

time_t auth_token_expires(const auth_token *t) { return t->expires; }

/* A NumericDate claim (RFC 7519 2): a JSON number of seconds. 1: present,
 * 0: absent, -1: not a number. */
static int numeric_date(json_t *claims, const char *name, double *out)
{
    json_t *v = json_object_get(claims, name);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return 1;
}

/* aud is a string or an array of strings (RFC 7519 4.1.3). */
static bool audience_ok(json_t *claims, const char *want)
{
    json_t *v = json_object_get(claims, "aud");
    if (json_is_string(v))
        return strcmp(json_string_value(v), want) == 0;
    if (!json_is_array(v))
        return false;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
        if (json_is_string(e) && strcmp(json_string_value(e), want) == 0)
            return true;
    return false;
}

/* A grant list: absent is empty; otherwise an array of valid patterns. */
static int grant_list(json_t *grants, const char *name, json_t **out)
{
    json_t *v = grants ? json_object_get(grants, name) : NULL;
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_array(v))
        return -1;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
        if (!json_is_string(e) || !pattern_valid(json_string_value(e), json_string_length(e)))
            return -1;
    *out = v;
    return 0;
}

/* The key for the token's alg, chosen before anything is verified: the
 * family the header names must be one a key is configured for. */
static int key_for(const auth *a, jwt_alg_t alg, const unsigned char **key, int *len)
{
    switch (alg) {
    case JWT_ALG_HS256:
    case JWT_ALG_HS384:
    case JWT_ALG_HS512:
        *key = a->secret;
        *len = a->secret_len;
        break;
    case JWT_ALG_RS256:
    case JWT_ALG_RS384:
    case JWT_ALG_RS512:
    case JWT_ALG_ES256:
    case JWT_ALG_ES384:
    case JWT_ALG_ES512:
        *key = a->pubkey;
        *len = a->pubkey_len;
        break;
    default:
        return -1;
    }
    return *key ? 0 : -1;
}

/* The alg a token's header names, read without trusting anything yet, to
 * pick the key; JWT_ALG_INVAL when the header is not base64url JSON. */
static jwt_alg_t header_alg(const char *tok)
{
    size_t n = strcspn(tok, ".");
    if (!tok[n] || n == 0 || n > 1024)
        return JWT_ALG_INVAL;
    char b64[1100];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        char c = tok[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return JWT_ALG_INVAL;
        b64[m++] = c;
    }
    if (m % 4 == 1)
        return JWT_ALG_INVAL;
    while (m % 4)
        b64[m++] = '=';
    unsigned char raw[800];
    int len = EVP_DecodeBlock(raw, (const unsigned char *)b64, (int)m);
    if (len < 0)
        return JWT_ALG_INVAL;
    /* EVP_DecodeBlock counts the padding's zero bytes: drop them. */
    for (size_t i = m; i > 0 && b64[i - 1] == '='; i--)
        len--;
    json_t *h = json_loadb((const char *)raw, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    json_t *alg = json_object_get(h, "alg");
    jwt_alg_t out = json_is_string(alg) ? jwt_str_alg(json_string_value(alg)) : JWT_ALG_INVAL;
    json_decref(h);
    return out;
}

/* The claims of tok (a C string) when its signature verifies with the key
 * of its algorithm's family; NULL with *err (401) otherwise. */
static json_t *verified_claims(const auth *a, const char *tok, auth_error *err)
{
    jwt_alg_t alg = header_alg(tok);
    jwt_t *j = NULL;
    const unsigned char *key;
    int key_len;
    if (alg == JWT_ALG_INVAL) {
        fail(err, 401, "invalid token: not a JWT");
        return NULL;
    }
    if (key_for(a, alg, &key, &key_len) < 0) {
        fail(err, 401, "invalid token: algorithm not accepted");
        return NULL;
    }
    if (jwt_decode(&j, tok, key, key_len) != 0 || !j || jwt_get_alg(j) != alg) {
        if (j)
            jwt_free(j);
        fail(err, 401, "invalid token: bad signature");
        return NULL;
    }
    char *cj = jwt_get_grants_json(j, NULL);
    jwt_free(j);
    json_t *claims = cj ? json_loads(cj, JSON_REJECT_DUPLICATES, NULL) : NULL;
    free(cj);
    if (!json_is_object(claims)) {
        json_decref(claims);
        fail(err, 401, "invalid token: claims are not an object");
        return NULL;
    }
    return claims;
}

auth_token *auth_token_verify(const auth *a, const char *token, size_t len, time_t now,
                              auth_error *err)
{
    if (!auth_has_keys(a)) {
        fail(err, 401, "tokens are not accepted here (no key configured)");
        return NULL;
    }
    if (len == 0) {
        fail(err, 401, "token required");
        return NULL;
    }
    if (len > AUTH_TOKEN_MAX) {
        fail(err, 401, "invalid token: too long");
        return NULL;
    }
    /* libjwt wants a C string; a NUL inside would cut the token short. */
    char tok[AUTH_TOKEN_MAX + 1];
    memcpy(tok, token, len);
    tok[len] = '\0';
    if (memchr(token, '\0', len)) {
        fail(err, 401, "invalid token");
        return NULL;
    }
    cache_slot *slot = NULL;
    unsigned char digest[32];
    if (len <= CACHE_TOKEN_MAX && EVP_Digest(tok, len, digest, NULL, EVP_sha256(), NULL) == 1) {
        unsigned idx = ((unsigned)digest[0] << 8 | digest[1]) % CACHE_SLOTS;
        slot = &a->cache->slot[idx];
    }
    json_t *claims = NULL;
    if (slot && slot->claims && memcmp(slot->digest, digest, sizeof digest) == 0) {
        claims = json_incref(slot->claims);
        a->cache->hits++;
    } else {
        claims = verified_claims(a, tok, err);
        if (!claims)
            return NULL;
        if (slot) {
            json_decref(slot->claims);
            memcpy(slot->digest, digest, sizeof digest);
            slot->claims = json_incref(claims);
        }
    }
    double exp = 0, nbf = 0;
    int has_exp = numeric_date(claims, "exp", &exp), has_nbf = numeric_date(claims, "nbf", &nbf);
    const char *why = NULL;
    if (has_exp < 0 || has_nbf < 0)
        why = "invalid token: exp and nbf must be numbers";
    else if (has_exp && (double)now >= exp + a->leeway)
        why = "token expired";
    else if (has_nbf && (double)now + a->leeway < nbf)
        why = "token not yet valid";
    else if (a->audience && !audience_ok(claims, a->audience))
        why = "invalid token: wrong audience";
    else if (a->issuer && !(json_is_string(json_object_get(claims, "iss")) &&
                            strcmp(json_string_value(json_object_get(claims, "iss")), a->issuer) == 0))
        why = "invalid token: wrong issuer";
    json_t *grants = json_object_get(claims, "pushwire");
    auth_token *t = xcalloc(1, sizeof *t);
    t->claims = claims;
    if (!why && grants && !json_is_object(grants))
        why = "invalid token: the pushwire claim must be an object";
    if (!why && (grant_list(grants, "subscribe", &t->subscribe) < 0 ||
                 grant_list(grants, "publish", &t->publish) < 0))
        why = "invalid token: pushwire.subscribe and .publish must be lists of channel patterns";
    if (why) {
        auth_token_free(t);
        fail(err, 401, why);
        return NULL;
    }
    t->expires = has_exp ? (time_t)exp + (time_t)a->leeway : 0;
    return t;
}

bool auth_token_allows(const auth_token *t, enum auth_action action, const char *channel)
{
    json_t *list = action == AUTH_PUBLISH ? t->publish : t->subscribe;
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e)
        if (auth_pattern_match(json_string_value(e), json_string_length(e), channel))
            return true;
    return false;
}

int auth_check_subscribe(const auth *a, const char *channel, const char *token, size_t len,
                         time_t now, time_t *expires, auth_error *err)
{
    if (expires)
        *expires = 0;
    if (!auth_is_private(a, channel))
        return 0;
    if (!token)
        return fail(err, 401, "this channel is private: a token is required");
    auth_token *t = auth_token_verify(a, token, len, now, err);
    if (!t)
        return -1;
    bool ok = auth_token_allows(t, AUTH_SUBSCRIBE, channel);
    if (expires)
        *expires = t->expires;
    auth_token_free(t);
    return ok ? 0 : fail(err, 403, "the token does not allow reading this channel");
}

/* A JWT has exactly two dots; a shared publish token is anything else. */
static bool jwt_shaped(const char *s, size_t n)
{
    size_t dots = 0;
    for (size_t i = 0; i < n; i++)
        dots += s[i] == '.';
    return dots == 2;
}

int auth_check_publish(const auth *a, const char *channel, const char *shared, bool always,
                       const char *authorization, const char *query, const char *cookie,
                       time_t now, auth_error *err)
{
    bool have_shared = shared && shared[0];
    api_error e;
    if (have_shared && authorization && api_check_publish_auth(authorization, shared, &e) == 0)
        return 0;
    const char *tok;
    size_t len;
    bool found = auth_find_token(authorization, query, cookie, &tok, &len);
    if (found && auth_has_keys(a) && jwt_shaped(tok, len)) {
        auth_token *t = auth_token_verify(a, tok, len, now, err);
        if (!t)
            return -1;
        bool ok = auth_token_allows(t, AUTH_PUBLISH, channel);
        auth_token_free(t);
        return ok ? 0 : fail(err, 403, "the token does not allow publishing to this channel");
    }
    if (!have_shared && !always && !auth_is_private(a, channel))
        return 0;
    if (!found)
        return fail(err, 401, "publishing here requires Authorization: Bearer <token>");
    return have_shared ? fail(err, 403, "wrong publish token")
                       : fail(err, 401, "invalid token: not a JWT");
}

time_t auth_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec;
}

unsigned long long auth_ms_until(time_t when)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* Rounded up, and 1 ms more: the timer fires inside the second when. */
    long long ms = ((long long)when - ts.tv_sec) * 1000 - ts.tv_nsec / 1000000 + 1;
    return ms > 0 ? (unsigned long long)ms : 1;
}

/* ---- where tokens travel ------------------------------------------------------- */

bool auth_find_token(const char *authorization, const char *query, const char *cookie,
                     const char **tok, size_t *len)
{
    if (authorization && strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *p = authorization + 7;
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " \t");
        if (n) {
            *tok = p;
            *len = n;
            return true;
        }
    }
    if (query) {
        form_iter it;
        const char *k, *v;
        size_t kl, vl;
        form_iter_init(&it, query, strlen(query));
        while (form_next(&it, &k, &kl, &v, &vl))
            if (form_key_is(k, kl, "token") && vl) {
                *tok = v;
                *len = vl;
                return true;
            }
    }
    if (cookie) {
        /* Cookie: a=b; pushwire_token=T; c=d (RFC 6265 5.4) */
        const size_t cl = sizeof AUTH_COOKIE - 1;
        for (const char *p = cookie; *p;) {
            while (*p == ' ' || *p == ';')
                p++;
            size_t n = strcspn(p, ";");
            if (n > cl && memcmp(p, AUTH_COOKIE, cl) == 0 && p[cl] == '=') {
                const char *v = p + cl + 1;
                size_t vl = n - cl - 1;
                while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                    vl--;
                if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"')
                    v++, vl -= 2;
                if (vl) {
                    *tok = v;
                    *len = vl;
                    return true;
                }
            }
            p += n;
        }
    }
    return false;
}

char *auth_redact_query(const char *query, char *out, size_t outlen)
{
    if (!outlen)
        return out;
    size_t o = 0;
    const char *p = query ? query : "";
    while (*p && o + 1 < outlen) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        size_t kl = eq ? (size_t)(eq - p) : n;
        bool secret = form_key_is(p, kl, "token");
        size_t take = secret ? (eq ? kl + 1 : kl) : n;
        for (size_t i = 0; i < take && o + 1 < outlen; i++)
            out[o++] = p[i];
        if (secret && eq) {
            const char *r = "[redacted]";
            for (; *r && o + 1 < outlen; r++)
                out[o++] = *r;
        }
        p += n;
        if (*p == '&' && o + 1 < outlen)
            out[o++] = *p++;
        else if (*p == '&')
            p++;
    }
    out[o] = '\0';
    return out;
}
