/* worker: see include/imapfront/worker.h. */
#include "imapfront/worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "imapfront/chain.h"
#include "imapfront/log.h"
#include "imapfront/session.h"
#include "imapfront/store.h"

int imf_listen_socket(const struct sockaddr *addr, socklen_t len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (addr->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    /* Listen now: the caller logs "listening" right after, and a client
     * that connects on seeing it must not be refused. */
    if (bind(fd, addr, len) != 0 || listen(fd, 1024) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static void reject_pending(struct imf_listener *l);

static bool listener_running(const struct imf_listener *l)
{
    return l->open && !uv_is_closing((const uv_handle_t *)&l->handle);
}

static void on_spare_closed(uv_handle_t *h)
{
    struct imf_listener *l = h->data;
    l->spare_busy = false;
    if (!listener_running(l))
        return;
    uv_tcp_init(&l->worker->loop, &l->spare);
    if (l->spare_wanted) {
        l->spare_wanted = false;
        reject_pending(l);
    }
}

/* Accepts the listener's pending connection, if any, into the spare handle
 * and closes it: the client sees the connection close instead of waiting
 * in a backlog that nobody reads any more. Allocates nothing. With no
 * connection pending uv_accept says UV_EAGAIN without touching the spare. */
static void reject_pending(struct imf_listener *l)
{
    if (!listener_running(l))
        return;
    if (l->spare_busy) { /* closing the previous one */
        l->spare_wanted = true;
        return;
    }
    int rc = uv_accept((uv_stream_t *)&l->handle, (uv_stream_t *)&l->spare);
    if (rc == UV_EAGAIN)
        return;
    l->spare_busy = true;
    uv_close((uv_handle_t *)&l->spare, on_spare_closed);
    if (rc == 0)
        imf_warn("listener", "%s: connection closed unserved (no session could be set up)",
                 l->worker->cfg->listeners[l->index].name);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct imf_listener *l = server->data;
    if (status < 0) {
        imf_warn("listener", "accept failed: %s", uv_strerror(status));
        return;
    }
    imf_session_accept(l);
    /* A session that could not be allocated leaves the connection pending,
     * and libuv would then stop watching this listener for good. */
    reject_pending(l);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct imf_listener *l = h->data;
    l->open = false;
}

/* Closes the listener and its spare (unless the spare is closing already). */
static void listener_close(struct imf_listener *l)
{
    uv_close((uv_handle_t *)&l->handle, on_listener_closed);
    if (!l->spare_busy)
        uv_close((uv_handle_t *)&l->spare, NULL);
}

/* The worker's loop ends once these are closed and no session is left. */
static void finish_if_drained(struct imf_worker *w)
{
    if (!w->draining || w->sessions != NULL || uv_is_closing((uv_handle_t *)&w->wakeup))
        return;
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_close((uv_handle_t *)&w->admit_timer, NULL);
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    imf_store_close(w->store); /* frees it once its handles have closed */
    w->store = NULL;
}

void imf_worker_session_gone(struct imf_worker *w, struct imf_session *s)
{
    (void)s;
    finish_if_drained(w);
}

static void shutdown_all(struct imf_worker *w)
{
    struct imf_session *s = w->sessions;
    while (s != NULL) {
        struct imf_session *next = imf_session_next(s);
        imf_session_shutdown(s);
        s = next;
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct imf_worker *w = t->data;
    if (w->sessions != NULL)
        imf_info("worker", "worker %u: drain_timeout passed, closing the remaining sessions",
                 w->id);
    shutdown_all(w);
}

static void adopt_pending(struct imf_worker *w)
{
    uv_mutex_lock(&w->pending_lock);
    struct imf_config *cfg = w->pending_cfg;
    SSL_CTX *ctx = w->pending_ctx;
    w->pending_cfg = NULL;
    w->pending_ctx = NULL;
    uv_mutex_unlock(&w->pending_lock);
    if (cfg == NULL)
        return;
    /* Sessions hold their own references: they keep the snapshot they
     * started with. */
    /* A reload keeps the set of listeners (main.c refuses one that changes
     * it) but not necessarily their order in the file: follow each socket's
     * section by name. */
    for (size_t i = 0; i < w->listeners_len; i++) {
        struct imf_listener *l = &w->listeners[i];
        for (size_t j = 0; j < cfg->listeners_len; j++) {
            if (strcmp(cfg->listeners[j].name, l->name) == 0) {
                l->index = j;
                break;
            }
        }
    }
    imf_config_unref(w->cfg);
    SSL_CTX_free(w->ssl_ctx);
    w->cfg = cfg;
    w->ssl_ctx = ctx;
    imf_store_configure(w->store, cfg); /* reconnects if [login] store changed */
}

static void on_wakeup(uv_async_t *a)
{
    struct imf_worker *w = a->data;
    adopt_pending(w);
    if (!atomic_load(&w->stop))
        return;
    if (!w->draining) {
        w->draining = true;
        for (size_t i = 0; i < w->listeners_len; i++) {
            if (listener_running(&w->listeners[i]))
                listener_close(&w->listeners[i]);
        }
        struct imf_session *s = w->sessions;
        while (s != NULL) {
            struct imf_session *next = imf_session_next(s);
            imf_session_drain(s);
            s = next;
        }
        uv_timer_start(&w->drain_timer, on_drain_timeout, w->cfg->drain_timeout_ms, 0);
    }
    if (atomic_load(&w->stop_now))
        shutdown_all(w);
    finish_if_drained(w);
}

int imf_worker_init(struct imf_worker *w, unsigned id, struct imf_config *cfg, SSL_CTX *ctx,
                    const int *listen_fds)
{
    memset(w, 0, sizeof(*w));
    w->id = id;
    int rc = uv_loop_init(&w->loop);
    if (rc != 0)
        return rc;
    w->listeners = calloc(cfg->listeners_len, sizeof(*w->listeners));
    if (w->listeners == NULL) {
        uv_loop_close(&w->loop);
        return UV_ENOMEM;
    }
    w->listeners_len = cfg->listeners_len;
    rc = uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    if (rc != 0)
        goto fail;
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_timer_init(&w->loop, &w->admit_timer);
    w->admit_timer.data = w;
    uv_mutex_init(&w->pending_lock);
    for (size_t i = 0; i < cfg->listeners_len; i++) {
        struct imf_listener *l = &w->listeners[i];
        l->worker = w;
        l->index = i;
        snprintf(l->name, sizeof(l->name), "%s", cfg->listeners[i].name);
        rc = uv_tcp_init(&w->loop, &l->handle);
        if (rc != 0)
            goto fail;
        l->handle.data = l;
        uv_tcp_init(&w->loop, &l->spare); /* no socket until used */
        l->spare.data = l;
        l->open = true;
        rc = uv_tcp_open(&l->handle, listen_fds[i]);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&l->handle, 1024, on_connection);
        if (rc != 0)
            goto fail;
    }
    w->store = imf_store_new(&w->loop, id == 0);
    if (w->store == NULL) {
        rc = UV_ENOMEM;
        goto fail;
    }
    imf_store_configure(w->store, cfg);
    w->cfg = imf_config_ref(cfg);
    SSL_CTX_up_ref(ctx);
    w->ssl_ctx = ctx;
    return 0;
fail:
    for (size_t i = 0; i < w->listeners_len; i++)
        if (w->listeners[i].open)
            listener_close(&w->listeners[i]);
    if (w->wakeup.data != NULL) {
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
        uv_close((uv_handle_t *)&w->admit_timer, NULL);
        uv_mutex_destroy(&w->pending_lock);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    free(w->listeners);
    w->listeners = NULL;
    return rc;
}

static void worker_main(void *arg)
{
    struct imf_worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    imf_block_pool_drain();
    atomic_store(&w->finished, true);
    if (w->done != NULL)
        uv_async_send(w->done);
}

int imf_worker_start(struct imf_worker *w)
{
    int rc = uv_thread_create(&w->thread, worker_main, w);
    if (rc == 0)
        w->started = true;
    return rc;
}

void imf_worker_request_stop(struct imf_worker *w, bool now)
{
    if (now)
        atomic_store(&w->stop_now, true);
    atomic_store(&w->stop, true);
    uv_async_send(&w->wakeup);
}

void imf_worker_reload(struct imf_worker *w, struct imf_config *cfg, SSL_CTX *ctx)
{
    imf_config_ref(cfg);
    SSL_CTX_up_ref(ctx);
    uv_mutex_lock(&w->pending_lock);
    struct imf_config *old_cfg = w->pending_cfg;
    SSL_CTX *old_ctx = w->pending_ctx;
    w->pending_cfg = cfg;
    w->pending_ctx = ctx;
    uv_mutex_unlock(&w->pending_lock);
    if (old_cfg != NULL) { /* two reloads before the worker woke up */
        imf_config_unref(old_cfg);
        SSL_CTX_free(old_ctx);
    }
    uv_async_send(&w->wakeup);
}

void imf_worker_join(struct imf_worker *w)
{
    if (w->started)
        uv_thread_join(&w->thread);
    w->started = false;
    if (uv_loop_close(&w->loop) != 0)
        imf_warn("worker", "worker %u: loop closed with handles still open", w->id);
    adopt_pending(w);
    uv_mutex_destroy(&w->pending_lock);
    free(w->listeners);
    w->listeners = NULL;
    if (w->cfg != NULL)
        imf_config_unref(w->cfg);
    w->cfg = NULL;
    if (w->ssl_ctx != NULL)
        SSL_CTX_free(w->ssl_ctx);
    w->ssl_ctx = NULL;
}
