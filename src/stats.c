/* stats: see include/imapfront/stats.h. */
#include "imapfront/stats.h"

#include <string.h>

#include "imapfront/worker.h"

static uint64_t load(const _Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void add_array(uint64_t *sum, const _Atomic uint64_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sum[i] += load(&c[i]);
}

void imf_stats_sum(const struct imf_worker *workers, size_t n, struct imf_stats_sum *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t w = 0; w < n; w++) {
        const struct imf_worker_stats *st = &workers[w].stats;
        out->sessions_active += load(&st->sessions_active);
        out->sessions_total += load(&st->sessions_total);
        out->handshakes_ok += load(&st->handshakes_ok);
        out->handshakes_failed += load(&st->handshakes_failed);
        out->backend_connect_ok += load(&st->backend_connect_ok);
        out->backend_connect_failed += load(&st->backend_connect_failed);
        out->bytes_from_clients += load(&st->bytes_from_clients);
        out->bytes_to_clients += load(&st->bytes_to_clients);
        out->connections_refused += load(&st->connections_refused);
        out->commands_held += load(&st->commands_held);
        out->literals_converted += load(&st->literals_converted);
        out->crlf_splits += load(&st->crlf_splits);
        uint64_t longest = load(&st->longest_queue);
        if (longest > out->longest_queue)
            out->longest_queue = longest;
        out->crlf_split_timeouts += load(&st->crlf_split_timeouts);
        out->compress_in_wire += load(&st->compress_in_wire);
        out->compress_in_plain += load(&st->compress_in_plain);
        out->compress_out_plain += load(&st->compress_out_plain);
        out->compress_out_wire += load(&st->compress_out_wire);
        for (size_t r = 0; r < IMF_STATS_LOGIN_RESULTS; r++)
            add_array(out->logins[r], st->logins[r], IMF_MECH_COUNT);
        out->logins_delayed += load(&st->logins_delayed);
        add_array(out->closes, st->closes, IMF_CLOSE_REASON_COUNT);
        add_array(out->handshake_failures, st->handshake_failures, IMF_TLS_FAIL_COUNT);
        for (size_t c = 0; c < IMF_TCMD_COUNT; c++)
            add_array(out->lat_buckets[c], st->telemetry.lat_buckets[c], IMF_LAT_BUCKETS + 1);
        add_array(out->lat_sum_us, st->telemetry.lat_sum_us, IMF_TCMD_COUNT);
        add_array(out->anomalies, st->telemetry.anomalies, IMF_ANOMALY_COUNT);
        out->chain_bytes += atomic_load_explicit(&st->chain.bytes, memory_order_relaxed);
        out->chain_links += atomic_load_explicit(&st->chain.links, memory_order_relaxed);
    }
}
