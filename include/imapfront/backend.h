/* backend: which server a new session tries, in what order, and what the
 * proxy has learnt about each server's health.
 *
 * Passive health: a server whose connects failed down_after times in a
 * row is skipped for retry_after, then tried again. A connect that timed
 * out counts only when the server's latest connects failed outright or
 * none completed within retry_after (a slow server is not a dead one), and
 * passive health never takes out the last server of a pool that is up. Active health
 * ([backend] check, check.c): a server that failed down_after checks in a
 * row is skipped until a check passes. Health is shared by every
 * worker (one table, atomics; keyed by the pool's name and the address as
 * written, so it survives a reload that keeps the server in its pool).
 * Every function takes the pool (struct imf_pool_config) a session or a
 * check uses; index is into its servers. */
#ifndef IMAPFRONT_BACKEND_H
#define IMAPFRONT_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imapfront/config.h"

#define IMF_BACKEND_MAX 64 /* the config allows at most this many servers */

/* The order in which a new session tries pool->servers: indexes into it (a
 * byte each, servers_len of them), servers marked down last (they are
 * still worth a try when every server is down). Returns the count
 * (== pool->servers_len); *out_up is how many of them lead as up. */
size_t imf_backend_plan(const struct imf_pool_config *pool, uint8_t *out_order, size_t *out_up);

enum imf_connect_result {
    IMF_CONNECT_OK,
    IMF_CONNECT_FAILED,  /* refused, reset, unreachable: the server is not there */
    IMF_CONNECT_TIMEOUT, /* no answer within connect_timeout: down, or only slow */
};

/* Records a connect's outcome for pool->servers[index]; logs when a server
 * goes down or comes back. */
void imf_backend_report(const struct imf_pool_config *pool, size_t index,
                        enum imf_connect_result r);

/* True when at least one server of pool is not marked down. */
bool imf_backend_any_up(const struct imf_pool_config *pool);

/* Records an active check's outcome for pool->servers[index]. Returns 1
 * when the server has just been taken out of rotation, -1 when it has just
 * been put back, 0 otherwise (the caller logs). A passing check also clears
 * the passive state. */
int imf_backend_check_report(const struct imf_pool_config *pool, size_t index, bool ok,
                             uint64_t duration_us);

/* Forgets what active checks found about pool's servers (checks turned off). */
void imf_backend_check_clear(const struct imf_pool_config *pool);

/* Admission control ([backend] max_sessions, max_connecting,
 * connect_rate): the counts are per server and shared by every worker;
 * the limits are read from limits (the pool of the same name in the newest
 * config: a reload applies to sessions already waiting).
 *
 * imf_backend_acquire takes one backend connection and one connect in
 * progress of pool->servers[index]. Returns IMF_ADMIT_OK (the caller then
 * owes imf_backend_connect_done and imf_backend_release), IMF_ADMIT_FULL
 * (a limit is reached: wait for a release), or IMF_ADMIT_RATE (the server
 * is warming up after being down or after a start, and its token bucket
 * is empty: *out_wait_ms until the next token). */
enum imf_admit { IMF_ADMIT_OK, IMF_ADMIT_FULL, IMF_ADMIT_RATE };
enum imf_admit imf_backend_acquire(const struct imf_pool_config *pool, size_t index,
                                   const struct imf_pool_config *limits, uint64_t *out_wait_ms);
/* The connect taken by imf_backend_acquire has ended (either way). */
void imf_backend_connect_done(const struct imf_pool_config *pool, size_t index);
/* The backend connection taken by imf_backend_acquire is closing. */
void imf_backend_release(const struct imf_pool_config *pool, size_t index);
/* A session starts (delta 1) or stops (-1) waiting for pool->servers[index]. */
void imf_backend_queue_count(const struct imf_pool_config *pool, size_t index, int delta);
/* A session stopped waiting after wait_ms: admitted, or timed out. */
void imf_backend_queue_done(const struct imf_pool_config *pool, size_t index, uint64_t wait_ms,
                            bool timed_out);

/* Fairness across workers: each worker publishes when the head of its
 * queue started waiting (imf_clock_ms(), 0 when its queue is empty); a
 * worker admits its head only when no other worker's head has waited
 * longer, so a slot freed on one worker goes to the oldest waiter. */
#define IMF_QUEUE_WORKERS 64
void imf_backend_queue_head(unsigned worker, uint64_t since_ms);
bool imf_backend_queue_first(unsigned worker, uint64_t since_ms);

/* Counters of one server, for metrics. */
struct imf_backend_info {
    const char *pool; /* its name */
    const char *address;
    uint64_t connects_ok;
    uint64_t connects_failed;
    bool down;       /* skipped by new sessions (passive or active health) */
    bool check_down; /* ... because its checks fail */
    uint64_t checks_ok;
    uint64_t checks_failed;
    uint64_t check_us;       /* duration of the last check */
    int profile;             /* enum imf_gate_profile its greeting showed (0: none seen) */
    uint32_t sessions;       /* backend connections open or opening (max_sessions) */
    uint32_t connecting;     /* connects in progress (max_connecting) */
    uint32_t queued;         /* sessions waiting for it */
    uint64_t queue_waits;    /* sessions admitted after waiting */
    uint64_t queue_wait_ms;  /* ... the sum of their waits */
    uint64_t queue_timeouts; /* sessions that gave up waiting (queue_timeout) */
    bool warming;            /* connect_rate applies (back from down, or started) */
};
/* Fills out with what is known of pool's servers; returns the count. */
size_t imf_backend_info(const struct imf_pool_config *pool, struct imf_backend_info *out,
                        size_t max);

/* Records what pool->servers[index]'s greeting showed it to be (an enum
 * imf_gate_profile); true when that is new, so the caller logs it once. */
bool imf_backend_note_profile(const struct imf_pool_config *pool, size_t index, int profile);

/* The key under which log lines about a server name its pool: "pool",
 * or NULL (ending the key-value list) for the pool "default", so that a
 * file with one [backend] logs as it did before pools. Pass it last. */
const char *imf_backend_pool_key(const struct imf_pool_config *pool);

/* Milliseconds of a clock shared by all threads (monotonic). */
uint64_t imf_clock_ms(void);

#endif
