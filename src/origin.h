/* origin.h - the WebSocket Origin allow-list. Pure string logic, no I/O.
 *
 * Browsers send Origin: scheme://host[:port]; nginx passes the page's host
 * and port in Host ($http_host). By default a request is allowed when the
 * Origin's host:port equals the Host header (default ports normalised), or
 * when it has no Origin at all (not a browser).
 */
#ifndef PW_ORIGIN_H
#define PW_ORIGIN_H

#include <stdbool.h>
#include <stddef.h>

/* allow: NULL/"" for the default rule, "*" for any origin, or a
 * comma-separated list of origins ("https://app.example.com,http://localhost:8080").
 * origin/host may be NULL (header absent); lengths are the header lengths. */
bool origin_allowed(const char *allow, const char *origin, size_t origin_len, const char *host,
                    size_t host_len);

#endif
