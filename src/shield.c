/* shield: literal_crlf_split's write scheduling (see include/imapfront/session_int.h). */

#include "imapfront/session_int.h"
#include "imapfront/sockq.h"

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
    imf_sess_pump(s);
}

/* True when the split is complete; otherwise arms a short poll. */
bool imf_sess_split_drained(struct imf_session *s)
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
    uint64_t settle = s->pool->literal_crlf_split_delay_ms;
    bool settled = q.unsent == 0 && read_up && waited >= settle;
    if (!settled && waited < settle + SPLIT_WAIT_MAX_MS) {
        if (imf_sess_lazy(s, UV_TIMER, (void **)&s->split_timer, &s->split_timer_inited) == NULL) {
            imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
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
