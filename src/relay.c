/* relay: framing both directions and applying the gate's decisions (see
 * include/imapfront/session_int.h). */
#include <string.h>

#include <openssl/mem.h>

#include "imapfront/backend.h"
#include "imapfront/log.h"
#include "imapfront/session_int.h"

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
void imf_sess_line_shed(uint8_t **buf, size_t len, size_t *cap)
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

/* Between two responses: nothing of one is half relayed or held. */
bool imf_sess_response_boundary(const struct imf_session *s)
{
    return imf_framer_at_message_start(&s->rfr) && s->rline_len == 0 && !s->rline_streaming &&
           s->login_held == NULL;
}

/* The proxy's own answers go out only between responses, never inside one
 * (a FETCH literal, say). */
void imf_sess_flush_local(struct imf_session *s)
{
    if (s->l_tx.bytes > 0 && imf_sess_response_boundary(s) &&
        imf_chain_splice(&s->p_tx, &s->l_tx, s->l_tx.bytes) != 0)
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
}

void imf_sess_local_answer(struct imf_session *s, const void *p, size_t n)
{
    if (imf_chain_append(&s->l_tx, p, n) != 0) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    imf_sess_flush_local(s);
}

/* Nothing from the backend is pending and no answer of ours waits. */
static bool backend_quiet(const struct imf_session *s)
{
    return s->backend.rx.bytes == 0 && s->l_tx.bytes == 0 && imf_sess_response_boundary(s);
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
    if (d.actions & IMF_GATE_LOGIN_DONE)
        imf_sess_login_finished(s, NULL, 0);
    if (d.actions & IMF_GATE_SKIP_LITERAL)
        imf_framer_skip_literal(&s->cfr);
    if ((d.actions & IMF_GATE_CLOSE) && d.why == IMF_GATE_CLOSE_LOGIN) {
        /* The tagged NO, then the session ends (the backend has half a
         * LOGIN and never its password). */
        imf_sess_local_answer(s, d.answer, d.answer_len);
        imf_sess_bye(s, IMF_CLOSE_CLIENT_ERROR, "[AUTHENTICATIONFAILED] Too many failed logins");
        return;
    }
    if (d.actions & IMF_GATE_CLOSE) {
        /* answer is "* BYE text\r\n"; imf_sess_bye() writes the frame itself. */
        char text[sizeof(d.answer)];
        size_t n = d.answer_len > 6 ? d.answer_len - 6 : 0;
        while (n > 0 && (d.answer[6 + n - 1] == '\r' || d.answer[6 + n - 1] == '\n'))
            n--;
        memcpy(text, d.answer + 6, n);
        text[n] = '\0';
        imf_sess_bye(
            s, d.why == IMF_GATE_CLOSE_TOOBIG ? IMF_CLOSE_LITERAL_TOO_BIG : IMF_CLOSE_CLIENT_ERROR,
            text);
        return;
    }
    if (d.actions & IMF_GATE_NEW_COMMAND) {
        if (imf_telemetry_sent(&s->tracker, imf_gate_current_tag(&s->gate),
                               imf_gate_current_name(&s->gate), s->cline, s->cline_len,
                               uv_hrtime() / 1000) != 0) {
            imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
            return;
        }
    }
    if (d.actions & IMF_GATE_FORWARD) {
        if (d.actions & IMF_GATE_FIX_EOL) {
            /* A bare LF: the backend gets the CRLF it may wait for. */
            s->cline[s->cline_len - 1] = '\r';
            if (line_append(&s->cline, &s->cline_len, &s->cline_cap, (const uint8_t *)"\n", 1)) {
                imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
        }
        imf_sess_to_backend(s, s->cline, s->cline_len);
        if (d.actions & IMF_GATE_CONVERTED) {
            s->converted++;
            imf_stat_add(&s->worker->stats.literals_converted, 1);
        }
    }
    if (d.actions & IMF_GATE_STARTTLS) {
        imf_sess_to_client(s, d.answer, d.answer_len);
        imf_sess_start_tls(s);
        return;
    }
    if (d.actions & IMF_GATE_COMPRESS) {
        imf_sess_start_compress(s, d.answer, d.answer_len);
        return;
    }
    if (d.actions & IMF_GATE_ANSWER)
        imf_sess_local_answer(s, d.answer, d.answer_len);
    if (d.actions & IMF_GATE_IDLE_BEGIN)
        imf_sess_idle_begin(s);
    if (d.actions & IMF_GATE_IDLE_END)
        imf_sess_idle_end(s);
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
    if (s->lf != NULL) {
        imf_sess_lf_commands(s); /* not logged in yet: the lobby answers */
        return;
    }
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
                imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
            break;
        case IMF_EV_LINE_END: {
            on_command_line(s, &ev);
            /* A login's line held its password: zero it. */
            const char *name = imf_gate_current_name(&s->gate);
            if (s->cline != NULL &&
                (strcmp(name, "LOGIN") == 0 || strcmp(name, "AUTHENTICATE") == 0))
                OPENSSL_cleanse(s->cline, s->cline_cap);
            line_reset(&s->cline, &s->cline_len, &s->cline_cap);
            break;
        }
        case IMF_EV_LITERAL:
            if (discarding)
                break;
            if (imf_gate_capturing(&s->gate))
                imf_gate_capture(&s->gate, p, n);
            /* Literal payloads move by block, not by copy. */
            if (imf_chain_splice(&s->backend.tx, in, n) != 0)
                imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
            continue;
        case IMF_EV_LITERAL_END:
            if (imf_gate_shields(&s->gate)->crlf_split && !discarding) {
                /* Everything up to the literal's last octet leaves first;
                 * what follows waits until it has left our send queue. */
                s->split_wait = true;
            }
            break;
        case IMF_EV_ERROR:
            imf_sess_client_framing_error(s, &ev);
            return;
        default:
            return;
        }
        imf_chain_consume(in, n);
        if (in == &s->client.rx && s->ssl != NULL)
            return; /* STARTTLS: what follows is the handshake */
    }
}

static void on_yield(uv_idle_t *h)
{
    struct imf_session *s = h->data;
    uv_idle_stop(h);
    imf_sess_pump(s);
}

/* Stops here and resumes on the next turn of the loop, after other
 * sessions' events (an idle handle: the loop does not block meanwhile).
 * Returns false when the handle cannot be had. */
static bool yield_later(struct imf_session *s)
{
    if (imf_sess_lazy(s, UV_IDLE, (void **)&s->yield_idle, &s->yield_inited) == NULL)
        return false;
    uv_idle_start(s->yield_idle, on_yield);
    return true;
}

/* Decrypts what the client sent into c_plain and relays it. Inflating is
 * bounded per call: a deflate bomb whose output the proxy swallows (the
 * octets of a refused command) would otherwise hold the worker, and every
 * session on it, for as long as it inflates. */
void imf_sess_pump_upstream(struct imf_session *s)
{
    if (s->ssl == NULL) {
        process_commands(s);
        return;
    }
    uint64_t inflated_before = imf_zchain_inflated(&s->z);
    for (;;) {
        process_commands(s);
        if (s->state != SESS_RELAY || s->c_plain.bytes > 0 || s->client.eof)
            return;
        if (imf_zchain_inflate_pending(&s->z, &s->c_z)) {
            if (imf_zchain_inflated(&s->z) - inflated_before >= INFLATE_BUDGET && yield_later(s))
                return;
            int r = imf_sess_inflate_step(s);
            if (r < 0)
                return;
            if (r > 0)
                continue;
        }
        if (s->client.rx.bytes == 0 && !s->tio.in_eof && SSL_pending(s->ssl) == 0)
            return;
        if (imf_sess_decrypt_records(s) <= 0)
            return;
    }
}

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
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    size_t cap = out == small ? sizeof(small) : need;
    size_t out_len;
    if (imf_capability_rewrite(s->rline, s->rline_len, &pol, out, cap, &out_len))
        imf_sess_to_client(s, out, out_len);
    else
        imf_sess_to_client(s, s->rline, s->rline_len);
    if (out != small)
        free(out);
}

/* The greeting showed what the server is: say so once per server. */
static void note_profile(struct imf_session *s)
{
    enum imf_gate_profile pr = imf_gate_profile(&s->gate);
    if (s->pool->quirks != IMF_QUIRKS_AUTO ||
        !imf_backend_note_profile(s->pool, s->server_index, (int)pr))
        return;
    if (pr == IMF_PROFILE_EXCHANGE55 && s->pool->tls != IMF_BACKEND_TLS_OFF)
        imf_log_kv(IMF_LOG_WARN, "backend",
                   "Exchange 5.5 reached over TLS: its receive bug (Q239082) lives in its TLS "
                   "path, where the shields cannot reach it",
                   "backend", imf_sess_backend_label(s), NULL);
    const struct imf_gate_shields *sh = imf_gate_shields(&s->gate);
    imf_log_kv(IMF_LOG_INFO, "backend", "server profile", "backend", imf_sess_backend_label(s),
               "profile", imf_gate_profile_names[pr], "pipelining", sh->pipelining ? "on" : "off",
               "literal_plus", sh->literal_sync ? "sync" : "pass", "literal_crlf_split",
               sh->crlf_split ? "on" : "off", NULL);
}

void imf_sess_client_framing_error(struct imf_session *s, const struct imf_framer_ev *ev)
{
    if (ev->error == IMF_FRAMER_LINE_TOO_LONG)
        imf_sess_bye(s, IMF_CLOSE_LINE_TOO_LONG, "Command line too long");
    else
        imf_sess_bye(s, IMF_CLOSE_LITERAL_MALFORMED, "Invalid literal announcement");
}

static void on_response_line(struct imf_session *s, const struct imf_framer_ev *ev)
{
    if (!ev->first_line || s->rline_streaming) {
        imf_sess_to_client(s, s->rline, s->rline_len);
        return;
    }
    struct imf_gate_response g;
    imf_gate_response_line(&s->gate, s->rline, s->rline_len, &g);
    unsigned fx = g.effects;
    if (fx & IMF_GATE_R_PROFILE) {
        s->awaiting_greeting = false;
        note_profile(s);
    }
    if (fx & IMF_GATE_R_ID_REFUSED)
        imf_log_kv(IMF_LOG_WARN, "backend", "ID with the client address refused", "client", s->peer,
                   "backend", imf_sess_backend_label(s), NULL);
    if (fx & IMF_GATE_R_BACKEND)
        imf_sess_to_backend(s, g.backend, g.backend_len);
    if (fx & IMF_GATE_R_SKIP_LITERAL)
        imf_framer_skip_literal(&s->cfr);
    if (fx & IMF_GATE_R_KICK)
        s->upstream_kick = true;
    if (fx & IMF_GATE_R_AUTH)
        imf_sess_arm_inactivity_timer(s); /* idle_timeout from now on */
    if (fx & IMF_GATE_R_IDLE_BEGIN)
        imf_sess_idle_begin(s);
    if (fx & IMF_GATE_R_IDLE_END)
        imf_sess_idle_end(s);
    if (fx & IMF_GATE_R_SWALLOW)
        return;
    if (fx & IMF_GATE_R_LOGIN) {
        bool failed = imf_gate_login(&s->gate) != NULL &&
                      imf_gate_login(&s->gate)->result == IMF_LOGIN_FAILED;
        imf_sess_login_finished(s, s->rline, s->rline_len);
        if (failed && imf_sess_login_hold(s, s->rline, s->rline_len)) {
            imf_telemetry_tagged(&s->tracker, &s->worker->stats.telemetry, g.r.tag,
                                 uv_hrtime() / 1000);
            return;
        }
    }
    if (g.r.kind == IMF_RESP_CONTINUATION && s->rline_len <= 3) {
        /* "+\r\n": RFC 9051 wants text (or base64) after "+ ". */
        imf_stat_add(&s->worker->stats.telemetry.anomalies[IMF_ANOMALY_BARE_PLUS], 1);
        imf_log_kv(IMF_LOG_INFO, "backend", "bare continuation request", "client", s->peer,
                   "backend", imf_sess_backend_label(s), NULL);
    }
    if (g.r.kind == IMF_RESP_TAGGED) {
        imf_telemetry_tagged(&s->tracker, &s->worker->stats.telemetry, g.r.tag, uv_hrtime() / 1000);
        if (fx & IMF_GATE_R_STRAY)
            imf_log_kv(IMF_LOG_WARN, "backend", "tagged response for no command in flight",
                       "client", s->peer, "backend", imf_sess_backend_label(s), "tag", g.r.tag,
                       NULL);
    }
    relay_response_line(s);
    if (fx & IMF_GATE_R_LOGOUT)
        imf_sess_close(s, IMF_CLOSE_LOGOUT, true);
}

void imf_sess_process_responses(struct imf_session *s)
{
    /* During a STARTTLS handshake responses are framed and held in p_tx
     * until TLS is up (bounded like everything else). */
    while ((s->state == SESS_RELAY || s->state == SESS_HANDSHAKE) && s->backend.up &&
           s->login_held == NULL && s->p_tx.bytes + s->client.tx.bytes < s->high) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(&s->backend.rx, &avail);
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&s->rfr, p, avail, &ev);
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return;
        case IMF_EV_TEXT:
            if (s->rline_streaming) {
                imf_sess_to_client(s, p, n);
            } else {
                if (line_append(&s->rline, &s->rline_len, &s->rline_cap, p, n) != 0) {
                    imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
                    return;
                }
                if (s->rline_len > RESPONSE_LINE_HOLD) {
                    /* A long line (a big SEARCH result): nothing the policy
                     * rewrites is that long, so stream the rest. */
                    imf_sess_to_client(s, s->rline, s->rline_len);
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
                           s->peer, "backend", imf_sess_backend_label(s), "size", size, NULL);
            }
            on_response_line(s, &ev);
            line_reset(&s->rline, &s->rline_len, &s->rline_cap);
            s->rline_streaming = false;
            imf_chain_consume(&s->backend.rx, n);
            imf_sess_flush_local(s);
            if (s->state == SESS_CLOSING || s->state == SESS_CLOSED)
                return;
            continue;
        case IMF_EV_LITERAL:
            /* FETCH bodies move by block, not by copy. */
            if (imf_chain_splice(&s->p_tx, &s->backend.rx, n) != 0) {
                imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
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
