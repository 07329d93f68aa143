/* main: command line, signals, listeners and workers. Nothing else. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <sys/resource.h>
#include <inttypes.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "imapfront/admin.h"
#include "imapfront/backend.h"
#include "imapfront/certwatch.h"
#include "imapfront/check.h"
#include "imapfront/config.h"
#include "imapfront/iplimit.h"
#include "imapfront/throttle.h"
#include "imapfront/log.h"
#include "imapfront/netaddr.h"
#include "imapfront/notify.h"
#include "imapfront/route.h"
#include "imapfront/runas.h"
#include "imapfront/stats.h"
#include "imapfront/tls.h"
#include "imapfront/worker.h"

#ifndef IMF_VERSION
#define IMF_VERSION "0.1.0"
#endif

/* The names of cfg's pools, for the route map (which copies them); NULL
 * when out of memory (the map then knows no pool and says so). */
static const char **pool_names(const struct imf_config *cfg)
{
    const char **names = calloc(cfg->pools_len + 1, sizeof(*names));
    for (size_t i = 0; names != NULL && i < cfg->pools_len; i++)
        names[i] = cfg->pools[i].name;
    return names;
}

/* How often STATUS= goes to the service manager (only under systemd). */
#define IMF_NOTIFY_STATUS_MS 5000

struct imf_main {
    uv_loop_t *loop;
    struct imf_config *cfg;
    SSL_CTX *ssl_ctx;
    struct imf_worker *workers;
    unsigned workers_len;
    uv_signal_t sig_term, sig_int, sig_usr1, sig_hup;
    uv_async_t workers_done;
    const char *path;
    bool stopping;
    _Atomic bool draining; /* for /readyz and /metrics */
    uv_mutex_t cfg_lock;   /* guards cfg against the admin thread */
    struct imf_admin_view admin_view;
    struct imf_admin *admin;
    struct imf_checker *checker;     /* [backend] check, on this loop */
    struct imf_notify notify;        /* sd_notify, off without $NOTIFY_SOCKET */
    uv_timer_t status_timer;         /* STATUS= every IMF_NOTIFY_STATUS_MS */
    struct imf_certwatch *certwatch; /* reloads the certificates when their files change */
};

/* For the admin thread: the current snapshot, referenced. */
static struct imf_config *current_config(void *arg)
{
    struct imf_main *m = arg;
    uv_mutex_lock(&m->cfg_lock);
    struct imf_config *cfg = imf_config_ref(m->cfg);
    uv_mutex_unlock(&m->cfg_lock);
    return cfg;
}

/* The same with the TLS context built from it. */
static void current_tls(void *arg, struct imf_config **out_cfg, SSL_CTX **out_ctx)
{
    struct imf_main *m = arg;
    uv_mutex_lock(&m->cfg_lock);
    *out_cfg = imf_config_ref(m->cfg);
    SSL_CTX_up_ref(m->ssl_ctx);
    *out_ctx = m->ssl_ctx;
    uv_mutex_unlock(&m->cfg_lock);
}

/* Pools no session can reach under cfg and the route map (NULL: none). */
static void warn_unused_pools(const struct imf_config *cfg, const struct imf_route *route)
{
    for (size_t p = 0; p < cfg->pools_len; p++)
        if (!imf_route_reaches(cfg, route, cfg->pools[p].name))
            imf_warn("backend", "[backend.%s] is used by no route: no session reaches its servers",
                     cfg->pools[p].name);
}

/* Settings that are allowed but weaken something: said at start and at
 * each reload, so that they are not forgotten. */
static void warn_weak_settings(const struct imf_config *cfg)
{
    if (cfg->min_version < TLS1_2_VERSION)
        imf_warn("tls",
                 "[tls] min_version = %s: clients may use TLS %s, which is deprecated "
                 "(RFC 8996); raise it once the old clients are gone",
                 cfg->min_version == TLS1_VERSION ? "1.0" : "1.1",
                 cfg->min_version == TLS1_VERSION ? "1.0 and 1.1" : "1.1");
    if (cfg->legacy_ciphers)
        imf_warn("tls", "[tls] legacy_ciphers = on: CBC cipher suites are offered to clients "
                        "that lack AEAD ones");
    if (cfg->admin_address.len != 0 && cfg->admin_allow_len == 0) {
        struct imf_cidr loopback[2];
        const char *bad;
        size_t bad_len;
        int n = imf_cidr_parse_list("127.0.0.0/8, ::1", loopback, 2, &bad, &bad_len);
        if (n > 0 &&
            !imf_cidr_match(loopback, (size_t)n, (const struct sockaddr *)&cfg->admin_address.ss))
            imf_warn("admin",
                     "[admin] address %s is not a loopback address and allow_from is empty: "
                     "anyone who can reach it may read /metrics",
                     cfg->admin_address.text);
    }
}

/* STATUS= for `systemctl status`: what an operator looks at first. */
static void send_status(struct imf_main *m, const char *prefix)
{
    uint64_t active = 0;
    for (unsigned i = 0; i < m->workers_len; i++)
        active += atomic_load(&m->workers[i].stats.sessions_active);
    struct imf_backend_info info[IMF_BACKEND_MAX];
    size_t n = 0, up = 0;
    for (size_t p = 0; p < m->cfg->pools_len; p++) {
        size_t pn = imf_backend_info(&m->cfg->pools[p], info, IMF_BACKEND_MAX);
        for (size_t i = 0; i < pn; i++)
            up += !info[i].down;
        n += pn;
    }
    char text[256];
    snprintf(text, sizeof(text), "%sSTATUS=%" PRIu64 " session%s open, %zu of %zu backend%s up%s",
             prefix, active, active == 1 ? "" : "s", up, n, n == 1 ? "" : "s",
             m->stopping ? ", draining" : "");
    imf_notify_send(&m->notify, text);
}

static void on_status_timer(uv_timer_t *t)
{
    send_status(t->data, "");
}

static void usage(FILE *f)
{
    fprintf(f, "usage: imapfront -c FILE [-t]\n"
               "  -c FILE  configuration file (proxy.ini)\n"
               "  -t       check the configuration and exit (0 = good, 1 = bad)\n"
               "  -V       print the version and exit\n");
}

static void log_stats(struct imf_main *m)
{
    struct imf_stats_sum t;
    imf_stats_sum(m->workers, m->workers_len, &t);
    imf_info("stats",
             "sessions_active=%" PRIu64 " sessions_total=%" PRIu64 " handshakes_ok=%" PRIu64
             " handshakes_failed=%" PRIu64 " backend_connect_ok=%" PRIu64
             " backend_connect_failed=%" PRIu64 " connections_refused=%" PRIu64
             " chain_bytes=%" PRId64 " chain_links=%" PRId64 " commands_held=%" PRIu64
             " literals_converted=%" PRIu64 " crlf_splits=%" PRIu64 " longest_queue=%" PRIu64,
             t.sessions_active, t.sessions_total, t.handshakes_ok, t.handshakes_failed,
             t.backend_connect_ok, t.backend_connect_failed, t.connections_refused, t.chain_bytes,
             t.chain_links, t.commands_held, t.literals_converted, t.crlf_splits, t.longest_queue);
}

struct unreadable {
    const char *user;
    bool check_only; /* -t: to stderr; else a warning in the log */
};

static void report_unreadable(void *arg, const char *path, int error)
{
    const struct unreadable *u = arg;
    char text[512];
    if (error == -EACCES)
        snprintf(text, sizeof(text), "%s: not readable by user %s; a reload would fail", path,
                 u->user);
    else
        snprintf(text, sizeof(text), "%s: cannot tell whether user %s can read it: %s", path,
                 u->user, strerror(-error));
    if (u->check_only)
        fprintf(stderr, "%s\n", text);
    else
        imf_warn("main", "%s", text);
}

/* [proxy] user: a reload re-reads the config file, certificates and keys
 * as that user. Returns how many of them it cannot read (each reported),
 * or 1 when the user does not exist. */
static size_t check_run_as(const struct imf_config *cfg, bool check_only)
{
    struct imf_runas *ru = malloc(sizeof(*ru));
    if (ru == NULL)
        return 0;
    size_t n = 0;
    int rc = imf_runas_lookup(cfg->user, ru);
    if (rc != 0) {
        /* At start, drop_privileges says so and stops. */
        if (check_only)
            fprintf(stderr, "%s: [proxy] user: no such user: %s\n", cfg->path, cfg->user);
        n = 1;
    } else {
        struct unreadable u = {.user = cfg->user, .check_only = check_only};
        n = imf_runas_check_config(cfg, ru, report_unreadable, &u);
    }
    free(ru);
    return n;
}

/* A key a reload cannot apply changed: the running value stays. */
static void report_restart(void *arg, const char *what, const char *kept)
{
    (void)arg;
    imf_warn("main", "reload: %s changed; that needs a restart; keeping the old value %s", what,
             kept);
}

enum reload_what {
    RELOAD_ALL,   /* SIGHUP: the file and the certificates it names */
    RELOAD_CERTS, /* the certificate files changed: the same file, new certificates */
};

/* A new snapshot for new sessions; running sessions keep theirs. Anything
 * wrong keeps the old. SIGHUP and the certificate watcher both come here. */
static void reload(struct imf_main *m, enum reload_what what)
{
    char err[512];
    struct imf_config *cfg = NULL;
    SSL_CTX *ctx = NULL;
    if (what == RELOAD_CERTS) {
        cfg = imf_config_ref(m->cfg);
    } else if (imf_config_load(m->path, &cfg, err, sizeof(err)) != 0) {
        imf_error("main", "reload failed, the running configuration stays: %s", err);
        return;
    }
    if (imf_tls_ctx_new(cfg, &ctx, err, sizeof(err)) != 0) {
        if (what == RELOAD_CERTS)
            imf_error("tls", "certificate reload failed, the running certificates stay: %s", err);
        else
            imf_error("main", "reload failed, the running configuration stays: %s", err);
        imf_config_unref(cfg);
        /* A file replaced by a rename is a new inode: watch the new ones,
         * so that the next (fixed) version is seen too. */
        imf_certwatch_update(m->certwatch, m->cfg);
        return;
    }
    /* Listening sockets, workers, the admin socket, the ip_prefix_v6 open
     * sessions were counted under, the login table's size and the user are
     * all set once at start: the table flags them (IMF_CF_RESTART). A
     * changed listener refuses the reload; the others keep their running
     * value, so cfg says what actually runs. */
    if (imf_config_restart_keys(m->cfg, cfg, report_restart, NULL, err, sizeof(err)) < 0) {
        imf_error("main",
                  "reload refused, the running configuration stays: %s: %s; restart to apply",
                  m->path, err);
        SSL_CTX_free(ctx);
        imf_config_unref(cfg);
        return;
    }
    imf_log_setup((enum imf_log_level)cfg->log_level, (enum imf_log_format)cfg->log_format);
    if (what == RELOAD_ALL)
        warn_weak_settings(cfg);
    for (unsigned i = 0; i < m->workers_len; i++)
        imf_worker_reload(&m->workers[i], cfg, ctx);
    imf_checker_reload(m->checker, cfg);
    uv_mutex_lock(&m->cfg_lock);
    struct imf_config *old = m->cfg;
    SSL_CTX *old_ctx = m->ssl_ctx;
    m->cfg = cfg;
    m->ssl_ctx = ctx;
    uv_mutex_unlock(&m->cfg_lock);
    imf_config_unref(old);
    SSL_CTX_free(old_ctx);
    imf_certwatch_update(m->certwatch, cfg);
    if (what == RELOAD_CERTS) {
        imf_info("tls", "certificates reloaded from their files; new sessions use them");
    } else {
        imf_info("main", "configuration reloaded from %s; new sessions use it", m->path);
        /* A bad map logs and keeps the running one. */
        const char **pools = pool_names(cfg);
        imf_route_reload(cfg, pools, pools != NULL ? cfg->pools_len : 0);
        free(pools);
        struct imf_route *route = imf_route_current();
        warn_unused_pools(cfg, route);
        imf_route_unref(route);
    }
}

static void on_certs_changed(void *arg)
{
    struct imf_main *m = arg;
    if (!m->stopping)
        reload(m, RELOAD_CERTS);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct imf_main *m = h->data;
    if (signum == SIGUSR1) {
        log_stats(m);
        return;
    }
    if (signum == SIGHUP) {
        if (!m->stopping) {
            char text[96];
            imf_notify_reloading_text(text, sizeof(text));
            imf_notify_send(&m->notify, text);
            reload(m, RELOAD_ALL);
            /* READY=1 also after a failed reload: the old snapshot serves. */
            send_status(m, "READY=1\n");
        }
        return;
    }
    /* The first SIGTERM/SIGINT drains; a second one stops at once. */
    bool now = m->stopping;
    if (!now)
        imf_notify_send(&m->notify, "STOPPING=1");
    m->stopping = true;
    atomic_store(&m->draining, true);
    imf_info("main", "%s: %s", strsignal(signum),
             now ? "stopping now" : "draining (send it again to stop at once)");
    for (unsigned i = 0; i < m->workers_len; i++)
        imf_worker_request_stop(&m->workers[i], now);
}

static void on_worker_done(uv_async_t *a)
{
    struct imf_main *m = a->data;
    /* Sends coalesce: look at every worker's flag, not at the count. */
    for (unsigned i = 0; i < m->workers_len; i++)
        if (!atomic_load(&m->workers[i].finished))
            return;
    uv_close((uv_handle_t *)&m->sig_term, NULL);
    uv_close((uv_handle_t *)&m->sig_int, NULL);
    uv_close((uv_handle_t *)&m->sig_usr1, NULL);
    uv_close((uv_handle_t *)&m->sig_hup, NULL);
    uv_close((uv_handle_t *)&m->workers_done, NULL);
    uv_close((uv_handle_t *)&m->status_timer, NULL);
    imf_certwatch_free(m->certwatch);
    m->certwatch = NULL;
    imf_route_stop();
    imf_checker_stop(m->checker);
}

static int watch_signal(struct imf_main *m, uv_signal_t *h, int signum)
{
    int rc = uv_signal_init(m->loop, h);
    if (rc == 0) {
        h->data = m;
        rc = uv_signal_start(h, on_signal, signum);
    }
    return rc;
}

/* Each session may hold two sockets; add room for listeners, the admin
 * endpoint and the odd file. Raises the soft limit (and the hard one when
 * we may); warns when the limit stays below that. */
static void raise_fd_limit(const struct imf_config *cfg, unsigned workers)
{
    rlim_t need = (rlim_t)cfg->max_connections * 2 + cfg->listeners_len * workers + 64 +
                  (cfg->admin_address.len != 0 ? cfg->admin_max_connections : 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
        return;
    struct rlimit want = {need, rl.rlim_max > need ? rl.rlim_max : need};
    if (setrlimit(RLIMIT_NOFILE, &want) != 0) {
        want.rlim_cur = rl.rlim_max;
        want.rlim_max = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &want);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need)
        imf_warn("main",
                 "open files limit is %llu, below the %llu that max_connections = %u needs; "
                 "raise it (ulimit -n, LimitNOFILE=) or lower max_connections",
                 (unsigned long long)rl.rlim_cur, (unsigned long long)need, cfg->max_connections);
}

/* [proxy] user: drop root once every socket is bound. */
static int drop_privileges(const char *user)
{
    struct passwd *pw = getpwnam(user);
    if (pw == NULL) {
        imf_error("main", "[proxy] user: no such user: %s", user);
        return -1;
    }
    if (getuid() == pw->pw_uid)
        return 0;
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 ||
        setuid(pw->pw_uid) != 0) {
        imf_error("main", "[proxy] user: cannot switch to %s: %s", user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) { /* must be impossible now */
        imf_error("main", "[proxy] user: root privileges could be regained; refusing to run");
        return -1;
    }
    imf_info("main", "running as %s (uid %u)", pw->pw_name, (unsigned)pw->pw_uid);
    return 0;
}

/* Binds every listener for every worker. The first socket of a listener
 * decides the real address (port 0 lets the kernel choose); the other
 * workers bind that same address with SO_REUSEPORT. fds is
 * [worker][listener]. */
static int bind_listeners(struct imf_main *m, int *fds)
{
    const struct imf_config *cfg = m->cfg;
    for (size_t l = 0; l < cfg->listeners_len; l++) {
        const struct imf_listen_config *lc = &cfg->listeners[l];
        struct sockaddr_storage real = lc->address.ss;
        socklen_t real_len = lc->address.len;
        for (unsigned w = 0; w < m->workers_len; w++) {
            int fd = imf_listen_socket((struct sockaddr *)&real, real_len);
            if (fd < 0) {
                imf_error("listener", "cannot listen on %s ([listen.%s] address): %s",
                          lc->address.text, lc->name, strerror(-fd));
                return fd;
            }
            fds[w * cfg->listeners_len + l] = fd;
            if (w == 0) {
                real_len = sizeof(real);
                getsockname(fd, (struct sockaddr *)&real, &real_len);
            }
        }
        char text[80];
        imf_format_sockaddr((const struct sockaddr *)&real, text, sizeof(text));
        imf_log_kv(IMF_LOG_INFO, "listener", "listening", "name", lc->name, "address", text, "mode",
                   imf_listen_mode_names[lc->mode], NULL);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'V':
            printf("imapfront %s (BoringSSL, libuv %s)\n", IMF_VERSION, uv_version_string());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }

    struct imf_main m = {0};
    m.path = path;
    char err[512];
    int rc = imf_config_load(path, &m.cfg, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    imf_log_setup((enum imf_log_level)m.cfg->log_level, (enum imf_log_format)m.cfg->log_format);
    rc = imf_tls_ctx_new(m.cfg, &m.ssl_ctx, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "%s\n", err);
        imf_config_unref(m.cfg);
        return 1;
    }
    if (m.cfg->user != NULL && check_run_as(m.cfg, check_only) != 0 && check_only) {
        SSL_CTX_free(m.ssl_ctx);
        imf_config_unref(m.cfg);
        return 1;
    }
    if (check_only) {
        warn_weak_settings(m.cfg);
        struct imf_route *route = NULL;
        if (imf_route_configured(m.cfg)) {
            struct imf_route_params rp;
            const char **pools = pool_names(m.cfg);
            imf_route_params_from_config(m.cfg, pools, pools != NULL ? m.cfg->pools_len : 0, &rp);
            rc = imf_route_load(&rp, &route, err, sizeof(err));
            free(pools);
            if (rc != 0) {
                fprintf(stderr, "%s\n", err);
                SSL_CTX_free(m.ssl_ctx);
                imf_config_unref(m.cfg);
                return 1;
            }
            if (rp.path != NULL)
                printf("route map %s: %zu entries\n", rp.path, imf_route_count(route));
        }
        warn_unused_pools(m.cfg, route);
        imf_route_unref(route);
        printf("%s: configuration ok\n", path);
        SSL_CTX_free(m.ssl_ctx);
        imf_config_unref(m.cfg);
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    rc = imf_notify_open(&m.notify);
    if (rc != 0)
        imf_warn("main", "NOTIFY_SOCKET: cannot notify the service manager: %s", strerror(-rc));
    imf_iplimit_set_prefix_v6(m.cfg->ip_prefix_v6);
    if (imf_throttle_setup(m.cfg->login_max_tracked) != 0) {
        imf_error("main", "[login] max_tracked: no memory for %u records",
                  m.cfg->login_max_tracked);
        return 1;
    }
    m.loop = uv_default_loop();
    m.workers_len = m.cfg->workers != 0 ? m.cfg->workers : uv_available_parallelism();
    if (m.workers_len == 0)
        m.workers_len = 1;
    m.workers = calloc(m.workers_len, sizeof(*m.workers));
    int *fds = calloc(m.workers_len * m.cfg->listeners_len, sizeof(int));
    if (m.workers == NULL || fds == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < m.workers_len * m.cfg->listeners_len; i++)
        fds[i] = -1;
    raise_fd_limit(m.cfg, m.workers_len);
    /* Before anything says "listening": from then on a supervisor may send
     * SIGHUP or SIGUSR1, whose default action would end the process. The
     * callbacks run only once the loop runs, after the set-up below. */
    if (watch_signal(&m, &m.sig_term, SIGTERM) != 0 || watch_signal(&m, &m.sig_int, SIGINT) != 0 ||
        watch_signal(&m, &m.sig_usr1, SIGUSR1) != 0 || watch_signal(&m, &m.sig_hup, SIGHUP) != 0) {
        imf_error("main", "cannot install signal handlers");
        return 1;
    }
    rc = bind_listeners(&m, fds);
    if (rc != 0)
        return 1;
    if (uv_async_init(m.loop, &m.workers_done, on_worker_done) != 0) {
        imf_error("main", "cannot set up the main loop");
        return 1;
    }
    m.workers_done.data = &m;
    for (unsigned w = 0; w < m.workers_len; w++) {
        rc = imf_worker_init(&m.workers[w], w, m.cfg, m.ssl_ctx, fds + w * m.cfg->listeners_len);
        if (rc != 0) {
            imf_error("worker", "cannot start worker %u: %s", w, uv_strerror(rc));
            return 1;
        }
        m.workers[w].done = &m.workers_done;
    }
    free(fds);
    uv_mutex_init(&m.cfg_lock);
    if (m.cfg->admin_address.len != 0) {
        m.admin_view = (struct imf_admin_view){.workers = m.workers,
                                               .workers_len = m.workers_len,
                                               .config_ref = current_config,
                                               .tls_ref = current_tls,
                                               .arg = &m,
                                               .draining = &m.draining};
        if (imf_admin_start(m.cfg, &m.admin_view, &m.admin, err, sizeof(err)) != 0) {
            imf_error("admin", "%s: %s", path, err);
            return 1;
        }
    }
    if (m.cfg->user != NULL && drop_privileges(m.cfg->user) != 0)
        return 1;
    for (unsigned w = 0; w < m.workers_len; w++) {
        rc = imf_worker_start(&m.workers[w]);
        if (rc != 0) {
            imf_error("worker", "cannot start worker thread %u: %s", w, uv_strerror(rc));
            return 1;
        }
    }
    rc = imf_checker_start(m.loop, m.cfg, &m.checker);
    if (rc != 0) {
        imf_error("backend", "cannot start the health checks: %s", uv_strerror(rc));
        return 1;
    }
    rc = imf_certwatch_new(m.loop, on_certs_changed, &m, &m.certwatch);
    if (rc != 0) {
        imf_error("tls", "cannot watch the certificate files: %s", uv_strerror(rc));
        return 1;
    }
    imf_certwatch_update(m.certwatch, m.cfg);
    const char **pools = pool_names(m.cfg);
    rc = imf_route_start(m.loop, m.cfg, pools, pools != NULL ? m.cfg->pools_len : 0, err,
                         sizeof(err));
    free(pools);
    if (rc != 0) {
        imf_error("route", "%s", err);
        return 1;
    }
    struct imf_route *route = imf_route_current();
    warn_unused_pools(m.cfg, route);
    imf_route_unref(route);
    uv_timer_init(m.loop, &m.status_timer);
    m.status_timer.data = &m;
    if (imf_notify_enabled(&m.notify))
        uv_timer_start(&m.status_timer, on_status_timer, IMF_NOTIFY_STATUS_MS,
                       IMF_NOTIFY_STATUS_MS);
    warn_weak_settings(m.cfg);
    for (size_t p = 0; p < m.cfg->pools_len; p++)
        if (m.cfg->pools[p].literal_crlf_split && m.cfg->pools[p].pipelining)
            imf_warn("main",
                     "pool %s: literal_crlf_split works only with pipelining = off: a "
                     "backend busy with earlier commands reads the two writes at once",
                     m.cfg->pools[p].name);
    imf_info("main", "imapfront %s started: %u worker%s, backend %s", IMF_VERSION, m.workers_len,
             m.workers_len == 1 ? "" : "s",
             imf_config_pool(m.cfg, IMF_POOL_DEFAULT)->servers[0].text);
    send_status(&m, "READY=1\n");
    uv_run(m.loop, UV_RUN_DEFAULT);
    imf_admin_stop(m.admin);
    for (unsigned w = 0; w < m.workers_len; w++)
        imf_worker_join(&m.workers[w]);
    uv_mutex_destroy(&m.cfg_lock);
    free(m.workers);
    SSL_CTX_free(m.ssl_ctx);
    imf_config_unref(m.cfg);
    uv_loop_close(m.loop);
    imf_notify_close(&m.notify);
    imf_info("main", "stopped");
    return 0;
}
