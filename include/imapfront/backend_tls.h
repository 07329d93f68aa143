/* backend_tls: TLS from the proxy to a pool's servers ([backend] tls = on
 * | starttls). The per-session engine is private to the session's files
 * (session_int.h); this is what the rest of the program needs. */
#ifndef IMAPFRONT_BACKEND_TLS_H
#define IMAPFRONT_BACKEND_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "imapfront/config.h"
#include "imapfront/tls.h"

/* Builds the client SSL_CTX of every pool of cfg with tls != off (TLS 1.2
 * or later; tls_ca_file or the system store; verification per tls_verify)
 * into pool->tls_ctx, freed with cfg. Called once per snapshot, before it
 * is shared. 0, or a negative code with "[backend.NAME] tls_ca_file:
 * cannot load FILE: reason" in err. */
int imf_btls_prepare(struct imf_config *cfg, char *err, size_t err_len);

/* A client SSL over io for srv, a server of pool (pool->tls_ctx built):
 * SNI and the name verified are pool->tls_server_name, else the host name
 * srv was written with; a server written as an address (and no
 * tls_server_name) is verified against that address and sends no SNI.
 * Returns NULL when out of memory. */
SSL *imf_btls_ssl_new(const struct imf_pool_config *pool, const struct imf_sockaddr *srv,
                      struct imf_tls_io *io);

/* Why a handshake failed: the library's reason, and the verification's
 * ("CERTIFICATE_VERIFY_FAILED (unable to get local issuer certificate)"). */
void imf_btls_handshake_reason(SSL *ssl, struct imf_tls_io *io, char *out, size_t len);

/* After the handshake: true when pool has no tls_pin_sha256, or when it is
 * the SHA-256 of the server's certificate (DER) or of its public key
 * (SubjectPublicKeyInfo). Else false, and why says what was expected and
 * what the server had, in base64. */
bool imf_btls_pin_matches(const struct imf_pool_config *pool, SSL *ssl, char *why, size_t why_len);

#endif
