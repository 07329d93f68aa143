/* backend: which server a new session tries, in what order, and what the
 * proxy has learnt about each server's health.
 *
 * Passive health: a server whose connects failed down_after times in a
 * row is skipped for retry_after, then tried again. Active health
 * ([backend] check, check.c): a server that failed down_after checks in a
 * row is skipped until a check passes. Health is shared by every
 * worker (one table, atomics; keyed by the address as written, so it
 * survives a reload that keeps the server). */
#ifndef IMAPFRONT_BACKEND_H
#define IMAPFRONT_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imapfront/config.h"

#define IMF_BACKEND_MAX 64 /* the config allows at most this many servers */

/* The order in which a new session tries cfg->servers: indexes into it (a
 * byte each, servers_len of them), servers marked down last (they are
 * still worth a try when every server is down). Returns the count
 * (== cfg->servers_len). */
size_t imf_backend_plan(const struct imf_config *cfg, uint8_t *out_order);

/* Records a connect's outcome for cfg->servers[index]; logs when a server
 * goes down or comes back. */
void imf_backend_report(const struct imf_config *cfg, size_t index, bool ok);

/* True when at least one server of cfg is not marked down. */
bool imf_backend_any_up(const struct imf_config *cfg);

/* Records an active check's outcome for cfg->servers[index]. Returns 1
 * when the server has just been taken out of rotation, -1 when it has just
 * been put back, 0 otherwise (the caller logs). A passing check also clears
 * the passive state. */
int imf_backend_check_report(const struct imf_config *cfg, size_t index, bool ok,
                             uint64_t duration_us);

/* Forgets what active checks found about cfg's servers (checks turned off). */
void imf_backend_check_clear(const struct imf_config *cfg);

/* Counters of one server, for metrics. */
struct imf_backend_info {
    const char *address;
    uint64_t connects_ok;
    uint64_t connects_failed;
    bool down;       /* skipped by new sessions (passive or active health) */
    bool check_down; /* ... because its checks fail */
    uint64_t checks_ok;
    uint64_t checks_failed;
    uint64_t check_us; /* duration of the last check */
    int profile;       /* enum imf_gate_profile its greeting showed (0: none seen) */
};
/* Fills out with what is known of cfg's servers; returns the count. */
size_t imf_backend_info(const struct imf_config *cfg, struct imf_backend_info *out, size_t max);

/* Records what cfg->servers[index]'s greeting showed it to be (an enum
 * imf_gate_profile); true when that is new, so the caller logs it once. */
bool imf_backend_note_profile(const struct imf_config *cfg, size_t index, int profile);

/* Milliseconds of a clock shared by all threads (monotonic). */
uint64_t imf_clock_ms(void);

#endif
