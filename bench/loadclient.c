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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define WBUF_CAP     (512 * 1024)
#define WBUF_FLUSH   (256 * 1024)
#define RBUF_CAP     4096
#define LINE_MAX_LEN 4096
#define IO_TIMEOUT_S 30
#define MIB          (1024.0 * 1024.0)
#define GIB          (1024.0 * 1024.0 * 1024.0)

enum mode { MODE_APPEND, MODE_NOOP, MODE_IDLE, MODE_HANDSHAKE, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"append", "noop", "idle", "handshake"};

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

#define APPEND_HDR_MAX 64

struct append_worker {
    pthread_t th;
    struct conn c;
    bool ok;
    uint64_t appends, bytes;
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
        int hl = snprintf(hdr, sizeof(hdr), "%s APPEND INBOX {%" PRIu64 "%s}\r\n", tag, opt.size,
                          opt.sync_literal ? "" : "+");
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
    double t0 = now_s();
    go_deadline = t0 + opt.seconds;
    pthread_barrier_wait(&go_barrier);
    for (unsigned i = 0; i < n; i++)
        pthread_join(ws[i].th, NULL);
    double t1 = now_s();
    double cpu1 = proc_cpu_s(opt.pid);
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

/* ---- main ------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: loadclient MODE --port PORT [options]\n"
                    "modes: append | noop | idle | handshake\n"
                    "  --host ADDR      numeric address (default 127.0.0.1)\n"
                    "  --port PORT      the proxy's (or with --plain, the server's) port\n"
                    "  --plain          plain TCP, no TLS (baseline straight to the backend)\n"
                    "  --seconds T      duration of append, noop, handshake (default 10)\n"
                    "  --conns C        connections: append (1), handshake (2), idle openers (2)\n"
                    "  --size N         APPEND message size in bytes (default 8388608)\n"
                    "  --sync-literal   APPEND with {N} and wait for '+' (default {N+})\n"
                    "  --sessions N     idle sessions (default 2000)\n"
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
    default:
        break;
    }
bad:
    usage();
    return 2;
}
