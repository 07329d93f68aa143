/* session: the relay between one TLS client and one plain backend.
 *
 * Bytes move through chains, one set per direction:
 *
 *   client socket -> c_rx (ciphertext) -> SSL_read -> c_plain -> command
 *   framer + policy -> b_tx -> backend socket
 *
 *   backend socket -> b_rx -> response framer + policy -> p_tx (plaintext)
 *   -> SSL_write -> c_tx (ciphertext) -> client socket
 *
 * Each direction is bounded by [imap] buffer_limit: when what it holds
 * reaches the limit the session stops reading its source, and resumes below
 * half of it. Everything that happens to a session ends in session_pump(),
 * which moves what can move, starts writes and sets the read interest; state
 * changes go through set_state(). Memory is freed only once every handle of
 * the session has closed. */
#include "imapfront/session.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <zlib.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imapfront/backend.h"
#include "imapfront/capability.h"
#include "imapfront/gate.h"
#include "imapfront/chain.h"
#include "imapfront/conn.h"
#include "imapfront/imap.h"
#include "imapfront/imap_framer.h"
#include "imapfront/iplimit.h"
#include "imapfront/proxy_proto.h"
#include "imapfront/sockq.h"
#include "imapfront/telemetry.h"
#include "imapfront/log.h"
#include "imapfront/tls.h"
#include "imapfront/util.h"
#include "imapfront/worker.h"

const char *const imf_close_reason_names[IMF_CLOSE_REASON_COUNT] = {
    "none",
    "logout",
    "client-eof",
    "backend-eof",
    "backend-unavailable",
    "handshake-failed",
    "handshake-timeout",
    "line-too-long",
    "literal-malformed",
    "literal-too-big",
    "tls-error",
    "client-error",
    "backend-error",
    "shutdown",
    "no-memory",
    "refused",
    "preauth-timeout",
    "idle-timeout",
    "proxy-protocol",
    "no-resources",
};
static_assert(IMF_ARRAY_LEN(imf_close_reason_names) == IMF_CLOSE_REASON_COUNT, "reason names");

/* Sessions open in the whole process, for max_connections: the only
 * counter every worker writes (one locked add per session start and end). */
static _Atomic uint64_t sessions_open;

enum sess_state {
    SESS_PROXY_HEADER, /* reading the load balancer's PROXY header */
    SESS_HANDSHAKE,    /* TLS handshake with the client (the backend may be up) */
    SESS_CONNECTING,   /* connecting to the backend */
    SESS_RELAY,        /* both sides up (before STARTTLS: in plaintext) */
    SESS_CLOSING,      /* backend gone; flushing the last bytes and close_notify */
    SESS_CLOSED,       /* handles closing; freed when the last one has */
    SESS_STATE_COUNT
};

static const char *const sess_state_names[SESS_STATE_COUNT] = {
    "proxy-header", "handshake", "connecting", "relay", "closing", "closed",
};
static_assert(IMF_ARRAY_LEN(sess_state_names) == SESS_STATE_COUNT, "state names");

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

/* A client address: IPv4 or IPv6 only, so no sockaddr_storage (128 bytes)
 * per session. */
union sess_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

static_assert(IMF_BACKEND_MAX <= 256, "a plan entry fits a byte");

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
    enum sess_state state;
    enum imf_close_reason reason;

    struct imf_conn client; /* rx: ciphertext (plaintext before STARTTLS); tx: ciphertext */
    struct imf_conn backend;
    uv_timer_t timer;
    unsigned open_handles;

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
    uint8_t server_index; /* cfg->servers[] of the backend, once connected */

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
    z_stream *zin, *zout; /* both set once active */
    bool zout_pending;    /* input since the last sync flush */
    bool zin_full;        /* inflate filled its output: it may hold more */
    struct imf_chain c_z; /* decrypted client bytes, still compressed */
    struct imf_chain p_z; /* deflated, not yet encrypted */

    /* Telemetry: commands in flight, for latency and anomaly detectors
     * (NULL while none is). */
    struct imf_tracker *tracker;
    bool stall_reported; /* the client's current literal was reported stalled */

    /* Draining (SIGTERM): BYE as soon as no command is in progress. */
    bool draining;

    /* Backend choice: the servers to try, in order (indexes into
     * cfg->servers), allocated only while connecting. */
    uint8_t *plan;
    uint8_t plan_len, plan_pos;
    bool connect_abandoned; /* the pending connect was given up (timeout) */

    /* For the summary line. */
    uint64_t bytes_in, bytes_out; /* plaintext from / to the client */
    uint64_t start_ms;
    char peer[64];
    const char *backend_name; /* the server's text in cfg, or NULL */
    const char *tls_version;  /* static strings of the TLS library, or NULL */
    const char *tls_cipher;
    union sess_addr peer_addr; /* the client (after a PROXY header: the real one) */
    bool ip_counted;           /* holds one max_connections_per_ip slot */
    bool counted_open;         /* counted in sessions_open */
    const char *refusal;       /* BYE text instead of a backend, once TLS is up */
};

static void session_pump(struct imf_session *s);
static void session_close(struct imf_session *s, enum imf_close_reason reason, bool graceful);
static void arm_inactivity_timer(struct imf_session *s);
static void read_proxy_header(struct imf_session *s);

struct imf_session *imf_session_next(struct imf_session *s)
{
    return s->next;
}

/* For log lines: the server being tried or used, "-" before. */
static const char *backend_label(const struct imf_session *s)
{
    return s->backend_name != NULL ? s->backend_name : "-";
}

/* A handle needed only at times, made on first use (see conn.h). */
static void *lazy(struct imf_session *s, uv_handle_type type, void **slot, bool *inited)
{
    return imf_lazy_handle(&s->worker->loop, type, s, slot, inited, &s->open_handles);
}

static void set_state(struct imf_session *s, enum sess_state st)
{
    if (s->state == st)
        return;
    imf_debug("session", "client=%s state %s -> %s", s->peer, sess_state_names[s->state],
              sess_state_names[st]);
    s->state = st;
}

/* ---- small helpers --------------------------------------------------- */

/* The address and port of a, as text ("?" and 0 for another family). */
static int addr_parts(const union sess_addr *a, char *host, size_t host_len)
{
    snprintf(host, host_len, "?");
    if (a->sa.sa_family == AF_INET) {
        uv_ip4_name(&a->in, host, host_len);
        return ntohs(a->in.sin_port);
    }
    if (a->sa.sa_family == AF_INET6) {
        uv_ip6_name(&a->in6, host, host_len);
        return ntohs(a->in6.sin6_port);
    }
    return 0;
}

/* Appends to a growable line buffer, bounded by the framer's line limit. */
static int line_append(uint8_t **buf, size_t *len, size_t *cap, const uint8_t *p, size_t n)
{
    if (n > *cap - *len) {
        size_t ncap = *cap != 0 ? *cap : 256;
        while (ncap - *len < n)
            ncap *= 2;
        uint8_t *nb = realloc(*buf, ncap);
        if (nb == NULL)
            return UV_ENOMEM;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

/* Frees a line buffer holding no partial line: called when a pass is over,
 * so a session between commands holds none, while lines framed in one pass
 * share one allocation. */
static void line_shed(uint8_t **buf, size_t len, size_t *cap)
{
    if (len == 0 && *buf != NULL) {
        free(*buf);
        *buf = NULL;
        *cap = 0;
    }
}

/* Drops a line buffer that grew large, so an idle session keeps little. */
static void line_reset(uint8_t **buf, size_t *len, size_t *cap)
{
    *len = 0;
    if (*cap > 4096) {
        free(*buf);
        *buf = NULL;
        *cap = 0;
    }
}

/* Queues plaintext for the client (encrypted in session_pump). */
static void to_client(struct imf_session *s, const void *p, size_t n)
{
    if (imf_chain_append(&s->p_tx, p, n) != 0)
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
}

static void to_client_str(struct imf_session *s, const char *text)
{
    to_client(s, text, strlen(text));
}

static void to_backend(struct imf_session *s, const void *p, size_t n)
{
    if (imf_chain_append(&s->backend.tx, p, n) != 0)
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
}

/* Between two responses: nothing of one is half relayed or held. */
static bool response_boundary(const struct imf_session *s)
{
    return imf_framer_at_message_start(&s->rfr) && s->rline_len == 0 && !s->rline_streaming;
}

/* The proxy's own answers go out only between responses, never inside one
 * (a FETCH literal, say). */
static void flush_local(struct imf_session *s)
{
    if (s->l_tx.bytes > 0 && response_boundary(s) &&
        imf_chain_splice(&s->p_tx, &s->l_tx, s->l_tx.bytes) != 0)
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
}

static void local_answer(struct imf_session *s, const void *p, size_t n)
{
    if (imf_chain_append(&s->l_tx, p, n) != 0) {
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    flush_local(s);
}

/* Nothing from the backend is pending and no answer of ours waits. */
static bool backend_quiet(const struct imf_session *s)
{
    return s->backend.rx.bytes == 0 && s->l_tx.bytes == 0 && response_boundary(s);
}

/* Sends "* BYE text" and closes gracefully with reason. */
static void bye(struct imf_session *s, enum imf_close_reason reason, const char *text)
{
    flush_local(s);
    /* A client refused for what it sends may still be sending: closing on
     * unread input makes the kernel send RST, which can destroy the BYE in
     * flight. Those closes linger (see session_pump). */
    if (reason == IMF_CLOSE_LINE_TOO_LONG || reason == IMF_CLOSE_LITERAL_MALFORMED ||
        reason == IMF_CLOSE_LITERAL_TOO_BIG)
        s->linger = true;
    char line[256];
    snprintf(line, sizeof(line), "* BYE %s\r\n", text);
    to_client_str(s, line);
    imf_log_kv(IMF_LOG_INFO, "session", "closing with BYE", "client", s->peer, "reason",
               imf_close_reason_names[reason], "detail", text, NULL);
    session_close(s, reason, true);
}

/* ---- closing ----------------------------------------------------------- */

static void log_summary(struct imf_session *s)
{
    char in[24], out[24], dur[24], held[12], conv[12], splits[12];
    snprintf(held, sizeof(held), "%" PRIu32, s->held);
    snprintf(conv, sizeof(conv), "%" PRIu32, s->converted);
    snprintf(splits, sizeof(splits), "%" PRIu32, s->splits);
    snprintf(in, sizeof(in), "%" PRIu64, s->bytes_in);
    snprintf(out, sizeof(out), "%" PRIu64, s->bytes_out);
    snprintf(dur, sizeof(dur), "%" PRIu64, uv_now(&s->worker->loop) - s->start_ms);
    imf_log_kv(IMF_LOG_INFO, "session", "closed", "client", s->peer, "listener", s->lcfg->name,
               "tls", s->tls_version ? s->tls_version : "-", "cipher",
               s->tls_cipher ? s->tls_cipher : "-", "backend",
               s->backend_name ? s->backend_name : "-", "bytes_in", in, "bytes_out", out,
               "duration_ms", dur, "held", held, "literals_converted", conv, "crlf_splits", splits,
               "reason", imf_close_reason_names[s->reason], NULL);
}

static void session_free(struct imf_session *s)
{
    struct imf_worker *w = s->worker;
    log_summary(s);
    imf_chain_clear(&s->client.rx);
    imf_chain_clear(&s->c_plain);
    imf_chain_clear(&s->backend.tx);
    imf_chain_clear(&s->backend.rx);
    imf_chain_clear(&s->p_tx);
    imf_chain_clear(&s->client.tx);
    imf_chain_clear(&s->c_z);
    imf_chain_clear(&s->p_z);
    imf_chain_clear(&s->l_tx);
    imf_gate_cleanup(&s->gate);
    if (s->zin != NULL) {
        inflateEnd(s->zin);
        free(s->zin);
    }
    if (s->zout != NULL) {
        deflateEnd(s->zout);
        free(s->zout);
    }
    free(s->cline);
    free(s->rline);
    free(s->plan);
    free(s->idle_timer);
    free(s->batch_check);
    free(s->yield_idle);
    free(s->split_timer);
    imf_telemetry_free(&s->tracker);
    if (s->ssl != NULL)
        SSL_free(s->ssl);
    imf_config_unref(s->cfg);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    if (s->ip_counted)
        imf_iplimit_release(&s->peer_addr.sa);
    if (s->counted_open)
        atomic_fetch_sub(&sessions_open, 1);
    imf_stat_add(&w->stats.sessions_active, -1);
    imf_stat_add(&s->listener->sessions_active, -1);
    imf_stat_add(&w->stats.closes[s->reason], 1);
    free(s);
    imf_worker_session_gone(w, NULL);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct imf_session *s = h->data;
    imf_assert(s->open_handles > 0);
    if (--s->open_handles == 0)
        session_free(s);
}

static void close_handle(struct imf_session *s, uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, on_handle_closed);
}

/* One of the handles made by lazy(): closed if it was initialised. */
static void close_lazy(struct imf_session *s, void *h, bool *inited)
{
    if (*inited) {
        *inited = false;
        close_handle(s, h);
    }
}

static void close_backend(struct imf_session *s)
{
    close_lazy(s, s->idle_timer, &s->idle_timer_inited);
    close_lazy(s, s->yield_idle, &s->yield_inited);
    close_lazy(s, s->batch_check, &s->batch_inited);
    close_lazy(s, s->split_timer, &s->split_timer_inited);
    if (s->backend.inited && !s->backend.closing) {
        s->backend.closing = true;
        s->backend.reading = false;
        close_handle(s, (uv_handle_t *)&s->backend.tcp);
    }
}

static void close_client(struct imf_session *s)
{
    if (!s->client.closing) {
        s->client.closing = true;
        s->client.reading = false;
        close_handle(s, (uv_handle_t *)&s->client.tcp);
    }
}

static void on_linger_timeout(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    close_client(s);
    close_handle(s, (uv_handle_t *)&s->timer);
    set_state(s, SESS_CLOSED);
}

/* Ends the session. The backend is closed at once (a partial command must
 * never be completed by what follows). With graceful, what is queued for the
 * client is flushed, followed by close_notify, before the client socket
 * closes; otherwise the client closes now. The first reason given wins. */
static void session_close(struct imf_session *s, enum imf_close_reason reason, bool graceful)
{
    if (s->reason == IMF_CLOSE_NONE)
        s->reason = reason;
    if (s->state == SESS_CLOSED)
        return;
    close_backend(s);
    if (s->state == SESS_CLOSING && graceful)
        return;
    if (graceful && !s->client.closing && !s->client.eof) {
        /* session_pump() flushes what is queued (and close_notify) and then
         * closes; the linger timer bounds how long a client that does not
         * read can keep us waiting. */
        set_state(s, SESS_CLOSING);
        uv_timer_stop(&s->timer);
        uv_timer_start(&s->timer, on_linger_timeout, LINGER_MS, 0);
        session_pump(s);
        return;
    }
    set_state(s, SESS_CLOSED);
    close_client(s);
    close_handle(s, (uv_handle_t *)&s->timer);
}

/* No command in progress, nothing half received: a BYE now loses nothing.
 * A running IDLE counts as quiet (RFC 9051 lets the server end it). */
static bool session_quiet(const struct imf_session *s)
{
    return s->state == SESS_RELAY && imf_gate_quiet(&s->gate) && s->cline_len == 0 &&
           s->c_plain.bytes == 0 && (s->ssl == NULL ? s->client.rx.bytes == 0 : true) &&
           imf_framer_at_message_start(&s->cfr);
}

void imf_session_drain(struct imf_session *s)
{
    if (s->state != SESS_RELAY) {
        /* Handshaking or connecting: nothing started, nothing to lose. */
        session_close(s, IMF_CLOSE_SHUTDOWN, false);
        return;
    }
    s->draining = true;
    if (session_quiet(s))
        bye(s, IMF_CLOSE_SHUTDOWN, "[UNAVAILABLE] Server shutting down");
}

void imf_session_shutdown(struct imf_session *s)
{
    if (s->state == SESS_RELAY || s->state == SESS_CONNECTING) {
        bye(s, IMF_CLOSE_SHUTDOWN, "[UNAVAILABLE] Server shutting down");
        return;
    }
    session_close(s, IMF_CLOSE_SHUTDOWN, false);
}

/* ---- writes ------------------------------------------------------------ */

/* A write that did not complete at once has: move on. */
static void on_written(struct imf_conn *c, int status)
{
    struct imf_session *s = c->tcp.data;
    if (status < 0) {
        if (status != UV_ECANCELED)
            session_close(s, c == &s->client ? IMF_CLOSE_CLIENT_ERROR : IMF_CLOSE_BACKEND_ERROR,
                          false);
        return;
    }
    session_pump(s);
}

static void write_side(struct imf_session *s, struct imf_conn *c)
{
    if (imf_conn_write(c, on_written) != 0)
        session_close(s, c == &s->client ? IMF_CLOSE_CLIENT_ERROR : IMF_CLOSE_BACKEND_ERROR, false);
}

/* ---- the command side (client -> backend) ----------------------------- */

static void start_tls(struct imf_session *s);

/* ---- the IDLE keeper ------------------------------------------------------ */

static void on_idle_timer(uv_timer_t *t);

/* Sets the timer for the nearest deadline: a keep-alive to the client, and
 * a refresh or a poll towards the backend. */
static void idle_arm(struct imf_session *s)
{
    if (s->state >= SESS_CLOSING)
        return; /* the timer's handle may be closing: never re-initialise it */
    uint64_t now = uv_now(&s->worker->loop);
    uint64_t next = UINT64_MAX;
    if (s->cfg->idle_keepalive_ms != 0)
        next = s->next_keepalive_ms;
    if (s->cfg->idle_mode == IMF_IDLE_POLL || s->cfg->idle_refresh_ms != 0)
        next = s->next_backend_ms < next ? s->next_backend_ms : next;
    if (next == UINT64_MAX) {
        if (s->idle_timer_inited)
            uv_timer_stop(s->idle_timer);
        return;
    }
    if (lazy(s, UV_TIMER, (void **)&s->idle_timer, &s->idle_timer_inited) == NULL) {
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    uv_timer_start(s->idle_timer, on_idle_timer, next > now ? next - now : 0, 0);
}

static uint64_t idle_backend_interval(const struct imf_session *s)
{
    return s->cfg->idle_mode == IMF_IDLE_POLL ? s->cfg->poll_interval_ms : s->cfg->idle_refresh_ms;
}

static void idle_begin(struct imf_session *s)
{
    uint64_t now = uv_now(&s->worker->loop);
    s->next_keepalive_ms = now + s->cfg->idle_keepalive_ms;
    uint64_t every = idle_backend_interval(s);
    s->next_backend_ms = every != 0 ? now + every : UINT64_MAX;
    idle_arm(s);
}

static void idle_end(struct imf_session *s)
{
    if (s->idle_timer_inited)
        uv_timer_stop(s->idle_timer);
}

static void on_idle_timer(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->state != SESS_RELAY || !imf_gate_idling(&s->gate))
        return;
    uint64_t now = uv_now(&s->worker->loop);
    if (s->cfg->idle_keepalive_ms != 0 && now >= s->next_keepalive_ms) {
        /* Only between whole responses, and none waiting: never inside a
         * line or a literal. */
        if (response_boundary(s) && s->l_tx.bytes == 0)
            local_answer(s, "* OK Still here\r\n", 17);
        s->next_keepalive_ms = now + s->cfg->idle_keepalive_ms;
    }
    if (now >= s->next_backend_ms) {
        char line[64];
        bool mid_line = s->cline_len > 0 || !imf_framer_at_message_start(&s->cfr);
        size_t n = s->cfg->idle_mode == IMF_IDLE_POLL
                       ? imf_gate_idle_poll(&s->gate, line, sizeof(line))
                       : imf_gate_idle_refresh(&s->gate, mid_line, line, sizeof(line));
        if (n > 0)
            to_backend(s, line, n);
        s->next_backend_ms = now + idle_backend_interval(s);
    }
    idle_arm(s);
    session_pump(s);
}

static void encrypt_downstream(struct imf_session *s);
static void encrypt_all(struct imf_session *s);

/* COMPRESS DEFLATE accepted: the OK leaves uncompressed, then both
 * directions are compressed. What the client sent after its command line
 * is compressed already. */
static void start_compress(struct imf_session *s, const char *ok, size_t ok_len)
{
    to_client(s, ok, ok_len);
    encrypt_all(s);
    s->zin = calloc(1, sizeof(*s->zin));
    s->zout = calloc(1, sizeof(*s->zout));
    if (s->zin == NULL || s->zout == NULL || inflateInit2(s->zin, -15) != Z_OK ||
        deflateInit2(s->zout, (int)s->cfg->compress_level, Z_DEFLATED, -15, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        /* The stream state is unknown to the client now: end it. */
        free(s->zin);
        free(s->zout);
        s->zin = s->zout = NULL;
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    imf_chain_splice(&s->c_z, &s->c_plain, s->c_plain.bytes);
    imf_debug("session", "client=%s COMPRESS DEFLATE active", s->peer);
}

/* Applies the gate's decision about the command line held in cline. */
static void on_command_line(struct imf_session *s, const struct imf_framer_ev *ev)
{
    struct imf_gate_decision d;
    imf_gate_client_line(&s->gate, s->cline, s->cline_len, ev, backend_quiet(s), &d);
    s->cline_len = d.len;
    if (ev->first_line)
        imf_debug("session", "client=%s command tag=%s name=%s", s->peer,
                  imf_gate_current_tag(&s->gate), imf_gate_current_name(&s->gate));
    if (d.log != NULL)
        imf_log_kv(IMF_LOG_INFO, "session", "command refused", "client", s->peer, "tag",
                   imf_gate_current_tag(&s->gate), "command", imf_gate_current_name(&s->gate),
                   "answer", d.log, NULL);
    if (d.actions & IMF_GATE_SKIP_LITERAL)
        imf_framer_skip_literal(&s->cfr);
    if (d.actions & IMF_GATE_CLOSE) {
        /* answer is "* BYE text\r\n"; bye() writes the frame itself. */
        char text[sizeof(d.answer)];
        size_t n = d.answer_len > 6 ? d.answer_len - 6 : 0;
        while (n > 0 && (d.answer[6 + n - 1] == '\r' || d.answer[6 + n - 1] == '\n'))
            n--;
        memcpy(text, d.answer + 6, n);
        text[n] = '\0';
        bye(s, d.why == IMF_GATE_CLOSE_TOOBIG ? IMF_CLOSE_LITERAL_TOO_BIG : IMF_CLOSE_CLIENT_ERROR,
            text);
        return;
    }
    if (d.actions & IMF_GATE_NEW_COMMAND) {
        if (imf_telemetry_sent(&s->tracker, imf_gate_current_tag(&s->gate),
                               imf_gate_current_name(&s->gate), s->cline, s->cline_len,
                               uv_hrtime() / 1000) != 0) {
            session_close(s, IMF_CLOSE_NO_MEMORY, false);
            return;
        }
    }
    if (d.actions & IMF_GATE_FORWARD) {
        if (d.actions & IMF_GATE_FIX_EOL) {
            /* A bare LF: the backend gets the CRLF it may wait for. */
            s->cline[s->cline_len - 1] = '\r';
            if (line_append(&s->cline, &s->cline_len, &s->cline_cap, (const uint8_t *)"\n", 1)) {
                session_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
        }
        to_backend(s, s->cline, s->cline_len);
        if (d.actions & IMF_GATE_CONVERTED) {
            s->converted++;
            imf_stat_add(&s->worker->stats.literals_converted, 1);
        }
    }
    if (d.actions & IMF_GATE_STARTTLS) {
        to_client(s, d.answer, d.answer_len);
        start_tls(s);
        return;
    }
    if (d.actions & IMF_GATE_COMPRESS) {
        start_compress(s, d.answer, d.answer_len);
        return;
    }
    if (d.actions & IMF_GATE_ANSWER)
        local_answer(s, d.answer, d.answer_len);
    if (d.actions & IMF_GATE_IDLE_BEGIN)
        idle_begin(s);
    if (d.actions & IMF_GATE_IDLE_END)
        idle_end(s);
}

/* Counts a command held back by pipelining = off (once per hold). */
static void note_hold(struct imf_session *s)
{
    if (s->holding)
        return;
    s->holding = true;
    s->held++;
    imf_stat_add(&s->worker->stats.commands_held, 1);
    uint64_t queued = s->client.rx.bytes + s->c_plain.bytes;
    if (queued > atomic_load_explicit(&s->worker->stats.longest_queue, memory_order_relaxed))
        atomic_store_explicit(&s->worker->stats.longest_queue, queued, memory_order_relaxed);
}

/* Frames what the client sent and relays it as the gate decides, until it
 * is all done, the gate says to wait, or the backend's queue is full. */
static void process_commands(struct imf_session *s)
{
    /* Before STARTTLS the client's bytes are plaintext already. */
    struct imf_chain *in = s->ssl != NULL ? &s->c_plain : &s->client.rx;
    while (s->state == SESS_RELAY && s->backend.tx.bytes < s->high && !s->split_wait) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(in, &avail);
        bool at_start = imf_framer_at_message_start(&s->cfr) && s->cline_len == 0;
        enum imf_gate_wait wait = imf_gate_client_wait(&s->gate, at_start);
        if (wait != IMF_GATE_GO) {
            if (wait == IMF_GATE_HOLD && avail > 0)
                note_hold(s);
            return;
        }
        s->holding = false;
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&s->cfr, p, avail, &ev);
        bool discarding = imf_gate_discarding(&s->gate);
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return;
        case IMF_EV_TEXT:
            if (!discarding && line_append(&s->cline, &s->cline_len, &s->cline_cap, p, n) != 0) {
                session_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
            break;
        case IMF_EV_LINE_END:
            on_command_line(s, &ev);
            line_reset(&s->cline, &s->cline_len, &s->cline_cap);
            break;
        case IMF_EV_LITERAL:
            if (discarding)
                break;
            /* Literal payloads move by block, not by copy. */
            if (imf_chain_splice(&s->backend.tx, in, n) != 0)
                session_close(s, IMF_CLOSE_NO_MEMORY, false);
            continue;
        case IMF_EV_LITERAL_END:
            if (imf_gate_shields(&s->gate)->crlf_split && !discarding) {
                /* Everything up to the literal's last octet leaves first;
                 * what follows waits until it has left our send queue. */
                s->split_wait = true;
            }
            break;
        case IMF_EV_ERROR:
            if (ev.error == IMF_FRAMER_LINE_TOO_LONG)
                bye(s, IMF_CLOSE_LINE_TOO_LONG, "Command line too long");
            else
                bye(s, IMF_CLOSE_LITERAL_MALFORMED, "Invalid literal announcement");
            return;
        default:
            return;
        }
        imf_chain_consume(in, n);
        if (in == &s->client.rx && s->ssl != NULL)
            return; /* STARTTLS: what follows is the handshake */
    }
}

/* Inflates compressed client bytes from c_z into c_plain. Returns 1 on
 * progress, 0 when it needs more input, -1 when the session ended. */
static int inflate_step(struct imf_session *s)
{
    size_t avail;
    const uint8_t *in = imf_chain_peek(&s->c_z, &avail);
    uint8_t *out;
    size_t room;
    if (imf_chain_reserve(&s->c_plain, TLS_RECORD_MAX, &out, &room) != 0) {
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
        return -1;
    }
    s->zin->next_in = (Bytef *)in;
    s->zin->avail_in = (uInt)avail;
    s->zin->next_out = out;
    s->zin->avail_out = (uInt)room;
    int rc = inflate(s->zin, Z_SYNC_FLUSH);
    size_t used = avail - s->zin->avail_in, made = room - s->zin->avail_out;
    imf_chain_commit(&s->c_plain, made);
    imf_chain_consume(&s->c_z, used);
    s->zin_full = s->zin->avail_out == 0;
    imf_stat_add(&s->worker->stats.compress_in_wire, (int64_t)used);
    imf_stat_add(&s->worker->stats.compress_in_plain, (int64_t)made);
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
        /* Corrupt data, or the client ended its stream: nothing after
         * it can be read any more. */
        bye(s, IMF_CLOSE_CLIENT_ERROR, "Compression error");
        return -1;
    }
    if (s->zin->total_out > INFLATE_RATIO_AFTER &&
        s->zin->total_out / (s->zin->total_in + 1) > INFLATE_RATIO_MAX) {
        /* Mail text deflates 5 to 10 times; this is a bomb. */
        bye(s, IMF_CLOSE_CLIENT_ERROR, "[LIMIT] Compression ratio too high");
        return -1;
    }
    return used > 0 || made > 0;
}

/* Decrypts records from c_rx into c_plain (c_z under COMPRESS) until the
 * library wants more ciphertext or the tail block is full: the framer then
 * sees what one socket read brought at once, and literal payloads leave as
 * whole blocks in one backend write. Returns 1 on progress, 0 when nothing
 * could be decrypted, -1 when the session ended. A failure after progress
 * is reported on the next call (the library repeats it), so that what was
 * decrypted before it is framed first, as it was received. */
static int decrypt_records(struct imf_session *s)
{
    struct imf_chain *into = s->zin != NULL ? &s->c_z : &s->c_plain;
    bool progress = false;
    /* Bounded: each pass fills at least a quarter of the block. */
    for (unsigned pass = 0; pass < IMF_BLOCK_DATA / (TLS_RECORD_MAX / 4); pass++) {
        uint8_t *dst;
        size_t room;
        if (imf_chain_reserve(into, TLS_RECORD_MAX, &dst, &room) != 0) {
            session_close(s, IMF_CLOSE_NO_MEMORY, false);
            return -1;
        }
        int n = SSL_read(s->ssl, dst, room > INT32_MAX ? INT32_MAX : (int)room);
        if (n > 0) {
            imf_chain_commit(into, (size_t)n);
            s->bytes_in += (uint64_t)n;
            imf_stat_add(&s->worker->stats.bytes_from_clients, n);
            progress = true;
            if (room - (size_t)n < TLS_RECORD_MAX)
                return 1; /* the block is full: frame it */
            if (s->client.rx.bytes == 0 && SSL_pending(s->ssl) == 0)
                return 1; /* nothing more has arrived */
            continue;
        }
        imf_chain_commit(into, 0);
        if (progress)
            return 1;
        int err = SSL_get_error(s->ssl, n);
        if (err == SSL_ERROR_WANT_READ)
            return 0;
        if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && s->tio.in_eof)) {
            /* close_notify or EOF: the client is gone; a half-sent command
             * must not reach the backend's parser complete. */
            s->client.eof = true;
            session_close(s, IMF_CLOSE_CLIENT_EOF, false);
            return -1;
        }
        imf_log_kv(IMF_LOG_INFO, "tls", "read failed", "client", s->peer, "reason",
                   imf_tls_failure_reason(s->ssl, &s->tio), NULL);
        /* The library queued a fatal alert: it must reach the client
         * (RFC 8446, 6.2) before the close; nothing else can go out. */
        s->tls_failed = true;
        session_close(s, IMF_CLOSE_TLS_ERROR, true);
        return -1;
    }
    return 1;
}

static void on_yield(uv_idle_t *h)
{
    struct imf_session *s = h->data;
    uv_idle_stop(h);
    session_pump(s);
}

/* Stops here and resumes on the next turn of the loop, after other
 * sessions' events (an idle handle: the loop does not block meanwhile).
 * Returns false when the handle cannot be had. */
static bool yield_later(struct imf_session *s)
{
    if (lazy(s, UV_IDLE, (void **)&s->yield_idle, &s->yield_inited) == NULL)
        return false;
    uv_idle_start(s->yield_idle, on_yield);
    return true;
}

/* Decrypts what the client sent into c_plain and relays it. Inflating is
 * bounded per call: a deflate bomb whose output the proxy swallows (the
 * octets of a refused command) would otherwise hold the worker, and every
 * session on it, for as long as it inflates. */
static void pump_upstream(struct imf_session *s)
{
    if (s->ssl == NULL) {
        process_commands(s);
        return;
    }
    uint64_t inflated_before = s->zin != NULL ? s->zin->total_out : 0;
    for (;;) {
        process_commands(s);
        if (s->state != SESS_RELAY || s->c_plain.bytes > 0 || s->client.eof)
            return;
        if (s->zin != NULL && (s->c_z.bytes > 0 || s->zin_full)) {
            if (s->zin->total_out - inflated_before >= INFLATE_BUDGET && yield_later(s))
                return;
            int r = inflate_step(s);
            if (r < 0)
                return;
            if (r > 0)
                continue;
        }
        if (s->client.rx.bytes == 0 && !s->tio.in_eof && SSL_pending(s->ssl) == 0)
            return;
        if (decrypt_records(s) <= 0)
            return;
    }
}

/* ---- the response side (backend -> client) ---------------------------- */

/* Relays a held response line, rewriting a capability list in it. */
static void relay_response_line(struct imf_session *s)
{
    struct imf_cap_policy pol;
    imf_gate_cap_policy(&s->gate, &pol);
    /* Scratch on the stack for the usual short line; a long one borrows
     * the heap for the moment. Either way the session keeps nothing. */
    uint8_t small[2048];
    uint8_t *out = small;
    size_t need = s->rline_len + IMF_CAP_GROWTH;
    if (need > sizeof(small) && (out = malloc(need)) == NULL) {
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    size_t cap = out == small ? sizeof(small) : need;
    size_t out_len;
    if (imf_capability_rewrite(s->rline, s->rline_len, &pol, out, cap, &out_len))
        to_client(s, out, out_len);
    else
        to_client(s, s->rline, s->rline_len);
    if (out != small)
        free(out);
}

/* The greeting showed what the server is: say so once per server. */
static void note_profile(struct imf_session *s)
{
    enum imf_gate_profile pr = imf_gate_profile(&s->gate);
    if (s->cfg->quirks != IMF_QUIRKS_AUTO ||
        !imf_backend_note_profile(s->cfg, s->server_index, (int)pr))
        return;
    const struct imf_gate_shields *sh = imf_gate_shields(&s->gate);
    imf_log_kv(IMF_LOG_INFO, "backend", "server profile", "backend", backend_label(s), "profile",
               imf_gate_profile_names[pr], "pipelining", sh->pipelining ? "on" : "off",
               "literal_plus", sh->literal_sync ? "sync" : "pass", "literal_crlf_split",
               sh->crlf_split ? "on" : "off", NULL);
}

static void on_response_line(struct imf_session *s, const struct imf_framer_ev *ev)
{
    if (!ev->first_line || s->rline_streaming) {
        to_client(s, s->rline, s->rline_len);
        return;
    }
    struct imf_gate_response g;
    imf_gate_response_line(&s->gate, s->rline, s->rline_len, &g);
    unsigned fx = g.effects;
    if (fx & IMF_GATE_R_PROFILE)
        note_profile(s);
    if (fx & IMF_GATE_R_ID_REFUSED)
        imf_log_kv(IMF_LOG_WARN, "backend", "ID with the client address refused", "client", s->peer,
                   "backend", backend_label(s), NULL);
    if (fx & IMF_GATE_R_BACKEND)
        to_backend(s, g.backend, g.backend_len);
    if (fx & IMF_GATE_R_SKIP_LITERAL)
        imf_framer_skip_literal(&s->cfr);
    if (fx & IMF_GATE_R_KICK)
        s->upstream_kick = true;
    if (fx & IMF_GATE_R_AUTH)
        arm_inactivity_timer(s); /* idle_timeout from now on */
    if (fx & IMF_GATE_R_IDLE_BEGIN)
        idle_begin(s);
    if (fx & IMF_GATE_R_IDLE_END)
        idle_end(s);
    if (fx & IMF_GATE_R_SWALLOW)
        return;
    if (g.r.kind == IMF_RESP_CONTINUATION && s->rline_len <= 3) {
        /* "+\r\n": RFC 9051 wants text (or base64) after "+ ". */
        imf_stat_add(&s->worker->stats.telemetry.anomalies[IMF_ANOMALY_BARE_PLUS], 1);
        imf_log_kv(IMF_LOG_INFO, "backend", "bare continuation request", "client", s->peer,
                   "backend", backend_label(s), NULL);
    }
    if (g.r.kind == IMF_RESP_TAGGED) {
        imf_telemetry_tagged(&s->tracker, &s->worker->stats.telemetry, g.r.tag, uv_hrtime() / 1000);
        if (fx & IMF_GATE_R_STRAY)
            imf_log_kv(IMF_LOG_WARN, "backend", "tagged response for no command in flight",
                       "client", s->peer, "backend", backend_label(s), "tag", g.r.tag, NULL);
    }
    relay_response_line(s);
    if (fx & IMF_GATE_R_LOGOUT)
        session_close(s, IMF_CLOSE_LOGOUT, true);
}

static void process_responses(struct imf_session *s)
{
    /* During a STARTTLS handshake responses are framed and held in p_tx
     * until TLS is up (bounded like everything else). */
    while ((s->state == SESS_RELAY || s->state == SESS_HANDSHAKE) && s->backend.up &&
           s->p_tx.bytes + s->client.tx.bytes < s->high) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(&s->backend.rx, &avail);
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&s->rfr, p, avail, &ev);
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return;
        case IMF_EV_TEXT:
            if (s->rline_streaming) {
                to_client(s, p, n);
            } else {
                if (line_append(&s->rline, &s->rline_len, &s->rline_cap, p, n) != 0) {
                    session_close(s, IMF_CLOSE_NO_MEMORY, false);
                    return;
                }
                if (s->rline_len > RESPONSE_LINE_HOLD) {
                    /* A long line (a big SEARCH result): nothing the policy
                     * rewrites is that long, so stream the rest. */
                    to_client(s, s->rline, s->rline_len);
                    line_reset(&s->rline, &s->rline_len, &s->rline_cap);
                    s->rline_streaming = true;
                }
            }
            break;
        case IMF_EV_LINE_END:
            if ((ev.literal_flags & IMF_LIT_PRESENT) &&
                imf_telemetry_response_literal(s->tracker, &s->worker->stats.telemetry,
                                               ev.literal_size)) {
                char size[24];
                snprintf(size, sizeof(size), "%" PRIu64, ev.literal_size);
                imf_log_kv(IMF_LOG_WARN, "backend",
                           "FETCH literal larger than the partial range asked for", "client",
                           s->peer, "backend", backend_label(s), "size", size, NULL);
            }
            on_response_line(s, &ev);
            line_reset(&s->rline, &s->rline_len, &s->rline_cap);
            s->rline_streaming = false;
            imf_chain_consume(&s->backend.rx, n);
            flush_local(s);
            if (s->state == SESS_CLOSING || s->state == SESS_CLOSED)
                return;
            continue;
        case IMF_EV_LITERAL:
            /* FETCH bodies move by block, not by copy. */
            if (imf_chain_splice(&s->p_tx, &s->backend.rx, n) != 0) {
                session_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
            continue;
        case IMF_EV_LITERAL_END:
            break;
        default:
            /* The response framer has no limits and no errors. */
            return;
        }
        imf_chain_consume(&s->backend.rx, n);
        if (s->state == SESS_CLOSING || s->state == SESS_CLOSED)
            return;
    }
}

/* Deflates p_tx into p_z, and sync-flushes once p_tx is empty so that no
 * response waits in the compressor for more output. */
static void deflate_downstream(struct imf_session *s)
{
    for (;;) {
        size_t avail = 0;
        const uint8_t *in = imf_chain_peek(&s->p_tx, &avail);
        bool flush = avail == 0;
        if ((flush && !s->zout_pending) || s->p_z.bytes >= s->high)
            return;
        uint8_t *out;
        size_t room;
        if (imf_chain_reserve(&s->p_z, TLS_RECORD_MAX, &out, &room) != 0) {
            session_close(s, IMF_CLOSE_NO_MEMORY, false);
            return;
        }
        s->zout->next_in = (Bytef *)in;
        s->zout->avail_in = (uInt)avail;
        s->zout->next_out = out;
        s->zout->avail_out = (uInt)room;
        int rc = deflate(s->zout, flush ? Z_SYNC_FLUSH : Z_NO_FLUSH);
        size_t used = avail - s->zout->avail_in, made = room - s->zout->avail_out;
        imf_chain_commit(&s->p_z, made);
        imf_chain_consume(&s->p_tx, used);
        imf_stat_add(&s->worker->stats.compress_out_plain, (int64_t)used);
        imf_stat_add(&s->worker->stats.compress_out_wire, (int64_t)made);
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            session_close(s, IMF_CLOSE_NO_MEMORY, false);
            return;
        }
        if (used > 0)
            s->zout_pending = true;
        /* A flush is complete when deflate left output room unused. */
        if (flush && s->zout->avail_out != 0)
            s->zout_pending = false;
    }
}

/* Moves queued plaintext towards the client: as is before STARTTLS,
 * encrypted one record at a time once TLS is up, not at all during the
 * handshake. */
static void encrypt_downstream(struct imf_session *s)
{
    if (s->ssl == NULL) {
        while (s->p_tx.bytes > 0) {
            size_t avail;
            const uint8_t *p = imf_chain_peek(&s->p_tx, &avail);
            if (imf_chain_append(&s->client.tx, p, avail) != 0) {
                session_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
            imf_chain_consume(&s->p_tx, avail);
            s->bytes_out += avail;
            imf_stat_add(&s->worker->stats.bytes_to_clients, (int64_t)avail);
        }
        return;
    }
    if (!SSL_is_init_finished(s->ssl) || s->tls_failed)
        return;
    if (s->zout != NULL)
        deflate_downstream(s);
    struct imf_chain *src = s->zout != NULL ? &s->p_z : &s->p_tx;
    while (src->bytes > 0 && s->client.tx.bytes < s->high) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(src, &avail);
        if (avail > TLS_RECORD_MAX)
            avail = TLS_RECORD_MAX;
        int n = SSL_write(s->ssl, p, (int)avail);
        if (n <= 0) {
            imf_log_kv(IMF_LOG_INFO, "tls", "write failed", "client", s->peer, "reason",
                       imf_tls_failure_reason(s->ssl, &s->tio), NULL);
            session_close(s, IMF_CLOSE_TLS_ERROR, false);
            return;
        }
        imf_chain_consume(src, (size_t)n);
        s->bytes_out += (uint64_t)n;
        imf_stat_add(&s->worker->stats.bytes_to_clients, n);
    }
}

/* Encrypts everything queued, whatever the watermark: used once, for the
 * last uncompressed bytes before COMPRESS takes effect. */
static void encrypt_all(struct imf_session *s)
{
    size_t high = s->high;
    s->high = SIZE_MAX;
    encrypt_downstream(s);
    s->high = high;
}

/* ---- handshake and backend connection ---------------------------------- */

static void on_connect_timeout(uv_timer_t *t);
static void on_backend_connected(uv_connect_t *req, int status);
static void on_backend_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* Every server was tried and failed. */
static void backend_unavailable(struct imf_session *s)
{
    imf_log_kv(IMF_LOG_WARN, "backend", "no backend server reachable", "client", s->peer, NULL);
    s->backend_name = NULL;
    bye(s, IMF_CLOSE_BACKEND_UNAVAILABLE, "[UNAVAILABLE] Backend server unavailable");
}

static void try_next_backend(struct imf_session *s);

static void on_failed_backend_closed(uv_handle_t *h)
{
    struct imf_session *s = h->data;
    s->open_handles--;
    s->backend.inited = false;
    s->backend.closing = false;
    if (s->state == SESS_CONNECTING) {
        s->plan_pos++;
        try_next_backend(s);
    } else if (s->open_handles == 0) {
        session_free(s);
    }
}

/* The current server failed (refused, unreachable, timed out): note it for
 * passive health, and go on to the next one once its handle has closed. */
static void backend_failed(struct imf_session *s, const char *why)
{
    unsigned idx = s->plan[s->plan_pos];
    imf_stat_add(&s->worker->stats.backend_connect_failed, 1);
    imf_backend_report(s->cfg, idx, false);
    imf_log_kv(IMF_LOG_WARN, "backend", "connect failed", "client", s->peer, "backend",
               s->cfg->servers[idx].text, "reason", why, NULL);
    s->connect_abandoned = true;
    s->backend.closing = true;
    uv_close((uv_handle_t *)&s->backend.tcp, on_failed_backend_closed);
}

static void try_next_backend(struct imf_session *s)
{
    if (s->plan_pos >= s->plan_len) {
        backend_unavailable(s);
        return;
    }
    const struct imf_sockaddr *srv = &s->cfg->servers[s->plan[s->plan_pos]];
    s->backend_name = srv->text;
    int rc = uv_tcp_init(&s->worker->loop, &s->backend.tcp);
    if (rc != 0) {
        backend_unavailable(s);
        return;
    }
    s->backend.tcp.data = s;
    s->backend.inited = true;
    s->open_handles++;
    s->connect_abandoned = false;
    set_state(s, SESS_CONNECTING);
    /* Freed by on_backend_connected, which libuv calls exactly once (with
     * UV_ECANCELED when the handle closes first). */
    uv_connect_t *req = malloc(sizeof(*req));
    rc = req != NULL ? uv_tcp_connect(req, &s->backend.tcp, (const struct sockaddr *)&srv->ss,
                                      on_backend_connected)
                     : UV_ENOMEM;
    if (rc != 0) {
        free(req);
        if (rc == UV_EMFILE || rc == UV_ENFILE || rc == UV_ENOBUFS || rc == UV_ENOMEM) {
            /* The proxy is out of descriptors or memory, not the server
             * out of order: no server would do better, and none is marked
             * down for it. */
            imf_log_kv(IMF_LOG_WARN, "backend", "no resources to connect (not the server's fault)",
                       "client", s->peer, "backend", srv->text, "reason", uv_strerror(rc), NULL);
            bye(s, IMF_CLOSE_NO_RESOURCES, "[UNAVAILABLE] Proxy out of resources, try again later");
            return;
        }
        backend_failed(s, uv_strerror(rc));
        return;
    }
    req->data = s;
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_connect_timeout, s->cfg->connect_timeout_ms, 0);
}

static void connect_backend(struct imf_session *s)
{
    free(s->plan);
    s->plan = malloc(s->cfg->servers_len > 0 ? s->cfg->servers_len : 1);
    if (s->plan == NULL) {
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    s->plan_len = (uint8_t)imf_backend_plan(s->cfg, s->plan);
    s->plan_pos = 0;
    try_next_backend(s);
}

/* The timer of a relaying session. Before login it is a deadline:
 * preauth_timeout from connect to a successful login, whatever the client
 * sends meanwhile (a trickle does not extend it). After login it measures
 * inactivity, idle_timeout: only the client's own traffic counts (RFC
 * 9051, 5.4), so a server that keeps sending untagged updates does not
 * keep an abandoned session alive, and a client in IDLE is never cut
 * before idle_timeout. */
static void on_inactivity_timer(uv_timer_t *t);

/* When the session ends unless something happens, loop time. */
static uint64_t session_deadline(const struct imf_session *s)
{
    if (!imf_gate_authenticated(&s->gate))
        return s->start_ms + s->cfg->preauth_timeout_ms;
    return s->last_client_ms + s->cfg->idle_timeout_ms;
}

/* The client announced a literal and owes octets: the literal-stall
 * detector's deadline applies (UINT64_MAX when none). */
static uint64_t stall_deadline(const struct imf_session *s)
{
    uint64_t size, left;
    if (s->cfg->literal_stall_ms == 0 || s->stall_reported ||
        !imf_framer_in_literal(&s->cfr, &size, &left))
        return UINT64_MAX;
    return s->last_client_ms + s->cfg->literal_stall_ms;
}

static void arm_inactivity_timer(struct imf_session *s)
{
    uint64_t now = uv_now(&s->worker->loop);
    uint64_t deadline = session_deadline(s);
    uint64_t stall = stall_deadline(s);
    if (stall < deadline)
        deadline = stall;
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_inactivity_timer, deadline > now ? deadline - now : 0, 0);
}

static void on_inactivity_timer(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->state != SESS_RELAY)
        return;
    uint64_t now = uv_now(&s->worker->loop);
    uint64_t size, left;
    bool owes = imf_framer_in_literal(&s->cfr, &size, &left);
    if (owes && now >= stall_deadline(s)) {
        char a[24], b[24], ms[24];
        snprintf(a, sizeof(a), "%" PRIu64, size);
        snprintf(b, sizeof(b), "%" PRIu64, size - left);
        snprintf(ms, sizeof(ms), "%" PRIu64, now - s->last_client_ms);
        imf_log_kv(IMF_LOG_WARN, "session", "client literal stalled", "client", s->peer, "tag",
                   imf_gate_current_tag(&s->gate), "announced", a, "received", b, "stalled_ms", ms,
                   NULL);
        imf_stat_add(&s->worker->stats.telemetry.anomalies[IMF_ANOMALY_LITERAL_STALL], 1);
        s->stall_reported = true;
    }
    bool authenticated = imf_gate_authenticated(&s->gate);
    if (authenticated && imf_gate_commands(&s->gate) > 0 && !imf_gate_idling(&s->gate) && !owes) {
        /* A command the backend is working on (a long FETCH to a slow
         * client, say): that is not inactivity. */
        s->last_client_ms = now;
    }
    if (now < session_deadline(s)) {
        /* The client was active since the timer was set: wait the rest. */
        arm_inactivity_timer(s);
        return;
    }
    if (authenticated)
        bye(s, IMF_CLOSE_IDLE_TIMEOUT, "Autologout; idle for too long");
    else
        bye(s, IMF_CLOSE_PREAUTH_TIMEOUT, "Autologout; no login in time");
}

/* Sends the backend an ID command naming the real client, the way Dovecot
 * reads it (x-originating-ip/-port, honoured from its trusted networks);
 * the gate swallows its answer. */
static void send_client_id(struct imf_session *s)
{
    char line[256], ip[INET6_ADDRSTRLEN];
    int port = addr_parts(&s->peer_addr, ip, sizeof(ip));
    size_t n = imf_gate_own_id(&s->gate, ip, port, line, sizeof(line));
    if (n > 0)
        to_backend(s, line, n);
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->state == SESS_CONNECTING && !s->connect_abandoned)
        backend_failed(s, "connect timeout");
}

static void on_backend_connected(uv_connect_t *req, int status)
{
    struct imf_session *s = req->data;
    free(req);
    if (s->state != SESS_CONNECTING || s->connect_abandoned)
        return; /* given up already (timeout, client gone): the handle closes */
    uv_timer_stop(&s->timer);
    if (status < 0) {
        backend_failed(s, uv_strerror(status));
        return;
    }
    imf_backend_report(s->cfg, s->plan[s->plan_pos], true);
    s->server_index = s->plan[s->plan_pos];
    free(s->plan); /* failover is over for this session */
    s->plan = NULL;
    if (s->cfg->literal_crlf_split || s->cfg->quirks == IMF_QUIRKS_AUTO) {
        /* The backend has read nothing yet: its window now is a fair
         * "all read" reference for the split's window check. */
        int fd = -1;
        struct imf_sendq q;
        if (uv_fileno((uv_handle_t *)&s->backend.tcp, &fd) == 0 && imf_sendq_probe(fd, &q) == 0 &&
            q.window_known)
            s->peer_window_max = q.peer_window;
    }
    imf_stat_add(&s->worker->stats.backend_connect_ok, 1);
    s->backend.up = true;
    uv_tcp_nodelay(&s->backend.tcp, 1);
    if (s->cfg->forward_client_ip == IMF_FORWARD_IP_ID)
        send_client_id(s);
    set_state(s, SESS_RELAY);
    arm_inactivity_timer(s);
    session_pump(s);
}

static void handshake_failed(struct imf_session *s, const char *reason)
{
    imf_stat_add(&s->worker->stats.handshakes_failed, 1);
    imf_stat_add(&s->worker->stats.handshake_failures[imf_tls_classify_failure(reason)], 1);
    imf_log_kv(IMF_LOG_WARN, "tls", "handshake failed", "client", s->peer, "reason", reason, NULL);
}

/* Counts an established session under its TLS version and cipher. */
static void count_tls_kind(struct imf_worker_stats *st, const char *version, const char *cipher)
{
    unsigned n = atomic_load_explicit(&st->tls_kinds_len, memory_order_relaxed);
    for (unsigned i = 0; i < n; i++) {
        if (st->tls_kinds[i].version == version && st->tls_kinds[i].cipher == cipher) {
            imf_stat_add(&st->tls_kinds[i].sessions, 1);
            return;
        }
    }
    if (n == IMF_STATS_TLS_KINDS_MAX)
        return;
    st->tls_kinds[n].version = version;
    st->tls_kinds[n].cipher = cipher;
    atomic_store_explicit(&st->tls_kinds[n].sessions, 1, memory_order_relaxed);
    atomic_store_explicit(&st->tls_kinds_len, n + 1, memory_order_release);
}

static void on_handshake_timeout(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->state == SESS_PROXY_HEADER) {
        imf_log_kv(IMF_LOG_WARN, "session", "PROXY header refused", "client", s->peer, "reason",
                   "timeout", NULL);
        session_close(s, IMF_CLOSE_PROXY_PROTOCOL, false);
        return;
    }
    if (s->state != SESS_HANDSHAKE)
        return;
    handshake_failed(s, "handshake timeout");
    session_close(s, IMF_CLOSE_HANDSHAKE_TIMEOUT, false);
}

static void do_handshake(struct imf_session *s)
{
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1) {
        imf_stat_add(&s->worker->stats.handshakes_ok, 1);
        const char *version = SSL_get_version(s->ssl);
        const SSL_CIPHER *c = SSL_get_current_cipher(s->ssl);
        const char *cipher = c != NULL ? SSL_CIPHER_standard_name(c) : "-";
        count_tls_kind(&s->worker->stats, version, cipher);
        s->tls_version = version; /* static strings, see count_tls_kind */
        s->tls_cipher = cipher;
        imf_debug("tls", "client=%s handshake done %s %s", s->peer, s->tls_version, s->tls_cipher);
        uv_timer_stop(&s->timer);
        if (s->refusal != NULL) {
            bye(s, IMF_CLOSE_REFUSED, s->refusal);
            return;
        }
        if (s->backend.up) {
            /* After STARTTLS: the session goes on as an implicit-TLS one. */
            set_state(s, SESS_RELAY);
            arm_inactivity_timer(s);
            return;
        }
        /* Implicit TLS connects only now: a failed or abandoned handshake
         * never costs the fragile backend a connection. */
        connect_backend(s);
        return;
    }
    int err = SSL_get_error(s->ssl, rc);
    if (err == SSL_ERROR_WANT_READ && !s->tio.in_eof)
        return;
    handshake_failed(s, imf_tls_failure_reason(s->ssl, &s->tio));
    /* Whatever alert the library queued goes out before the close. */
    session_close(s, IMF_CLOSE_HANDSHAKE_FAILED, !s->tio.in_eof);
}

/* Creates the TLS engine and starts the handshake timer. */
static int begin_tls(struct imf_session *s)
{
    s->tio.in = &s->client.rx;
    s->tio.out = &s->client.tx;
    s->tio.peer = s->peer;
    s->ssl = imf_tls_conn_new(s->worker->ssl_ctx, &s->tio);
    if (s->ssl == NULL)
        return UV_ENOMEM;
    set_state(s, SESS_HANDSHAKE);
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_handshake_timeout, s->cfg->handshake_timeout_ms, 0);
    return 0;
}

/* STARTTLS was accepted: our OK goes out in plaintext, then TLS begins.
 * Whatever the client sent after the STARTTLS line before seeing that OK
 * was sent in plaintext and may have been injected by an attacker on the
 * path (CVE-2011-0411): it is discarded, never executed. */
static void start_tls(struct imf_session *s)
{
    encrypt_downstream(s); /* the OK, still in plaintext */
    size_t junk = s->client.rx.bytes;
    if (junk > 0) {
        imf_chain_consume(&s->client.rx, junk);
        s->discarded_after_starttls += junk;
        char n[24];
        snprintf(n, sizeof(n), "%zu", junk);
        imf_log_kv(IMF_LOG_WARN, "session", "discarded plaintext sent after STARTTLS", "client",
                   s->peer, "bytes", n, NULL);
    }
    /* The next command starts afresh, under TLS. */
    imf_framer_init(&s->cfr, IMF_FRAMER_COMMANDS, s->cfg->max_line_length,
                    s->cfg->max_literal_size);
    imf_gate_tls_started(&s->gate);
    if (begin_tls(s) != 0)
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
}

/* ---- reading ----------------------------------------------------------- */

/* Relays what the client sent. */
static void client_data_arrived(struct imf_session *s)
{
    if (s->batch_inited)
        uv_check_stop(s->batch_check);
    session_pump(s);
    /* A literal the client is sending: the stall detector's deadline
     * follows its progress (the timer otherwise only wakes for idleness). */
    uint64_t size, left;
    if (s->state == SESS_RELAY && s->cfg->literal_stall_ms != 0 &&
        imf_framer_in_literal(&s->cfr, &size, &left))
        arm_inactivity_timer(s);
}

static void on_batch_check(uv_check_t *c)
{
    struct imf_session *s = c->data;
    uv_check_stop(c);
    client_data_arrived(s);
}

/* A read that filled its buffer is followed at once by another read of the
 * same burst (libuv reads on while reads come back full). Relaying after
 * each would cost a backend write (and a wake-up of the backend) per read;
 * relaying once the loop has run this round's I/O callbacks (a check
 * handle runs right after them) costs one per burst, with no added wait.
 * Bounded by the caller to half the watermark. Returns false when the
 * handle cannot be had: then relay now. */
static bool batch_later(struct imf_session *s)
{
    if (lazy(s, UV_CHECK, (void **)&s->batch_check, &s->batch_inited) == NULL)
        return false;
    uv_check_start(s->batch_check, on_batch_check);
    return true;
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct imf_session *s = h->data;
    imf_conn_read_buf(&s->client.rx, buf);
}

static void on_client_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct imf_session *s = st->data;
    if (buf->base != NULL)
        imf_chain_commit(&s->client.rx, nread > 0 ? (size_t)nread : 0);
    if (nread == 0)
        return;
    if (s->lingering) {
        imf_chain_consume(&s->client.rx, s->client.rx.bytes);
        if (nread < 0) {
            set_state(s, SESS_CLOSED);
            close_client(s);
            close_handle(s, (uv_handle_t *)&s->timer);
        }
        return;
    }
    s->last_client_ms = uv_now(&s->worker->loop);
    s->stall_reported = false;
    if (s->state == SESS_PROXY_HEADER) {
        if (nread < 0) {
            if (s->client.rx.bytes > 0)
                imf_log_kv(IMF_LOG_WARN, "session", "PROXY header refused", "client", s->peer,
                           "reason", "truncated: the connection closed inside the header", NULL);
            s->client.eof = true;
            session_close(
                s, s->client.rx.bytes > 0 ? IMF_CLOSE_PROXY_PROTOCOL : IMF_CLOSE_CLIENT_EOF, false);
        } else {
            read_proxy_header(s);
        }
        return;
    }
    if (s->ssl == NULL && nread > 0) {
        s->bytes_in += (uint64_t)nread;
        imf_stat_add(&s->worker->stats.bytes_from_clients, nread);
    }
    if (nread < 0) {
        s->tio.in_eof = true;
        if (s->state == SESS_HANDSHAKE) {
            do_handshake(s); /* reports the failure */
            return;
        }
        if (s->state == SESS_RELAY) {
            /* Relay what complete records are left, then close. */
            pump_upstream(s);
        }
        s->client.eof = true;
        session_close(s, nread == UV_EOF ? IMF_CLOSE_CLIENT_EOF : IMF_CLOSE_CLIENT_ERROR, false);
        return;
    }
    if ((size_t)nread == buf->len && s->state == SESS_RELAY && s->ssl != NULL &&
        s->client.rx.bytes < s->high / 2 && batch_later(s))
        return;
    client_data_arrived(s);
}

static void on_backend_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct imf_session *s = h->data;
    imf_conn_read_buf(&s->backend.rx, buf);
}

static void on_backend_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct imf_session *s = st->data;
    if (buf->base != NULL)
        imf_chain_commit(&s->backend.rx, nread > 0 ? (size_t)nread : 0);
    if (nread == 0)
        return;
    if (nread < 0) {
        s->backend.eof = true;
        imf_conn_want_read(&s->backend, false, NULL, NULL);
    }
    session_pump(s);
}

/* Starts or stops reading each socket according to the watermarks. */
static void update_reading(struct imf_session *s)
{
    size_t up = s->client.rx.bytes + s->c_z.bytes + s->c_plain.bytes + s->backend.tx.bytes;
    size_t down = s->backend.rx.bytes + s->p_tx.bytes + s->client.tx.bytes;
    if (!s->client.blocked && up >= s->high)
        s->client.blocked = true;
    else if (s->client.blocked && up <= s->low)
        s->client.blocked = false;
    if (!s->backend.blocked && down >= s->high)
        s->backend.blocked = true;
    else if (s->backend.blocked && down <= s->low)
        s->backend.blocked = false;

    bool want_client =
        !s->client.closing && !s->client.eof && !s->client.blocked && s->state <= SESS_RELAY;
    imf_conn_want_read(&s->client, want_client, on_client_alloc, on_client_read);
    bool want_backend = s->backend.up && !s->backend.closing && !s->backend.eof &&
                        !s->backend.blocked && s->state == SESS_RELAY;
    imf_conn_want_read(&s->backend, want_backend, on_backend_alloc, on_backend_read);
}

/* literal_crlf_split. TCP cannot promise the backend separate reads; what
 * we can do is wait until the backend has most likely read the literal's
 * end before what follows goes out:
 *  - the end has left our socket (its "not sent" queue is empty: waiting
 *    for ACKs instead would add a delayed ACK's 40 ms for nothing);
 *  - the backend's advertised receive window has reopened to within a few
 *    KiB of the widest seen, i.e. it has read what it had buffered (a slow
 *    reader of a large literal keeps the end in its buffer for a while);
 *  - [backend] literal_crlf_split_delay has passed (on the monotonic clock)
 *    for its reader to run.
 * Bounded: after SPLIT_WAIT_MAX_MS more we send anyway rather than stall on
 * a peer that reads nothing. */
#define SPLIT_POLL_MS      1
#define SPLIT_WAIT_MAX_MS  200
#define SPLIT_WINDOW_SLACK (8 * 1024)

static void on_split_timer(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    session_pump(s);
}

/* True when the split is complete; otherwise arms a short poll. */
static bool split_drained(struct imf_session *s)
{
    uint64_t now_ms = uv_hrtime() / 1000000;
    if (s->split_since_ms == 0)
        s->split_since_ms = now_ms; /* the literal's end was just written */
    int fd = -1;
    struct imf_sendq q = {0};
    if (uv_fileno((uv_handle_t *)&s->backend.tcp, &fd) != 0 || imf_sendq_probe(fd, &q) != 0)
        q.window_known = false;
    if (q.window_known && q.peer_window > s->peer_window_max)
        s->peer_window_max = q.peer_window;
    bool read_up = !q.window_known || q.peer_window + SPLIT_WINDOW_SLACK >= s->peer_window_max;
    uint64_t waited = now_ms - s->split_since_ms;
    uint64_t settle = s->cfg->literal_crlf_split_delay_ms;
    bool settled = q.unsent == 0 && read_up && waited >= settle;
    if (!settled && waited < settle + SPLIT_WAIT_MAX_MS) {
        if (lazy(s, UV_TIMER, (void **)&s->split_timer, &s->split_timer_inited) == NULL) {
            session_close(s, IMF_CLOSE_NO_MEMORY, false);
            return false;
        }
        uint64_t delay = SPLIT_POLL_MS;
        if (q.unsent == 0 && read_up && settle > waited)
            delay = settle - waited;
        /* The loop's cached time may be stale: timers count from now. */
        uv_update_time(&s->worker->loop);
        uv_timer_start(s->split_timer, on_split_timer, delay, 0);
        return false;
    }
    if (!settled)
        imf_stat_add(&s->worker->stats.crlf_split_timeouts, 1);
    s->split_wait = false;
    s->split_since_ms = 0;
    s->splits++;
    imf_stat_add(&s->worker->stats.crlf_splits, 1);
    return true;
}

/* Moves everything that can move. Called after every event.
 *
 * A pass may stop a direction at its high mark; writes free that room, and
 * a write that completes at once (uv_try_write) brings no callback to say
 * so. So when a pass wrote synchronously, go round again: the loop is
 * bounded by what is already buffered, since no socket is read here. */
static void session_pump(struct imf_session *s)
{
    for (;;) {
        if (s->state == SESS_CLOSED)
            return;
        if (s->state == SESS_HANDSHAKE)
            do_handshake(s);
        if (s->state == SESS_RELAY) {
            pump_upstream(s);
            if (s->state == SESS_RELAY) {
                process_responses(s);
                if (s->upstream_kick && s->state == SESS_RELAY) {
                    s->upstream_kick = false;
                    pump_upstream(s);
                }
                if (s->draining && session_quiet(s))
                    bye(s, IMF_CLOSE_SHUTDOWN, "[UNAVAILABLE] Server shutting down");
                if (s->backend.eof && s->backend.rx.bytes == 0 && s->state == SESS_RELAY) {
                    /* The client gets what the backend sent, then the close. */
                    if (s->rline_len > 0) {
                        to_client(s, s->rline, s->rline_len);
                        s->rline_len = 0;
                    }
                    session_close(s,
                                  imf_gate_logout_sent(&s->gate) ? IMF_CLOSE_LOGOUT
                                                                 : IMF_CLOSE_BACKEND_EOF,
                                  true);
                    return; /* session_close pumps again in CLOSING */
                }
            }
        }
        encrypt_downstream(s);
        if (s->state == SESS_CLOSING && s->ssl != NULL && SSL_is_init_finished(s->ssl) &&
            !s->tls_failed && s->p_tx.bytes == 0 && s->p_z.bytes == 0 && !s->shutdown_sent) {
            s->shutdown_sent = true;
            SSL_shutdown(s->ssl); /* queues close_notify into c_tx */
        }
        if (s->state == SESS_CLOSED)
            return;
        size_t c_before = s->client.tx.bytes, b_before = s->backend.tx.bytes;
        if (!s->client.closing)
            write_side(s, &s->client);
        if (s->state == SESS_CLOSED)
            return;
        if (s->backend.up && !s->backend.closing)
            write_side(s, &s->backend);
        if (s->state == SESS_CLOSED)
            return;
        bool again = s->client.tx.bytes < c_before || s->backend.tx.bytes < b_before;
        if (s->split_wait && s->backend.tx.bytes == 0 && s->backend.wlen == 0 &&
            s->state == SESS_RELAY && split_drained(s))
            again = true; /* the rest of the command may go now */
        if (s->state == SESS_CLOSING && s->client.tx.bytes == 0 && s->client.wlen == 0 &&
            (s->shutdown_sent || s->tls_failed || s->ssl == NULL ||
             !SSL_is_init_finished(s->ssl))) {
            /* Already draining: a pump that returns here (the BYE may have
             * been written by a nested pump, inside the one that framed the
             * refused input) must not close on unread input, which would
             * send RST. on_client_read or the linger timer ends it. */
            if (s->lingering)
                return;
            int fd = -1;
            if (s->linger && !s->client.eof && uv_fileno((uv_handle_t *)&s->client.tcp, &fd) == 0 &&
                shutdown(fd, SHUT_WR) == 0) {
                /* Our last bytes and a FIN are on their way; drain what the
                 * client still sends until it closes or the linger timer
                 * (already running) ends it. */
                s->lingering = true;
                imf_chain_consume(&s->client.rx, s->client.rx.bytes);
                imf_conn_want_read(&s->client, true, on_client_alloc, on_client_read);
                return;
            }
            set_state(s, SESS_CLOSED);
            close_client(s);
            close_handle(s, (uv_handle_t *)&s->timer);
            return;
        }
        if (!again)
            break;
    }
    line_shed(&s->cline, s->cline_len, &s->cline_cap);
    line_shed(&s->rline, s->rline_len, &s->rline_cap);
    update_reading(s);
}

/* ---- accept ------------------------------------------------------------ */

/* What the gate follows, from the session's config snapshot. */
static void gate_params(struct imf_session *s)
{
    const struct imf_config *c = s->cfg;
    struct imf_gate_params *p = &s->gate_params;
    p->implicit_tls = s->lcfg->mode == IMF_LISTEN_IMPLICIT_TLS;
    p->starttls_listener = s->lcfg->mode == IMF_LISTEN_STARTTLS;
    p->require_tls = s->lcfg->require_tls;
    p->compress = c->compress;
    p->idle_poll = c->idle_mode == IMF_IDLE_POLL;
    p->idle_refresh = c->idle_refresh_ms != 0;
    p->strip_client_id = true;
    p->quirks = c->quirks;
    p->pipelining = c->pipelining;
    p->pipelining_set = c->pipelining_set;
    p->literal_sync = c->literal_plus == IMF_LITERAL_PLUS_SYNC;
    p->literal_sync_set = c->literal_plus_set;
    p->crlf_split = c->literal_crlf_split;
    p->crlf_split_set = c->literal_crlf_split_set;
    p->max_literal = c->max_literal_size;
    p->max_command = c->max_command_size;
    p->hide = c->hide_capabilities;
    imf_gate_init(&s->gate, p);
}

static void set_peer(struct imf_session *s, const struct sockaddr *sa)
{
    if (sa != &s->peer_addr.sa) {
        memset(&s->peer_addr, 0, sizeof(s->peer_addr));
        if (sa->sa_family == AF_INET)
            memcpy(&s->peer_addr.in, sa, sizeof(s->peer_addr.in));
        else if (sa->sa_family == AF_INET6)
            memcpy(&s->peer_addr.in6, sa, sizeof(s->peer_addr.in6));
    }
    imf_format_sockaddr(&s->peer_addr.sa, s->peer, sizeof(s->peer));
}

/* The client's address is known: apply the limits, then start the
 * protocol. A client over a limit is told so politely: in plaintext on a
 * STARTTLS listener, after the handshake on an implicit-TLS one (it could
 * not read a plaintext BYE). */
static void admit(struct imf_session *s)
{
    struct imf_worker *w = s->worker;
    s->counted_open = true;
    uint64_t active = atomic_fetch_add(&sessions_open, 1) + 1;
    if (s->cfg->max_connections != 0 && active > s->cfg->max_connections) {
        s->refusal = "[UNAVAILABLE] Too many connections";
    } else if (!imf_iplimit_acquire(&s->peer_addr.sa, s->cfg->max_connections_per_ip)) {
        s->refusal = "[UNAVAILABLE] Too many connections from your address";
    } else {
        s->ip_counted = true;
    }
    if (s->refusal != NULL) {
        imf_stat_add(&w->stats.connections_refused, 1);
        imf_log_kv(IMF_LOG_WARN, "listener", "connection refused", "client", s->peer, "reason",
                   s->refusal, NULL);
    }
    if (s->lcfg->mode == IMF_LISTEN_STARTTLS) {
        if (s->refusal != NULL) {
            bye(s, IMF_CLOSE_REFUSED, s->refusal);
            return;
        }
        /* The backend's greeting, with STARTTLS announced, is the first
         * thing the client sees; TLS starts when it asks. */
        connect_backend(s);
        if (s->state == SESS_CONNECTING)
            update_reading(s);
        return;
    }
    if (begin_tls(s) != 0) {
        session_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    session_pump(s); /* bytes after a PROXY header may be the ClientHello */
}

/* Reads the PROXY header from c_rx; the bytes after it stay for TLS/IMAP. */
static void read_proxy_header(struct imf_session *s)
{
    uint8_t buf[IMF_PP_MAX];
    size_t n = imf_chain_copy_out(&s->client.rx, buf, sizeof(buf));
    struct imf_pp_info info;
    size_t hlen = 0;
    const char *why = NULL;
    enum imf_pp_result r = imf_pp_parse(buf, n, s->lcfg->proxy_protocol, &info, &hlen, &why);
    if (r == IMF_PP_NEED_MORE && n < sizeof(buf))
        return;
    if (r != IMF_PP_DONE) {
        imf_log_kv(IMF_LOG_WARN, "session", "PROXY header refused", "client", s->peer, "reason",
                   why != NULL ? why : "header too long", NULL);
        session_close(s, IMF_CLOSE_PROXY_PROTOCOL, false);
        return;
    }
    imf_chain_consume(&s->client.rx, hlen);
    uv_timer_stop(&s->timer);
    if (!info.local) {
        char via[64];
        snprintf(via, sizeof(via), "%s", s->peer);
        set_peer(s, (const struct sockaddr *)&info.src);
        imf_debug("session", "client=%s via PROXY header from %s", s->peer, via);
    }
    admit(s);
}

void imf_session_accept(struct imf_listener *l)
{
    struct imf_worker *w = l->worker;
    struct imf_session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        imf_error("session", "out of memory accepting a connection");
        return;
    }
    s->worker = w;
    s->cfg = imf_config_ref(w->cfg);
    s->lcfg = &s->cfg->listeners[l->index];
    s->state = SESS_HANDSHAKE;
    s->start_ms = uv_now(&w->loop);
    s->high = s->cfg->buffer_limit;
    s->low = s->high / 2;
    imf_chain_init(&s->client.rx, &w->stats.chain);
    imf_chain_init(&s->c_plain, &w->stats.chain);
    imf_chain_init(&s->backend.tx, &w->stats.chain);
    imf_chain_init(&s->backend.rx, &w->stats.chain);
    imf_chain_init(&s->p_tx, &w->stats.chain);
    imf_chain_init(&s->client.tx, &w->stats.chain);
    imf_chain_init(&s->c_z, &w->stats.chain);
    imf_chain_init(&s->p_z, &w->stats.chain);
    imf_chain_init(&s->l_tx, &w->stats.chain);
    gate_params(s);
    imf_framer_init(&s->cfr, IMF_FRAMER_COMMANDS, s->cfg->max_line_length,
                    s->cfg->max_literal_size);
    imf_framer_init(&s->rfr, IMF_FRAMER_RESPONSES, 0, 0);

    /* Link first: from here on session_free() undoes everything. */
    s->next = w->sessions;
    if (w->sessions != NULL)
        w->sessions->prev = s;
    w->sessions = s;
    imf_stat_add(&w->stats.sessions_active, 1);
    imf_stat_add(&w->stats.sessions_total, 1);
    s->listener = l;
    imf_stat_add(&l->sessions_active, 1);
    imf_stat_add(&l->sessions_total, 1);

    uv_tcp_init(&w->loop, &s->client.tcp);
    s->client.tcp.data = s;
    s->open_handles++;
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    s->open_handles++;
    snprintf(s->peer, sizeof(s->peer), "?");
    int rc = uv_accept((uv_stream_t *)&l->handle, (uv_stream_t *)&s->client.tcp);
    if (rc != 0) {
        imf_warn("listener", "accept failed: %s", uv_strerror(rc));
        session_close(s, IMF_CLOSE_CLIENT_ERROR, false);
        return;
    }
    int len = sizeof(s->peer_addr);
    if (uv_tcp_getpeername(&s->client.tcp, &s->peer_addr.sa, &len) == 0)
        set_peer(s, &s->peer_addr.sa);
    s->last_client_ms = s->start_ms;
    uv_tcp_nodelay(&s->client.tcp, 1);
    imf_debug("session", "client=%s accepted on %s", s->peer, s->lcfg->name);
    if (s->lcfg->proxy_protocol != IMF_PROXY_PROTOCOL_OFF) {
        if (!imf_cidr_match(s->lcfg->proxy_from, s->lcfg->proxy_from_len, &s->peer_addr.sa)) {
            imf_log_kv(IMF_LOG_WARN, "session", "PROXY header refused", "client", s->peer, "reason",
                       "peer not in proxy_protocol_from", NULL);
            session_close(s, IMF_CLOSE_PROXY_PROTOCOL, false);
            return;
        }
        /* The client's real address comes first; everything else waits. */
        set_state(s, SESS_PROXY_HEADER);
        uv_timer_start(&s->timer, on_handshake_timeout, s->cfg->handshake_timeout_ms, 0);
        update_reading(s);
        return;
    }
    admit(s);
}
