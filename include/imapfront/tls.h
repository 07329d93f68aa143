/* tls: the server SSL_CTX built from config, and the per-connection engine.
 *
 * TLS is an engine, not a socket: each connection's SSL reads ciphertext from
 * one chain and writes ciphertext to another through a custom BIO, so the
 * event loop never blocks on TLS and every byte is accounted for. */
#ifndef IMAPFRONT_TLS_H
#define IMAPFRONT_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

#include "imapfront/chain.h"
#include "imapfront/config.h"

/* The chains an SSL reads from and writes to, and what the engine tells
 * its owner. Embedded in the session; the SSL's app data points at it. */
struct imf_tls_io {
    struct imf_chain *in;   /* ciphertext received, consumed by the SSL */
    struct imf_chain *out;  /* ciphertext to send, appended by the SSL */
    bool in_eof;            /* the peer closed its side: reads report EOF */
    bool alert_received;    /* alert_desc came from the peer (else we sent it) */
    const char *peer;       /* for log lines */
    const char *alert_desc; /* last fatal alert, the library's static text; NULL = none */
};

/* Builds an SSL_CTX from [tls] (certificate chain, key, versions, tickets,
 * ALPN "imap", forward-secret AEAD suites) that switches to the certificate
 * of a [certificate.NAME] section when the client's SNI matches it. On success returns 0 and the
 * context in *out_ctx (the caller owns one reference); on failure a negative
 * code and a message in err. */
int imf_tls_ctx_new(const struct imf_config *cfg, SSL_CTX **out_ctx, char *err, size_t err_len);

/* notAfter of cert as seconds since the epoch. 0, or -EINVAL when cert is
 * NULL or its time cannot be read. */
int imf_tls_not_after(const X509 *cert, int64_t *out_time);

/* One certificate of a context, for the expiry metric. */
struct imf_tls_cert_info {
    const char *name; /* "tls" for [tls], else NAME of [certificate.NAME] */
    const char *file; /* the certificate file */
    int64_t not_after;
};

/* Fills out (at most max) with the certificates of ctx, a context built by
 * imf_tls_ctx_new from cfg: [tls] first, then [certificate.NAME] in file
 * order. The strings are borrowed from cfg and ctx. Returns the count. */
size_t imf_tls_ctx_certs(SSL_CTX *ctx, const struct imf_config *cfg, struct imf_tls_cert_info *out,
                         size_t max);

/* True when host matches an entry of list ("mail.example.org, *.example.org";
 * a "*." entry stands for exactly one leftmost label). Case-insensitive. */
bool imf_tls_name_matches(const char *list, const char *host);

/* A new server-side SSL bound to io. Returns NULL on allocation failure. */
SSL *imf_tls_conn_new(SSL_CTX *ctx, struct imf_tls_io *io);

/* Why the last SSL call failed, as a short string: the library's reason,
 * the alert ("alert received: ...", in a per-thread buffer valid until the
 * thread's next call), or "eof". */
const char *imf_tls_failure_reason(SSL *ssl, struct imf_tls_io *io);

/* Why handshakes fail, in a few buckets fit for a metrics label. */
enum imf_tls_failure {
    IMF_TLS_FAIL_TIMEOUT,          /* handshake_timeout passed */
    IMF_TLS_FAIL_CLIENT_CLOSED,    /* the client went away */
    IMF_TLS_FAIL_NO_ALPN,          /* offered ALPN without "imap" */
    IMF_TLS_FAIL_PROTOCOL_VERSION, /* no common TLS version (e.g. TLS 1.0 only) */
    IMF_TLS_FAIL_NO_SHARED_CIPHER, /* no common cipher suite */
    IMF_TLS_FAIL_NOT_TLS,          /* the bytes were not TLS (plain IMAP, HTTP...) */
    IMF_TLS_FAIL_OTHER,
    IMF_TLS_FAIL_COUNT
};
extern const char *const imf_tls_failure_names[IMF_TLS_FAIL_COUNT];

/* The bucket of a reason string from imf_tls_failure_reason(). */
enum imf_tls_failure imf_tls_classify_failure(const char *reason);

/* The ALPN protocol we speak. */
#define IMF_TLS_ALPN "imap"

#endif
