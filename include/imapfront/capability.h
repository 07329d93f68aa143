/* capability: rewrites the capability lists a server announces, so clients
 * see what they can use through the proxy. Pure: no I/O, no allocation.
 *
 * Lists appear in untagged "* CAPABILITY ..." responses and in
 * "[CAPABILITY ...]" response codes right after the status word of a
 * greeting ("* OK", "* PREAUTH") or a tagged completion ("tag OK"). Nothing
 * else is touched: the caller hands over only framed response lines, never
 * literal data, so a message body that says CAPABILITY is never changed. */
#ifndef IMAPFRONT_CAPABILITY_H
#define IMAPFRONT_CAPABILITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct imf_cap_policy {
    bool tls_active;       /* the client talks TLS now: no STARTTLS, no LOGINDISABLED */
    bool offer_starttls;   /* before TLS on a STARTTLS listener: announce STARTTLS */
    bool login_disabled;   /* before TLS with require_tls: LOGINDISABLED, no AUTH= */
    bool add_literal_plus; /* the proxy provides LITERAL+ itself */
    bool add_idle;         /* the proxy provides IDLE itself (idle = poll) */
    bool add_compress;     /* the proxy provides COMPRESS=DEFLATE itself */
    const char *hide;      /* extra names to hide, separated by spaces or commas;
                              "NAME=*" hides every NAME=value; may be NULL */
};

/* Room the output needs beyond the input's length. */
#define IMF_CAP_GROWTH 64

/* If the line (one whole response line, CRLF included) carries a capability
 * list, writes the rewritten line to out (out_cap >= len + IMF_CAP_GROWTH)
 * and returns true with *out_len set; otherwise returns false and out is
 * untouched. */
bool imf_capability_rewrite(const uint8_t *line, size_t len, const struct imf_cap_policy *pol,
                            uint8_t *out, size_t out_cap, size_t *out_len);

/* If the line carries a capability list (as above), returns true and sets
 * *out_has to whether it names want (case-insensitive); else false. */
bool imf_capability_list_has(const uint8_t *line, size_t len, const char *want, bool *out_has);

/* True when name (len bytes) is one the policy never shows. */
bool imf_capability_hidden(const char *name, size_t len, const struct imf_cap_policy *pol);

#endif
