/* bclient: the backend conversation, every server answer fed whole, cut at
 * every byte, and one byte at a time (tests/unit/bclient_driver.h). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bclient_driver.h"

#define S(lit) (const uint8_t *)(lit), sizeof(lit) - 1
#define LEN(a) (sizeof(a) / sizeof((a)[0]))

static struct imf_bc *new_bc(void)
{
    struct imf_bc *bc = malloc(sizeof(*bc));
    assert_non_null(bc);
    return bc;
}

/* Runs s whole, then cut at each offset, then one byte at a time: each
 * run must report want_results and send want_sent (want_sent_len bytes),
 * and when secret is set, no copy of it may stay in the conversation. */
static void expect_all_splits(const uint8_t *s, size_t n, const struct bd_act *acts, size_t nacts,
                              const char *want_results, const char *want_sent, size_t want_sent_len,
                              const char *secret)
{
    struct imf_bc *bc = new_bc();
    struct bd_run r;
    size_t *cuts = calloc(n + 1, sizeof(*cuts));
    assert_non_null(cuts);
    for (size_t k = 0; k <= n + 1; k++) {
        size_t ncuts;
        if (k == 0) {
            ncuts = 0; /* whole */
        } else if (k <= n) {
            cuts[0] = k; /* two pieces (the last one empty when k == n) */
            ncuts = 1;
        } else {
            for (size_t i = 0; i + 1 < n; i++)
                cuts[i] = i + 1; /* one byte at a time */
            ncuts = n > 0 ? n - 1 : 0;
        }
        bd_run(bc, &r, s, n, cuts, ncuts, acts, nacts, secret);
        if (strcmp(r.results, want_results) != 0)
            fail_msg("cut %zu: results \"%s\", want \"%s\"", k, r.results, want_results);
        if (r.sent_len != want_sent_len ||
            (want_sent_len > 0 && memcmp(r.sent, want_sent, want_sent_len) != 0))
            fail_msg("cut %zu: sent \"%.*s\", want \"%s\"", k, (int)r.sent_len,
                     r.sent != NULL ? (const char *)r.sent : "", want_sent);
        if (secret != NULL) {
            assert_false(r.secret_left);
            assert_false(bd_struct_holds(bc, secret, strlen(secret)));
        }
        bd_free(&r);
    }
    imf_bc_cleanup(bc);
    free(cuts);
    free(bc);
}

#define EXPECT(server, acts, results, sent, secret) \
    expect_all_splits(S(server), acts, LEN(acts), results, sent, sizeof(sent) - 1, secret)

/* ---- greetings ------------------------------------------------------------ */

static void test_greeting_ok_with_capabilities(void **state)
{
    (void)state;
    struct imf_bc *bc = new_bc();
    struct bd_run r;
    static const char g[] = "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN sasl-ir ID] hi\r\n";
    bd_run(bc, &r, S(g), NULL, 0, NULL, 0, NULL);
    assert_string_equal(r.results, "ready()");
    assert_int_equal(r.sent_len, 0);
    assert_string_equal(imf_bc_greeting(bc),
                        "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN sasl-ir ID] hi");
    assert_string_equal(imf_bc_cap_list(bc), "IMAP4rev1 LITERAL+ AUTH=PLAIN sasl-ir ID");
    assert_int_equal(imf_bc_caps(bc), IMF_BC_CAP_KNOWN | IMF_BC_CAP_LITERAL_PLUS |
                                          IMF_BC_CAP_AUTH_PLAIN | IMF_BC_CAP_SASL_IR);
    assert_true(imf_bc_has_cap(bc, "id"));
    assert_false(imf_bc_has_cap(bc, "IDLE"));
    assert_false(imf_bc_authenticated(bc));
    assert_int_equal(imf_bc_state(bc), IMF_BC_S_READY);
    bd_free(&r);
    free(bc);

    struct bd_act none[] = {{BD_NOTHING, 0, 0, 0, 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] ready\r\n", none, "ready()", "", NULL);
}

/* The Exchange 5.5 banner comes through as it was, for quirks = auto. */
static void test_greeting_text_for_profiles(void **state)
{
    (void)state;
    struct imf_bc *bc = new_bc();
    struct bd_run r;
    static const char g[] = "* OK Microsoft Exchange Server IMAP4rev1 server version 5.5.2653.23 "
                            "(mail.example) ready\r\n";
    bd_run(bc, &r, S(g), NULL, 0, NULL, 0, NULL);
    assert_string_equal(r.results, "ready()");
    assert_string_equal(imf_bc_greeting(bc), "* OK Microsoft Exchange Server IMAP4rev1 server "
                                             "version 5.5.2653.23 (mail.example) ready");
    assert_int_equal(imf_bc_caps(bc), 0); /* no list yet */
    bd_free(&r);
    free(bc);
}

static void test_greeting_preauth(void **state)
{
    (void)state;
    struct imf_bc *bc = new_bc();
    struct bd_run r;
    struct bd_act acts[] = {{BD_COMMAND, "EXAMINE", 0, "Canary", 0}};
    bd_run(bc, &r, S("* PREAUTH [CAPABILITY IMAP4rev1] logged in\r\n"), NULL, 0, acts, 1, NULL);
    assert_string_equal(r.results, "ready()");
    assert_true(imf_bc_preauth(bc));
    assert_true(imf_bc_authenticated(bc));
    assert_int_equal(imf_bc_login(bc, "u", 1, "p", 1), -EBUSY); /* EXAMINE in flight */
    bd_free(&r);
    free(bc);
    EXPECT("* PREAUTH hi\r\n* 3 EXISTS\r\nimf1 OK [READ-ONLY] done\r\n", acts,
           "ready(),ok([READ-ONLY] done)", "imf1 EXAMINE \"Canary\"\r\n", NULL);
}

static void test_greeting_bye(void **state)
{
    (void)state;
    struct bd_act none[] = {{BD_NOTHING, 0, 0, 0, 0}};
    EXPECT("* BYE [UNAVAILABLE] too busy\r\n", none, "bye([UNAVAILABLE] too busy)", "", NULL);
}

static void test_greeting_garbage(void **state)
{
    (void)state;
    struct bd_act none[] = {{BD_NOTHING, 0, 0, 0, 0}};
    EXPECT("HTTP/1.1 400 Bad Request\r\n", none, "error(not an IMAP greeting)", "", NULL);
    EXPECT("* NO go away\r\n", none, "error(not an IMAP greeting)", "", NULL);
    EXPECT("+ hello\r\n", none, "error(not an IMAP greeting)", "", NULL);
    EXPECT("\r\n", none, "error(not an IMAP greeting)", "", NULL);
}

/* ---- capability discovery and the forms of login ---------------------------- */

static void test_capability_asked_when_absent(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "svc", 0, "pw", 0}};
    /* base64("\0svc\0pw") */
    EXPECT("* OK ready\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\nimf1 OK done\r\n"
           "imf2 OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n",
           acts, "ready(),ok([CAPABILITY IMAP4rev1 IDLE] logged in)",
           "imf1 CAPABILITY\r\nimf2 AUTHENTICATE PLAIN AHN2YwBwdw==\r\n", "pw");

    struct imf_bc *bc = new_bc();
    struct bd_run r;
    static const char s[] = "* OK ready\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n"
                            "imf1 OK done\r\nimf2 OK [CAPABILITY IMAP4rev1 IDLE] in\r\n";
    bd_run(bc, &r, S(s), NULL, 0, acts, 1, "pw");
    assert_string_equal(imf_bc_cap_list(bc), "IMAP4rev1 IDLE");
    assert_true(imf_bc_authenticated(bc));
    assert_int_equal(imf_bc_form(bc), IMF_BC_FORM_PLAIN_IR);
    bd_free(&r);
    /* A login OK without a list: the one from before the login is stale. */
    static const char s2[] = "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] hi\r\n+ \r\n"
                             "imf1 OK in\r\n";
    bd_run(bc, &r, S(s2), NULL, 0, acts, 1, "pw");
    assert_string_equal(r.results, "ready(),ok(in)");
    assert_true(imf_bc_authenticated(bc));
    assert_int_equal(imf_bc_caps(bc), 0);
    assert_string_equal(imf_bc_cap_list(bc), "");
    assert_int_equal(imf_bc_form(bc), IMF_BC_FORM_PLAIN);
    bd_free(&r);
    free(bc);

    /* A server that refuses CAPABILITY still gets a LOGIN. */
    EXPECT("* OK ready\r\nimf1 BAD what\r\nimf2 OK in\r\n", acts, "ready(),ok(in)",
           "imf1 CAPABILITY\r\nimf2 LOGIN \"svc\" \"pw\"\r\n", "pw");
}

static void test_login_quoted(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "us\"er", 0, "p\\w d", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf1 OK LOGIN done\r\n", acts,
           "ready(),ok(LOGIN done)", "imf1 LOGIN \"us\\\"er\" \"p\\\\w d\"\r\n", "p\\w d");
    /* Empty password: an empty quoted string. */
    struct bd_act empty[] = {{BD_LOGIN, "u", 0, "", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf1 OK\r\n", empty, "ready(),ok()",
           "imf1 LOGIN \"u\" \"\"\r\n", NULL);
}

/* An 8-bit password goes as a synchronising literal: nothing after its
 * announcement until the "+". */
static void test_login_literal_waits_for_plus(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "user", 0, "p\xc3\xa9w", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\n+ go ahead\r\nimf1 OK in\r\n", acts, "ready(),ok(in)",
           "imf1 LOGIN \"user\" {4}\r\np\xc3\xa9w\r\n", "p\xc3\xa9w");
    /* Without the "+" only the announcement goes. */
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\n", acts, "ready()", "imf1 LOGIN \"user\" {4}\r\n",
           NULL);
    /* Both strings as literals (a CR in the user name, a long password):
     * one "+" each; untagged data in between changes nothing. */
    char pw[300];
    memset(pw, 'x', sizeof(pw) - 1);
    pw[sizeof(pw) - 1] = '\0';
    struct bd_act both[] = {{BD_LOGIN, "a\rb", 0, pw, 0}};
    char want[512];
    int wn = snprintf(want, sizeof(want), "imf1 LOGIN {3}\r\na\rb {299}\r\n%s\r\n", pw);
    static const char s[] = "* OK [CAPABILITY IMAP4rev1] hi\r\n+ \r\n* 1 EXISTS\r\n+\r\n"
                            "imf1 OK in\r\n";
    expect_all_splits(S(s), both, 1, "ready(),ok(in)", want, (size_t)wn, pw);
}

/* The server refuses the literal: the rest of the login is never sent and
 * leaves no copy. */
static void test_login_literal_refused(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "user", 0, "p\xc3\xa9w", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf1 NO [TOOBIG] no literals\r\n", acts,
           "ready(),no([TOOBIG] no literals)", "imf1 LOGIN \"user\" {4}\r\n", "p\xc3\xa9w");
}

static void test_login_literal_plus(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "user", 0, "p\nw", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\nimf1 OK in\r\n", acts, "ready(),ok(in)",
           "imf1 LOGIN \"user\" {3+}\r\np\nw\r\n", "p\nw");
}

static void test_login_plain_without_ir(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "svc", 0, "pw", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN LOGINDISABLED] hi\r\n+ \r\nimf1 OK in\r\n", acts,
           "ready(),ok(in)", "imf1 AUTHENTICATE PLAIN\r\nAHN2YwBwdw==\r\n", "pw");
    /* A second challenge after the only PLAIN message: cancelled with "*". */
    EXPECT("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n+ \r\n+ more?\r\nimf1 BAD cancelled\r\n",
           acts, "ready(),bad(cancelled)", "imf1 AUTHENTICATE PLAIN\r\nAHN2YwBwdw==\r\n*\r\n",
           "pw");
}

static void test_login_refusals_before_sending(void **state)
{
    (void)state;
    struct imf_bc *bc = new_bc();
    struct bd_run r;
    bd_run(bc, &r, S("* OK [CAPABILITY IMAP4rev1 LOGINDISABLED STARTTLS] hi\r\n"), NULL, 0, NULL, 0,
           NULL);
    assert_int_equal(imf_bc_caps(bc) & IMF_BC_CAP_STARTTLS, IMF_BC_CAP_STARTTLS);
    assert_int_equal(imf_bc_login(bc, "u", 1, "p", 1), -ENOTSUP);
    assert_int_equal(imf_bc_login(bc, "u\0v", 3, "p", 1), -EINVAL);
    assert_int_equal(imf_bc_login(bc, "u", 1, "p\0", 2), -EINVAL);
    assert_int_equal(imf_bc_login(bc, "", 0, "p", 1), -EINVAL);
    static char big[IMF_BC_CRED_MAX + 1];
    memset(big, 'a', sizeof(big));
    assert_int_equal(imf_bc_login(bc, big, sizeof(big), "p", 1), -E2BIG);
    const uint8_t *p;
    assert_int_equal(imf_bc_output(bc, &p), 0);
    assert_int_equal(imf_bc_state(bc), IMF_BC_S_READY);
    bd_free(&r);
    free(bc);

    /* LOGINDISABLED learnt from CAPABILITY: a clear error, nothing sent. */
    struct bd_act acts[] = {{BD_LOGIN, "u", 0, "secretpw", 0}};
    EXPECT("* OK hi\r\n* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nimf1 OK\r\n", acts,
           "ready(),error(the server allows no login (LOGINDISABLED and no AUTH=PLAIN))",
           "imf1 CAPABILITY\r\n", "secretpw");
}

/* ---- results ---------------------------------------------------------------- */

static void test_login_no_then_retry(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "u", 0, "wrong", 0}, {BD_LOGIN, "u", 0, "right", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\n"
           "imf1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\nimf2 OK in\r\n",
           acts, "ready(),no([AUTHENTICATIONFAILED] Authentication failed.),ok(in)",
           "imf1 LOGIN \"u\" \"wrong\"\r\nimf2 LOGIN \"u\" \"right\"\r\n", "right");
}

static void test_login_bad_and_bye(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "u", 0, "pw", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf1 BAD syntax\r\n", acts, "ready(),bad(syntax)",
           "imf1 LOGIN \"u\" \"pw\"\r\n", "pw");
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\n* BYE account store offline\r\nimf1 OK late\r\n",
           acts, "ready(),bye(account store offline)", "imf1 LOGIN \"u\" \"pw\"\r\n", "pw");
}

/* Literals of every form in untagged responses: whatever they hold -- a
 * tagged OK, a "+", a BYE -- is data. */
static void test_tagged_ok_inside_literals(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "u", 0, "pw", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\n"
           "* 1 FETCH (BODY[] {18}\r\nimf1 OK fake one\r\n)\r\n"
           "* 2 FETCH (BODY[] {18+}\r\nimf1 OK fake two\r\n BINARY[] ~{16}\r\n+ \r\n* BYE "
           "fake\r\n)\r\n"
           "* 3 FETCH (X {0}\r\n {2}\r\n\r\n)\r\n"
           "imf1 NO real\r\n",
           acts, "ready(),no(real)", "imf1 LOGIN \"u\" \"pw\"\r\n", "pw");
    /* A literal in the greeting's untagged neighbours, before the login. */
    struct bd_act none[] = {{BD_NOTHING, 0, 0, 0, 0}};
    EXPECT("* OK hi\r\n* 1 FETCH (BODY[] ~{11}\r\nimf1 OK x\r\n)\r\n", none, "ready()", "", NULL);
}

static void test_commands_and_logout(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "svc", 0, "pw", 0},
                            {BD_COMMAND, "EXAMINE", 0, "Canary", 0},
                            {BD_COMMAND, "NOOP", 0, NULL, 0},
                            {BD_COMMAND, "LOGOUT", 0, NULL, 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf1 OK in\r\n* 0 EXISTS\r\n"
           "imf2 OK [READ-ONLY] EXAMINE done\r\nimf3 OK NOOP done\r\n"
           "* BYE logging out\r\nimf4 OK LOGOUT done\r\nignored after the end\r\n",
           acts, "ready(),ok(in),ok([READ-ONLY] EXAMINE done),ok(NOOP done),ok(LOGOUT done)",
           "imf1 LOGIN \"svc\" \"pw\"\r\nimf2 EXAMINE \"Canary\"\r\nimf3 NOOP\r\nimf4 LOGOUT\r\n",
           "pw");
    /* An 8-bit mailbox name goes as a literal. */
    struct bd_act lit[] = {{BD_COMMAND, "EXAMINE", 0, "K\xc3\xb6rbchen", 0}};
    EXPECT("* PREAUTH hi\r\n+ ok\r\nimf1 OK done\r\n", lit, "ready(),ok(done)",
           "imf1 EXAMINE {9}\r\nK\xc3\xb6rbchen\r\n", NULL);

    struct imf_bc *bc = new_bc();
    imf_bc_init(bc, "imfcheck");
    size_t used;
    assert_int_equal(imf_bc_feed(bc, S("* PREAUTH hi\r\n"), &used), IMF_BC_READY);
    assert_int_equal(imf_bc_command(bc, "BAD\"NAME", NULL), -EINVAL);
    assert_int_equal(imf_bc_command(bc, "NOOP", NULL), 0);
    assert_string_equal(imf_bc_tag(bc), "imfcheck1");
    assert_int_equal(imf_bc_command(bc, "NOOP", NULL), -EBUSY);
    assert_int_equal(imf_bc_feed(bc, S("imfcheck1 OK\r\n"), &used), IMF_BC_OK);
    assert_string_equal(imf_bc_text(bc), "");
    assert_int_equal(imf_bc_command(bc, "NOOP", NULL), 0);
    assert_string_equal(imf_bc_tag(bc), "imfcheck2");
    /* EOF in the middle of a command; after a BYE it is the BYE. */
    assert_int_equal(imf_bc_eof(bc), IMF_BC_ERROR);
    assert_string_equal(imf_bc_error(bc), "closed by the server");
    imf_bc_init(bc, NULL);
    assert_int_equal(imf_bc_feed(bc, S("* BYE no\r\n"), &used), IMF_BC_BYE);
    assert_int_equal(imf_bc_eof(bc), IMF_BC_BYE);
    free(bc);
}

/* ---- protocol errors -------------------------------------------------------- */

static void test_protocol_errors(void **state)
{
    (void)state;
    struct bd_act acts[] = {{BD_LOGIN, "u", 0, "pw", 0}};
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf9 OK who?\r\n", acts,
           "ready(),error(tagged response to no command in flight)", "imf1 LOGIN \"u\" \"pw\"\r\n",
           "pw");
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf1 MAYBE\r\n", acts,
           "ready(),error(malformed tagged response)", "imf1 LOGIN \"u\" \"pw\"\r\n", "pw");
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\n\r\n", acts, "ready(),error(malformed response line)",
           "imf1 LOGIN \"u\" \"pw\"\r\n", "pw");
    EXPECT("* OK [CAPABILITY IMAP4rev1] hi\r\nimf1\r\n", acts,
           "ready(),error(malformed response line)", "imf1 LOGIN \"u\" \"pw\"\r\n", "pw");
    struct bd_act none[] = {{BD_NOTHING, 0, 0, 0, 0}};
    EXPECT("* OK hi\r\n* 1 FETCH {99999999999}\r\n", none, "ready(),error(literal too big)", "",
           NULL);
    EXPECT("* OK hi\r\n* 1 FETCH {9000-}\r\n", none, "ready(),error(literal too big)", "", NULL);

    /* Over-long line: IMF_BC_LINE_MAX bytes without LF. */
    size_t n = IMF_BC_LINE_MAX + 64;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    memcpy(big, "* OK hi\r\n* ", 11);
    memset(big + 11, 'x', n - 11);
    struct imf_bc *bc = new_bc();
    struct bd_run r;
    bd_run(bc, &r, big, n, NULL, 0, NULL, 0, NULL);
    assert_string_equal(r.results, "ready(),error(response line too long)");
    size_t used;
    assert_int_equal(imf_bc_feed(bc, S("* OK\r\n"), &used), IMF_BC_ERROR);
    assert_int_equal(used, 0);
    assert_int_equal(imf_bc_login(bc, "u", 1, "p", 1), -EBUSY);
    bd_free(&r);
    free(bc);
    free(big);
}

/* The password stays in the conversation only while a piece that carries
 * it is still to be sent: after the last piece is taken no byte of it (nor
 * its base64) is in the struct or its buffers. */
static void test_password_wiped(void **state)
{
    (void)state;
    static const char pw[] = "Tr0ub4dor&3-unique";
    struct imf_bc *bc = new_bc();
    imf_bc_init(bc, NULL);
    size_t used;
    assert_int_equal(
        imf_bc_feed(bc, S("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n"), &used),
        IMF_BC_READY);
    assert_int_equal(imf_bc_login(bc, "svc", 3, pw, strlen(pw)), 0);
    const uint8_t *p;
    size_t n = imf_bc_output(bc, &p);
    /* base64("\0svc\0Tr0ub4dor&3-unique") */
    static const char b64[] = "AHN2YwBUcjB1YjRkb3ImMy11bmlxdWU=";
    assert_non_null(memmem(p, n, b64, strlen(b64)));
    imf_bc_consumed(bc, n - 3); /* not all of it yet */
    imf_bc_consumed(bc, 3);
    assert_false(bd_struct_holds(bc, b64, strlen(b64)));
    assert_false(bd_struct_holds(bc, b64 + 8, 8));
    assert_false(bd_struct_holds(bc, pw, strlen(pw)));

    /* A synchronising literal: the password waits in the stage for the
     * "+", then leaves no copy. */
    imf_bc_init(bc, NULL);
    assert_int_equal(imf_bc_feed(bc, S("* OK [CAPABILITY IMAP4rev1] hi\r\n"), &used), IMF_BC_READY);
    static const char pw8[] = "p\xc3\xa9-unique-secret";
    assert_int_equal(imf_bc_login(bc, "svc", 3, pw8, strlen(pw8)), 0);
    n = imf_bc_output(bc, &p);
    imf_bc_consumed(bc, n);
    assert_true(bd_struct_holds(bc, pw8, strlen(pw8))); /* owed after the "+" */
    assert_int_equal(imf_bc_feed(bc, S("+ go\r\n"), &used), IMF_BC_NONE);
    n = imf_bc_output(bc, &p);
    assert_non_null(memmem(p, n, pw8, strlen(pw8)));
    imf_bc_consumed(bc, n);
    assert_false(bd_struct_holds(bc, pw8, strlen(pw8)));

    /* Cleanup wipes a password that was never sent. */
    imf_bc_init(bc, NULL);
    assert_int_equal(imf_bc_feed(bc, S("* OK hi\r\n"), &used), IMF_BC_READY);
    assert_int_equal(imf_bc_login(bc, "svc", 3, pw, strlen(pw)), 0); /* CAPABILITY first */
    assert_true(bd_struct_holds(bc, pw, strlen(pw)));
    imf_bc_cleanup(bc);
    assert_false(bd_struct_holds(bc, pw, strlen(pw)));
    free(bc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting_ok_with_capabilities),
        cmocka_unit_test(test_greeting_text_for_profiles),
        cmocka_unit_test(test_greeting_preauth),
        cmocka_unit_test(test_greeting_bye),
        cmocka_unit_test(test_greeting_garbage),
        cmocka_unit_test(test_capability_asked_when_absent),
        cmocka_unit_test(test_login_quoted),
        cmocka_unit_test(test_login_literal_waits_for_plus),
        cmocka_unit_test(test_login_literal_refused),
        cmocka_unit_test(test_login_literal_plus),
        cmocka_unit_test(test_login_plain_without_ir),
        cmocka_unit_test(test_login_refusals_before_sending),
        cmocka_unit_test(test_login_no_then_retry),
        cmocka_unit_test(test_login_bad_and_bye),
        cmocka_unit_test(test_tagged_ok_inside_literals),
        cmocka_unit_test(test_commands_and_logout),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_password_wiped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
