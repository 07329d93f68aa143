/* session: accept, admission, the pump, the timers, closing and the summary line. The session's
 * other layers are relay.c, compress.c, session_tls.c, upstream.c, keeper.c and shield.c
 * (session_int.h). */

#include <assert.h>
#include <string.h>

#include <openssl/mem.h>

#include "imapfront/backend.h"
#include "imapfront/iplimit.h"
#include "imapfront/throttle.h"
#include "imapfront/log.h"
#include "imapfront/proxy_proto.h"
#include "imapfront/route.h"
#include "imapfront/session_int.h"
#include "imapfront/util.h"

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
    "backend-busy",
};
static_assert(IMF_ARRAY_LEN(imf_close_reason_names) == IMF_CLOSE_REASON_COUNT, "reason names");

/* Sessions open in the whole process, for max_connections: the only
 * counter every worker writes (one locked add per session start and end). */
static _Atomic uint64_t sessions_open;

static const char *const sess_state_names[SESS_STATE_COUNT] = {
    "proxy-header", "handshake", "queued", "connecting", "relay", "closing", "closed",
};
static_assert(IMF_ARRAY_LEN(sess_state_names) == SESS_STATE_COUNT, "state names");

static_assert(IMF_BACKEND_MAX <= 256, "a plan entry fits a byte");

static void on_inactivity_timer(uv_timer_t *t);
static void read_proxy_header(struct imf_session *s);

struct imf_session *imf_session_next(struct imf_session *s)
{
    return s->next;
}

/* For log lines: the server being tried or used, "-" before. */
const char *imf_sess_backend_label(const struct imf_session *s)
{
    return s->backend_name != NULL ? s->backend_name : "-";
}

/* A handle needed only at times, made on first use (see conn.h). */
void *imf_sess_lazy(struct imf_session *s, uv_handle_type type, void **slot, bool *inited)
{
    return imf_lazy_handle(&s->worker->loop, type, s, slot, inited, &s->open_handles);
}

void imf_sess_set_state(struct imf_session *s, enum sess_state st)
{
    if (s->state == st)
        return;
    imf_debug("session", "client=%s state %s -> %s", s->peer, sess_state_names[s->state],
              sess_state_names[st]);
    s->state = st;
}

/* The address and port of a, as text ("?" and 0 for another family). */
int imf_sess_addr_parts(const union sess_addr *a, char *host, size_t host_len)
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

/* Queues plaintext for the client (encrypted in imf_sess_pump). */
void imf_sess_to_client(struct imf_session *s, const void *p, size_t n)
{
    if (imf_chain_append(&s->p_tx, p, n) != 0)
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
}

static void to_client_str(struct imf_session *s, const char *text)
{
    imf_sess_to_client(s, text, strlen(text));
}

void imf_sess_to_backend(struct imf_session *s, const void *p, size_t n)
{
    if (imf_chain_append(&s->backend.tx, p, n) != 0)
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
}

/* Sends "* BYE text" and closes gracefully with reason. */
void imf_sess_bye(struct imf_session *s, enum imf_close_reason reason, const char *text)
{
    imf_sess_flush_local(s);
    /* A client refused for what it sends may still be sending: closing on
     * unread input makes the kernel send RST, which can destroy the BYE in
     * flight. Those closes linger (see imf_sess_pump). */
    if (reason == IMF_CLOSE_LINE_TOO_LONG || reason == IMF_CLOSE_LITERAL_MALFORMED ||
        reason == IMF_CLOSE_LITERAL_TOO_BIG)
        s->linger = true;
    char line[256];
    snprintf(line, sizeof(line), "* BYE %s\r\n", text);
    to_client_str(s, line);
    imf_log_kv(IMF_LOG_INFO, "session", "closing with BYE", "client", s->peer, "reason",
               imf_close_reason_names[reason], "detail", text, NULL);
    imf_sess_close(s, reason, true);
}

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
               "duration_ms", dur, "user", s->user != NULL ? s->user : "-", "held", held,
               "literals_converted", conv, "crlf_splits", splits, "reason",
               imf_close_reason_names[s->reason], NULL);
}

void imf_sess_free(struct imf_session *s)
{
    struct imf_worker *w = s->worker;
    /* Counted before the summary line is logged, so that whoever reads
     * the line and then /metrics finds the session counted as closed. */
    imf_stat_add(&w->stats.sessions_active, -1);
    imf_stat_add(&s->listener->sessions_active, -1);
    imf_stat_add(&w->stats.closes[s->reason], 1);
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
    imf_sess_login_abort(s);
    imf_sess_lf_free(s);
    imf_gate_cleanup(&s->gate);
    free(s->user);
    if (s->login_held != NULL)
        OPENSSL_cleanse(s->login_held, s->login_held_len);
    free(s->login_held);
    free(s->login_timer);
    imf_zchain_end(&s->z);
    free(s->cline);
    free(s->rline);
    imf_sess_release_backend(s);
    free(s->plan);
    free(s->idle_timer);
    free(s->batch_check);
    free(s->yield_idle);
    free(s->split_timer);
    imf_telemetry_free(&s->tracker);
    imf_btls_free(s);
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
    free(s);
    imf_worker_session_gone(w, NULL);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct imf_session *s = h->data;
    imf_assert(s->open_handles > 0);
    if (--s->open_handles == 0)
        imf_sess_free(s);
}

static void close_handle(struct imf_session *s, uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, on_handle_closed);
}

/* One of the handles made by imf_sess_lazy(): closed if it was initialised. */
static void close_lazy(struct imf_session *s, void *h, bool *inited)
{
    if (*inited) {
        *inited = false;
        close_handle(s, h);
    }
}

static void close_backend(struct imf_session *s)
{
    imf_sess_release_backend(s);
    close_lazy(s, s->idle_timer, &s->idle_timer_inited);
    close_lazy(s, s->yield_idle, &s->yield_inited);
    close_lazy(s, s->batch_check, &s->batch_inited);
    close_lazy(s, s->split_timer, &s->split_timer_inited);
    close_lazy(s, s->login_timer, &s->login_timer_inited);
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
    imf_sess_set_state(s, SESS_CLOSED);
}

/* Ends the session. The backend is closed at once (a partial command must
 * never be completed by what follows). With graceful, what is queued for the
 * client is flushed, followed by close_notify, before the client socket
 * closes; otherwise the client closes now. The first reason given wins. */
void imf_sess_close(struct imf_session *s, enum imf_close_reason reason, bool graceful)
{
    if (s->reason == IMF_CLOSE_NONE)
        s->reason = reason;
    if (s->state == SESS_CLOSED)
        return;
    close_backend(s);
    if (s->state == SESS_CLOSING && graceful)
        return;
    if (graceful && !s->client.closing && !s->client.eof) {
        /* The pump flushes what is queued (and close_notify) and then
         * closes; the linger timer bounds how long a client that does not
         * read can keep us waiting. */
        imf_sess_set_state(s, SESS_CLOSING);
        uv_timer_stop(&s->timer);
        uv_timer_start(&s->timer, on_linger_timeout, LINGER_MS, 0);
    } else {
        imf_sess_set_state(s, SESS_CLOSED);
    }
    /* Deferred: the outermost pump tears down (or flushes), so a caller
     * deep in a pass never finds its session gone under it. */
    if (s->pump_depth == 0)
        imf_sess_pump(s);
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
    if (s->state == SESS_QUEUED || s->state == SESS_CONNECTING) {
        /* Its TLS is up and it is waiting for nothing we will give: tell it now. */
        imf_sess_bye(s, IMF_CLOSE_SHUTDOWN, "[UNAVAILABLE] Server shutting down");
        return;
    }
    if (s->state != SESS_RELAY) {
        /* Handshaking or connecting: nothing started, nothing to lose. */
        imf_sess_close(s, IMF_CLOSE_SHUTDOWN, false);
        return;
    }
    s->draining = true;
    if (session_quiet(s))
        imf_sess_bye(s, IMF_CLOSE_SHUTDOWN, "[UNAVAILABLE] Server shutting down");
}

void imf_session_shutdown(struct imf_session *s)
{
    if (s->state == SESS_RELAY || s->state == SESS_QUEUED || s->state == SESS_CONNECTING) {
        imf_sess_bye(s, IMF_CLOSE_SHUTDOWN, "[UNAVAILABLE] Server shutting down");
        return;
    }
    imf_sess_close(s, IMF_CLOSE_SHUTDOWN, false);
}

/* A write that did not complete at once has: move on. */
static void on_written(struct imf_conn *c, int status)
{
    struct imf_session *s = c->tcp.data;
    if (status < 0) {
        if (status != UV_ECANCELED)
            imf_sess_close(s, c == &s->client ? IMF_CLOSE_CLIENT_ERROR : IMF_CLOSE_BACKEND_ERROR,
                           false);
        return;
    }
    imf_sess_pump(s);
}

static void write_side(struct imf_session *s, struct imf_conn *c)
{
    if (imf_conn_write(c, on_written) != 0)
        imf_sess_close(s, c == &s->client ? IMF_CLOSE_CLIENT_ERROR : IMF_CLOSE_BACKEND_ERROR,
                       false);
}

/* The timer of a relaying session. Before login it is a deadline:
 * preauth_timeout from connect to a successful login, whatever the client
 * sends meanwhile (a trickle does not extend it). After login it measures
 * inactivity, idle_timeout: only the client's own traffic counts (RFC
 * 9051, 5.4), so a server that keeps sending untagged updates does not
 * keep an abandoned session alive, and a client in IDLE is never cut
 * before idle_timeout. */

/* When the session ends unless something happens, loop time. */
static uint64_t session_deadline(const struct imf_session *s)
{
    if (!imf_gate_authenticated(&s->gate))
        return s->start_ms + s->cfg->preauth_timeout_ms;
    return s->last_client_ms + s->cfg->idle_timeout_ms;
}

/* Connected, and the greeting still not read: connect_timeout's end. */
static uint64_t greeting_deadline(const struct imf_session *s)
{
    if (!s->awaiting_greeting || !s->backend.up)
        return UINT64_MAX;
    return s->backend_up_ms + s->pool->connect_timeout_ms;
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

/* While zlib's state is held, when to see whether it can be given back
 * (UINT64_MAX when nothing is held). */
static uint64_t compress_idle_deadline(const struct imf_session *s, uint64_t now)
{
    if (!imf_zchain_releasable(&s->z))
        return UINT64_MAX;
    uint64_t t = s->last_client_ms + COMPRESS_IDLE_MS;
    return t > now ? t : now + COMPRESS_IDLE_MS;
}

void imf_sess_arm_inactivity_timer(struct imf_session *s)
{
    uint64_t now = uv_now(&s->worker->loop);
    uint64_t deadline = session_deadline(s);
    uint64_t stall = stall_deadline(s);
    if (stall < deadline)
        deadline = stall;
    uint64_t zidle = compress_idle_deadline(s, now);
    if (zidle < deadline)
        deadline = zidle;
    uint64_t greet = greeting_deadline(s);
    if (greet < deadline)
        deadline = greet;
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_inactivity_timer, deadline > now ? deadline - now : 0, 0);
}

/* The backend accepted and did not greet within connect_timeout: a
 * timed-out connect (passive health weighs it as such). Failover is over
 * once connected, so the client gets the answer for no backend. */
static void no_greeting(struct imf_session *s)
{
    char why[96];
    snprintf(why, sizeof(why), "no greeting within connect_timeout (%" PRIu64 " ms)",
             s->pool->connect_timeout_ms);
    imf_backend_report(s->pool, s->server_index, IMF_CONNECT_TIMEOUT);
    imf_stat_add(&s->worker->stats.backend_connect_failed, 1);
    imf_log_kv(IMF_LOG_WARN, "backend", "connect failed", "client", s->peer, "backend",
               imf_sess_backend_label(s), "reason", why, NULL);
    s->awaiting_greeting = false;
    if (s->lf != NULL) {
        imf_sess_lf_drop_backend(s, why);
        imf_sess_arm_inactivity_timer(s);
        imf_sess_pump(s); /* the NO goes out */
        return;
    }
    imf_sess_bye(s, IMF_CLOSE_BACKEND_UNAVAILABLE, "[UNAVAILABLE] Backend server unavailable");
}

static void on_inactivity_timer(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->state != SESS_RELAY)
        return;
    uint64_t now = uv_now(&s->worker->loop);
    if (now >= greeting_deadline(s)) {
        no_greeting(s);
        return;
    }
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
    if (imf_zchain_releasable(&s->z) && now >= s->last_client_ms + COMPRESS_IDLE_MS &&
        imf_gate_quiet(&s->gate))
        imf_sess_compress_idle(s);
    if (now < session_deadline(s)) {
        /* The client was active since the timer was set: wait the rest. */
        imf_sess_arm_inactivity_timer(s);
        return;
    }
    if (authenticated)
        imf_sess_bye(s, IMF_CLOSE_IDLE_TIMEOUT, "Autologout; idle for too long");
    else
        imf_sess_bye(s, IMF_CLOSE_PREAUTH_TIMEOUT, "Autologout; no login in time");
}

/* Relays what the client sent. */
static void client_data_arrived(struct imf_session *s)
{
    if (s->batch_inited)
        uv_check_stop(s->batch_check);
    imf_sess_pump(s);
    /* A literal the client is sending: the stall detector's deadline
     * follows its progress (the timer otherwise only wakes for idleness). */
    uint64_t size, left;
    if (s->state == SESS_RELAY && s->cfg->literal_stall_ms != 0 &&
        imf_framer_in_literal(&s->cfr, &size, &left))
        imf_sess_arm_inactivity_timer(s);
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
    if (imf_sess_lazy(s, UV_CHECK, (void **)&s->batch_check, &s->batch_inited) == NULL)
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
            imf_sess_set_state(s, SESS_CLOSED);
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
            imf_sess_close(
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
            imf_sess_do_handshake(s); /* reports the failure */
            return;
        }
        if (s->state == SESS_RELAY) {
            /* Relay what complete records are left, then close. */
            imf_sess_pump_upstream(s);
        }
        s->client.eof = true;
        imf_sess_close(s, nread == UV_EOF ? IMF_CLOSE_CLIENT_EOF : IMF_CLOSE_CLIENT_ERROR, false);
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
    imf_conn_read_buf(imf_btls_wire_in(s), buf);
}

static void on_backend_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct imf_session *s = st->data;
    if (buf->base != NULL)
        imf_chain_commit(imf_btls_wire_in(s), nread > 0 ? (size_t)nread : 0);
    if (nread == 0)
        return;
    imf_sess_greeted(s);
    if (nread < 0) {
        s->backend.eof = true;
        imf_conn_want_read(&s->backend, false, NULL, NULL);
    }
    imf_sess_pump(s);
}

/* Starts or stops reading each socket according to the watermarks. */
static void update_reading(struct imf_session *s)
{
    size_t up = s->client.rx.bytes + s->c_z.bytes + s->c_plain.bytes + s->backend.tx.bytes +
                imf_btls_buffered(s, true);
    size_t down =
        s->backend.rx.bytes + s->p_tx.bytes + s->client.tx.bytes + imf_btls_buffered(s, false);
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
    if (imf_btls_negotiating(s)) /* TLS to the backend being set up: read it all */
        want_backend = s->state == SESS_CONNECTING && !s->backend.closing && !s->backend.eof;
    imf_conn_want_read(&s->backend, want_backend, on_backend_alloc, on_backend_read);
}

static void pump_pass(struct imf_session *s);

/* Moves everything that can move. Called after every event; nested calls
 * (a decision made inside a pass) only record what they change, and the
 * outermost one tears a closed session down. */
void imf_sess_pump(struct imf_session *s)
{
    s->pump_depth++;
    pump_pass(s);
    if (--s->pump_depth == 0 && s->state == SESS_CLOSED) {
        /* The backend closed when the close was asked for; these are
         * idempotent. */
        close_client(s);
        close_handle(s, (uv_handle_t *)&s->timer);
    }
}

/* One pass. A pass may stop a direction at its high mark; writes free that
 * room, and a write that completes at once (uv_try_write) brings no
 * callback to say so. So when a pass wrote synchronously, go round again:
 * the loop is bounded by what is already buffered, since no socket is read
 * here. */
static void pump_pass(struct imf_session *s)
{
    for (;;) {
        if (s->state == SESS_CLOSED)
            return;
        if (s->state == SESS_HANDSHAKE)
            imf_sess_do_handshake(s);
        if (s->state == SESS_CONNECTING && s->btls != NULL)
            imf_btls_step(s);
        if (s->state == SESS_RELAY)
            imf_btls_decrypt(s);
        if (s->state == SESS_RELAY && s->lf != NULL)
            imf_sess_lf_pump(s);
        if (s->state == SESS_RELAY && s->lf == NULL) {
            imf_sess_pump_upstream(s);
            if (s->state == SESS_RELAY) {
                imf_sess_process_responses(s);
                if (s->upstream_kick && s->state == SESS_RELAY) {
                    s->upstream_kick = false;
                    imf_sess_pump_upstream(s);
                }
                if (s->draining && session_quiet(s))
                    imf_sess_bye(s, IMF_CLOSE_SHUTDOWN, "[UNAVAILABLE] Server shutting down");
                if (s->backend.eof && s->backend.rx.bytes == 0 && s->state == SESS_RELAY) {
                    /* The client gets what the backend sent, then the close. */
                    if (s->rline_len > 0) {
                        imf_sess_to_client(s, s->rline, s->rline_len);
                        s->rline_len = 0;
                    }
                    imf_sess_close(s,
                                   imf_gate_logout_sent(&s->gate) ? IMF_CLOSE_LOGOUT
                                                                  : IMF_CLOSE_BACKEND_EOF,
                                   true);
                    continue; /* flush in CLOSING */
                }
            }
        }
        imf_sess_encrypt_downstream(s);
        if (s->state == SESS_CLOSING && s->ssl != NULL && SSL_is_init_finished(s->ssl) &&
            !s->tls_failed && s->p_tx.bytes == 0 && s->p_z.bytes == 0 && !s->shutdown_sent) {
            s->shutdown_sent = true;
            SSL_shutdown(s->ssl); /* queues close_notify into c_tx */
        }
        if (s->state == SESS_CLOSED)
            return;
        size_t c_before = s->client.tx.bytes;
        size_t b_before = s->backend.tx.bytes + imf_btls_buffered(s, true);
        if (!s->client.closing)
            write_side(s, &s->client);
        if (s->state == SESS_CLOSED)
            return;
        if (s->state == SESS_RELAY)
            imf_btls_encrypt(s);
        if ((s->backend.up || imf_btls_negotiating(s)) && s->backend.inited && !s->backend.closing)
            write_side(s, &s->backend);
        if (s->state == SESS_CLOSED)
            return;
        bool again = s->client.tx.bytes < c_before ||
                     s->backend.tx.bytes + imf_btls_buffered(s, true) < b_before;
        if (s->split_wait && s->backend.tx.bytes == 0 && s->backend.wlen == 0 &&
            s->state == SESS_RELAY && imf_sess_split_drained(s))
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
            imf_sess_set_state(s, SESS_CLOSED);
            return;
        }
        if (!again)
            break;
    }
    imf_sess_line_shed(&s->cline, s->cline_len, &s->cline_cap);
    imf_sess_line_shed(&s->rline, s->rline_len, &s->rline_cap);
    update_reading(s);
}

void imf_sess_gate_pool_params(struct imf_session *s)
{
    const struct imf_pool_config *pool = s->pool;
    struct imf_gate_params *p = &s->gate_params;
    p->idle_poll = pool->idle_mode == IMF_IDLE_POLL;
    p->idle_refresh = pool->idle_refresh_ms != 0;
    p->strip_client_id = true;
    p->quirks = pool->quirks;
    p->pipelining = pool->pipelining;
    p->pipelining_set = pool->pipelining_set;
    p->literal_sync = pool->literal_plus == IMF_LITERAL_PLUS_SYNC;
    p->literal_sync_set = pool->literal_plus_set;
    p->crlf_split = pool->literal_crlf_split;
    p->crlf_split_set = pool->literal_crlf_split_set;
}

/* What the gate follows, from the session's config snapshot. */
static void gate_params(struct imf_session *s)
{
    const struct imf_config *c = s->cfg;
    struct imf_gate_params *p = &s->gate_params;
    p->implicit_tls = s->lcfg->mode == IMF_LISTEN_IMPLICIT_TLS;
    p->starttls_listener = s->lcfg->mode == IMF_LISTEN_STARTTLS;
    p->require_tls = s->lcfg->require_tls;
    p->compress = c->compress;
    imf_sess_gate_pool_params(s);
    p->max_literal = c->max_literal_size;
    p->max_command = c->max_command_size;
    p->hide = c->hide_capabilities;
    p->login_refused = imf_sess_login_refused;
    p->login_ctx = s;
    memcpy(p->secret_key, imf_throttle_secret_key(), sizeof(p->secret_key));
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
            imf_sess_bye(s, IMF_CLOSE_REFUSED, s->refusal);
            return;
        }
        if (imf_route_configured(s->cfg)) {
            imf_sess_lf_start(s); /* the proxy greets; the backend comes at login */
            return;
        }
        /* The backend's greeting, with STARTTLS announced, is the first
         * thing the client sees; TLS starts when it asks. */
        imf_sess_connect_backend(s);
        if (s->state == SESS_CONNECTING || s->state == SESS_QUEUED)
            update_reading(s);
        return;
    }
    if (imf_sess_begin_tls(s) != 0) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    imf_sess_pump(s); /* bytes after a PROXY header may be the ClientHello */
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
        imf_sess_close(s, IMF_CLOSE_PROXY_PROTOCOL, false);
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
    /* Every session uses the pool "default" (the config requires it) until
     * the route map picks one per user. */
    s->pool = imf_config_pool(s->cfg, IMF_POOL_DEFAULT);
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

    /* Link first: from here on imf_sess_free() undoes everything. */
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
        imf_sess_close(s, IMF_CLOSE_CLIENT_ERROR, false);
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
            imf_sess_close(s, IMF_CLOSE_PROXY_PROTOCOL, false);
            return;
        }
        /* The client's real address comes first; everything else waits. */
        imf_sess_set_state(s, SESS_PROXY_HEADER);
        uv_timer_start(&s->timer, imf_sess_on_handshake_timeout, s->cfg->handshake_timeout_ms, 0);
        update_reading(s);
        return;
    }
    admit(s);
}
