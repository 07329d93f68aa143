/* loadclient: drives a TLS IMAP proxy (or a plain IMAP server) for the
 * benchmark and prints one machine-readable RESULT line per run.
 *
 * Modes:
 *   append     C connections, each LOGIN, then APPEND INBOX {N+} + N octets
 *              in a loop for T seconds: MiB/s of message data.
 *   noop       1 connection, LOGIN, then NOOP round trips for T seconds:
 *              latency percentiles.
 *   idle       N logged-in sessions held open: proxy RSS per session.
 *   handshake  full TLS handshakes (no resumption) on C parallel
 *              connections for T seconds: handshakes/s.
 *   realistic  N logged-in sessions (optionally with COMPRESS DEFLATE), each
 *              doing a small FETCH or NOOP every 200 ms and an APPEND of
 *              50 KiB every 10 s, from jittered starts, for T seconds, on one
 *              epoll thread: latency per kind of command, proxy CPU per
 *              command, the proxy's peak RSS.
 * Every mode checks what comes back: each APPEND carries its body's CRC-32
 * (bodies.h), which the sink checks, answering NO on a mismatch; FETCH
 * bodies are compared with the ones the client computes; a NO or a wrong
 * byte counts as failed= in the RESULT line.
 * With --pid, the proxy's CPU time (utime + stime from /proc/PID/stat,
 * which includes threads that have exited) is read around the measured
 * window and reported per GiB, per NOOP or per handshake.
 *
 * TLS is BoringSSL, TLS 1.3 only, without certificate verification (the
 * client's verification cost is not what is measured). BoringSSL offers
 * AES-128-GCM first on hardware with AES instructions; the negotiated
 * cipher is printed in the RESULT line so a run on other hardware says so.
 * Ciphertext is written through a buffering BIO, so the client issues one
 * write() per 256 KiB instead of one per TLS record: the client should cost
 * little next to the proxy it measures. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <zlib.h>

#include "bodies.h"

#define WBUF_CAP     (512 * 1024)
#define WBUF_FLUSH   (256 * 1024)
#define RBUF_CAP     4096
#define LINE_MAX_LEN 4096
#define IO_TIMEOUT_S 30
#define MIB          (1024.0 * 1024.0)
#define GIB          (1024.0 * 1024.0 * 1024.0)

enum mode { MODE_APPEND, MODE_NOOP, MODE_IDLE, MODE_HANDSHAKE, MODE_REALISTIC, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"append", "noop", "idle", "handshake",
                                                   "realistic"};

struct opts {
    enum mode mode;
    const char *host;
    int port;
    bool plain;
    double seconds;
    unsigned conns;
    uint64_t size;
    unsigned sessions;
    long pid;
    const char *label;
    bool sync_literal;
    bool compress;        /* realistic: COMPRESS DEFLATE after LOGIN */
    unsigned op_ms;       /* realistic: a FETCH or NOOP this often */
    unsigned append_s;    /* realistic: an APPEND this often */
    uint64_t append_size; /* realistic: the APPEND's size */
};

static struct opts opt = {
    .host = "127.0.0.1",
    .port = 0,
    .seconds = 10,
    .conns = 0,
    .size = 8u << 20,
    .sessions = 2000,
    .pid = 0,
    .label = "unknown",
    .op_ms = 200,
    .append_s = 10,
    .append_size = 50 * 1024,
};

static SSL_CTX *ctx;
static BIO_METHOD *wbio_method;

struct conn {
    int fd;
    SSL *ssl;
    char *wbuf; /* ciphertext (or plaintext with --plain) not yet written */
    size_t wlen;
    bool werr;
    char rbuf[RBUF_CAP];
    size_t roff, rlen;
    unsigned tagno;
};

/* ---- small helpers ---------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* This process's own CPU time (user + system, all threads) in seconds. */
static double self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The proxy's CPU time in seconds (all threads, live and exited), or -1. */
static double proc_cpu_s(long pid)
{
    if (pid <= 0)
        return -1;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces: fields are counted after ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    p++;
    unsigned long long utime = 0, stime = 0;
    /* Field 3 is the state; utime and stime are fields 14 and 15. */
    for (int field = 3; field <= 15; field++) {
        while (*p == ' ')
            p++;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (field == 14)
            utime = v;
        if (field == 15)
            stime = v;
        p = end;
        while (*p != ' ' && *p != '\0')
            p++;
    }
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* The proxy's resident set in KiB, or -1. */
static long proc_rss_kib(long pid)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* ---- a write BIO that batches records ----------------------------------- */

static int conn_flush(struct conn *c)
{
    if (c->werr)
        return -1;
    if (c->wlen == 0)
        return 0;
    int rc = write_all(c->fd, c->wbuf, c->wlen);
    c->wlen = 0;
    if (rc != 0)
        c->werr = true;
    return rc;
}

static int wbio_write(BIO *bio, const char *data, int len)
{
    struct conn *c = BIO_get_data(bio);
    size_t n = (size_t)len;
    if (n > WBUF_CAP - c->wlen && conn_flush(c) != 0)
        return -1;
    if (n > WBUF_CAP) {
        if (write_all(c->fd, data, n) != 0) {
            c->werr = true;
            return -1;
        }
        return len;
    }
    memcpy(c->wbuf + c->wlen, data, n);
    c->wlen += n;
    if (c->wlen >= WBUF_FLUSH && conn_flush(c) != 0)
        return -1;
    return len;
}

static long wbio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    if (cmd == BIO_CTRL_FLUSH) {
        struct conn *c = BIO_get_data(bio);
        return conn_flush(c) == 0 ? 1 : 0;
    }
    return 0;
}

static int wbio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

/* ---- connections -------------------------------------------------------- */

static int tcp_connect(void)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, opt.host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)opt.port);
        len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, opt.host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)opt.port);
        len = sizeof(*a6);
    } else {
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_close(struct conn *c, bool notify)
{
    if (c->ssl != NULL) {
        if (notify && !c->werr) {
            SSL_shutdown(c->ssl);
            conn_flush(c);
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->wbuf);
    c->wbuf = NULL;
}

/* Connects and, unless --plain, completes a TLS handshake. */
static int conn_open(struct conn *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->wbuf = malloc(WBUF_CAP);
    if (c->wbuf == NULL)
        return -1;
    c->fd = tcp_connect();
    if (c->fd < 0)
        goto fail;
    if (opt.plain)
        return 0;
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL)
        goto fail;
    BIO *rbio = BIO_new_socket(c->fd, BIO_NOCLOSE);
    BIO *wbio = BIO_new(wbio_method);
    if (rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        goto fail;
    }
    BIO_set_data(wbio, c);
    SSL_set_bio(c->ssl, rbio, wbio);
    int rc = SSL_connect(c->ssl);
    if (conn_flush(c) != 0 || rc != 1)
        goto fail;
    return 0;
fail:
    conn_close(c, false);
    return -1;
}

/* Queues bytes (encrypting them) and writes them out. */
static int conn_write(struct conn *c, const void *p, size_t n)
{
    if (c->ssl == NULL) {
        if (c->wlen > 0 && conn_flush(c) != 0)
            return -1;
        if (write_all(c->fd, p, n) != 0) {
            c->werr = true;
            return -1;
        }
        return 0;
    }
    const char *q = p;
    while (n > 0) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        int k = SSL_write(c->ssl, q, chunk);
        if (k <= 0)
            return -1;
        q += k;
        n -= (size_t)k;
    }
    return conn_flush(c);
}

static int conn_fill(struct conn *c)
{
    if (conn_flush(c) != 0)
        return -1;
    if (c->roff == c->rlen)
        c->roff = c->rlen = 0;
    if (c->rlen == sizeof(c->rbuf)) {
        memmove(c->rbuf, c->rbuf + c->roff, c->rlen - c->roff);
        c->rlen -= c->roff;
        c->roff = 0;
        if (c->rlen == sizeof(c->rbuf))
            return -1;
    }
    for (;;) {
        int k;
        if (c->ssl != NULL) {
            k = SSL_read(c->ssl, c->rbuf + c->rlen, (int)(sizeof(c->rbuf) - c->rlen));
            /* Post-handshake messages may have queued records (alerts, key
             * updates): send them. */
            if (conn_flush(c) != 0)
                return -1;
        } else {
            k = (int)recv(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen, 0);
            if (k < 0 && errno == EINTR)
                continue;
        }
        if (k <= 0)
            return -1;
        c->rlen += (size_t)k;
        return 0;
    }
}

/* Reads one line (CRLF stripped) into out. Returns its length or -1. */
static int conn_read_line(struct conn *c, char *out, size_t cap)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        char *nl = memchr(c->rbuf + c->roff, '\n', c->rlen - c->roff);
        if (nl != NULL) {
            size_t len = (size_t)(nl - (c->rbuf + c->roff));
            size_t take = len + 1;
            if (len > 0 && c->rbuf[c->roff + len - 1] == '\r')
                len--;
            if (len >= cap)
                len = cap - 1;
            memcpy(out, c->rbuf + c->roff, len);
            out[len] = '\0';
            c->roff += take;
            return (int)len;
        }
        if (conn_fill(c) != 0)
            return -1;
    }
    return -1;
}

/* Reads responses until the one tagged tag. Returns 0 for OK. */
static int conn_expect_tagged(struct conn *c, const char *tag)
{
    char line[LINE_MAX_LEN];
    size_t tl = strlen(tag);
    for (int lines = 0; lines < 1000; lines++) {
        if (conn_read_line(c, line, sizeof(line)) < 0)
            return -1;
        if (strncmp(line, tag, tl) == 0 && line[tl] == ' ')
            return strncmp(line + tl + 1, "OK", 2) == 0 ? 0 : -1;
    }
    return -1;
}

/* Opens a session: connection, greeting, LOGIN. */
static int session_open(struct conn *c)
{
    char line[LINE_MAX_LEN];
    if (conn_open(c) != 0)
        return -1;
    if (conn_read_line(c, line, sizeof(line)) < 0 || strncmp(line, "* OK", 4) != 0)
        goto fail;
    static const char login[] = "L1 LOGIN bench bench\r\n";
    if (conn_write(c, login, sizeof(login) - 1) != 0 || conn_expect_tagged(c, "L1") != 0)
        goto fail;
    if (opt.compress) {
        static const char z[] = "L2 COMPRESS DEFLATE\r\n";
        if (conn_write(c, z, sizeof(z) - 1) != 0 || conn_expect_tagged(c, "L2") != 0)
            goto fail;
    }
    return 0;
fail:
    conn_close(c, false);
    return -1;
}

static void tls_description(struct conn *c, char *out, size_t cap)
{
    if (c->ssl == NULL) {
        snprintf(out, cap, "tls=none");
        return;
    }
    const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
    uint16_t sig = SSL_get_peer_signature_algorithm(c->ssl);
    snprintf(
        out, cap, "tls=%s cipher=%s group=%s sigalg=%s", SSL_get_version(c->ssl),
        ci != NULL ? SSL_CIPHER_standard_name(ci) : "-",
        SSL_get_curve_name(SSL_get_curve_id(c->ssl)) ? SSL_get_curve_name(SSL_get_curve_id(c->ssl))
                                                     : "-",
        SSL_get_signature_algorithm_name(sig, 0) ? SSL_get_signature_algorithm_name(sig, 0) : "-");
}

/* ---- append ----------------------------------------------------------- */

#define APPEND_HDR_MAX 96

struct append_worker {
    pthread_t th;
    struct conn c;
    bool ok;
    uint64_t appends, bytes;
    uint32_t crc; /* of the message, announced in every APPEND */
    double deadline;
    char tls[256];
};

static pthread_barrier_t ready_barrier, go_barrier;
static double go_deadline;

static void *append_main(void *arg)
{
    struct append_worker *w = arg;
    /* Header, message and CRLF in one buffer, so each APPEND is one write:
     * the header is placed right before the message. */
    char *buf = malloc(APPEND_HDR_MAX + opt.size + 2);
    bool opened = buf != NULL && session_open(&w->c) == 0;
    if (opened)
        tls_description(&w->c, w->tls, sizeof(w->tls));
    if (buf != NULL) {
        char *msg = buf + APPEND_HDR_MAX;
        /* A plausible message: 76-character lines of text. */
        for (uint64_t i = 0; i < opt.size; i++)
            msg[i] = (i % 78 == 76) ? '\r' : (i % 78 == 77) ? '\n' : (char)('a' + (i * 7) % 26);
        msg[opt.size] = '\r';
        msg[opt.size + 1] = '\n';
        w->crc = (uint32_t)crc32_z(crc32(0, Z_NULL, 0), (const Bytef *)msg, (size_t)opt.size);
    }
    pthread_barrier_wait(&ready_barrier);
    pthread_barrier_wait(&go_barrier);
    if (!opened) {
        free(buf);
        return NULL;
    }
    w->ok = true;
    for (unsigned n = 1; now_s() < go_deadline; n++) {
        char hdr[APPEND_HDR_MAX], tag[16];
        snprintf(tag, sizeof(tag), "A%u", n);
        int hl = snprintf(hdr, sizeof(hdr),
                          "%s APPEND INBOX (" BENCH_CRC_FLAG "%08x) {%" PRIu64 "%s}\r\n", tag,
                          w->crc, opt.size, opt.sync_literal ? "" : "+");
        char *start = buf + APPEND_HDR_MAX - hl;
        memcpy(start, hdr, (size_t)hl);
        int rc;
        if (opt.sync_literal) {
            char line[LINE_MAX_LEN];
            rc = conn_write(&w->c, start, (size_t)hl);
            if (rc == 0 && (conn_read_line(&w->c, line, sizeof(line)) < 0 || line[0] != '+'))
                rc = -1;
            if (rc == 0)
                rc = conn_write(&w->c, buf + APPEND_HDR_MAX, opt.size + 2);
        } else {
            rc = conn_write(&w->c, start, (size_t)hl + opt.size + 2);
        }
        if (rc != 0 || conn_expect_tagged(&w->c, tag) != 0) {
            w->ok = false;
            break;
        }
        w->appends++;
        w->bytes += opt.size;
    }
    static const char logout[] = "Z LOGOUT\r\n";
    if (w->ok && conn_write(&w->c, logout, sizeof(logout) - 1) == 0)
        conn_expect_tagged(&w->c, "Z");
    conn_close(&w->c, true);
    free(buf);
    return NULL;
}

static int run_append(void)
{
    unsigned n = opt.conns != 0 ? opt.conns : 1;
    struct append_worker *ws = calloc(n, sizeof(*ws));
    if (ws == NULL)
        return 1;
    pthread_barrier_init(&ready_barrier, NULL, n + 1);
    pthread_barrier_init(&go_barrier, NULL, n + 1);
    for (unsigned i = 0; i < n; i++)
        pthread_create(&ws[i].th, NULL, append_main, &ws[i]);
    pthread_barrier_wait(&ready_barrier);
    double cpu0 = proc_cpu_s(opt.pid);
    double t0 = now_s();
    go_deadline = t0 + opt.seconds;
    pthread_barrier_wait(&go_barrier);
    for (unsigned i = 0; i < n; i++)
        pthread_join(ws[i].th, NULL);
    double t1 = now_s();
    double cpu1 = proc_cpu_s(opt.pid);
    uint64_t bytes = 0, appends = 0;
    unsigned failed = 0;
    for (unsigned i = 0; i < n; i++) {
        bytes += ws[i].bytes;
        appends += ws[i].appends;
        if (!ws[i].ok)
            failed++;
    }
    double el = t1 - t0;
    printf("RESULT mode=append proxy=%s conns=%u size=%" PRIu64 " seconds=%.2f appends=%" PRIu64
           " mibps=%.1f",
           opt.label, n, opt.size, el, appends, (double)bytes / MIB / el);
    if (opt.pid > 0 && bytes > 0 && cpu0 >= 0 && cpu1 >= 0)
        printf(" proxy_cpu_s=%.2f cpu_s_per_gib=%.3f", cpu1 - cpu0,
               (cpu1 - cpu0) / ((double)bytes / GIB));
    printf(" failed=%u %s\n", failed, ws[0].tls[0] ? ws[0].tls : "tls=-");
    free(ws);
    return failed == n ? 1 : 0;
}

/* ---- noop ------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int run_noop(void)
{
    struct conn c;
    if (session_open(&c) != 0) {
        fprintf(stderr, "loadclient: cannot open a session to %s:%d\n", opt.host, opt.port);
        return 1;
    }
    char tls[256];
    tls_description(&c, tls, sizeof(tls));
    char cmd[32], tag[16];
    /* Warm-up: the first round trips pay for cold caches. */
    for (unsigned i = 0; i < 200; i++) {
        snprintf(tag, sizeof(tag), "W%u", i);
        int len = snprintf(cmd, sizeof(cmd), "%s NOOP\r\n", tag);
        if (conn_write(&c, cmd, (size_t)len) != 0 || conn_expect_tagged(&c, tag) != 0) {
            fprintf(stderr, "loadclient: NOOP failed during warm-up\n");
            conn_close(&c, false);
            return 1;
        }
    }
    size_t cap = 1u << 16, count = 0;
    const size_t max_samples = 50u * 1000 * 1000;
    uint64_t *lat = malloc(cap * sizeof(*lat));
    if (lat == NULL)
        return 1;
    bool ok = true;
    double cpu0 = proc_cpu_s(opt.pid);
    double t0 = now_s(), deadline = t0 + opt.seconds;
    while (count < max_samples && now_s() < deadline) {
        if (count == cap) {
            uint64_t *nl = realloc(lat, 2 * cap * sizeof(*lat));
            if (nl == NULL)
                break;
            lat = nl;
            cap *= 2;
        }
        snprintf(tag, sizeof(tag), "N%zu", count);
        int len = snprintf(cmd, sizeof(cmd), "%s NOOP\r\n", tag);
        uint64_t a = now_ns();
        if (conn_write(&c, cmd, (size_t)len) != 0 || conn_expect_tagged(&c, tag) != 0) {
            ok = false;
            break;
        }
        lat[count++] = now_ns() - a;
    }
    double t1 = now_s();
    double cpu1 = proc_cpu_s(opt.pid);
    static const char logout[] = "Z LOGOUT\r\n";
    if (ok && conn_write(&c, logout, sizeof(logout) - 1) == 0)
        conn_expect_tagged(&c, "Z");
    conn_close(&c, true);
    if (count == 0) {
        fprintf(stderr, "loadclient: no NOOP completed\n");
        free(lat);
        return 1;
    }
    qsort(lat, count, sizeof(*lat), cmp_u64);
    double p50 = (double)lat[count / 2] / 1e3;
    double p99 = (double)lat[(size_t)((double)count * 0.99)] / 1e3;
    double mean = 0;
    for (size_t i = 0; i < count; i++)
        mean += (double)lat[i];
    mean /= (double)count * 1e3;
    printf("RESULT mode=noop proxy=%s seconds=%.2f count=%zu p50_us=%.1f p99_us=%.1f mean_us=%.1f",
           opt.label, t1 - t0, count, p50, p99, mean);
    if (opt.pid > 0 && cpu0 >= 0 && cpu1 >= 0)
        printf(" proxy_cpu_s=%.2f cpu_us_per_noop=%.2f", cpu1 - cpu0,
               (cpu1 - cpu0) * 1e6 / (double)count);
    printf(" failed=%d %s\n", ok ? 0 : 1, tls);
    free(lat);
    return ok ? 0 : 1;
}

/* ---- idle ------------------------------------------------------------- */

struct idle_worker {
    pthread_t th;
    struct conn *conns; /* this worker's share */
    unsigned n, opened;
    char tls[256];
};

static void *idle_main(void *arg)
{
    struct idle_worker *w = arg;
    for (unsigned i = 0; i < w->n; i++) {
        if (session_open(&w->conns[i]) != 0) {
            w->conns[i].fd = -1;
            continue;
        }
        /* An idle client keeps no write buffer. */
        free(w->conns[i].wbuf);
        w->conns[i].wbuf = NULL;
        if (w->opened++ == 0)
            tls_description(&w->conns[i], w->tls, sizeof(w->tls));
    }
    return NULL;
}

static int run_idle(void)
{
    unsigned n = opt.sessions, nw = opt.conns != 0 ? opt.conns : 2;
    if (nw > n)
        nw = n;
    if (n == 0 || nw == 0)
        return 1;
    struct conn *conns = calloc(n, sizeof(*conns));
    struct idle_worker *ws = calloc(nw, sizeof(*ws));
    if (conns == NULL || ws == NULL)
        return 1;
    long rss0 = proc_rss_kib(opt.pid);
    double t0 = now_s();
    unsigned at = 0;
    for (unsigned i = 0; i < nw; i++) {
        ws[i].conns = conns + at;
        ws[i].n = n / nw + (i < n % nw ? 1 : 0);
        at += ws[i].n;
        pthread_create(&ws[i].th, NULL, idle_main, &ws[i]);
    }
    unsigned opened = 0;
    for (unsigned i = 0; i < nw; i++) {
        pthread_join(ws[i].th, NULL);
        opened += ws[i].opened;
    }
    double t1 = now_s();
    /* An idle compressed session is one that has been quiet for a while:
     * imapfront gives its zlib state back after 2 s without client input
     * (docs/configuration.md, compress), so read the RSS after 3 s. */
    if (opt.compress)
        sleep_ms(3000);
    /* Let the proxy settle (lazy frees, deferred work): poll its RSS until
     * two readings 100 ms apart agree, for at most 3 seconds. */
    long rss1 = proc_rss_kib(opt.pid), prev = -2;
    for (int i = 0; i < 30 && rss1 != prev; i++) {
        sleep_ms(100);
        prev = rss1;
        rss1 = proc_rss_kib(opt.pid);
    }
    printf("RESULT mode=idle proxy=%s sessions=%u opened=%u open_seconds=%.2f", opt.label, n,
           opened, t1 - t0);
    if (rss0 > 0 && rss1 > 0 && opened > 0)
        printf(" rss_before_kib=%ld rss_after_kib=%ld kib_per_session=%.2f", rss0, rss1,
               (double)(rss1 - rss0) / opened);
    printf(" failed=%u %s\n", n - opened, ws[0].tls[0] ? ws[0].tls : "tls=-");
    for (unsigned i = 0; i < n; i++)
        if (conns[i].fd >= 0)
            conn_close(&conns[i], false);
    free(conns);
    free(ws);
    return opened == n ? 0 : 1;
}

/* ---- handshake -------------------------------------------------------- */

struct hs_worker {
    pthread_t th;
    uint64_t done, failed, resumed;
    char tls[256];
};

static void *hs_main(void *arg)
{
    struct hs_worker *w = arg;
    pthread_barrier_wait(&go_barrier);
    while (now_s() < go_deadline) {
        struct conn c;
        char line[LINE_MAX_LEN];
        if (conn_open(&c) != 0) {
            w->failed++;
            /* A refused connection fails fast; do not spin on it. */
            if (w->failed > 1000 && w->done == 0)
                break;
            continue;
        }
        /* The greeting proves the session is relayed end to end. */
        if (conn_read_line(&c, line, sizeof(line)) < 0 || strncmp(line, "* OK", 4) != 0) {
            w->failed++;
            conn_close(&c, false);
            continue;
        }
        if (c.ssl != NULL && SSL_session_reused(c.ssl))
            w->resumed++;
        if (w->done++ == 0)
            tls_description(&c, w->tls, sizeof(w->tls));
        conn_close(&c, true);
    }
    return NULL;
}

static int run_handshake(void)
{
    unsigned n = opt.conns != 0 ? opt.conns : 2;
    struct hs_worker *ws = calloc(n, sizeof(*ws));
    if (ws == NULL)
        return 1;
    pthread_barrier_init(&go_barrier, NULL, n + 1);
    for (unsigned i = 0; i < n; i++)
        pthread_create(&ws[i].th, NULL, hs_main, &ws[i]);
    double cpu0 = proc_cpu_s(opt.pid);
    double self0 = self_cpu_s();
    double t0 = now_s();
    go_deadline = t0 + opt.seconds;
    pthread_barrier_wait(&go_barrier);
    for (unsigned i = 0; i < n; i++)
        pthread_join(ws[i].th, NULL);
    double t1 = now_s();
    double cpu1 = proc_cpu_s(opt.pid);
    double self1 = self_cpu_s();
    uint64_t done = 0, failed = 0, resumed = 0;
    for (unsigned i = 0; i < n; i++) {
        done += ws[i].done;
        failed += ws[i].failed;
        resumed += ws[i].resumed;
    }
    printf("RESULT mode=handshake proxy=%s conns=%u seconds=%.2f handshakes=%" PRIu64
           " per_s=%.1f resumed=%" PRIu64,
           opt.label, n, t1 - t0, done, (double)done / (t1 - t0), resumed);
    if (opt.pid > 0 && done > 0 && cpu0 >= 0 && cpu1 >= 0)
        printf(" proxy_cpu_s=%.2f cpu_us_per_handshake=%.1f", cpu1 - cpu0,
               (cpu1 - cpu0) * 1e6 / (double)done);
    /* The client's side of the same handshakes: a server that makes its
     * clients work harder (retries, more records, more reads) shows here. */
    if (done > 0 && self0 >= 0 && self1 >= 0)
        printf(" client_cpu_us_per_handshake=%.1f", (self1 - self0) * 1e6 / (double)done);
    const char *tls = "tls=-";
    for (unsigned i = 0; i < n; i++)
        if (ws[i].tls[0]) {
            tls = ws[i].tls;
            break;
        }
    printf(" failed=%" PRIu64 " %s\n", failed, tls);
    free(ws);
    return done > 0 ? 0 : 1;
}

/* ---- realistic -------------------------------------------------------- */

/* The kinds of command a realistic session sends. */
enum rop { ROP_NONE, ROP_NOOP, ROP_FETCH, ROP_APPEND, ROP_COUNT };
static const char *const rop_names[ROP_COUNT] = {"none", "noop", "fetch", "append"};

/* FETCH asks for message numbers 1..FETCH_SEEDS; their bodies are computed
 * once, up front, to compare with what comes back. */
#define FETCH_SEEDS 512
#define REAL_READ   (64 * 1024)
/* Inflated plaintext waiting to be parsed: a FETCH answer is at most 4 KiB
 * plus its lines, so this never fills with sane input. */
#define PBUF_CAP (64 * 1024)

struct rsess {
    struct conn c;
    BIO *rmem;      /* ciphertext read from the socket, for SSL_read */
    z_stream *zin;  /* after COMPRESS: inflating what arrives */
    z_stream *zout; /* after COMPRESS: deflating what leaves */
    uint8_t *pbuf;  /* plaintext not parsed yet */
    size_t plen;
    enum rop op; /* the command in flight, ROP_NONE when idle */
    char tag[16];
    unsigned tagno;
    uint64_t sent_ns; /* when the command in flight was written */
    uint64_t next_op; /* when the next FETCH/NOOP is due */
    uint64_t next_append;
    unsigned small_count, append_count;
    unsigned fetch_n; /* the message the FETCH in flight asked for */
    size_t lit_left;  /* FETCH literal octets still to compare */
    size_t lit_off;
    bool fetch_seen; /* the FETCH in flight got its body */
    bool fetch_bad;  /* ... and it differed */
    bool dead;
};

struct lat {
    uint64_t *v;
    size_t n, cap;
};

static struct rsess *rs;
static uint8_t *fetch_bodies[FETCH_SEEDS + 1];
static struct lat rlat[ROP_COUNT];
static uint64_t rdone[ROP_COUNT], rfailed[ROP_COUNT], rlate;
static uint8_t *append_body;

/* A binary min-heap of (due time, session): every idle session is in it
 * once, so the loop wakes for the next due one only. */
struct due {
    uint64_t at;
    unsigned idx;
};
static struct due *heap;
static size_t heap_n;

static void heap_push(uint64_t at, unsigned idx)
{
    size_t i = heap_n++;
    while (i > 0 && heap[(i - 1) / 2].at > at) {
        heap[i] = heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    heap[i] = (struct due){at, idx};
}

static struct due heap_pop(void)
{
    struct due top = heap[0], last = heap[--heap_n];
    size_t i = 0;
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= heap_n)
            break;
        if (k + 1 < heap_n && heap[k + 1].at < heap[k].at)
            k++;
        if (heap[k].at >= last.at)
            break;
        heap[i] = heap[k];
        i = k;
    }
    if (heap_n > 0)
        heap[i] = last;
    return top;
}

static void lat_add(struct lat *l, uint64_t ns)
{
    if (l->n == l->cap) {
        size_t ncap = l->cap != 0 ? 2 * l->cap : 4096;
        uint64_t *nv = realloc(l->v, ncap * sizeof(*nv));
        if (nv == NULL)
            return;
        l->v = nv;
        l->cap = ncap;
    }
    l->v[l->n++] = ns;
}

static double lat_pct(struct lat *l, double q)
{
    if (l->n == 0)
        return 0;
    size_t i = (size_t)((double)l->n * q);
    return (double)l->v[i < l->n ? i : l->n - 1] / 1e3;
}

/* Sends plaintext: deflated (sync flush) after COMPRESS, then encrypted. */
static int rsess_send(struct rsess *s, const void *p, size_t n)
{
    if (s->zout == NULL)
        return conn_write(&s->c, p, n);
    static uint8_t zb[128 * 1024];
    z_stream *z = s->zout;
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    for (int guard = 0; guard < 1024; guard++) {
        z->next_out = zb;
        z->avail_out = sizeof(zb);
        if (deflate(z, Z_SYNC_FLUSH) == Z_STREAM_ERROR)
            return -1;
        size_t got = sizeof(zb) - z->avail_out;
        if (got > 0 && conn_write(&s->c, zb, got) != 0)
            return -1;
        if (z->avail_out != 0)
            return 0;
    }
    return -1;
}

static void rsess_fail(struct rsess *s, const char *why)
{
    if (s->op != ROP_NONE)
        rfailed[s->op]++;
    if (!s->dead)
        fprintf(stderr, "loadclient: session %u: %s\n", (unsigned)(s - rs), why);
    s->dead = true;
    s->op = ROP_NONE;
}

/* Starts the command that is due: an APPEND when its time has come, else
 * a FETCH or a NOOP, alternately. */
static void rsess_start(struct rsess *s, uint64_t now)
{
    char hdr[128];
    int hl;
    snprintf(s->tag, sizeof(s->tag), "R%u", ++s->tagno);
    if (now >= s->next_append) {
        s->op = ROP_APPEND;
        s->next_append += (uint64_t)opt.append_s * 1000000000u;
        /* Each APPEND's body differs: seeded by session and count. */
        uint64_t seed = ((uint64_t)(s - rs) << 32) | ++s->append_count;
        bench_body(append_body, opt.append_size, seed);
        uint32_t crc = (uint32_t)crc32_z(crc32(0, Z_NULL, 0), append_body, opt.append_size);
        hl = snprintf(hdr, sizeof(hdr),
                      "%s APPEND INBOX (\\Seen " BENCH_CRC_FLAG "%08x) {%" PRIu64 "+}\r\n", s->tag,
                      crc, opt.append_size);
        memcpy(append_body + opt.append_size, "\r\n", 2);
        s->sent_ns = now_ns();
        if (rsess_send(s, hdr, (size_t)hl) != 0 ||
            rsess_send(s, append_body, opt.append_size + 2) != 0)
            rsess_fail(s, "cannot send APPEND");
        return;
    }
    uint64_t period = (uint64_t)opt.op_ms * 1000000u;
    s->next_op += period;
    if (s->next_op + period < now) {
        /* More than a period behind: the client or the proxy is saturated;
         * count it and do not send a burst to catch up. */
        rlate++;
        s->next_op = now + period;
    }
    if (s->small_count++ % 2 == 0) {
        s->op = ROP_FETCH;
        s->fetch_n = 1 + (unsigned)(((s - rs) + s->small_count) % FETCH_SEEDS);
        s->fetch_seen = s->fetch_bad = false;
        hl = snprintf(hdr, sizeof(hdr), "%s FETCH %u (BODY[])\r\n", s->tag, s->fetch_n);
    } else {
        s->op = ROP_NOOP;
        hl = snprintf(hdr, sizeof(hdr), "%s NOOP\r\n", s->tag);
    }
    s->sent_ns = now_ns();
    if (rsess_send(s, hdr, (size_t)hl) != 0)
        rsess_fail(s, "cannot send");
}

/* One complete response line (without CRLF) for the command in flight. */
static void rsess_line(struct rsess *s, const char *l, size_t len, uint64_t now)
{
    size_t tl = strlen(s->tag);
    if (s->op != ROP_NONE && len > tl && memcmp(l, s->tag, tl) == 0 && l[tl] == ' ') {
        bool ok = len >= tl + 3 && memcmp(l + tl + 1, "OK", 2) == 0;
        if (s->op == ROP_FETCH && (!s->fetch_seen || s->fetch_bad))
            ok = false;
        if (ok) {
            rdone[s->op]++;
            lat_add(&rlat[s->op], now - s->sent_ns);
            s->op = ROP_NONE;
        } else {
            fprintf(stderr, "loadclient: %s failed: %.*s%s\n", rop_names[s->op], (int)len, l,
                    s->fetch_bad ? " (wrong FETCH body)" : "");
            rfailed[s->op]++;
            s->op = ROP_NONE;
        }
        return;
    }
    /* "* n FETCH (BODY[] {L}": the body follows. */
    if (s->op == ROP_FETCH && len > 2 && l[len - 1] == '}') {
        char want[64];
        size_t size = bench_fetch_size(s->fetch_n);
        int wl = snprintf(want, sizeof(want), "* %u FETCH (BODY[] {%zu}", s->fetch_n, size);
        if ((size_t)wl != len || memcmp(l, want, len) != 0)
            s->fetch_bad = true;
        /* Whatever size was announced is read, to stay in step. */
        const char *brace = memchr(l, '{', len);
        s->lit_left = brace != NULL ? strtoul(brace + 1, NULL, 10) : 0;
        s->lit_off = 0;
        s->fetch_seen = true;
    }
}

/* Parses the plaintext received so far. */
static void rsess_parse(struct rsess *s, uint64_t now)
{
    size_t off = 0;
    while (off < s->plen && !s->dead) {
        if (s->lit_left > 0) {
            size_t k = s->plen - off < s->lit_left ? s->plen - off : s->lit_left;
            size_t size = bench_fetch_size(s->fetch_n);
            if (s->lit_off + k > size ||
                memcmp(s->pbuf + off, fetch_bodies[s->fetch_n] + s->lit_off, k) != 0)
                s->fetch_bad = true;
            s->lit_off += k;
            s->lit_left -= k;
            off += k;
            continue;
        }
        uint8_t *nl = memchr(s->pbuf + off, '\n', s->plen - off);
        if (nl == NULL)
            break;
        size_t len = (size_t)(nl - (s->pbuf + off));
        if (len > 0 && s->pbuf[off + len - 1] == '\r')
            len--;
        rsess_line(s, (const char *)s->pbuf + off, len, now);
        off = (size_t)(nl - s->pbuf) + 1;
    }
    memmove(s->pbuf, s->pbuf + off, s->plen - off);
    s->plen -= off;
    if (s->plen == PBUF_CAP)
        rsess_fail(s, "a response line longer than 64 KiB");
}

/* Adds received plaintext to pbuf, inflating it after COMPRESS. */
static int rsess_plain(struct rsess *s, const uint8_t *p, size_t n)
{
    if (s->zin == NULL) {
        if (n > PBUF_CAP - s->plen)
            return -1;
        memcpy(s->pbuf + s->plen, p, n);
        s->plen += n;
        return 0;
    }
    z_stream *z = s->zin;
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    for (int guard = 0; guard < 1024; guard++) {
        z->next_out = s->pbuf + s->plen;
        z->avail_out = (uInt)(PBUF_CAP - s->plen);
        int rc = inflate(z, Z_SYNC_FLUSH);
        s->plen = PBUF_CAP - z->avail_out;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return -1;
        if (z->avail_in == 0)
            return 0;
        if (s->plen == PBUF_CAP)
            return -1;
    }
    return -1;
}

/* The socket is readable: decrypt, inflate, parse. */
static void rsess_readable(struct rsess *s, uint64_t now)
{
    static uint8_t wire[REAL_READ], plain[REAL_READ];
    ssize_t n = recv(s->c.fd, wire, sizeof(wire), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        rsess_fail(s, n == 0 ? "the proxy closed the connection" : strerror(errno));
        return;
    }
    if (s->c.ssl == NULL) {
        if (rsess_plain(s, wire, (size_t)n) != 0)
            rsess_fail(s, "bad DEFLATE stream or too much unparsed input");
        else
            rsess_parse(s, now);
        return;
    }
    BIO_write(s->rmem, wire, (int)n);
    for (int guard = 0; guard < 64 && !s->dead; guard++) {
        int k = SSL_read(s->c.ssl, plain, sizeof(plain));
        if (k <= 0) {
            int err = SSL_get_error(s->c.ssl, k);
            if (err != SSL_ERROR_WANT_READ)
                rsess_fail(s, "TLS error or close");
            break;
        }
        if (rsess_plain(s, plain, (size_t)k) != 0) {
            rsess_fail(s, "bad DEFLATE stream or too much unparsed input");
            break;
        }
        rsess_parse(s, now);
    }
    if (conn_flush(&s->c) != 0)
        rsess_fail(s, "cannot write");
}

/* After the blocking setup (handshake, LOGIN, COMPRESS): the socket is
 * read through a memory BIO from here on, so a partial record never blocks
 * the loop; writes stay blocking (they are small, or an APPEND). */
static int rsess_ready(struct rsess *s)
{
    s->pbuf = malloc(PBUF_CAP);
    if (s->pbuf == NULL)
        return -1;
    if (s->c.ssl != NULL) {
        s->rmem = BIO_new(BIO_s_mem());
        if (s->rmem == NULL)
            return -1;
        BIO_set_mem_eof_return(s->rmem, -1);
        SSL_set0_rbio(s->c.ssl, s->rmem);
    }
    if (opt.compress) {
        s->zin = calloc(1, sizeof(*s->zin));
        s->zout = calloc(1, sizeof(*s->zout));
        /* A small deflate window keeps 2,000 sessions' client state small;
         * the inflater must take the 32 KiB RFC 4978 allows. */
        if (s->zin == NULL || s->zout == NULL || inflateInit2(s->zin, -15) != Z_OK ||
            deflateInit2(s->zout, 1, Z_DEFLATED, -12, 2, Z_DEFAULT_STRATEGY) != Z_OK)
            return -1;
    }
    /* Plaintext that arrived with the last setup answer. */
    if (s->c.roff < s->c.rlen) {
        memcpy(s->pbuf, s->c.rbuf + s->c.roff, s->c.rlen - s->c.roff);
        s->plen = s->c.rlen - s->c.roff;
    }
    return 0;
}

static long proc_status_kib(long pid, const char *key)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kib = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, key, kl) == 0) {
            kib = strtol(line + kl, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static int cmp_u64(const void *a, const void *b);

static int run_realistic(void)
{
    unsigned n = opt.sessions, nw = opt.conns != 0 ? opt.conns : 2;
    if (nw > n)
        nw = n;
    rs = calloc(n, sizeof(*rs));
    struct conn *conns = calloc(n, sizeof(*conns));
    struct idle_worker *ws = calloc(nw, sizeof(*ws));
    heap = calloc(n, sizeof(*heap));
    append_body = malloc(opt.append_size + 2);
    if (rs == NULL || conns == NULL || ws == NULL || heap == NULL || append_body == NULL)
        return 1;
    for (unsigned k = 1; k <= FETCH_SEEDS; k++) {
        fetch_bodies[k] = malloc(bench_fetch_size(k));
        if (fetch_bodies[k] == NULL)
            return 1;
        bench_body(fetch_bodies[k], bench_fetch_size(k), k);
    }
    /* Open the sessions as the idle mode does: nw threads, blocking. */
    double t_open = now_s();
    unsigned at = 0;
    for (unsigned i = 0; i < nw; i++) {
        ws[i].conns = conns + at;
        ws[i].n = n / nw + (i < n % nw ? 1 : 0);
        at += ws[i].n;
        pthread_create(&ws[i].th, NULL, idle_main, &ws[i]);
    }
    unsigned opened = 0;
    for (unsigned i = 0; i < nw; i++) {
        pthread_join(ws[i].th, NULL);
        opened += ws[i].opened;
    }
    double open_s = now_s() - t_open;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return 1;
    /* Jittered starts: the first FETCH/NOOP somewhere in the first period,
     * the first APPEND somewhere in the first append period. */
    uint64_t seed = 0x2545f4914f6cdd1dull;
    uint64_t t0ns = now_ns();
    unsigned live = 0;
    for (unsigned i = 0; i < n; i++) {
        struct rsess *s = &rs[i];
        s->c = conns[i];
        if (s->c.fd < 0) {
            s->dead = true;
            continue;
        }
        s->c.wbuf = malloc(WBUF_CAP);
        /* The write BIO points at its struct conn, which just moved. */
        if (s->c.ssl != NULL)
            BIO_set_data(SSL_get_wbio(s->c.ssl), &s->c);
        if (s->c.wbuf == NULL || rsess_ready(s) != 0) {
            rsess_fail(s, "cannot set up");
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, s->c.fd, &ev) != 0) {
            rsess_fail(s, "epoll_ctl");
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        s->next_op = t0ns + seed % ((uint64_t)opt.op_ms * 1000000u);
        s->next_append = t0ns + (seed >> 20) % ((uint64_t)opt.append_s * 1000000000u);
        heap_push(s->next_op < s->next_append ? s->next_op : s->next_append, i);
        live++;
    }
    char tls[256] = "tls=-";
    for (unsigned i = 0; i < nw; i++)
        if (ws[i].tls[0]) {
            snprintf(tls, sizeof(tls), "%s", ws[i].tls);
            break;
        }
    long peak_rss = proc_rss_kib(opt.pid);
    double cpu0 = proc_cpu_s(opt.pid);
    double t0 = now_s();
    uint64_t end_ns = t0ns + (uint64_t)(opt.seconds * 1e9);
    uint64_t next_rss = t0ns + 1000000000u;
    struct epoll_event evs[256];
    /* Run until the end, then let the commands in flight finish (at most
     * 10 s more) so that none is counted half done. */
    for (uint64_t loops = 0; loops < (1ull << 40); loops++) {
        uint64_t now = now_ns();
        bool ending = now >= end_ns;
        if (ending) {
            bool busy = false;
            for (unsigned i = 0; i < n && !busy; i++)
                busy = !rs[i].dead && rs[i].op != ROP_NONE;
            if (!busy || now >= end_ns + 10000000000ull)
                break;
        }
        while (!ending && heap_n > 0 && heap[0].at <= now) {
            struct due d = heap_pop();
            if (!rs[d.idx].dead)
                rsess_start(&rs[d.idx], now);
        }
        if (now >= next_rss) {
            long r = proc_rss_kib(opt.pid);
            if (r > peak_rss)
                peak_rss = r;
            next_rss = now + 1000000000u;
        }
        int timeout = 100;
        if (!ending && heap_n > 0) {
            uint64_t wait = heap[0].at > now ? heap[0].at - now : 0;
            timeout = (int)((wait + 999999) / 1000000);
            if (timeout > 100)
                timeout = 100;
        }
        int k = epoll_wait(ep, evs, 256, timeout);
        now = now_ns();
        for (int e = 0; e < k; e++) {
            struct rsess *s = &rs[evs[e].data.u32];
            if (s->dead)
                continue;
            bool was_busy = s->op != ROP_NONE;
            rsess_readable(s, now);
            if (s->dead) {
                epoll_ctl(ep, EPOLL_CTL_DEL, s->c.fd, NULL);
                continue;
            }
            if (was_busy && s->op == ROP_NONE && !ending)
                heap_push(s->next_op < s->next_append ? s->next_op : s->next_append,
                          evs[e].data.u32);
        }
    }
    double t1 = now_s();
    double cpu1 = proc_cpu_s(opt.pid);
    long r = proc_rss_kib(opt.pid);
    if (r > peak_rss)
        peak_rss = r;
    long hwm = proc_status_kib(opt.pid, "VmHWM:");
    uint64_t ops = rdone[ROP_NOOP] + rdone[ROP_FETCH] + rdone[ROP_APPEND];
    uint64_t failed = rfailed[ROP_NOOP] + rfailed[ROP_FETCH] + rfailed[ROP_APPEND];
    unsigned dead = 0;
    for (unsigned i = 0; i < n; i++) {
        if (rs[i].dead)
            dead++;
        else if (rs[i].op != ROP_NONE)
            failed++; /* still unanswered 10 s after the end */
    }
    for (int o = ROP_NOOP; o < ROP_COUNT; o++)
        qsort(rlat[o].v, rlat[o].n, sizeof(uint64_t), cmp_u64);
    double el = t1 - t0;
    printf("RESULT mode=%s proxy=%s sessions=%u opened=%u open_seconds=%.2f compress=%d "
           "seconds=%.2f ops=%" PRIu64 " ops_per_s=%.1f noops=%" PRIu64 " fetches=%" PRIu64
           " appends=%" PRIu64 " late=%" PRIu64,
           opt.compress ? "realistic_z" : "realistic", opt.label, n, live, open_s,
           opt.compress ? 1 : 0, el, ops, (double)ops / el, rdone[ROP_NOOP], rdone[ROP_FETCH],
           rdone[ROP_APPEND], rlate);
    for (int o = ROP_NOOP; o < ROP_COUNT; o++)
        printf(" %s_p50_us=%.1f %s_p99_us=%.1f", rop_names[o], lat_pct(&rlat[o], 0.5), rop_names[o],
               lat_pct(&rlat[o], 0.99));
    if (opt.pid > 0 && ops > 0 && cpu0 >= 0 && cpu1 >= 0)
        printf(" proxy_cpu_s=%.2f cpu_us_per_op=%.2f", cpu1 - cpu0,
               (cpu1 - cpu0) * 1e6 / (double)ops);
    if (peak_rss > 0)
        printf(" peak_rss_kib=%ld hwm_kib=%ld", peak_rss, hwm);
    printf(" failed=%" PRIu64 " lost_sessions=%u %s\n", failed + (n - live), dead, tls);
    for (unsigned i = 0; i < n; i++) {
        struct rsess *s = &rs[i];
        if (s->c.fd >= 0)
            conn_close(&s->c, false);
        if (s->zin != NULL) {
            inflateEnd(s->zin);
            deflateEnd(s->zout);
        }
        free(s->zin);
        free(s->zout);
        free(s->pbuf);
    }
    close(ep);
    return failed == 0 && live == n ? 0 : 1;
}

/* ---- main ------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: loadclient MODE --port PORT [options]\n"
                    "modes: append | noop | idle | handshake | realistic\n"
                    "  --host ADDR      numeric address (default 127.0.0.1)\n"
                    "  --port PORT      the proxy's (or with --plain, the server's) port\n"
                    "  --plain          plain TCP, no TLS (baseline straight to the backend)\n"
                    "  --seconds T      duration of append, noop, handshake (default 10)\n"
                    "  --conns C        connections: append (1), handshake (2), idle openers (2)\n"
                    "  --size N         APPEND message size in bytes (default 8388608)\n"
                    "  --sync-literal   APPEND with {N} and wait for '+' (default {N+})\n"
                    "  --sessions N     idle or realistic sessions (default 2000)\n"
                    "  --compress       COMPRESS DEFLATE after LOGIN (every session)\n"
                    "  --op-ms MS       realistic: a FETCH or NOOP every MS ms (default 200)\n"
                    "  --append-every S realistic: an APPEND every S s (default 10)\n"
                    "  --append-size N  realistic: APPEND size in bytes (default 51200)\n"
                    "  --pid PID        the proxy's process: CPU and RSS from /proc\n"
                    "  --label NAME     name printed as proxy= in the RESULT line\n");
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    int m = 0;
    while (m < MODE_COUNT && strcmp(argv[1], mode_names[m]) != 0)
        m++;
    if (m == MODE_COUNT) {
        usage();
        return 2;
    }
    opt.mode = (enum mode)m;
    static const struct option longopts[] = {
        {"host", required_argument, NULL, 'h'},
        {"port", required_argument, NULL, 'p'},
        {"plain", no_argument, NULL, 'P'},
        {"seconds", required_argument, NULL, 't'},
        {"conns", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"sessions", required_argument, NULL, 'n'},
        {"pid", required_argument, NULL, 'i'},
        {"label", required_argument, NULL, 'l'},
        {"sync-literal", no_argument, NULL, 'S'},
        {"compress", no_argument, NULL, 'Z'},
        {"op-ms", required_argument, NULL, 'o'},
        {"append-every", required_argument, NULL, 'a'},
        {"append-size", required_argument, NULL, 'A'},
        {NULL, 0, NULL, 0},
    };
    optind = 2;
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h':
            opt.host = optarg;
            break;
        case 'p':
            if (!parse_u64(optarg, &v) || v == 0 || v > 65535)
                goto bad;
            opt.port = (int)v;
            break;
        case 'P':
            opt.plain = true;
            break;
        case 't':
            opt.seconds = strtod(optarg, NULL);
            if (!(opt.seconds > 0 && opt.seconds < 86400))
                goto bad;
            break;
        case 'c':
            if (!parse_u64(optarg, &v) || v == 0 || v > 1024)
                goto bad;
            opt.conns = (unsigned)v;
            break;
        case 's':
            if (!parse_u64(optarg, &v) || v == 0 || v > (1ull << 32))
                goto bad;
            opt.size = v;
            break;
        case 'n':
            if (!parse_u64(optarg, &v) || v == 0 || v > 1000000)
                goto bad;
            opt.sessions = (unsigned)v;
            break;
        case 'i':
            if (!parse_u64(optarg, &v) || v == 0 || v > 1u << 30)
                goto bad;
            opt.pid = (long)v;
            break;
        case 'l':
            opt.label = optarg;
            break;
        case 'S':
            opt.sync_literal = true;
            break;
        case 'Z':
            opt.compress = true;
            break;
        case 'o':
            if (!parse_u64(optarg, &v) || v == 0 || v > 3600000)
                goto bad;
            opt.op_ms = (unsigned)v;
            break;
        case 'a':
            if (!parse_u64(optarg, &v) || v == 0 || v > 86400)
                goto bad;
            opt.append_s = (unsigned)v;
            break;
        case 'A':
            if (!parse_u64(optarg, &v) || v == 0 || v > (64u << 20))
                goto bad;
            opt.append_size = v;
            break;
        default:
            goto bad;
        }
    }
    if (optind != argc || opt.port == 0)
        goto bad;

    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    if (!opt.plain) {
        ctx = SSL_CTX_new(TLS_method());
        wbio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "lc_wbuf");
        if (ctx == NULL || wbio_method == NULL) {
            fprintf(stderr, "loadclient: cannot set up TLS\n");
            return 1;
        }
        BIO_meth_set_write(wbio_method, wbio_write);
        BIO_meth_set_ctrl(wbio_method, wbio_ctrl);
        BIO_meth_set_create(wbio_method, wbio_create);
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        /* Every handshake is a full one: no session is ever offered. */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    switch (opt.mode) {
    case MODE_APPEND:
        return run_append();
    case MODE_NOOP:
        return run_noop();
    case MODE_IDLE:
        return run_idle();
    case MODE_HANDSHAKE:
        return run_handshake();
    case MODE_REALISTIC:
        return run_realistic();
    default:
        break;
    }
bad:
    usage();
    return 2;
}
