/* backend_tls: see include/imapfront/backend_tls.h. What a session
 * (session_btls.c) and a health check (check.c) share: the pool's client
 * context, the SSL for one server, the reasons and the pin. */
#include "imapfront/backend_tls.h"

#include <errno.h>
#include <openssl/base64.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

/* ---- contexts ------------------------------------------------------------ */

static void ctx_free(void *ctx)
{
    SSL_CTX_free(ctx);
}

static const char *pool_section(const struct imf_pool_config *p, char *buf, size_t len)
{
    if (strcmp(p->name, IMF_POOL_DEFAULT) == 0)
        snprintf(buf, len, "[backend]");
    else
        snprintf(buf, len, "[backend.%s]", p->name);
    return buf;
}

int imf_btls_prepare(struct imf_config *cfg, char *err, size_t err_len)
{
    for (size_t i = 0; i < cfg->pools_len; i++) {
        struct imf_pool_config *p = &cfg->pools[i];
        char sec[96];
        if (p->tls == IMF_BACKEND_TLS_OFF || p->tls_ctx != NULL)
            continue;
        SSL_CTX *ctx = SSL_CTX_new(TLS_method());
        if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
            SSL_CTX_free(ctx);
            snprintf(err, err_len, "%s: cannot create a TLS context", pool_section(p, sec, 96));
            return -ENOMEM;
        }
        SSL_CTX_set_verify(ctx, p->tls_verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
        int ok = p->tls_ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, p->tls_ca_file, NULL)
                                        : SSL_CTX_set_default_verify_paths(ctx);
        if (!ok) {
            unsigned long e = ERR_get_error();
            const char *why = e != 0 ? ERR_reason_error_string(e) : NULL;
            ERR_clear_error();
            snprintf(err, err_len, "%s tls_ca_file: cannot load %s: %s",
                     pool_section(p, sec, sizeof(sec)),
                     p->tls_ca_file != NULL ? p->tls_ca_file : "the system store",
                     why != NULL ? why : "unknown error");
            SSL_CTX_free(ctx);
            return -EINVAL;
        }
        p->tls_ctx = ctx;
        p->tls_ctx_free = ctx_free;
    }
    return 0;
}

/* The host part of a server as written: "name", "192.0.2.1", "::1". */
static void host_of(const struct imf_sockaddr *srv, char *host, size_t len)
{
    const char *t = srv->text;
    const char *colon = strrchr(t, ':');
    size_t n = colon != NULL ? (size_t)(colon - t) : strlen(t);
    if (t[0] == '[' && n >= 2 && t[n - 1] == ']') {
        t++;
        n -= 2;
    }
    if (n >= len)
        n = len - 1;
    memcpy(host, t, n);
    host[n] = '\0';
}

SSL *imf_btls_ssl_new(const struct imf_pool_config *pool, const struct imf_sockaddr *srv,
                      struct imf_tls_io *io)
{
    SSL *ssl = imf_tls_conn_new(pool->tls_ctx, io);
    if (ssl == NULL)
        return NULL;
    SSL_set_connect_state(ssl);
    char host[sizeof(srv->text)];
    host_of(srv, host, sizeof(host));
    const char *name = pool->tls_server_name;
    if (name == NULL && srv->named)
        name = host;
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int ok;
    if (name != NULL)
        ok = SSL_set_tlsext_host_name(ssl, name) &&
             X509_VERIFY_PARAM_set1_host(param, name, strlen(name));
    else
        ok = X509_VERIFY_PARAM_set1_ip_asc(param, host);
    if (!ok) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

void imf_btls_handshake_reason(SSL *ssl, struct imf_tls_io *io, char *out, size_t len)
{
    const char *r = imf_tls_failure_reason(ssl, io);
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK)
        snprintf(out, len, "%s (%s)", r, X509_verify_cert_error_string(v));
    else
        snprintf(out, len, "%s", r);
}

bool imf_btls_pin_matches(const struct imf_pool_config *pool, SSL *ssl, char *why, size_t why_len)
{
    if (!pool->tls_pin_set)
        return true;
    X509 *cert = SSL_get_peer_certificate(ssl);
    if (cert == NULL) {
        snprintf(why, why_len, "TLS pin: the server sent no certificate");
        return false;
    }
    uint8_t dcert[SHA256_DIGEST_LENGTH], dkey[SHA256_DIGEST_LENGTH];
    uint8_t *der = NULL, *spki = NULL;
    int der_len = i2d_X509(cert, &der);
    int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
    X509_free(cert);
    bool ok = false;
    if (der_len > 0 && spki_len > 0) {
        SHA256(der, (size_t)der_len, dcert);
        SHA256(spki, (size_t)spki_len, dkey);
        ok = memcmp(dcert, pool->tls_pin, IMF_PIN_LEN) == 0 ||
             memcmp(dkey, pool->tls_pin, IMF_PIN_LEN) == 0;
        if (!ok) {
            /* Base64 as a pin may be written; EVP_EncodeBlock ends each with NUL. */
            uint8_t want[48], got_cert[48], got_key[48];
            EVP_EncodeBlock(want, pool->tls_pin, IMF_PIN_LEN);
            EVP_EncodeBlock(got_cert, dcert, sizeof(dcert));
            EVP_EncodeBlock(got_key, dkey, sizeof(dkey));
            snprintf(why, why_len,
                     "TLS pin mismatch: expected %s, got certificate %s, public key %s", want,
                     got_cert, got_key);
        }
    } else {
        snprintf(why, why_len, "TLS pin: cannot encode the server's certificate");
    }
    OPENSSL_free(der);
    OPENSSL_free(spki);
    return ok;
}
