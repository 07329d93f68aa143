/* worker: one thread, one uv loop, its own SO_REUSEPORT listening sockets and
 * the sessions they accept. Workers share only reference-counted, immutable
 * things (config snapshot, SSL_CTX) and expose counters that other threads
 * read. */
#ifndef IMAPFRONT_WORKER_H
#define IMAPFRONT_WORKER_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "imapfront/config.h"
#include "imapfront/stats.h"

struct imf_session;
struct imf_store;

struct imf_listener {
    uv_tcp_t handle;
    struct imf_worker *worker;
    size_t index;  /* into the worker's cfg->listeners (follows reloads by name) */
    char name[64]; /* NAME of its [listen.NAME], fixed at start */
    bool open;
    /* A connection no session took (out of memory) is accepted into this
     * handle and closed, so that the listener keeps accepting: libuv stops
     * watching a listener whose pending connection was not accepted. */
    uv_tcp_t spare;
    bool spare_busy;   /* closing one connection */
    bool spare_wanted; /* another is pending: close it once spare is free */
    _Atomic uint64_t sessions_active;
    _Atomic uint64_t sessions_total;
};

struct imf_worker {
    unsigned id;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;
    uv_timer_t drain_timer;
    struct imf_config *cfg; /* snapshot for new sessions (one reference) */
    SSL_CTX *ssl_ctx;       /* idem */
    /* A reload hands a new snapshot over through here (under the lock);
     * the worker's thread adopts it on its next wakeup. */
    uv_mutex_t pending_lock;
    struct imf_config *pending_cfg;
    SSL_CTX *pending_ctx;
    uv_async_t *done; /* the main loop's, sent when this worker's loop ends */
    struct imf_listener *listeners;
    size_t listeners_len;
    struct imf_session *sessions; /* doubly linked through the sessions */
    /* Sessions waiting for a backend slot, oldest first (upstream.c), and
     * the timer that retries the head: at once after a slot is freed here,
     * at the next token, or a short poll for slots freed by other workers. */
    struct imf_session *queue_head, *queue_tail;
    uv_timer_t admit_timer;
    _Atomic bool stop;
    _Atomic bool stop_now; /* a second signal: no drain */
    _Atomic bool finished; /* the loop has ended */
    bool draining;         /* listeners closed, waiting for sessions to end */
    bool started;
    struct imf_worker_stats stats;
    struct imf_store *store; /* [login] store: shared counters (the first worker subscribes) */
};

/* Opens a listening TCP socket for addr with SO_REUSEADDR and SO_REUSEPORT
 * (so every worker can have its own). Returns the fd or a negative uv code. */
int imf_listen_socket(const struct sockaddr *addr, socklen_t len);

/* Sets up a worker for cfg (the worker takes its own references to cfg and
 * ctx) whose listeners adopt the given fds (one per cfg->listeners entry;
 * ownership moves to the worker on success). Returns 0 or a uv error. */
int imf_worker_init(struct imf_worker *w, unsigned id, struct imf_config *cfg, SSL_CTX *ctx,
                    const int *listen_fds);
int imf_worker_start(struct imf_worker *w);
/* Asks the worker to stop: close its listeners, say BYE to idle sessions at
 * once and to the others when their command is done or drain_timeout has
 * passed (at once with now). Thread-safe; done is sent when it has ended. */
void imf_worker_request_stop(struct imf_worker *w, bool now);
/* Hands the worker a new snapshot for new sessions (it takes its own
 * references). Thread-safe. */
void imf_worker_reload(struct imf_worker *w, struct imf_config *cfg, SSL_CTX *ctx);
/* Waits for the thread, then frees what init allocated. */
void imf_worker_join(struct imf_worker *w);

/* Called by session.c when s has left w's list of sessions. */
void imf_worker_session_gone(struct imf_worker *w, struct imf_session *s);

#endif
