/* check: active health checks of the backend servers (check = banner or
 * login in [backend] or [backend.NAME]).
 *
 * They run on the main thread's loop, once per process whatever the number
 * of workers. Every pool is checked on its own: every check_interval of
 * the pool one probe per server of it (never two at once
 * for the same server) connects and reads the greeting; with check = login
 * it then logs in with the service account, EXAMINEs the canary mailbox
 * (the read-only SELECT: a check never changes a flag), sends NOOP and
 * finally LOGOUT. The conversation is the backend client of bclient.c,
 * which logs in in the form the server digests. The whole probe must be
 * done within check_timeout. The outcome goes to the health table of
 * backend.c, which new sessions, /readyz and /metrics read; changes are
 * logged. */
#ifndef IMAPFRONT_CHECK_H
#define IMAPFRONT_CHECK_H

#include <stddef.h>
#include <uv.h>

#include "imapfront/config.h"

struct imf_checker;

/* Sets up the checker on loop for cfg (it takes its own reference); with
 * check = off it waits for a reload that turns checks on. 0 or a uv error. */
int imf_checker_start(uv_loop_t *loop, struct imf_config *cfg, struct imf_checker **out_ck);

/* Follows a reload: the new pools, their servers, intervals and modes
 * (pools are matched by name). Probes in flight finish with the snapshot
 * they started with. */
void imf_checker_reload(struct imf_checker *ck, struct imf_config *cfg);

/* Stops checking and closes every handle; the checker frees itself once
 * they are closed (at once when it has none; the loop then has nothing of
 * it left). ck must not be used after this call. */
void imf_checker_stop(struct imf_checker *ck);

#endif
