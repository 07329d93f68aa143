/* backend: see include/imapfront/backend.h. */
#include "imapfront/backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "imapfront/log.h"

/* One slot per server address ever configured (reloads may add some; a
 * few hundred addresses over a process's life is plenty). */
#define SLOTS 256

struct health {
    char pool[64]; /* a server of two pools is counted in each */
    char address[128];
    _Atomic uint32_t fails;      /* consecutive failed connects */
    _Atomic uint64_t down_until; /* imf_clock_ms() until which it is skipped */
    _Atomic uint64_t connects_ok;
    _Atomic uint64_t connects_failed;
    /* Active checks ([backend] check): out of rotation while failing. */
    _Atomic uint32_t check_fails; /* consecutive failed checks */
    _Atomic bool check_down;      /* failed down_after checks in a row, none passed since */
    _Atomic uint64_t checks_ok;
    _Atomic uint64_t checks_failed;
    _Atomic uint64_t check_us;       /* how long the last check took */
    _Atomic int profile;             /* what its greeting says it is (gate.h), 0 = not seen */
    _Atomic uint64_t last_ok_ms;     /* imf_clock_ms() of the last completed connect */
    _Atomic uint64_t last_failed_ms; /* ... of the last outright failure */
    /* Admission control, shared by every worker. */
    _Atomic uint32_t sessions;   /* backend connections open or opening */
    _Atomic uint32_t connecting; /* connects in progress */
    _Atomic uint32_t queued;     /* sessions waiting for it */
    _Atomic uint64_t queue_waits, queue_wait_ms, queue_timeouts;
    /* connect_rate's token bucket while warming (a GCRA): the time, in
     * microseconds of imf_clock_us(), at which the bucket is full again. */
    _Atomic bool warming;
    _Atomic uint64_t full_at_us;
    _Atomic uint64_t warm_since_us; /* when the warm-up began */
};

static struct health slots[SLOTS];
static _Atomic size_t slots_used;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t rr_next;
static _Atomic uint64_t queue_heads[IMF_QUEUE_WORKERS];

static uint64_t imf_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* The server has just come back (or is new to this process): connects to
 * it go at most connect_rate a second, after a first burst of one bucket;
 * the rate doubles every second (a slow start, like TCP's), and the
 * warm-up ends when, a second or more after it began, the bucket has
 * stayed full for a token's time (a token went unused: demand fell below
 * the rate; with a bucket of one token, merely full would end it at once),
 * or after WARM_DOUBLINGS seconds,
 * whichever comes first. A reconnect storm is spread over its first
 * seconds, not throttled for as long as it lasts: a storm that never lets
 * up would otherwise hold the proxy at connect_rate for good. */
#define WARM_DOUBLINGS 6 /* connect_rate x 64 by the end */

/* Microseconds between two tokens at connect_rate after seconds of
 * warm-up (the rate doubles every second). */
static uint64_t warm_step(uint32_t rate, uint64_t seconds)
{
    uint64_t r = (uint64_t)rate << seconds;
    return r < 1000000 ? 1000000 / r : 1;
}

/* The warm-up that began at warm_since_us is over at now (µs), the bucket
 * being full at full_at (µs). */
static bool warm_over(struct health *h, uint32_t rate, uint64_t now, uint64_t full_at)
{
    uint64_t since = atomic_load(&h->warm_since_us);
    if (now < since)
        return false;
    uint64_t seconds = (now - since) / 1000000;
    return seconds >= WARM_DOUBLINGS || (seconds >= 1 && full_at + warm_step(rate, seconds) <= now);
}

static void start_warming(struct health *h)
{
    uint64_t now = imf_clock_us();
    atomic_store(&h->full_at_us, now);
    atomic_store(&h->warm_since_us, now);
    atomic_store(&h->warming, true);
}

const char *imf_backend_pool_key(const struct imf_pool_config *pool)
{
    return strcmp(pool->name, IMF_POOL_DEFAULT) == 0 ? NULL : "pool";
}

uint64_t imf_clock_ms(void)
{
    return imf_clock_us() / 1000;
}

static bool slot_is(const struct health *h, const struct imf_pool_config *pool, const char *address)
{
    return strcmp(h->address, address) == 0 && strcmp(h->pool, pool->name) == 0;
}

/* The slot of a server of pool (by the pool's name and the address as
 * written), created on first use. Lookups are lock-free: slots are only
 * ever appended, and published by slots_used. */
static struct health *slot_of(const struct imf_pool_config *pool, const char *address)
{
    size_t used = atomic_load_explicit(&slots_used, memory_order_acquire);
    for (size_t i = 0; i < used; i++)
        if (slot_is(&slots[i], pool, address))
            return &slots[i];
    pthread_mutex_lock(&slots_lock);
    used = atomic_load_explicit(&slots_used, memory_order_relaxed);
    struct health *h = NULL;
    for (size_t i = 0; i < used && h == NULL; i++)
        if (slot_is(&slots[i], pool, address))
            h = &slots[i];
    if (h == NULL && used < SLOTS) {
        h = &slots[used];
        snprintf(h->pool, sizeof(h->pool), "%s", pool->name);
        strncpy(h->address, address, sizeof(h->address) - 1);
        start_warming(h);
        atomic_store_explicit(&slots_used, used + 1, memory_order_release);
    }
    pthread_mutex_unlock(&slots_lock);
    return h; /* NULL only past SLOTS addresses: then no health is kept */
}

static bool is_down(struct health *h, uint64_t now)
{
    return h != NULL && (atomic_load_explicit(&h->down_until, memory_order_relaxed) > now ||
                         atomic_load_explicit(&h->check_down, memory_order_relaxed));
}

size_t imf_backend_plan(const struct imf_pool_config *pool, uint8_t *out_order, size_t *out_up)
{
    size_t n = pool->servers_len;
    size_t start = 0;
    if (pool->balance == IMF_BALANCE_ROUNDROBIN && n > 0)
        start = (size_t)(atomic_fetch_add_explicit(&rr_next, 1, memory_order_relaxed) % n);
    uint64_t now = imf_clock_ms();
    size_t up = 0, down = n;
    /* Up servers in balance order from the front, down ones from the back
     * (reversed below so they too keep their order). */
    for (size_t k = 0; k < n; k++) {
        uint8_t i = (uint8_t)((start + k) % n);
        if (is_down(slot_of(pool, pool->servers[i].text), now))
            out_order[--down] = i;
        else
            out_order[up++] = i;
    }
    for (size_t a = down, b = n - 1; a < b; a++, b--) {
        uint8_t t = out_order[a];
        out_order[a] = out_order[b];
        out_order[b] = t;
    }
    *out_up = up;
    return n;
}

/* True when a server of pool other than index is up. */
static bool another_up(const struct imf_pool_config *pool, size_t index, uint64_t now)
{
    for (size_t i = 0; i < pool->servers_len; i++)
        if (i != index && !is_down(slot_of(pool, pool->servers[i].text), now))
            return true;
    return false;
}

void imf_backend_report(const struct imf_pool_config *pool, size_t index, enum imf_connect_result r)
{
    const char *address = pool->servers[index].text;
    struct health *h = slot_of(pool, address);
    if (h == NULL)
        return;
    uint64_t now = imf_clock_ms();
    if (r == IMF_CONNECT_OK) {
        atomic_fetch_add_explicit(&h->connects_ok, 1, memory_order_relaxed);
        atomic_store(&h->last_ok_ms, now);
        if (atomic_exchange(&h->fails, 0) >= pool->down_after) {
            imf_log_kv(IMF_LOG_INFO, "backend", "server is back", "backend", address,
                       imf_backend_pool_key(pool), pool->name, NULL);
            start_warming(h);
        }
        atomic_store(&h->down_until, 0);
        return;
    }
    atomic_fetch_add_explicit(&h->connects_failed, 1, memory_order_relaxed);
    if (r == IMF_CONNECT_FAILED) {
        atomic_store(&h->last_failed_ms, now);
    } else {
        /* A timeout counts only when the server's latest connects failed
         * outright, or none completed within retry_after: one that still
         * completes connects is slow (overloaded), not down, and taking
         * it out would turn its slowness into an outage. */
        uint64_t ok = atomic_load(&h->last_ok_ms), failed = atomic_load(&h->last_failed_ms);
        bool recent_ok = ok != 0 && now - ok < pool->retry_after_ms;
        if (recent_ok && failed <= ok)
            return;
    }
    uint32_t fails = atomic_fetch_add(&h->fails, 1) + 1;
    if (fails < pool->down_after)
        return;
    char n[16];
    snprintf(n, sizeof(n), "%u", fails);
    if (!another_up(pool, index, now)) {
        /* Fail open: passive health alone never empties the pool (active
         * checks can). The server stays in rotation and is still tried. */
        if (fails == pool->down_after)
            imf_log_kv(IMF_LOG_WARN, "backend",
                       "server failing, but it is the last one up: still tried", "backend", address,
                       "failures", n, imf_backend_pool_key(pool), pool->name, NULL);
        return;
    }
    uint64_t until = now + pool->retry_after_ms;
    uint64_t was = atomic_exchange(&h->down_until, until);
    if (was <= now)
        imf_log_kv(IMF_LOG_WARN, "backend", "server marked down", "backend", address, "failures", n,
                   imf_backend_pool_key(pool), pool->name, NULL);
}

bool imf_backend_any_up(const struct imf_pool_config *pool)
{
    uint64_t now = imf_clock_ms();
    for (size_t i = 0; i < pool->servers_len; i++)
        if (!is_down(slot_of(pool, pool->servers[i].text), now))
            return true;
    return false;
}

int imf_backend_check_report(const struct imf_pool_config *pool, size_t index, bool ok,
                             uint64_t duration_us)
{
    struct health *h = slot_of(pool, pool->servers[index].text);
    if (h == NULL)
        return 0;
    atomic_store(&h->check_us, duration_us);
    if (ok) {
        atomic_fetch_add(&h->checks_ok, 1);
        atomic_store(&h->check_fails, 0);
        /* A passing check also answers for connects: it just made one. */
        atomic_store(&h->fails, 0);
        atomic_store(&h->down_until, 0);
        if (!atomic_exchange(&h->check_down, false))
            return 0;
        start_warming(h);
        return -1;
    }
    atomic_fetch_add(&h->checks_failed, 1);
    uint32_t fails = atomic_fetch_add(&h->check_fails, 1) + 1;
    if (fails < pool->down_after)
        return 0;
    return atomic_exchange(&h->check_down, true) ? 0 : 1;
}

void imf_backend_check_clear(const struct imf_pool_config *pool)
{
    for (size_t i = 0; i < pool->servers_len; i++) {
        struct health *h = slot_of(pool, pool->servers[i].text);
        if (h != NULL) {
            atomic_store(&h->check_fails, 0);
            atomic_store(&h->check_down, false);
        }
    }
}

size_t imf_backend_info(const struct imf_pool_config *pool, struct imf_backend_info *out,
                        size_t max)
{
    uint64_t now = imf_clock_ms();
    size_t n = 0;
    for (size_t i = 0; i < pool->servers_len && n < max; i++) {
        struct health *h = slot_of(pool, pool->servers[i].text);
        out[n].pool = pool->name;
        out[n].address = pool->servers[i].text;
        out[n].connects_ok = h != NULL ? atomic_load(&h->connects_ok) : 0;
        out[n].connects_failed = h != NULL ? atomic_load(&h->connects_failed) : 0;
        out[n].down = is_down(h, now);
        out[n].check_down = h != NULL && atomic_load(&h->check_down);
        out[n].checks_ok = h != NULL ? atomic_load(&h->checks_ok) : 0;
        out[n].checks_failed = h != NULL ? atomic_load(&h->checks_failed) : 0;
        out[n].check_us = h != NULL ? atomic_load(&h->check_us) : 0;
        out[n].profile = h != NULL ? atomic_load(&h->profile) : 0;
        out[n].sessions = h != NULL ? atomic_load(&h->sessions) : 0;
        out[n].connecting = h != NULL ? atomic_load(&h->connecting) : 0;
        out[n].queued = h != NULL ? atomic_load(&h->queued) : 0;
        out[n].queue_waits = h != NULL ? atomic_load(&h->queue_waits) : 0;
        out[n].queue_wait_ms = h != NULL ? atomic_load(&h->queue_wait_ms) : 0;
        out[n].queue_timeouts = h != NULL ? atomic_load(&h->queue_timeouts) : 0;
        out[n].warming =
            h != NULL && atomic_load(&h->warming) && pool->connect_rate != 0 &&
            !warm_over(h, pool->connect_rate, imf_clock_us(), atomic_load(&h->full_at_us));
        n++;
    }
    return n;
}

bool imf_backend_note_profile(const struct imf_pool_config *pool, size_t index, int profile)
{
    struct health *h = slot_of(pool, pool->servers[index].text);
    return h != NULL &&
           atomic_exchange_explicit(&h->profile, profile, memory_order_relaxed) != profile;
}

/* Takes one of counter unless that makes it exceed limit (0: none). */
static bool take(_Atomic uint32_t *counter, uint32_t limit)
{
    uint32_t now = atomic_fetch_add(counter, 1) + 1;
    if (limit != 0 && now > limit) {
        atomic_fetch_sub(counter, 1);
        return false;
    }
    return true;
}

/* connect_rate's bucket: true when a token was taken (or the server is
 * not warming); otherwise *out_wait_ms until the next one. The bucket
 * holds one second's worth of tokens (at least one) at the rate of the
 * moment: connect_rate doubled for every whole second of the warm-up. */
static bool take_token(struct health *h, uint32_t rate, uint64_t *out_wait_ms)
{
    if (rate == 0 || !atomic_load(&h->warming))
        return true;
    uint64_t now = imf_clock_us();
    uint64_t since = atomic_load(&h->warm_since_us);
    uint64_t seconds = now > since ? (now - since) / 1000000 : 0;
    uint64_t step = warm_step(rate, seconds);
    uint64_t size = ((uint64_t)rate << seconds) * step; /* us: one second's worth */
    uint64_t full = atomic_load(&h->full_at_us);
    for (;;) {
        if (warm_over(h, rate, now, full)) {
            atomic_store(&h->warming, false); /* the slow start is over */
            return true;
        }
        uint64_t base = full > now ? full : now;
        if (base - now > size - step) {
            /* Not one token left: the next one comes after the rest. */
            *out_wait_ms = (base - now - (size - step) + 999) / 1000;
            return false;
        }
        if (atomic_compare_exchange_weak(&h->full_at_us, &full, base + step))
            return true;
    }
}

enum imf_admit imf_backend_acquire(const struct imf_pool_config *pool, size_t index,
                                   const struct imf_pool_config *limits, uint64_t *out_wait_ms)
{
    struct health *h = slot_of(pool, pool->servers[index].text);
    if (h == NULL)
        return IMF_ADMIT_OK; /* no slot, no limits (past SLOTS addresses) */
    if (!take(&h->sessions, limits->max_sessions))
        return IMF_ADMIT_FULL;
    if (!take(&h->connecting, limits->max_connecting)) {
        atomic_fetch_sub(&h->sessions, 1);
        return IMF_ADMIT_FULL;
    }
    if (!take_token(h, limits->connect_rate, out_wait_ms)) {
        atomic_fetch_sub(&h->connecting, 1);
        atomic_fetch_sub(&h->sessions, 1);
        return IMF_ADMIT_RATE;
    }
    return IMF_ADMIT_OK;
}

void imf_backend_connect_done(const struct imf_pool_config *pool, size_t index)
{
    struct health *h = slot_of(pool, pool->servers[index].text);
    if (h != NULL)
        atomic_fetch_sub(&h->connecting, 1);
}

void imf_backend_release(const struct imf_pool_config *pool, size_t index)
{
    struct health *h = slot_of(pool, pool->servers[index].text);
    if (h != NULL)
        atomic_fetch_sub(&h->sessions, 1);
}

void imf_backend_queue_count(const struct imf_pool_config *pool, size_t index, int delta)
{
    struct health *h = slot_of(pool, pool->servers[index].text);
    if (h != NULL)
        atomic_fetch_add(&h->queued, (uint32_t)delta);
}

void imf_backend_queue_done(const struct imf_pool_config *pool, size_t index, uint64_t wait_ms,
                            bool timed_out)
{
    struct health *h = slot_of(pool, pool->servers[index].text);
    if (h == NULL)
        return;
    if (timed_out) {
        atomic_fetch_add(&h->queue_timeouts, 1);
        return;
    }
    atomic_fetch_add(&h->queue_waits, 1);
    atomic_fetch_add(&h->queue_wait_ms, wait_ms);
}

void imf_backend_queue_head(unsigned worker, uint64_t since_ms)
{
    if (worker < IMF_QUEUE_WORKERS)
        atomic_store_explicit(&queue_heads[worker], since_ms, memory_order_relaxed);
}

bool imf_backend_queue_first(unsigned worker, uint64_t since_ms)
{
    for (unsigned i = 0; i < IMF_QUEUE_WORKERS; i++) {
        uint64_t other = atomic_load_explicit(&queue_heads[i], memory_order_relaxed);
        if (i != worker && other != 0 && (other < since_ms || (other == since_ms && i < worker)))
            return false;
    }
    return true;
}
