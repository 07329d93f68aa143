/* lobby: the IMAP policy of a login-first session before its login, pure
 * (no I/O, no libuv, no allocation).
 *
 * With routing configured ([route]), the proxy greets the client itself and
 * answers everything up to a successful login: CAPABILITY, NOOP, ID, LOGOUT,
 * STARTTLS, LOGIN and AUTHENTICATE PLAIN (initial response or after "+",
 * "*" cancels). Anything else gets "BAD"/"NO ... Log in first". The session
 * frames the client's bytes (imap_framer, command mode) and hands the lobby
 * every complete line and the octets of the literals it asked for; the lobby
 * answers with decisions as data, like the gate (gate.h).
 *
 * It fails closed the way the gate does: a line that is not "tag SP
 * command" is refused; a refused command that announced a synchronising
 * literal gets no "+" (the framer skips it); one that announced a
 * non-synchronising literal has its octets and lines swallowed up to the
 * command's end, then the refusal. A login's user name and password are kept
 * in one buffer (cred), at most IMF_BC_CRED_MAX octets each, until the
 * session has handed them to the backend client; imf_lobby_login_done() and
 * imf_lobby_cleanup() wipe it. While a login is decided (IMF_LOBBY_LOGIN
 * until imf_lobby_login_done), imf_lobby_busy() is true and the session
 * frames nothing more: pipelined commands wait for the result. */
#ifndef IMAPFRONT_LOBBY_H
#define IMAPFRONT_LOBBY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imapfront/bclient.h"
#include "imapfront/imap.h"
#include "imapfront/imap_framer.h"

/* The listener's TLS policy, as the gate follows it; borrowed. */
struct imf_lobby_params {
    bool starttls_listener; /* STARTTLS is offered before TLS */
    bool require_tls;       /* LOGIN/AUTHENTICATE only over TLS */
};

/* Actions of a decision (bits). */
#define IMF_LOBBY_ANSWER       0x01u /* send answer[0..answer_len) to the client */
#define IMF_LOBBY_SKIP_LITERAL 0x02u /* the announced synchronising literal will not come */
#define IMF_LOBBY_STARTTLS     0x04u /* after the answer: start TLS */
#define IMF_LOBBY_LOGIN        0x08u /* a login is complete: imf_lobby_creds(), then login_done */
#define IMF_LOBBY_CLOSE        0x10u /* after the answer: close (LOGOUT) */
#define IMF_LOBBY_BYE          0x20u /* answer is "* BYE ...": the input cannot be framed on */

struct imf_lobby_decision {
    unsigned actions;
    const char *log; /* static text of a refusal for the log, or NULL */
    size_t answer_len;
    char answer[IMF_TAG_MAX + 320];
};

/* All fields private; zero it, then imf_lobby_init(). */
struct imf_lobby {
    const struct imf_lobby_params *p;
    bool tls;        /* the client talks TLS */
    bool discarding; /* swallowing the rest of a refused command */
    uint8_t expect;  /* what the client's next line is (lobby.c) */
    uint8_t arg;     /* LOGIN: 0 user next, 1 password next, 2 both read */
    uint8_t lit_arg; /* the literal being read: 0 user, 1 password */
    size_t lit_left; /* its octets still to come */
    const char *discard_answer;
    char tag[IMF_TAG_MAX + 1];
    char mech[8]; /* "LOGIN" or "PLAIN" */
    size_t user_len, pass_len;
    uint8_t cred[2 * IMF_BC_CRED_MAX]; /* user at 0, password at IMF_BC_CRED_MAX */
};

/* Prepares lb under p (borrowed); tls: the client talks TLS already. */
void imf_lobby_init(struct imf_lobby *lb, const struct imf_lobby_params *p, bool tls);

/* Wipes the credentials. */
void imf_lobby_cleanup(struct imf_lobby *lb);

/* The capability list the proxy announces now (no brackets), into out. */
size_t imf_lobby_capabilities(const struct imf_lobby *lb, char *out, size_t cap);

/* The greeting line ("* OK [CAPABILITY ...] ...\r\n") into out; its length. */
size_t imf_lobby_greeting(const struct imf_lobby *lb, char *out, size_t cap);

/* A complete client line (LF included) as the framer reported it in ev. */
void imf_lobby_line(struct imf_lobby *lb, const uint8_t *line, size_t len,
                    const struct imf_framer_ev *ev, struct imf_lobby_decision *out);

/* Octets of the current command's literal (all of them, in order). */
void imf_lobby_literal(struct imf_lobby *lb, const uint8_t *p, size_t n);

/* True while a refused command's literal octets are being swallowed. */
bool imf_lobby_discarding(const struct imf_lobby *lb);

/* True from IMF_LOBBY_LOGIN until imf_lobby_login_done(). */
bool imf_lobby_busy(const struct imf_lobby *lb);

/* TLS is up with the client. */
void imf_lobby_tls_started(struct imf_lobby *lb);

/* The login that IMF_LOBBY_LOGIN announced (borrowed from lb until
 * imf_lobby_login_done). */
struct imf_lobby_creds {
    const char *tag;
    const char *mech; /* "LOGIN" or "PLAIN" */
    const uint8_t *user, *pass;
    size_t user_len, pass_len;
};
void imf_lobby_creds(const struct imf_lobby *lb, struct imf_lobby_creds *out);

/* The login was handed on (or refused): the credentials are wiped and the
 * lobby reads commands again. */
void imf_lobby_login_done(struct imf_lobby *lb);

#endif
