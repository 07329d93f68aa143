/* upstream: admission control, connecting to a backend server, failover
 * and passive health (see include/imapfront/session_int.h).
 *
 * A session that wants a backend takes a slot of a server (a backend
 * connection under max_sessions and a connect under max_connecting, a
 * token while the server warms up: backend.c) or waits in its worker's
 * queue, oldest first, holding no backend socket. Slots are counted across
 * workers; each worker admits its queue's head only when no other worker's
 * head has waited longer, so the oldest waiter of the process goes first
 * (a freed slot is seen at once by its own worker, by the others within
 * QUEUE_POLL_MS). A connect that times out is retried, the next server or
 * the same again, until queue_timeout.
 *
 * A server written as a host name is resolved on every connect, on the
 * worker's loop (uv_getaddrinfo: the lookup runs in libuv's thread pool),
 * and its addresses are tried in order, all within one connect_timeout;
 * a name that does not resolve, or none of whose addresses answers, is a
 * failed connect of that server. */
#include <inttypes.h>
#include <stdio.h>

#include "imapfront/backend.h"
#include "imapfront/log.h"
#include "imapfront/session_int.h"
#include "imapfront/sockq.h"

static void next_server(struct imf_session *s);
static void want_backend(struct imf_session *s);
static void on_connect_timeout(uv_timer_t *t);
static void on_backend_connected(uv_connect_t *req, int status);
static void connect_to(struct imf_session *s, const struct sockaddr *sa);
static const struct sockaddr *take_address(struct imf_session *s);
static void backend_failed(struct imf_session *s, const char *why, enum imf_connect_result r);

/* A lookup in flight. Its session waits for it before being freed (it is
 * counted in open_handles); a lookup the session no longer wants (the
 * connect timed out, the session closed) is abandoned and its answer
 * dropped. */
struct sess_resolve {
    uv_getaddrinfo_t req;
    struct imf_session *s;
    bool abandoned;
};

/* Drops the lookup and the addresses of the current connect. */
static void forget_addresses(struct imf_session *s)
{
    if (s->resolving != NULL) {
        s->resolving->abandoned = true;
        uv_cancel((uv_req_t *)&s->resolving->req); /* may fail: it then runs to the end */
        s->resolving = NULL;
    }
    if (s->addrs != NULL)
        uv_freeaddrinfo(s->addrs);
    s->addrs = s->addr_next = NULL;
}

/* How often a worker with waiting sessions looks for slots freed by other
 * workers (a slot freed by its own sessions is seen at once). */
#define QUEUE_POLL_MS 10

/* Every server was tried and refused (or is gone). */
static void backend_unavailable(struct imf_session *s)
{
    imf_log_kv(IMF_LOG_WARN, "backend", "no backend server reachable", "client", s->peer, NULL);
    s->backend_name = NULL;
    if (s->lf != NULL) {
        imf_sess_lf_backend_failed(s, "no backend server reachable");
        return;
    }
    imf_sess_bye(s, IMF_CLOSE_BACKEND_UNAVAILABLE, "[UNAVAILABLE] Backend server unavailable");
}

/* queue_timeout passed while the servers were slow or full; counted
 * against pool->servers[index], the one it waited for or tried last. */
static void backend_busy(struct imf_session *s, size_t index)
{
    char ms[24];
    uint64_t waited = imf_clock_ms() - s->wait_since_ms;
    snprintf(ms, sizeof(ms), "%" PRIu64, waited);
    imf_backend_queue_done(s->pool, index, waited, true);
    imf_log_kv(IMF_LOG_WARN, "backend", "gave up waiting for a busy backend", "client", s->peer,
               "backend", s->pool->servers[index].text, "waited_ms", ms, NULL);
    if (s->lf != NULL) {
        s->backend_name = NULL;
        imf_sess_lf_backend_failed(s, "gave up waiting for a busy backend");
        return;
    }
    imf_sess_bye(s, IMF_CLOSE_BACKEND_BUSY, "[UNAVAILABLE] Backend server busy, try again later");
}

static uint64_t deadline_ms(const struct imf_session *s)
{
    return s->wait_since_ms + s->pool->queue_timeout_ms;
}

static void queue_publish(struct imf_worker *w)
{
    imf_backend_queue_head(w->id, w->queue_head != NULL ? w->queue_head->wait_since_ms : 0);
}

/* The queue is kept oldest wait first: a session back from a failed
 * connect goes before those that asked after it. */
static void enqueue(struct imf_session *s)
{
    struct imf_worker *w = s->worker;
    struct imf_session *after = w->queue_tail;
    while (after != NULL && after->wait_since_ms > s->wait_since_ms)
        after = after->qprev;
    s->qprev = after;
    s->qnext = after != NULL ? after->qnext : w->queue_head;
    if (s->qnext != NULL)
        s->qnext->qprev = s;
    else
        w->queue_tail = s;
    if (after != NULL)
        after->qnext = s;
    else
        w->queue_head = s;
    s->queued = true;
    imf_backend_queue_count(s->pool, s->queue_server, 1);
    queue_publish(w);
}

static void dequeue(struct imf_session *s)
{
    struct imf_worker *w = s->worker;
    if (s->qprev != NULL)
        s->qprev->qnext = s->qnext;
    else
        w->queue_head = s->qnext;
    if (s->qnext != NULL)
        s->qnext->qprev = s->qprev;
    else
        w->queue_tail = s->qprev;
    s->qprev = s->qnext = NULL;
    s->queued = false;
    imf_backend_queue_count(s->pool, s->queue_server, -1);
    queue_publish(w);
}

static void on_admit_timer(uv_timer_t *t);

/* Retries the head of w's queue after delay_ms. */
static void kick(struct imf_worker *w, uint64_t delay_ms)
{
    if (w->queue_head == NULL)
        return;
    uint64_t due = uv_now(&w->loop) + delay_ms;
    if (uv_is_active((uv_handle_t *)&w->admit_timer) &&
        uv_timer_get_due_in(&w->admit_timer) + uv_now(&w->loop) <= due)
        return; /* sooner already */
    uv_timer_start(&w->admit_timer, on_admit_timer, delay_ms, 0);
}

void imf_sess_release_backend(struct imf_session *s)
{
    forget_addresses(s);
    if (s->queued)
        dequeue(s);
    bool freed = s->holds_session || s->holds_connect;
    if (s->holds_connect)
        imf_backend_connect_done(s->pool, s->slot_server);
    if (s->holds_session)
        imf_backend_release(s->pool, s->slot_server);
    s->holds_connect = s->holds_session = false;
    if (freed)
        kick(s->worker, 0);
}

void imf_sess_greeted(struct imf_session *s)
{
    if (!s->holds_connect)
        return;
    s->holds_connect = false;
    imf_backend_connect_done(s->pool, s->slot_server);
    kick(s->worker, 0);
}

/* The servers this session may be admitted to now: the up ones from
 * plan_pos on, or (none up, or failing over past them) plan_pos alone. */
static enum imf_admit try_admit(struct imf_session *s, uint64_t *out_wait_ms)
{
    /* The limits of the newest config, for this pool; the session's own when
     * a reload removed the pool. */
    const struct imf_pool_config *limits = imf_config_pool(s->worker->cfg, s->pool->name);
    if (limits == NULL)
        limits = s->pool;
    size_t end = s->plan_pos < s->plan_up ? s->plan_up : (size_t)s->plan_pos + 1;
    enum imf_admit worst = IMF_ADMIT_FULL;
    *out_wait_ms = QUEUE_POLL_MS;
    for (size_t pos = s->plan_pos; pos < end; pos++) {
        uint64_t wait = 0;
        enum imf_admit r = imf_backend_acquire(s->pool, s->plan[pos], limits, &wait);
        if (r == IMF_ADMIT_OK) {
            s->plan_pos = (uint8_t)pos;
            s->slot_server = s->plan[pos];
            s->holds_session = s->holds_connect = true;
            return r;
        }
        if (r == IMF_ADMIT_RATE && (worst != IMF_ADMIT_RATE || wait < *out_wait_ms)) {
            worst = r;
            *out_wait_ms = wait;
        }
    }
    return worst;
}

static void start_connect(struct imf_session *s);

static void on_queue_timeout(uv_timer_t *t)
{
    struct imf_session *s = t->data;
    if (s->state != SESS_QUEUED)
        return;
    dequeue(s);
    backend_busy(s, s->queue_server);
}

/* Connects now if a slot is free and nobody older waits; otherwise waits
 * in the queue (until queue_timeout from the first ask). */
static void want_backend(struct imf_session *s)
{
    struct imf_worker *w = s->worker;
    uint64_t now = imf_clock_ms();
    if (now >= deadline_ms(s)) {
        backend_busy(s, s->plan[s->plan_pos]);
        return;
    }
    uint64_t wait = 0;
    bool first = (w->queue_head == NULL || w->queue_head->wait_since_ms >= s->wait_since_ms) &&
                 imf_backend_queue_first(w->id, s->wait_since_ms);
    if (first && try_admit(s, &wait) == IMF_ADMIT_OK) {
        start_connect(s);
        return;
    }
    s->queue_server = s->plan[s->plan_pos];
    s->backend_name = NULL;
    imf_sess_set_state(s, SESS_QUEUED);
    enqueue(s);
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_queue_timeout, deadline_ms(s) - now, 0);
    kick(w, wait);
}

/* Admits waiting sessions, oldest first, while slots and tokens last. */
static void on_admit_timer(uv_timer_t *t)
{
    struct imf_worker *w = t->data;
    /* Bounded: each round admits the head or stops. */
    while (w->queue_head != NULL) {
        struct imf_session *s = w->queue_head;
        uint64_t wait = QUEUE_POLL_MS;
        if (!imf_backend_queue_first(w->id, s->wait_since_ms) ||
            try_admit(s, &wait) != IMF_ADMIT_OK) {
            uv_timer_start(&w->admit_timer, on_admit_timer, wait, 0);
            return;
        }
        imf_backend_queue_done(s->pool, s->queue_server, imf_clock_ms() - s->wait_since_ms, false);
        dequeue(s);
        start_connect(s);
    }
}

static void on_failed_backend_closed(uv_handle_t *h)
{
    struct imf_session *s = h->data;
    s->open_handles--;
    s->backend.inited = false;
    s->backend.closing = false;
    s->backend.eof = false;
    s->backend.reading = false;
    imf_chain_clear(&s->backend.rx); /* what a failed negotiation left */
    imf_chain_clear(&s->backend.tx);
    imf_btls_free(s);
    if (s->state == SESS_CONNECTING) {
        s->plan_pos++;
        next_server(s);
    } else if (s->open_handles == 0) {
        imf_sess_free(s);
    }
}

/* One address of a named server refused: the next one, unless the
 * attempt was given up meanwhile. */
static void on_address_failed_closed(uv_handle_t *h)
{
    struct imf_session *s = h->data;
    s->open_handles--;
    s->backend.inited = false;
    s->backend.closing = false;
    if (s->state == SESS_CONNECTING && s->connect_abandoned) {
        /* The attempt timed out while this socket closed (backend_failed
         * left the rest to us): the next server. */
        s->plan_pos++;
        next_server(s);
    } else if (s->state == SESS_CONNECTING) {
        const struct sockaddr *sa = take_address(s);
        if (sa != NULL) {
            connect_to(s, sa);
            return;
        }
        backend_failed(s, "no address answered", IMF_CONNECT_FAILED);
    } else if (s->open_handles == 0) {
        imf_sess_free(s);
    }
}

/* The current server failed (refused, unreachable, timed out): note it for
 * passive health, give its slots back, and go on to the next one once its
 * handle has closed. */
static void backend_failed(struct imf_session *s, const char *why, enum imf_connect_result r)
{
    unsigned idx = s->plan[s->plan_pos];
    imf_stat_add(&s->worker->stats.backend_connect_failed, 1);
    imf_backend_report(s->pool, idx, r);
    imf_log_kv(IMF_LOG_WARN, "backend", "connect failed", "client", s->peer, "backend",
               s->pool->servers[idx].text, "reason", why, NULL);
    if (r == IMF_CONNECT_TIMEOUT)
        s->saw_timeout = true;
    imf_sess_release_backend(s);
    s->connect_abandoned = true;
    if (!s->backend.inited) {
        /* Failed before a socket existed (the name did not resolve). */
        s->plan_pos++;
        next_server(s);
        return;
    }
    if (s->backend.closing)
        return; /* closing to try the next address: on_address_failed_closed goes on */
    s->backend.closing = true;
    uv_close((uv_handle_t *)&s->backend.tcp, on_failed_backend_closed);
}

static void make_plan(struct imf_session *s)
{
    size_t up = 0;
    s->plan_len = (uint8_t)imf_backend_plan(s->pool, s->plan, &up);
    s->plan_up = (uint8_t)up;
    s->plan_pos = 0;
    s->saw_timeout = false;
}

/* After a failed connect: the next server of the plan; past the last
 * one, a round that saw a timeout starts over (the servers are slow, and
 * the client waits up to queue_timeout), one that was only refused ends. */
static void next_server(struct imf_session *s)
{
    if (s->plan_pos < s->plan_len) {
        want_backend(s);
        return;
    }
    if (!s->saw_timeout) {
        backend_unavailable(s);
        return;
    }
    if (imf_clock_ms() >= deadline_ms(s)) {
        backend_busy(s, s->slot_server);
        return;
    }
    make_plan(s);
    want_backend(s);
}

/* Connects to sa, an address of plan[plan_pos] (whose slots the session
 * holds); the connect timer is running. */
static void connect_to(struct imf_session *s, const struct sockaddr *sa)
{
    const struct imf_sockaddr *srv = &s->pool->servers[s->plan[s->plan_pos]];
    int rc = uv_tcp_init(&s->worker->loop, &s->backend.tcp);
    if (rc != 0) {
        imf_sess_release_backend(s);
        backend_unavailable(s);
        return;
    }
    s->backend.tcp.data = s;
    s->backend.inited = true;
    s->open_handles++;
    /* Freed by on_backend_connected, which libuv calls exactly once (with
     * UV_ECANCELED when the handle closes first). */
    uv_connect_t *req = malloc(sizeof(*req));
    rc = req != NULL ? uv_tcp_connect(req, &s->backend.tcp, sa, on_backend_connected) : UV_ENOMEM;
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
        backend_failed(s, uv_strerror(rc), IMF_CONNECT_FAILED);
        return;
    }
    req->data = s;
}

/* The next address of a named server that is IPv4 or IPv6, or NULL. */
static const struct sockaddr *take_address(struct imf_session *s)
{
    /* Bounded by the length of the list getaddrinfo gave. */
    while (s->addr_next != NULL) {
        const struct addrinfo *ai = s->addr_next;
        s->addr_next = ai->ai_next;
        if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
            return ai->ai_addr;
    }
    return NULL;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct sess_resolve *r = (struct sess_resolve *)req;
    struct imf_session *s = r->s;
    bool abandoned = r->abandoned;
    free(r);
    s->open_handles--;
    if (abandoned || s->state != SESS_CONNECTING || s->connect_abandoned) {
        if (res != NULL)
            uv_freeaddrinfo(res);
        if (s->open_handles == 0)
            imf_sess_free(s);
        return;
    }
    s->resolving = NULL;
    const struct imf_sockaddr *srv = &s->pool->servers[s->plan[s->plan_pos]];
    char host[sizeof(srv->text)], port[8], why[sizeof(srv->text) + 96];
    if (imf_sockaddr_host_port(srv, host, sizeof(host), port, sizeof(port)) != 0)
        snprintf(host, sizeof(host), "%s", srv->text);
    s->addrs = s->addr_next = res;
    const struct sockaddr *sa = status == 0 ? take_address(s) : NULL;
    if (sa == NULL) {
        snprintf(why, sizeof(why), "cannot resolve %s: %s", host,
                 status < 0 ? uv_strerror(status) : "no IPv4 or IPv6 address");
        backend_failed(s, why, IMF_CONNECT_FAILED);
        return;
    }
    connect_to(s, sa);
}

/* Starts the lookup of a named server. */
static void resolve(struct imf_session *s, const struct imf_sockaddr *srv)
{
    char host[sizeof(srv->text)], port[8];
    struct sess_resolve *r = malloc(sizeof(*r));
    if (r == NULL) {
        imf_sess_release_backend(s);
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    r->s = s;
    r->abandoned = false;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = imf_sockaddr_host_port(srv, host, sizeof(host), port, sizeof(port));
    if (rc == 0)
        rc = uv_getaddrinfo(&s->worker->loop, &r->req, on_resolved, host, port, &hints);
    if (rc != 0) {
        free(r);
        char why[sizeof(srv->text) + 96];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", srv->text, uv_strerror(rc));
        backend_failed(s, why, IMF_CONNECT_FAILED);
        return;
    }
    s->resolving = r;
    s->open_handles++;
}

/* Connects to plan[plan_pos], whose slots the session holds; a named
 * server is looked up first. connect_timeout covers the whole attempt. */
static void start_connect(struct imf_session *s)
{
    const struct imf_sockaddr *srv = &s->pool->servers[s->plan[s->plan_pos]];
    s->backend_name = srv->text;
    s->connect_abandoned = false;
    imf_sess_set_state(s, SESS_CONNECTING);
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_connect_timeout, s->pool->connect_timeout_ms, 0);
    if (srv->named)
        resolve(s, srv);
    else
        connect_to(s, (const struct sockaddr *)&srv->ss);
}

void imf_sess_connect_backend(struct imf_session *s)
{
    free(s->plan);
    s->plan = malloc(s->pool->servers_len > 0 ? s->pool->servers_len : 1);
    if (s->plan == NULL) {
        imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
        return;
    }
    s->wait_since_ms = imf_clock_ms();
    make_plan(s);
    want_backend(s);
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
    if (s->state != SESS_CONNECTING || s->connect_abandoned)
        return;
    if (imf_btls_negotiating(s)) {
        char why[96];
        snprintf(why, sizeof(why), "connect timeout (in the %s)", imf_btls_step_name(s));
        backend_failed(s, why, IMF_CONNECT_TIMEOUT);
        return;
    }
    backend_failed(s, "connect timeout", IMF_CONNECT_TIMEOUT);
}

static void on_backend_connected(uv_connect_t *req, int status)
{
    struct imf_session *s = req->data;
    free(req);
    if (s->state != SESS_CONNECTING || s->connect_abandoned)
        return; /* given up already (timeout, client gone): the handle closes */
    if (status < 0) {
        if (s->addr_next != NULL) {
            /* Another address of the same name may answer: same timer. */
            imf_log_kv(IMF_LOG_INFO, "backend", "connect to one address failed, trying the next",
                       "client", s->peer, "backend", s->backend_name, "reason", uv_strerror(status),
                       NULL);
            s->backend.closing = true;
            uv_close((uv_handle_t *)&s->backend.tcp, on_address_failed_closed);
            return;
        }
        uv_timer_stop(&s->timer);
        backend_failed(s, uv_strerror(status), IMF_CONNECT_FAILED);
        return;
    }
    forget_addresses(s);
    if (s->pool->tls != IMF_BACKEND_TLS_OFF) {
        /* TLS (and STARTTLS first) under the same connect timer; it ends
         * in imf_sess_backend_up or imf_sess_backend_failed. */
        if (imf_btls_start(s) != 0) {
            imf_sess_close(s, IMF_CLOSE_NO_MEMORY, false);
            return;
        }
        uv_tcp_nodelay(&s->backend.tcp, 1);
        imf_sess_pump(s);
        return;
    }
    imf_sess_backend_up(s);
}

void imf_sess_backend_failed(struct imf_session *s, const char *why)
{
    if (s->state == SESS_CONNECTING && !s->connect_abandoned) {
        uv_timer_stop(&s->timer);
        backend_failed(s, why, IMF_CONNECT_FAILED);
    }
}

void imf_sess_backend_up(struct imf_session *s)
{
    uv_timer_stop(&s->timer);
    imf_backend_report(s->pool, s->plan[s->plan_pos], IMF_CONNECT_OK);
    /* The connect slot is held until the server speaks (imf_sess_greeted):
     * a slow server completes TCP connects from its listen queue long
     * before it accepts them, and SYNs past that queue are dropped. */
    s->server_index = s->plan[s->plan_pos];
    free(s->plan); /* failover is over for this session */
    s->plan = NULL;
    if (s->pool->literal_crlf_split || s->pool->quirks == IMF_QUIRKS_AUTO) {
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
    /* connect_timeout runs on until the greeting: a server that accepts and
     * never speaks is no more use than one that does not accept. */
    s->awaiting_greeting = true;
    s->backend_up_ms = uv_now(&s->worker->loop);
    uv_tcp_nodelay(&s->backend.tcp, 1);
    if (s->pool->forward_client_ip == IMF_FORWARD_IP_ID && s->lf == NULL)
        send_client_id(s); /* login-first sends its own after the greeting */
    imf_sess_set_state(s, SESS_RELAY);
    imf_sess_arm_inactivity_timer(s);
    imf_sess_pump(s);
}
