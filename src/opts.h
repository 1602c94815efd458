/* opts.h - command-line flags with environment-variable fallbacks, and the
 * --help text generated from the same table, so that the two never drift.
 * Pure parsing: it prints errors and help to stderr/stdout, nothing else.
 */
#ifndef PW_OPTS_H
#define PW_OPTS_H

#include <stdbool.h>

/* OPT_SECRET and OPT_URL are strings that --help does not show as they are:
 * a secret as "(set, not shown)", a URL with its password as "***". */
enum opt_type { OPT_STR, OPT_UINT, OPT_LEVEL, OPT_BOOL, OPT_SECRET, OPT_URL };

typedef struct opt_def {
    const char *name; /* flag without the dashes: --name VALUE or --name=VALUE */
    const char *env;  /* environment variable, or NULL */
    enum opt_type type;
    void *dst;        /* const char ** (STR, SECRET, URL), unsigned *, enum log_level *, bool * */
    unsigned min, max; /* OPT_UINT bounds */
    const char *arg;  /* placeholder in the help, e.g. "ADDR" */
    const char *help;
} opt_def;

/* Apply defaults already stored in the destinations, then environment
 * variables, then flags. Returns 0 to run, 1 when --help or --version was
 * printed (exit 0), -1 on an error that was printed (exit 2). */
int opts_parse(const opt_def *defs, int argc, char **argv, const char *prog, const char *summary);

#endif
