/* session: one client connection and at most one backend connection, the
 * relay state machine between them, owned by one worker. Why sessions end
 * (enum imf_close_reason) is in stats.h, with the counters. */
#ifndef IMAPFRONT_SESSION_H
#define IMAPFRONT_SESSION_H

#include "imapfront/stats.h"

struct imf_listener;
struct imf_session;

/* Takes the connection pending on l into a new session of l's worker.
 * Returns without taking it when the session cannot be allocated. */
void imf_session_accept(struct imf_listener *l);
/* Ends the session at once: BYE [UNAVAILABLE] if it is relaying. */
void imf_session_shutdown(struct imf_session *s);
/* Ends the session when it is quiet (no command in progress), now if it
 * is quiet already. */
void imf_session_drain(struct imf_session *s);
/* The next session of the same worker, or NULL. */
struct imf_session *imf_session_next(struct imf_session *s);

#endif
