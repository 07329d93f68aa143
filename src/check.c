/* check: see include/imapfront/check.h. */
#include "imapfront/check.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imapfront/backend.h"
#include "imapfront/backend_tls.h"
#include "imapfront/bclient.h"
#include "imapfront/log.h"

enum probe_step {
    STEP_CONNECT,
    STEP_GREETING,
    STEP_STARTTLS, /* tls = starttls: its answer */
    STEP_TLS,      /* tls = on | starttls: the handshake */
    STEP_RECAP,    /* tls = starttls: CAPABILITY again, under TLS */
    STEP_LOGIN,    /* with the CAPABILITY that may come first */
    STEP_EXAMINE,
    STEP_NOOP,
    STEP_LOGOUT, /* the outcome is known: saying goodbye */
    STEP_COUNT
};

static const char *const step_names[STEP_COUNT] = {"connect",       "greeting",   "STARTTLS",
                                                   "TLS handshake", "CAPABILITY", "LOGIN",
                                                   "EXAMINE",       "NOOP",       "LOGOUT"};

struct probe {
    struct probe *next;
    struct imf_checker *ck;
    struct imf_config *cfg;             /* the snapshot it started with (one reference) */
    const struct imf_pool_config *pool; /* the pool checked, inside cfg */
    size_t index;                       /* into pool->servers */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_getaddrinfo_t resolve_req;     /* a server written as a name: its lookup */
    struct addrinfo *addrs;           /* ... its addresses (freed with the probe) */
    const struct addrinfo *addr_next; /* ... the next to try when a connect fails */
    bool reconnecting;                /* tcp is closing to connect to addr_next */
    unsigned open_handles;            /* the handles, and the lookup while it runs */
    enum probe_step step;
    bool reported; /* the outcome went to the health table */
    bool closing;  /* uv_close called */
    uint64_t start_ns;
    /* The conversation (src/bclient.c); its tags are imfcheck1, 2 ... so a
     * late answer to an earlier step is never taken for the current one. */
    struct imf_bc bc;
    /* tls = on | starttls: the same TLS as a session's (backend_tls.h),
     * over two chains of ciphertext. */
    SSL *ssl;
    struct imf_tls_io io;
    struct imf_chain tin, tout;
};

/* One write in flight: a server may answer a command before the write that
 * carried it has completed (its callback runs on a later loop iteration),
 * and the next command then goes out while the first is still in flight.
 * So every write has its own request and its own copy of the bytes, wiped
 * (it may carry the password) and freed by its callback (which libuv runs,
 * with UV_ECANCELED, before the close callback of the probe's socket: the
 * probe outlives its writes). */
struct probe_write {
    uv_write_t req; /* req.data: the probe */
    enum probe_step step;
    size_t len;
    char data[];
};

/* The tick of one pool: each pool has its own check_interval. Kept, by
 * the pool's name, for the checker's whole life (stopped while the pool
 * is gone or has check = off), closed only by imf_checker_stop. */
struct pool_tick {
    struct pool_tick *next;
    struct imf_checker *ck;
    uv_timer_t timer; /* timer.data: this */
    char name[64];
    uint64_t interval_ms; /* the timer runs at this interval; 0 = stopped */
    bool closed;
};

struct imf_checker {
    uv_loop_t *loop;
    struct imf_config *cfg; /* current snapshot (one reference) */
    struct probe *probes;
    struct pool_tick *ticks;
    bool stopping;
};

static void probe_close(struct probe *p);

static const char *server_of(const struct probe *p)
{
    return p->pool->servers[p->index].text;
}

/* The step for logs: a login that had to ask for CAPABILITY first says so. */
static const char *step_name(const struct probe *p)
{
    if (p->step == STEP_LOGIN && imf_bc_state(&p->bc) == IMF_BC_S_CAPABILITY)
        return "CAPABILITY";
    return step_names[p->step];
}

static uint64_t elapsed_us(const struct probe *p)
{
    return (uv_hrtime() - p->start_ns) / 1000;
}

/* The outcome, once per probe: into the health table, and a log line when
 * the server leaves or rejoins the rotation (a failure that does not yet
 * take it out is logged at debug level, so a dead server does not flood
 * the log). */
static void report(struct probe *p, bool ok, const char *reason)
{
    /* Nothing is recorded once stopping, or once a reload turned checks
     * off (the table was cleared then). */
    if (p->reported || p->ck->stopping)
        return;
    const struct imf_pool_config *now = imf_config_pool(p->ck->cfg, p->pool->name);
    if (now == NULL || now->check == IMF_CHECK_OFF)
        return;
    p->reported = true;
    uint64_t us = elapsed_us(p);
    int change = imf_backend_check_report(p->pool, p->index, ok, us);
    if (change > 0) {
        imf_log_kv(IMF_LOG_WARN, "backend", "server failed its check, out of rotation", "backend",
                   server_of(p), "step", step_name(p), "reason", reason,
                   imf_backend_pool_key(p->pool), p->pool->name, NULL);
    } else if (change < 0) {
        char took[32];
        snprintf(took, sizeof(took), "%" PRIu64 "ms", us / 1000);
        imf_log_kv(IMF_LOG_INFO, "backend", "server passed its check, back in rotation", "backend",
                   server_of(p), "took", took, imf_backend_pool_key(p->pool), p->pool->name, NULL);
    } else if (!ok && imf_log_enabled(IMF_LOG_DEBUG)) {
        imf_log_kv(IMF_LOG_DEBUG, "backend", "check failed", "backend", server_of(p), "step",
                   step_name(p), "reason", reason, imf_backend_pool_key(p->pool), p->pool->name,
                   NULL);
    }
}

static void fail(struct probe *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(struct probe *p, const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    report(p, false, reason);
    probe_close(p);
}

/* After imf_checker_stop: frees the checker once its ticks and every probe
 * are closed. */
static void checker_free_when_done(struct imf_checker *ck)
{
    if (!ck->stopping || ck->probes != NULL)
        return;
    for (const struct pool_tick *t = ck->ticks; t != NULL; t = t->next)
        if (!t->closed)
            return;
    while (ck->ticks != NULL) {
        struct pool_tick *t = ck->ticks;
        ck->ticks = t->next;
        free(t);
    }
    imf_config_unref(ck->cfg);
    free(ck);
}

/* One of the probe's handles closed (or its lookup ended): the last one
 * frees it. */
static void probe_put(struct probe *p)
{
    if (--p->open_handles > 0)
        return;
    struct imf_checker *ck = p->ck;
    for (struct probe **pp = &ck->probes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    imf_config_unref(p->cfg);
    if (p->addrs != NULL)
        uv_freeaddrinfo(p->addrs);
    imf_bc_cleanup(&p->bc);
    if (p->ssl != NULL)
        SSL_free(p->ssl);
    imf_chain_clear(&p->tin);
    imf_chain_clear(&p->tout);
    free(p);
    checker_free_when_done(ck);
}

static void on_closed(uv_handle_t *h)
{
    probe_put(h->data);
}

static void probe_close(struct probe *p)
{
    if (p->closing)
        return;
    p->closing = true;
    if (!p->reconnecting) /* else on_retry_closed puts it */
        uv_close((uv_handle_t *)&p->tcp, on_closed);
    uv_close((uv_handle_t *)&p->timer, on_closed);
}

static void on_written(uv_write_t *req, int status)
{
    struct probe_write *pw = (struct probe_write *)req;
    struct probe *p = req->data;
    enum probe_step step = pw->step;
    explicit_bzero(pw->data, pw->len);
    free(pw);
    if (p->closing)
        return;
    if (status < 0) {
        fail(p, "cannot send %s: %s", step_names[step], uv_strerror(status));
        return;
    }
    if (step == STEP_LOGOUT) /* nothing more to learn from it */
        probe_close(p);
}

/* Sends bytes[0 .. len) (copied) under the current step. */
static void send_raw(struct probe *p, const uint8_t *bytes, size_t len)
{
    struct probe_write *pw = malloc(sizeof(*pw) + len);
    if (pw == NULL) {
        fail(p, "cannot send %s: out of memory", step_name(p));
        return;
    }
    memcpy(pw->data, bytes, len);
    pw->step = p->step;
    pw->len = len;
    pw->req.data = p;
    uv_buf_t buf = uv_buf_init(pw->data, (unsigned)len);
    int rc = uv_write(&pw->req, (uv_stream_t *)&p->tcp, &buf, 1, on_written);
    if (rc < 0) { /* the callback will not run */
        explicit_bzero(pw->data, len);
        free(pw);
        fail(p, "cannot send %s: %s", step_name(p), uv_strerror(rc));
    }
}

/* Sends the ciphertext the SSL produced. */
static void send_tls(struct probe *p)
{
    /* Bounded by what the SSL wrote. */
    while (p->tout.bytes > 0 && !p->closing) {
        size_t avail;
        const uint8_t *q = imf_chain_peek(&p->tout, &avail);
        send_raw(p, q, avail);
        imf_chain_consume(&p->tout, avail);
    }
}

/* Sends what the conversation has for the server, under the current step
 * (encrypted once TLS is up). */
static void flush(struct probe *p)
{
    const uint8_t *bytes;
    size_t len = imf_bc_output(&p->bc, &bytes);
    if (len == 0 || p->closing)
        return;
    if (p->ssl == NULL) {
        send_raw(p, bytes, len);
        imf_bc_consumed(&p->bc, len);
        return;
    }
    int n = SSL_write(p->ssl, bytes, (int)len);
    imf_bc_consumed(&p->bc, len);
    if (n != (int)len) {
        fail(p, "cannot send %s: TLS write failed", step_name(p));
        return;
    }
    send_tls(p);
}

/* Starts the command of step (arg: an astring or NULL). */
static void command(struct probe *p, enum probe_step step, const char *name, const char *arg)
{
    p->step = step;
    int rc = imf_bc_command(&p->bc, name, arg);
    if (rc < 0) {
        fail(p, "cannot send %s: %s", step_names[step], strerror(-rc));
        return;
    }
    flush(p);
}

/* Passed: say LOGOUT (old servers log an abrupt close as an error) and
 * close once it is written. */
static void pass(struct probe *p)
{
    report(p, true, NULL);
    command(p, STEP_LOGOUT, "LOGOUT", NULL);
}

static void login(struct probe *p)
{
    p->step = STEP_LOGIN;
    const char *user = p->pool->check_user, *pw = p->pool->check_password;
    int rc = imf_bc_login(&p->bc, user, strlen(user), pw, strlen(pw));
    if (rc == -ENOTSUP) {
        fail(p, "the server allows no login (LOGINDISABLED and no AUTH=PLAIN)");
        return;
    }
    if (rc < 0) {
        fail(p, "cannot send LOGIN: %s", strerror(-rc));
        return;
    }
    flush(p);
}

static void start_tls(struct probe *p);

/* What the conversation found. The server's text goes into reasons as it
 * came, bounded: the log escapes control bytes. */
static void on_result(struct probe *p, enum imf_bc_result r)
{
    switch (r) {
    case IMF_BC_READY:
        if (p->pool->tls == IMF_BACKEND_TLS_STARTTLS && p->ssl == NULL) {
            if (imf_bc_preauth(&p->bc))
                fail(p, "STARTTLS impossible after a PREAUTH greeting");
            else
                command(p, STEP_STARTTLS, "STARTTLS", NULL);
            return;
        }
        if (p->pool->check == IMF_CHECK_BANNER)
            pass(p);
        else if (imf_bc_authenticated(&p->bc)) /* PREAUTH */
            command(p, STEP_EXAMINE, "EXAMINE", p->pool->check_mailbox);
        else
            login(p);
        return;
    case IMF_BC_OK:
        if (p->step == STEP_STARTTLS)
            start_tls(p);
        else if (p->step == STEP_RECAP)
            on_result(p, IMF_BC_READY); /* as if greeted, with the new list */
        else if (p->step == STEP_LOGIN)
            command(p, STEP_EXAMINE, "EXAMINE", p->pool->check_mailbox);
        else if (p->step == STEP_EXAMINE)
            command(p, STEP_NOOP, "NOOP", NULL);
        else if (p->step == STEP_NOOP)
            pass(p);
        return;
    case IMF_BC_NO:
    case IMF_BC_BAD:
        fail(p, "%s refused: %s %.120s", step_name(p), r == IMF_BC_NO ? "NO" : "BAD",
             imf_bc_text(&p->bc));
        return;
    case IMF_BC_BYE:
        if (p->step != STEP_LOGOUT)
            fail(p, "closed by the server during %s: * BYE %.120s", step_name(p),
                 imf_bc_text(&p->bc));
        return;
    case IMF_BC_ERROR:
        if (p->step == STEP_GREETING && imf_bc_greeting(&p->bc)[0] != '\0')
            fail(p, "%s: %.120s", imf_bc_error(&p->bc), imf_bc_greeting(&p->bc));
        else
            fail(p, "%s during %s", imf_bc_error(&p->bc), step_name(p));
        return;
    default:
        return;
    }
}

/* Hands what the server sent to the conversation, result by result. */
static void on_data(struct probe *p, const uint8_t *data, size_t len)
{
    /* Bounded: a result other than NONE comes at most once per response
     * line, and each of those consumed at least its line's LF. */
    for (size_t guard = 0; guard < len + 2 && !p->closing; guard++) {
        size_t used = 0;
        enum imf_bc_result r = imf_bc_feed(&p->bc, data, len, &used);
        data += used;
        len -= used;
        flush(p);
        if (r == IMF_BC_NONE || p->closing)
            return;
        on_result(p, r);
        if (p->step == STEP_TLS) {
            /* Anything after STARTTLS's OK came before our handshake:
             * unprotected, maybe injected on the path. */
            if (len > 0)
                fail(p, "the server sent plaintext after its STARTTLS answer");
            return;
        }
    }
}

/* The handshake, then what the server sends under TLS. */
static void on_tls_data(struct probe *p)
{
    if (p->step == STEP_TLS) {
        int rc = SSL_do_handshake(p->ssl);
        send_tls(p);
        if (rc != 1) {
            int err = SSL_get_error(p->ssl, rc);
            if (err == SSL_ERROR_WANT_READ && !p->io.in_eof)
                return;
            char reason[256];
            imf_btls_handshake_reason(p->ssl, &p->io, reason, sizeof(reason));
            fail(p, "TLS handshake failed: %s", reason);
            return;
        }
        char why[256];
        if (!imf_btls_pin_matches(p->pool, p->ssl, why, sizeof(why))) {
            fail(p, "%s", why);
            return;
        }
        if (p->pool->tls == IMF_BACKEND_TLS_STARTTLS) {
            /* Greeted already; what the greeting announced came before TLS
             * and is not trusted: the login form follows a fresh list. */
            command(p, STEP_RECAP, "CAPABILITY", NULL);
            if (p->closing)
                return;
        } else {
            p->step = STEP_GREETING;
        }
    }
    uint8_t buf[4096];
    /* Bounded: each pass decrypts at least one byte, or stops. */
    while (!p->closing) {
        int n = SSL_read(p->ssl, buf, sizeof(buf));
        if (n <= 0) {
            int err = SSL_get_error(p->ssl, n);
            if (err == SSL_ERROR_WANT_READ && !p->io.in_eof)
                return;
            if (p->step == STEP_LOGOUT) {
                probe_close(p);
                return;
            }
            fail(p, "TLS read failed during %s: %s", step_name(p),
                 imf_tls_failure_reason(p->ssl, &p->io));
            return;
        }
        on_data(p, buf, (size_t)n);
    }
}

/* tls = on after the connect, starttls after STARTTLS's OK. */
static void start_tls(struct probe *p)
{
    imf_chain_init(&p->tin, NULL);
    imf_chain_init(&p->tout, NULL);
    p->io.in = &p->tin;
    p->io.out = &p->tout;
    p->io.peer = "check";
    p->ssl = imf_btls_ssl_new(p->pool, &p->pool->servers[p->index], &p->io);
    if (p->ssl == NULL) {
        fail(p, "cannot start TLS: out of memory");
        return;
    }
    p->step = STEP_TLS;
    on_tls_data(p);
}

/* One buffer for every probe: the main loop is a single thread and on_data
 * consumes what it reads at once. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char scratch[16384];
    *buf = uv_buf_init(scratch, sizeof(scratch));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct probe *p = s->data;
    if (p->closing)
        return;
    if (nread > 0 && p->ssl != NULL) {
        if (imf_chain_append(&p->tin, buf->base, (size_t)nread) != 0) {
            fail(p, "out of memory during %s", step_name(p));
            return;
        }
        on_tls_data(p);
        return;
    }
    if (nread > 0) {
        on_data(p, (const uint8_t *)buf->base, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    if (p->step == STEP_LOGOUT) {
        probe_close(p);
        return;
    }
    if (nread == UV_EOF)
        fail(p, "closed by the server during %s", step_name(p));
    else
        fail(p, "read failed during %s: %s", step_name(p), uv_strerror((int)nread));
}

static void on_connected(uv_connect_t *req, int status);

/* The first IPv4 or IPv6 address from ai on, or NULL. */
static const struct addrinfo *inet_address(const struct addrinfo *ai)
{
    while (ai != NULL && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
        ai = ai->ai_next;
    return ai;
}

/* The next address of a named server to connect to, or NULL. */
static const struct addrinfo *take_address(struct probe *p)
{
    const struct addrinfo *ai = inet_address(p->addr_next);
    p->addr_next = ai != NULL ? ai->ai_next : NULL;
    return ai;
}

/* The socket of a refused address is closed: the next address, as sessions
 * do, within the same check_timeout. */
static void on_retry_closed(uv_handle_t *h)
{
    struct probe *p = h->data;
    p->reconnecting = false;
    if (p->closing) {
        probe_put(p);
        return;
    }
    const struct addrinfo *ai = take_address(p);
    uv_tcp_init(p->ck->loop, &p->tcp);
    p->tcp.data = p;
    int rc = uv_tcp_connect(&p->connect_req, &p->tcp, ai->ai_addr, on_connected);
    if (rc < 0)
        fail(p, "connect failed: %s", uv_strerror(rc));
}

static void on_connected(uv_connect_t *req, int status)
{
    struct probe *p = req->data;
    if (p->closing)
        return;
    if (status < 0 && inet_address(p->addr_next) != NULL) {
        p->reconnecting = true;
        uv_close((uv_handle_t *)&p->tcp, on_retry_closed);
        return;
    }
    if (status < 0) {
        fail(p, "connect failed: %s", uv_strerror(status));
        return;
    }
    p->step = STEP_GREETING;
    int rc = uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read);
    if (rc < 0) {
        fail(p, "cannot read: %s", uv_strerror(rc));
        return;
    }
    if (p->pool->tls == IMF_BACKEND_TLS_ON)
        start_tls(p);
}

/* A named server's lookup ended: the check connects to its IPv4 and IPv6
 * addresses in order, as sessions do, until one answers. */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct probe *p = req->data;
    p->addrs = res; /* freed with the probe */
    p->addr_next = res;
    const struct addrinfo *ai = take_address(p);
    if (!p->closing) {
        char host[sizeof(p->pool->servers[0].text)], port[8];
        if (imf_sockaddr_host_port(&p->pool->servers[p->index], host, sizeof(host), port,
                                   sizeof(port)) != 0)
            snprintf(host, sizeof(host), "%s", server_of(p));
        int rc = status;
        if (rc == 0 && ai == NULL)
            fail(p, "cannot resolve %s: no IPv4 or IPv6 address", host);
        else if (rc < 0)
            fail(p, "cannot resolve %s: %s", host, uv_strerror(rc));
        else if ((rc = uv_tcp_connect(&p->connect_req, &p->tcp, ai->ai_addr, on_connected)) < 0)
            fail(p, "connect failed: %s", uv_strerror(rc));
    }
    probe_put(p);
}

static void on_timeout(uv_timer_t *t)
{
    struct probe *p = t->data;
    if (p->step == STEP_LOGOUT) { /* the outcome is in: just stop waiting */
        probe_close(p);
        return;
    }
    char limit[32];
    snprintf(limit, sizeof(limit), "%" PRIu64 "ms", p->pool->check_timeout_ms);
    if (p->step == STEP_CONNECT)
        fail(p, "connect not done within %s", limit);
    else
        fail(p, "no answer to %s within %s", step_name(p), limit);
}

static bool probing(const struct imf_checker *ck, const struct imf_pool_config *pool,
                    const char *address)
{
    for (const struct probe *p = ck->probes; p != NULL; p = p->next)
        if (strcmp(p->pool->name, pool->name) == 0 && strcmp(server_of(p), address) == 0)
            return true;
    return false;
}

/* Checks pool->servers[index] (pool: of ck->cfg). */
static void probe_start(struct imf_checker *ck, const struct imf_pool_config *pool, size_t index)
{
    struct probe *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        imf_warn("backend", "check of %s skipped: out of memory", pool->servers[index].text);
        return;
    }
    p->ck = ck;
    p->cfg = imf_config_ref(ck->cfg);
    p->pool = pool;
    p->index = index;
    p->start_ns = uv_hrtime();
    p->step = STEP_CONNECT;
    imf_bc_init(&p->bc, "imfcheck");
    p->next = ck->probes;
    ck->probes = p;
    uv_tcp_init(ck->loop, &p->tcp);
    uv_timer_init(ck->loop, &p->timer);
    p->tcp.data = p->timer.data = p->connect_req.data = p;
    p->open_handles = 2;
    uv_timer_start(&p->timer, on_timeout, pool->check_timeout_ms, 0);
    const struct imf_sockaddr *a = &pool->servers[index];
    if (a->named) {
        char host[sizeof(a->text)], port[8];
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        p->resolve_req.data = p;
        int rc = imf_sockaddr_host_port(a, host, sizeof(host), port, sizeof(port));
        if (rc == 0)
            rc = uv_getaddrinfo(ck->loop, &p->resolve_req, on_resolved, host, port, &hints);
        if (rc < 0) {
            fail(p, "cannot resolve %s: %s", host, uv_strerror(rc));
            return;
        }
        p->open_handles++;
        return;
    }
    int rc =
        uv_tcp_connect(&p->connect_req, &p->tcp, (const struct sockaddr *)&a->ss, on_connected);
    if (rc < 0)
        fail(p, "connect failed: %s", uv_strerror(rc));
}

static void on_tick(uv_timer_t *timer)
{
    struct pool_tick *t = timer->data;
    struct imf_checker *ck = t->ck;
    const struct imf_pool_config *pool = imf_config_pool(ck->cfg, t->name);
    if (pool == NULL)
        return;
    for (size_t i = 0; i < pool->servers_len; i++)
        if (!probing(ck, pool, pool->servers[i].text))
            probe_start(ck, pool, i);
}

/* The tick of the pool named name, created (stopped) on first use; NULL
 * when out of memory or the timer cannot be set up. */
static struct pool_tick *tick_of(struct imf_checker *ck, const char *name)
{
    for (struct pool_tick *t = ck->ticks; t != NULL; t = t->next)
        if (strcmp(t->name, name) == 0)
            return t;
    struct pool_tick *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    if (uv_timer_init(ck->loop, &t->timer) < 0) {
        free(t);
        return NULL;
    }
    t->ck = ck;
    t->timer.data = t;
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->next = ck->ticks;
    ck->ticks = t;
    return t;
}

/* Starts, restarts or stops each pool's tick for ck->cfg (old: the config
 * before, or NULL). A newly started tick fires at once, so a broken
 * server is found without waiting an interval. What checks found about a
 * pool whose checks stop (check = off, or the pool is gone) is forgotten. */
static void schedule(struct imf_checker *ck, const struct imf_config *old)
{
    for (size_t i = 0; old != NULL && i < old->pools_len; i++) {
        const struct imf_pool_config *was = &old->pools[i];
        const struct imf_pool_config *now = imf_config_pool(ck->cfg, was->name);
        if (was->check != IMF_CHECK_OFF && (now == NULL || now->check == IMF_CHECK_OFF))
            imf_backend_check_clear(was);
    }
    for (struct pool_tick *t = ck->ticks; t != NULL; t = t->next) {
        const struct imf_pool_config *now = imf_config_pool(ck->cfg, t->name);
        if (t->interval_ms != 0 && (now == NULL || now->check == IMF_CHECK_OFF)) {
            uv_timer_stop(&t->timer);
            t->interval_ms = 0;
        }
    }
    for (size_t i = 0; i < ck->cfg->pools_len; i++) {
        const struct imf_pool_config *pool = &ck->cfg->pools[i];
        if (pool->check == IMF_CHECK_OFF) {
            imf_backend_check_clear(pool);
            continue;
        }
        struct pool_tick *t = tick_of(ck, pool->name);
        if (t == NULL) {
            imf_warn("backend", "checks of pool %s not started: out of memory", pool->name);
            continue;
        }
        if (t->interval_ms == pool->check_interval_ms)
            continue;
        uv_timer_start(&t->timer, on_tick, 0, pool->check_interval_ms);
        t->interval_ms = pool->check_interval_ms;
    }
}

int imf_checker_start(uv_loop_t *loop, struct imf_config *cfg, struct imf_checker **out_ck)
{
    struct imf_checker *ck = calloc(1, sizeof(*ck));
    if (ck == NULL)
        return UV_ENOMEM;
    ck->loop = loop;
    ck->cfg = imf_config_ref(cfg);
    schedule(ck, NULL);
    *out_ck = ck;
    return 0;
}

void imf_checker_reload(struct imf_checker *ck, struct imf_config *cfg)
{
    struct imf_config *old = ck->cfg;
    ck->cfg = imf_config_ref(cfg);
    schedule(ck, old);
    imf_config_unref(old);
}

static void on_tick_closed(uv_handle_t *h)
{
    struct pool_tick *t = h->data;
    t->closed = true;
    checker_free_when_done(t->ck);
}

void imf_checker_stop(struct imf_checker *ck)
{
    if (ck == NULL || ck->stopping)
        return;
    ck->stopping = true;
    for (struct probe *p = ck->probes; p != NULL; p = p->next)
        probe_close(p);
    for (struct pool_tick *t = ck->ticks; t != NULL; t = t->next)
        uv_close((uv_handle_t *)&t->timer, on_tick_closed);
    checker_free_when_done(ck); /* no tick and no probe: nothing to wait for */
}
