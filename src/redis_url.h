/* redis_url.h - parse REDIS_URL: redis://[[user]:password@]host[:port][/db],
 * unix:///path/to.sock[?db=N], or plain host[:port]. Pure; no I/O. */
#ifndef PW_REDIS_URL_H
#define PW_REDIS_URL_H

#include <stddef.h>

typedef struct redis_url {
    char host[256];  /* empty for unix sockets */
    int port;        /* default 6379 */
    char path[108];  /* unix socket path, empty for TCP */
    char user[128];  /* empty: no ACL user (AUTH password only) */
    char password[256];
    int db;          /* 0 by default */
} redis_url;

/* Returns 0, or -1 with a static reason in *why. Percent-escapes in the user
 * and password are decoded. */
int redis_url_parse(const char *s, redis_url *out, const char **why);

/* The URL s as it may be shown in logs and --help: the password (or a
 * user-info without a colon, which is a password) replaced by "***", the
 * rest unchanged. Writes at most cap bytes with a NUL (truncated if need
 * be) and returns out. s need not be valid. */
char *redis_url_redact(const char *s, char *out, size_t cap);

#endif
