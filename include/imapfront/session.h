/* session: one client connection and at most one backend connection, the
 * relay state machine between them, owned by one worker. */
#ifndef IMAPFRONT_SESSION_H
#define IMAPFRONT_SESSION_H

#include "imapfront/worker.h"

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
    IMF_CLOSE_REASON_COUNT
};
extern const char *const imf_close_reason_names[IMF_CLOSE_REASON_COUNT];

struct imf_session *imf_session_next(struct imf_session *s);

#endif
