/* store: the login throttle's counters shared by replicas in Redis
 * ([login] store). Each worker has one of these on its own loop: an async
 * hiredis connection for commands and, in the first worker, a second one
 * subscribed to the channel on which every replica announces its counts.
 *
 * The verdict of a login never waits for Redis: the throttle table decides
 * at once, and what Redis says is merged into the table when it comes
 * (imf_throttle_merge). A failure is counted in Redis (and announced)
 * after the backend's answer; replicas merge the announcement within a
 * round trip, before the guesser's next attempt normally arrives. While
 * the store is unreachable the table counts alone; the store is retried
 * with a backoff, and its state is a metric. */
#ifndef IMAPFRONT_STORE_H
#define IMAPFRONT_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "imapfront/config.h"
#include "imapfront/throttle.h"

struct imf_store;

/* A store on loop (not yet connected: see imf_store_configure). subscribe:
 * this one also listens to the other replicas (one per process is
 * enough, as the table is the process's). Returns NULL when out of memory. */
struct imf_store *imf_store_new(uv_loop_t *loop, bool subscribe);

/* Adopts cfg's [login] store and thresholds (cfg is borrowed for the
 * call). Connects, reconnects when the target changed, or disconnects
 * when it is now empty. Call on the store's loop thread, or before it runs. */
void imf_store_configure(struct imf_store *st, const struct imf_config *cfg);

/* Asks for the counts of an attempt's keys (n of them), merged on reply. */
void imf_store_read(struct imf_store *st, const uint8_t (*keys)[IMF_THROTTLE_KEY_LEN], int n);

/* Counts a failure of each of the n keys, and announces it. */
void imf_store_failed(struct imf_store *st, const uint8_t (*keys)[IMF_THROTTLE_KEY_LEN], int n);

/* A success: clears the n keys (never the address alone), and announces it. */
void imf_store_cleared(struct imf_store *st, const uint8_t (*keys)[IMF_THROTTLE_KEY_LEN], int n);

/* Drops the connections and closes the handles; st is freed once they
 * have closed (so the loop can end). st may be NULL. */
void imf_store_close(struct imf_store *st);

/* For /metrics: whether a store is set, whether every worker reaches it
 * now, and the connection failures and lost replies so far. */
void imf_store_stats(bool *out_configured, bool *out_up, uint64_t *out_errors);

#endif
