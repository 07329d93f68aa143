/* metrics: the Prometheus text exposition of the workers' counters. Read
 * from the admin thread: every value is an atomic load; sums over workers
 * may mix instants a few microseconds apart, which scraping tolerates. */
#include <inttypes.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imapfront/admin.h"
#include "imapfront/backend.h"
#include "imapfront/gate.h"
#include "imapfront/session.h"
#include "imapfront/stats.h"
#include "imapfront/store.h"
#include "imapfront/throttle.h"
#include "imapfront/tls.h"

struct out {
    char *buf;
    size_t len, cap;
    bool failed;
};

static void emit(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(struct out *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = true;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *nb = realloc(o->buf, cap);
        if (nb == NULL) {
            o->failed = true;
            return;
        }
        o->buf = nb;
        o->cap = cap;
    }
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
    emit(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values here are our own names, addresses and BoringSSL's cipher
 * names: none has a quote, backslash or newline, but escape anyway. */
static const char *label(const char *v, char *buf, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; v[i] != '\0' && j + 3 < len; i++) {
        if (v[i] == '"' || v[i] == '\\') {
            buf[j++] = '\\';
            buf[j++] = v[i];
        } else if (v[i] == '\n') {
            buf[j++] = '\\';
            buf[j++] = 'n';
        } else {
            buf[j++] = v[i];
        }
    }
    buf[j] = '\0';
    return buf;
}

static void scalar(struct out *o, const char *name, const char *type, const char *help, uint64_t v)
{
    head(o, name, type, help);
    emit(o, "%s %" PRIu64 "\n", name, v);
}

/* A counter of struct imf_listener (at offset off), summed over workers,
 * one line per listener. */
static void per_listener(struct out *o, const struct imf_admin_view *view,
                         const struct imf_config *cfg, const char *name, const char *type,
                         const char *help, size_t off)
{
    char l1[256];
    head(o, name, type, help);
    /* Every worker has the same sockets, in the same order (the start's:
     * a reload may reorder the sections, never change the set). */
    (void)cfg;
    size_t len = view->workers_len > 0 ? view->workers[0].listeners_len : 0;
    for (size_t li = 0; li < len; li++) {
        uint64_t n = 0;
        for (unsigned w = 0; w < view->workers_len; w++)
            if (li < view->workers[w].listeners_len)
                n += atomic_load(
                    (_Atomic uint64_t *)((char *)&view->workers[w].listeners[li] + off));
        emit(o, "%s{listener=\"%s\"} %" PRIu64 "\n", name,
             label(view->workers[0].listeners[li].name, l1, sizeof(l1)), n);
    }
}

char *imf_metrics_render(const struct imf_admin_view *view, size_t *out_len)
{
    struct out o = {.cap = 16384};
    o.buf = malloc(o.cap);
    if (o.buf == NULL)
        return NULL;
    char l1[256], l2[256];
    struct imf_config *cfg = view->config_ref(view->arg);
    struct imf_stats_sum *t = malloc(sizeof(*t));
    if (t == NULL) {
        imf_config_unref(cfg);
        free(o.buf);
        return NULL;
    }
    imf_stats_sum(view->workers, view->workers_len, t);

    per_listener(&o, view, cfg, "imapfront_sessions_active", "gauge",
                 "Client sessions open now, per listener.",
                 offsetof(struct imf_listener, sessions_active));
    per_listener(&o, view, cfg, "imapfront_sessions_total", "counter",
                 "Client sessions accepted, per listener.",
                 offsetof(struct imf_listener, sessions_total));
    scalar(&o, "imapfront_client_bytes_received_total", "counter",
           "Plaintext bytes received from clients.", t->bytes_from_clients);
    scalar(&o, "imapfront_client_bytes_sent_total", "counter", "Plaintext bytes sent to clients.",
           t->bytes_to_clients);
    scalar(&o, "imapfront_connections_refused_total", "counter",
           "Connections refused by max_connections or max_connections_per_ip.",
           t->connections_refused);

    scalar(&o, "imapfront_tls_handshakes_total", "counter", "TLS handshakes completed.",
           t->handshakes_ok);
    head(&o, "imapfront_tls_handshake_failures_total", "counter",
         "TLS handshakes that failed, by reason.");
    for (int r = 0; r < IMF_TLS_FAIL_COUNT; r++)
        emit(&o, "imapfront_tls_handshake_failures_total{reason=\"%s\"} %" PRIu64 "\n",
             imf_tls_failure_names[r], t->handshake_failures[r]);
    head(&o, "imapfront_tls_sessions_total", "counter",
         "TLS sessions established, by protocol version and cipher.");
    for (unsigned w = 0; w < view->workers_len; w++) {
        /* Per worker: the same pair may appear once per worker; Prometheus
         * wants one line per label set, so only the first worker having
         * a pair prints it, with the sum over all workers. */
        const struct imf_worker_stats *st = &view->workers[w].stats;
        unsigned n = atomic_load_explicit(&st->tls_kinds_len, memory_order_acquire);
        for (unsigned k = 0; k < n; k++) {
            const char *ver = st->tls_kinds[k].version, *ciph = st->tls_kinds[k].cipher;
            bool seen = false;
            for (unsigned pw = 0; pw < w && !seen; pw++) {
                const struct imf_worker_stats *ps = &view->workers[pw].stats;
                unsigned pn = atomic_load_explicit(&ps->tls_kinds_len, memory_order_acquire);
                for (unsigned pk = 0; pk < pn; pk++)
                    if (ps->tls_kinds[pk].version == ver && ps->tls_kinds[pk].cipher == ciph)
                        seen = true;
            }
            if (seen)
                continue;
            uint64_t sum = 0;
            for (unsigned aw = w; aw < view->workers_len; aw++) {
                const struct imf_worker_stats *as = &view->workers[aw].stats;
                unsigned an = atomic_load_explicit(&as->tls_kinds_len, memory_order_acquire);
                for (unsigned ak = 0; ak < an; ak++)
                    if (as->tls_kinds[ak].version == ver && as->tls_kinds[ak].cipher == ciph)
                        sum += atomic_load(&as->tls_kinds[ak].sessions);
            }
            emit(&o, "imapfront_tls_sessions_total{version=\"%s\",cipher=\"%s\"} %" PRIu64 "\n",
                 label(ver, l1, sizeof(l1)), label(ciph, l2, sizeof(l2)), sum);
        }
    }

    if (view->tls_ref != NULL) {
        struct imf_config *tcfg;
        SSL_CTX *ctx;
        view->tls_ref(view->arg, &tcfg, &ctx);
        size_t max = 1 + tcfg->certs_len;
        struct imf_tls_cert_info *ci = calloc(max, sizeof(*ci));
        if (ci == NULL) {
            o.failed = true;
        } else {
            size_t n = imf_tls_ctx_certs(ctx, tcfg, ci, max);
            head(&o, "imapfront_certificate_expiry_timestamp_seconds", "gauge",
                 "notAfter of each certificate served, in seconds since the epoch.");
            for (size_t i = 0; i < n; i++)
                emit(&o,
                     "imapfront_certificate_expiry_timestamp_seconds{certificate=\"%s\","
                     "file=\"%s\"} %" PRId64 "\n",
                     label(ci[i].name, l1, sizeof(l1)), label(ci[i].file, l2, sizeof(l2)),
                     ci[i].not_after);
            free(ci);
        }
        SSL_CTX_free(ctx);
        imf_config_unref(tcfg);
    }

    /* Servers of every pool, each labelled with its pool. */
    size_t nb = 0, cap = cfg->pools_len * IMF_BACKEND_MAX;
    bool any_check = false;
    struct imf_backend_info *info = calloc(cap > 0 ? cap : 1, sizeof(*info));
    for (size_t p = 0; info != NULL && p < cfg->pools_len; p++) {
        nb += imf_backend_info(&cfg->pools[p], info + nb, cap - nb);
        any_check |= cfg->pools[p].check != IMF_CHECK_OFF;
    }
    head(&o, "imapfront_backend_connects_total", "counter",
         "Connects to backend servers, by server and result.");
    for (size_t i = 0; i < nb; i++) {
        label(info[i].address, l1, sizeof(l1));
        label(info[i].pool, l2, sizeof(l2));
        emit(&o,
             "imapfront_backend_connects_total{pool=\"%s\",server=\"%s\",result=\"ok\"} %" PRIu64
             "\n",
             l2, l1, info[i].connects_ok);
        emit(
            &o,
            "imapfront_backend_connects_total{pool=\"%s\",server=\"%s\",result=\"failed\"} %" PRIu64
            "\n",
            l2, l1, info[i].connects_failed);
    }
    head(&o, "imapfront_backend_up", "gauge",
         "1 unless the server is out of rotation (failed connects or failed checks).");
    for (size_t i = 0; i < nb; i++)
        emit(&o, "imapfront_backend_up{pool=\"%s\",server=\"%s\"} %d\n",
             label(info[i].pool, l2, sizeof(l2)), label(info[i].address, l1, sizeof(l1)),
             info[i].down ? 0 : 1);
    head(&o, "imapfront_backend_profile", "gauge",
         "1 for what the server's greeting showed it to be (quirks = auto picks its shields).");
    for (size_t i = 0; i < nb; i++) {
        if (info[i].profile <= 0 || info[i].profile >= IMF_PROFILE_COUNT)
            continue;
        emit(&o, "imapfront_backend_profile{pool=\"%s\",server=\"%s\",profile=\"%s\"} 1\n",
             label(info[i].pool, l2, sizeof(l2)), label(info[i].address, l1, sizeof(l1)),
             imf_gate_profile_names[info[i].profile]);
    }
    /* Admission control: one gauge or counter per server each. */
    static const struct {
        const char *name, *type, *help;
    } adm[] = {
        {"imapfront_backend_sessions", "gauge",
         "Backend connections open or opening (max_sessions)."},
        {"imapfront_backend_connecting", "gauge", "Connects in progress (max_connecting)."},
        {"imapfront_backend_queue_length", "gauge", "Sessions waiting for a slot of the server."},
        {"imapfront_backend_queue_waits_total", "counter", "Sessions admitted after waiting."},
        {"imapfront_backend_queue_wait_seconds_total", "counter",
         "Time those sessions waited, summed."},
        {"imapfront_backend_queue_timeouts_total", "counter",
         "Sessions that waited queue_timeout and were told the server is busy."},
        {"imapfront_backend_warming", "gauge",
         "1 while connect_rate applies (after a start, or back from down)."},
    };
    for (size_t k = 0; k < sizeof(adm) / sizeof(adm[0]); k++) {
        head(&o, adm[k].name, adm[k].type, adm[k].help);
        for (size_t i = 0; i < nb; i++) {
            const struct imf_backend_info *b = &info[i];
            label(b->address, l1, sizeof(l1));
            label(b->pool, l2, sizeof(l2));
            if (k == 4) {
                emit(&o, "%s{pool=\"%s\",server=\"%s\"} %.3f\n", adm[k].name, l2, l1,
                     (double)b->queue_wait_ms / 1e3);
                continue;
            }
            uint64_t v = k == 0   ? b->sessions
                         : k == 1 ? b->connecting
                         : k == 2 ? b->queued
                         : k == 3 ? b->queue_waits
                         : k == 5 ? b->queue_timeouts
                                  : (uint64_t)b->warming;
            emit(&o, "%s{pool=\"%s\",server=\"%s\"} %" PRIu64 "\n", adm[k].name, l2, l1, v);
        }
    }
    if (any_check) {
        head(&o, "imapfront_backend_checks_total", "counter",
             "Active health checks of backend servers, by server and result.");
        for (size_t i = 0; i < nb; i++) {
            label(info[i].address, l1, sizeof(l1));
            label(info[i].pool, l2, sizeof(l2));
            emit(&o,
                 "imapfront_backend_checks_total{pool=\"%s\",server=\"%s\",result=\"ok\"} %" PRIu64
                 "\n",
                 l2, l1, info[i].checks_ok);
            emit(&o,
                 "imapfront_backend_checks_total{pool=\"%s\",server=\"%s\",result=\"failed\"} "
                 "%" PRIu64 "\n",
                 l2, l1, info[i].checks_failed);
        }
        head(&o, "imapfront_backend_check_failing", "gauge",
             "1 while the server is out of rotation because its checks fail.");
        for (size_t i = 0; i < nb; i++)
            emit(&o, "imapfront_backend_check_failing{pool=\"%s\",server=\"%s\"} %d\n",
                 label(info[i].pool, l2, sizeof(l2)), label(info[i].address, l1, sizeof(l1)),
                 info[i].check_down ? 1 : 0);
        head(&o, "imapfront_backend_check_seconds", "gauge",
             "How long the server's last check took.");
        for (size_t i = 0; i < nb; i++)
            emit(&o, "imapfront_backend_check_seconds{pool=\"%s\",server=\"%s\"} %.6f\n",
                 label(info[i].pool, l2, sizeof(l2)), label(info[i].address, l1, sizeof(l1)),
                 (double)info[i].check_us / 1e6);
    }

    free(info);

    head(&o, "imapfront_chain_bytes", "gauge", "Bytes held in buffer chains.");
    emit(&o, "imapfront_chain_bytes %" PRId64 "\n", t->chain_bytes);
    head(&o, "imapfront_chain_links", "gauge", "Buffer blocks held in chains.");
    emit(&o, "imapfront_chain_links %" PRId64 "\n", t->chain_links);

    head(&o, "imapfront_logins_total", "counter",
         "Login attempts (LOGIN, AUTHENTICATE) by result and mechanism.");
    for (unsigned r = 0; r < IMF_LOGIN_RESULT_COUNT; r++)
        for (unsigned m = 0; m < IMF_MECH_COUNT; m++)
            emit(&o, "imapfront_logins_total{result=\"%s\",mechanism=\"%s\"} %" PRIu64 "\n",
                 imf_login_result_names[r], imf_stats_mech_names[m], t->logins[r][m]);
    scalar(&o, "imapfront_logins_delayed_total", "counter",
           "Failed logins whose answer the throttle delayed.", t->logins_delayed);
    uint64_t records, bans, capacity;
    imf_throttle_stats(imf_clock_ms(), &records, &bans, &capacity);
    scalar(&o, "imapfront_login_tracked", "gauge",
           "Addresses and (address, user) pairs the login throttle tracks.", records);
    scalar(&o, "imapfront_login_tracked_capacity", "gauge",
           "Most records the throttle keeps (oldest evicted beyond).", capacity);
    scalar(&o, "imapfront_login_bans", "gauge",
           "Records under a ban now (logins refused by the proxy itself).", bans);
    bool store_set, store_up;
    uint64_t store_errors;
    imf_store_stats(&store_set, &store_up, &store_errors);
    if (store_set) {
        scalar(&o, "imapfront_login_store_up", "gauge",
               "1 when every worker reaches the [login] store, 0 while failures are counted "
               "locally.",
               store_up ? 1 : 0);
        scalar(&o, "imapfront_login_store_errors_total", "counter",
               "Connections to the [login] store that failed or were lost, and refused or "
               "unanswered commands.",
               store_errors);
    }

    scalar(&o, "imapfront_shield_commands_held_total", "counter",
           "Commands held back because one was in flight (pipelining = off).", t->commands_held);
    scalar(&o, "imapfront_shield_literals_converted_total", "counter",
           "Non-synchronising literals sent as synchronising (literal_plus = sync).",
           t->literals_converted);
    scalar(&o, "imapfront_shield_crlf_splits_total", "counter",
           "Literal ends written apart from what follows (literal_crlf_split = on).",
           t->crlf_splits);
    scalar(&o, "imapfront_shield_crlf_split_timeouts_total", "counter",
           "Splits that sent what follows without seeing the backend read the literal's end.",
           t->crlf_split_timeouts);
    scalar(&o, "imapfront_shield_longest_queue_bytes", "gauge",
           "Most bytes seen queued behind a held command.", t->longest_queue);

    head(&o, "imapfront_compress_bytes_total", "counter",
         "COMPRESS=DEFLATE at the proxy: bytes by direction, compressed (wire) and not (plain).");
    emit(&o, "imapfront_compress_bytes_total{direction=\"in\",stage=\"wire\"} %" PRIu64 "\n",
         t->compress_in_wire);
    emit(&o, "imapfront_compress_bytes_total{direction=\"in\",stage=\"plain\"} %" PRIu64 "\n",
         t->compress_in_plain);
    emit(&o, "imapfront_compress_bytes_total{direction=\"out\",stage=\"plain\"} %" PRIu64 "\n",
         t->compress_out_plain);
    emit(&o, "imapfront_compress_bytes_total{direction=\"out\",stage=\"wire\"} %" PRIu64 "\n",
         t->compress_out_wire);

    head(&o, "imapfront_command_duration_seconds", "histogram",
         "Time from a command's first line to its tagged completion, by command name.");
    for (int c = 0; c < IMF_TCMD_COUNT; c++) {
        uint64_t cum = 0;
        for (int b = 0; b <= IMF_LAT_BUCKETS; b++) {
            cum += t->lat_buckets[c][b];
            if (b < IMF_LAT_BUCKETS)
                emit(&o,
                     "imapfront_command_duration_seconds_bucket{command=\"%s\",le=\"%g\"} "
                     "%" PRIu64 "\n",
                     imf_tcmd_names[c], (double)imf_lat_bounds_us[b] / 1e6, cum);
            else
                emit(&o,
                     "imapfront_command_duration_seconds_bucket{command=\"%s\",le=\"+Inf\"} "
                     "%" PRIu64 "\n",
                     imf_tcmd_names[c], cum);
        }
        emit(&o, "imapfront_command_duration_seconds_sum{command=\"%s\"} %.6f\n", imf_tcmd_names[c],
             (double)t->lat_sum_us[c] / 1e6);
        emit(&o, "imapfront_command_duration_seconds_count{command=\"%s\"} %" PRIu64 "\n",
             imf_tcmd_names[c], cum);
    }
    head(&o, "imapfront_anomalies_total", "counter",
         "Odd things seen on the stream (never changed by them), by kind.");
    for (int a = 0; a < IMF_ANOMALY_COUNT; a++)
        emit(&o, "imapfront_anomalies_total{kind=\"%s\"} %" PRIu64 "\n", imf_anomaly_names[a],
             t->anomalies[a]);

    head(&o, "imapfront_session_closes_total", "counter", "Sessions ended, by reason.");
    for (int r = 1; r < IMF_CLOSE_REASON_COUNT; r++)
        emit(&o, "imapfront_session_closes_total{reason=\"%s\"} %" PRIu64 "\n",
             imf_close_reason_names[r], t->closes[r]);

    scalar(&o, "imapfront_workers", "gauge", "Worker threads.", view->workers_len);
    scalar(&o, "imapfront_draining", "gauge", "1 while shutting down.",
           atomic_load(view->draining) ? 1 : 0);
    imf_config_unref(cfg);
    free(t);
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    *out_len = o.len;
    return o.buf;
}
