/* admin: the operator's HTTP endpoint (GNU libmicrohttpd, its own thread):
 * GET /metrics (Prometheus text format), /healthz (the process answers),
 * /readyz (listening and at least one backend reachable). Anything else is
 * 404; requests MHD cannot parse or that exceed its memory limit are
 * refused by MHD with a 4xx and the connection is closed. */
#ifndef IMAPFRONT_ADMIN_H
#define IMAPFRONT_ADMIN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "imapfront/config.h"
#include "imapfront/worker.h"

/* What the admin thread may look at. */
struct imf_admin_view {
    struct imf_worker *workers;
    unsigned workers_len;
    /* Returns the current snapshot with a reference the caller drops. */
    struct imf_config *(*config_ref)(void *arg);
    /* The current snapshot and the TLS context built from it, both
     * referenced (imf_config_unref, SSL_CTX_free). NULL: no TLS metrics. */
    void (*tls_ref)(void *arg, struct imf_config **out_cfg, SSL_CTX **out_ctx);
    void *arg;
    const _Atomic bool *draining;
};

struct imf_admin;

/* Starts serving on cfg's [admin] address, with its connection limit and
 * timeout (read now: a reload does not change them) and its allow_from
 * (read from view's current snapshot at each connection). Returns 0 or a
 * negative errno with err set. The view must outlive the server. */
int imf_admin_start(const struct imf_config *cfg, const struct imf_admin_view *view,
                    struct imf_admin **out_admin, char *err, size_t err_len);
void imf_admin_stop(struct imf_admin *a);

/* The /metrics text for view, malloc'd (the caller frees); NULL on no
 * memory. */
char *imf_metrics_render(const struct imf_admin_view *view, size_t *out_len);

/* /readyz's answer. */
bool imf_admin_ready(const struct imf_admin_view *view);

#endif
