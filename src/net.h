/* net.h - socket helpers (the anet.c of this project): listening sockets
 * from "host:port", "unix:/path" or "/path" specs. No protocol here.
 */
#ifndef PW_NET_H
#define PW_NET_H

#include <stddef.h>

/* Create a non-blocking, close-on-exec listening socket. TCP specs get
 * SO_REUSEADDR (and SO_REUSEPORT when reuseport); unix specs replace a stale
 * socket file and are made accessible to the owner and the group (mode 0660):
 * nginx must run as the same user or in the same group. Returns the fd,
 * or -1 with *why set to a static or strerror string. *unix_path receives the
 * path of a unix socket ("" for TCP) so that the caller can unlink it. */
int net_listen(const char *spec, int backlog, int reuseport, char *unix_path, size_t path_cap,
               const char **why);

#endif
