/* lobby_driver.h: a mini session around the lobby, for unit.lobby and
 * fuzz_lobby: a command framer and a lobby, driven the way
 * src/lobby_sess.c drives them, and the transcript of what the client was
 * sent. Header-only (static functions); a broken invariant aborts. */
#ifndef IMAPFRONT_TESTS_LOBBY_DRIVER_H
#define IMAPFRONT_TESTS_LOBBY_DRIVER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/lobby.h"

#define OUT_MAX (1u << 17) /* transcript bytes (at most ~40 per input byte) */

/* A mini session: framer, lobby, and the transcript of what the client was
 * sent, with each login the lobby handed on as "<LOGIN tag mech user
 * pass>" (the driver answers nothing for it and goes on, as after a NO),
 * "<TLS>" for STARTTLS and "<CLOSE>" at the end. */
struct drv {
    struct imf_framer fr;
    struct imf_lobby_params p;
    struct imf_lobby lb;
    uint8_t line[4096];
    size_t line_len;
    char out[OUT_MAX];
    size_t out_len;
    bool closed;
    unsigned logins;     /* logins handed on */
    bool after_starttls; /* the rest is plaintext the session discards */
};

static void out_add(struct drv *d, const void *p, size_t n)
{
    if (n > OUT_MAX - d->out_len)
        abort();
    memcpy(d->out + d->out_len, p, n);
    d->out_len += n;
}

static void drv_init(struct drv *d, bool starttls, bool require_tls, bool tls)
{
    memset(d, 0, sizeof(*d));
    d->p.starttls_listener = starttls;
    d->p.require_tls = require_tls;
    imf_lobby_init(&d->lb, &d->p, tls);
    imf_framer_init(&d->fr, IMF_FRAMER_COMMANDS, sizeof(d->line), 1u << 20);
}

static void apply(struct drv *d, const struct imf_lobby_decision *x)
{
    if (x->actions & IMF_LOBBY_SKIP_LITERAL)
        imf_framer_skip_literal(&d->fr);
    if (x->actions & IMF_LOBBY_ANSWER)
        out_add(d, x->answer, x->answer_len);
    if (x->actions & (IMF_LOBBY_BYE | IMF_LOBBY_CLOSE)) {
        out_add(d, "<CLOSE>", 7);
        d->closed = true;
    }
    if (x->actions & IMF_LOBBY_STARTTLS) {
        out_add(d, "<TLS>", 5);
        d->after_starttls = true;
        imf_lobby_tls_started(&d->lb);
        imf_framer_init(&d->fr, IMF_FRAMER_COMMANDS, sizeof(d->line), 1u << 20);
    }
    if (x->actions & IMF_LOBBY_LOGIN) {
        struct imf_lobby_creds c;
        imf_lobby_creds(&d->lb, &c);
        if (!imf_lobby_busy(&d->lb) || c.user_len > IMF_BC_CRED_MAX || c.pass_len > IMF_BC_CRED_MAX)
            abort();
        char buf[3 * 1024 + 128];
        int n =
            snprintf(buf, sizeof(buf), "<LOGIN %s %s %.*s %.*s>", c.tag, c.mech, (int)c.user_len,
                     (const char *)c.user, (int)c.pass_len, (const char *)c.pass);
        out_add(d, buf, (size_t)n);
        imf_lobby_login_done(&d->lb);
        d->logins++;
        /* Nothing of the secret is left. */
        for (size_t i = 0; i < sizeof(d->lb.cred); i++)
            if (d->lb.cred[i] != 0)
                abort();
        if (imf_lobby_busy(&d->lb))
            abort();
    }
}

static void feed(struct drv *d, const uint8_t *p, size_t len)
{
    /* Bounded: each event consumes bytes or is a zero-length one the
     * framer reports once. */
    while (!d->closed && !d->after_starttls) {
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&d->fr, p, len, &ev);
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return;
        case IMF_EV_TEXT:
            if (!imf_lobby_discarding(&d->lb)) {
                if (n > sizeof(d->line) - d->line_len)
                    abort();
                memcpy(d->line + d->line_len, p, n);
                d->line_len += n;
            }
            break;
        case IMF_EV_LINE_END: {
            struct imf_lobby_decision x;
            imf_lobby_line(&d->lb, d->line, d->line_len, &ev, &x);
            d->line_len = 0;
            apply(d, &x);
            if (x.actions & IMF_LOBBY_STARTTLS)
                return; /* what follows would be the handshake */
            break;
        }
        case IMF_EV_LITERAL:
            imf_lobby_literal(&d->lb, p, n);
            break;
        case IMF_EV_ERROR:
            out_add(d, "<FRAMER>", 8);
            d->closed = true;
            return;
        default:
            break;
        }
        p += n;
        len -= n;
    }
}

#endif
