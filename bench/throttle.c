/* throttle: measures the [login] throttle table (src/throttle.c) and
 * prints a Markdown table (see bench/README.md):
 *
 *   - the cost of an attempt's lookup (imf_throttle_begin) and of recording
 *     its failure (imf_throttle_end), in ns per call (each call timed, the
 *     clock's own cost subtracted), the median of --runs runs, on addresses
 *     already tracked and on new addresses that evict;
 *   - the memory of the table tracking 100,000 client addresses, measured
 *     as the growth of the process's resident set (VmRSS) in a child
 *     process that sets the table up and fills it, next to what the table
 *     says it allocated;
 *   - the backend LOGINs of a 10-minute guessing run from one address,
 *     with and without throttling: the real table driven by a simulated
 *     clock (no sleeping), the client sending its next guess as soon as
 *     the previous answer arrives.
 *
 *   throttle [--quick] [--runs R] [--calls N] [--rtt MS] [--backend-ms MS]
 *
 * Exits 1 when the defaults let more guesses reach the backend than
 * fail_ban (one user) or address_fail_ban (many users), or nothing was
 * measured.
 *
 * One thread; the table's lock is taken but never contended. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "imapfront/throttle.h"

#define ADDRESSES 100000u

/* [login]'s defaults (docs/configuration.md). */
static const struct imf_throttle_params defaults = {
    .fail_free = 3,
    .fail_ban = 6,
    .address_fail_free = 10,
    .address_fail_ban = 30,
    .window_ms = 10 * 60 * 1000,
    .ban_ms = 10 * 60 * 1000,
    .delay_max_ms = 16 * 1000,
    .user_lockout = false,
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A password hash as the gate makes them (SipHash, never 0): distinct
 * inputs give distinct 64-bit values, high bits included (the table
 * compares those). */
static uint64_t password_hash(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return (x ^ (x >> 31)) | 1u;
}

/* The i-th client address: 10.x.y.z, distinct for i < 2^24. */
static struct sockaddr_in address(uint32_t i)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x0a000000u | (i & 0xffffffu));
    return a;
}

/* One failed login of "user" from the i-th address at now_ms. */
static void fail_once(const struct imf_throttle_params *p, uint32_t i, uint64_t now_ms)
{
    struct sockaddr_in a = address(i);
    uint64_t delay;
    if (imf_throttle_begin(p, (struct sockaddr *)&a, "user", 4, now_ms, &delay) ==
        IMF_THROTTLE_PASS)
        imf_throttle_end(p, (struct sockaddr *)&a, "user", 4, password_hash(i), false, false,
                         now_ms);
}

/* VmRSS of this process, in KiB (0 if unknown). */
static uint64_t rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return 0;
    char line[256];
    uint64_t kib = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %" SCNu64, &kib) == 1)
            break;
    fclose(f);
    return kib;
}

struct memory {
    uint64_t rss_kib;  /* growth of the resident set */
    uint64_t table_b;  /* imf_throttle_memory() */
    uint64_t records;  /* records in use after the fill */
    uint64_t capacity; /* records of the table */
};

/* In a child (the table is set up once per process): a table of `records`
 * records, then one failed login from each of `addresses` addresses. */
static int measure_memory(uint32_t records, uint32_t addresses, struct memory *out)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(fd[0]);
        struct memory m = {0};
        uint64_t before = rss_kib();
        if (imf_throttle_setup(records) != 0)
            _exit(1);
        for (uint32_t i = 0; i < addresses; i++)
            fail_once(&defaults, i, 1000000);
        m.rss_kib = rss_kib() - before;
        m.table_b = imf_throttle_memory();
        uint64_t bans;
        imf_throttle_stats(1000000, &m.records, &bans, &m.capacity);
        _exit(write(fd[1], &m, sizeof(m)) == (ssize_t)sizeof(m) ? 0 : 1);
    }
    close(fd[1]);
    ssize_t n = read(fd[0], out, sizeof(*out));
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return n == (ssize_t)sizeof(*out) && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_u64);
    return v[n / 2];
}

/* The cost of reading the clock twice around nothing, in ns (subtracted
 * from each timed call). */
static uint64_t clock_overhead_ns(void)
{
    uint64_t sum = 0;
    for (int k = 0; k < 100000; k++) {
        uint64_t t0 = now_ns();
        sum += now_ns() - t0;
    }
    return sum / 100000;
}

/* ns per call of begin and of end over `calls` attempts from `addresses`
 * addresses (base, base + 1, ...; cycling), at a clock that moves 1 ms per
 * attempt. */
static void time_calls(uint32_t base, uint32_t addresses, uint32_t calls, uint64_t *clock_ms,
                       uint64_t *out_begin_ns, uint64_t *out_end_ns)
{
    /* Thresholds out of reach: every attempt takes the full path. */
    struct imf_throttle_params p = defaults;
    p.fail_ban = p.address_fail_ban = 100000;
    uint64_t t_begin = 0, t_end = 0;
    for (uint32_t k = 0; k < calls; k++) {
        struct sockaddr_in a = address(base + k % addresses);
        uint64_t delay, t0 = now_ns();
        enum imf_throttle_verdict v =
            imf_throttle_begin(&p, (struct sockaddr *)&a, "user", 4, *clock_ms, &delay);
        uint64_t t1 = now_ns();
        if (v == IMF_THROTTLE_PASS)
            imf_throttle_end(&p, (struct sockaddr *)&a, "user", 4, password_hash(k), false, false,
                             *clock_ms);
        t_end += now_ns() - t1;
        t_begin += t1 - t0;
        (*clock_ms)++;
    }
    uint64_t over = clock_overhead_ns();
    *out_begin_ns = t_begin / calls > over ? t_begin / calls - over : 0;
    *out_end_ns = t_end / calls > over ? t_end / calls - over : 0;
}

struct run {
    uint64_t attempts, backend_logins, refused;
};

/* A guessing run of duration_ms from one address on the simulated clock.
 * Each guess: a round trip of rtt_ms to the proxy; if the table passes it,
 * backend_ms at the backend and the failure's delay; if it bans it, the
 * proxy's immediate NO. new_user: each guess for another user (spraying),
 * else always the same user. */
static struct run guessing(const struct imf_throttle_params *p, bool throttle, bool new_user,
                           uint64_t start_ms, uint64_t duration_ms, uint64_t rtt_ms,
                           uint64_t backend_ms, uint32_t address_index)
{
    struct run r = {0};
    struct sockaddr_in a = address(address_index);
    char user[32] = "victim";
    for (uint64_t t = start_ms; t < start_ms + duration_ms; r.attempts++) {
        if (new_user)
            snprintf(user, sizeof(user), "user%" PRIu64, r.attempts);
        size_t ulen = strlen(user);
        uint64_t guess = password_hash(r.attempts); /* a new password every time */
        if (!throttle) {
            r.backend_logins++;
            t += rtt_ms + backend_ms;
            continue;
        }
        uint64_t delay;
        if (imf_throttle_begin(p, (struct sockaddr *)&a, user, ulen, t, &delay) ==
            IMF_THROTTLE_BAN) {
            r.refused++;
            t += rtt_ms;
            continue;
        }
        r.backend_logins++;
        t += backend_ms;
        imf_throttle_end(p, (struct sockaddr *)&a, user, ulen, guess, false, false, t);
        t += delay + rtt_ms;
    }
    return r;
}

int main(int argc, char **argv)
{
    int runs = 5;
    uint32_t calls = 1000000;
    uint64_t rtt_ms = 20, backend_ms = 30;
    bool quick = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
            runs = 3;
            calls = 100000;
        } else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
            runs = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--calls") == 0 && i + 1 < argc) {
            calls = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--rtt") == 0 && i + 1 < argc) {
            rtt_ms = strtoull(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--backend-ms") == 0 && i + 1 < argc) {
            backend_ms = strtoull(argv[++i], NULL, 10);
        } else {
            fprintf(stderr,
                    "usage: %s [--quick] [--runs R] [--calls N] [--rtt MS] [--backend-ms MS]\n",
                    argv[0]);
            return 2;
        }
    }
    if (runs < 1 || runs > 100 || calls < 1000) {
        fprintf(stderr, "throttle: --runs 1..100, --calls at least 1000\n");
        return 2;
    }

    /* Memory: 100,000 addresses, one failure each: two records each
     * (address; address and user). */
    struct memory m_default, m_full;
    if (measure_memory(100000, ADDRESSES, &m_default) != 0 ||
        measure_memory(2 * ADDRESSES, ADDRESSES, &m_full) != 0) {
        fprintf(stderr, "throttle: the memory measurement failed\n");
        return 1;
    }

    /* Speed, in this process: a table of 2 x 100,000 records. */
    if (imf_throttle_setup(2 * ADDRESSES) != 0) {
        fprintf(stderr, "throttle: no memory for the table\n");
        return 1;
    }
    uint64_t clock_ms = 1000000;
    for (uint32_t i = 0; i < ADDRESSES; i++)
        fail_once(&defaults, i, clock_ms);
    uint64_t hit_b[100], hit_e[100], new_b[100], new_e[100];
    for (int r = 0; r < runs; r++) {
        time_calls(0, ADDRESSES, calls, &clock_ms, &hit_b[r], &hit_e[r]);
        /* Addresses never seen: each makes two records, evicting the
         * oldest (the table is full). */
        time_calls(ADDRESSES + (uint32_t)r * calls, calls, calls, &clock_ms, &new_b[r], &new_e[r]);
    }

    /* 10 minutes of guessing from one address, with [login]'s defaults. */
    const uint64_t ten_min = 10 * 60 * 1000;
    uint64_t start = clock_ms + ten_min * 10; /* past every earlier window */
    struct run off =
        guessing(&defaults, false, false, start, ten_min, rtt_ms, backend_ms, 1u << 23);
    struct run one =
        guessing(&defaults, true, false, start, ten_min, rtt_ms, backend_ms, (1u << 23) + 1);
    struct run spray =
        guessing(&defaults, true, true, start, ten_min, rtt_ms, backend_ms, (1u << 23) + 2);

    printf("## imapfront login throttle (%s, %d runs, %" PRIu32 " calls each)\n\n",
           quick ? "quick" : "full", runs, calls);
    printf("| measure | value |\n|---|---|\n");
    printf("| lookup (begin), tracked address | %" PRIu64 " ns |\n", median(hit_b, runs));
    printf("| record a failure (end), tracked address | %" PRIu64 " ns |\n", median(hit_e, runs));
    printf("| lookup (begin), new address, evicting | %" PRIu64 " ns |\n", median(new_b, runs));
    printf("| record a failure (end), new address | %" PRIu64 " ns |\n", median(new_e, runs));
    printf("| RSS of a table of %" PRIu64 " records (max_tracked default) filled by 100,000 "
           "addresses | %.1f MiB (allocated: %.1f MiB; records in use %" PRIu64 ") |\n",
           m_default.capacity, m_default.rss_kib / 1024.0, m_default.table_b / 1048576.0,
           m_default.records);
    printf("| RSS to track 100,000 addresses (one user each: %" PRIu64 " records) | %.1f MiB "
           "(allocated: %.1f MiB) |\n",
           m_full.records, m_full.rss_kib / 1024.0, m_full.table_b / 1048576.0);
    printf("\nA 10-minute guessing run from one address (one session, the next guess as soon "
           "as the answer comes; round trip %" PRIu64 " ms, backend %" PRIu64
           " ms per LOGIN; simulated clock):\n\n",
           rtt_ms, backend_ms);
    printf("| run | guesses | backend LOGINs | refused by the proxy |\n|---|---|---|---|\n");
    printf("| no throttling (throttle = off) | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " |\n",
           off.attempts, off.backend_logins, off.refused);
    printf("| defaults, one user | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " |\n", one.attempts,
           one.backend_logins, one.refused);
    printf("| defaults, a new user every guess | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " |\n",
           spray.attempts, spray.backend_logins, spray.refused);
    /* What the issue promises of the defaults, and a table that was really
     * measured (the meson test runs --quick for these). */
    if (one.backend_logins > defaults.fail_ban ||
        spray.backend_logins > defaults.address_fail_ban || off.backend_logins != off.attempts ||
        m_default.rss_kib == 0 || m_full.records != 2 * ADDRESSES) {
        fprintf(stderr, "throttle: unexpected result (see the table)\n");
        return 1;
    }
    return 0;
}
