/* route: measures the [route] map (src/route.c) and prints a Markdown
 * table (see bench/README.md):
 *
 *   - the load of a map file of --entries lines (1,000,000 by default:
 *     "userN@dM.example POOL", a tenth of them "*@domain" patterns), read
 *     from disk and parsed, the median of --runs loads, in ms of wall
 *     clock and of the process's CPU time (a shared machine's wall clock
 *     includes waiting for a core);
 *   - the cost of a lookup in ns, averaged over --lookups calls, the median
 *     of the runs: an exact name found, a name found through its
 *     "*@domain", a name in no line (the default pool), with ignore_case on;
 *   - the memory: the growth of VmRSS across a load, next to what the
 *     snapshot says it holds.
 *
 *   route [--quick] [--runs R] [--entries N] [--lookups N] [--dir DIR]
 *
 * The map is written to a temporary file in DIR ($TMPDIR or /tmp) and
 * removed at the end. Exits 1 when a lookup gives a wrong pool. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "imapfront/route.h"

static const char *const pools[] = {"default", "legacy", "new"};
#define DOMAINS 1000u

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* VmRSS of this process, in KiB (0 if unknown). */
static uint64_t rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kib = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %" SCNu64, &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kib;
}

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, unsigned n)
{
    qsort(v, n, sizeof(*v), cmp_u64);
    return v[n / 2];
}

/* Line i of the map: users of domains 0..DOMAINS-1, and every tenth line
 * a pattern for domain DOMAINS + i. */
static int line_of(unsigned i, char *out, size_t out_len)
{
    if (i % 10 == 9)
        return snprintf(out, out_len, "*@p%u.example %s\n", i, pools[i % 3]);
    return snprintf(out, out_len, "user%u@d%u.example %s\n", i, i % DOMAINS, pools[i % 3]);
}

/* The i-th name to look up and the pool it should get. */
static void probe(unsigned kind, unsigned i, unsigned entries, char *out, size_t out_len,
                  const char **out_pool)
{
    unsigned line = (i * 7919u) % entries;
    if (kind == 0) { /* an exact name (not a pattern line) */
        line -= line % 10 == 9;
        snprintf(out, out_len, "USER%u@d%u.example", line, line % DOMAINS);
        *out_pool = pools[line % 3];
    } else if (kind == 1) { /* through its domain */
        line = line - line % 10 + 9;
        if (line >= entries)
            line = 9;
        snprintf(out, out_len, "someone%u@P%u.example", i, line);
        *out_pool = pools[line % 3];
    } else { /* nowhere: the default */
        snprintf(out, out_len, "nobody%u@elsewhere.example", i);
        *out_pool = "legacy";
    }
}

int main(int argc, char **argv)
{
    unsigned runs = 3, entries = 1000000, lookups = 1000000;
    const char *dir = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            entries = 100000;
            lookups = 100000;
        } else if (i + 1 < argc && strcmp(argv[i], "--runs") == 0) {
            runs = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (i + 1 < argc && strcmp(argv[i], "--entries") == 0) {
            entries = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (i + 1 < argc && strcmp(argv[i], "--lookups") == 0) {
            lookups = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (i + 1 < argc && strcmp(argv[i], "--dir") == 0) {
            dir = argv[++i];
        } else {
            fprintf(stderr,
                    "usage: %s [--quick] [--runs R] [--entries N] [--lookups N] [--dir DIR]\n",
                    argv[0]);
            return 2;
        }
    }
    if (runs == 0 || runs > 100 || entries < 10 || entries > IMF_ROUTE_ENTRIES_MAX ||
        lookups == 0) {
        fprintf(stderr, "route: --runs 1..100, --entries 10..%u, --lookups > 0\n",
                IMF_ROUTE_ENTRIES_MAX);
        return 2;
    }

    char path[4096];
    snprintf(path, sizeof(path), "%s/imf-bench-route-XXXXXX", dir);
    int fd = mkstemp(path);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
        perror(path);
        return 1;
    }
    char line[128];
    uint64_t file_bytes = 0;
    for (unsigned i = 0; i < entries; i++) {
        int n = line_of(i, line, sizeof(line));
        fwrite(line, 1, (size_t)n, f);
        file_bytes += (uint64_t)n;
    }
    if (fclose(f) != 0) {
        perror(path);
        unlink(path);
        return 1;
    }

    struct imf_route_params p = {.path = path,
                                 .default_pool = "legacy",
                                 .ignore_case = true,
                                 .pools = pools,
                                 .pools_len = 3};
    uint64_t *load_ns = calloc(runs, sizeof(uint64_t));
    uint64_t *load_cpu = calloc(runs, sizeof(uint64_t));
    uint64_t *look_ns[3];
    for (int k = 0; k < 3; k++)
        look_ns[k] = calloc(runs, sizeof(uint64_t));
    char(*names)[64] = malloc((size_t)lookups * 64);
    const char **want = malloc((size_t)lookups * sizeof(*want));
    if (load_ns == NULL || load_cpu == NULL || look_ns[0] == NULL || look_ns[1] == NULL ||
        look_ns[2] == NULL || names == NULL || want == NULL) {
        fprintf(stderr, "route: out of memory\n");
        unlink(path);
        return 1;
    }
    uint64_t rss_growth = 0, held = 0;
    bool wrong = false;
    for (unsigned run = 0; run < runs; run++) {
        char err[512];
        struct imf_route *r = NULL;
        uint64_t rss_before = rss_kib();
        uint64_t t0 = now_ns(), c0 = cpu_ns();
        if (imf_route_load(&p, &r, err, sizeof(err)) != 0) {
            fprintf(stderr, "route: %s\n", err);
            unlink(path);
            return 1;
        }
        load_ns[run] = now_ns() - t0;
        load_cpu[run] = cpu_ns() - c0;
        if (run == 0) {
            uint64_t after = rss_kib();
            rss_growth = after > rss_before ? after - rss_before : 0;
            held = imf_route_memory(r);
            if (imf_route_count(r) != entries) {
                fprintf(stderr, "route: %zu entries loaded of %u\n", imf_route_count(r), entries);
                wrong = true;
            }
        }
        for (unsigned kind = 0; kind < 3; kind++) {
            for (unsigned i = 0; i < lookups; i++)
                probe(kind, i, entries, names[i], sizeof(names[i]), &want[i]);
            const char *got = NULL;
            uint64_t t = now_ns();
            for (unsigned i = 0; i < lookups; i++) {
                got = imf_route_lookup(r, names[i], strlen(names[i]), NULL);
                /* Checked after the clock stops, once per run and kind,
                 * plus the last: keeps the loop honest without timing
                 * strcmp. */
                if (i == lookups - 1 && (got == NULL || strcmp(got, want[i]) != 0))
                    wrong = true;
            }
            look_ns[kind][run] = (now_ns() - t) / lookups;
            for (unsigned i = 0; i < lookups; i += 1 + lookups / 1000) {
                got = imf_route_lookup(r, names[i], strlen(names[i]), NULL);
                if (got == NULL || strcmp(got, want[i]) != 0) {
                    fprintf(stderr, "route: %s -> %s, expected %s\n", names[i],
                            got != NULL ? got : "(none)", want[i]);
                    wrong = true;
                }
            }
        }
        imf_route_unref(r);
    }
    unlink(path);

    printf("route map: %u entries (%" PRIu64 " bytes of file), median of %u runs, %u lookups "
           "each\n\n",
           entries, file_bytes, runs, lookups);
    printf("| measure | value |\n|---|---|\n");
    printf("| load (read and parse the file) | %.1f ms (%.1f ms of CPU) |\n",
           median(load_ns, runs) / 1e6, median(load_cpu, runs) / 1e6);
    printf("| lookup, exact name (case folded) | %" PRIu64 " ns |\n", median(look_ns[0], runs));
    printf("| lookup, through *@domain | %" PRIu64 " ns |\n", median(look_ns[1], runs));
    printf("| lookup, in no line (default) | %" PRIu64 " ns |\n", median(look_ns[2], runs));
    printf("| RSS growth of a load | %.1f MiB (%.1f bytes an entry) |\n", rss_growth / 1024.0,
           rss_growth * 1024.0 / entries);
    printf("| held by the snapshot | %.1f MiB (%.1f bytes an entry) |\n", held / 1048576.0,
           (double)held / entries);
    free(load_ns);
    free(load_cpu);
    for (int k = 0; k < 3; k++)
        free(look_ns[k]);
    free(names);
    free(want);
    return wrong ? 1 : 0;
}
