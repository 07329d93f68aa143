/* unit.gate: the session's IMAP policy, driven through a mini session
 * (gate_driver.h) that applies the gate's decisions as src/session.c does.
 *
 * Each case plays a script of client bytes, backend bytes and IDLE timer
 * ticks, then checks what reached the backend and the client. Every script
 * is played twice, each step whole and then one byte at a time, and both
 * plays must give the same bytes on both sides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gate_driver.h"

struct step {
    char who; /* 'C' client bytes, 'B' backend bytes, 'T' IDLE timer, 'I' the proxy's ID */
    const char *data;
    size_t len;
};

#define C(str)                      \
    {                               \
        'C', (str), sizeof(str) - 1 \
    }
#define B(str)                      \
    {                               \
        'B', (str), sizeof(str) - 1 \
    }
#define TICK         \
    {                \
        'T', NULL, 0 \
    }
#define SEND_ID      \
    {                \
        'I', NULL, 0 \
    }

#define GREET     "* OK [CAPABILITY IMAP4rev1] ready\r\n"
#define GREET_LP  "* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n"
#define GREET_PRE "* PREAUTH [CAPABILITY IMAP4rev1] logged in\r\n"
#define GREET_EX55 \
    "* OK Microsoft Exchange Server IMAP4rev1 server version 5.5.2653.23 (x) ready\r\n"

/* A session as the default config makes it, on a plain listener. */
static struct imf_gate_params defaults(void)
{
    struct imf_gate_params p = {
        .strip_client_id = true,
        .quirks = IMF_QUIRKS_AUTO,
        .pipelining = true,
    };
    return p;
}

static void play_one(struct gd *d, const struct imf_gate_params *p, const struct step *st, size_t n,
                     bool bytewise)
{
    gd_init(d, p, 0);
    for (size_t i = 0; i < n; i++) {
        switch (st[i].who) {
        case 'T':
            gd_idle_timer(d);
            break;
        case 'I':
            gd_send_id(d, "192.0.2.7", 40000);
            break;
        default:
            for (size_t k = 0; k < st[i].len; k += bytewise ? 1 : st[i].len) {
                size_t m = bytewise ? 1 : st[i].len;
                if (st[i].who == 'C')
                    gd_client(d, st[i].data + k, m);
                else
                    gd_backend(d, st[i].data + k, m);
            }
        }
    }
}

/* Plays the script whole into d (the caller frees it), and one byte at a
 * time into a second session that must end the same. */
static void play(struct gd *d, const struct imf_gate_params *p, const struct step *st, size_t n)
{
    play_one(d, p, st, n, false);
    struct gd b;
    play_one(&b, p, st, n, true);
    assert_int_equal(d->to_backend.len, b.to_backend.len);
    assert_memory_equal(d->to_backend.p, b.to_backend.p, d->to_backend.len);
    assert_int_equal(d->to_client.len, b.to_client.len);
    assert_memory_equal(d->to_client.p, b.to_client.p, d->to_client.len);
    assert_int_equal(d->closed, b.closed);
    assert_int_equal(d->tls, b.tls);
    assert_int_equal(imf_gate_authenticated(&d->g), imf_gate_authenticated(&b.g));
    gd_free(&b);
}

#define PLAY(d, p, ...)                                             \
    do {                                                            \
        const struct step steps_[] = {__VA_ARGS__};                 \
        play((d), (p), steps_, sizeof(steps_) / sizeof(steps_[0])); \
    } while (0)

static void backend_is(const struct gd *d, const char *want)
{
    size_t n = strlen(want);
    if (d->to_backend.len != n || (n > 0 && memcmp(d->to_backend.p, want, n) != 0))
        fail_msg("backend got [%.*s]\nwanted [%s]", (int)d->to_backend.len,
                 (const char *)d->to_backend.p, want);
}

static bool client_has(const struct gd *d, const char *want)
{
    size_t n = strlen(want);
    for (size_t i = 0; n <= d->to_client.len && i <= d->to_client.len - n; i++)
        if (memcmp(d->to_client.p + i, want, n) == 0)
            return true;
    return false;
}

static void client_got(const struct gd *d, const char *want)
{
    if (!client_has(d, want))
        fail_msg("client got [%.*s]\nwanted in it [%s]", (int)d->to_client.len,
                 (const char *)d->to_client.p, want);
}

static void client_lacks(const struct gd *d, const char *unwanted)
{
    if (client_has(d, unwanted))
        fail_msg("client got [%.*s]\nwith [%s] in it", (int)d->to_client.len,
                 (const char *)d->to_client.p, unwanted);
}

/* Lines that are not "tag SP command" get BAD and never reach the backend;
 * the next good command does. */
static void test_unparsable_lines(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    static const struct {
        const char *line;
        size_t len;
        const char *answer;
    } bad[] = {
#define L(s, a) {(s), sizeof(s) - 1, (a)}
        L("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa NOOP\r\n",
          "* BAD Invalid tag"), /* a 65-char tag */
        L("a  NOOP\r\n", "a BAD Invalid command name"),
        L("\r\n", "* BAD Invalid tag"),
        L("\n", "* BAD Invalid tag"),
        L("a\r\n", "* BAD Invalid tag"),
        L("a NO\0OP\r\n", "a BAD Invalid command name"),
        L("a NOOP x\0y\r\n", "a BAD Invalid characters"),
        L("a NOOP x\ry\r\n", "a BAD Invalid characters"),
        L("a NOOP\r\r\n", "a BAD"),
        L("a+b NOOP\r\n", "* BAD Invalid tag"),
#undef L
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct gd d;
        const struct step steps[] = {B(GREET), {'C', bad[i].line, bad[i].len}, C("b NOOP\r\n")};
        play(&d, &p, steps, 3);
        backend_is(&d, "b NOOP\r\n");
        client_got(&d, bad[i].answer);
        assert_int_equal(d.refusals, 1);
        gd_free(&d);
    }
    /* A 64-char tag is fine. */
    struct gd d;
    PLAY(&d, &p, B(GREET),
         C("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa NOOP\r\n"));
    backend_is(&d, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa NOOP\r\n");
    gd_free(&d);
    /* Nothing is framed before the greeting. */
    PLAY(&d, &p, C("a NOOP\r\n"));
    backend_is(&d, "");
    assert_int_equal(d.last_wait, IMF_GATE_WAIT_GREETING);
    gd_free(&d);
}

/* A tag in flight is refused; once completed it may be used again. */
static void test_tag_in_flight(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a NOOP\r\na SELECT x\r\n"));
    backend_is(&d, "a NOOP\r\n");
    client_got(&d, "a BAD Tag already in use");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a NOOP\r\n"), B("a OK done\r\n"), C("a NOOP\r\n"));
    backend_is(&d, "a NOOP\r\na NOOP\r\n");
    gd_free(&d);
    /* The proxy's own tags are reserved. */
    PLAY(&d, &p, B(GREET), C("imapfront-id NOOP\r\n"));
    backend_is(&d, "");
    client_got(&d, "imapfront-id BAD");
    gd_free(&d);
}

/* One login at a time: a pipelined second LOGIN (or AUTHENTICATE) while
 * the first awaits its answer is refused, never forwarded; after the
 * answer the next one goes. */
static void test_one_login_at_a_time(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a LOGIN demo x\r\nb LOGIN demo y\r\nc AUTHENTICATE PLAIN\r\n"));
    backend_is(&d, "a LOGIN demo x\r\n");
    client_got(&d, "b BAD A login is already in progress");
    client_got(&d, "c BAD A login is already in progress");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a LOGIN demo x\r\n"), B("a NO wrong\r\n"), C("b LOGIN demo y\r\n"));
    backend_is(&d, "a LOGIN demo x\r\nb LOGIN demo y\r\n");
    gd_free(&d);
}

/* require_tls: LOGIN and AUTHENTICATE before TLS get NO [PRIVACYREQUIRED]
 * and never reach the backend, whatever literal follows. */
static void test_login_before_tls(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.require_tls = true;
    p.starttls_listener = true;
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a LOGIN user pass\r\nb login user pass\r\n"),
         C("c AUTHENTICATE PLAIN\r\nd NOOP\r\n"));
    backend_is(&d, "d NOOP\r\n");
    client_got(&d, "a NO [PRIVACYREQUIRED]");
    client_got(&d, "b NO [PRIVACYREQUIRED]");
    client_got(&d, "c NO [PRIVACYREQUIRED]");
    gd_free(&d);

    /* {N+}: the octets follow at once; they and the rest are discarded,
     * then the answer goes. */
    PLAY(&d, &p, B(GREET), C("a LOGIN {4+}\r\nuser {8+}\r\na NOOP\r\n\r\nb NOOP\r\n"));
    backend_is(&d, "b NOOP\r\n");
    client_got(&d, "a NO [PRIVACYREQUIRED]");
    assert_int_equal(d.discarded, 12);
    gd_free(&d);

    /* {N}: the client waits for a "+" that never comes; the NO tells it. */
    PLAY(&d, &p, B(GREET), C("a LOGIN {4}\r\n"), C("b NOOP\r\n"));
    backend_is(&d, "b NOOP\r\n");
    client_got(&d, "a NO [PRIVACYREQUIRED]");
    client_lacks(&d, "+ ");
    gd_free(&d);

    /* After STARTTLS the same LOGIN goes. */
    PLAY(&d, &p, B(GREET), C("s STARTTLS\r\n"), C("a LOGIN user pass\r\n"));
    client_got(&d, "s OK Begin TLS");
    assert_true(d.tls);
    backend_is(&d, "a LOGIN user pass\r\n");
    gd_free(&d);

    /* Without require_tls it goes at once. */
    p.require_tls = false;
    PLAY(&d, &p, B(GREET), C("a LOGIN user pass\r\n"));
    backend_is(&d, "a LOGIN user pass\r\n");
    gd_free(&d);
}

/* {N+} to a backend without LITERAL+ becomes {N}, and the octets wait for
 * the backend's "+", which the client never sees. */
static void test_literal_plus_made_sync(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n"));
    backend_is(&d, "a APPEND INBOX {5}\r\n");
    assert_int_equal(d.last_wait, IMF_GATE_WAIT_PLUS);
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n"), B("+ go ahead\r\n"));
    backend_is(&d, "a APPEND INBOX {5}\r\nhello\r\nb NOOP\r\n");
    client_lacks(&d, "go ahead");
    assert_true(d.actions & IMF_GATE_CONVERTED);
    gd_free(&d);

    /* LITERAL+ in the greeting: as is. */
    PLAY(&d, &p, B(GREET_LP), C("a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n"));
    backend_is(&d, "a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n");
    assert_false(d.actions & IMF_GATE_CONVERTED);
    gd_free(&d);

    /* A synchronising literal waits for the backend's "+", which the
     * client sees. */
    PLAY(&d, &p, B(GREET_LP), C("a APPEND INBOX {5}\r\n"), C("hello\r\n"));
    backend_is(&d, "a APPEND INBOX {5}\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET_LP), C("a APPEND INBOX {5}\r\n"), B("+ send\r\n"), C("hello\r\n"));
    backend_is(&d, "a APPEND INBOX {5}\r\nhello\r\n");
    client_got(&d, "+ send\r\n");
    gd_free(&d);
}

/* The backend refuses a literal with a tagged NO instead of "+". */
static void test_refused_literal(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    /* The client used {5+}: its octets came already; they are discarded. */
    PLAY(&d, &p, B(GREET), C("a APPEND INBOX {5+}\r\nb OK x\r\nc NOOP\r\n"),
         B("a NO [TOOBIG] no\r\n"));
    backend_is(&d, "a APPEND INBOX {5}\r\nc NOOP\r\n");
    client_got(&d, "a NO [TOOBIG] no\r\n");
    assert_int_equal(d.discarded, 5);
    gd_free(&d);
    /* The client used {5}: it sends no octets; its next command goes. */
    PLAY(&d, &p, B(GREET), C("a APPEND INBOX {5}\r\n"), B("a NO [TOOBIG] no\r\n"), C("c NOOP\r\n"));
    backend_is(&d, "a APPEND INBOX {5}\r\nc NOOP\r\n");
    client_got(&d, "a NO [TOOBIG] no\r\n");
    gd_free(&d);
}

/* After AUTHENTICATE and "+", a base64 line goes; anything else becomes
 * "*" (cancel) and its literal never reaches the backend. */
static void test_sasl_lines(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("AHVzZXIAcGFzcw==\r\n"),
         B("a OK done\r\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\nAHVzZXIAcGFzcw==\r\n");
    assert_true(imf_gate_authenticated(&d.g));
    gd_free(&d);

    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("abc {5}\r\n"),
         C("b NOOP\r\n"));
    /* "b NOOP" waits: the backend has yet to answer the cancelled exchange. */
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n*\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("abc {5}\r\n"),
         B("a BAD cancelled\r\n"), C("b NOOP\r\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n");
    assert_false(imf_gate_authenticated(&d.g));
    gd_free(&d);

    /* {5+}: the octets are swallowed. */
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("abc {5+}\r\nhello\r\n"),
         B("a BAD cancelled\r\n"), C("b NOOP\r\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n");
    assert_int_equal(d.discarded, 5);
    gd_free(&d);

    /* Before the "+", nothing the client sends moves. */
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\nb LOGIN u p\r\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n");
    assert_int_equal(d.last_wait, IMF_GATE_WAIT_PLUS);
    gd_free(&d);
}

/* idle = poll: the proxy idles for the backend; only DONE ends it well. */
static void test_idle_poll(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.idle_poll = true;
    struct gd d;
    PLAY(&d, &p, B(GREET_PRE), C("i IDLE\r\n"), TICK, B("imapfront-poll OK done\r\n"),
         C("DONE\r\n"));
    backend_is(&d, "imapfront-poll NOOP\r\n");
    client_got(&d, "+ idling\r\n");
    client_got(&d, "i OK IDLE terminated\r\n");
    client_lacks(&d, "imapfront-poll");
    gd_free(&d);

    /* A command instead of DONE is not forwarded and does not end the
     * IDLE (only DONE does); the client is told. */
    PLAY(&d, &p, B(GREET_PRE), C("i IDLE\r\n"), C("x LOGOUT\r\n"), C("DONE\r\n"), C("y NOOP\r\n"));
    backend_is(&d, "y NOOP\r\n");
    client_got(&d, "* BAD Expected DONE to end IDLE");
    client_got(&d, "i OK IDLE terminated");
    gd_free(&d);

    /* Not before login. */
    PLAY(&d, &p, B(GREET), C("i IDLE\r\n"), C("DONE\r\n"));
    backend_is(&d, "");
    client_got(&d, "i BAD IDLE is valid only after login");
    gd_free(&d);
}

/* idle = on: while the client idles only DONE goes to the backend. */
static void test_idle_only_done(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET_PRE), C("i IDLE\r\n"), B("+ idling\r\n"), C("x NOOP\r\n"), C("done\r\n"),
         B("i OK done\r\n"), C("y NOOP\r\n"));
    backend_is(&d, "i IDLE\r\ndone\r\ny NOOP\r\n");
    client_got(&d, "* BAD Expected DONE to end IDLE");
    client_got(&d, "+ idling\r\n");
    gd_free(&d);
}

/* idle_refresh: the proxy's DONE and IDLE are its own business, and no
 * second DONE follows the client's. */
static void test_idle_refresh(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.idle_refresh = true;
    struct gd d;
    /* The client's DONE went: a refresh tick sends nothing. */
    PLAY(&d, &p, B(GREET_PRE), C("i IDLE\r\n"), B("+ idling\r\n"), C("DONE\r\n"), TICK);
    backend_is(&d, "i IDLE\r\nDONE\r\n");
    gd_free(&d);
    /* Half a DONE received: no refresh either. */
    PLAY(&d, &p, B(GREET_PRE), C("i IDLE\r\n"), B("+ idling\r\n"), C("DO"), TICK);
    backend_is(&d, "i IDLE\r\n");
    gd_free(&d);
    /* A refresh; the client's DONE waits until the backend idles again. */
    PLAY(&d, &p, B(GREET_PRE), C("i IDLE\r\n"), B("+ idling\r\n"), TICK, C("DONE\r\n"),
         B("i OK refreshed\r\n"), B("+ idling again\r\n"), B("i OK done\r\n"));
    backend_is(&d, "i IDLE\r\nDONE\r\ni IDLE\r\nDONE\r\n");
    client_lacks(&d, "refreshed");
    client_lacks(&d, "again");
    client_got(&d, "i OK done\r\n");
    assert_false(imf_gate_idling(&d.g));
    gd_free(&d);
}

/* STARTTLS only before login, before TLS, with nothing in flight or
 * pending from the backend. */
static void test_starttls_refusals(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.starttls_listener = true;
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a NOOP\r\ns STARTTLS\r\n"));
    client_got(&d, "s BAD STARTTLS is valid only with no command in progress");
    assert_false(d.tls);
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("s STARTTLS\r\n"), C("t STARTTLS\r\n"));
    client_got(&d, "t BAD STARTTLS is not available: TLS is already active");
    gd_free(&d);
    PLAY(&d, &p, B(GREET_PRE), C("s STARTTLS\r\n"));
    client_got(&d, "s BAD STARTTLS is valid only before login");
    gd_free(&d);
    /* The backend is mid-response: refused, and the answer waits for the
     * end of the FETCH literal. */
    PLAY(&d, &p, B(GREET), B("* 1 FETCH (BODY[] {10}\r\nabc"), C("s STARTTLS\r\n"));
    client_lacks(&d, "s BAD");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), B("* 1 FETCH (BODY[] {10}\r\nabc"), C("s STARTTLS\r\n"),
         B("defghij)\r\n"));
    client_got(&d, "abcdefghij)\r\ns BAD STARTTLS is valid only with no command in progress");
    assert_false(d.tls);
    gd_free(&d);
    /* Not on a listener without STARTTLS. */
    p.starttls_listener = false;
    PLAY(&d, &p, B(GREET), C("s STARTTLS\r\n"));
    client_got(&d, "s BAD STARTTLS is not available here");
    backend_is(&d, "");
    gd_free(&d);
}

/* COMPRESS at the proxy: authenticated, over TLS, nothing in flight, once. */
static void test_compress(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.compress = true;
    p.implicit_tls = true;
    struct gd d;
    PLAY(&d, &p, B(GREET), C("c COMPRESS DEFLATE\r\n"));
    client_got(&d, "c BAD COMPRESS is valid only after login");
    assert_false(d.compress_on);
    gd_free(&d);
    PLAY(&d, &p, B(GREET_PRE), C("a NOOP\r\nc COMPRESS DEFLATE\r\n"));
    client_got(&d, "c BAD COMPRESS is valid only with no command in progress");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a LOGIN u p\r\n"), B("a OK in\r\n"), C("c COMPRESS DEFLATE\r\n"),
         C("d COMPRESS DEFLATE\r\n"));
    client_got(&d, "c OK DEFLATE active\r\n");
    client_got(&d, "d NO [COMPRESSIONACTIVE]");
    assert_true(d.compress_on);
    backend_is(&d, "a LOGIN u p\r\n");
    gd_free(&d);
    /* Without TLS, or without [imap] compress: never, not even the
     * backend's. */
    p.implicit_tls = false;
    PLAY(&d, &p, B(GREET_PRE), C("c COMPRESS DEFLATE\r\n"));
    client_got(&d, "c NO [CANNOT]");
    backend_is(&d, "");
    gd_free(&d);
    p.implicit_tls = true;
    p.compress = false;
    PLAY(&d, &p, B(GREET_PRE), C("c COMPRESS DEFLATE\r\n"));
    client_got(&d, "c NO [CANNOT]");
    backend_is(&d, "");
    gd_free(&d);
}

/* Authentication comes only from the tagged OK of a LOGIN in flight, or a
 * PREAUTH greeting. */
static void test_authentication_source(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a LOGIN u p\r\n"), B("b OK LOGIN completed\r\n"));
    assert_false(imf_gate_authenticated(&d.g));
    assert_true(d.effects & IMF_GATE_R_STRAY);
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a LOGIN u p\r\n"), B("a NO bad password\r\n"));
    assert_false(imf_gate_authenticated(&d.g));
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a NOOP\r\n"), B("a OK done\r\n"));
    assert_false(imf_gate_authenticated(&d.g));
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a LOGIN u p\r\n"), B("* OK [ALERT] hi\r\n"), B("a OK in\r\n"));
    assert_true(imf_gate_authenticated(&d.g));
    gd_free(&d);
    PLAY(&d, &p, B(GREET_PRE));
    assert_true(imf_gate_authenticated(&d.g));
    gd_free(&d);
    /* A PREAUTH later than the greeting is not a greeting. */
    PLAY(&d, &p, B(GREET), B("* PREAUTH now\r\n"));
    assert_false(imf_gate_authenticated(&d.g));
    gd_free(&d);
}

/* quirks = auto: an Exchange 5.5 greeting turns pipelining off. */
static void test_pipelining(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET_EX55), C("a NOOP\r\nb NOOP\r\n"));
    backend_is(&d, "a NOOP\r\n");
    assert_int_equal(d.last_wait, IMF_GATE_HOLD);
    assert_int_equal(imf_gate_profile(&d.g), IMF_PROFILE_EXCHANGE55);
    gd_free(&d);
    PLAY(&d, &p, B(GREET_EX55), C("a NOOP\r\nb NOOP\r\n"), B("a OK done\r\n"));
    backend_is(&d, "a NOOP\r\nb NOOP\r\n");
    gd_free(&d);
    /* The proxy's ID first, then the client's command. */
    PLAY(&d, &p, SEND_ID, B(GREET_EX55), C("a NOOP\r\n"), B("* ID NIL\r\n"),
         B("imapfront-id OK\r\n"));
    backend_is(&d, "imapfront-id ID (\"x-originating-ip\" \"192.0.2.7\" "
                   "\"x-originating-port\" \"40000\")\r\na NOOP\r\n");
    client_lacks(&d, "* ID");
    client_lacks(&d, "imapfront-id");
    gd_free(&d);
    /* Exchange 5.5 has no LITERAL+: {N+} waits for "+". */
    PLAY(&d, &p, B(GREET_EX55), C("a APPEND x {2+}\r\nhi\r\n"));
    backend_is(&d, "a APPEND x {2}\r\n");
    gd_free(&d);
    /* A generic greeting keeps pipelining. */
    PLAY(&d, &p, B(GREET), C("a NOOP\r\nb NOOP\r\n"));
    backend_is(&d, "a NOOP\r\nb NOOP\r\n");
    assert_int_equal(imf_gate_profile(&d.g), IMF_PROFILE_GENERIC);
    gd_free(&d);
    /* A written pipelining key wins over quirks. */
    p.pipelining = true;
    p.pipelining_set = true;
    PLAY(&d, &p, B(GREET_EX55), C("a NOOP\r\nb NOOP\r\n"));
    backend_is(&d, "a NOOP\r\nb NOOP\r\n");
    gd_free(&d);
    /* quirks = none: nothing from the greeting. */
    p = defaults();
    p.quirks = IMF_QUIRKS_NONE;
    PLAY(&d, &p, B(GREET_EX55), C("a NOOP\r\nb NOOP\r\n"));
    backend_is(&d, "a NOOP\r\nb NOOP\r\n");
    gd_free(&d);
}

/* The client may not say where it comes from: the proxy does. */
static void test_client_id_stripped(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    PLAY(&d, &p, B(GREET),
         C("a ID (\"name\" \"mutt\" \"X-Originating-IP\" \"10.9.8.7\" \"version\" \"2\")\r\n"));
    backend_is(&d, "a ID (\"name\" \"mutt\" \"version\" \"2\")\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a ID (\"x-originating-ip\" \"10.9.8.7\")\r\n"));
    backend_is(&d, "a ID NIL\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a ID {5}\r\n"));
    backend_is(&d, "");
    client_got(&d, "a BAD ID parameters must be quoted strings");
    gd_free(&d);
    /* Found by fuzz_gate: fields in a {N+} literal become "ID NIL", and
     * after a bare LF the rewrite once left "a ID NIL\r" and a NUL (one
     * octet short) in front of the next command. */
    PLAY(&d, &p, B(GREET), C("a ID {2+}\nxx\n"));
    backend_is(&d, "a ID NIL\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("aUa ID {2-}\r\nxx\r\n"));
    backend_is(&d, "aUa ID NIL\r\n");
    gd_free(&d);
}

static bool refuse_every_login(void *ctx, const struct imf_gate_login *l)
{
    (void)ctx;
    (void)l;
    return true;
}

/* A SASL response the throttle refuses, or one that is not base64, becomes
 * "*" with a CRLF whatever ending the client used; an empty response holds
 * no secret and has no room for the "*": it goes as it is. */
static void test_sasl_cancel_line_endings(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.login_refused = refuse_every_login;
    struct gd d;
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\n"), B("+ \r\n"), C("AHVzZXIAcGFzcw==\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n*\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("Q\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n*\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n\r\n");
    gd_free(&d);
    p.login_refused = NULL;
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("~\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n*\r\n");
    gd_free(&d);
    /* Base64's letters in a form that is not base64 (found by attack 7). */
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("a=bc\r\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\n*\r\n");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a AUTHENTICATE PLAIN\r\n"), B("+ \r\n"), C("QQ==\r\n"));
    backend_is(&d, "a AUTHENTICATE PLAIN\r\nQQ==\r\n");
    gd_free(&d);
}

/* Found by fuzz_gate (fails until gate.c is fixed): an ID whose list is
 * empty, "()", becomes "NIL", one byte longer, though the gate promises
 * that a rewrite only shrinks the line. strip_id() writes one byte past
 * the line and eats its LF: with a bare LF the backend reads the next
 * command as part of this line. */
static void test_client_id_empty_list(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    struct gd d;
    /* "()" is not an ID list: refused, never rewritten (NIL is longer). */
    PLAY(&d, &p, B(GREET), C("a ID ()\r\n"));
    backend_is(&d, "");
    client_got(&d, "a BAD Invalid ID parameters");
    gd_free(&d);
    PLAY(&d, &p, B(GREET), C("a ID ()\nb NOOP\r\n"));
    backend_is(&d, "b NOOP\r\n");
    gd_free(&d);
}

/* max_command_size counts every line and literal of a command. */
static void test_max_command_size(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.max_command = 30;
    struct gd d;
    /* 21 + 10 > 30: refused before anything goes. */
    PLAY(&d, &p, B(GREET_LP), C("a APPEND INBOX {10}\r\n"), C("b NOOP\r\n"));
    backend_is(&d, "b NOOP\r\n");
    client_got(&d, "a NO [TOOBIG]");
    gd_free(&d);
    /* 10 + 5 + 14 + 5 > 30 once the second literal is announced: the
     * first part went already, so the session ends. */
    PLAY(&d, &p, B(GREET_LP), C("a X {5+}\r\nhello abcdef {5+}\r\nworld\r\n"));
    backend_is(&d, "a X {5+}\r\nhello");
    assert_true(d.closed);
    client_got(&d, "* BYE [TOOBIG]");
    gd_free(&d);
    /* 10 + 5 + 14 + 5 + 2 = 36: the last CRLF counts too. */
    p.max_command = 35;
    PLAY(&d, &p, B(GREET_LP), C("a X {5+}\r\nhello abcdef {5+}\r\nworld\r\n"));
    backend_is(&d, "a X {5+}\r\nhello abcdef {5+}\r\nworld");
    assert_true(d.closed);
    gd_free(&d);
    p.max_command = 36;
    PLAY(&d, &p, B(GREET_LP), C("a X {5+}\r\nhello abcdef {5+}\r\nworld\r\n"));
    backend_is(&d, "a X {5+}\r\nhello abcdef {5+}\r\nworld\r\n");
    assert_false(d.closed);
    gd_free(&d);
}

/* max_literal_size: a {N} over it gets NO, a {N+} over it is swallowed. */
static void test_max_literal_size(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    p.max_literal = 4;
    struct gd d;
    PLAY(&d, &p, B(GREET_LP), C("a APPEND x {5}\r\n"), C("b APPEND x {5+}\r\nhello\r\n"),
         C("c APPEND x {4+}\r\nhell\r\n"));
    backend_is(&d, "c APPEND x {4+}\r\nhell\r\n");
    client_got(&d, "a NO [TOOBIG]");
    client_got(&d, "b BAD [TOOBIG]");
    gd_free(&d);
}

/* ---- login attempts: the user name, never the password ------------------- */

#define PW   "s3cretPW"
#define PW64 "czNjcmV0UFc=" /* base64 of PW */

struct login_want {
    const char *user, *authz, *mech;
    enum imf_login_result result;
    bool secret; /* a password (hash) was seen */
};

static bool mem_has(const void *hay, size_t hay_len, const char *needle)
{
    size_t n = strlen(needle);
    const uint8_t *h = hay;
    for (size_t i = 0; n <= hay_len && i <= hay_len - n; i++)
        if (memcmp(h + i, needle, n) == 0)
            return true;
    return false;
}

/* The gate's memory (its struct, the login attempt, the commands in
 * flight) holds none of secrets (NULL-terminated). */
static void gate_lacks(const struct gd *d, const char *const *secrets)
{
    const struct imf_gate_login *l = imf_gate_login(&d->g);
    for (size_t k = 0; secrets[k] != NULL; k++) {
        if (mem_has(&d->g, sizeof(d->g), secrets[k]))
            fail_msg("the gate struct holds [%s]", secrets[k]);
        if (l != NULL && mem_has(l, sizeof(*l), secrets[k]))
            fail_msg("the login attempt holds [%s]", secrets[k]);
        if (d->g.inflight != NULL &&
            mem_has(d->g.inflight, d->g.inflight_cap * sizeof(*d->g.inflight), secrets[k]))
            fail_msg("the commands in flight hold [%s]", secrets[k]);
    }
}

/* Plays the script whole and one byte at a time; each play must end with
 * the login attempt w, a gate without the secrets, and the same password
 * hash. Returns that hash. */
static uint64_t check_login(const struct imf_gate_params *p, const struct step *st, size_t n,
                            const struct login_want *w, const char *const *secrets)
{
    uint64_t hash[2];
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct gd d;
        play_one(&d, p, st, n, bytewise != 0);
        const struct imf_gate_login *l = imf_gate_login(&d.g);
        assert_non_null(l);
        assert_true(l->done);
        assert_string_equal(l->user, w->user);
        assert_string_equal(l->authz, w->authz);
        assert_string_equal(l->mech, w->mech);
        assert_int_equal(l->result, w->result);
        assert_int_equal(l->secret_hash != 0, w->secret);
        assert_true(d.effects & IMF_GATE_R_LOGIN);
        hash[bytewise] = l->secret_hash;
        gate_lacks(&d, secrets);
        /* Cleared, the attempt is gone. */
        imf_gate_login_clear(&d.g);
        assert_null(imf_gate_login(&d.g));
        gd_free(&d);
    }
    assert_true(hash[0] == hash[1]);
    return hash[0];
}

/* Plays the steps (standard C: a compound literal and its length). */
#define LOGIN_CASE(p, want, secrets, ...)                                                 \
    check_login((p), (const struct step[]){__VA_ARGS__},                                  \
                sizeof((const struct step[]){__VA_ARGS__}) / sizeof(struct step), (want), \
                (secrets))

static const char *const login_secrets[] = {PW, PW64, NULL};

/* LOGIN: the user as an atom, a quoted string with escapes, and literals
 * of every form; the password in any of those forms hashes the same. */
static void test_login_user_name(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    const struct login_want ok = {"alice", "", "LOGIN", IMF_LOGIN_OK, true};
    const struct login_want no = {"alice", "", "LOGIN", IMF_LOGIN_FAILED, true};
    uint64_t h = LOGIN_CASE(&p, &ok, login_secrets, B(GREET), C("a LOGIN alice " PW "\r\n"),
                            B("a OK done\r\n"));
    assert_true(h != 0);
    assert_true(LOGIN_CASE(&p, &no, login_secrets, B(GREET), C("a LOGIN \"alice\" \"" PW "\"\r\n"),
                           B("a NO [AUTHENTICATIONFAILED] bad\r\n")) == h);
    /* Synchronising literals: name and password. */
    assert_true(LOGIN_CASE(&p, &no, login_secrets, B(GREET), C("a LOGIN {5}\r\n"), B("+ go\r\n"),
                           C("alice {8}\r\n"), B("+ go\r\n"), C(PW "\r\n"),
                           B("a NO [AUTHENTICATIONFAILED] bad\r\n")) == h);
    /* Non-synchronising literals, where the backend takes them. */
    assert_true(LOGIN_CASE(&p, &ok, login_secrets, B(GREET_LP),
                           C("a LOGIN {5+}\r\nalice {8+}\r\n" PW "\r\n"), B("a OK done\r\n")) == h);
    /* ... and where the proxy makes them synchronising. */
    assert_true(LOGIN_CASE(&p, &ok, login_secrets, B(GREET), C("a LOGIN {5+}\r\n"), B("+ go\r\n"),
                           C("alice " PW "\r\n"), B("a OK done\r\n")) == h);
    /* An atom name, a literal password; a literal name, a quoted password. */
    assert_true(LOGIN_CASE(&p, &ok, login_secrets, B(GREET_LP),
                           C("a LOGIN alice {8+}\r\n" PW "\r\n"), B("a OK done\r\n")) == h);
    assert_true(LOGIN_CASE(&p, &ok, login_secrets, B(GREET_LP),
                           C("a LOGIN {5+}\r\nalice \"" PW "\"\r\n"), B("a OK done\r\n")) == h);
    /* Escapes in quoted strings: the name as the server reads it. */
    const struct login_want esc = {"al\"i ce\\", "", "LOGIN", IMF_LOGIN_OK, true};
    const char *const esc_secrets[] = {"p\"w \\x", "p\\\"w \\\\x", NULL};
    LOGIN_CASE(&p, &esc, esc_secrets, B(GREET),
               C("a LOGIN \"al\\\"i ce\\\\\" \"p\\\"w \\\\x\"\r\n"), B("a OK done\r\n"));
    /* A different password hashes differently. */
    assert_true(LOGIN_CASE(&p, &no, login_secrets, B(GREET), C("a LOGIN alice other\r\n"),
                           B("a NO bad\r\n")) != h);
}

/* AUTHENTICATE: PLAIN (initial response, continuation, authorization
 * identity), LOGIN, XOAUTH2's user=, OAUTHBEARER's a=; the mechanism name
 * in capitals whatever the client wrote. */
static void test_authenticate_user_name(void **state)
{
    (void)state;
    struct imf_gate_params p = defaults();
    /* "admin\0alice\0s3cretPW" and "\0alice\0s3cretPW" */
    const char *const plain_secrets[] = {
        PW, PW64, "YWRtaW4AYWxpY2UAczNjcmV0UFc=", "AGFsaWNlAHMzY3JldFBX", NULL};
    const struct login_want authz = {"alice", "admin", "PLAIN", IMF_LOGIN_OK, true};
    const struct login_want plain_no = {"alice", "", "PLAIN", IMF_LOGIN_FAILED, true};
    uint64_t h =
        LOGIN_CASE(&p, &authz, plain_secrets, B(GREET),
                   C("a AUTHENTICATE PLAIN YWRtaW4AYWxpY2UAczNjcmV0UFc=\r\n"), B("a OK done\r\n"));
    assert_true(h != 0);
    assert_true(LOGIN_CASE(&p, &plain_no, plain_secrets, B(GREET), C("a AUTHENTICATE plain\r\n"),
                           B("+ \r\n"), C("AGFsaWNlAHMzY3JldFBX\r\n"),
                           B("a NO [AUTHENTICATIONFAILED] bad\r\n")) == h);
    assert_true(LOGIN_CASE(&p, &authz, plain_secrets, B(GREET), C("a AUTHENTICATE PLAIN\r\n"),
                           B("+ \r\n"), C("YWRtaW4AYWxpY2UAczNjcmV0UFc=\r\n"),
                           B("a OK done\r\n")) == h);

    /* LOGIN mechanism: "alice", then the password, each after a "+". */
    const struct login_want mlogin = {"alice", "", "LOGIN", IMF_LOGIN_OK, true};
    assert_true(LOGIN_CASE(&p, &mlogin, login_secrets, B(GREET), C("a AUTHENTICATE LOGIN\r\n"),
                           B("+ VXNlcm5hbWU6\r\n"), C("YWxpY2U=\r\n"), B("+ UGFzc3dvcmQ6\r\n"),
                           C(PW64 "\r\n"), B("a OK done\r\n")) == h);

    /* "user=alice\1auth=Bearer tok3nXYZ\1\1" */
    const char *const xoauth_secrets[] = {"tok3nXYZ",
                                          "dXNlcj1hbGljZQFhdXRoPUJlYXJlciB0b2szblhZWgEB", NULL};
    const struct login_want x = {"alice", "", "XOAUTH2", IMF_LOGIN_FAILED, true};
    LOGIN_CASE(&p, &x, xoauth_secrets, B(GREET),
               C("a AUTHENTICATE XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB0b2szblhZWgEB\r\n"),
               B("a NO bad\r\n"));
    /* "n,a=alice,\1host=x\1port=143\1auth=Bearer tok3nXYZ\1\1" */
    const char *const bearer_secrets[] = {
        "tok3nXYZ", "bixhPWFsaWNlLAFob3N0PXgBcG9ydD0xNDMBYXV0aD1CZWFyZXIgdG9rM25YWVoBAQ==", NULL};
    const struct login_want o = {"alice", "", "OAUTHBEARER", IMF_LOGIN_OK, true};
    LOGIN_CASE(&p, &o, bearer_secrets, B(GREET), C("a AUTHENTICATE OAUTHBEARER\r\n"), B("+ \r\n"),
               C("bixhPWFsaWNlLAFob3N0PXgBcG9ydD0xNDMBYXV0aD1CZWFyZXIgdG9rM25YWVoBAQ==\r\n"),
               B("a OK done\r\n"));

    /* Another mechanism: its name only. */
    const struct login_want other = {"", "", "CRAM-MD5", IMF_LOGIN_FAILED, false};
    const char *const none[] = {"ZGVtbyBmMDA=", NULL};
    LOGIN_CASE(&p, &other, none, B(GREET), C("a AUTHENTICATE CRAM-MD5\r\n"), B("+ PDE+\r\n"),
               C("ZGVtbyBmMDA=\r\n"), B("a NO bad\r\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unparsable_lines),
        cmocka_unit_test(test_tag_in_flight),
        cmocka_unit_test(test_one_login_at_a_time),
        cmocka_unit_test(test_login_before_tls),
        cmocka_unit_test(test_literal_plus_made_sync),
        cmocka_unit_test(test_refused_literal),
        cmocka_unit_test(test_sasl_cancel_line_endings),
        cmocka_unit_test(test_sasl_lines),
        cmocka_unit_test(test_idle_poll),
        cmocka_unit_test(test_idle_only_done),
        cmocka_unit_test(test_idle_refresh),
        cmocka_unit_test(test_starttls_refusals),
        cmocka_unit_test(test_compress),
        cmocka_unit_test(test_authentication_source),
        cmocka_unit_test(test_pipelining),
        cmocka_unit_test(test_client_id_stripped),
        cmocka_unit_test(test_client_id_empty_list),
        cmocka_unit_test(test_max_command_size),
        cmocka_unit_test(test_max_literal_size),
        cmocka_unit_test(test_login_user_name),
        cmocka_unit_test(test_authenticate_user_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
