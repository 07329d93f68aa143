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

#endif
