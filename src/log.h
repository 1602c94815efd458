/* log.h - one line per event on stderr: time, level, program, message.
 *
 * The only output channel of the daemons; nothing here allocates.
 */
#ifndef PW_LOG_H
#define PW_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* Set once at start-up: the program tag printed on every line and the most
 * verbose level that is printed. */
void log_init(const char *tag, enum log_level level);

/* Parse "error", "warn", "info" or "debug". Returns 0 and stores the level,
 * or -1 for anything else. */
int log_parse_level(const char *s, enum log_level *out);

extern enum log_level log_current_level;

void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_current_level >= LOG_DEBUG)                                                        \
            log_write(LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)

#endif
