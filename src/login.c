/* login: what a session does with login attempts (see
 * include/imapfront/session_int.h): asks the throttle table before a
 * password goes to the backend, writes one log line per attempt, holds a
 * throttled failure's answer for its delay. */
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/mem.h>

#include "imapfront/log.h"
#include "imapfront/netaddr.h"
#include "imapfront/session_int.h"
#include "imapfront/store.h"
#include "imapfront/throttle.h"

const char *const imf_stats_mech_names[IMF_MECH_COUNT] = {"login", "plain", "other"};
static_assert(IMF_STATS_LOGIN_RESULTS == IMF_LOGIN_RESULT_COUNT, "login results");

/* Monotonic milliseconds, the same clock in every worker. */
static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static bool throttled(const struct imf_session *s)
{
    return s->cfg->login_throttle &&
           !imf_cidr_match(s->cfg->login_trusted, s->cfg->login_trusted_len, &s->peer_addr.sa);
}

bool imf_sess_login_refused(void *ctx, const struct imf_gate_login *l)
{
    struct imf_session *s = ctx;
    s->login_sent_ms = uv_now(&s->worker->loop);
    s->login_delay_ms = 0;
    if (!throttled(s))
        return false;
    struct imf_throttle_params p;
    imf_throttle_params_from(s->cfg, &p);
    uint64_t delay;
    if (imf_throttle_begin(&p, &s->peer_addr.sa, l->user, strlen(l->user), now_ms(), &delay) ==
        IMF_THROTTLE_BAN)
        return true;
    /* The verdict is given; what the shared store knows arrives later
     * and counts from the next attempt on (see store.h). */
    uint8_t keys[3][IMF_THROTTLE_KEY_LEN];
    int n = imf_throttle_keys(&p, &s->peer_addr.sa, l->user, strlen(l->user), keys);
    imf_store_read(s->worker->store, (const uint8_t(*)[IMF_THROTTLE_KEY_LEN])keys, n);
    s->login_pending = true;
    s->login_delay_ms = delay;
    return false;
}

/* Ends the attempt in the table. */
static void throttle_end(struct imf_session *s, const struct imf_gate_login *l, bool ok,
                         bool aborted)
{
    if (!s->login_pending)
        return;
    s->login_pending = false;
    struct imf_throttle_params p;
    imf_throttle_params_from(s->cfg, &p);
    bool counted = imf_throttle_end(&p, &s->peer_addr.sa, l->user, strlen(l->user), l->secret_hash,
                                    ok, aborted, now_ms());
    if (!counted && !ok)
        return;
    uint8_t keys[3][IMF_THROTTLE_KEY_LEN];
    int n = imf_throttle_keys(&p, &s->peer_addr.sa, l->user, strlen(l->user), keys);
    if (counted)
        imf_store_failed(s->worker->store, (const uint8_t(*)[IMF_THROTTLE_KEY_LEN])keys, n);
    else /* the user's success clears its records, never the address's */
        imf_store_cleared(s->worker->store, (const uint8_t(*)[IMF_THROTTLE_KEY_LEN])keys + 1,
                          n - 1);
}

/* The session ends with an attempt unanswered: the backend has its
 * LOGIN (and counts it towards its own lockout), so it counts as a
 * failure here too; else hanging up mid-login would be a free guess. */
void imf_sess_login_abort(struct imf_session *s)
{
    const struct imf_gate_login *l = imf_gate_login(&s->gate);
    if (l != NULL)
        throttle_end(s, l, false, false);
}

static enum imf_stats_mech mech_class(const char *mech)
{
    if (strcmp(mech, "LOGIN") == 0)
        return IMF_MECH_LOGIN;
    if (strcmp(mech, "PLAIN") == 0)
        return IMF_MECH_PLAIN;
    return IMF_MECH_OTHER;
}

/* The text of a tagged response after its status word, without the line
 * ending, into out. */
static void response_text(const uint8_t *line, size_t len, char *out, size_t cap)
{
    size_t i = 0, spaces = 0;
    while (i < len && spaces < 2) {
        if (line[i] == ' ')
            spaces++;
        i++;
    }
    size_t n = 0;
    while (i < len && line[i] != '\r' && line[i] != '\n' && n + 1 < cap)
        out[n++] = (char)line[i++];
    out[n] = '\0';
}

void imf_sess_login_finished(struct imf_session *s, const uint8_t *line, size_t len)
{
    const struct imf_gate_login *l = imf_gate_login(&s->gate);
    if (l == NULL || !l->done)
        return;
    enum imf_login_result r = (enum imf_login_result)l->result;
    throttle_end(s, l, r == IMF_LOGIN_OK, r == IMF_LOGIN_THROTTLED || r == IMF_LOGIN_REFUSED);
    imf_stat_add(&s->worker->stats.logins[r][mech_class(l->mech)], 1);
    char ms[24], delay[24], text[200] = "";
    snprintf(ms, sizeof(ms), "%" PRIu64, uv_now(&s->worker->loop) - s->login_sent_ms);
    snprintf(delay, sizeof(delay), "%" PRIu64, r == IMF_LOGIN_FAILED ? s->login_delay_ms : 0);
    if (line != NULL && r != IMF_LOGIN_OK)
        response_text(line, len, text, sizeof(text));
    bool asked = r == IMF_LOGIN_OK || r == IMF_LOGIN_FAILED;
    imf_log_kv(r == IMF_LOGIN_OK ? IMF_LOG_INFO : IMF_LOG_WARN, "login",
               r == IMF_LOGIN_OK ? "login ok" : "login failed", "result", imf_login_result_names[r],
               "user", l->user[0] != '\0' ? l->user : "-", "authz",
               l->authz[0] != '\0' ? l->authz : "-", "mech", l->mech, "client", s->peer, "tls",
               s->tls_version ? s->tls_version : "-", "backend",
               asked ? imf_sess_backend_label(s) : "-", "backend_ms", asked ? ms : "-", "delay_ms",
               delay, "response", text[0] != '\0' ? text : "-",
               /* login-first sessions only: the pool the route chose */
               s->lf != NULL ? "pool" : NULL, s->lf_routed ? s->pool->name : "-", NULL);
    if (r == IMF_LOGIN_OK && s->user == NULL)
        s->user = strdup(l->user[0] != '\0' ? l->user : "-");
    if (r != IMF_LOGIN_FAILED)
        s->login_delay_ms = 0;
    else if (s->login_delay_ms > 0)
        imf_stat_add(&s->worker->stats.logins_delayed, 1);
    imf_gate_login_clear(&s->gate);
}

static void on_login_timer(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->login_held == NULL || s->state >= SESS_CLOSING)
        return;
    imf_sess_to_client(s, s->login_held, s->login_held_len);
    OPENSSL_cleanse(s->login_held, s->login_held_len);
    free(s->login_held);
    s->login_held = NULL;
    s->login_held_len = 0;
    imf_sess_flush_local(s);
    imf_sess_pump(s);
}

bool imf_sess_login_hold(struct imf_session *s, const uint8_t *line, size_t len)
{
    uint64_t delay = s->login_delay_ms;
    s->login_delay_ms = 0;
    if (delay == 0)
        return false;
    if (imf_sess_lazy(s, UV_TIMER, (void **)&s->login_timer, &s->login_timer_inited) == NULL ||
        (s->login_held = malloc(len)) == NULL)
        return false; /* answered at once rather than not at all */
    memcpy(s->login_held, line, len);
    s->login_held_len = len;
    uv_timer_start(s->login_timer, on_login_timer, delay, 0);
    return true;
}
