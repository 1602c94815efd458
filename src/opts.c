/* opts.c - table-driven flags and environment variables. */
#include "opts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "redis_url.h"

static int set_value(const opt_def *d, const char *val, const char *source)
{
    switch (d->type) {
    case OPT_STR:
    case OPT_SECRET:
    case OPT_URL:
        *(const char **)d->dst = val;
        return 0;
    case OPT_UINT: {
        char *end;
        errno = 0;
        unsigned long v = strtoul(val, &end, 10);
        if (errno || end == val || *end || val[0] == '-' || v < d->min || v > d->max) {
            fprintf(stderr, "error: %s: '%s' is not a whole number from %u to %u\n", source, val,
                    d->min, d->max);
            return -1;
        }
        *(unsigned *)d->dst = (unsigned)v;
        return 0;
    }
    case OPT_LEVEL:
        if (log_parse_level(val, (enum log_level *)d->dst) < 0) {
            fprintf(stderr, "error: %s: '%s' is not one of error, warn, info, debug\n", source,
                    val);
            return -1;
        }
        return 0;
    case OPT_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes") || !strcmp(val, "on"))
            *(bool *)d->dst = true;
        else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no") ||
                 !strcmp(val, "off"))
            *(bool *)d->dst = false;
        else {
            fprintf(stderr, "error: %s: '%s' is not a boolean (1/0, true/false, yes/no)\n",
                    source, val);
            return -1;
        }
        return 0;
    }
    return -1;
}

static void print_default(const opt_def *d)
{
    switch (d->type) {
    case OPT_STR:
    case OPT_SECRET:
    case OPT_URL: {
        const char *v = *(const char **)d->dst;
        char shown[512];
        if (!v || !*v)
            v = "(none)";
        else if (d->type == OPT_SECRET)
            v = "(set, not shown)";
        else if (d->type == OPT_URL)
            v = redis_url_redact(v, shown, sizeof shown);
        printf("%s", v);
        break;
    }
    case OPT_UINT:
        printf("%u", *(unsigned *)d->dst);
        break;
    case OPT_LEVEL: {
        static const char *const names[] = {"error", "warn", "info", "debug"};
        printf("%s", names[*(enum log_level *)d->dst]);
        break;
    }
    case OPT_BOOL:
        printf("%s", *(bool *)d->dst ? "on" : "off");
        break;
    }
}

static void print_help(const opt_def *defs, const char *prog, const char *summary)
{
    printf("Usage: %s [options]\n\n%s\n\nOptions (flag, environment variable, default):\n", prog,
           summary);
    for (const opt_def *d = defs; d->name; d++) {
        char flag[96];
        if (d->type == OPT_BOOL)
            snprintf(flag, sizeof flag, "--%s[=BOOL]", d->name);
        else
            snprintf(flag, sizeof flag, "--%s %s", d->name, d->arg ? d->arg : "VALUE");
        printf("  %-28s %s\n", flag, d->help);
        printf("  %-28s env %s, default ", "", d->env ? d->env : "-");
        print_default(d);
        printf("\n");
    }
    printf("  %-28s %s\n", "--help", "show this help and exit");
}

int opts_parse(const opt_def *defs, int argc, char **argv, const char *prog, const char *summary)
{
    for (const opt_def *d = defs; d->name; d++) {
        const char *v = d->env ? getenv(d->env) : NULL;
        if (v && *v) {
            char src[96];
            snprintf(src, sizeof src, "environment %s", d->env);
            if (set_value(d, v, src) < 0)
                return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_help(defs, prog, summary);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "error: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const opt_def *d;
        for (d = defs; d->name; d++)
            if (strlen(d->name) == nl && !strncmp(d->name, name, nl))
                break;
        if (!d->name) {
            fprintf(stderr, "error: unknown option '%.*s' (see --help)\n", (int)(nl + 2), a);
            return -1;
        }
        const char *val = eq ? eq + 1 : NULL;
        if (!val) {
            if (d->type == OPT_BOOL) {
                val = "1";
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                fprintf(stderr, "error: option --%s needs a value (see --help)\n", d->name);
                return -1;
            }
        }
        char src[96];
        snprintf(src, sizeof src, "option --%s", d->name);
        if (set_value(d, val, src) < 0)
            return -1;
    }
    return 0;
}
