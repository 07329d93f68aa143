/* telemetry: IMAP-aware observations of a session that never change the
 * stream. Per-command latency (by command name, never arguments), and
 * detectors for backend anomalies: a tagged response whose tag no command
 * in flight carries, a bare "+", a FETCH literal larger than the partial
 * range the client asked for. Pure bookkeeping; the counters live in the
 * worker's stats. */
#ifndef IMAPFRONT_TELEMETRY_H
#define IMAPFRONT_TELEMETRY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The commands latency is kept for; the rest count as OTHER. */
enum imf_tcmd {
    IMF_TCMD_OTHER,
    IMF_TCMD_APPEND,
    IMF_TCMD_AUTHENTICATE,
    IMF_TCMD_CAPABILITY,
    IMF_TCMD_COPY,
    IMF_TCMD_EXPUNGE,
    IMF_TCMD_FETCH,
    IMF_TCMD_IDLE,
    IMF_TCMD_LIST,
    IMF_TCMD_LOGIN,
    IMF_TCMD_LOGOUT,
    IMF_TCMD_MOVE,
    IMF_TCMD_NOOP,
    IMF_TCMD_SEARCH,
    IMF_TCMD_SELECT,
    IMF_TCMD_STATUS,
    IMF_TCMD_STORE,
    IMF_TCMD_COUNT
};
extern const char *const imf_tcmd_names[IMF_TCMD_COUNT];

/* Histogram bucket upper bounds, in microseconds (+Inf is implied). */
#define IMF_LAT_BUCKETS 10
extern const uint64_t imf_lat_bounds_us[IMF_LAT_BUCKETS];

enum imf_anomaly {
    IMF_ANOMALY_UNKNOWN_TAG,    /* tagged response for no command in flight */
    IMF_ANOMALY_BARE_PLUS,      /* "+" with no text at all */
    IMF_ANOMALY_FETCH_OVERSIZE, /* FETCH literal larger than the partial range */
    IMF_ANOMALY_LITERAL_STALL,  /* client announced N octets and stopped sending */
    IMF_ANOMALY_COUNT
};
extern const char *const imf_anomaly_names[IMF_ANOMALY_COUNT];

/* Counters, part of each worker's stats (written by its thread only). */
struct imf_telemetry_stats {
    _Atomic uint64_t lat_buckets[IMF_TCMD_COUNT][IMF_LAT_BUCKETS + 1]; /* last: +Inf */
    _Atomic uint64_t lat_sum_us[IMF_TCMD_COUNT];
    _Atomic uint64_t anomalies[IMF_ANOMALY_COUNT];
};

/* Commands in flight of one session: a few slots are plenty (a client
 * that pipelines more is still relayed, its extra commands just go
 * unmeasured). */
#define IMF_TRACK_SLOTS 16
struct imf_tracked {
    char tag[33]; /* tags longer than 32 bytes are not tracked */
    uint8_t cmd;  /* enum imf_tcmd */
    bool used;
    bool fetch_whole;     /* a FETCH without a partial range */
    uint64_t partial_max; /* FETCH <a.b>: the largest b; 0 = no partial */
    uint64_t start_us;
};
/* A session's tracker is a pointer that is NULL while no command is in
 * flight: most sessions are idle most of the time, and an idle session
 * should cost no tracker at all. imf_telemetry_sent() allocates it and
 * grows it by doubling up to IMF_TRACK_SLOTS slots; imf_telemetry_tagged()
 * frees it when its last command completes. */
struct imf_tracker {
    unsigned untracked; /* commands in flight without a slot */
    unsigned cap;       /* slots allocated (1, 2, 4 ... IMF_TRACK_SLOTS) */
    struct imf_tracked slots[];
};

/* A command's first line went to the backend (name as imf_imap_parse_command
 * upper-cases it, "UID FETCH" included). *t may be NULL (nothing in flight)
 * and is allocated or grown here. Returns 0, or -ENOMEM when *t was NULL
 * and could not be allocated (a failed growth only leaves the command
 * unmeasured). */
int imf_telemetry_sent(struct imf_tracker **t, const char *tag, const char *name,
                       const uint8_t *line, size_t len, uint64_t now_us);

/* A tagged response: observes the latency of its command and frees *t
 * (setting it to NULL) once no command is left in flight. Returns false
 * (and counts the anomaly) when no command in flight had that tag. */
bool imf_telemetry_tagged(struct imf_tracker **t, struct imf_telemetry_stats *st, const char *tag,
                          uint64_t now_us);

/* A literal in a response (size N). Returns true (and counts it) when
 * every FETCH in flight asked for a partial range and N exceeds them all.
 * t may be NULL. */
bool imf_telemetry_response_literal(const struct imf_tracker *t, struct imf_telemetry_stats *st,
                                    uint64_t size);

/* Frees *t (may be NULL) and sets it to NULL: the session ended. */
void imf_telemetry_free(struct imf_tracker **t);

/* The command name's bucket. */
enum imf_tcmd imf_telemetry_classify(const char *name);

#endif
