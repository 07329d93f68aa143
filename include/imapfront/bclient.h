/* bclient: one IMAP conversation with a backend, as the proxy's client.
 *
 * Pure: no I/O, no libuv, no allocation. The caller feeds what the server
 * sent (any slicing), writes out what imf_bc_output() holds, and acts on
 * the results imf_bc_feed() returns. Both the `check = login` health check
 * and a login for a client (login-first sessions) are this conversation:
 *
 *   greeting (OK / PREAUTH / BYE, capabilities from its [CAPABILITY ...])
 *   -> READY -> imf_bc_login() or imf_bc_command() -> OK / NO / BAD
 *   -> READY again (one command at a time) ... -> LOGOUT.
 *
 * Responses are framed by imf_framer in IMF_FRAMER_RESPONSES mode, so
 * untagged responses with literals of any form ({N}, {N+}, ~{N}) are
 * skipped whole: a line inside a literal is data, never a result.
 *
 * Login picks the form the server digests: AUTHENTICATE PLAIN when it offers
 * AUTH=PLAIN (the credentials in the command with SASL-IR, else after its
 * "+"), else LOGIN with quoted strings, or synchronising literals (one "+"
 * awaited per literal; "{N+}" only when the server announced LITERAL+) for a
 * string a quoted string cannot carry. Capabilities unknown at login time
 * (no [CAPABILITY] in the greeting) are asked for first with CAPABILITY.
 *
 * Secrets: the password is copied into the conversation only while it is
 * being sent; every byte of it the struct held is wiped once the last piece
 * carrying it has been taken with imf_bc_consumed(). What the caller copied
 * out is the caller's to wipe.
 *
 * STARTTLS (backend TLS) is not a step yet: it will be one more command whose
 * OK the caller answers by starting TLS before feeding more bytes. */
#ifndef IMAPFRONT_BCLIENT_H
#define IMAPFRONT_BCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imapfront/imap_framer.h"

/* The longest user name or password accepted (a longer one: -E2BIG). */
#define IMF_BC_CRED_MAX 1024
/* The longest response line accepted (longer: a protocol error). */
#define IMF_BC_LINE_MAX 65536
/* The biggest literal accepted in a response (bigger: a protocol error). */
#define IMF_BC_LITERAL_MAX (64u * 1024 * 1024)
/* Bytes kept of each response's first line (the rest is read and dropped). */
#define IMF_BC_KEPT 2048
/* Bytes kept of the greeting and of a result's text, NUL included. */
#define IMF_BC_TEXT 512
/* Bytes kept of the capability list, NUL included. */
#define IMF_BC_CAPS 1024
/* Room for the longest command: LOGIN with two escaped quoted strings, or
 * AUTHENTICATE PLAIN with its base64 (4/3 of 2 + 2 * IMF_BC_CRED_MAX). */
#define IMF_BC_OUT_MAX (4 * IMF_BC_CRED_MAX + 128)
/* A string longer than this goes as a literal even when it could be quoted. */
#define IMF_BC_QUOTED_MAX 256

/* What the conversation waits for. */
enum imf_bc_state {
    IMF_BC_S_GREETING,   /* the server's greeting */
    IMF_BC_S_READY,      /* nothing in flight: login or a command may start */
    IMF_BC_S_CAPABILITY, /* the answer to the CAPABILITY a login needed first */
    IMF_BC_S_LOGIN,      /* the answer to LOGIN or AUTHENTICATE */
    IMF_BC_S_COMMAND,    /* the answer to imf_bc_command()'s command */
    IMF_BC_S_CLOSED,     /* BYE seen, or LOGOUT answered: nothing more */
    IMF_BC_S_FAILED,     /* a protocol error: the connection is of no use */
    IMF_BC_S_COUNT
};
extern const char *const imf_bc_state_names[IMF_BC_S_COUNT];

/* What imf_bc_feed() found. */
enum imf_bc_result {
    IMF_BC_NONE,  /* the bytes are used up; nothing to act on yet */
    IMF_BC_READY, /* the greeting came (OK or PREAUTH): start a login or a command */
    IMF_BC_OK,    /* the login or command completed with OK */
    IMF_BC_NO,    /* ... with NO (imf_bc_text(): "[AUTHENTICATIONFAILED] ...") */
    IMF_BC_BAD,   /* ... with BAD */
    IMF_BC_BYE,   /* the server said BYE (greeting or mid-command): it is leaving */
    IMF_BC_ERROR, /* protocol error (imf_bc_error() says which); final */
    IMF_BC_RESULT_COUNT
};
extern const char *const imf_bc_result_names[IMF_BC_RESULT_COUNT];

/* Capabilities the conversation acts on (struct imf_bc.caps). */
#define IMF_BC_CAP_KNOWN         0x01u /* a capability list was seen */
#define IMF_BC_CAP_LITERAL_PLUS  0x02u /* LITERAL+ (RFC 7888): "{N+}" may be sent */
#define IMF_BC_CAP_SASL_IR       0x04u /* SASL-IR (RFC 4959): initial response in the command */
#define IMF_BC_CAP_AUTH_PLAIN    0x08u /* AUTH=PLAIN */
#define IMF_BC_CAP_LOGINDISABLED 0x10u /* LOGIN is refused: only AUTHENTICATE */
#define IMF_BC_CAP_STARTTLS      0x20u /* STARTTLS */

/* How the last login was sent (for logs and tests). */
enum imf_bc_login_form {
    IMF_BC_FORM_NONE,
    IMF_BC_FORM_QUOTED,       /* LOGIN "user" "password" */
    IMF_BC_FORM_LITERAL,      /* LOGIN with at least one {N} (synchronising) */
    IMF_BC_FORM_LITERAL_PLUS, /* LOGIN with at least one {N+} */
    IMF_BC_FORM_PLAIN,        /* AUTHENTICATE PLAIN, response after "+" */
    IMF_BC_FORM_PLAIN_IR,     /* AUTHENTICATE PLAIN with SASL-IR */
    IMF_BC_FORM_COUNT
};
extern const char *const imf_bc_form_names[IMF_BC_FORM_COUNT];

#define IMF_BC_SEGS 4 /* pieces of one command separated by awaited "+" */

/* One conversation; all zero apart from what imf_bc_init() sets. Fields are
 * private: read them through the functions below. */
struct imf_bc {
    struct imf_framer fr;
    uint8_t state; /* enum imf_bc_state */
    uint8_t form;  /* enum imf_bc_login_form of the login in flight or last sent */
    bool preauth;  /* the greeting was PREAUTH */
    bool authenticated;
    bool logout;       /* the command in flight is LOGOUT: BYE is expected */
    bool bye_seen;     /* an untagged BYE came */
    bool login_queued; /* a login waits for the CAPABILITY answer */
    bool first;        /* the line being read is a response's first line */
    unsigned caps;     /* IMF_BC_CAP_* */
    uint32_t tag_no;   /* the last tag's number */
    char tag_prefix[9];
    char tag[24];      /* the tag in flight, NUL-terminated */
    const char *error; /* static text of the protocol error */

    size_t line_len;
    uint8_t line[IMF_BC_KEPT];
    char greeting[IMF_BC_TEXT]; /* the greeting line without CRLF */
    char text[IMF_BC_TEXT];     /* the last result's text after the status word */
    char cap_list[IMF_BC_CAPS]; /* the names, separated by single spaces */

    /* Bytes to send now: out[out_off .. out_len). */
    size_t out_off, out_len;
    uint8_t out[IMF_BC_OUT_MAX];
    /* The command being sent: stage[0 .. seg_end[seg_count - 1]); segment k
     * goes out after the k-th "+". Wiped once the last segment is in out. */
    size_t seg_end[IMF_BC_SEGS];
    uint8_t seg_count, seg_next;
    uint8_t stage[IMF_BC_OUT_MAX];
    /* A login that waits for CAPABILITY: the credentials until it is sent. */
    size_t user_len, pass_len;
    uint8_t user[IMF_BC_CRED_MAX];
    uint8_t pass[IMF_BC_CRED_MAX];
};

/* Starts a conversation at the greeting. Tags are tag_prefix (1 to 8
 * letters; NULL or anything else means "imf") followed by 1, 2, 3 ... in
 * the order commands are sent, so a tag is never reused in a conversation. */
void imf_bc_init(struct imf_bc *bc, const char *tag_prefix);

/* Wipes every secret the conversation may still hold. */
void imf_bc_cleanup(struct imf_bc *bc);

/* Reads data[0 .. len) up to the first result and sets *out_used to the
 * bytes it consumed: on IMF_BC_NONE all of them; otherwise the caller acts
 * on the result and feeds the rest again. Whatever the result, the caller
 * sends imf_bc_output() after every call: a "+" or a CAPABILITY answer
 * may have released bytes without a result. After
 * ERROR every call returns ERROR; after CLOSED bytes are consumed and
 * ignored. */
enum imf_bc_result imf_bc_feed(struct imf_bc *bc, const uint8_t *data, size_t len,
                               size_t *out_used);

/* The connection ended (EOF or a read error): BYE when the server had said
 * BYE or answered LOGOUT, else ERROR ("closed by the server"). */
enum imf_bc_result imf_bc_eof(struct imf_bc *bc);

/* Logs in as user with password (both borrowed for the call: copied as
 * needed, never kept past their sending). Only in READY and not yet
 * authenticated. 0, or -EBUSY (not READY), -EISCONN (authenticated
 * already), -EINVAL (empty user, or a NUL in either: no IMAP form carries it
 * in LOGIN's strings, and in PLAIN it is the separator), -E2BIG (longer than
 * IMF_BC_CRED_MAX), -ENOTSUP (LOGINDISABLED and no AUTH=PLAIN). */
int imf_bc_login(struct imf_bc *bc, const char *user, size_t user_len, const char *password,
                 size_t password_len);

/* Sends "TAG NAME[ ARG]": name is an atom such as "NOOP" or "EXAMINE"; arg,
 * when not NULL, goes as an astring (quoted, or a literal when it must).
 * LOGOUT expects the server's BYE. Only in READY. 0, -EBUSY, -EINVAL (a bad
 * name or a NUL in arg), -E2BIG (does not fit IMF_BC_OUT_MAX). */
int imf_bc_command(struct imf_bc *bc, const char *name, const char *arg);

/* The bytes to send now (*out_p valid until the next call on bc). */
size_t imf_bc_output(const struct imf_bc *bc, const uint8_t **out_p);

/* The caller took (copied) n bytes of the output: they are wiped here. */
void imf_bc_consumed(struct imf_bc *bc, size_t n);

enum imf_bc_state imf_bc_state(const struct imf_bc *bc);
/* True after a PREAUTH greeting or a login that passed. */
bool imf_bc_authenticated(const struct imf_bc *bc);
bool imf_bc_preauth(const struct imf_bc *bc);
/* The greeting line without CRLF (cut at IMF_BC_TEXT - 1 bytes), "" before
 * it: what quirks = auto recognises servers by. */
const char *imf_bc_greeting(const struct imf_bc *bc);
/* IMF_BC_CAP_* bits, and the whole list ("IMAP4rev1 LITERAL+ ...", "" when
 * none is known); the list is replaced by every list the server sends,
 * including the one in a login's tagged OK, and forgotten (0, "") after a
 * login whose OK carries none: send CAPABILITY to learn it again. */
unsigned imf_bc_caps(const struct imf_bc *bc);
const char *imf_bc_cap_list(const struct imf_bc *bc);
/* True when the list names cap (case-insensitive). */
bool imf_bc_has_cap(const struct imf_bc *bc, const char *cap);
/* The text of the last OK/NO/BAD/BYE after its status word, with its
 * response code ("[AUTHENTICATIONFAILED] Invalid credentials"); untrusted
 * bytes, cut at IMF_BC_TEXT - 1. */
const char *imf_bc_text(const struct imf_bc *bc);
/* The static reason of IMF_BC_ERROR, or NULL. */
const char *imf_bc_error(const struct imf_bc *bc);
/* The form of the last login sent. */
enum imf_bc_login_form imf_bc_form(const struct imf_bc *bc);
/* The tag of the command in flight (or last sent), "" before any. */
const char *imf_bc_tag(const struct imf_bc *bc);

#endif
