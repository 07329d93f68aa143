/* libFuzzer: the backend conversation (src/bclient.c) against a fuzzed
 * server, through the driver of unit.bclient (tests/unit/bclient_driver.h).
 *
 * The input is: a byte of settings (which credentials, which actions), a
 * byte that seeds the cut points, then the server's whole output. The
 * conversation runs over it whole and cut at pseudo-random places (and one
 * byte at a time for short inputs), and for ANY input:
 *   - every run reports the same results with the same texts and sends the
 *     same bytes (the cut points change nothing);
 *   - what the client sent re-frames, with a command framer, into lines
 *     that end in CRLF and carry no NUL, each command starting with a tag
 *     imf1, imf2 ... in order;
 *   - no "{N+}" unless the server's bytes named LITERAL+;
 *   - the octets of a synchronising literal go only after a "+" line from
 *     the server (counted: never more literals sent on than "+" lines), and
 *     never once a result came (a refused literal is not sent);
 *   - the password leaves no copy in the conversation once nothing that
 *     carries it is owed to the server (unless the server's bytes hold it). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bclient_driver.h"
#include "imapfront/imap_framer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_CUTS 8

static void check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_bclient: invariant broken: %s\n", what);
        abort();
    }
}

/* Lines starting with "+" in the server's output (an upper bound on the
 * continuation requests the client may have seen). */
static size_t plus_lines(const uint8_t *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '+' && (i == 0 || s[i - 1] == '\n'))
            count++;
    return count;
}

static bool names_literal_plus(const uint8_t *s, size_t n)
{
    static const char lp[] = "LITERAL+";
    for (size_t i = 0; i + sizeof(lp) - 1 <= n; i++)
        if (strncasecmp((const char *)s + i, lp, sizeof(lp) - 1) == 0)
            return true;
    return false;
}

/* Re-frames what the client sent and checks its shape. */
static void check_sent(const struct bd_run *r, const uint8_t *server, size_t server_len)
{
    struct imf_framer fr;
    imf_framer_init(&fr, IMF_FRAMER_COMMANDS, 0, 0);
    size_t off = 0, line_start = 0, sync_sent_on = 0;
    unsigned next_tag = 1;
    bool lp = names_literal_plus(server, server_len);
    bool in_line = true;
    if (r->sent_len == 0)
        return;
    for (size_t guard = 0; guard < 4 * r->sent_len + 16; guard++) {
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&fr, r->sent + off, r->sent_len - off, &ev);
        if (ev.kind == IMF_EV_NEED_MORE)
            break;
        check(ev.kind != IMF_EV_ERROR, "the client sent a malformed command");
        if (ev.kind == IMF_EV_TEXT) {
            if (!in_line) {
                line_start = off;
                in_line = true;
            }
            check(memchr(r->sent + off, 0, n) == NULL, "NUL in a command line");
        } else if (ev.kind == IMF_EV_LINE_END) {
            const uint8_t *l = r->sent + line_start;
            size_t ll = (size_t)ev.line_len;
            check(ll >= 2 && l[ll - 2] == '\r', "a line not ended by CRLF");
            check(memchr(l, '\r', ll - 2) == NULL, "a CR inside a line");
            if (ev.first_line && !(ll == 3 && l[0] == '*')) {
                /* A command (or a SASL response, which has no tag). */
                char tag[24];
                int tn = snprintf(tag, sizeof(tag), "imf%u ", next_tag);
                if (ll > (size_t)tn && memcmp(l, tag, (size_t)tn) == 0)
                    next_tag++;
                else
                    check(memchr(l, ' ', ll) == NULL, "a command without the next tag");
            }
            if (ev.literal_flags & IMF_LIT_PRESENT) {
                check(lp || !(ev.literal_flags & IMF_LIT_NONSYNC), "{N+} without LITERAL+");
                check(!(ev.literal_flags & (IMF_LIT_BINARY | IMF_LIT_MINUS)), "odd literal");
                bool refused = false; /* a result came before the octets: none follow */
                for (unsigned i = 0; i < r->count && i < BD_MAX_RESULTS; i++)
                    refused |= r->at[i] == off;
                if (refused)
                    imf_framer_skip_literal(&fr);
                else if (!(ev.literal_flags & IMF_LIT_NONSYNC) && off < r->sent_len)
                    sync_sent_on++;
            }
            in_line = false;
        } else if (ev.kind == IMF_EV_LITERAL_END) {
            in_line = false;
        }
        off += n;
    }
    check(sync_sent_on <= plus_lines(server, server_len), "literal octets sent without a \"+\"");
}

static const char *const users[] = {"svc", "us\"er", "a\rb", "\xc3\xa9t\xc3\xa9"};
static const char *const passwords[] = {"fuzz-secret-0", "fuzz\\secret\"1", "fuzz\nsecret-2",
                                        "fuzz-s\xc3\xa9-cret-3"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t settings = data[0];
    uint32_t seed = data[1] * 2654435761u + 1;
    const uint8_t *s = data + 2;
    size_t n = size - 2;

    const char *user = users[settings & 3];
    const char *pw = passwords[(settings >> 2) & 3];
    struct bd_act acts[6];
    size_t nacts = 0;
    if (settings & 0x10) {
        acts[nacts++] = (struct bd_act){BD_COMMAND, "EXAMINE", 0, "K\xc3\xb6rbchen", 0};
    } else {
        acts[nacts++] = (struct bd_act){BD_LOGIN, user, 0, pw, 0};
        if (settings & 0x20) /* a retry after a refusal */
            acts[nacts++] = (struct bd_act){BD_LOGIN, user, 0, pw, 0};
    }
    acts[nacts++] = (struct bd_act){BD_COMMAND, "NOOP", 0, NULL, 0};
    acts[nacts++] = (struct bd_act){BD_COMMAND, "LOGOUT", 0, NULL, 0};

    /* The server may say the password itself (the greeting, a text): then
     * the conversation legitimately holds those bytes. */
    const char *secret = memmem(s, n, pw, strlen(pw)) == NULL ? pw : NULL;
    static struct imf_bc bc;
    struct bd_run whole, cut;
    bd_run(&bc, &whole, s, n, NULL, 0, acts, nacts, secret);
    check(!whole.secret_left, "the password stayed in the conversation");
    check_sent(&whole, s, n);

    size_t cuts[MAX_CUTS];
    size_t ncuts = 0;
    for (size_t i = 0; i < MAX_CUTS && n > 0; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t c = (seed >> 8) % n;
        size_t j = ncuts;
        while (j > 0 && cuts[j - 1] > c) { /* keep them sorted */
            cuts[j] = cuts[j - 1];
            j--;
        }
        cuts[j] = c;
        ncuts++;
    }
    bd_run(&bc, &cut, s, n, cuts, ncuts, acts, nacts, secret);
    check(strcmp(whole.results, cut.results) == 0, "results depend on the cuts");
    check(whole.sent_len == cut.sent_len &&
              (whole.sent_len == 0 || memcmp(whole.sent, cut.sent, whole.sent_len) == 0),
          "what is sent depends on the cuts");
    check(!cut.secret_left, "the password stayed in the conversation (cut)");
    bd_free(&cut);

    if (n <= 512) {
        size_t *bytes = malloc((n + 1) * sizeof(*bytes));
        if (bytes == NULL)
            abort();
        for (size_t i = 0; i + 1 < n; i++)
            bytes[i] = i + 1;
        bd_run(&bc, &cut, s, n, bytes, n > 0 ? n - 1 : 0, acts, nacts, secret);
        free(bytes);
        check(strcmp(whole.results, cut.results) == 0, "results depend on the cuts (bytes)");
        check(whole.sent_len == cut.sent_len &&
                  (whole.sent_len == 0 || memcmp(whole.sent, cut.sent, whole.sent_len) == 0),
              "what is sent depends on the cuts (bytes)");
        bd_free(&cut);
    }
    imf_bc_cleanup(&bc);
    check(secret == NULL || memmem(&bc, sizeof(bc), pw, strlen(pw)) == NULL,
          "cleanup left the password");
    bd_free(&whole);
    return 0;
}
