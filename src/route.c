/* route: see include/imapfront/route.h. */
#include "imapfront/route.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "imapfront/certwatch.h"
#include "imapfront/log.h"

const char *const imf_route_match_names[IMF_ROUTE_MATCH_COUNT] = {
    [IMF_ROUTE_NONE] = "none",
    [IMF_ROUTE_USER] = "user",
    [IMF_ROUTE_DOMAIN] = "domain",
    [IMF_ROUTE_DEFAULT] = "default",
};

/* One slot of the table. len == 0: empty (names are never empty). tag:
 * 8 bits of the hash, so that most probes that miss skip the name. */
struct slot {
    uint32_t off; /* of the name in names */
    uint16_t pool;
    uint8_t len;
    uint8_t tag;
};
static_assert(sizeof(struct slot) == 8, "a slot is 8 bytes");
static_assert(IMF_ROUTE_USER_MAX <= UINT8_MAX, "len is 8 bits");

#define NO_POOL UINT16_MAX

struct imf_route {
    _Atomic int refs;
    char *path;  /* NULL: no map */
    char *names; /* every name, back to back (folded when ignore_case) */
    size_t names_len;
    struct slot *slots;
    size_t mask; /* slots - 1 (a power of two minus one); 0 with no entries */
    size_t count;
    uint64_t seed;
    bool ignore_case;
    uint16_t default_pool; /* NO_POOL: none */
    char **pools;          /* copies of the caller's pool names */
    bool *used;            /* pools[i] is named by an entry or is the default */
    size_t pools_len;
};

/* The table: zeroed, on huge pages when it is large (where the kernel
 * gives them on request): a lookup then costs a cache miss but rarely a
 * TLB miss. */
#define HUGE_PAGE (2u << 20)

static struct slot *alloc_slots(size_t slots)
{
    size_t bytes = slots * sizeof(struct slot);
    if (bytes < HUGE_PAGE)
        return calloc(slots, sizeof(struct slot));
    bytes = (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
    return p;
}

static void free_slots(struct slot *slots, size_t n)
{
    if (slots == NULL)
        return;
    size_t bytes = n * sizeof(struct slot);
    if (bytes < HUGE_PAGE)
        free(slots);
    else
        munmap(slots, (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1));
}

static inline unsigned char fold(unsigned char c, bool ignore_case)
{
    return ignore_case && c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* A seeded FNV-1a over the (folded) bytes, finished with a 64-bit mixer
 * so that the low bits (the slot) and the high bits (the tag) both depend
 * on every byte. Streams, so that "*@" + domain hashes without a copy. */
#define HASH_PRIME 0x100000001b3ull

static inline uint64_t hash_bytes(uint64_t h, const char *s, size_t len, bool ignore_case)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len; i++)
        h = (h ^ fold(p[i], ignore_case)) * HASH_PRIME;
    return h;
}

static inline uint64_t hash_finish(uint64_t h, size_t len)
{
    h ^= len;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t new_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^
               (uint64_t)getpid() << 32;
    }
    return seed ^ 0xcbf29ce484222325ull;
}

/* Does the stored name equal a[0..a_len) + b[0..b_len)? */
static inline bool name_equal(const struct imf_route *r, const struct slot *s, const char *a,
                              size_t a_len, const char *b, size_t b_len)
{
    if (s->len != a_len + b_len)
        return false;
    const unsigned char *n = (const unsigned char *)r->names + s->off;
    if (!r->ignore_case)
        return memcmp(n, a, a_len) == 0 && (b_len == 0 || memcmp(n + a_len, b, b_len) == 0);
    for (size_t i = 0; i < a_len; i++)
        if (fold(n[i], true) != fold((unsigned char)a[i], true))
            return false;
    for (size_t i = 0; i < b_len; i++)
        if (fold(n[a_len + i], true) != fold((unsigned char)b[i], true))
            return false;
    return true;
}

static inline uint64_t hash2(const struct imf_route *r, const char *a, size_t a_len, const char *b,
                             size_t b_len)
{
    uint64_t h = hash_bytes(r->seed, a, a_len, r->ignore_case);
    return hash_finish(hash_bytes(h, b, b_len, r->ignore_case), a_len + b_len);
}

/* The slot holding a + b (whose hash is h), or the empty slot where it
 * would go. */
static const struct slot *find_slot(const struct imf_route *r, uint64_t h, const char *a,
                                    size_t a_len, const char *b, size_t b_len)
{
    uint8_t tag = (uint8_t)(h >> 56);
    /* At most half full: an empty slot always ends the probe. */
    for (size_t i = (size_t)h & r->mask;; i = (i + 1) & r->mask) {
        const struct slot *s = &r->slots[i];
        if (s->len == 0 || (s->tag == tag && name_equal(r, s, a, a_len, b, b_len)))
            return s;
    }
}

const char *imf_route_lookup(const struct imf_route *r, const char *user, size_t user_len,
                             enum imf_route_match *out_match)
{
    enum imf_route_match how = IMF_ROUTE_NONE;
    uint16_t pool = NO_POOL;
    if (r->count != 0 && user_len != 0 && user_len <= IMF_ROUTE_USER_MAX) {
        uint64_t h_user = hash2(r, user, user_len, NULL, 0);
        __builtin_prefetch(&r->slots[h_user & r->mask]);
        /* The pattern's slot is fetched at the same time: a miss on the
         * name costs one memory latency, not two. */
        const char *at = memrchr(user, '@', user_len);
        size_t dom_len = at != NULL ? user_len - (size_t)(at + 1 - user) : 0;
        uint64_t h_dom = 0;
        if (dom_len != 0) {
            h_dom = hash2(r, "*@", 2, at + 1, dom_len);
            __builtin_prefetch(&r->slots[h_dom & r->mask]);
        }
        const struct slot *s = find_slot(r, h_user, user, user_len, NULL, 0);
        if (s->len != 0) {
            pool = s->pool;
            /* "*@domain" itself finds its pattern: no user has that name. */
            how = user[0] == '*' ? IMF_ROUTE_DOMAIN : IMF_ROUTE_USER;
        } else if (dom_len != 0) {
            s = find_slot(r, h_dom, "*@", 2, at + 1, dom_len);
            if (s->len != 0) {
                pool = s->pool;
                how = IMF_ROUTE_DOMAIN;
            }
        }
    }
    if (pool == NO_POOL && r->default_pool != NO_POOL) {
        pool = r->default_pool;
        how = IMF_ROUTE_DEFAULT;
    }
    if (out_match != NULL)
        *out_match = how;
    return pool == NO_POOL ? NULL : r->pools[pool];
}

bool imf_route_reaches(const struct imf_config *cfg, const struct imf_route *r, const char *pool)
{
    if (!imf_route_configured(cfg))
        return strcmp(pool, IMF_POOL_DEFAULT) == 0;
    return r != NULL && imf_route_pool_used(r, pool);
}

bool imf_route_pool_used(const struct imf_route *r, const char *pool)
{
    for (size_t i = 0; i < r->pools_len; i++)
        if (strcmp(r->pools[i], pool) == 0)
            return r->used[i];
    return false;
}

size_t imf_route_count(const struct imf_route *r)
{
    return r->count;
}

size_t imf_route_memory(const struct imf_route *r)
{
    size_t n =
        sizeof(*r) + r->names_len + (r->count != 0 ? (r->mask + 1) * sizeof(struct slot) : 0);
    for (size_t i = 0; i < r->pools_len; i++)
        n += sizeof(char *) + strlen(r->pools[i]) + 1;
    return n;
}

const char *imf_route_path(const struct imf_route *r)
{
    return r->path;
}

struct imf_route *imf_route_ref(struct imf_route *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

static void route_free(struct imf_route *r)
{
    for (size_t i = 0; i < r->pools_len; i++)
        free(r->pools[i]);
    free(r->pools);
    free(r->used);
    free_slots(r->slots, r->mask + 1);
    free(r->names);
    free(r->path);
    free(r);
}

void imf_route_unref(struct imf_route *r)
{
    if (r != NULL && atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        route_free(r);
}

bool imf_route_configured(const struct imf_config *cfg)
{
    return cfg->route_map != NULL || cfg->route_default != NULL;
}

void imf_route_params_from_config(const struct imf_config *cfg, const char *const *pools,
                                  size_t pools_len, struct imf_route_params *out_params)
{
    *out_params = (struct imf_route_params){.path = cfg->route_map,
                                            .default_pool = cfg->route_default,
                                            .ignore_case = cfg->route_ignore_case,
                                            .pools = pools,
                                            .pools_len = pools_len};
}

/* ---- parsing ---- */

struct parser {
    struct imf_route *r;
    const struct imf_route_params *p;
    const char *name; /* the file, for errors */
    char *err;
    size_t err_len;
};

static int fail(struct parser *ps, int rc, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(struct parser *ps, int rc, unsigned line, const char *fmt, ...)
{
    int n = line != 0 ? snprintf(ps->err, ps->err_len, "%s:%u: ", ps->name, line)
                      : snprintf(ps->err, ps->err_len, "%s: ", ps->name);
    if (n >= 0 && (size_t)n < ps->err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ps->err + n, ps->err_len - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* A name as it may be shown in a log: at most 64 bytes, anything but
 * printable ASCII as \xHH. */
static void quote(const char *s, size_t len, char *out, size_t out_len)
{
    size_t o = 0;
    size_t shown = len > 64 ? 64 : len;
    for (size_t i = 0; i < shown && o + 5 < out_len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, out_len - o, "\\x%02x", c);
    }
    if (len > shown && o + 4 < out_len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o < out_len ? o : out_len - 1] = '\0';
}

/* The index of pool name[0..len) in the caller's list, or -1. */
static int pool_index(const struct imf_route_params *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->pools_len; i++)
        if (strlen(p->pools[i]) == len && memcmp(p->pools[i], name, len) == 0)
            return (int)i;
    return -1;
}

static bool is_blank(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* A name of the file is made of bytes other than controls (a tab or space
 * ends it). Returns the first bad byte's index, or len. */
static size_t first_control(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return i;
    }
    return len;
}

/* Checks one line's user field; NULL when it is fine, else the reason. */
static const char *check_user(const char *u, size_t len, char *why, size_t why_len)
{
    if (len > IMF_ROUTE_USER_MAX) {
        snprintf(why, why_len, "user name longer than %u bytes", IMF_ROUTE_USER_MAX);
        return why;
    }
    size_t bad = first_control(u, len);
    if (bad != len) {
        snprintf(why, why_len, "control character 0x%02x in the user name", (unsigned char)u[bad]);
        return why;
    }
    if (u[0] == '*') {
        /* Only "*@domain": a lookup tries the part after the last '@'. */
        if (len < 3 || u[1] != '@')
            return "a pattern must be *@domain";
        if (memchr(u + 2, '@', len - 2) != NULL || memchr(u + 2, '*', len - 2) != NULL)
            return "the domain of *@domain cannot hold '@' or '*'";
    }
    return NULL;
}

/* A parsed line waiting for its slot: 16 bytes. Its name's length is the
 * distance to the next one's (the names are back to back). */
struct pending {
    uint32_t hash_lo; /* the slot index's bits (the table has at most 2^25 slots) */
    uint8_t tag;
    uint8_t pad;
    uint16_t pool;
    uint32_t off; /* of the name in names */
    uint32_t line;
};
static_assert(sizeof(struct pending) == 16, "a pending line is 16 bytes");
static_assert(2ull * IMF_ROUTE_ENTRIES_MAX <= UINT32_MAX, "slot index in 32 bits");

/* How many lines ahead the insertion prefetches their slots: a slot is
 * a cache (and often TLB) miss; fetching several at once overlaps them. */
#define PREFETCH_AHEAD 16

/* Puts pend[0..n) into the table in order; the first name already there
 * with another pool is an error naming its line. */
static int insert_all(struct parser *ps, const struct pending *pend, size_t n, size_t names_end)
{
    struct imf_route *r = ps->r;
    for (size_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n)
            __builtin_prefetch(&r->slots[pend[i + PREFETCH_AHEAD].hash_lo & r->mask], 1);
        const struct pending *pe = &pend[i];
        uint8_t tag = pe->tag;
        const char *name = r->names + pe->off;
        size_t len = (i + 1 < n ? pend[i + 1].off : names_end) - pe->off;
        size_t k = pe->hash_lo & r->mask;
        for (;; k = (k + 1) & r->mask) {
            struct slot *s = &r->slots[k];
            if (s->len == 0) {
                *s = (struct slot){
                    .off = pe->off, .pool = pe->pool, .len = (uint8_t)len, .tag = tag};
                r->used[pe->pool] = true;
                r->count++;
                break;
            }
            if (s->tag != tag || !name_equal(r, s, name, len, NULL, 0))
                continue;
            if (s->pool == pe->pool)
                break; /* the same pair again: harmless */
            char q[300];
            quote(name, len, q, sizeof(q));
            return fail(ps, -EINVAL, pe->line, "\"%s\" is already routed to pool %s%s", q,
                        r->pools[s->pool],
                        r->ignore_case ? " (names compared without regard to case)" : "");
        }
    }
    return 0;
}

/* Parses the buffer r->names[0..len) in place: the names are moved to its
 * front, back to back, then put in the table. Two passes, so
 * that the second can prefetch: reading the file is sequential, filling
 * the table is not. */
static int parse_buffer(struct parser *ps, size_t len)
{
    struct imf_route *r = ps->r;
    char *buf = r->names;

    size_t pend_cap = 1024;
    struct pending *pend = malloc(pend_cap * sizeof(*pend));
    if (pend == NULL)
        return fail(ps, -ENOMEM, 0, "out of memory");

    size_t out = 0; /* where the next name goes */
    size_t n = 0;   /* entries in pend */
    unsigned line = 0;
    size_t pos = 0;
    char why[96];
    int rc = 0;
    while (pos < len && rc == 0) {
        line++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - buf) : len;
        size_t next = nl != NULL ? end + 1 : len;
        if (end > pos && buf[end - 1] == '\r')
            end--;
        /* Up to three fields; a '#' where a field starts ends the line. */
        size_t f_off[3], f_len[3], fields = 0;
        size_t i = pos;
        while (fields < 3) {
            while (i < end && is_blank((unsigned char)buf[i]))
                i++;
            if (i == end || buf[i] == '#')
                break;
            f_off[fields] = i;
            while (i < end && !is_blank((unsigned char)buf[i]))
                i++;
            f_len[fields] = i - f_off[fields];
            fields++;
        }
        pos = next;
        if (fields == 0)
            continue;
        if (fields == 1) {
            rc = fail(ps, -EINVAL, line, "a user without a pool (expected: USER POOL)");
            break;
        }
        if (fields == 3) {
            rc = fail(ps, -EINVAL, line, "more than two fields (expected: USER POOL)");
            break;
        }
        const char *user = buf + f_off[0];
        size_t user_len = f_len[0];
        const char *why_user = check_user(user, user_len, why, sizeof(why));
        if (why_user != NULL) {
            rc = fail(ps, -EINVAL, line, "%s", why_user);
            break;
        }
        if (f_len[1] > IMF_ROUTE_POOL_MAX) {
            rc = fail(ps, -EINVAL, line, "pool name longer than %u bytes", IMF_ROUTE_POOL_MAX);
            break;
        }
        int pool = pool_index(ps->p, buf + f_off[1], f_len[1]);
        if (pool < 0) {
            char q[300];
            quote(buf + f_off[1], f_len[1], q, sizeof(q));
            rc = fail(ps, -EINVAL, line, "no pool named \"%s\"", q);
            break;
        }
        if (n == IMF_ROUTE_ENTRIES_MAX) {
            rc = fail(ps, -EFBIG, line, "more than %u entries", IMF_ROUTE_ENTRIES_MAX);
            break;
        }
        if (n == pend_cap) {
            struct pending *grown = realloc(pend, 2 * pend_cap * sizeof(*pend));
            if (grown == NULL) {
                rc = fail(ps, -ENOMEM, line, "out of memory");
                break;
            }
            pend = grown;
            pend_cap *= 2;
        }
        /* The name moves left (out <= f_off[0]). */
        memmove(buf + out, user, user_len);
        uint64_t h =
            hash_finish(hash_bytes(r->seed, buf + out, user_len, r->ignore_case), user_len);
        pend[n++] = (struct pending){.hash_lo = (uint32_t)h,
                                     .tag = (uint8_t)(h >> 56),
                                     .pool = (uint16_t)pool,
                                     .off = (uint32_t)out,
                                     .line = line};
        out += user_len;
    }
    /* The table, now that the entries are counted: at most half full. */
    size_t slots = 16;
    while (slots < 2 * n)
        slots *= 2;
    r->slots = alloc_slots(slots);
    if (r->slots == NULL) {
        free(pend);
        return rc != 0 ? rc : fail(ps, -ENOMEM, 0, "out of memory for %zu entries", n);
    }
    r->mask = slots - 1;
    /* A duplicate before the line that failed is the first error. */
    char first_err[512];
    if (rc != 0)
        snprintf(first_err, sizeof(first_err), "%s", ps->err);
    int dup = insert_all(ps, pend, n, out);
    free(pend);
    if (dup != 0)
        return dup;
    if (rc != 0) {
        snprintf(ps->err, ps->err_len, "%s", first_err);
        return rc;
    }
    r->names_len = out;
    if (out == 0) {
        free(r->names);
        r->names = NULL;
    } else {
        char *shrunk = realloc(r->names, out);
        if (shrunk != NULL)
            r->names = shrunk;
    }
    if (r->count == 0) {
        free_slots(r->slots, r->mask + 1);
        r->slots = NULL;
        r->mask = 0;
    }
    return 0;
}

/* A snapshot with everything but the map; takes ownership of buf. */
static int route_new(struct parser *ps, char *buf, struct imf_route **out_r)
{
    const struct imf_route_params *p = ps->p;
    struct imf_route *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        free(buf);
        return fail(ps, -ENOMEM, 0, "out of memory");
    }
    atomic_init(&r->refs, 1);
    r->names = buf;
    r->seed = new_seed();
    r->ignore_case = p->ignore_case;
    r->default_pool = NO_POOL;
    *out_r = r;
    if (p->pools_len >= NO_POOL)
        return fail(ps, -EINVAL, 0, "more than %u pools", NO_POOL - 1);
    if (p->path != NULL && (r->path = strdup(p->path)) == NULL)
        return fail(ps, -ENOMEM, 0, "out of memory");
    r->pools = calloc(p->pools_len != 0 ? p->pools_len : 1, sizeof(*r->pools));
    r->used = calloc(p->pools_len != 0 ? p->pools_len : 1, sizeof(*r->used));
    if (r->pools == NULL || r->used == NULL)
        return fail(ps, -ENOMEM, 0, "out of memory");
    for (size_t i = 0; i < p->pools_len; i++) {
        if ((r->pools[i] = strdup(p->pools[i])) == NULL)
            return fail(ps, -ENOMEM, 0, "out of memory");
        r->pools_len++;
    }
    if (p->default_pool != NULL) {
        int d = pool_index(p, p->default_pool, strlen(p->default_pool));
        if (d < 0) {
            char q[300];
            quote(p->default_pool, strlen(p->default_pool), q, sizeof(q));
            /* About the config file, not the map: no map name. */
            snprintf(ps->err, ps->err_len, "[route] default: no pool named \"%s\"", q);
            return -EINVAL;
        }
        r->default_pool = (uint16_t)d;
        r->used[d] = true;
    }
    return 0;
}

static int finish(struct parser *ps, int rc, struct imf_route *r, size_t len,
                  struct imf_route **out_route)
{
    if (rc == 0 && r->names != NULL)
        rc = parse_buffer(ps, len);
    if (rc != 0) {
        if (r != NULL)
            route_free(r);
        return rc;
    }
    *out_route = r;
    return 0;
}

int imf_route_parse(const char *name, const char *text, size_t len,
                    const struct imf_route_params *p, struct imf_route **out_route, char *err,
                    size_t err_len)
{
    struct parser ps = {.p = p, .name = name, .err = err, .err_len = err_len};
    if (len > IMF_ROUTE_FILE_MAX)
        return fail(&ps, -EFBIG, 0, "larger than %u bytes", IMF_ROUTE_FILE_MAX);
    char *buf = NULL;
    if (len != 0) {
        buf = malloc(len);
        if (buf == NULL)
            return fail(&ps, -ENOMEM, 0, "out of memory");
        memcpy(buf, text, len);
    }
    struct imf_route *r = NULL;
    int rc = route_new(&ps, buf, &r);
    ps.r = r;
    return finish(&ps, rc, r, len, out_route);
}

/* The whole file in one malloc'd buffer (NULL when empty). */
static int read_file(struct parser *ps, const char *path, char **out_buf, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return fail(ps, -errno, 0, "cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(ps, -EINVAL, 0, "not a regular file");
    }
    if ((uint64_t)st.st_size > IMF_ROUTE_FILE_MAX) {
        close(fd);
        return fail(ps, -EFBIG, 0, "larger than %u bytes", IMF_ROUTE_FILE_MAX);
    }
    size_t cap = (size_t)st.st_size, len = 0;
    char *buf = cap != 0 ? malloc(cap) : NULL;
    if (cap != 0 && buf == NULL) {
        close(fd);
        return fail(ps, -ENOMEM, 0, "out of memory for %zu bytes", cap);
    }
    /* The file may be written while we read: read what stat saw, and say
     * so if it grew (the watcher brings the next version). */
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return fail(ps, -e, 0, "read error: %s", strerror(e));
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    *out_buf = buf;
    *out_len = len;
    return 0;
}

int imf_route_load(const struct imf_route_params *p, struct imf_route **out_route, char *err,
                   size_t err_len)
{
    struct parser ps = {
        .p = p, .name = p->path != NULL ? p->path : "[route]", .err = err, .err_len = err_len};
    char *buf = NULL;
    size_t len = 0;
    if (p->path != NULL) {
        int rc = read_file(&ps, p->path, &buf, &len);
        if (rc != 0)
            return rc;
    }
    struct imf_route *r = NULL;
    int rc = route_new(&ps, buf, &r);
    ps.r = r;
    return finish(&ps, rc, r, len, out_route);
}

/* ---- the process's current map ---- */

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static struct imf_route *current; /* under current_lock */

/* What the watcher reloads with: the last config's [route] (main thread
 * only). */
static struct {
    struct imf_certwatch *watch;
    char *path, *default_pool;
    bool ignore_case;
    char **pools;
    size_t pools_len;
} settings;

static void settings_clear(void)
{
    free(settings.path);
    free(settings.default_pool);
    for (size_t i = 0; i < settings.pools_len; i++)
        free(settings.pools[i]);
    free(settings.pools);
    settings.path = settings.default_pool = NULL;
    settings.pools = NULL;
    settings.pools_len = 0;
}

static int settings_set(const struct imf_route_params *p)
{
    settings_clear();
    settings.ignore_case = p->ignore_case;
    if ((p->path != NULL && (settings.path = strdup(p->path)) == NULL) ||
        (p->default_pool != NULL && (settings.default_pool = strdup(p->default_pool)) == NULL))
        return -ENOMEM;
    settings.pools = calloc(p->pools_len != 0 ? p->pools_len : 1, sizeof(char *));
    if (settings.pools == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < p->pools_len; i++) {
        if ((settings.pools[i] = strdup(p->pools[i])) == NULL)
            return -ENOMEM;
        settings.pools_len++;
    }
    return 0;
}

static void swap_in(struct imf_route *r)
{
    pthread_mutex_lock(&current_lock);
    struct imf_route *old = current;
    current = r;
    pthread_mutex_unlock(&current_lock);
    imf_route_unref(old);
}

struct imf_route *imf_route_current(void)
{
    pthread_mutex_lock(&current_lock);
    struct imf_route *r = current != NULL ? imf_route_ref(current) : NULL;
    pthread_mutex_unlock(&current_lock);
    return r;
}

static void log_loaded(const struct imf_route *r)
{
    if (r->path != NULL)
        imf_info("route", "route map %s: %zu entries", r->path, r->count);
    else
        imf_info("route", "no route map: everyone goes to pool %s",
                 r->default_pool != NO_POOL ? r->pools[r->default_pool] : "(none)");
}

static void watch_file(void)
{
    if (settings.watch != NULL) {
        const char *paths[1] = {settings.path};
        imf_certwatch_update_files(settings.watch, paths, settings.path != NULL ? 1 : 0);
    }
}

/* Loads with settings; swaps on success, else logs and keeps the old. */
static int load_current(void)
{
    struct imf_route_params p = {.path = settings.path,
                                 .default_pool = settings.default_pool,
                                 .ignore_case = settings.ignore_case,
                                 .pools = (const char *const *)settings.pools,
                                 .pools_len = settings.pools_len};
    char err[512];
    struct imf_route *r = NULL;
    int rc = imf_route_load(&p, &r, err, sizeof(err));
    /* A file replaced by a rename is a new inode: watch it again. */
    watch_file();
    if (rc != 0) {
        imf_error("route", "%s; the running route map stays", err);
        return rc;
    }
    log_loaded(r);
    swap_in(r);
    return 0;
}

static void on_file_changed(void *arg)
{
    (void)arg;
    if (settings.path != NULL)
        load_current();
}

int imf_route_start(uv_loop_t *loop, const struct imf_config *cfg, const char *const *pools,
                    size_t pools_len, char *err, size_t err_len)
{
    struct imf_route_params p;
    imf_route_params_from_config(cfg, pools, pools_len, &p);
    struct imf_route *r = NULL;
    if (imf_route_configured(cfg)) {
        int rc = imf_route_load(&p, &r, err, err_len);
        if (rc != 0)
            return rc;
    }
    if (settings_set(&p) != 0) {
        imf_route_unref(r);
        snprintf(err, err_len, "[route]: out of memory");
        return -ENOMEM;
    }
    /* Watching even without a map: a reload may name one. */
    int rc = imf_certwatch_new(loop, on_file_changed, NULL, &settings.watch);
    if (rc != 0) {
        imf_route_unref(r);
        snprintf(err, err_len, "[route]: cannot watch the route map: %s", uv_strerror(rc));
        return rc;
    }
    imf_certwatch_set_label(settings.watch, "route", "route map");
    watch_file();
    if (r != NULL) {
        log_loaded(r);
        swap_in(r);
    }
    return 0;
}

int imf_route_reload(const struct imf_config *cfg, const char *const *pools, size_t pools_len)
{
    struct imf_route_params p;
    imf_route_params_from_config(cfg, pools, pools_len, &p);
    if (settings_set(&p) != 0) {
        imf_error("route", "[route]: out of memory; the running route map stays");
        return -ENOMEM;
    }
    if (!imf_route_configured(cfg)) {
        watch_file();
        struct imf_route *had = imf_route_current();
        if (had != NULL)
            imf_info("route", "routing is no longer configured");
        imf_route_unref(had);
        swap_in(NULL);
        return 0;
    }
    return load_current();
}

void imf_route_stop(void)
{
    imf_certwatch_free(settings.watch);
    settings.watch = NULL;
    settings_clear();
    swap_in(NULL);
}
