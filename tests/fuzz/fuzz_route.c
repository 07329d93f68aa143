/* libFuzzer: the [route] map parser. The first byte chooses ignore_case;
 * the rest is the file. Invariants: an error reads "fuzz:LINE: reason"
 * with LINE within the text (or "fuzz: reason" for a limit); a map that
 * loads has at most one entry a line, and every line of it that has two
 * fields finds its own pool by its own user name. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const pools[] = {"default", "a", "b"};

/* The fields of one line the way the map defines them: blanks separate,
 * a field starting with '#' ends the line. Returns how many (at most 3). */
static size_t fields_of(const char *s, size_t len, const char **f, size_t *f_len)
{
    size_t n = 0, i = 0;
    while (n < 3) {
        while (i < len && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i == len || s[i] == '#')
            break;
        f[n] = s + i;
        while (i < len && s[i] != ' ' && s[i] != '\t')
            i++;
        f_len[n] = (size_t)(s + i - f[n]);
        n++;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    struct imf_route_params p = {.default_pool = (data[0] & 2) ? "b" : NULL,
                                 .ignore_case = data[0] & 1,
                                 .pools = pools,
                                 .pools_len = 3};
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';

    struct imf_route *r = NULL;
    char err[512] = "";
    int rc = imf_route_parse("fuzz", text, len, &p, &r, err, sizeof(err));
    if (rc != 0) {
        unsigned line = 0;
        if (r != NULL || strncmp(err, "fuzz:", 5) != 0)
            abort();
        if (sscanf(err, "fuzz:%u: ", &line) == 1 && (line == 0 || line > lines))
            abort();
        return 0;
    }
    if (imf_route_count(r) > lines)
        abort();
    size_t pos = 0;
    while (pos <= len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - text) : len;
        size_t line_len = end - pos;
        if (line_len != 0 && text[end - 1] == '\r')
            line_len--;
        const char *f[3];
        size_t f_len[3];
        if (fields_of(text + pos, line_len, f, f_len) == 2) {
            enum imf_route_match how;
            const char *got = imf_route_lookup(r, f[0], f_len[0], &how);
            if (got == NULL || strlen(got) != f_len[1] || memcmp(got, f[1], f_len[1]) != 0)
                abort();
            if (how != (f[0][0] == '*' ? IMF_ROUTE_DOMAIN : IMF_ROUTE_USER))
                abort();
        }
        if (nl == NULL)
            break;
        pos = end + 1;
    }
    /* Anything else finds a pool or the default, never crashes. */
    enum imf_route_match how;
    const char *got = imf_route_lookup(r, text, len, &how);
    if ((got == NULL) != (how == IMF_ROUTE_NONE))
        abort();
    imf_route_unref(r);
    return 0;
}
