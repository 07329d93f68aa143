/* gate_driver.h: a "mini session" around the gate, for unit.gate and
 * fuzz_gate. No sockets, no libuv, no TLS: two framers (client commands,
 * backend responses), a gate, and the buffers the session fills. Decisions
 * are applied the way src/session.c applies them (process_commands,
 * on_command_line, process_responses, on_response_line):
 *
 *   - before each framer step the gate is asked imf_gate_client_wait(); the
 *     driver stops framing client input unless it says GO;
 *   - literal octets go to the backend unless imf_gate_discarding(), and
 *     to imf_gate_capture() while imf_gate_capturing() (LOGIN's literals);
 *   - the gate's own answers wait in l_tx until the response framer is
 *     between two responses, then join to_client;
 *   - STARTTLS and COMPRESS answers go to the client at once; STARTTLS
 *     drops what the client sent after it (it would be the handshake) and
 *     starts the command framer afresh, as the session does.
 *
 * Everything the driver sends to the backend is also described in marks:
 * where each forwarded line and each forwarded literal ends in to_backend,
 * so that a checker can re-frame to_backend and compare.
 *
 * Header-only (static functions) so that the cmocka test and the libFuzzer
 * harness share it. Memory failures abort: these are tests. */
#ifndef IMAPFRONT_TESTS_GATE_DRIVER_H
#define IMAPFRONT_TESTS_GATE_DRIVER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/capability.h"
#include "imapfront/gate.h"
#include "imapfront/imap_framer.h"

struct gd_buf {
    uint8_t *p;
    size_t len, cap;
};

static void gd_buf_add(struct gd_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (n > b->cap - b->len) {
        size_t ncap = b->cap != 0 ? b->cap : 64;
        while (ncap - b->len < n)
            ncap *= 2;
        uint8_t *np = realloc(b->p, ncap);
        if (np == NULL)
            abort();
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* b's bytes from off on (never a null pointer, even when empty). */
static inline const uint8_t *gd_at(const struct gd_buf *b, size_t off)
{
    return b->p != NULL ? b->p + off : (const uint8_t *)"";
}

static void gd_buf_free(struct gd_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* One boundary of what went to the backend. */
enum gd_mark_kind {
    GD_MARK_LINE,    /* a line ends here (a client line, or the proxy's own) */
    GD_MARK_LITERAL, /* a forwarded literal ends here */
};

struct gd_mark {
    enum gd_mark_kind kind;
    size_t end; /* offset in to_backend just past the line or literal */
};

struct gd {
    struct imf_gate_params p; /* the gate borrows it: a gd never moves */
    struct imf_gate g;
    struct imf_framer cfr, rfr;
    uint64_t max_line; /* the command framer's line limit (max_line_length) */

    struct gd_buf c_in; /* everything the client sent */
    size_t c_off;       /* ... framed up to here */
    struct gd_buf b_in; /* everything the backend sent */
    size_t b_off;
    struct gd_buf cline, rline;
    struct gd_buf to_backend, to_client, l_tx;
    struct gd_buf marks; /* struct gd_mark[] */

    bool closed;          /* the session would have closed (BYE, LOGOUT, framer error) */
    bool tls;             /* STARTTLS accepted (or implicit TLS) */
    size_t tls_at;        /* to_backend.len when TLS began */
    bool compress_on;     /* COMPRESS accepted */
    bool kick;            /* a response said client input may move again */
    unsigned actions;     /* union of all decisions' actions */
    unsigned effects;     /* union of all responses' effects */
    unsigned refusals;    /* decisions that carried a log text */
    const char *last_log; /* the last of those texts */
    enum imf_gate_wait last_wait;
    uint64_t discarded; /* literal octets swallowed */
};

static void gd_init(struct gd *d, const struct imf_gate_params *p, uint64_t max_line)
{
    memset(d, 0, sizeof(*d));
    d->p = *p;
    d->max_line = max_line;
    imf_gate_init(&d->g, &d->p);
    imf_framer_init(&d->cfr, IMF_FRAMER_COMMANDS, max_line, p->max_literal);
    imf_framer_init(&d->rfr, IMF_FRAMER_RESPONSES, 0, 0);
    d->tls = p->implicit_tls;
}

static void gd_free(struct gd *d)
{
    imf_gate_cleanup(&d->g);
    gd_buf_free(&d->c_in);
    gd_buf_free(&d->b_in);
    gd_buf_free(&d->cline);
    gd_buf_free(&d->rline);
    gd_buf_free(&d->to_backend);
    gd_buf_free(&d->to_client);
    gd_buf_free(&d->l_tx);
    gd_buf_free(&d->marks);
}

static void gd_mark(struct gd *d, enum gd_mark_kind kind)
{
    struct gd_mark m = {kind, d->to_backend.len};
    gd_buf_add(&d->marks, &m, sizeof(m));
}

static inline size_t gd_mark_count(const struct gd *d)
{
    return d->marks.len / sizeof(struct gd_mark);
}

static inline struct gd_mark gd_mark_at(const struct gd *d, size_t i)
{
    struct gd_mark m;
    memcpy(&m, d->marks.p + i * sizeof(m), sizeof(m));
    return m;
}

/* The proxy's own line to the backend (ID, IDLE refresh, poll). */
static void gd_own(struct gd *d, const char *line, size_t n)
{
    if (n == 0)
        return;
    gd_buf_add(&d->to_backend, line, n);
    gd_mark(d, GD_MARK_LINE);
}

static bool gd_response_boundary(const struct gd *d)
{
    return imf_framer_at_message_start(&d->rfr) && d->rline.len == 0;
}

static void gd_flush_local(struct gd *d)
{
    if (d->l_tx.len > 0 && gd_response_boundary(d)) {
        gd_buf_add(&d->to_client, d->l_tx.p, d->l_tx.len);
        d->l_tx.len = 0;
    }
}

static void gd_local_answer(struct gd *d, const void *p, size_t n)
{
    gd_buf_add(&d->l_tx, p, n);
    gd_flush_local(d);
}

static bool gd_backend_quiet(const struct gd *d)
{
    return d->b_off == d->b_in.len && d->l_tx.len == 0 && gd_response_boundary(d);
}

static void gd_command_line(struct gd *d, const struct imf_framer_ev *ev)
{
    struct imf_gate_decision dec;
    imf_gate_client_line(&d->g, d->cline.p, d->cline.len, ev, gd_backend_quiet(d), &dec);
    d->cline.len = dec.len;
    d->actions |= dec.actions;
    if (dec.log != NULL) {
        d->refusals++;
        d->last_log = dec.log;
    }
    if (dec.actions & IMF_GATE_SKIP_LITERAL)
        imf_framer_skip_literal(&d->cfr);
    if (dec.actions & IMF_GATE_CLOSE) {
        gd_flush_local(d);
        gd_buf_add(&d->to_client, dec.answer, dec.answer_len);
        d->closed = true;
        return;
    }
    if (dec.actions & IMF_GATE_FORWARD) {
        if (dec.actions & IMF_GATE_FIX_EOL) {
            d->cline.p[d->cline.len - 1] = '\r';
            gd_buf_add(&d->cline, "\n", 1);
        }
        gd_buf_add(&d->to_backend, d->cline.p, d->cline.len);
        gd_mark(d, GD_MARK_LINE);
    }
    if (dec.actions & IMF_GATE_STARTTLS) {
        gd_buf_add(&d->to_client, dec.answer, dec.answer_len);
        /* What the client sent after STARTTLS would be its handshake. */
        d->c_off = d->c_in.len;
        d->cline.len = 0;
        imf_framer_init(&d->cfr, IMF_FRAMER_COMMANDS, d->max_line, d->p.max_literal);
        imf_gate_tls_started(&d->g);
        d->tls = true;
        d->tls_at = d->to_backend.len;
        return;
    }
    if (dec.actions & IMF_GATE_COMPRESS) {
        gd_buf_add(&d->to_client, dec.answer, dec.answer_len);
        d->compress_on = true;
        return;
    }
    if (dec.actions & IMF_GATE_ANSWER)
        gd_local_answer(d, dec.answer, dec.answer_len);
}

/* process_commands: frames client input while the gate says GO. */
static void gd_commands(struct gd *d)
{
    /* Bounded: every pass consumes input or ends (zero-length events are
     * followed by consuming ones). */
    for (size_t guard = 0; !d->closed && guard < 4 * (d->c_in.len + 16); guard++) {
        bool at_start = imf_framer_at_message_start(&d->cfr) && d->cline.len == 0;
        d->last_wait = imf_gate_client_wait(&d->g, at_start);
        if (d->last_wait != IMF_GATE_GO)
            return;
        const uint8_t *p = gd_at(&d->c_in, d->c_off);
        size_t avail = d->c_in.len - d->c_off;
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&d->cfr, p, avail, &ev);
        bool discarding = imf_gate_discarding(&d->g);
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return;
        case IMF_EV_TEXT:
            if (!discarding)
                gd_buf_add(&d->cline, p, n);
            break;
        case IMF_EV_LINE_END:
            gd_command_line(d, &ev);
            d->cline.len = 0;
            break;
        case IMF_EV_LITERAL:
            if (discarding) {
                d->discarded += n;
                break;
            }
            /* A LOGIN name or password literal: the gate reads it as it goes. */
            if (imf_gate_capturing(&d->g))
                imf_gate_capture(&d->g, p, n);
            gd_buf_add(&d->to_backend, p, n);
            break;
        case IMF_EV_LITERAL_END:
            if (!discarding)
                gd_mark(d, GD_MARK_LITERAL);
            break;
        case IMF_EV_ERROR:
        default:
            d->closed = true;
            return;
        }
        d->c_off += n;
    }
}

static void gd_response_line(struct gd *d, const struct imf_framer_ev *ev)
{
    if (!ev->first_line) {
        gd_buf_add(&d->to_client, d->rline.p, d->rline.len);
        return;
    }
    struct imf_gate_response r;
    imf_gate_response_line(&d->g, d->rline.p, d->rline.len, &r);
    d->effects |= r.effects;
    if (r.effects & IMF_GATE_R_BACKEND)
        gd_own(d, r.backend, r.backend_len);
    if (r.effects & IMF_GATE_R_SKIP_LITERAL)
        imf_framer_skip_literal(&d->cfr);
    if (r.effects & IMF_GATE_R_KICK)
        d->kick = true;
    if (r.effects & IMF_GATE_R_SWALLOW)
        return;
    struct imf_cap_policy pol;
    imf_gate_cap_policy(&d->g, &pol);
    size_t cap = d->rline.len + IMF_CAP_GROWTH, out_len = 0;
    uint8_t *out = malloc(cap);
    if (out == NULL)
        abort();
    if (imf_capability_rewrite(d->rline.p, d->rline.len, &pol, out, cap, &out_len))
        gd_buf_add(&d->to_client, out, out_len);
    else
        gd_buf_add(&d->to_client, d->rline.p, d->rline.len);
    free(out);
    if (r.effects & IMF_GATE_R_LOGOUT)
        d->closed = true;
}

/* process_responses, then the client side again when a response kicked it. */
static void gd_responses(struct gd *d)
{
    for (size_t guard = 0; !d->closed && guard < 4 * (d->b_in.len + 16); guard++) {
        const uint8_t *p = gd_at(&d->b_in, d->b_off);
        size_t avail = d->b_in.len - d->b_off;
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&d->rfr, p, avail, &ev);
        if (ev.kind == IMF_EV_NEED_MORE)
            break;
        switch (ev.kind) {
        case IMF_EV_TEXT:
            gd_buf_add(&d->rline, p, n);
            break;
        case IMF_EV_LINE_END:
            gd_response_line(d, &ev);
            d->rline.len = 0;
            d->b_off += n;
            gd_flush_local(d);
            continue;
        case IMF_EV_LITERAL:
            gd_buf_add(&d->to_client, p, n);
            break;
        default:
            break;
        }
        d->b_off += n;
    }
    if (d->kick && !d->closed) {
        d->kick = false;
        gd_commands(d);
    }
}

/* The client sends n bytes. */
static void gd_client(struct gd *d, const void *p, size_t n)
{
    if (d->closed)
        return;
    gd_buf_add(&d->c_in, p, n);
    gd_commands(d);
}

/* The backend sends n bytes. */
static void gd_backend(struct gd *d, const void *p, size_t n)
{
    if (d->closed)
        return;
    gd_buf_add(&d->b_in, p, n);
    gd_responses(d);
}

/* The session's IDLE timer: a refresh (idle = on) or a poll (idle = poll). */
static void gd_idle_timer(struct gd *d)
{
    char line[64];
    bool mid_line = d->cline.len > 0 || !imf_framer_at_message_start(&d->cfr);
    size_t n = d->p.idle_poll ? imf_gate_idle_poll(&d->g, line, sizeof(line))
                              : imf_gate_idle_refresh(&d->g, mid_line, line, sizeof(line));
    gd_own(d, line, n);
    if (!d->closed)
        gd_commands(d);
}

/* The proxy's ID with the client's address, sent when the backend connects. */
static void gd_send_id(struct gd *d, const char *ip, int port)
{
    char line[256];
    gd_own(d, line, imf_gate_own_id(&d->g, ip, port, line, sizeof(line)));
}

#endif
