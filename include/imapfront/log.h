/* log: leveled log lines to stderr, as text or JSON objects, one per line.
 * Never pass a password or an AUTHENTICATE payload to these functions. */
#ifndef IMAPFRONT_LOG_H
#define IMAPFRONT_LOG_H

#include <stdarg.h>

enum imf_log_level {
    IMF_LOG_ERROR,
    IMF_LOG_WARN,
    IMF_LOG_INFO,
    IMF_LOG_DEBUG,
    IMF_LOG_LEVEL_COUNT
};

enum imf_log_format { IMF_LOG_TEXT, IMF_LOG_JSON, IMF_LOG_FORMAT_COUNT };

extern const char *const imf_log_level_names[IMF_LOG_LEVEL_COUNT];
extern const char *const imf_log_format_names[IMF_LOG_FORMAT_COUNT];

/* Sets the process-wide level and format; safe to call at any time. */
void imf_log_setup(enum imf_log_level level, enum imf_log_format format);
int imf_log_enabled(enum imf_log_level level);

/* One line: "subsys" names the module ("tls", "session", ...). The message
 * is printf-formatted text; in JSON it becomes the "msg" field. */
void imf_log(enum imf_log_level level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void imf_logv(enum imf_log_level level, const char *subsys, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* A structured line: a message followed by key/value pairs (NULL-terminated
 * list of const char * key, const char * value). Values are quoted in text
 * mode when they contain spaces, and JSON-escaped in JSON mode. */
void imf_log_kv(enum imf_log_level level, const char *subsys, const char *msg, ...);

#define imf_error(sub, ...) imf_log(IMF_LOG_ERROR, sub, __VA_ARGS__)
#define imf_warn(sub, ...)  imf_log(IMF_LOG_WARN, sub, __VA_ARGS__)
#define imf_info(sub, ...)  imf_log(IMF_LOG_INFO, sub, __VA_ARGS__)
#define imf_debug(sub, ...)                           \
    do {                                              \
        if (imf_log_enabled(IMF_LOG_DEBUG))           \
            imf_log(IMF_LOG_DEBUG, sub, __VA_ARGS__); \
    } while (0)

#endif
