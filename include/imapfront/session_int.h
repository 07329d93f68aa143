/* session_int: what the files of one session share (private to them:
 * session.c, relay.c, compress.c, session_tls.c, session_btls.c, upstream.c,
 * keeper.c, shield.c; nothing else includes it).
 *
 * Bytes move through chains, one set per direction:
 *
 *   client socket -> client.rx (ciphertext) -> SSL_read -> c_plain ->
 *   command framer + gate -> backend.tx -> backend socket
 *
 *   backend socket -> backend.rx -> response framer + gate -> p_tx
 *   (plaintext) -> SSL_write -> client.tx (ciphertext) -> client socket
 *
 * With TLS to the backend (session_btls.c), its socket reads into and
 * writes from two ciphertext chains of s->btls, and backend.rx/tx stay
 * plaintext: ciphertext -> SSL_read -> backend.rx, backend.tx -> SSL_write
 * -> ciphertext (conn.wire).
 *
 * Each direction is bounded by [imap] buffer_limit: when what it holds
 * reaches the limit the session stops reading its source, and resumes below
 * half of it. Everything that happens to a session ends in imf_sess_pump(),
 * which moves what can move, starts writes and sets the read interest; state
 * changes go through imf_sess_set_state(). Memory is freed only once every
 * handle of the session has closed. */
#ifndef IMAPFRONT_SESSION_INT_H
#define IMAPFRONT_SESSION_INT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <zlib.h>
#include <openssl/ssl.h>

#include "imapfront/backend_tls.h"
#include "imapfront/chain.h"
#include "imapfront/conn.h"
#include "imapfront/gate.h"
#include "imapfront/imap_framer.h"
#include "imapfront/session.h"
#include "imapfront/stats.h"
#include "imapfront/telemetry.h"
#include "imapfront/tls.h"
#include "imapfront/worker.h"
#include "imapfront/zchain.h"

enum sess_state {
    SESS_PROXY_HEADER, /* reading the load balancer's PROXY header */
    SESS_HANDSHAKE,    /* TLS handshake with the client (the backend may be up) */
    SESS_QUEUED,       /* waiting for a backend slot (admission control); no backend socket */
    SESS_CONNECTING,   /* connecting to the backend */
    SESS_RELAY,        /* both sides up (before STARTTLS: in plaintext) */
    SESS_CLOSING,      /* backend gone; flushing the last bytes and close_notify */
    SESS_CLOSED,       /* handles closing; freed when the last one has */
    SESS_STATE_COUNT
};

/* Largest plaintext handed to one SSL_write: one full TLS record. */
#define TLS_RECORD_MAX 16384
/* How long a closing session waits for the client to take its last bytes. */
#define LINGER_MS 5000
/* Response lines are held whole (for policy) up to this size, then streamed. */
#define RESPONSE_LINE_HOLD (64 * 1024)
/* COMPRESS: inflated octets one pump may produce before it yields, and the
 * ratio (inflated / compressed) past which the stream is refused, once
 * this much has been inflated. */
#define INFLATE_BUDGET      (256 * 1024)
#define INFLATE_RATIO_MAX   200
#define INFLATE_RATIO_AFTER (64u * 1024 * 1024)
/* A compressing session whose client sent nothing for this long, with no
 * command in progress, gives zlib's state back (made again on the next
 * octets): an idle session then holds at most the client's window. */
#define COMPRESS_IDLE_MS 2000

/* A client address: IPv4 or IPv6 only, so no sockaddr_storage (128 bytes)
 * per session. */
union sess_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* Everything here is held for the session's whole life, idle or not: what
 * is needed only at times (a write that did not complete at once, a
 * connect, the telemetry of commands in flight, the IDLE keeper's and the
 * CRLF split's timers, line buffers) is allocated when needed and freed
 * when done, so that an idle session costs little. */
struct imf_session {
    struct imf_session *prev, *next; /* worker's list */
    struct imf_worker *worker;
    struct imf_listener *listener;
    struct imf_config *cfg; /* snapshot taken at accept (one reference) */
    const struct imf_listen_config *lcfg;
    const struct imf_pool_config *pool; /* its backend pool, inside cfg */
    enum sess_state state;
    enum imf_close_reason reason;

    struct imf_conn client; /* rx: ciphertext (plaintext before STARTTLS); tx: ciphertext */
    struct imf_conn backend;
    uv_timer_t timer;
    unsigned open_handles;
    unsigned pump_depth; /* imf_sess_pump() calls under way (a close waits for 0) */

    bool shutdown_sent; /* close_notify queued */
    bool tls_failed;    /* the TLS connection failed: only its alert may still go out */
    bool linger;        /* on close: FIN first, then read and discard until EOF */
    bool lingering;     /* ... doing so now (bounded by the linger timer) */

    SSL *ssl;
    struct imf_tls_io tio;

    struct imf_chain c_plain; /* upstream: client.rx -> c_plain -> backend.tx */
    struct imf_chain p_tx;    /* downstream: backend.rx -> p_tx -> client.tx */
    size_t high, low;         /* watermarks per direction */

    /* Command side. */
    struct imf_framer cfr;
    uint8_t *cline; /* the current command line (never a literal) */
    size_t cline_len, cline_cap;

    /* Response side. */
    struct imf_framer rfr;
    uint8_t *rline;
    size_t rline_len, rline_cap;
    bool rline_streaming; /* this line was too long to hold: streamed */
    bool logout_done;     /* the LOGOUT's tagged answer went to the client */

    /* The IMAP policy (gate.h): every decision about what crosses. */
    struct imf_gate gate;
    struct imf_gate_params gate_params;
    struct imf_chain l_tx;   /* the proxy's own answers, until a response boundary */
    uint64_t last_client_ms; /* last time the client sent anything */
    uint64_t discarded_after_starttls;
    uint8_t server_index; /* pool->servers[] of the backend, once connected */

    /* Shields for fragile backends. */
    bool holding;       /* a complete next command is being held back */
    bool split_wait;    /* crlf split: the literal's end must leave before the rest */
    bool upstream_kick; /* a shield opened: pump the client side again */
    bool split_timer_inited;
    uint64_t split_since_ms;  /* when the literal's end was written (monotonic), 0 = not yet */
    uint32_t peer_window_max; /* widest receive window the backend advertised */
    uv_timer_t *split_timer;  /* allocated on first use, freed with the session */
    uint32_t held, converted, splits; /* for the summary line */

    /* The IDLE keeper: keep-alives to the client, refreshes or polls
     * towards the backend, all invisible to the client (the gate decides
     * what may be sent). */
    bool idle_timer_inited;
    bool batch_inited;       /* batch_check initialised (must be closed) */
    uv_check_t *batch_check; /* relays a burst of client reads at once; see on_client_read */
    bool yield_inited;       /* yield_idle initialised (must be closed) */
    uv_idle_t *yield_idle;   /* resumes work cut short to let other sessions run */
    uv_timer_t *idle_timer;  /* allocated on first use, freed with the session */
    uint64_t next_keepalive_ms, next_backend_ms; /* deadlines, loop time */

    /* COMPRESS=DEFLATE terminated here (RFC 4978): the client's bytes are
     * inflated between TLS and the framer, ours deflated between the
     * policy and TLS; the backend never sees compression. */
    struct imf_zchain z;  /* both streams, once active */
    struct imf_chain c_z; /* decrypted client bytes, still compressed */
    struct imf_chain p_z; /* deflated, not yet encrypted */

    /* Telemetry: commands in flight, for latency and anomaly detectors
     * (NULL while none is). */
    struct imf_tracker *tracker;
    bool stall_reported; /* the client's current literal was reported stalled */

    /* Draining (SIGTERM): BYE as soon as no command is in progress. */
    bool draining;

    /* Backend choice: the servers to try, in order (indexes into
     * pool->servers), allocated only while connecting. */
    uint8_t *plan;
    uint8_t plan_len, plan_pos;
    uint8_t plan_up;        /* plan[0..plan_up) were up when it was made */
    bool connect_abandoned; /* the pending connect was given up (timeout) */
    /* A server written as a host name (upstream.c): its lookup in flight
     * (counted in open_handles), then its addresses, tried in order; held
     * only while connecting. */
    struct sess_resolve *resolving;
    struct addrinfo *addrs, *addr_next;
    /* TLS to the backend (session_btls.c), NULL with tls = off: allocated
     * at connect, freed when the backend socket has closed. */
    struct imf_btls *btls;

    /* Logins (throttle.h): the attempt in progress and a failure's held
     * answer. */
    bool login_pending;      /* begun in the throttle table, not yet ended */
    bool login_timer_inited; /* login_timer initialised (must be closed) */
    uint64_t login_sent_ms;  /* when the attempt went to the backend (loop time) */
    uint64_t login_delay_ms; /* its failure is answered this much later */
    uv_timer_t *login_timer; /* allocated on first use, freed with the session */
    uint8_t *login_held;     /* a failure's tagged answer, until the delay ends */
    size_t login_held_len;
    char *user; /* the authenticated user, for the summary line */

    /* Admission control (upstream.c): a session waiting for a backend
     * slot is on its worker's queue, oldest first, and holds no backend
     * socket. */
    struct imf_session *qprev, *qnext;
    uint64_t wait_since_ms; /* imf_clock_ms() when it first asked for a backend */
    uint8_t slot_server;    /* pool->servers[] whose slots it holds */
    uint8_t queue_server;   /* pool->servers[] it waits for (counted there, for metrics) */
    bool queued;            /* on the worker's queue */
    bool holds_session;     /* holds a backend connection of slot_server (max_sessions) */
    bool holds_connect;     /* ... and a connect in progress (max_connecting) */
    bool saw_timeout;       /* a connect of this round timed out: slow, not gone */
    bool awaiting_greeting; /* connected, the backend's greeting not yet read */
    bool lf_routed;         /* login-first: the login being decided has a pool */
    uint64_t backend_up_ms; /* uv_now() when the connect (and backend TLS) completed */

    /* For the summary line. */
    uint64_t bytes_in, bytes_out; /* plaintext from / to the client */
    uint64_t start_ms;
    char peer[64];
    const char *backend_name; /* the server's text in pool, or NULL */
    const char *tls_version;  /* static strings of the TLS library, or NULL */
    const char *tls_cipher;
    union sess_addr peer_addr; /* the client (after a PROXY header: the real one) */
    bool ip_counted;           /* holds one max_connections_per_ip slot */
    bool counted_open;         /* counted in sessions_open */
    const char *refusal;       /* BYE text instead of a backend, once TLS is up */

    /* Login-first ([route] configured): the proxy's lobby and its login to
     * the backend, from the proxy's greeting until the login succeeds
     * (lobby_sess.c); NULL otherwise. */
    struct imf_lf *lf;
};

/* session.c: accept, admission, the pump, the timers, closing and the summary line. */
/* Sets the gate's parameters that come from s->pool (a login-first session
 * changes its pool before it connects). */
void imf_sess_gate_pool_params(struct imf_session *s);
const char *imf_sess_backend_label(const struct imf_session *s);
void *imf_sess_lazy(struct imf_session *s, uv_handle_type type, void **slot, bool *inited);
void imf_sess_set_state(struct imf_session *s, enum sess_state st);
int imf_sess_addr_parts(const union sess_addr *a, char *host, size_t host_len);
void imf_sess_to_client(struct imf_session *s, const void *p, size_t n);
void imf_sess_to_backend(struct imf_session *s, const void *p, size_t n);
void imf_sess_bye(struct imf_session *s, enum imf_close_reason reason, const char *text);
void imf_sess_free(struct imf_session *s);
void imf_sess_close(struct imf_session *s, enum imf_close_reason reason, bool graceful);
void imf_sess_arm_inactivity_timer(struct imf_session *s);
void imf_sess_pump(struct imf_session *s);

/* relay.c: framing both directions and applying the gate's decisions. */
void imf_sess_line_shed(uint8_t **buf, size_t len, size_t *cap);
bool imf_sess_response_boundary(const struct imf_session *s);
void imf_sess_flush_local(struct imf_session *s);
void imf_sess_local_answer(struct imf_session *s, const void *p, size_t n);
void imf_sess_pump_upstream(struct imf_session *s);
void imf_sess_process_responses(struct imf_session *s);

/* compress.c: COMPRESS=DEFLATE on the client side. */
void imf_sess_start_compress(struct imf_session *s, const char *ok, size_t ok_len);
int imf_sess_inflate_step(struct imf_session *s);
void imf_sess_deflate_downstream(struct imf_session *s);
/* The session has been idle for COMPRESS_IDLE_MS: free zlib's state. */
void imf_sess_compress_idle(struct imf_session *s);

/* session_tls.c: the client's TLS: handshake, decryption, encryption. */
int imf_sess_decrypt_records(struct imf_session *s);
void imf_sess_encrypt_downstream(struct imf_session *s);
void imf_sess_encrypt_all(struct imf_session *s);
void imf_sess_on_handshake_timeout(uv_timer_t *t);
void imf_sess_do_handshake(struct imf_session *s);
int imf_sess_begin_tls(struct imf_session *s);
void imf_sess_start_tls(struct imf_session *s);

/* upstream.c: admission, connecting to a backend server (resolving its
 * name first when it has one), failover and passive health. */
void imf_sess_connect_backend(struct imf_session *s);
/* Leaves the queue, gives back the slots the session holds and drops
 * the addresses of a connect (its backend is closing); idempotent. */
void imf_sess_release_backend(struct imf_session *s);
/* The backend sent its first bytes (or closed): its connect is over, for
 * max_connecting. */
void imf_sess_greeted(struct imf_session *s);

/* The backend is connected, and its TLS (if any) is up: relay. */
void imf_sess_backend_up(struct imf_session *s);
/* Connecting to the current server failed after the TCP connect (TLS,
 * STARTTLS, the pin): a failed connect, logged with why; the session goes
 * on to the next server. */
void imf_sess_backend_failed(struct imf_session *s, const char *why);

/* session_btls.c: TLS to the backend (tls = on | starttls). */
/* The TCP connect is done: sets up s->btls (its chains, conn.wire) and the
 * first step. 0 or UV_ENOMEM (s->btls may then be set: freed as usual). */
int imf_btls_start(struct imf_session *s);
/* Advances the negotiation with what arrived (SESS_CONNECTING); ends in
 * imf_sess_backend_up() or imf_sess_backend_failed(). */
void imf_btls_step(struct imf_session *s);
bool imf_btls_negotiating(const struct imf_session *s);
/* Where the backend socket's reads go: the ciphertext chain, or backend.rx. */
struct imf_chain *imf_btls_wire_in(struct imf_session *s);
/* Ciphertext held towards the backend (up) or from it, for the watermarks. */
size_t imf_btls_buffered(const struct imf_session *s, bool up);
/* Once up: backend ciphertext -> backend.rx; backend.tx -> ciphertext. */
void imf_btls_decrypt(struct imf_session *s);
void imf_btls_encrypt(struct imf_session *s);
/* The negotiation's step, for log lines ("TLS handshake"...). */
const char *imf_btls_step_name(const struct imf_session *s);
void imf_btls_free(struct imf_session *s);

/* keeper.c: the IDLE keeper's timer. */
void imf_sess_idle_begin(struct imf_session *s);
void imf_sess_idle_end(struct imf_session *s);

/* login.c: login attempts: the throttle, their log line, a failure's delay. */
bool imf_sess_login_refused(void *ctx, const struct imf_gate_login *l);
void imf_sess_login_finished(struct imf_session *s, const uint8_t *line, size_t len);
bool imf_sess_login_hold(struct imf_session *s, const uint8_t *line, size_t len);
void imf_sess_login_abort(struct imf_session *s);

/* lobby_sess.c: login-first sessions. lf_start greets the client and opens
 * the lobby (routing is configured); lf_tls_up: TLS with the client is up,
 * true when the lobby goes on (else connect as usual); lf_pump: the lobby's
 * pass (while s->lf); lf_commands: the client's commands while in the lobby
 * (from the decrypting loop); lf_backend_failed: no backend server could
 * be had: the client's login is answered NO and the session stays. */
void imf_sess_lf_start(struct imf_session *s);
bool imf_sess_lf_tls_up(struct imf_session *s);
void imf_sess_lf_pump(struct imf_session *s);
void imf_sess_lf_commands(struct imf_session *s);
void imf_sess_lf_backend_failed(struct imf_session *s, const char *why);
/* The login-first session's backend is of no more use: it is closed, the
 * session kept (a login in progress is answered NO [UNAVAILABLE]). */
void imf_sess_lf_drop_backend(struct imf_session *s, const char *why);

/* The client's framer failed (ev: its IMF_EV_ERROR): BYE with the reason. */
void imf_sess_client_framing_error(struct imf_session *s, const struct imf_framer_ev *ev);
void imf_sess_lf_free(struct imf_session *s);

/* shield.c: literal_crlf_split's write scheduling. */
bool imf_sess_split_drained(struct imf_session *s);

#endif
