/* keeper: the IDLE keeper's timer (see include/imapfront/session_int.h). */

#include "imapfront/session_int.h"

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
    if (s->pool->idle_mode == IMF_IDLE_POLL || s->pool->idle_refresh_ms != 0)
        next = s->next_backend_ms < next ? s->next_backend_ms : next;
    if (next == UINT64_MAX) {
        if (s->idle_timer_inited)
            uv_timer_stop(s->idle_timer);
        return;
    }
    if (imf_sess_lazy(s, UV_TIMER, (void **)&s->idle_timer, &s->idle_timer_inited) == NULL) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    uv_timer_start(s->idle_timer, on_idle_timer, next > now ? next - now : 0, 0);
}

static uint64_t idle_backend_interval(const struct imf_session *s)
{
    return s->pool->idle_mode == IMF_IDLE_POLL ? s->pool->poll_interval_ms
                                               : s->pool->idle_refresh_ms;
}

void imf_sess_idle_begin(struct imf_session *s)
{
    uint64_t now = uv_now(&s->worker->loop);
    s->next_keepalive_ms = now + s->cfg->idle_keepalive_ms;
    uint64_t every = idle_backend_interval(s);
    s->next_backend_ms = every != 0 ? now + every : UINT64_MAX;
    idle_arm(s);
}

void imf_sess_idle_end(struct imf_session *s)
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
        if (imf_sess_response_boundary(s) && s->l_tx.bytes == 0)
            imf_sess_local_answer(s, "* OK Still here\r\n", 17);
        s->next_keepalive_ms = now + s->cfg->idle_keepalive_ms;
    }
    if (now >= s->next_backend_ms) {
        char line[64];
        bool mid_line = s->cline_len > 0 || !imf_framer_at_message_start(&s->cfr);
        size_t n = s->pool->idle_mode == IMF_IDLE_POLL
                       ? imf_gate_idle_poll(&s->gate, line, sizeof(line))
                       : imf_gate_idle_refresh(&s->gate, mid_line, line, sizeof(line));
        if (n > 0)
            imf_sess_to_backend(s, line, n);
        s->next_backend_ms = now + idle_backend_interval(s);
    }
    idle_arm(s);
    imf_sess_pump(s);
}
