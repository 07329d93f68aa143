/* stats: why sessions end and the counters each worker keeps, and their
 * sum over workers (for the SIGUSR1 line and /metrics). Workers write
 * their own counters; any thread may read them. */
#ifndef IMAPFRONT_STATS_H
#define IMAPFRONT_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "imapfront/chain.h"
#include "imapfront/telemetry.h"
#include "imapfront/tls.h"

enum imf_close_reason {
    IMF_CLOSE_NONE,
    IMF_CLOSE_LOGOUT,
    IMF_CLOSE_CLIENT_EOF,
    IMF_CLOSE_BACKEND_EOF,
    IMF_CLOSE_BACKEND_UNAVAILABLE,
    IMF_CLOSE_HANDSHAKE_FAILED,
    IMF_CLOSE_HANDSHAKE_TIMEOUT,
    IMF_CLOSE_LINE_TOO_LONG,
    IMF_CLOSE_LITERAL_MALFORMED,
    IMF_CLOSE_LITERAL_TOO_BIG,
    IMF_CLOSE_TLS_ERROR,
    IMF_CLOSE_CLIENT_ERROR,
    IMF_CLOSE_BACKEND_ERROR,
    IMF_CLOSE_SHUTDOWN,
    IMF_CLOSE_NO_MEMORY,
    IMF_CLOSE_REFUSED,
    IMF_CLOSE_PREAUTH_TIMEOUT,
    IMF_CLOSE_IDLE_TIMEOUT,
    IMF_CLOSE_PROXY_PROTOCOL,
    IMF_CLOSE_NO_RESOURCES, /* the proxy ran out of descriptors connecting to the backend */
    IMF_CLOSE_BACKEND_BUSY, /* waited queue_timeout for a slow or full backend */
    IMF_CLOSE_REASON_COUNT
};
/* Defined in session.c, which alone sets reasons. */
extern const char *const imf_close_reason_names[IMF_CLOSE_REASON_COUNT];

#define IMF_STATS_TLS_KINDS_MAX 16

/* Sessions established per TLS version and cipher (a handful of pairs). */
struct imf_tls_kind {
    const char *version; /* static strings from BoringSSL */
    const char *cipher;
    _Atomic uint64_t sessions;
};

/* Login attempts by result (enum imf_login_result) and mechanism class. */
#define IMF_STATS_LOGIN_RESULTS 4
enum imf_stats_mech { IMF_MECH_LOGIN, IMF_MECH_PLAIN, IMF_MECH_OTHER, IMF_MECH_COUNT };
extern const char *const imf_stats_mech_names[IMF_MECH_COUNT];

/* Counters of one worker: written by its thread only, read by any. */
struct imf_worker_stats {
    _Atomic uint64_t sessions_active;
    _Atomic uint64_t sessions_total;
    _Atomic uint64_t handshakes_ok;
    _Atomic uint64_t handshakes_failed;
    _Atomic uint64_t backend_connect_ok;
    _Atomic uint64_t backend_connect_failed;
    _Atomic uint64_t bytes_from_clients;
    _Atomic uint64_t bytes_to_clients;
    _Atomic uint64_t connections_refused;
    _Atomic uint64_t commands_held;       /* pipelining off: commands held back */
    _Atomic uint64_t literals_converted;  /* literal_plus sync: {N+} sent as {N} */
    _Atomic uint64_t crlf_splits;         /* literal ends written apart from their CRLF */
    _Atomic uint64_t longest_queue;       /* most bytes queued behind a held command */
    _Atomic uint64_t crlf_split_timeouts; /* splits that gave up waiting for the reader */
    _Atomic uint64_t compress_in_wire;    /* COMPRESS: compressed bytes from clients */
    _Atomic uint64_t compress_in_plain;   /* ... and what they inflated to */
    _Atomic uint64_t compress_out_plain;  /* bytes to clients before deflate */
    _Atomic uint64_t compress_out_wire;   /* ... and after */
    _Atomic uint64_t logins[IMF_STATS_LOGIN_RESULTS][IMF_MECH_COUNT];
    _Atomic uint64_t logins_delayed;                         /* failures answered late (throttle) */
    _Atomic uint64_t closes[IMF_CLOSE_REASON_COUNT];         /* by enum imf_close_reason */
    _Atomic uint64_t handshake_failures[IMF_TLS_FAIL_COUNT]; /* by enum imf_tls_failure */
    struct imf_tls_kind tls_kinds[IMF_STATS_TLS_KINDS_MAX];
    _Atomic unsigned tls_kinds_len; /* entries published so far */
    struct imf_telemetry_stats telemetry;
    struct imf_chain_counters chain;
};

/* Single-writer increment: a relaxed load and store, no locked instruction. */
static inline void imf_stat_add(_Atomic uint64_t *c, int64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + (uint64_t)n,
                          memory_order_relaxed);
}

/* The counters of struct imf_worker_stats added up over workers (the TLS
 * version/cipher pairs excepted: /metrics labels them itself). */
struct imf_stats_sum {
    uint64_t sessions_active;
    uint64_t sessions_total;
    uint64_t handshakes_ok;
    uint64_t handshakes_failed;
    uint64_t backend_connect_ok;
    uint64_t backend_connect_failed;
    uint64_t bytes_from_clients;
    uint64_t bytes_to_clients;
    uint64_t connections_refused;
    uint64_t commands_held;
    uint64_t literals_converted;
    uint64_t crlf_splits;
    uint64_t longest_queue; /* the largest of the workers', not a sum */
    uint64_t crlf_split_timeouts;
    uint64_t compress_in_wire;
    uint64_t compress_in_plain;
    uint64_t compress_out_plain;
    uint64_t compress_out_wire;
    uint64_t logins[IMF_STATS_LOGIN_RESULTS][IMF_MECH_COUNT];
    uint64_t logins_delayed;
    uint64_t closes[IMF_CLOSE_REASON_COUNT];
    uint64_t handshake_failures[IMF_TLS_FAIL_COUNT];
    uint64_t lat_buckets[IMF_TCMD_COUNT][IMF_LAT_BUCKETS + 1];
    uint64_t lat_sum_us[IMF_TCMD_COUNT];
    uint64_t anomalies[IMF_ANOMALY_COUNT];
    int64_t chain_bytes;
    int64_t chain_links;
};

struct imf_worker;

/* Fills out with the counters of workers[0..n) added up. Each value is an
 * atomic load: from another thread the sum may mix instants a few
 * microseconds apart. */
void imf_stats_sum(const struct imf_worker *workers, size_t n, struct imf_stats_sum *out);

#endif
