/* log: one line per call, written with a single write(2) so that lines from
 * several worker threads never interleave. */
#include "imapfront/log.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

const char *const imf_log_level_names[IMF_LOG_LEVEL_COUNT] = {"error", "warn", "info", "debug"};
const char *const imf_log_format_names[IMF_LOG_FORMAT_COUNT] = {"text", "json"};
static_assert(sizeof(imf_log_level_names) / sizeof(imf_log_level_names[0]) == IMF_LOG_LEVEL_COUNT,
              "level names");

static atomic_int log_level = IMF_LOG_INFO;
static atomic_int log_format = IMF_LOG_TEXT;

#define LOG_LINE_MAX 4096

void imf_log_setup(enum imf_log_level level, enum imf_log_format format)
{
    atomic_store(&log_level, (int)level);
    atomic_store(&log_format, (int)format);
}

int imf_log_enabled(enum imf_log_level level)
{
    return (int)level <= atomic_load_explicit(&log_level, memory_order_relaxed);
}

/* Appends printf output to buf at *pos, truncating at the end of the buffer. */
static void put(char *buf, size_t *pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void put(char *buf, size_t *pos, const char *fmt, ...)
{
    if (*pos >= LOG_LINE_MAX - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *pos, LOG_LINE_MAX - *pos, fmt, ap);
    va_end(ap);
    if (n > 0)
        *pos += (size_t)n < LOG_LINE_MAX - *pos ? (size_t)n : LOG_LINE_MAX - 1 - *pos;
}

/* Appends s JSON-escaped (without quotes). Control bytes become \u00XX. */
static void put_json(char *buf, size_t *pos, const char *s)
{
    for (; *s && *pos < LOG_LINE_MAX - 8; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*pos)++] = '\\';
            buf[(*pos)++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            put(buf, pos, "\\u%04x", c);
        } else {
            buf[(*pos)++] = (char)c;
        }
    }
}

/* Appends s for a text line: control bytes are shown as \xNN so a log line
 * is always one line. */
static void put_text(char *buf, size_t *pos, const char *s)
{
    for (; *s && *pos < LOG_LINE_MAX - 8; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f)
            put(buf, pos, "\\x%02x", c);
        else
            buf[(*pos)++] = (char)c;
    }
}

static void put_prefix(char *buf, size_t *pos, enum imf_log_level level, const char *subsys)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    if (atomic_load_explicit(&log_format, memory_order_relaxed) == IMF_LOG_JSON)
        put(buf, pos, "{\"ts\":\"%s\",\"level\":\"%s\",\"subsys\":\"%s\",\"msg\":\"", ts,
            imf_log_level_names[level], subsys);
    else
        put(buf, pos, "%s %s %s: ", ts, imf_log_level_names[level], subsys);
}

static void emit(char *buf, size_t pos)
{
    buf[pos++] = '\n';
    ssize_t off = 0;
    while ((size_t)off < pos) {
        ssize_t n = write(STDERR_FILENO, buf + off, pos - (size_t)off);
        if (n <= 0)
            return;
        off += n;
    }
}

void imf_logv(enum imf_log_level level, const char *subsys, const char *fmt, va_list ap)
{
    if (!imf_log_enabled(level))
        return;
    char buf[LOG_LINE_MAX + 1];
    char msg[LOG_LINE_MAX];
    size_t pos = 0;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    put_prefix(buf, &pos, level, subsys);
    if (atomic_load_explicit(&log_format, memory_order_relaxed) == IMF_LOG_JSON) {
        put_json(buf, &pos, msg);
        put(buf, &pos, "\"}");
    } else {
        put_text(buf, &pos, msg);
    }
    emit(buf, pos);
}

void imf_log(enum imf_log_level level, const char *subsys, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    imf_logv(level, subsys, fmt, ap);
    va_end(ap);
}

void imf_log_kv(enum imf_log_level level, const char *subsys, const char *msg, ...)
{
    if (!imf_log_enabled(level))
        return;
    char buf[LOG_LINE_MAX + 1];
    size_t pos = 0;
    int json = atomic_load_explicit(&log_format, memory_order_relaxed) == IMF_LOG_JSON;
    put_prefix(buf, &pos, level, subsys);
    if (json) {
        put_json(buf, &pos, msg);
        put(buf, &pos, "\"");
    } else {
        put_text(buf, &pos, msg);
    }
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL)
            break;
        const char *v = va_arg(ap, const char *);
        if (v == NULL)
            v = "";
        if (json) {
            put(buf, &pos, ",\"%s\":\"", k);
            put_json(buf, &pos, v);
            put(buf, &pos, "\"");
        } else if (v[0] == '\0' || strpbrk(v, " \"=") != NULL) {
            put(buf, &pos, " %s=\"", k);
            for (const char *p = v; *p && pos < LOG_LINE_MAX - 8; p++) {
                if (*p == '"' || *p == '\\')
                    buf[pos++] = '\\';
                char one[2] = {*p, 0};
                put_text(buf, &pos, one);
            }
            put(buf, &pos, "\"");
        } else {
            put(buf, &pos, " %s=", k);
            put_text(buf, &pos, v);
        }
    }
    va_end(ap);
    if (json)
        put(buf, &pos, "}");
    emit(buf, pos);
}
