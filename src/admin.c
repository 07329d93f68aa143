/* admin: see include/imapfront/admin.h. */
#include "imapfront/admin.h"

#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/backend.h"
#include "imapfront/log.h"
#include "imapfront/route.h"
#include "imapfront/netaddr.h"

struct imf_admin {
    struct MHD_Daemon *daemon;
    const struct imf_admin_view *view;
    /* Refusals are logged at most once a second (a scan or a flood must
     * not flood the log too); the others are counted in the next line. */
    _Atomic uint64_t refused_unlogged;
    _Atomic uint64_t refused_logged_ms;
};

/* [admin] allow_from: MHD asks before it reads a byte; a client outside
 * the ranges is disconnected at once. Read from the current snapshot, so
 * a reload changes it. */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct imf_admin *a = cls;
    (void)addrlen;
    struct imf_config *cfg = a->view->config_ref(a->view->arg);
    bool ok =
        cfg->admin_allow_len == 0 || imf_cidr_match(cfg->admin_allow, cfg->admin_allow_len, addr);
    imf_config_unref(cfg);
    if (ok)
        return MHD_YES;
    uint64_t now = imf_clock_ms();
    uint64_t last = atomic_load(&a->refused_logged_ms);
    if ((last == 0 || now - last >= 1000) &&
        atomic_compare_exchange_strong(&a->refused_logged_ms, &last, now == 0 ? 1 : now)) {
        char peer[80];
        imf_format_sockaddr(addr, peer, sizeof(peer));
        uint64_t more = atomic_exchange(&a->refused_unlogged, 0);
        char extra[64] = "";
        if (more != 0)
            snprintf(extra, sizeof(extra), "%" PRIu64, more);
        imf_log_kv(IMF_LOG_WARN, "admin", "connection refused", "client", peer, "reason",
                   "not in [admin] allow_from", more != 0 ? "also_refused" : NULL, extra, NULL);
    } else {
        atomic_fetch_add(&a->refused_unlogged, 1);
    }
    return MHD_NO;
}

bool imf_admin_ready(const struct imf_admin_view *view)
{
    if (atomic_load(view->draining))
        return false;
    /* Ready when every pool sessions can reach has a server up. */
    struct imf_config *cfg = view->config_ref(view->arg);
    struct imf_route *route = imf_route_current();
    bool up = true;
    for (size_t p = 0; p < cfg->pools_len && up; p++)
        if (imf_route_reaches(cfg, route, cfg->pools[p].name))
            up = imf_backend_any_up(&cfg->pools[p]);
    imf_route_unref(route);
    imf_config_unref(cfg);
    return up;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len, bool owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        if (owned)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct imf_admin *a = cls;
    static const char text[] = "text/plain; charset=utf-8";
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        static char msg[] = "method not allowed\n";
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, msg, sizeof(msg) - 1, false);
    }
    /* A request with a body is not one of ours (MHD hands the body over in
     * later calls; the headers already say it is coming). */
    if (*upload_data_size != 0 ||
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH) != NULL ||
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) !=
            NULL) {
        static char msg[] = "bad request: no body expected\n";
        *upload_data_size = 0;
        struct MHD_Response *r =
            MHD_create_response_from_buffer(sizeof(msg) - 1, msg, MHD_RESPMEM_PERSISTENT);
        if (r == NULL)
            return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_BAD_REQUEST, r);
        MHD_destroy_response(r);
        return rc;
    }
    if (strcmp(url, "/metrics") == 0) {
        size_t len;
        char *body = imf_metrics_render(a->view, &len);
        if (body == NULL) {
            static char msg[] = "out of memory\n";
            return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, text, msg, sizeof(msg) - 1, false);
        }
        return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len, true);
    }
    if (strcmp(url, "/healthz") == 0) {
        static char msg[] = "ok\n";
        return reply(c, MHD_HTTP_OK, text, msg, sizeof(msg) - 1, false);
    }
    if (strcmp(url, "/readyz") == 0) {
        static char ok[] = "ready\n";
        static char no[] = "not ready\n";
        if (imf_admin_ready(a->view))
            return reply(c, MHD_HTTP_OK, text, ok, sizeof(ok) - 1, false);
        return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, text, no, sizeof(no) - 1, false);
    }
    static char msg[] = "not found\n";
    return reply(c, MHD_HTTP_NOT_FOUND, text, msg, sizeof(msg) - 1, false);
}

int imf_admin_start(const struct imf_config *cfg, const struct imf_admin_view *view,
                    struct imf_admin **out_admin, char *err, size_t err_len)
{
    const struct imf_sockaddr *addr = &cfg->admin_address;
    struct imf_admin *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, err_len, "out of memory");
        return -ENOMEM;
    }
    a->view = view;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (addr->ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* A small memory limit per connection: a request with oversized
     * headers is refused by MHD and the connection closed. One thread
     * polls every connection, so sockets that send half a request and
     * wait cost a slot each but never stall the others; the limit bounds
     * the slots and the timeout frees them. Both are read at start only. */
    a->daemon =
        MHD_start_daemon(flags, 0, accept_policy, a, on_request, a, MHD_OPTION_SOCK_ADDR,
                         (const struct sockaddr *)&addr->ss, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)cfg->admin_max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                         (unsigned)((cfg->admin_timeout_ms + 999) / 1000),
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384, MHD_OPTION_END);
    if (a->daemon == NULL) {
        snprintf(err, err_len, "[admin] address: cannot listen on %s", addr->text);
        free(a);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_BIND_PORT);
    char where[160];
    snprintf(where, sizeof(where), "%s", addr->text);
    if (info != NULL) {
        /* With port 0 the kernel chose: log the real one. */
        char *colon = strrchr(where, ':');
        if (colon != NULL)
            snprintf(colon + 1, sizeof(where) - (size_t)(colon + 1 - where), "%u",
                     (unsigned)info->port);
    }
    imf_log_kv(IMF_LOG_INFO, "admin", "listening", "address", where, NULL);
    *out_admin = a;
    return 0;
}

void imf_admin_stop(struct imf_admin *a)
{
    if (a == NULL)
        return;
    MHD_stop_daemon(a->daemon);
    free(a);
}
