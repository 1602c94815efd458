/* net.c - listening sockets. */
#include "net.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int listen_unix(const char *path, char *unix_path, size_t path_cap, const char **why)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path || strlen(path) >= path_cap) {
        *why = "unix socket path too long";
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *why = strerror(errno);
        return -1;
    }
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a stale socket of an earlier run */
    /* Owner and group only (0660): the socket takes requests nobody else
     * should be able to send. */
    mode_t old = umask(0117);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0) {
        *why = strerror(errno);
        close(fd);
        return -1;
    }
    snprintf(unix_path, path_cap, "%s", path);
    return fd;
}

static int listen_tcp(const char *spec, int reuseport, const char **why)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || !colon[1]) {
        *why = "address must be host:port, :port, unix:/path or /path";
        return -1;
    }
    char host[256];
    size_t hl = (size_t)(colon - spec);
    if (hl >= sizeof host) {
        *why = "host name too long";
        return -1;
    }
    memcpy(host, spec, hl);
    host[hl] = '\0';
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    int gai = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (gai != 0) {
        *why = gai_strerror(gai);
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (reuseport)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        *why = strerror(errno);
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0 && !*why)
        *why = "cannot bind";
    return fd;
}

int net_listen(const char *spec, int backlog, int reuseport, char *unix_path, size_t path_cap,
               const char **why)
{
    *why = NULL;
    unix_path[0] = '\0';
    int fd;
    if (strncmp(spec, "unix:", 5) == 0)
        fd = listen_unix(spec + 5, unix_path, path_cap, why);
    else if (spec[0] == '/' || spec[0] == '.')
        fd = listen_unix(spec, unix_path, path_cap, why);
    else
        fd = listen_tcp(spec, reuseport, why);
    if (fd < 0)
        return -1;
    if (listen(fd, backlog) < 0) {
        *why = strerror(errno);
        close(fd);
        if (unix_path[0])
            unlink(unix_path);
        unix_path[0] = '\0';
        return -1;
    }
    return fd;
}
