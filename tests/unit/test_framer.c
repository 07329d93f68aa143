/* unit.framer: the IMAP framer against a corpus of command and response
 * streams.
 *
 * Every stream is framed whole, split in two at every offset, fed one byte at
 * a time and cut at random places (fixed seed); all feedings must give the
 * same normalised events, and those must match both an independent reference
 * model (framer_corpus/framer_check.h) and, for many streams, a hand-written
 * list, which guards the model as well. Separate cases cover the calls a
 * corpus cannot: skip_literal, at_message_start, stickiness, NEED_MORE. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "framer_corpus/framer_check.h"

#define RANDOM_SPLITS 200
#define MAX_EVENTS    4096

struct stream {
    const char *name;
    struct fc_setup su;
    const char *data;
    size_t len;
    const struct fc_ev *expect; /* hand-written, FC_END-terminated; NULL = model only */
};

/* Setups: mode, max_line, max_literal, skip TOO_BIG synchronising literals. */
#define CMD                              \
    {                                    \
        IMF_FRAMER_COMMANDS, 0, 0, false \
    }
#define RSP                               \
    {                                     \
        IMF_FRAMER_RESPONSES, 0, 0, false \
    }
#define CMD_LIM(line, lit)                        \
    {                                             \
        IMF_FRAMER_COMMANDS, (line), (lit), false \
    }
#define RSP_LIM(line, lit)                         \
    {                                              \
        IMF_FRAMER_RESPONSES, (line), (lit), false \
    }
#define CMD_SKIP(lit)                       \
    {                                       \
        IMF_FRAMER_COMMANDS, 0, (lit), true \
    }

/* A stream as bytes with an explicit length (the literal's own NUL excluded). */
#define S(str) (str), sizeof(str) - 1

/* Expected events after merging adjacent TEXT / LITERAL spans. */
#define TX(n)                           \
    {                                   \
        .kind = IMF_EV_TEXT, .len = (n) \
    }
#define LIT(n)                             \
    {                                      \
        .kind = IMF_EV_LITERAL, .len = (n) \
    }
#define LEND                       \
    {                              \
        .kind = IMF_EV_LITERAL_END \
    }
/* A line that completes the command/response. */
#define EOL(ll, first)                                                                        \
    {                                                                                         \
        .kind = IMF_EV_LINE_END, .line_len = (ll), .first_line = (first), .message_end = true \
    }
/* A line that announces a literal: size, IMF_LIT_* flags, announce_len. */
#define EOLL(ll, first, size, flags, ann)                                      \
    {                                                                          \
        .kind = IMF_EV_LINE_END, .line_len = (ll), .literal_size = (size),     \
        .literal_flags = (flags), .announce_len = (ann), .first_line = (first) \
    }
#define ERR(code)                                        \
    {                                                    \
        .kind = IMF_EV_ERROR, .error = IMF_FRAMER_##code \
    }
#define EXPECT(...) ((const struct fc_ev[]){__VA_ARGS__, {.kind = FC_END}})
#define NO_EVENTS   ((const struct fc_ev[]){{.kind = FC_END}})
#define NONE        NULL

#define P   IMF_LIT_PRESENT
#define NS  IMF_LIT_NONSYNC
#define MI  IMF_LIT_MINUS
#define BI  IMF_LIT_BINARY
#define BIG IMF_LIT_TOO_BIG

static const struct stream corpus[] = {
    /* --- commands: plain lines --- */
    {"noop", CMD, S("a1 NOOP\r\n"), EXPECT(TX(9), EOL(9, 1))},
    {"pipelined", CMD, S("a1 NOOP\r\na2 CAPABILITY\r\na3 LOGOUT\r\n"),
     EXPECT(TX(9), EOL(9, 1), TX(15), EOL(15, 1), TX(11), EOL(11, 1))},
    {"bare-lf", CMD, S("a1 NOOP\na2 NOOP\r\n\n"),
     EXPECT(TX(8), EOL(8, 1), TX(9), EOL(9, 1), TX(1), EOL(1, 1))},
    {"empty", CMD, S(""), NO_EVENTS},
    {"unterminated", CMD, S("a1 NOO"), EXPECT(TX(6))},
    {"cr-inside-line", CMD, S("a1 NOOP\rfoo\r\n"), EXPECT(TX(13), EOL(13, 1))},
    {"eight-bit-text", CMD, S("a1 SELECT \"\xc3\xa9t\xc3\xa9\"\r\na2 SELECT \xe4\xf6\xfc}\r\n"),
     EXPECT(TX(19), EOL(19, 1), TX(16), EOL(16, 1))},
    {"brace-without-open", CMD, S("A SELECT foo}\r\n"), EXPECT(TX(15), EOL(15, 1))},
    {"idle-done", CMD, S("a1 IDLE\r\nDONE\r\n"), EXPECT(TX(9), EOL(9, 1), TX(6), EOL(6, 1))},
    {"authenticate", CMD, S("a1 AUTHENTICATE PLAIN\r\nAGJvYgBwYXNz\r\n"), NONE},
    {"not-at-end", CMD, S("a1 X {5} y\r\n"), EXPECT(TX(12), EOL(12, 1))},
    {"two-crs", CMD, S("a1 X {5}\r\r\n"), EXPECT(TX(11), EOL(11, 1))},
    {"open-only", CMD, S("a1 X {5\r\na2 X {\r\n"), NONE},

    /* --- commands: literals --- */
    {"append-sync", CMD, S("A3 APPEND INBOX {12}\r\nHello World!\r\n"),
     EXPECT(TX(22), EOLL(22, 1, 12, P, 6), LIT(12), LEND, TX(2), EOL(2, 0))},
    {"append-nonsync", CMD, S("A4 APPEND INBOX {5+}\r\nabcde\r\n"),
     EXPECT(TX(22), EOLL(22, 1, 5, P | NS, 6), LIT(5), LEND, TX(2), EOL(2, 0))},
    {"append-minus", CMD, S("A5 APPEND INBOX {5-}\r\nabcde\r\n"),
     EXPECT(TX(22), EOLL(22, 1, 5, P | MI, 6), LIT(5), LEND, TX(2), EOL(2, 0))},
    {"append-binary", CMD, S("A6 APPEND INBOX ~{4}\r\n\x01\xff\x80z\r\n"),
     EXPECT(TX(22), EOLL(22, 1, 4, P | BI, 6), LIT(4), LEND, TX(2), EOL(2, 0))},
    {"append-binary-plus", CMD, S("A7 APPEND INBOX ~{3+}\r\nxyz\r\n"),
     EXPECT(TX(23), EOLL(23, 1, 3, P | BI | NS, 7), LIT(3), LEND, TX(2), EOL(2, 0))},
    {"append-binary-minus-lf", CMD, S("A7 APPEND INBOX ~{3-}\nxyz\n"), NONE},
    {"login-two-literals", CMD, S("A1 LOGIN {3}\r\nbob {4}\r\npass\r\n"),
     EXPECT(TX(14), EOLL(14, 1, 3, P, 5), LIT(3), LEND, TX(6), EOLL(6, 0, 4, P, 5), LIT(4), LEND,
            TX(2), EOL(2, 0))},
    {"login-nonsync", CMD, S("A1 LOGIN {3+}\r\nbob {4+}\r\npass\r\na2 NOOP\r\n"), NONE},
    {"zero-literals", CMD, S("A2 LOGIN {0}\r\n {0}\r\n\r\n"),
     EXPECT(TX(14), EOLL(14, 1, 0, P, 5), LEND, TX(6), EOLL(6, 0, 0, P, 5), LEND, TX(2),
            EOL(2, 0))},
    /* Q239082: the end of the message literal and the final CRLF in one read. */
    {"q239082-literal-then-crlf", CMD, S("A3 APPEND INBOX {14}\r\nSubject: x\r\n\r\n\r\n"),
     EXPECT(TX(22), EOLL(22, 1, 14, P, 6), LIT(14), LEND, TX(2), EOL(2, 0))},
    {"literal-holds-brace-and-ok", CMD,
     S("A4 APPEND INBOX {25}\r\n}\r\nA1 OK completed\r\n{3}\r\n\r\n"),
     EXPECT(TX(22), EOLL(22, 1, 25, P, 6), LIT(25), LEND, TX(2), EOL(2, 0))},
    {"literal-looks-like-announcement", CMD, S("A1 X {2}\r\n{}{1}\r\nz\r\n"),
     EXPECT(TX(10), EOLL(10, 1, 2, P, 5), LIT(2), LEND, TX(5), EOLL(5, 0, 1, P, 5), LIT(1), LEND,
            TX(2), EOL(2, 0))},
    {"literal-of-crlfs", CMD, S("a1 X {4}\r\n\r\n\r\n\r\n"),
     EXPECT(TX(10), EOLL(10, 1, 4, P, 5), LIT(4), LEND, TX(2), EOL(2, 0))},
    {"literal-8bit", CMD, S("a1 APPEND x {6}\r\n\xff\xfe\r\n}\x80\r\na2 NOOP\r\n"), NONE},
    {"tilde-apart", CMD, S("a1 X ~ {2}\r\nab\r\n"),
     EXPECT(TX(12), EOLL(12, 1, 2, P, 5), LIT(2), LEND, TX(2), EOL(2, 0))},
    {"tilde-at-line-start", CMD, S("~{1}\r\nx\r\n"), NONE},
    {"brace-at-line-start", CMD, S("{1}\nx\n"), NONE},
    {"earlier-braces", CMD, S("a1 SEARCH {weird} {2}\r\nab\r\n"),
     EXPECT(TX(23), EOLL(23, 1, 2, P, 5), LIT(2), LEND, TX(2), EOL(2, 0))},
    {"cr-before-brace", CMD, S("a1 X \r{3}\r\nabc\r\n"), NONE},
    {"leading-zeros-20", CMD, S("a1 X {00000000000000000005}\r\nabcde\r\n"),
     EXPECT(TX(29), EOLL(29, 1, 5, P, 24), LIT(5), LEND, TX(2), EOL(2, 0))},
    {"uint64-max", CMD, S("a1 X {18446744073709551615+}\r\nabc"),
     EXPECT(TX(30), EOLL(30, 1, UINT64_MAX, P | NS, 25), LIT(3))},
    {"literal-truncated", CMD, S("a1 X {10}\r\nabc"), NONE},
    {"pipelined-literals", CMD,
     S("a1 LOGIN {1+}\r\nu {1+}\r\np\r\na2 APPEND x ~{2}\r\n\r\n\r\na3 LOGOUT\r\n"), NONE},

    /* --- commands: malformed announcements (the client would send octets next) --- */
    {"malformed-1x", CMD, S("A1 APPEND INBOX {1x}\r\nabc\r\n"),
     EXPECT(TX(22), ERR(LITERAL_MALFORMED))},
    {"malformed-minus-one", CMD, S("A1 APPEND INBOX {-1}\r\n"),
     EXPECT(TX(22), ERR(LITERAL_MALFORMED))},
    {"malformed-empty", CMD, S("a1 NOOP\r\nA1 X {}\r\nA2 NOOP\r\n"),
     EXPECT(TX(9), EOL(9, 1), TX(9), ERR(LITERAL_MALFORMED))},
    {"malformed-plus-only", CMD, S("A1 X {+}\n"), EXPECT(TX(9), ERR(LITERAL_MALFORMED))},
    {"malformed-overflow", CMD, S("A1 X {18446744073709551616}\r\n0123"),
     EXPECT(TX(29), ERR(LITERAL_MALFORMED))},
    {"malformed-21-digits", CMD, S("A1 X {000000000000000000001}\r\n"),
     EXPECT(TX(30), ERR(LITERAL_MALFORMED))},
    {"malformed-space", CMD, S("A1 X { 5}\r\n"), EXPECT(TX(11), ERR(LITERAL_MALFORMED))},
    {"malformed-double-close", CMD, S("A1 X {5}}\r\n"), EXPECT(TX(11), ERR(LITERAL_MALFORMED))},
    {"malformed-two-signs", CMD, S("A1 X {5+-}\r\n"), NONE},
    {"malformed-junk-after", CMD, S("A1 X {5} y}\r\n"), NONE},
    {"malformed-after-literal", CMD, S("A1 LOGIN {3}\r\nbob {4x}\r\npass\r\n"),
     EXPECT(TX(14), EOLL(14, 1, 3, P, 5), LIT(3), LEND, TX(7), ERR(LITERAL_MALFORMED))},

    /* --- commands: limits --- */
    {"too-big", CMD_LIM(0, 10),
     S("A1 APPEND INBOX {11}\r\n01234567890\r\nA2 APPEND INBOX {10}\r\n0123456789\r\n"),
     EXPECT(TX(22), EOLL(22, 1, 11, P | BIG, 6), LIT(11), LEND, TX(2), EOL(2, 0), TX(22),
            EOLL(22, 1, 10, P, 6), LIT(10), LEND, TX(2), EOL(2, 0))},
    /* The 4096-octet literal swallows the rest: the second line is data. */
    {"minus-4096-swallows-rest", CMD, S("A1 X {4096-}\r\n\r\nA2 X {4097-}\r\n"),
     EXPECT(TX(14), EOLL(14, 1, 4096, P | MI, 9), LIT(16))},
    {"minus-too-big", CMD, S("A2 X {4097-}\r\nab"),
     EXPECT(TX(14), EOLL(14, 1, 4097, P | MI | BIG, 9), LIT(2))},
    {"too-big-skipped", CMD_SKIP(10), S("A1 APPEND INBOX {100}\r\nA2 NOOP\r\nA3 X {5+}\r\n"),
     EXPECT(TX(23), EOLL(23, 1, 100, P | BIG, 7), TX(9), EOL(9, 1), TX(11),
            EOLL(11, 1, 5, P | NS, 6))},
    {"line-at-limit", CMD_LIM(16, 0), S("a1 NOOP 12345\r\na1 NOOP 123456\r\na1 NOOP 1234567\r\n"),
     EXPECT(TX(15), EOL(15, 1), TX(16), EOL(16, 1), TX(16), ERR(LINE_TOO_LONG))},
    {"line-over-limit-bare-lf", CMD_LIM(16, 0), S("a1 NOOP 1234567\na1 NOOP 12345678\n"),
     EXPECT(TX(16), EOL(16, 1), TX(16), ERR(LINE_TOO_LONG))},
    {"line-over-limit-no-lf", CMD_LIM(32, 0), S("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
     EXPECT(TX(32), ERR(LINE_TOO_LONG))},
    {"limit-is-per-line", CMD_LIM(14, 0), S("A1 LOGIN {3}\r\nbob {4}\r\npass\r\n"), NONE},
    {"limit-first-line", CMD_LIM(10, 0), S("A1 LOGIN {3}\r\nbob {4}\r\npass\r\n"),
     EXPECT(TX(10), ERR(LINE_TOO_LONG))},
    {"limit-literal-not-counted", CMD_LIM(12, 0),
     S("a1 X {40}\r\n0123456789012345678901234567890123456789\r\n"), NONE},

    /* --- responses --- */
    {"greeting", RSP, S("* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"),
     EXPECT(TX(44), EOL(44, 1))},
    {"fetch-body-with-ok-lines", RSP,
     S("* 1 FETCH (BODY[] {28}\r\n* OK fake\r\nA1 OK fake done\r\n)\r\nA1 OK FETCH completed\r\n"),
     EXPECT(TX(24), EOLL(24, 1, 28, P, 6), LIT(28), LEND, TX(3), EOL(3, 0), TX(23), EOL(23, 1))},
    {"fetch-binary", RSP, S("* 2 FETCH (BINARY[] ~{3}\r\n\xff\x01\x80)\r\na1 OK done\r\n"),
     EXPECT(TX(26), EOLL(26, 1, 3, P | BI, 6), LIT(3), LEND, TX(3), EOL(3, 0), TX(12), EOL(12, 1))},
    {"continuation", RSP, S("+ ready for literal\r\nA1 OK APPEND completed\r\n"),
     EXPECT(TX(21), EOL(21, 1), TX(24), EOL(24, 1))},
    {"responses-malformed-is-text", RSP, S("* OK weird {1x}\r\n* OK {}\r\n* OK { 5}\r\n"),
     EXPECT(TX(17), EOL(17, 1), TX(9), EOL(9, 1), TX(11), EOL(11, 1))},
    {"responses-overflow-is-text", RSP, S("* OK {18446744073709551616}\r\n"), NONE},
    {"fetch-two-literals", RSP,
     S("* 3 FETCH (BODY[HEADER] {5}\r\nab\r\n\r BODY[TEXT] {0}\r\n)\r\n* 4 FETCH (FLAGS ())\r\n"),
     NONE},
    {"fetch-literal-brace", RSP, S("* 5 FETCH (BODY[] {12}\r\n}\r\nA1 OK x)\r\n)\r\nA1 OK\r\n"),
     NONE},
    {"responses-too-big", RSP_LIM(0, 4), S("* 6 FETCH (BODY[] {5}\r\nhello)\r\n"), NONE},
    {"responses-long-line", RSP_LIM(20, 0), S("* 7 EXISTS\r\n* 8 RECENT but far too long\r\n"),
     NONE},
    {"responses-nonsync-form", RSP, S("* 9 FETCH (BODY[] {2+}\r\nhi)\r\n"), NONE},
    {"list-literal-mailbox", RSP, S("* LIST () \"/\" {7}\r\nfoo bar\r\nA1 OK\r\n"),
     EXPECT(TX(19), EOLL(19, 1, 7, P, 5), LIT(7), LEND, TX(2), EOL(2, 0), TX(7), EOL(7, 1))},
    {"fetch-pipelined", RSP,
     S("* 1 FETCH (UID 1 BODY[] {3}\r\nabc)\r\n* 2 FETCH (UID 2 BODY[] {3}\r\nA1 )\r\nA1 OK\r\n"),
     NONE},
    {"responses-bare-lf", RSP, S("* 1 EXISTS\n* 2 FETCH (BODY[] {2}\n\n\n)\nA1 OK\n"), NONE},
    {"responses-8bit-literal", RSP, S("* 1 FETCH (BODY[] {4}\r\n\xe4\r\n\x80)\r\n"), NONE},
    {"capability-and-flags", RSP,
     S("* CAPABILITY IMAP4rev1 LITERAL+ BINARY\r\n* OK [PERMANENTFLAGS (\\Seen \\*)] ok\r\n"),
     NONE},
};

#define NSTREAMS (sizeof(corpus) / sizeof(corpus[0]))

static size_t total_streams;
static size_t total_feedings;
static size_t total_split_points;

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64: fixed seeds make every run cut the same places. */
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void describe_cuts(const size_t *cuts, size_t ncuts, char *buf, size_t size)
{
    size_t off = (size_t)snprintf(buf, size, "cuts:");

    for (size_t i = 0; i < ncuts && off + 16 < size; i++)
        off += (size_t)snprintf(buf + off, size - off, " %zu", cuts[i]);
}

static void assert_same(const char *what, const char *name, const struct fc_list *want,
                        const struct fc_list *got, const size_t *cuts, size_t ncuts)
{
    size_t i = fc_list_diff(want, got);
    char a[160] = "(none)", b[160] = "(none)", c[512] = "";

    if (i == SIZE_MAX)
        return;
    if (i < want->n)
        fc_format(&want->v[i], a, sizeof(a));
    if (i < got->n)
        fc_format(&got->v[i], b, sizeof(b));
    describe_cuts(cuts, ncuts, c, sizeof(c));
    fail_msg("%s: %s: event %zu: expected [%s], got [%s]; %s", name, what, i, a, b, c);
}

static void feed_and_compare(const struct stream *st, const struct fc_list *whole,
                             size_t whole_used, const size_t *cuts, size_t ncuts)
{
    static struct fc_ev buf[MAX_EVENTS];
    struct fc_list got = {buf, 0, MAX_EVENTS, false};
    size_t used = 0;
    const char *err =
        fc_feed(&st->su, (const uint8_t *)st->data, st->len, cuts, ncuts, &got, &used);

    if (err != NULL) {
        char c[512];

        describe_cuts(cuts, ncuts, c, sizeof(c));
        fail_msg("%s: %s; %s", st->name, err, c);
    }
    assert_false(got.overflow);
    assert_same("split feeding", st->name, whole, &got, cuts, ncuts);
    assert_int_equal(used, whole_used);
    total_feedings++;
}

/* The full check of one stream: whole, every two-piece split, bytewise, and
 * RANDOM_SPLITS random multi-splits. */
static void check_stream(const struct stream *st)
{
    const uint8_t *data = (const uint8_t *)st->data;
    static struct fc_ev whole_buf[MAX_EVENTS], model_buf[MAX_EVENTS];
    static size_t cuts[16384];
    struct fc_list whole = {whole_buf, 0, MAX_EVENTS, false};
    struct fc_list model = {model_buf, 0, MAX_EVENTS, false};
    size_t used = 0, model_used = 0;
    const char *err;
    uint64_t seed = 0x9e3779b97f4a7c15u;

    assert_true(st->len < sizeof(cuts) / sizeof(cuts[0]));
    err = fc_feed(&st->su, data, st->len, NULL, 0, &whole, &used);
    if (err != NULL)
        fail_msg("%s: whole: %s", st->name, err);
    assert_false(whole.overflow);
    err = fc_consistent(&st->su, &whole, used);
    if (err != NULL)
        fail_msg("%s: whole: %s", st->name, err);
    /* Unless an error stopped it, the spans cover the whole stream. */
    if (whole.n == 0 || whole.v[whole.n - 1].kind != IMF_EV_ERROR)
        assert_int_equal(used, st->len);

    fc_model(&st->su, data, st->len, &model, &model_used);
    assert_false(model.overflow);
    assert_same("reference model", st->name, &model, &whole, NULL, 0);
    assert_int_equal(model_used, used);

    if (st->expect != NULL) {
        struct fc_list want = {(struct fc_ev *)st->expect, 0, 0, false};

        while (st->expect[want.n].kind != FC_END)
            want.n++;
        assert_same("hand-written list", st->name, &want, &whole, NULL, 0);
    }

    /* Two pieces, cut at every offset (0 and len make an empty piece). */
    for (size_t k = 0; k <= st->len; k++) {
        cuts[0] = k;
        feed_and_compare(st, &whole, used, cuts, 1);
        total_split_points++;
    }

    /* One byte at a time. */
    for (size_t k = 1; k < st->len; k++)
        cuts[k - 1] = k;
    feed_and_compare(st, &whole, used, cuts, st->len > 0 ? st->len - 1 : 0);

    /* Random multi-splits, piece sizes drawn from a few scales. */
    for (size_t k = 0; k < st->len; k++)
        seed = (seed ^ data[k]) * 0x100000001b3u;
    for (int r = 0; r < RANDOM_SPLITS; r++) {
        static const size_t scales[] = {1, 2, 3, 5, 8, 16, 64};
        size_t scale = scales[rng_next(&seed) % (sizeof(scales) / sizeof(scales[0]))];
        size_t n = 0, pos = 0;

        while (n < sizeof(cuts) / sizeof(cuts[0])) {
            /* Occasionally an empty piece (cut repeated). */
            pos += (size_t)(rng_next(&seed) % (scale + 1));
            if (pos > st->len)
                break;
            cuts[n++] = pos;
        }
        feed_and_compare(st, &whole, used, cuts, n);
    }
    total_streams++;
}

static void test_stream(void **state)
{
    check_stream(*state);
}

/* Lines of max_line - 2 .. max_line + 1 bytes, too long for a C literal, each
 * ending in a literal announcement: the last one fails exactly at the limit,
 * however the stream is cut. */
static void test_long_lines_near_limit(void **state)
{
    static char buf[8192];
    static const char *const ends[] = {"\r\n", "\n"};
    const size_t max_line = 1024;

    (void)state;
    for (size_t e = 0; e < 2; e++) {
        struct stream st = {"long-lines-near-limit", CMD_LIM(max_line, 0), buf, 0, NULL};
        size_t end_len = strlen(ends[e]);

        for (size_t line = max_line - 2; line <= max_line + 1; line++) {
            int head = snprintf(buf + st.len, sizeof(buf) - st.len, "a%zu X ", line);
            size_t fill = line - (size_t)head - 3 - end_len;

            st.len += (size_t)head;
            memset(buf + st.len, 'z', fill);
            st.len += fill;
            /* The literal's octets are "}" CRLF, then the command ends. */
            st.len += (size_t)snprintf(buf + st.len, sizeof(buf) - st.len, "{3}%s}\r\n%s", ends[e],
                                       ends[e]);
        }
        check_stream(&st);

        /* Three lines fit (each with its literal), the fourth fails. */
        struct fc_ev evs[64];
        struct fc_list l = {evs, 0, 64, false};
        size_t used = 0, literals = 0;

        assert_null(fc_feed(&st.su, (const uint8_t *)buf, st.len, NULL, 0, &l, &used));
        for (size_t i = 0; i < l.n; i++)
            literals += l.v[i].kind == IMF_EV_LINE_END && l.v[i].literal_size == 3 &&
                        l.v[i].line_len >= max_line - 2;
        assert_int_equal(literals, 3);
        assert_int_equal(l.v[l.n - 1].kind, IMF_EV_ERROR);
        assert_int_equal(l.v[l.n - 1].error, IMF_FRAMER_LINE_TOO_LONG);
        assert_int_equal(l.v[l.n - 2].len, max_line);
    }
}

/* ------------------------------------------------------------------------ */

static size_t next_ev(struct imf_framer *fr, const char *s, struct imf_framer_ev *ev)
{
    return imf_framer_next(fr, (const uint8_t *)s, strlen(s), ev);
}

static void test_skip_literal_after_too_big(void **state)
{
    struct imf_framer fr;
    struct imf_framer_ev ev;
    const char *in = "A1 APPEND INBOX {100}\r\nA2 NOOP\r\n";
    size_t n;

    (void)state;
    imf_framer_init(&fr, IMF_FRAMER_COMMANDS, 0, 50);
    n = next_ev(&fr, in, &ev);
    assert_int_equal(ev.kind, IMF_EV_TEXT);
    assert_int_equal(n, 23);
    assert_false(imf_framer_at_message_start(&fr));
    assert_int_equal(next_ev(&fr, in + n, &ev), 0);
    assert_int_equal(ev.kind, IMF_EV_LINE_END);
    assert_int_equal(ev.literal_flags, IMF_LIT_PRESENT | IMF_LIT_TOO_BIG);
    assert_int_equal(ev.literal_size, 100);
    assert_false(ev.message_end);
    /* The proxy answers NO [TOOBIG]; the client sends no octets. */
    imf_framer_skip_literal(&fr);
    assert_true(imf_framer_at_message_start(&fr));
    assert_int_equal(next_ev(&fr, in + n, &ev), 9);
    assert_int_equal(ev.kind, IMF_EV_TEXT);
    assert_int_equal(next_ev(&fr, "", &ev), 0);
    assert_int_equal(ev.kind, IMF_EV_LINE_END);
    assert_true(ev.first_line);
    assert_true(ev.message_end);
    assert_int_equal(ev.line_len, 9);
    assert_true(imf_framer_at_message_start(&fr));
}

static void test_skip_literal_only_right_after_line_end(void **state)
{
    struct imf_framer fr;
    struct imf_framer_ev ev;

    (void)state;
    imf_framer_init(&fr, IMF_FRAMER_COMMANDS, 0, 0);
    /* At a message start there is nothing to skip. */
    imf_framer_skip_literal(&fr);
    assert_int_equal(next_ev(&fr, "a1 X {4}\r\n", &ev), 10);
    assert_int_equal(next_ev(&fr, "", &ev), 0);
    assert_int_equal(ev.kind, IMF_EV_LINE_END);
    assert_int_equal(next_ev(&fr, "ab", &ev), 2);
    assert_int_equal(ev.kind, IMF_EV_LITERAL);
    /* Half of the literal is consumed: skipping now would desynchronise. */
    imf_framer_skip_literal(&fr);
    assert_false(imf_framer_at_message_start(&fr));
    assert_int_equal(next_ev(&fr, "cd\r\n", &ev), 2);
    assert_int_equal(ev.kind, IMF_EV_LITERAL);
    assert_int_equal(next_ev(&fr, "\r\n", &ev), 0);
    assert_int_equal(ev.kind, IMF_EV_LITERAL_END);
}

static void test_at_message_start(void **state)
{
    struct imf_framer fr;
    struct imf_framer_ev ev;
    const char *in = "a1 LOGIN {1}\r\nu p\r\n";
    bool seen[IMF_EV_KIND_COUNT] = {false};
    size_t pos = 0, len = strlen(in);
    int calls = 0;

    (void)state;
    imf_framer_init(&fr, IMF_FRAMER_COMMANDS, 0, 0);
    assert_true(imf_framer_at_message_start(&fr));
    while (calls++ < 100) {
        size_t n = imf_framer_next(&fr, (const uint8_t *)in + pos, pos < len ? 1 : 0, &ev);

        pos += n;
        seen[ev.kind] = true;
        if (ev.kind == IMF_EV_NEED_MORE && pos == len)
            break;
        /* Only the final LINE_END ends the command. */
        assert_int_equal(imf_framer_at_message_start(&fr),
                         ev.kind == IMF_EV_LINE_END && ev.message_end);
    }
    assert_true(seen[IMF_EV_LITERAL_END]);
    assert_true(imf_framer_at_message_start(&fr));
}

static void test_error_is_sticky(void **state)
{
    struct imf_framer fr;
    struct imf_framer_ev ev;

    (void)state;
    imf_framer_init(&fr, IMF_FRAMER_COMMANDS, 0, 0);
    assert_int_equal(next_ev(&fr, "a1 X {x}\r\na2 NOOP\r\n", &ev), 10);
    assert_int_equal(ev.kind, IMF_EV_TEXT);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(next_ev(&fr, "a2 NOOP\r\n", &ev), 0);
        assert_int_equal(ev.kind, IMF_EV_ERROR);
        assert_int_equal(ev.error, IMF_FRAMER_LITERAL_MALFORMED);
        assert_false(imf_framer_at_message_start(&fr));
    }
    /* skip_literal cannot revive it. */
    imf_framer_skip_literal(&fr);
    assert_int_equal(next_ev(&fr, "", &ev), 0);
    assert_int_equal(ev.kind, IMF_EV_ERROR);
}

static void test_need_more_on_empty_input(void **state)
{
    struct imf_framer fr;
    struct imf_framer_ev ev;

    (void)state;
    for (int mode = 0; mode < IMF_FRAMER_MODE_COUNT; mode++) {
        imf_framer_init(&fr, (enum imf_framer_mode)mode, 100, 100);
        memset(&ev, 0xa5, sizeof(ev));
        assert_int_equal(imf_framer_next(&fr, NULL, 0, &ev), 0);
        assert_int_equal(ev.kind, IMF_EV_NEED_MORE);
        assert_int_equal(ev.len, 0);
        assert_true(imf_framer_at_message_start(&fr));
        /* Inside a literal too. */
        assert_int_equal(next_ev(&fr, "* X {3}\r\n", &ev), 9);
        assert_int_equal(imf_framer_next(&fr, NULL, 0, &ev), 0);
        assert_int_equal(ev.kind, IMF_EV_LINE_END);
        assert_int_equal(imf_framer_next(&fr, NULL, 0, &ev), 0);
        assert_int_equal(ev.kind, IMF_EV_NEED_MORE);
    }
}

static void test_line_too_long_without_lf(void **state)
{
    static uint8_t big[10 * 1024];
    struct imf_framer fr;
    struct imf_framer_ev ev;
    size_t pos = 0, text = 0, piece = 7;
    bool failed = false;

    (void)state;
    memset(big, 'a', sizeof(big));
    imf_framer_init(&fr, IMF_FRAMER_COMMANDS, 4096, 0);
    for (size_t fed = 0; fed < sizeof(big) && !failed; fed += piece) {
        size_t end = fed + piece < sizeof(big) ? fed + piece : sizeof(big);

        for (int guard = 0; guard < 16; guard++) {
            size_t n = imf_framer_next(&fr, big + pos, end - pos, &ev);

            pos += n;
            if (ev.kind == IMF_EV_TEXT)
                text += n;
            if (ev.kind == IMF_EV_ERROR) {
                failed = true;
                assert_int_equal(ev.error, IMF_FRAMER_LINE_TOO_LONG);
                /* Reported with the piece that holds byte 4097, not at some LF. */
                assert_true(fed <= 4096 && end > 4096);
                break;
            }
            if (ev.kind == IMF_EV_NEED_MORE)
                break;
        }
    }
    assert_true(failed);
    assert_int_equal(text, 4096);
    assert_int_equal(pos, 4096);
}

static void test_name_tables(void **state)
{
    (void)state;
    for (int i = 0; i < IMF_EV_KIND_COUNT; i++)
        assert_non_null(imf_framer_ev_names[i]);
    for (int i = 0; i < IMF_FRAMER_ERROR_COUNT; i++)
        assert_non_null(imf_framer_error_names[i]);
    assert_string_equal(imf_framer_ev_names[IMF_EV_LINE_END], "line_end");
    assert_string_equal(imf_framer_error_names[IMF_FRAMER_LITERAL_MALFORMED], "literal_malformed");
}

int main(void)
{
    static const struct CMUnitTest extra[] = {
        cmocka_unit_test(test_skip_literal_after_too_big),
        cmocka_unit_test(test_skip_literal_only_right_after_line_end),
        cmocka_unit_test(test_at_message_start),
        cmocka_unit_test(test_error_is_sticky),
        cmocka_unit_test(test_need_more_on_empty_input),
        cmocka_unit_test(test_line_too_long_without_lf),
        cmocka_unit_test(test_name_tables),
        cmocka_unit_test(test_long_lines_near_limit),
    };
    struct CMUnitTest tests[NSTREAMS + sizeof(extra) / sizeof(extra[0])];
    size_t n_hand = 0, n_cmd = 0;
    int rc;

    for (size_t i = 0; i < NSTREAMS; i++) {
        tests[i] = (struct CMUnitTest){
            .name = corpus[i].name,
            .test_func = test_stream,
            .initial_state = (void *)&corpus[i],
        };
        n_hand += corpus[i].expect != NULL;
        n_cmd += corpus[i].su.mode == IMF_FRAMER_COMMANDS;
    }
    memcpy(tests + NSTREAMS, extra, sizeof(extra));
    rc = cmocka_run_group_tests_name("framer", tests, NULL, NULL);
    printf("# framer: %zu streams (%zu corpus: %zu commands, %zu responses, %zu with hand-written "
           "events; %zu generated), %zu two-piece split points, %zu split feedings in all\n",
           total_streams, NSTREAMS, n_cmd, NSTREAMS - n_cmd, n_hand, total_streams - NSTREAMS,
           total_split_points, total_feedings);
    return rc;
}
