/* floor: the BoringSSL decrypt floor for the APPEND figures.
 *
 * Two SSL objects, a client and a server, talk TLS 1.3 with
 * TLS_AES_128_GCM_SHA256 over memory BIOs: no sockets, no kernel. The
 * client encrypts N MiB of 16 KiB records ahead of time; the server then
 * reads them back with SSL_read into a 16 KiB buffer, and only that reading
 * is timed, with the thread's CPU clock. The figure is the CPU the reading
 * side spends per GiB of plaintext: what any TLS-terminating proxy built on
 * this library must spend at least to decrypt what an APPEND sends it,
 * before a single byte reaches a socket.
 *
 * Usage: floor [--mib N] [--runs R]   (defaults: 256 MiB, 5 runs)
 * Prints one line:
 *   RESULT mode=floor mib=N runs=R cpu_s_per_gib=... best=... worst=... cipher=...
 * cpu_s_per_gib is the median over the runs. Exit status 1 when the
 * handshake fails or a byte read back differs from what was written. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define RECORD  (16 * 1024)
#define MAX_RUN 101
#define GIB     (1024.0 * 1024.0 * 1024.0)

static void fail(const char *what)
{
    fprintf(stderr, "floor: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A self-signed ECDSA P-256 certificate made in memory: the handshake is
 * not what is measured, only that it negotiates what the proxies do. */
static void make_identity(EVP_PKEY **out_key, X509 **out_cert)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *key = EVP_PKEY_new();
    X509 *cert = X509_new();
    if (ec == NULL || key == NULL || cert == NULL || !EC_KEY_generate_key(ec) ||
        !EVP_PKEY_assign_EC_KEY(key, ec))
        fail("cannot make a key");
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const uint8_t *)"localhost", -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    if (!X509_sign(cert, key, EVP_sha256()))
        fail("cannot sign the certificate");
    *out_key = key;
    *out_cert = cert;
}

static SSL_CTX *ctx_new(bool server, EVP_PKEY *key, X509 *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (ctx == NULL)
        fail("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    /* BoringSSL has no TLS 1.3 cipher list: it puts AES-128-GCM first on
     * hardware with AES instructions, as for the load client; a machine
     * without them negotiates ChaCha20 and the exit status says so. */
    if (server && (!SSL_CTX_use_PrivateKey(ctx, key) || !SSL_CTX_use_certificate(ctx, cert)))
        fail("cannot load the identity");
    return ctx;
}

/* Moves what one side wrote into the other side's read BIO. */
static void pump(BIO *from, BIO *to)
{
    char buf[RECORD + 256];
    for (int i = 0; i < 1 << 20; i++) {
        int n = BIO_read(from, buf, sizeof(buf));
        if (n <= 0)
            return;
        if (BIO_write(to, buf, n) != n)
            fail("BIO_write");
    }
}

/* The plaintext of record i: not constant, so no layer can shortcut it. */
static void fill_record(uint8_t *p, uint64_t i)
{
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (i * 0xbf58476d1ce4e5b9ull);
    for (size_t k = 0; k < RECORD; k += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + k, &x, 8);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One run: handshake, encrypt mib MiB, then time their decryption.
 * Returns CPU seconds per GiB. */
static double one_run(SSL_CTX *cctx, SSL_CTX *sctx, unsigned mib, char *out_cipher, size_t cap)
{
    SSL *c = SSL_new(cctx), *s = SSL_new(sctx);
    BIO *c_in = BIO_new(BIO_s_mem()), *c_out = BIO_new(BIO_s_mem());
    BIO *s_in = BIO_new(BIO_s_mem()), *s_out = BIO_new(BIO_s_mem());
    if (c == NULL || s == NULL || c_in == NULL || c_out == NULL || s_in == NULL || s_out == NULL)
        fail("SSL_new");
    BIO_set_mem_eof_return(c_in, -1);
    BIO_set_mem_eof_return(s_in, -1);
    SSL_set_bio(c, c_in, c_out);
    SSL_set_bio(s, s_in, s_out);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    for (int i = 0; i < 20 && !(SSL_is_init_finished(c) && SSL_is_init_finished(s)); i++) {
        SSL_do_handshake(c);
        pump(c_out, s_in);
        SSL_do_handshake(s);
        pump(s_out, c_in);
    }
    if (!SSL_is_init_finished(c) || !SSL_is_init_finished(s))
        fail("the handshake did not complete");
    const SSL_CIPHER *ci = SSL_get_current_cipher(s);
    snprintf(out_cipher, cap, "%s", ci != NULL ? SSL_CIPHER_standard_name(ci) : "-");

    uint64_t records = (uint64_t)mib * 64;
    uint8_t *plain = malloc(RECORD), *got = malloc(RECORD);
    /* The ciphertext, collected in one buffer: a read-only memory BIO over
     * it advances a pointer per read, where a growing memory BIO would move
     * what is left on every read. */
    size_t wire_cap = (size_t)records * (RECORD + 64) + 4096, wire_len = 0;
    uint8_t *wire = malloc(wire_cap);
    if (plain == NULL || got == NULL || wire == NULL)
        fail("malloc");
    for (uint64_t i = 0; i < records; i++) {
        fill_record(plain, i);
        if (SSL_write(c, plain, RECORD) != RECORD)
            fail("SSL_write");
        for (int k = 0; k < 16; k++) {
            int n = BIO_read(c_out, wire + wire_len, (int)(wire_cap - wire_len));
            if (n <= 0)
                break;
            wire_len += (size_t)n;
        }
    }
    if (BIO_ctrl_pending(c_out) != 0)
        fail("the ciphertext buffer is too small");
    BIO *s_wire = BIO_new_mem_buf(wire, (ptrdiff_t)wire_len);
    if (s_wire == NULL)
        fail("BIO_new_mem_buf");
    /* Whatever the handshake left unread (tickets go the other way) stays
     * in the SSL object; from here on the server reads the records. */
    SSL_set0_rbio(s, s_wire);

    double t0 = thread_cpu_s();
    uint64_t total = 0;
    for (uint64_t guard = 0; guard < 4 * records + 16 && total < records * RECORD; guard++) {
        int n = SSL_read(s, got, RECORD);
        if (n <= 0)
            fail("SSL_read");
        total += (uint64_t)n;
    }
    double cpu = thread_cpu_s() - t0;
    if (total != records * RECORD)
        fail("fewer bytes read than written");
    /* Check the last record outside the timed loop: the bytes are right. */
    fill_record(plain, records - 1);
    if (memcmp(plain, got, RECORD) != 0)
        fail("the bytes read back differ from those written");
    free(plain);
    free(got);
    SSL_free(s);
    free(wire);
    SSL_free(c);
    return cpu / ((double)total / GIB);
}

int main(int argc, char **argv)
{
    unsigned mib = 256, runs = 5;
    for (int i = 1; i < argc; i++) {
        char *end;
        unsigned long v = i + 1 < argc ? strtoul(argv[i + 1], &end, 10) : 0;
        bool ok = i + 1 < argc && end != argv[i + 1] && *end == '\0';
        if (strcmp(argv[i], "--mib") == 0 && ok && v >= 1 && v <= 65536) {
            mib = (unsigned)v;
        } else if (strcmp(argv[i], "--runs") == 0 && ok && v >= 1 && v <= MAX_RUN) {
            runs = (unsigned)v;
        } else {
            fprintf(stderr, "usage: floor [--mib 1..65536] [--runs 1..%d]\n", MAX_RUN);
            return 2;
        }
        i++;
    }
    EVP_PKEY *key;
    X509 *cert;
    make_identity(&key, &cert);
    SSL_CTX *cctx = ctx_new(false, NULL, NULL), *sctx = ctx_new(true, key, cert);
    double per_gib[MAX_RUN];
    char cipher[64] = "-";
    for (unsigned r = 0; r < runs; r++)
        per_gib[r] = one_run(cctx, sctx, mib, cipher, sizeof(cipher));
    qsort(per_gib, runs, sizeof(per_gib[0]), cmp_double);
    printf("RESULT mode=floor mib=%u runs=%u cpu_s_per_gib=%.4f best=%.4f worst=%.4f cipher=%s\n",
           mib, runs, per_gib[runs / 2], per_gib[0], per_gib[runs - 1], cipher);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    X509_free(cert);
    EVP_PKEY_free(key);
    return strcmp(cipher, "TLS_AES_128_GCM_SHA256") == 0 ? 0 : 1;
}
