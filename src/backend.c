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
    _Atomic uint64_t check_us; /* how long the last check took */
    _Atomic int profile;       /* what its greeting says it is (gate.h), 0 = not seen */
};

static struct health slots[SLOTS];
static _Atomic size_t slots_used;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t rr_next;

uint64_t imf_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The slot of an address, created on first use. Lookups are lock-free:
 * slots are only ever appended, and published by slots_used. */
static struct health *slot_of(const char *address)
{
    size_t used = atomic_load_explicit(&slots_used, memory_order_acquire);
    for (size_t i = 0; i < used; i++)
        if (strcmp(slots[i].address, address) == 0)
            return &slots[i];
    pthread_mutex_lock(&slots_lock);
    used = atomic_load_explicit(&slots_used, memory_order_relaxed);
    struct health *h = NULL;
    for (size_t i = 0; i < used && h == NULL; i++)
        if (strcmp(slots[i].address, address) == 0)
            h = &slots[i];
    if (h == NULL && used < SLOTS) {
        h = &slots[used];
        strncpy(h->address, address, sizeof(h->address) - 1);
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

size_t imf_backend_plan(const struct imf_config *cfg, uint8_t *out_order)
{
    size_t n = cfg->servers_len;
    size_t start = 0;
    if (cfg->balance == IMF_BALANCE_ROUNDROBIN && n > 0)
        start = (size_t)(atomic_fetch_add_explicit(&rr_next, 1, memory_order_relaxed) % n);
    uint64_t now = imf_clock_ms();
    size_t up = 0, down = n;
    /* Up servers in balance order from the front, down ones from the back
     * (reversed below so they too keep their order). */
    for (size_t k = 0; k < n; k++) {
        uint8_t i = (uint8_t)((start + k) % n);
        if (is_down(slot_of(cfg->servers[i].text), now))
            out_order[--down] = i;
        else
            out_order[up++] = i;
    }
    for (size_t a = down, b = n - 1; a < b; a++, b--) {
        uint8_t t = out_order[a];
        out_order[a] = out_order[b];
        out_order[b] = t;
    }
    return n;
}

void imf_backend_report(const struct imf_config *cfg, size_t index, bool ok)
{
    const char *address = cfg->servers[index].text;
    struct health *h = slot_of(address);
    if (h == NULL)
        return;
    if (ok) {
        atomic_fetch_add_explicit(&h->connects_ok, 1, memory_order_relaxed);
        if (atomic_exchange(&h->fails, 0) >= cfg->backend_down_after)
            imf_log_kv(IMF_LOG_INFO, "backend", "server is back", "backend", address, NULL);
        atomic_store(&h->down_until, 0);
        return;
    }
    atomic_fetch_add_explicit(&h->connects_failed, 1, memory_order_relaxed);
    uint32_t fails = atomic_fetch_add(&h->fails, 1) + 1;
    if (fails >= cfg->backend_down_after) {
        uint64_t until = imf_clock_ms() + cfg->backend_retry_after_ms;
        uint64_t was = atomic_exchange(&h->down_until, until);
        if (was <= imf_clock_ms()) {
            char n[16];
            snprintf(n, sizeof(n), "%u", fails);
            imf_log_kv(IMF_LOG_WARN, "backend", "server marked down", "backend", address,
                       "failures", n, NULL);
        }
    }
}

bool imf_backend_any_up(const struct imf_config *cfg)
{
    uint64_t now = imf_clock_ms();
    for (size_t i = 0; i < cfg->servers_len; i++)
        if (!is_down(slot_of(cfg->servers[i].text), now))
            return true;
    return false;
}

int imf_backend_check_report(const struct imf_config *cfg, size_t index, bool ok,
                             uint64_t duration_us)
{
    struct health *h = slot_of(cfg->servers[index].text);
    if (h == NULL)
        return 0;
    atomic_store(&h->check_us, duration_us);
    if (ok) {
        atomic_fetch_add(&h->checks_ok, 1);
        atomic_store(&h->check_fails, 0);
        /* A passing check also answers for connects: it just made one. */
        atomic_store(&h->fails, 0);
        atomic_store(&h->down_until, 0);
        return atomic_exchange(&h->check_down, false) ? -1 : 0;
    }
    atomic_fetch_add(&h->checks_failed, 1);
    uint32_t fails = atomic_fetch_add(&h->check_fails, 1) + 1;
    if (fails < cfg->backend_down_after)
        return 0;
    return atomic_exchange(&h->check_down, true) ? 0 : 1;
}

void imf_backend_check_clear(const struct imf_config *cfg)
{
    for (size_t i = 0; i < cfg->servers_len; i++) {
        struct health *h = slot_of(cfg->servers[i].text);
        if (h != NULL) {
            atomic_store(&h->check_fails, 0);
            atomic_store(&h->check_down, false);
        }
    }
}

size_t imf_backend_info(const struct imf_config *cfg, struct imf_backend_info *out, size_t max)
{
    uint64_t now = imf_clock_ms();
    size_t n = 0;
    for (size_t i = 0; i < cfg->servers_len && n < max; i++) {
        struct health *h = slot_of(cfg->servers[i].text);
        out[n].address = cfg->servers[i].text;
        out[n].connects_ok = h != NULL ? atomic_load(&h->connects_ok) : 0;
        out[n].connects_failed = h != NULL ? atomic_load(&h->connects_failed) : 0;
        out[n].down = is_down(h, now);
        out[n].check_down = h != NULL && atomic_load(&h->check_down);
        out[n].checks_ok = h != NULL ? atomic_load(&h->checks_ok) : 0;
        out[n].checks_failed = h != NULL ? atomic_load(&h->checks_failed) : 0;
        out[n].check_us = h != NULL ? atomic_load(&h->check_us) : 0;
        out[n].profile = h != NULL ? atomic_load(&h->profile) : 0;
        n++;
    }
    return n;
}

bool imf_backend_note_profile(const struct imf_config *cfg, size_t index, int profile)
{
    struct health *h = slot_of(cfg->servers[index].text);
    return h != NULL &&
           atomic_exchange_explicit(&h->profile, profile, memory_order_relaxed) != profile;
}
