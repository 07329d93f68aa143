/* sink: a fast plain-TCP IMAP backend for benchmarks.
 *
 * It answers just enough IMAP for the load client (LOGIN, NOOP, SELECT,
 * CAPABILITY, LOGOUT, APPEND, FETCH, COMPRESS DEFLATE) and stores nothing.
 * An APPEND's literal is not kept but checked: the command must carry the
 * body's CRC-32 as a "$crc32-XXXXXXXX" flag (bodies.h), the sink computes
 * it over the octets it receives and answers NO on a mismatch, so a proxy
 * that corrupts or drops bytes fails the run instead of winning it. FETCH n
 * returns the body bodies.h makes for seed n, which the client checks.
 * COMPRESS DEFLATE (RFC 4978) makes the stream compressed both ways, for
 * proxies that pass it through. It runs one epoll loop on one thread so
 * that it costs as little CPU as possible next to the proxy being
 * measured; its framing handles pipelined commands and any split of the
 * input.
 *
 * Usage: sink [ADDRESS] PORT   (port 0: the kernel picks; the chosen port is
 * printed as "sink listening on ADDRESS:PORT" once the socket listens). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <zlib.h>

#include "bodies.h"

/* One read takes this much: large, so a stream of literal octets costs one
 * syscall per megabyte and nothing else. */
#define READ_BUF (1024 * 1024)
/* Reads per readiness event before giving other connections a turn. */
#define READS_PER_EVENT 8
/* A command line (literals excluded) longer than this closes the connection. */
#define LINE_MAX_LEN (64 * 1024)
/* Above this much unsent output the connection stops reading. */
#define OUT_HIGH   (256 * 1024)
#define TAG_MAX    64
#define MAX_EVENTS 256
/* Inflated input is fed through the framer this much at a time. */
#define ZBUF (256 * 1024)

struct sink_conn {
    int fd;
    uint64_t lit_left; /* literal octets still to discard */
    bool in_cmd;       /* the command continues after a literal */
    bool closing;      /* close once the output is flushed */
    bool want_out;     /* EPOLLOUT is armed */
    char tag[TAG_MAX + 1];
    char cmd[16];
    char *line; /* a partial command line carried over between reads */
    size_t line_len, line_cap;
    char *out; /* unsent responses (compressed once COMPRESS is active) */
    size_t out_len, out_off, out_cap;
    bool is_append;    /* the command being read is an APPEND */
    bool has_crc;      /* ... and it announced a CRC-32 */
    bool crc_bad;      /* ... and a literal's CRC-32 differed */
    uint32_t crc_want; /* the announced CRC-32 */
    uint32_t crc;      /* CRC-32 of the literal being read */
    z_stream *zin;     /* inflating what the client sends, after COMPRESS */
    z_stream *zout;    /* deflating what the sink sends, after COMPRESS */
    bool z_dirty;      /* deflated output waits for a sync flush */
};

static int epfd;
static uint8_t *rbuf;
static uint8_t *zbuf;
static uint8_t *fetch_buf; /* one FETCH body, the largest bodies.h makes */
/* APPENDs answered NO because a checksum was missing or differed. */
static unsigned long crc_failures;
static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "sink: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int buf_append(char **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (n > *cap - *len) {
        size_t ncap = *cap != 0 ? *cap : 256;
        while (ncap - *len < n)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (nb == NULL)
            return -1;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

/* Queues response bytes; once COMPRESS is active they go through deflate
 * (flushed by out_sync before the queue is sent). */
static void out_bytes(struct sink_conn *c, const void *p, size_t n)
{
    if (c->zout == NULL) {
        if (buf_append(&c->out, &c->out_len, &c->out_cap, p, n) != 0)
            c->closing = true;
        return;
    }
    z_stream *z = c->zout;
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    for (int guard = 0; guard < 1 << 16 && z->avail_in > 0; guard++) {
        uint8_t tmp[16 * 1024];
        z->next_out = tmp;
        z->avail_out = sizeof(tmp);
        if (deflate(z, Z_NO_FLUSH) == Z_STREAM_ERROR ||
            buf_append(&c->out, &c->out_len, &c->out_cap, tmp, sizeof(tmp) - z->avail_out) != 0) {
            c->closing = true;
            return;
        }
    }
    c->z_dirty = true;
}

/* Ends what was deflated so far with a sync flush, so the client can read
 * all of it now. */
static void out_sync(struct sink_conn *c)
{
    if (c->zout == NULL || !c->z_dirty)
        return;
    z_stream *z = c->zout;
    z->avail_in = 0;
    for (int guard = 0; guard < 1 << 16; guard++) {
        uint8_t tmp[16 * 1024];
        z->next_out = tmp;
        z->avail_out = sizeof(tmp);
        if (deflate(z, Z_SYNC_FLUSH) == Z_STREAM_ERROR ||
            buf_append(&c->out, &c->out_len, &c->out_cap, tmp, sizeof(tmp) - z->avail_out) != 0) {
            c->closing = true;
            return;
        }
        if (z->avail_out != 0)
            break;
    }
    c->z_dirty = false;
}

static void out_str(struct sink_conn *c, const char *s)
{
    out_bytes(c, s, strlen(s));
}

static void out_tagged(struct sink_conn *c, const char *text)
{
    char line[TAG_MAX + 128];
    snprintf(line, sizeof(line), "%s %s\r\n", c->tag, text);
    out_str(c, line);
}

static void conn_free(struct sink_conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->zin != NULL) {
        inflateEnd(c->zin);
        free(c->zin);
    }
    if (c->zout != NULL) {
        deflateEnd(c->zout);
        free(c->zout);
    }
    free(c->line);
    free(c->out);
    free(c);
}

/* Arms EPOLLIN while there is room for output and EPOLLOUT while output
 * waits; a connection with a full output queue stops reading its client. */
static void conn_interest(struct sink_conn *c)
{
    size_t pending = c->out_len - c->out_off;
    bool want_out = pending > 0;
    bool want_in = !c->closing && pending < OUT_HIGH;
    struct epoll_event ev = {.events = (want_in ? EPOLLIN : 0) | (want_out ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

/* Sends what is queued. Returns -1 when the connection must be freed. */
static int conn_flush(struct sink_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->closing)
            return -1;
    }
    return 0;
}

/* The literal announced at the end of a line ("{N}" or "{N+}"), if any.
 * Returns true and fills *out_n, *out_sync when there is one. */
static bool line_literal(const char *l, size_t len, uint64_t *out_n, bool *out_sync)
{
    if (len < 3 || l[len - 1] != '}')
        return false;
    size_t i = len - 1;
    bool plus = false;
    if (l[i - 1] == '+' || l[i - 1] == '-') {
        plus = true;
        i--;
    }
    size_t digits_end = i;
    while (i > 0 && l[i - 1] >= '0' && l[i - 1] <= '9')
        i--;
    if (i == digits_end || i == 0 || l[i - 1] != '{' || digits_end - i > 19)
        return false;
    uint64_t n = 0;
    for (size_t k = i; k < digits_end; k++)
        n = n * 10 + (uint64_t)(l[k] - '0');
    *out_n = n;
    *out_sync = !plus;
    return true;
}

static void copy_word(char *dst, size_t cap, const char *p, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    memcpy(dst, p, n);
    dst[n] = '\0';
}

/* The APPEND's announced CRC-32, from the "$crc32-XXXXXXXX" flag in its
 * first line (l, len), if there is one. */
static bool line_crc(const char *l, size_t len, uint32_t *out_crc)
{
    const size_t fl = sizeof(BENCH_CRC_FLAG) - 1;
    for (size_t i = 0; i + fl + 8 <= len; i++) {
        if (memcmp(l + i, BENCH_CRC_FLAG, fl) != 0)
            continue;
        uint32_t v = 0;
        for (size_t k = i + fl; k < i + fl + 8; k++) {
            char ch = l[k];
            int d = ch >= '0' && ch <= '9'   ? ch - '0'
                    : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                    : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                             : -1;
            if (d < 0)
                return false;
            v = v << 4 | (uint32_t)d;
        }
        *out_crc = v;
        return true;
    }
    return false;
}

/* FETCH n ...: the body of seed n, as a literal. A bad number gets BAD. */
static void answer_fetch(struct sink_conn *c, const char *arg)
{
    char *end;
    unsigned long n = strtoul(arg, &end, 10);
    if (end == arg || n == 0 || n > 1000000) {
        out_tagged(c, "BAD FETCH wants a message number");
        return;
    }
    size_t len = bench_fetch_size(n);
    bench_body(fetch_buf, len, n);
    char head[96];
    snprintf(head, sizeof(head), "* %lu FETCH (BODY[] {%zu}\r\n", n, len);
    out_str(c, head);
    out_bytes(c, fetch_buf, len);
    out_str(c, ")\r\n");
    out_tagged(c, "OK FETCH completed");
}

/* Starts RFC 4978 DEFLATE both ways, after the tagged OK went out plain.
 * The sink deflates with a small window (allowed: the inflater's window is
 * what must be 32 KiB) so thousands of sessions cost little memory. */
static void start_compress(struct sink_conn *c)
{
    c->zin = calloc(1, sizeof(*c->zin));
    c->zout = calloc(1, sizeof(*c->zout));
    if (c->zin == NULL || c->zout == NULL || inflateInit2(c->zin, -15) != Z_OK ||
        deflateInit2(c->zout, 1, Z_DEFLATED, -10, 1, Z_DEFAULT_STRATEGY) != Z_OK) {
        fprintf(stderr, "sink: cannot start COMPRESS\n");
        c->closing = true;
    }
}

/* The command is complete: answer it. */
static void answer(struct sink_conn *c, const char *args)
{
    const char *cmd = c->cmd;
    if (strcasecmp(cmd, "NOOP") == 0) {
        out_tagged(c, "OK NOOP completed");
    } else if (strcasecmp(cmd, "LOGIN") == 0) {
        out_tagged(c, "OK LOGIN completed");
    } else if (strcasecmp(cmd, "APPEND") == 0) {
        if (!c->has_crc || c->crc_bad) {
            crc_failures++;
            fprintf(stderr, "sink: APPEND %s (%lu so far)\n",
                    c->has_crc ? "with a wrong CRC-32" : "without a $crc32- flag", crc_failures);
            out_tagged(c, c->has_crc ? "NO [CORRUPTION] CRC-32 of the message differs"
                                     : "NO [CORRUPTION] no $crc32- flag to check the message");
        } else {
            out_tagged(c, "OK APPEND completed");
        }
        c->is_append = c->has_crc = c->crc_bad = false;
    } else if (strcasecmp(cmd, "FETCH") == 0) {
        answer_fetch(c, args);
    } else if (strcasecmp(cmd, "COMPRESS") == 0) {
        if (c->zin != NULL || strncasecmp(args, "DEFLATE", 7) != 0) {
            out_tagged(c, "NO [COMPRESSIONACTIVE] COMPRESS DEFLATE only, once");
        } else {
            out_tagged(c, "OK DEFLATE active");
            start_compress(c);
        }
    } else if (strcasecmp(cmd, "SELECT") == 0 || strcasecmp(cmd, "EXAMINE") == 0) {
        out_str(c, "* FLAGS (\\Seen)\r\n* 0 EXISTS\r\n");
        out_tagged(c, "OK [READ-WRITE] SELECT completed");
    } else if (strcasecmp(cmd, "CAPABILITY") == 0) {
        out_str(c, "* CAPABILITY IMAP4rev1 LITERAL+ COMPRESS=DEFLATE\r\n");
        out_tagged(c, "OK CAPABILITY completed");
    } else if (strcasecmp(cmd, "LOGOUT") == 0) {
        out_str(c, "* BYE sink closing\r\n");
        out_tagged(c, "OK LOGOUT completed");
        c->closing = true;
    } else {
        out_tagged(c, "BAD command unknown to the sink");
    }
}

/* One complete line (CRLF or LF included): the first line of a command or
 * the rest of one after a literal. */
static void on_line(struct sink_conn *c, const char *l, size_t len)
{
    while (len > 0 && (l[len - 1] == '\n' || l[len - 1] == '\r'))
        len--;
    const char *args = "";
    char argbuf[32];
    if (!c->in_cmd) {
        const char *sp = memchr(l, ' ', len);
        size_t tag_len = sp != NULL ? (size_t)(sp - l) : len;
        copy_word(c->tag, sizeof(c->tag), l, tag_len);
        if (tag_len == 0) {
            snprintf(c->tag, sizeof(c->tag), "*");
            c->cmd[0] = '\0';
        } else if (sp != NULL) {
            const char *name = sp + 1;
            const char *end = l + len;
            const char *sp2 = memchr(name, ' ', (size_t)(end - name));
            copy_word(c->cmd, sizeof(c->cmd), name, (size_t)((sp2 != NULL ? sp2 : end) - name));
            if (sp2 != NULL) {
                copy_word(argbuf, sizeof(argbuf), sp2 + 1, (size_t)(end - sp2 - 1));
                args = argbuf;
            }
            c->is_append = strcasecmp(c->cmd, "APPEND") == 0;
            c->has_crc = c->is_append && line_crc(l, len, &c->crc_want);
            c->crc_bad = false;
        } else {
            c->cmd[0] = '\0';
        }
    }
    uint64_t n;
    bool sync;
    if (line_literal(l, len, &n, &sync)) {
        c->in_cmd = true;
        c->lit_left = n;
        c->crc = (uint32_t)crc32(0, Z_NULL, 0);
        if (n == 0)
            c->crc_bad = c->crc_bad || c->crc != c->crc_want;
        if (sync)
            out_str(c, "+ go\r\n");
        return;
    }
    c->in_cmd = false;
    answer(c, args);
}

/* Feeds received (plain) bytes through the framer. Returns how many it
 * took: all of them, unless a COMPRESS answered on the way made the rest
 * compressed; -1 to close. */
static ssize_t feed(struct sink_conn *c, const uint8_t *p, size_t n)
{
    const uint8_t *start = p, *end = p + n;
    bool was_z = c->zin != NULL;
    while (p < end && !c->closing && (c->zin != NULL) == was_z) {
        if (c->lit_left > 0) {
            size_t avail = (size_t)(end - p);
            size_t k = c->lit_left < avail ? (size_t)c->lit_left : avail;
            if (c->is_append) {
                c->crc = (uint32_t)crc32(c->crc, p, (uInt)k);
                if (c->lit_left == k && c->crc != c->crc_want)
                    c->crc_bad = true;
            }
            c->lit_left -= k;
            p += k;
            continue;
        }
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        size_t take = nl != NULL ? (size_t)(nl + 1 - p) : (size_t)(end - p);
        if (c->line_len + take > LINE_MAX_LEN) {
            out_str(c, "* BYE line too long\r\n");
            c->closing = true;
            break;
        }
        if (nl == NULL) {
            if (buf_append(&c->line, &c->line_len, &c->line_cap, p, take) != 0)
                return -1;
            break;
        }
        if (c->line_len > 0) {
            if (buf_append(&c->line, &c->line_len, &c->line_cap, p, take) != 0)
                return -1;
            on_line(c, c->line, c->line_len);
            c->line_len = 0;
        } else {
            on_line(c, (const char *)p, take);
        }
        p += take;
    }
    return (ssize_t)(p - start);
}

/* Inflates compressed input and feeds it through the framer. */
static int feed_z(struct sink_conn *c, const uint8_t *p, size_t n)
{
    z_stream *z = c->zin;
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    for (int guard = 0; guard < 1 << 20 && !c->closing; guard++) {
        z->next_out = zbuf;
        z->avail_out = ZBUF;
        int rc = inflate(z, Z_SYNC_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            out_str(c, "* BYE bad DEFLATE stream\r\n");
            c->closing = true;
            return 0;
        }
        size_t got = ZBUF - z->avail_out;
        if (got > 0 && feed(c, zbuf, got) < 0)
            return -1;
        if (z->avail_in == 0 && z->avail_out != 0)
            break;
    }
    return 0;
}

/* Feeds one read's bytes, switching to inflating where COMPRESS began. */
static int feed_wire(struct sink_conn *c, const uint8_t *p, size_t n)
{
    size_t off = 0;
    for (int guard = 0; guard < 4 && off < n && !c->closing; guard++) {
        if (c->zin != NULL)
            return feed_z(c, p + off, n - off);
        ssize_t k = feed(c, p + off, n - off);
        if (k < 0)
            return -1;
        off += (size_t)k;
    }
    return 0;
}

static void on_readable(struct sink_conn *c)
{
    for (int i = 0; i < READS_PER_EVENT; i++) {
        ssize_t n = recv(c->fd, rbuf, READ_BUF, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            conn_free(c);
            return;
        }
        if (n == 0) {
            conn_free(c);
            return;
        }
        if (feed_wire(c, rbuf, (size_t)n) != 0) {
            conn_free(c);
            return;
        }
        if (c->closing || c->out_len - c->out_off >= OUT_HIGH || (size_t)n < READ_BUF)
            break;
    }
    /* Everything this read produced leaves in one send. */
    out_sync(c);
    if (conn_flush(c) != 0) {
        conn_free(c);
        return;
    }
    conn_interest(c);
}

static void on_accept(int lfd)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                fprintf(stderr, "sink: accept: %s\n", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct sink_conn *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
            continue;
        }
        out_str(c, "* OK [CAPABILITY IMAP4rev1 LITERAL+] sink ready\r\n");
        if (conn_flush(c) != 0) {
            conn_free(c);
            continue;
        }
        conn_interest(c);
    }
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    const char *port_s;
    if (argc == 2) {
        port_s = argv[1];
    } else if (argc == 3) {
        addr = argv[1];
        port_s = argv[2];
    } else {
        fprintf(stderr, "usage: sink [ADDRESS] PORT\n");
        return 2;
    }
    char *endp;
    long port = strtol(port_s, &endp, 10);
    if (*endp != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "sink: bad port %s\n", port_s);
        return 2;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    rbuf = malloc(READ_BUF);
    zbuf = malloc(ZBUF);
    fetch_buf = malloc(bench_fetch_size(12));
    if (rbuf == NULL || zbuf == NULL || fetch_buf == NULL)
        die("malloc");
    struct sockaddr_storage ss;
    socklen_t ss_len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        ss_len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        ss_len = sizeof(*a6);
    } else {
        fprintf(stderr, "sink: bad address %s (numeric IPv4 or IPv6)\n", addr);
        return 2;
    }
    int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&ss, ss_len) != 0)
        die("bind");
    if (listen(lfd, 4096) != 0)
        die("listen");
    ss_len = sizeof(ss);
    getsockname(lfd, (struct sockaddr *)&ss, &ss_len);
    int bound = ntohs(ss.ss_family == AF_INET ? a4->sin_port : a6->sin6_port);
    printf("sink listening on %s:%d\n", addr, bound);
    fflush(stdout);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    /* The listener is told apart from connections by a NULL pointer. */
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) != 0)
        die("epoll_ctl");

    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        int n = epoll_wait(epfd, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct sink_conn *c = evs[i].data.ptr;
            if (c == NULL) {
                on_accept(lfd);
                continue;
            }
            uint32_t e = evs[i].events;
            if (e & EPOLLOUT) {
                if (conn_flush(c) != 0) {
                    conn_free(c);
                    continue;
                }
                conn_interest(c);
            }
            if (e & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c);
        }
    }
    return 0;
}
