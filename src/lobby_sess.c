/* lobby_sess: login-first sessions (see include/imapfront/session_int.h
 * and lobby.h). With [route] configured the proxy greets the client itself,
 * answers it until a login, then picks the pool (route map), connects
 * through the usual admission path (queue, failover, passive health), logs
 * in to the backend for the client with the backend client (bclient.h)
 * and answers the client's login under its own tag. Once logged in, the
 * session relays exactly as a transparent one (s->lf is gone).
 *
 * A failed login keeps the backend connection, which is logged in to
 * nobody and greeted already: the client's retry goes to it when the retry
 * is routed to the same pool, else it is closed. A backend that says BYE or
 * breaks the protocol is closed; the next login connects again. */
#include <errno.h>
#include <string.h>

#include <openssl/mem.h>

#include "imapfront/backend.h"
#include "imapfront/bclient.h"
#include "imapfront/lobby.h"
#include "imapfront/log.h"
#include "imapfront/route.h"
#include "imapfront/session_int.h"

#define AUTH_FAILED "NO [AUTHENTICATIONFAILED] Authentication failed"
#define UNAVAILABLE "NO [UNAVAILABLE] Backend server unavailable, try again later"

/* Where the session's login stands. */
enum lf_phase {
    LF_LOBBY,      /* reading the client's commands (the backend, if any, is idle) */
    LF_CONNECTING, /* a login waits for a backend connection */
    LF_GREETING,   /* ... for the backend's greeting */
    LF_ID,         /* ... for the answer to the proxy's ID (forward_client_ip = id) */
    LF_LOGIN,      /* the login went to the backend */
    LF_PHASE_COUNT
};
static const char *const lf_phase_names[LF_PHASE_COUNT] = {
    "lobby", "connecting", "greeting", "id", "login",
};

struct imf_lf {
    enum lf_phase phase;
    bool bc_live;       /* bc talks to the connected backend */
    bool reconnect;     /* connect once the old backend handle has closed */
    bool lplus, lminus; /* the backend's LITERAL+ / LITERAL- before login */
    size_t id_len;
    char id_line[32]; /* the start of a response line while waiting for the ID answer */
    char tag[IMF_TAG_MAX + 1];
    struct imf_lobby_params lp;
    struct imf_lobby lb;
    struct imf_bc bc;
};

static void set_phase(struct imf_session *s, enum lf_phase ph)
{
    if (s->lf->phase == ph)
        return;
    imf_debug("session", "client=%s login-first %s -> %s", s->peer, lf_phase_names[s->lf->phase],
              lf_phase_names[ph]);
    s->lf->phase = ph;
}

/* The one place that picks a user's pool: the route map's answer, as a
 * pool of the session's config. Returns it, or NULL with *out_why saying
 * why there is none. */
static const struct imf_pool_config *pool_for(const struct imf_session *s, const char *user,
                                              size_t user_len, const char **out_why)
{
    struct imf_route *r = imf_route_current();
    if (r == NULL) {
        *out_why = "routing not configured";
        return NULL;
    }
    enum imf_route_match m = IMF_ROUTE_NONE;
    const char *name = imf_route_lookup(r, user, user_len, &m);
    const struct imf_pool_config *out = NULL;
    if (name == NULL)
        *out_why = "user not routed";
    else if ((out = imf_config_pool(s->cfg, name)) == NULL)
        *out_why = "no such pool"; /* the map is newer than the session's config */
    if (imf_log_enabled(IMF_LOG_DEBUG)) {
        /* The user's bytes go through the key=value quoting (no control
         * byte reaches the log as is). */
        char shown[IMF_ROUTE_USER_MAX + 1];
        size_t n = user_len < IMF_ROUTE_USER_MAX ? user_len : IMF_ROUTE_USER_MAX;
        memcpy(shown, user, n);
        shown[n] = '\0';
        imf_log_kv(IMF_LOG_DEBUG, "route", "lookup", "user", shown, "match",
                   imf_route_match_names[m], "pool", name != NULL ? name : "-", NULL);
    }
    imf_route_unref(r);
    return out;
}

void imf_sess_lf_free(struct imf_session *s)
{
    if (s->lf == NULL)
        return;
    imf_lobby_cleanup(&s->lf->lb);
    imf_bc_cleanup(&s->lf->bc);
    OPENSSL_cleanse(s->lf, sizeof(*s->lf));
    free(s->lf);
    s->lf = NULL;
}

void imf_sess_lf_start(struct imf_session *s)
{
    struct imf_lf *lf = calloc(1, sizeof(*lf));
    if (lf == NULL) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    s->lf = lf;
    lf->lp.starttls_listener = s->lcfg->mode == IMF_LISTEN_STARTTLS;
    lf->lp.require_tls = s->lcfg->require_tls;
    imf_lobby_init(&lf->lb, &lf->lp, s->ssl != NULL);
    char greeting[256];
    size_t n = imf_lobby_greeting(&lf->lb, greeting, sizeof(greeting));
    imf_sess_to_client(s, greeting, n);
    imf_sess_set_state(s, SESS_RELAY);
    imf_sess_arm_inactivity_timer(s);
    imf_sess_pump(s);
}

bool imf_sess_lf_tls_up(struct imf_session *s)
{
    if (s->lf != NULL) {
        /* STARTTLS in the lobby: the lobby goes on under TLS. */
        imf_lobby_tls_started(&s->lf->lb);
        imf_sess_set_state(s, SESS_RELAY);
        imf_sess_arm_inactivity_timer(s);
        return true;
    }
    if (s->backend.up || !imf_route_configured(s->cfg))
        return false;
    imf_sess_lf_start(s);
    return true;
}

/* Sends the client one of our answers: a tagged status line, rewritten by
 * the capability rules (a backend's [CAPABILITY ...] code in it). */
static void answer_tagged(struct imf_session *s, const char *status, const char *text)
{
    char line[IMF_TAG_MAX + IMF_BC_TEXT + 16];
    int n = snprintf(line, sizeof(line), "%s %s %s\r\n", s->lf->tag, status, text);
    if (n <= 0)
        return;
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    struct imf_cap_policy pol;
    imf_gate_cap_policy(&s->gate, &pol);
    uint8_t out[sizeof(line) + IMF_CAP_GROWTH];
    size_t out_len;
    if (imf_capability_rewrite((const uint8_t *)line, len, &pol, out, sizeof(out), &out_len))
        imf_sess_to_client(s, out, out_len);
    else
        imf_sess_to_client(s, line, len);
}

/* Ends the client's login attempt that never reached a backend's verdict
 * (r: FAILED counts towards throttling, REFUSED does not) with answer. */
static void login_refused(struct imf_session *s, enum imf_login_result r, const char *answer,
                          const char *why)
{
    imf_log_kv(IMF_LOG_WARN, "login", "login-first login not sent", "client", s->peer, "tag",
               s->lf->tag, "reason", why, "answer", answer, NULL);
    imf_gate_lf_login_end(&s->gate, r, false, false);
    char line[IMF_TAG_MAX + 128];
    int n = snprintf(line, sizeof(line), "%s %s\r\n", s->lf->tag, answer);
    imf_sess_login_finished(s, (const uint8_t *)line, n > 0 ? (size_t)n : 0);
    imf_lobby_login_done(&s->lf->lb);
    set_phase(s, LF_LOBBY);
    if (n > 0 && !imf_sess_login_hold(s, (const uint8_t *)line, (size_t)n))
        imf_sess_to_client(s, line, (size_t)n);
}

static void flush_bc(struct imf_session *s)
{
    const uint8_t *p;
    size_t n = imf_bc_output(&s->lf->bc, &p);
    if (n > 0) {
        imf_sess_to_backend(s, p, n);
        imf_bc_consumed(&s->lf->bc, n);
    }
}

static void on_backend_closed(uv_handle_t *h)
{
    struct imf_session *s = h->data;
    s->open_handles--;
    s->backend.inited = false;
    s->backend.closing = false;
    s->backend.eof = false;
    s->backend.blocked = false;
    s->backend.wlen = 0;
    imf_chain_clear(&s->backend.rx);
    imf_chain_clear(&s->backend.tx);
    imf_btls_free(s); /* a TLS pool's engine: the next backend may not be one */
    if (s->open_handles == 0) {
        imf_sess_free(s);
        return;
    }
    if (s->lf != NULL && s->lf->reconnect && s->state == SESS_RELAY) {
        s->lf->reconnect = false;
        imf_sess_connect_backend(s);
    }
}

/* The backend is of no more use (BYE, a protocol error, EOF): close it,
 * keep the session. A login in progress is answered NO [UNAVAILABLE]. */
void imf_sess_lf_drop_backend(struct imf_session *s, const char *why)
{
    struct imf_lf *lf = s->lf;
    imf_log_kv(IMF_LOG_WARN, "backend", "login-first backend closed", "client", s->peer, "backend",
               imf_sess_backend_label(s), "phase", lf_phase_names[lf->phase], "reason", why, NULL);
    imf_sess_release_backend(s);
    imf_bc_cleanup(&lf->bc);
    lf->bc_live = false;
    if (s->backend.inited && !s->backend.closing) {
        imf_conn_want_read(&s->backend, false, NULL, NULL);
        s->backend.up = false;
        s->backend.reading = false;
        s->backend.closing = true;
        uv_close((uv_handle_t *)&s->backend.tcp, on_backend_closed);
    }
    s->backend.up = false;
    s->backend_name = NULL;
    if (lf->phase != LF_LOBBY)
        login_refused(s, IMF_LOGIN_REFUSED, UNAVAILABLE, why);
}

void imf_sess_lf_backend_failed(struct imf_session *s, const char *why)
{
    /* Every server was tried, or the queue timed out: no backend handle
     * is open. The client may try again. */
    imf_sess_set_state(s, SESS_RELAY);
    imf_sess_arm_inactivity_timer(s);
    login_refused(s, IMF_LOGIN_REFUSED, UNAVAILABLE, why);
    imf_sess_pump(s);
}

static void send_login(struct imf_session *s)
{
    struct imf_lf *lf = s->lf;
    struct imf_lobby_creds c;
    imf_lobby_creds(&lf->lb, &c);
    int rc =
        imf_bc_login(&lf->bc, (const char *)c.user, c.user_len, (const char *)c.pass, c.pass_len);
    imf_lobby_login_done(&lf->lb); /* the password is in bc now, or nowhere */
    if (rc == -EINVAL || rc == -E2BIG) {
        login_refused(s, IMF_LOGIN_FAILED, AUTH_FAILED, "credentials no IMAP form can carry");
        return;
    }
    if (rc != 0) {
        login_refused(s, IMF_LOGIN_REFUSED, UNAVAILABLE,
                      rc == -ENOTSUP ? "the backend takes neither LOGIN nor AUTHENTICATE PLAIN"
                                     : "the backend is not ready");
        return;
    }
    flush_bc(s);
    set_phase(s, LF_LOGIN);
}

/* The client's LOGIN or AUTHENTICATE is complete (lobby.h). */
static void begin_login(struct imf_session *s)
{
    struct imf_lf *lf = s->lf;
    struct imf_lobby_creds c;
    imf_lobby_creds(&lf->lb, &c);
    snprintf(lf->tag, sizeof(lf->tag), "%s", c.tag);
    s->lf_routed = false; /* until the route answers */
    if (imf_gate_lf_login_begin(&s->gate, c.tag, c.mech, c.user, c.user_len, c.pass, c.pass_len)) {
        login_refused(s, IMF_LOGIN_THROTTLED, AUTH_FAILED, "throttled");
        return;
    }
    const char *why = NULL;
    const struct imf_pool_config *pool = pool_for(s, (const char *)c.user, c.user_len, &why);
    s->lf_routed = pool != NULL;
    if (pool == NULL) {
        /* The same answer as a wrong password: which users exist is
         * nobody's business; it counts as a failure for throttling. */
        login_refused(s, strcmp(why, "user not routed") == 0 ? IMF_LOGIN_FAILED : IMF_LOGIN_REFUSED,
                      strcmp(why, "user not routed") == 0 ? AUTH_FAILED : UNAVAILABLE, why);
        return;
    }
    imf_log_kv(IMF_LOG_INFO, "login", "login-first route", "client", s->peer, "user",
               imf_gate_login(&s->gate)->user, "pool", pool->name, NULL);
    if (pool == s->pool && lf->bc_live && imf_bc_state(&lf->bc) == IMF_BC_S_READY) {
        send_login(s); /* a retry on the greeted connection */
        return;
    }
    if (pool != s->pool) {
        if (s->backend.inited && !s->backend.closing) {
            /* Greeted by the previous user's pool: not this one's. */
            enum lf_phase was = lf->phase;
            lf->phase = LF_LOBBY; /* nothing to answer for it */
            imf_sess_lf_drop_backend(s, "a retry routed to another pool");
            lf->phase = was;
        }
        s->pool = pool; /* slots of the old pool were given back above */
        imf_sess_gate_pool_params(s);
    }
    set_phase(s, LF_CONNECTING);
    if (s->backend.inited) {
        lf->reconnect = true; /* the old handle is still closing */
        return;
    }
    imf_sess_connect_backend(s);
}

/* The backend's greeting came through bc. */
static void greeted(struct imf_session *s)
{
    struct imf_lf *lf = s->lf;
    s->awaiting_greeting = false;
    char line[IMF_BC_TEXT + 2];
    int n = snprintf(line, sizeof(line), "%s\r\n", imf_bc_greeting(&lf->bc));
    if (imf_bc_preauth(&lf->bc) ||
        imf_gate_lf_greeting(&s->gate, (const uint8_t *)line, n > 0 ? (size_t)n : 0)) {
        imf_sess_lf_drop_backend(s, "the backend greeted with PREAUTH");
        return;
    }
    enum imf_gate_profile pr = imf_gate_profile(&s->gate);
    if (s->pool->quirks == IMF_QUIRKS_AUTO &&
        imf_backend_note_profile(s->pool, s->server_index, (int)pr))
        imf_log_kv(IMF_LOG_INFO, "backend", "server profile", "backend", imf_sess_backend_label(s),
                   "profile", imf_gate_profile_names[pr], NULL);
    lf->lplus = imf_bc_has_cap(&lf->bc, "LITERAL+");
    lf->lminus = imf_bc_has_cap(&lf->bc, "LITERAL-");
    if (s->pool->forward_client_ip == IMF_FORWARD_IP_ID) {
        char id[256], ip[INET6_ADDRSTRLEN];
        int port = imf_sess_addr_parts(&s->peer_addr, ip, sizeof(ip));
        int k = snprintf(id, sizeof(id),
                         IMF_GATE_ID_TAG
                         " ID (\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%d\")\r\n",
                         ip, port);
        if (k > 0 && (size_t)k < sizeof(id)) {
            imf_sess_to_backend(s, id, (size_t)k);
            imf_framer_init(&s->rfr, IMF_FRAMER_RESPONSES, 0, 0);
            lf->id_len = 0;
            set_phase(s, LF_ID);
            return;
        }
    }
    send_login(s);
}

/* While the ID's answer is awaited: reads whole responses (their literals
 * included) until its tagged one. True once it came. */
static bool read_id_answer(struct imf_session *s)
{
    struct imf_lf *lf = s->lf;
    const size_t tag_len = strlen(IMF_GATE_ID_TAG " ");
    for (;;) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(&s->backend.rx, &avail);
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&s->rfr, p, avail, &ev);
        if (ev.kind == IMF_EV_NEED_MORE)
            return false;
        if (ev.kind == IMF_EV_TEXT) {
            size_t room = sizeof(lf->id_line) - lf->id_len;
            memcpy(lf->id_line + lf->id_len, p, n < room ? n : room);
            lf->id_len += n < room ? n : room;
        } else if (ev.kind == IMF_EV_LINE_END) {
            bool ours = ev.first_line && lf->id_len >= tag_len + 2 &&
                        memcmp(lf->id_line, IMF_GATE_ID_TAG " ", tag_len) == 0;
            bool ok = ours && strncasecmp(lf->id_line + tag_len, "OK", 2) == 0;
            lf->id_len = 0;
            if (ours) {
                if (!ok)
                    imf_log_kv(IMF_LOG_WARN, "backend", "ID with the client address refused",
                               "client", s->peer, "backend", imf_sess_backend_label(s), NULL);
                return true;
            }
        }
        imf_chain_consume(&s->backend.rx, n);
    }
}

/* The backend accepted the login: the session becomes a relaying one. */
static void logged_in(struct imf_session *s)
{
    struct imf_lf *lf = s->lf;
    bool lplus = lf->lplus, lminus = lf->lminus;
    if (imf_bc_caps(&lf->bc) & IMF_BC_CAP_KNOWN) {
        lplus = imf_bc_has_cap(&lf->bc, "LITERAL+");
        lminus = imf_bc_has_cap(&lf->bc, "LITERAL-");
    }
    imf_gate_lf_login_end(&s->gate, IMF_LOGIN_OK, lplus, lminus);
    const char *text = imf_bc_text(&lf->bc);
    answer_tagged(s, "OK", text[0] != '\0' ? text : "Logged in");
    imf_sess_login_finished(s, NULL, 0);
    imf_framer_init(&s->rfr, IMF_FRAMER_RESPONSES, 0, 0);
    imf_sess_lf_free(s);
    imf_sess_arm_inactivity_timer(s); /* idle_timeout from now on */
}

static void login_failed(struct imf_session *s, enum imf_bc_result r)
{
    struct imf_lf *lf = s->lf;
    imf_gate_lf_login_end(&s->gate, IMF_LOGIN_FAILED, false, false);
    const char *text = imf_bc_text(&lf->bc);
    if (text[0] == '\0')
        text = "[AUTHENTICATIONFAILED] Authentication failed";
    char line[IMF_TAG_MAX + IMF_BC_TEXT + 16];
    int n = snprintf(line, sizeof(line), "%s NO %s\r\n", lf->tag, text);
    size_t len = n <= 0 ? 0 : (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    if (r == IMF_BC_BAD)
        imf_log_kv(IMF_LOG_WARN, "backend", "login-first login answered BAD", "client", s->peer,
                   "backend", imf_sess_backend_label(s), NULL);
    imf_sess_login_finished(s, (const uint8_t *)line, len);
    imf_debug("session",
              "client=%s backend connection kept for a retry (greeted, logged in to "
              "nobody)",
              s->peer);
    set_phase(s, LF_LOBBY);
    if (!imf_sess_login_hold(s, (const uint8_t *)line, len))
        answer_tagged(s, "NO", text);
}

/* Reads what the backend sent through bc and acts on its results. */
static void backend_side(struct imf_session *s)
{
    struct imf_lf *lf = s->lf;
    if (lf->phase == LF_CONNECTING && s->backend.up && !s->backend.closing) {
        imf_bc_init(&lf->bc, "imf");
        lf->bc_live = true;
        set_phase(s, LF_GREETING);
    }
    /* Bounded: each round consumes input or ends in a result that changes
     * the phase; a round without either stops. */
    while (s->lf != NULL && lf->bc_live && s->state == SESS_RELAY) {
        if (lf->phase == LF_ID) {
            if (!read_id_answer(s))
                return;
            send_login(s);
            continue;
        }
        size_t avail, used = 0;
        const uint8_t *p = imf_chain_peek(&s->backend.rx, &avail);
        enum imf_bc_result r;
        if (avail == 0) {
            if (!s->backend.eof)
                return;
            r = imf_bc_eof(&lf->bc);
        } else {
            r = imf_bc_feed(&lf->bc, p, avail, &used);
            imf_chain_consume(&s->backend.rx, used);
        }
        flush_bc(s);
        switch (r) {
        case IMF_BC_NONE:
            continue;
        case IMF_BC_READY:
            greeted(s);
            continue;
        case IMF_BC_OK:
            if (lf->phase != LF_LOGIN) {
                imf_sess_lf_drop_backend(s, "an answer to nothing asked");
                return;
            }
            logged_in(s);
            return;
        case IMF_BC_NO:
        case IMF_BC_BAD:
            if (lf->phase != LF_LOGIN) {
                imf_sess_lf_drop_backend(s, "an answer to nothing asked");
                return;
            }
            login_failed(s, r);
            continue;
        case IMF_BC_BYE:
            imf_sess_lf_drop_backend(s, "the backend said BYE");
            return;
        default:
            imf_sess_lf_drop_backend(s, imf_bc_error(&lf->bc) != NULL ? imf_bc_error(&lf->bc)
                                                                      : "protocol error");
            return;
        }
    }
}

void imf_sess_lf_pump(struct imf_session *s)
{
    backend_side(s);
    if (s->lf != NULL && s->state == SESS_RELAY)
        imf_sess_pump_upstream(s); /* decrypts and ends in imf_sess_lf_commands */
}

static int line_add(struct imf_session *s, const uint8_t *p, size_t n)
{
    if (n > s->cline_cap - s->cline_len) {
        size_t ncap = s->cline_cap != 0 ? s->cline_cap : 256;
        while (ncap - s->cline_len < n)
            ncap *= 2;
        uint8_t *nb = malloc(ncap);
        if (nb == NULL)
            return UV_ENOMEM;
        if (s->cline != NULL) {
            memcpy(nb, s->cline, s->cline_len);
            OPENSSL_cleanse(s->cline, s->cline_cap);
            free(s->cline);
        }
        s->cline = nb;
        s->cline_cap = ncap;
    }
    memcpy(s->cline + s->cline_len, p, n);
    s->cline_len += n;
    return 0;
}

/* Applies the lobby's decision; false when the session stops reading. */
static bool apply(struct imf_session *s, const struct imf_lobby_decision *d)
{
    if (d->log != NULL)
        imf_log_kv(IMF_LOG_INFO, "session", "command refused", "client", s->peer, "answer", d->log,
                   NULL);
    if (d->actions & IMF_LOBBY_SKIP_LITERAL)
        imf_framer_skip_literal(&s->cfr);
    if (d->actions & IMF_LOBBY_BYE) {
        char text[sizeof(d->answer)];
        size_t n = d->answer_len > 8 ? d->answer_len - 8 : 0; /* "* BYE " ... "\r\n" */
        memcpy(text, d->answer + 6, n);
        text[n] = '\0';
        imf_sess_bye(s, strstr(text, "TOOBIG") ? IMF_CLOSE_LITERAL_TOO_BIG : IMF_CLOSE_CLIENT_ERROR,
                     text);
        return false;
    }
    if (d->actions & IMF_LOBBY_ANSWER)
        imf_sess_to_client(s, d->answer, d->answer_len);
    if (d->actions & IMF_LOBBY_CLOSE) {
        imf_sess_close(s, IMF_CLOSE_LOGOUT, true);
        return false;
    }
    if (d->actions & IMF_LOBBY_STARTTLS) {
        imf_sess_start_tls(s);
        return false;
    }
    if (d->actions & IMF_LOBBY_LOGIN) {
        begin_login(s);
        return s->state == SESS_RELAY;
    }
    return true;
}

void imf_sess_lf_commands(struct imf_session *s)
{
    struct imf_chain *in = s->ssl != NULL ? &s->c_plain : &s->client.rx;
    /* Bounded by what is buffered: every round consumes or returns. */
    while (s->lf != NULL && s->state == SESS_RELAY && !imf_lobby_busy(&s->lf->lb) &&
           s->lf->phase == LF_LOBBY && s->login_held == NULL && s->p_tx.bytes < s->high) {
        size_t avail;
        const uint8_t *p = imf_chain_peek(in, &avail);
        struct imf_framer_ev ev;
        size_t n = imf_framer_next(&s->cfr, p, avail, &ev);
        switch (ev.kind) {
        case IMF_EV_NEED_MORE:
            return;
        case IMF_EV_TEXT:
            if (!imf_lobby_discarding(&s->lf->lb) && line_add(s, p, n) != 0) {
                imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
                return;
            }
            break;
        case IMF_EV_LINE_END: {
            struct imf_lobby_decision d;
            imf_lobby_line(&s->lf->lb, s->cline, s->cline_len, &ev, &d);
            /* A login's line may hold its password. */
            if (s->cline != NULL)
                OPENSSL_cleanse(s->cline, s->cline_cap);
            s->cline_len = 0;
            imf_chain_consume(in, n);
            if (!apply(s, &d))
                return;
            continue;
        }
        case IMF_EV_LITERAL:
            imf_lobby_literal(&s->lf->lb, p, n);
            break;
        case IMF_EV_LITERAL_END:
            break;
        case IMF_EV_ERROR:
            imf_sess_client_framing_error(s, &ev);
            return;
        default:
            return;
        }
        imf_chain_consume(in, n);
    }
}
