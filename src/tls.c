/* tls: see include/imapfront/tls.h. */
#include "imapfront/tls.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imapfront/log.h"
#include "imapfront/util.h"

/* TLS 1.2 suites: ECDHE only (forward secrecy), AEAD only. TLS 1.3 suites
 * are all AEAD and not configurable in BoringSSL. */
static const char tls12_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:"
                                    "ECDHE-RSA-AES128-GCM-SHA256:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:"
                                    "ECDHE-RSA-CHACHA20-POLY1305:"
                                    "ECDHE-ECDSA-AES256-GCM-SHA384:"
                                    "ECDHE-RSA-AES256-GCM-SHA384";

/* [tls] legacy_ciphers = on: the CBC suites that clients without AEAD
 * (Outlook 2007/2010 on old Windows, Android 4, old Java) offer, still
 * ECDHE (forward secret) and after the AEAD ones in preference. */
static const char legacy_ciphers[] = "ECDHE-ECDSA-AES128-SHA:"
                                     "ECDHE-RSA-AES128-SHA:"
                                     "ECDHE-ECDSA-AES256-SHA:"
                                     "ECDHE-RSA-AES256-SHA";

/* A certificate that expires within this many days is logged at load. */
#define IMF_TLS_EXPIRY_WARN_DAYS 14

static BIO_METHOD *chain_method;
static pthread_once_t chain_method_once = PTHREAD_ONCE_INIT;

/* BIO read: hands the SSL ciphertext from the input chain. An empty chain
 * is "try again" until the peer's EOF, then 0. */
static int chain_bio_read(BIO *bio, char *out, int len)
{
    struct imf_tls_io *io = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (io->in->bytes == 0) {
        if (io->in_eof)
            return 0;
        BIO_set_retry_read(bio);
        return -1;
    }
    size_t n = imf_chain_copy_out(io->in, out, (size_t)len);
    imf_chain_consume(io->in, n);
    return (int)n;
}

/* BIO write: appends ciphertext to the output chain. Never "try again":
 * the session bounds what it asks the SSL to write. */
static int chain_bio_write(BIO *bio, const char *data, int len)
{
    struct imf_tls_io *io = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (imf_chain_append(io->out, data, (size_t)len) != 0)
        return -1;
    return len;
}

static long chain_bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING: {
        struct imf_tls_io *io = BIO_get_data(bio);
        return (long)io->in->bytes;
    }
    default:
        return 0;
    }
}

static int chain_bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static void chain_method_init(void)
{
    chain_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "imf_chain");
    if (chain_method == NULL)
        return;
    BIO_meth_set_read(chain_method, chain_bio_read);
    BIO_meth_set_write(chain_method, chain_bio_write);
    BIO_meth_set_ctrl(chain_method, chain_bio_ctrl);
    BIO_meth_set_create(chain_method, chain_bio_create);
}

/* ALPN: select "imap" when the client offers it. A client that offers ALPN
 * without "imap" speaks something else: refuse with no_application_protocol
 * (RFC 7301, section 3.2). */
static int alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                       unsigned in_len, void *arg)
{
    static const uint8_t imap[] = "imap";
    const uint8_t *p = in, *end = in + in_len;
    while (p < end) {
        uint8_t n = *p++;
        if (n > end - p)
            break;
        if (n == sizeof(imap) - 1 && memcmp(p, imap, n) == 0) {
            *out = p;
            *out_len = n;
            return SSL_TLSEXT_ERR_OK;
        }
        p += n;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* Logs alerts with the peer's address. Fatal ones are remembered so the
 * session's close line can say why. */
static void info_callback(const SSL *ssl, int where, int value)
{
    if ((where & SSL_CB_ALERT) == 0)
        return;
    struct imf_tls_io *io = SSL_get_app_data(ssl);
    const char *dir = (where & SSL_CB_READ) ? "received" : "sent";
    const char *desc = SSL_alert_desc_string_long(value);
    int fatal = (value >> 8) == SSL3_AL_FATAL;
    if (io != NULL && fatal) {
        /* Static strings: an idle session keeps two pointers, not the text. */
        io->alert_desc = desc;
        io->alert_received = (where & SSL_CB_READ) != 0;
    }
    /* close_notify is the normal end of a session, not news. */
    if ((value & 0xff) == SSL_AD_CLOSE_NOTIFY)
        return;
    imf_log_kv(fatal ? IMF_LOG_INFO : IMF_LOG_DEBUG, "tls", "alert", "client",
               io != NULL ? io->peer : "?", "direction", dir, "alert", desc, NULL);
}

/* The key exchange groups we accept, in our order of preference; the
 * TLS group ids (RFC 8446, 4.2.7) and the library's NIDs side by side. */
static const struct {
    uint16_t id;
    int nid;
} tls_groups[] = {
    {29, NID_X25519},
    {SSL_CURVE_SECP256R1, NID_X9_62_prime256v1},
    {SSL_CURVE_SECP384R1, NID_secp384r1},
};
#define TLS_GROUPS_LEN (sizeof(tls_groups) / sizeof(tls_groups[0]))

/* The first group of the client's TLS 1.3 key_share list that we accept,
 * as an index into tls_groups, or -1 (no key_share extension, malformed,
 * or no share we accept: the library then decides, and answers with a
 * HelloRetryRequest if it must). ext is the extension's body:
 * client_shares<0..2^16-1>, each a group (2 octets) and a key_exchange<1..2^16-1>. */
static int key_share_group(const uint8_t *ext, size_t len)
{
    if (len < 2 || (size_t)(ext[0] << 8 | ext[1]) != len - 2)
        return -1;
    size_t pos = 2;
    /* Bounded: each entry takes at least 4 octets of a length-checked body. */
    while (len - pos >= 4) {
        uint16_t id = (uint16_t)(ext[pos] << 8 | ext[pos + 1]);
        size_t klen = (size_t)(ext[pos + 2] << 8 | ext[pos + 3]);
        if (klen > len - pos - 4)
            return -1;
        for (size_t i = 0; i < TLS_GROUPS_LEN; i++)
            if (tls_groups[i].id == id)
                return (int)i;
        pos += 4 + klen;
    }
    return -1;
}

/* Before the library picks a key exchange group: it picks by our order
 * (SSL_OP_CIPHER_SERVER_PREFERENCE applies to groups too) whatever key
 * shares the client sent, so a client that sent a P-256 share but also
 * lists X25519 would get a HelloRetryRequest asking for X25519: a second
 * ClientHello, a second key generation and a round trip more, for a group
 * no stronger than the one it offered. Any group we accept is good
 * enough: put the client's first share we accept at the head of this
 * connection's list. */
static enum ssl_select_cert_result_t select_cert_cb(const SSL_CLIENT_HELLO *hello)
{
    const uint8_t *ext;
    size_t len;
    if (!SSL_early_callback_ctx_extension_get(hello, TLSEXT_TYPE_key_share, &ext, &len))
        return ssl_select_cert_success;
    int first = key_share_group(ext, len);
    if (first <= 0)
        return ssl_select_cert_success; /* our first choice already, or none */
    int nids[TLS_GROUPS_LEN];
    size_t n = 0;
    nids[n++] = tls_groups[first].nid;
    for (size_t i = 0; i < TLS_GROUPS_LEN; i++)
        if ((int)i != first)
            nids[n++] = tls_groups[i].nid;
    /* On failure (no memory) the context's order stays: a retry at worst. */
    SSL_set1_curves(hello->ssl, nids, n);
    return ssl_select_cert_success;
}

static void err_from_queue(char *err, size_t err_len, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (file != NULL)
        snprintf(err, err_len, "%s: %s: %s", file, what, reason != NULL ? reason : strerror(errno));
    else
        snprintf(err, err_len, "%s: %s", what, reason != NULL ? reason : "unknown error");
    ERR_clear_error();
}

/* Settings shared by the default context and every SNI one. */
/* Where a certificate and its key were configured, for error messages:
 * "proxy.ini:12: certificate: cannot load /etc/...: reason". */
struct cert_source {
    const char *cert, *key;
    unsigned cert_line, key_line;
};

static void file_error(char *err, size_t err_len, const struct imf_config *cfg, unsigned line,
                       const char *key, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (reason == NULL)
        reason = errno != 0 ? strerror(errno) : "unknown error";
    snprintf(err, err_len, "%s:%u: %s: %s %s: %s", cfg->path, line, key, what, file, reason);
    ERR_clear_error();
}

static int ctx_configure(SSL_CTX *ctx, const struct imf_config *cfg, const struct cert_source *src,
                         char *err, size_t err_len)
{
    if (!SSL_CTX_set_min_proto_version(ctx, cfg->min_version) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
        err_from_queue(err, err_len, "min_version", NULL);
        return -EINVAL;
    }
    char ciphers[sizeof(tls12_ciphers) + sizeof(legacy_ciphers) + 1];
    snprintf(ciphers, sizeof(ciphers), "%s%s%s", tls12_ciphers, cfg->legacy_ciphers ? ":" : "",
             cfg->legacy_ciphers ? legacy_ciphers : "");
    if (!SSL_CTX_set_strict_cipher_list(ctx, ciphers)) {
        err_from_queue(err, err_len, "cipher list", NULL);
        return -EINVAL;
    }
    errno = 0;
    if (SSL_CTX_use_certificate_chain_file(ctx, src->cert) != 1) {
        file_error(err, err_len, cfg, src->cert_line, "certificate", "cannot load", src->cert);
        return -EINVAL;
    }
    errno = 0;
    if (SSL_CTX_use_PrivateKey_file(ctx, src->key, SSL_FILETYPE_PEM) != 1) {
        /* BoringSSL checks the pair here already: say so in words. */
        bool mismatch = ERR_GET_REASON(ERR_peek_error()) == X509_R_KEY_VALUES_MISMATCH;
        file_error(err, err_len, cfg, src->key_line, "private_key",
                   mismatch ? "does not match the certificate:" : "cannot load", src->key);
        return -EINVAL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        file_error(err, err_len, cfg, src->key_line, "private_key",
                   "does not match the certificate:", src->key);
        return -EINVAL;
    }
    int64_t not_after;
    if (imf_tls_not_after(SSL_CTX_get0_certificate(ctx), &not_after) == 0) {
        int64_t left = not_after - (int64_t)time(NULL);
        if (left < (int64_t)IMF_TLS_EXPIRY_WARN_DAYS * 86400) {
            char when[32] = "?";
            time_t t = (time_t)not_after;
            struct tm tm;
            if (gmtime_r(&t, &tm) != NULL)
                strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
            imf_warn("tls", "%s:%u: certificate: %s %s %s (notAfter)", cfg->path, src->cert_line,
                     src->cert, left <= 0 ? "expired on" : "expires within 14 days, on", when);
        }
    }
    /* No renegotiation is BoringSSL's default for servers. Tickets: BoringSSL
     * rotates its own ticket keys; off means full handshakes only. */
    if (!cfg->session_tickets)
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    /* Our order (AES-GCM, then ChaCha20, all forward-secret AEAD) wins over
     * the client's. */
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    int nids[TLS_GROUPS_LEN];
    for (size_t i = 0; i < TLS_GROUPS_LEN; i++)
        nids[i] = tls_groups[i].nid;
    if (!SSL_CTX_set1_curves(ctx, nids, TLS_GROUPS_LEN)) {
        err_from_queue(err, err_len, "key exchange groups", NULL);
        return -ENOMEM;
    }
    SSL_CTX_set_select_certificate_cb(ctx, select_cert_cb);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    SSL_CTX_set_info_callback(ctx, info_callback);
    /* Release record buffers while idle: an idle session then costs little. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE);
    return 0;
}

/* The SNI table hangs off the default context (ex_data, freed with it). */
struct sni_entry {
    SSL_CTX *ctx;
    char name[64];     /* NAME of [certificate.NAME] */
    char *cert_path;   /* for the expiry metric */
    const char *names; /* borrowed from the config snapshot, see below */
    char *names_copy;
};
struct sni_table {
    size_t len;
    struct sni_entry entries[];
};

static int sni_index = -1;
static pthread_once_t sni_index_once = PTHREAD_ONCE_INIT;

static void sni_table_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
                           void *argp)
{
    struct sni_table *t = ptr;
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->len; i++) {
        SSL_CTX_free(t->entries[i].ctx);
        free(t->entries[i].names_copy);
        free(t->entries[i].cert_path);
    }
    free(t);
}

static void sni_index_init(void)
{
    sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_table_free);
}

/* Does host match one entry of a "a.example, *.example.org" list? A
 * wildcard stands for exactly one leftmost label. */
bool imf_tls_name_matches(const char *list, const char *host)
{
    size_t hlen = strlen(host);
    if (hlen > 0 && host[hlen - 1] == '.')
        hlen--; /* a fully qualified name with its root dot */
    const char *p = list, *start;
    size_t n;
    while (imf_list_next(&p, &start, &n)) {
        if (n > 2 && start[0] == '*' && start[1] == '.') {
            const char *dot = memchr(host, '.', hlen);
            size_t suffix = n - 1; /* ".example.org" */
            if (dot != NULL && dot != host && (size_t)(host + hlen - dot) == suffix &&
                strncasecmp(dot, start + 1, suffix) == 0)
                return true;
        } else if (n == hlen && strncasecmp(start, host, n) == 0) {
            return true;
        }
    }
    return false;
}

/* Picks the certificate for the name the client sent; no name or no match
 * keeps the default. */
static int servername_cb(SSL *ssl, int *out_alert, void *arg)
{
    const struct sni_table *t = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (host == NULL || t == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    for (size_t i = 0; i < t->len; i++) {
        if (imf_tls_name_matches(t->entries[i].names, host)) {
            SSL_set_SSL_CTX(ssl, t->entries[i].ctx);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

int imf_tls_ctx_new(const struct imf_config *cfg, SSL_CTX **out_ctx, char *err, size_t err_len)
{
    pthread_once(&chain_method_once, chain_method_init);
    pthread_once(&sni_index_once, sni_index_init);
    if (chain_method == NULL || sni_index < 0) {
        snprintf(err, err_len, "cannot set up the TLS library");
        return -ENOMEM;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (ctx == NULL) {
        snprintf(err, err_len, "cannot create a TLS context");
        return -ENOMEM;
    }
    struct cert_source main_src = {cfg->certificate, cfg->private_key, cfg->certificate_line,
                                   cfg->private_key_line};
    int rc = ctx_configure(ctx, cfg, &main_src, err, err_len);
    if (rc != 0)
        goto fail;
    if (cfg->certs_len > 0) {
        struct sni_table *t = calloc(1, sizeof(*t) + cfg->certs_len * sizeof(t->entries[0]));
        if (t == NULL || !SSL_CTX_set_ex_data(ctx, sni_index, t)) {
            free(t);
            snprintf(err, err_len, "out of memory");
            rc = -ENOMEM;
            goto fail;
        }
        for (size_t i = 0; i < cfg->certs_len; i++) {
            const struct imf_cert_config *cc = &cfg->certs[i];
            struct sni_entry *e = &t->entries[i];
            /* The context outlives no config snapshot it was built from,
             * but keep our own copy of the names anyway: cheap and safe. */
            e->names_copy = strdup(cc->server_names);
            e->cert_path = strdup(cc->certificate);
            snprintf(e->name, sizeof(e->name), "%s", cc->name);
            e->ctx = SSL_CTX_new(TLS_method());
            if (e->names_copy == NULL || e->cert_path == NULL || e->ctx == NULL) {
                t->len = i + 1;
                snprintf(err, err_len, "out of memory");
                rc = -ENOMEM;
                goto fail;
            }
            e->names = e->names_copy;
            t->len = i + 1;
            struct cert_source src = {cc->certificate, cc->private_key, cc->certificate_line,
                                      cc->private_key_line};
            rc = ctx_configure(e->ctx, cfg, &src, err, err_len);
            if (rc != 0)
                goto fail;
        }
        SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
        SSL_CTX_set_tlsext_servername_arg(ctx, t);
    }
    *out_ctx = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

int imf_tls_not_after(const X509 *cert, int64_t *out_time)
{
    if (cert == NULL)
        return -EINVAL;
    /* This BoringSSL has no ASN1_TIME_to_posix: read the GeneralizedTime
     * form, "YYYYMMDDHHMMSSZ", ourselves. */
    ASN1_GENERALIZEDTIME *g = ASN1_TIME_to_generalizedtime(X509_get0_notAfter(cert), NULL);
    if (g == NULL)
        return -EINVAL;
    const unsigned char *d = ASN1_STRING_get0_data(g);
    int len = ASN1_STRING_length(g);
    int f[6] = {0};
    static const int width[6] = {4, 2, 2, 2, 2, 2};
    int pos = 0, rc = 0;
    for (int i = 0; i < 6 && rc == 0; i++) {
        for (int k = 0; k < width[i]; k++, pos++) {
            if (pos >= len || d[pos] < '0' || d[pos] > '9') {
                rc = -EINVAL;
                break;
            }
            f[i] = f[i] * 10 + (d[pos] - '0');
        }
    }
    if (rc == 0 && (pos >= len || d[pos] != 'Z'))
        rc = -EINVAL;
    ASN1_GENERALIZEDTIME_free(g);
    if (rc != 0)
        return rc;
    struct tm tm = {.tm_year = f[0] - 1900,
                    .tm_mon = f[1] - 1,
                    .tm_mday = f[2],
                    .tm_hour = f[3],
                    .tm_min = f[4],
                    .tm_sec = f[5]};
    *out_time = (int64_t)timegm(&tm);
    return 0;
}

size_t imf_tls_ctx_certs(SSL_CTX *ctx, const struct imf_config *cfg, struct imf_tls_cert_info *out,
                         size_t max)
{
    size_t n = 0;
    if (max == 0)
        return 0;
    out[n] = (struct imf_tls_cert_info){.name = "tls", .file = cfg->certificate};
    if (imf_tls_not_after(SSL_CTX_get0_certificate(ctx), &out[n].not_after) == 0)
        n++;
    const struct sni_table *t = sni_index >= 0 ? SSL_CTX_get_ex_data(ctx, sni_index) : NULL;
    for (size_t i = 0; t != NULL && i < t->len && n < max; i++) {
        out[n] =
            (struct imf_tls_cert_info){.name = t->entries[i].name, .file = t->entries[i].cert_path};
        if (imf_tls_not_after(SSL_CTX_get0_certificate(t->entries[i].ctx), &out[n].not_after) == 0)
            n++;
    }
    return n;
}

SSL *imf_tls_conn_new(SSL_CTX *ctx, struct imf_tls_io *io)
{
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL)
        return NULL;
    /* One BIO both ways (it reads io->in and writes io->out): the SSL
     * takes its one reference. A second one cost every session 88 octets. */
    BIO *bio = BIO_new(chain_method);
    if (bio == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    BIO_set_data(bio, io);
    SSL_set_bio(ssl, bio, bio);
    SSL_set_app_data(ssl, io);
    SSL_set_accept_state(ssl);
    /* Nothing asks the connection for its configuration (certificate,
     * cipher list...) once the handshake is done: let the library free its
     * copy then, which an idle session would otherwise carry for life. */
    SSL_set_shed_handshake_config(ssl, 1);
    return ssl;
}

const char *const imf_tls_failure_names[IMF_TLS_FAIL_COUNT] = {
    "timeout",          "client_closed", "no_alpn", "protocol_version",
    "no_shared_cipher", "not_tls",       "other",
};

enum imf_tls_failure imf_tls_classify_failure(const char *reason)
{
    static const struct {
        const char *needle;
        enum imf_tls_failure bucket;
    } map[] = {
        {"timeout", IMF_TLS_FAIL_TIMEOUT},
        {"connection closed", IMF_TLS_FAIL_CLIENT_CLOSED},
        {"NO_APPLICATION_PROTOCOL", IMF_TLS_FAIL_NO_ALPN},
        {"UNSUPPORTED_PROTOCOL", IMF_TLS_FAIL_PROTOCOL_VERSION},
        {"protocol version", IMF_TLS_FAIL_PROTOCOL_VERSION},
        {"NO_SHARED_CIPHER", IMF_TLS_FAIL_NO_SHARED_CIPHER},
        {"HTTP_REQUEST", IMF_TLS_FAIL_NOT_TLS},
        {"WRONG_VERSION_NUMBER", IMF_TLS_FAIL_NOT_TLS},
        {"UNEXPECTED_RECORD", IMF_TLS_FAIL_NOT_TLS},
        {"RECORD_TOO_LARGE", IMF_TLS_FAIL_NOT_TLS},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strstr(reason, map[i].needle) != NULL)
            return map[i].bucket;
    return IMF_TLS_FAIL_OTHER;
}

const char *imf_tls_failure_reason(SSL *ssl, struct imf_tls_io *io)
{
    unsigned long e = ERR_peek_error();
    if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        ERR_clear_error();
        if (r != NULL)
            return r;
    }
    if (io->alert_desc != NULL) {
        static _Thread_local char text[96];
        snprintf(text, sizeof(text), "alert %s: %s", io->alert_received ? "received" : "sent",
                 io->alert_desc);
        return text;
    }
    if (io->in_eof)
        return "connection closed during handshake";
    return "unknown";
}
