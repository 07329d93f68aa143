/* libFuzzer: the capability rewriter. Invariants: the output fits the
 * stated growth; the output never names a capability the policy hides
 * (COMPRESS=*, STARTTLS and LOGINDISABLED after TLS, the hide list); a line
 * the rewriter leaves alone is one it does not see a list in; rewriting
 * the output again changes nothing (the rewrite is idempotent). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imapfront/capability.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Finds a forbidden name in out's capability list region. The list region
 * is wherever the rewriter put names: check every space-separated token of
 * the line after a CAPABILITY word up to "]" or the line end. */
static void check_no_forbidden(const uint8_t *out, size_t len, const struct imf_cap_policy *pol)
{
    const uint8_t *end = out + len;
    /* Where a client reads the list: "* CAPABILITY ..." to the line end, or
     * "[CAPABILITY ...]" right after the status word of "* OK", "* PREAUTH"
     * or "TAG OK" (a tag has no space). */
    const uint8_t *cap = NULL, *stop = end;
    if (len >= 12 && strncasecmp((const char *)out, "* CAPABILITY", 12) == 0) {
        cap = out + 12;
    } else {
        const uint8_t *sp = memchr(out, ' ', len);
        if (sp == NULL)
            abort();
        const uint8_t *q = sp + 1;
        if ((size_t)(end - q) >= 3 && strncasecmp((const char *)q, "OK ", 3) == 0)
            q += 3;
        else if ((size_t)(end - q) >= 8 && strncasecmp((const char *)q, "PREAUTH ", 8) == 0)
            q += 8;
        else
            abort(); /* a rewritten line has a list */
        if ((size_t)(end - q) < 11 || strncasecmp((const char *)q, "[CAPABILITY", 11) != 0)
            abort();
        cap = q + 11;
        stop = memchr(cap, ']', (size_t)(end - cap));
        if (stop == NULL)
            abort();
    }
    if (stop > cap && stop[-1] == '\n')
        stop--;
    if (stop > cap && stop[-1] == '\r')
        stop--;
    while (cap < stop) {
        while (cap < stop && *cap <= ' ')
            cap++;
        const uint8_t *name = cap;
        while (cap<stop && * cap> ' ')
            cap++;
        size_t n = (size_t)(cap - name);
        if (n == 0)
            break;
        bool added = (n == 8 && strncasecmp((const char *)name, "STARTTLS", 8) == 0 &&
                      !pol->tls_active && pol->offer_starttls) ||
                     (n == 13 && strncasecmp((const char *)name, "LOGINDISABLED", 13) == 0 &&
                      !pol->tls_active && pol->login_disabled);
        if (!added && imf_capability_hidden((const char *)name, n, pol))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct imf_cap_policy pol = {
        .tls_active = data[0] & 1,
        .offer_starttls = data[0] & 2,
        .login_disabled = data[0] & 4,
        .add_literal_plus = data[0] & 8,
        .hide = (data[0] & 16) ? "QUOTA, X-* ID CONTEXT=*" : NULL,
    };
    data++;
    size--;
    /* The rewriter's input is one whole framed line: it ends in LF. */
    if (size == 0 || data[size - 1] != '\n' || memchr(data, '\n', size - 1) != NULL)
        return 0;
    size_t cap = size + IMF_CAP_GROWTH;
    uint8_t *out = malloc(cap);
    size_t out_len = 0;
    if (imf_capability_rewrite(data, size, &pol, out, cap, &out_len)) {
        if (out_len > cap)
            abort();
        check_no_forbidden(out, out_len, &pol);
        uint8_t *again = malloc(out_len + IMF_CAP_GROWTH);
        size_t again_len = 0;
        if (!imf_capability_rewrite(out, out_len, &pol, again, out_len + IMF_CAP_GROWTH,
                                    &again_len))
            abort(); /* still a list */
        if (again_len != out_len || memcmp(again, out, out_len) != 0)
            abort(); /* idempotent */
        free(again);
    }
    free(out);
    return 0;
}
