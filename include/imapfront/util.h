/* util: small things every module uses. */
#ifndef IMAPFRONT_UTIL_H
#define IMAPFRONT_UTIL_H

#include <stdio.h>
#include <stdlib.h>

/* imf_assert: an impossible state. Aborts in debug builds; in release builds
 * it is a no-op, the caller having a safe path anyway. */
#ifdef IMF_DEBUG
#define imf_assert(cond)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)
#else
#define imf_assert(cond) ((void)0)
#endif

#define IMF_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#include <stdbool.h>
#include <stddef.h>

/* Walks a config list ("a, b c,d": entries separated by commas, spaces or
 * tabs). Each call sets the next entry (not NUL-terminated) and advances
 * *pos; returns false when there is none left. */
static inline bool imf_list_next(const char **pos, const char **out_item, size_t *out_len)
{
    const char *p = *pos;
    while (*p == ' ' || *p == ',' || *p == '\t')
        p++;
    const char *start = p;
    while (*p != '\0' && *p != ' ' && *p != ',' && *p != '\t')
        p++;
    *pos = p;
    *out_item = start;
    *out_len = (size_t)(p - start);
    return p > start;
}

#endif
