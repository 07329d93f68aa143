/* capability: see include/imapfront/capability.h. */
#include "imapfront/capability.h"

#include "imapfront/util.h"

#include <string.h>
#include <strings.h>

static bool name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

static bool name_has_prefix(const char *name, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(name, prefix, n) == 0;
}

/* Looks name up in a list of "A B,C X=*" entries. */
static bool in_list(const char *list, const char *name, size_t len)
{
    if (list == NULL)
        return false;
    const char *p = list, *start;
    size_t n;
    while (imf_list_next(&p, &start, &n)) {
        if (n >= 2 && start[n - 1] == '*' && start[n - 2] == '=') {
            if (len >= n - 1 && strncasecmp(name, start, n - 1) == 0)
                return true;
        } else if (n == len && strncasecmp(name, start, n) == 0) {
            return true;
        }
    }
    return false;
}

bool imf_capability_hidden(const char *name, size_t len, const struct imf_cap_policy *pol)
{
    /* A compressed stream cannot be re-framed by the proxy. */
    if (name_has_prefix(name, len, "COMPRESS="))
        return true;
    if (name_is(name, len, "STARTTLS") || name_is(name, len, "LOGINDISABLED"))
        return true; /* added back below when the policy wants them */
    if (!pol->tls_active && pol->login_disabled && name_has_prefix(name, len, "AUTH="))
        return true;
    return in_list(pol->hide, name, len);
}

/* Matches a case-insensitive word at p, followed by a space or end. */
static bool word_at(const uint8_t *p, const uint8_t *end, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(end - p) >= n && strncasecmp((const char *)p, word, n) == 0;
}

/* Finds where the capability names of the line start and end. */
static bool find_list(const uint8_t *line, size_t len, size_t *out_start, size_t *out_end)
{
    /* The line ending: LF, or CRLF (nothing else is trimmed). */
    const uint8_t *end = line + len;
    if (end > line && end[-1] == '\n')
        end--;
    if (end > line && end[-1] == '\r')
        end--;
    const uint8_t *p = line;
    if (end - p >= 2 && p[0] == '*' && p[1] == ' ') {
        p += 2;
        if (word_at(p, end, "CAPABILITY") && (p + 10 == end || p[10] == ' ')) {
            *out_start = (size_t)(p + 10 - line);
            *out_end = (size_t)(end - line);
            return true;
        }
    } else {
        /* A tag: up to the first space. */
        while (p < end && *p != ' ')
            p++;
        if (p == line || p == end)
            return false;
        p++;
    }
    if (word_at(p, end, "OK ")) {
        p += 3;
    } else if (line[0] == '*' && word_at(p, end, "PREAUTH ")) {
        p += 8;
    } else {
        return false;
    }
    if (!word_at(p, end, "[CAPABILITY"))
        return false;
    p += 11;
    const uint8_t *close = memchr(p, ']', (size_t)(end - p));
    if (close == NULL || (p != close && *p != ' '))
        return false;
    *out_start = (size_t)(p - line);
    *out_end = (size_t)(close - line);
    return true;
}

/* The next name of a list at *p (before stop): names are atoms, runs of
 * bytes above SP; anything else (SP, a stray CR or other control byte)
 * separates them. False at the end. */
static bool next_name(const uint8_t **p, const uint8_t *stop, const uint8_t **out_name,
                      size_t *out_len)
{
    const uint8_t *q = *p;
    while (q < stop && *q <= ' ')
        q++;
    *out_name = q;
    while (q<stop && * q> ' ')
        q++;
    *p = q;
    *out_len = (size_t)(q - *out_name);
    return *out_len > 0;
}

bool imf_capability_list_has(const uint8_t *line, size_t len, const char *want, bool *out_has)
{
    size_t start, end;
    if (!find_list(line, len, &start, &end))
        return false;
    *out_has = false;
    const uint8_t *p = line + start, *name;
    size_t n;
    while (next_name(&p, line + end, &name, &n))
        if (name_is((const char *)name, n, want))
            *out_has = true;
    return true;
}

static void put(uint8_t *out, size_t *pos, const void *p, size_t n)
{
    memcpy(out + *pos, p, n);
    *pos += n;
}

bool imf_capability_rewrite(const uint8_t *line, size_t len, const struct imf_cap_policy *pol,
                            uint8_t *out, size_t out_cap, size_t *out_len)
{
    size_t start, end;
    if (out_cap < len + IMF_CAP_GROWTH || !find_list(line, len, &start, &end))
        return false;
    size_t pos = 0;
    put(out, &pos, line, start);
    const uint8_t *p = line + start, *name;
    size_t n;
    while (next_name(&p, line + end, &name, &n)) {
        if (imf_capability_hidden((const char *)name, n, pol))
            continue;
        /* What the proxy adds goes last, in a fixed order, so a list
         * rewritten twice comes out the same. */
        if (pol->add_literal_plus && name_is((const char *)name, n, "LITERAL+"))
            continue;
        if (pol->add_idle && name_is((const char *)name, n, "IDLE"))
            continue;
        out[pos++] = ' ';
        put(out, &pos, name, n);
    }
    if (!pol->tls_active && pol->offer_starttls)
        put(out, &pos, " STARTTLS", 9);
    if (!pol->tls_active && pol->login_disabled)
        put(out, &pos, " LOGINDISABLED", 14);
    if (pol->add_literal_plus)
        put(out, &pos, " LITERAL+", 9);
    if (pol->add_idle)
        put(out, &pos, " IDLE", 5);
    if (pol->add_compress)
        put(out, &pos, " COMPRESS=DEFLATE", 17);
    put(out, &pos, line + end, len - end);
    *out_len = pos;
    return true;
}
