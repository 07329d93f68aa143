/* gate: the IMAP policy of one session, pure (no I/O, no libuv, no TLS).
 *
 * The session frames both directions (imap_framer) and hands the gate
 * every complete line: client command lines and backend response lines.
 * The gate owns the session's IMAP state (TLS or not, not authenticated /
 * authenticated / logged out, the commands in flight by tag, what the
 * backend's last "+" was for, the IDLE phase, COMPRESS, the backend's
 * profile and the shields it implies) and answers with decisions as data:
 * forward the line (possibly rewritten in place), answer locally, swallow
 * the rest of a command, start TLS or COMPRESS, close with a BYE. The
 * session applies them and keeps sockets, TLS, chains and timers.
 *
 * It fails closed: a client line that does not parse as RFC 9051's
 * "tag SP command" is answered by the proxy and never forwarded; a line
 * after a "+" is judged by what the "+" was for; authentication is a state
 * reached only by the tagged OK of a LOGIN/AUTHENTICATE whose tag was
 * unique in flight (or a PREAUTH greeting).
 *
 * Answers the gate makes are queued by the session and sent only when the
 * response stream is between two responses (never inside a FETCH literal). */
#ifndef IMAPFRONT_GATE_H
#define IMAPFRONT_GATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imapfront/capability.h"
#include "imapfront/config.h"
#include "imapfront/imap.h"
#include "imapfront/imap_framer.h"

/* What the gate knows of the server behind it, from its greeting. */
enum imf_gate_profile {
    IMF_PROFILE_UNKNOWN,    /* no greeting yet */
    IMF_PROFILE_GENERIC,    /* nothing known against it */
    IMF_PROFILE_EXCHANGE55, /* Microsoft Exchange 5.5: the Q239082 shields */
    IMF_PROFILE_COUNT
};
extern const char *const imf_gate_profile_names[IMF_PROFILE_COUNT];

/* How a login attempt ended. */
enum imf_login_result {
    IMF_LOGIN_OK,        /* the backend said OK */
    IMF_LOGIN_FAILED,    /* the backend said NO or BAD */
    IMF_LOGIN_REFUSED,   /* the proxy refused it by policy (TLS required, invalid) */
    IMF_LOGIN_THROTTLED, /* the proxy refused it: too many failures (never reached the backend) */
    IMF_LOGIN_RESULT_COUNT
};
extern const char *const imf_login_result_names[IMF_LOGIN_RESULT_COUNT];

#define IMF_GATE_USER_MAX    255 /* longest user name kept (longer ones are cut) */
#define IMF_GATE_CAPTURE_MAX 256 /* octets of a LOGIN literal read for its name or secret */

/* The login attempt in progress (LOGIN or AUTHENTICATE): allocated when it
 * starts, kept until the session calls imf_gate_login_clear(). It never
 * holds a password: only a keyed hash of it (params.secret_key). */
struct imf_gate_login {
    char tag[IMF_TAG_MAX + 1];
    char mech[24];                     /* "LOGIN" for the command, else the SASL mechanism */
    char user[IMF_GATE_USER_MAX + 1];  /* authentication identity, "" when unknown */
    char authz[IMF_GATE_USER_MAX + 1]; /* PLAIN's authorization identity, "" when none */
    uint64_t secret_hash;              /* SipHash of the password, 0 when not seen */
    uint8_t result;                    /* enum imf_login_result, once done */
    bool checked;                      /* login_refused() was asked */
    bool refused;                      /* ... and said yes */
    bool done;                         /* result is set */
    /* Parsing state (gate.c). */
    uint8_t arg;       /* LOGIN: 0 user, 1 password, 2 both read */
    uint8_t capture;   /* 0 none, 1 the user literal, 2 the password literal */
    uint8_t sasl_step; /* SASL responses seen */
    bool cut;          /* the captured literal was longer than the buffer */
    size_t cap_len;
    uint8_t cap[IMF_GATE_CAPTURE_MAX]; /* zeroed as soon as read */
};

/* The settings a gate follows; borrowed for the gate's life. */
struct imf_gate_params {
    bool implicit_tls;      /* the client talks TLS from the first byte */
    bool starttls_listener; /* STARTTLS is offered before TLS */
    bool require_tls;       /* LOGIN/AUTHENTICATE only over TLS */
    bool compress;          /* [imap] compress: COMPRESS=DEFLATE at the proxy */
    bool idle_poll;         /* [backend] idle = poll: the proxy emulates IDLE */
    bool idle_refresh;      /* [backend] idle_refresh: the proxy re-issues IDLE */
    bool strip_client_id;   /* remove x-originating-* / x-connected-* from a client's ID */
    enum imf_quirks quirks; /* auto, none, exchange55 */
    /* The shields as configured, and whether each key was written (a
     * written key wins over quirks). */
    bool pipelining, pipelining_set;
    bool literal_sync, literal_sync_set;
    bool crlf_split, crlf_split_set;
    uint64_t max_literal; /* every literal, any state (0 = no limit) */
    uint64_t max_command; /* a whole command: its lines and literals (0 = no limit) */
    const char *hide;     /* hide_capabilities, or NULL */
    /* Asked once per login attempt, when its user name is known and before
     * its password goes to the backend; true refuses it (the proxy answers
     * NO [AUTHENTICATIONFAILED]). NULL never refuses. It may do what the
     * gate must not (look at a clock, take a lock). */
    bool (*login_refused)(void *ctx, const struct imf_gate_login *l);
    void *login_ctx;
    uint64_t secret_key[2]; /* keys the hash of passwords (random per process) */
};

/* The shields in force (from the profile, the keys and quirks). */
struct imf_gate_shields {
    bool pipelining;   /* false: one command in flight to the backend */
    bool literal_sync; /* every {N+}/{N-} goes as {N} */
    bool crlf_split;   /* a literal's end and what follows leave separately */
};

/* Why the session must not frame more client input now. */
enum imf_gate_wait {
    IMF_GATE_GO,            /* frame on */
    IMF_GATE_WAIT_GREETING, /* the backend has not greeted yet */
    IMF_GATE_WAIT_PLUS,     /* a literal or a continuation waits for the backend's "+" */
    IMF_GATE_WAIT_OWN,      /* a command of the proxy's own (ID, IDLE refresh) is in flight */
    IMF_GATE_HOLD,          /* pipelining off: the next command waits for a completion */
    IMF_GATE_WAIT_COUNT
};

/* Actions of a decision (bits). */
#define IMF_GATE_FORWARD      0x001u  /* send line[0..len) (maybe rewritten) to the backend */
#define IMF_GATE_ANSWER       0x002u  /* queue answer[0..answer_len) for the client */
#define IMF_GATE_SKIP_LITERAL 0x004u  /* the announced synchronising literal will not come */
#define IMF_GATE_DISCARD      0x008u  /* swallow the rest of the command (octets, lines) */
#define IMF_GATE_STARTTLS     0x010u  /* after the answer has gone: start TLS */
#define IMF_GATE_COMPRESS     0x020u  /* after the answer has gone: start COMPRESS */
#define IMF_GATE_CLOSE        0x040u  /* answer is "* BYE ...": send it and close */
#define IMF_GATE_IDLE_BEGIN   0x080u  /* the client now idles: start the keeper */
#define IMF_GATE_IDLE_END     0x100u  /* the client's IDLE ended: stop the keeper */
#define IMF_GATE_FIX_EOL      0x200u  /* the line ends in a bare LF: send CRLF */
#define IMF_GATE_NEW_COMMAND  0x400u  /* a client command went to the backend (telemetry) */
#define IMF_GATE_CONVERTED    0x800u  /* its {N+}/{N-} was made synchronising */
#define IMF_GATE_LOGIN_DONE   0x1000u /* the proxy ended a login attempt: see imf_gate_login() */

/* Why a decision closes. */
enum imf_gate_close {
    IMF_GATE_CLOSE_NONE,
    IMF_GATE_CLOSE_TOOBIG, /* a literal or command over the limit after part of it went */
    IMF_GATE_CLOSE_LOGIN,  /* a LOGIN refused after its user literal went: the answer is
                              "tag NO ...", then the session closes */
};

/* A decision about one client line. */
struct imf_gate_decision {
    unsigned actions;        /* IMF_GATE_* */
    size_t len;              /* the line's length after rewriting */
    enum imf_gate_close why; /* with IMF_GATE_CLOSE */
    const char *log;         /* static text for the log when the proxy refused, or NULL */
    size_t answer_len;
    char answer[IMF_TAG_MAX + 160];
};

/* Effects of a response line (bits). */
#define IMF_GATE_R_SWALLOW      0x01u /* the line is the proxy's own business: not for the client */
#define IMF_GATE_R_AUTH         0x02u /* the client is authenticated from now on */
#define IMF_GATE_R_LOGOUT       0x04u /* the LOGOUT completed: close once relayed */
#define IMF_GATE_R_KICK         0x08u /* client input may move again */
#define IMF_GATE_R_BACKEND      0x10u /* send backend[0..backend_len) to the backend */
#define IMF_GATE_R_PROFILE      0x20u /* the greeting set the profile (log it) */
#define IMF_GATE_R_STRAY        0x40u /* a tagged response for no command in flight */
#define IMF_GATE_R_IDLE_BEGIN   0x80u /* the client now idles (the backend said "+") */
#define IMF_GATE_R_IDLE_END     0x100u /* the client's IDLE ended */
#define IMF_GATE_R_ID_REFUSED   0x200u /* the backend refused the proxy's ID */
#define IMF_GATE_R_SKIP_LITERAL 0x400u /* the client's literal was refused: it will not come */
#define IMF_GATE_R_LOGIN        0x800u /* a login attempt ended: see imf_gate_login() */

struct imf_gate_response {
    unsigned effects; /* IMF_GATE_R_* */
    struct imf_imap_response r;
    size_t backend_len;
    char backend[IMF_TAG_MAX + 16];
};

/* One command in flight to the backend. */
struct imf_gate_cmd {
    char tag[IMF_TAG_MAX + 1];
    uint8_t cmd; /* enum imf_cmd */
    bool own;    /* the proxy's own (ID, poll NOOP) */
};

enum imf_gate_idle {
    IMF_GATE_IDLE_OFF,     /* no IDLE */
    IMF_GATE_IDLE_ASKED,   /* the client's IDLE went to the backend; no "+" yet */
    IMF_GATE_IDLE_ON,      /* client and backend idle */
    IMF_GATE_IDLE_ENDING,  /* the client's DONE went; its completion is awaited */
    IMF_GATE_IDLE_REFRESH, /* the proxy sent DONE; the completion is ours */
    IMF_GATE_IDLE_REISSUE, /* the proxy re-sent IDLE; its "+" is ours */
    IMF_GATE_IDLE_POLL,    /* idle = poll: the proxy idles for the backend */
    IMF_GATE_IDLE_COUNT
};

/* All fields private; zero it, then imf_gate_init(). */
struct imf_gate {
    const struct imf_gate_params *p;
    struct imf_gate_shields shields;
    uint8_t profile;     /* enum imf_gate_profile */
    uint8_t idle;        /* enum imf_gate_idle */
    uint8_t expect;      /* what the client's next line is (see gate.c) */
    uint8_t plus_for;    /* what the backend's next "+" is for (see gate.c) */
    bool tls;            /* the client talks TLS */
    bool authenticated;  /* LOGIN/AUTHENTICATE OK, or PREAUTH */
    bool logged_out;     /* LOGOUT went to the backend */
    bool compress_on;    /* COMPRESS=DEFLATE active */
    bool discarding;     /* swallowing the rest of a refused command */
    bool backend_lplus;  /* the backend announced LITERAL+ */
    bool backend_lminus; /* ... or LITERAL- */
    bool cur_forwarded;  /* the command being read went to the backend */
    uint8_t cur_cmd;     /* enum imf_cmd of the command being read */
    uint64_t cur_bytes;  /* octets of the command being read so far */
    char cur_tag[IMF_TAG_MAX + 1];
    char cur_name[32];
    const char *discard_answer;        /* static answer once the swallow ends, or NULL */
    char discard_tag[IMF_TAG_MAX + 1]; /* ... addressed to this tag */
    char idle_tag[IMF_TAG_MAX + 1];
    struct imf_gate_cmd *inflight; /* allocated while commands are in flight */
    uint32_t inflight_len, inflight_cap;
    uint32_t client_inflight;     /* of which the client's own */
    struct imf_gate_login *login; /* the login attempt, allocated while one is known */
};

/* Prepares g under params p (borrowed). */
void imf_gate_init(struct imf_gate *g, const struct imf_gate_params *p);

/* Frees what the gate allocated. */
void imf_gate_cleanup(struct imf_gate *g);

/* Whether the session may frame more client input; at_message_start says
 * whether the client framer is between commands. */
enum imf_gate_wait imf_gate_client_wait(const struct imf_gate *g, bool at_message_start);

/* A complete client line (first line of a command, a line after one of its
 * literals, or a line after the backend's "+"), LF included, as the framer
 * reported it in ev. The line may be rewritten in place (it only shrinks;
 * out->len is its new length). backend_quiet: nothing from the backend is
 * pending (no partial response, nothing unread) and no answer is queued. */
void imf_gate_client_line(struct imf_gate *g, uint8_t *line, size_t len,
                          const struct imf_framer_ev *ev, bool backend_quiet,
                          struct imf_gate_decision *out);

/* True while literal octets of the current command are to be swallowed. */
bool imf_gate_discarding(const struct imf_gate *g);

/* A complete response line (only the first line of a response carries
 * policy; later lines are relayed as is). */
void imf_gate_response_line(struct imf_gate *g, const uint8_t *line, size_t len,
                            struct imf_gate_response *out);

/* TLS is up with the client (after STARTTLS or at once). */
void imf_gate_tls_started(struct imf_gate *g);

/* The capability policy for rewriting what the backend announces. */
void imf_gate_cap_policy(const struct imf_gate *g, struct imf_cap_policy *out);

/* The proxy's own commands. Each writes the line to out (cap bytes) and
 * returns its length, or 0 when it must not be sent now. */
size_t imf_gate_own_id(struct imf_gate *g, const char *ip, int port, char *out, size_t cap);
size_t imf_gate_idle_refresh(struct imf_gate *g, bool client_mid_line, char *out, size_t cap);
size_t imf_gate_idle_poll(struct imf_gate *g, char *out, size_t cap);

/* The current or last login attempt, or NULL. After IMF_GATE_LOGIN_DONE or
 * IMF_GATE_R_LOGIN its result is set. */
const struct imf_gate_login *imf_gate_login(const struct imf_gate *g);

/* Forgets a finished login attempt (its memory is zeroed and freed). */
void imf_gate_login_clear(struct imf_gate *g);

/* While the current command's literal is a LOGIN name or password: the
 * session passes its octets here as they go (they are copied up to
 * IMF_GATE_CAPTURE_MAX and zeroed once read). */
bool imf_gate_capturing(const struct imf_gate *g);
void imf_gate_capture(struct imf_gate *g, const uint8_t *p, size_t n);

/* State for the session's timers and drain. */
bool imf_gate_authenticated(const struct imf_gate *g);
bool imf_gate_idling(const struct imf_gate *g);       /* the client is in IDLE */
uint32_t imf_gate_commands(const struct imf_gate *g); /* client commands in flight */
bool imf_gate_quiet(const struct imf_gate *g);        /* a BYE now loses nothing */
bool imf_gate_logout_sent(const struct imf_gate *g);
enum imf_gate_profile imf_gate_profile(const struct imf_gate *g);
const struct imf_gate_shields *imf_gate_shields(const struct imf_gate *g);
const char *imf_gate_current_tag(const struct imf_gate *g);
const char *imf_gate_current_name(const struct imf_gate *g);

/* Login-first sessions (lobby.h): the proxy greeted the client and logs
 * in to the backend itself, so the gate sees neither the greeting nor the
 * login on the relay path.
 *
 * imf_gate_lf_greeting: the backend's greeting line, read by the backend
 * client: sets the profile and the shields (quirks = auto) as a relayed
 * greeting would; true when it was PREAUTH (the gate is then
 * authenticated).
 * imf_gate_lf_login_begin: a login attempt by the client under tag with
 * mech ("LOGIN" or "PLAIN") for user (any bytes; copied, cut at
 * IMF_GATE_USER_MAX) with a password only hashed, never kept; returns true
 * when login_refused (the throttle) refuses it.
 * imf_gate_lf_login_end: the attempt ended with r; on IMF_LOGIN_OK the gate
 * is authenticated, and knows whether the backend takes LITERAL+/LITERAL-. */
bool imf_gate_lf_greeting(struct imf_gate *g, const uint8_t *line, size_t len);
bool imf_gate_lf_login_begin(struct imf_gate *g, const char *tag, const char *mech,
                             const uint8_t *user, size_t user_len, const uint8_t *pass,
                             size_t pass_len);
void imf_gate_lf_login_end(struct imf_gate *g, enum imf_login_result r, bool lplus, bool lminus);

/* Tags of the commands the proxy sends on its own; a client may not use them. */
#define IMF_GATE_ID_TAG   "imapfront-id"
#define IMF_GATE_POLL_TAG "imapfront-poll"

#endif
