/* upstream: connecting to a backend server, failover and passive health (see
 * include/imapfront/session_int.h). */

#include "imapfront/backend.h"
#include "imapfront/log.h"
#include "imapfront/session_int.h"
#include "imapfront/sockq.h"

static void try_next_backend(struct imf_session *s);
static void on_connect_timeout(uv_timer_t *t);
static void on_backend_connected(uv_connect_t *req, int status);

/* Every server was tried and failed. */
static void backend_unavailable(struct imf_session *s)
{
    imf_log_kv(IMF_LOG_WARN, "backend", "no backend server reachable", "client", s->peer, NULL);
    s->backend_name = NULL;
    imf_sess_bye(s, IMF_CLOSE_BACKEND_UNAVAILABLE, "[UNAVAILABLE] Backend server unavailable");
}

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
        imf_sess_free(s);
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
    imf_sess_set_state(s, SESS_CONNECTING);
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
            imf_sess_bye(s, IMF_CLOSE_NO_RESOURCES,
                         "[UNAVAILABLE] Proxy out of resources, try again later");
            return;
        }
        backend_failed(s, uv_strerror(rc));
        return;
    }
    req->data = s;
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_connect_timeout, s->cfg->connect_timeout_ms, 0);
}

void imf_sess_connect_backend(struct imf_session *s)
{
    free(s->plan);
    s->plan = malloc(s->cfg->servers_len > 0 ? s->cfg->servers_len : 1);
    if (s->plan == NULL) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    s->plan_len = (uint8_t)imf_backend_plan(s->cfg, s->plan);
    s->plan_pos = 0;
    try_next_backend(s);
}

/* Sends the backend an ID command naming the real client, the way Dovecot
 * reads it (x-originating-ip/-port, honoured from its trusted networks);
 * the gate swallows its answer. */
static void send_client_id(struct imf_session *s)
{
    char line[256], ip[INET6_ADDRSTRLEN];
    int port = imf_sess_addr_parts(&s->peer_addr, ip, sizeof(ip));
    size_t n = imf_gate_own_id(&s->gate, ip, port, line, sizeof(line));
    if (n > 0)
        imf_sess_to_backend(s, line, n);
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
    imf_sess_set_state(s, SESS_RELAY);
    imf_sess_arm_inactivity_timer(s);
    imf_sess_pump(s);
}
