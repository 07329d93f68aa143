/* unit.lobby: a login-first session's answers before login, driven the way
 * src/lobby_sess.c drives it (command framer, lines, literal octets), whole
 * and split at every byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "imapfront/lobby.h"
#include "lobby_driver.h"

/* The transcript of in, fed whole, then split at every offset, then one
 * byte at a time: all must equal want. */
static void check_len(bool starttls, bool require_tls, bool tls, const char *in, size_t len,
                      const char *want)
{
    struct drv *d = malloc(sizeof(*d));
    assert_non_null(d);
    for (size_t cut = 0; cut <= len + 1; cut++) {
        drv_init(d, starttls, require_tls, tls);
        if (cut <= len) {
            feed(d, (const uint8_t *)in, cut);
            feed(d, (const uint8_t *)in + cut, len - cut);
        } else {
            for (size_t i = 0; i < len; i++)
                feed(d, (const uint8_t *)in + i, 1);
        }
        d->out[d->out_len] = '\0';
        if (strcmp(d->out, want) != 0)
            fail_msg("cut %zu of %s\ngot:  %s\nwant: %s", cut, in, d->out, want);
        imf_lobby_cleanup(&d->lb);
    }
    free(d);
}

static void check_opts(bool starttls, bool require_tls, bool tls, const char *in, const char *want)
{
    check_len(starttls, require_tls, tls, in, strlen(in), want);
}

static void check(const char *in, const char *want)
{
    check_opts(false, false, true, in, want);
}

static void test_greeting_and_capabilities(void **state)
{
    (void)state;
    struct imf_lobby_params p = {.starttls_listener = true, .require_tls = true};
    struct imf_lobby lb;
    char buf[256];
    imf_lobby_init(&lb, &p, false);
    imf_lobby_greeting(&lb, buf, sizeof(buf));
    assert_string_equal(buf, "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS "
                             "LOGINDISABLED] IMAP proxy ready\r\n");
    imf_lobby_tls_started(&lb);
    imf_lobby_greeting(&lb, buf, sizeof(buf));
    assert_string_equal(buf,
                        "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN] IMAP proxy "
                        "ready\r\n");
    p.starttls_listener = false;
    p.require_tls = false;
    imf_lobby_init(&lb, &p, false);
    imf_lobby_capabilities(&lb, buf, sizeof(buf));
    assert_string_equal(buf, "IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN");
}

static void test_own_answers(void **state)
{
    (void)state;
    check("a CAPABILITY\r\nb noop\r\nc ID (\"name\" \"x\")\r\nd ID NIL\r\ne LOGOUT\r\nf NOOP\r\n",
          "* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN\r\na OK CAPABILITY completed\r\n"
          "b OK NOOP completed\r\n* ID NIL\r\nc OK ID completed\r\n* ID NIL\r\nd OK ID "
          "completed\r\n* BYE Logging out\r\ne OK LOGOUT completed\r\n<CLOSE>");
    check("a SELECT INBOX\r\nb CAPABILITY x\r\nc ID\r\nd STARTTLS\r\n",
          "a BAD Log in first\r\nb BAD Invalid arguments\r\nc BAD Invalid arguments\r\n"
          "d BAD STARTTLS is not available: TLS is already active\r\n");
    /* Bare LF is a line end too. */
    check("a NOOP\n", "a OK NOOP completed\r\n");
}

static void test_login_forms(void **state)
{
    (void)state;
    check("a LOGIN demo secret\r\n", "<LOGIN a LOGIN demo secret>");
    check("a login \"d e\\\"m\" \"p\\\\w\"\r\n", "<LOGIN a LOGIN d e\"m p\\w>");
    check("a LOGIN {4}\r\ndemo {6}\r\nsecret\r\n",
          "+ Ready for literal data\r\n+ Ready for literal data\r\n<LOGIN a LOGIN demo secret>");
    check("a LOGIN {4+}\r\ndemo {6+}\r\nsecret\r\n", "<LOGIN a LOGIN demo secret>");
    check("a LOGIN demo {6}\r\nsecret\r\n",
          "+ Ready for literal data\r\n<LOGIN a LOGIN demo secret>");
    check("a LOGIN {4+}\r\ndemo \"se cret\"\r\n", "<LOGIN a LOGIN demo se cret>");
    /* A command line inside a literal is a credential, never a command. */
    check("a LOGIN {16+}\r\nb SELECT INBOX\r\n {3+}\r\nx\r\n\r\n",
          "<LOGIN a LOGIN b SELECT INBOX\r\n x\r\n>");
    /* Pipelined commands after a login come after it. */
    check("a LOGIN demo demo\r\nb NOOP\r\n", "<LOGIN a LOGIN demo demo>b OK NOOP completed\r\n");
}

static void test_login_refusals(void **state)
{
    (void)state;
    check("a LOGIN demo\r\n", "a BAD Invalid LOGIN arguments\r\n");
    check("a LOGIN demo pw extra\r\n", "a BAD Invalid LOGIN arguments\r\n");
    check("a LOGIN \"demo pw\r\n", "a BAD Invalid LOGIN arguments\r\n");
    check("a LOGIN demo  pw\r\n", "a BAD Invalid LOGIN arguments\r\n");
    check("a LOGIN \"de\\mo\" pw\r\n", "a BAD Invalid LOGIN arguments\r\n");
    /* Too long for a user name: no "+", the literal never comes. */
    check("a LOGIN {5000}\r\nb NOOP\r\n",
          "a BAD [TOOBIG] User name or password too long\r\nb OK NOOP completed\r\n");
    /* ... sent anyway ({N+}): swallowed, then the refusal. */
    check(
        "a LOGIN {1030+}\r\n"
        "b "
        "LOGOUT\r\nbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\nc NOOP\r\n",
        "a BAD [TOOBIG] User name or password too long\r\nc OK NOOP completed\r\n");
    check("a LOGIN ~{4}\r\n", "a BAD Invalid LOGIN arguments\r\n");
    /* require_tls before TLS. */
    check_opts(true, true, false, "a LOGIN demo demo\r\nb AUTHENTICATE PLAIN\r\nc STARTTLS\r\n",
               "a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
               "b NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
               "c OK Begin TLS negotiation now\r\n<TLS>");
    check_opts(true, true, false, "c STARTTLS\r\nd LOGIN demo demo\r\n",
               "c OK Begin TLS negotiation now\r\n<TLS>");
    check_opts(false, false, false, "c STARTTLS\r\n", "c BAD STARTTLS is not available here\r\n");
}

static void test_authenticate_plain(void **state)
{
    (void)state;
    /* "\0demo\0secret" and "demo\0demo\0secret" and "other\0demo\0x". */
    check("a AUTHENTICATE PLAIN AGRlbW8Ac2VjcmV0\r\n", "<LOGIN a PLAIN demo secret>");
    check("a AUTHENTICATE plain ZGVtbwBkZW1vAHNlY3JldA==\r\n", "<LOGIN a PLAIN demo secret>");
    check("a AUTHENTICATE PLAIN\r\nAGRlbW8Ac2VjcmV0\r\n", "+ \r\n<LOGIN a PLAIN demo secret>");
    check("a AUTHENTICATE PLAIN\r\n*\r\nb NOOP\r\n",
          "+ \r\na BAD Authentication cancelled\r\nb OK NOOP completed\r\n");
    check("a AUTHENTICATE PLAIN b3RoZXIAZGVtbwB4\r\n",
          "a NO [AUTHENTICATIONFAILED] Authentication failed\r\n");
    check("a AUTHENTICATE PLAIN =\r\n", "a BAD Invalid PLAIN message\r\n");
    check("a AUTHENTICATE PLAIN !!!!\r\n", "a BAD Invalid base64 data\r\n");
    check("a AUTHENTICATE CRAM-MD5\r\n", "a NO [CANNOT] Unsupported authentication mechanism\r\n");
    check("a AUTHENTICATE PLAIN {4}\r\nb NOOP\r\n",
          "a BAD AUTHENTICATE takes no literal\r\nb OK NOOP completed\r\n");
}

static void test_fails_closed(void **state)
{
    (void)state;
    check("\r\n", "* BAD Invalid tag or command line\r\n");
    check("a\r\n", "* BAD Invalid tag or command line\r\n");
    check("a{ NOOP\r\n", "* BAD Invalid tag or command line\r\n");
    check("a NO\"OP\r\n", "a BAD Invalid command name\r\n");
    /* A refused command's synchronising literal gets no "+": what the
     * client sends anyway is read as commands, and refused as such. */
    check("a SELECT {11}\r\nb LOGOUT x\r\n", "a BAD Log in first\r\nb BAD Invalid arguments\r\n");
    /* A non-synchronising one is swallowed with the rest of the command. */
    check("a SELECT {10+}\r\nb LOGOUT\r\n more {3+}\r\nxyz\r\nc NOOP\r\n",
          "a BAD Log in first\r\nc OK NOOP completed\r\n");
    check("* LOGIN {4+}\r\ndemo pw\r\n", "* BAD Invalid tag or command line\r\n");
    /* NUL or a bare CR in a line: the connection ends. */
    check_len(false, false, true, "a NOOP\0x\r\nb NOOP\r\n", 17,
              "* BYE Invalid characters in a command line\r\n<CLOSE>");
    check("a NO\rOP\r\nb NOOP\r\n", "* BYE Invalid characters in a command line\r\n<CLOSE>");
    /* A tag reused is fine here: nothing is in flight before login. */
    check("a NOOP\r\na NOOP\r\n", "a OK NOOP completed\r\na OK NOOP completed\r\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting_and_capabilities),
        cmocka_unit_test(test_own_answers),
        cmocka_unit_test(test_login_forms),
        cmocka_unit_test(test_login_refusals),
        cmocka_unit_test(test_authenticate_plain),
        cmocka_unit_test(test_fails_closed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
