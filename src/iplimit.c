/* iplimit: see include/imapfront/iplimit.h. A chained hash table keyed by
 * the address bytes (an IPv6 address cut to its prefix); entries are freed
 * when their count drops to zero, so the table holds only IPs with sessions
 * open. */
#include "imapfront/iplimit.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096

struct entry {
    struct entry *next;
    uint8_t key[17]; /* family byte + 16 address bytes */
    uint32_t count;
};

static struct entry *buckets[BUCKETS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Read under no lock: set once at start, before any worker runs. */
static _Atomic unsigned prefix_v6 = 64;

void imf_iplimit_set_prefix_v6(unsigned bits)
{
    if (bits < 32)
        bits = 32;
    if (bits > 128)
        bits = 128;
    atomic_store(&prefix_v6, bits);
}

unsigned imf_iplimit_prefix_v6(void)
{
    return atomic_load(&prefix_v6);
}

/* The key of addr: IPv4 (also IPv4-mapped IPv6) as the whole address, IPv6
 * as its first prefix_v6 bits with the rest zeroed. */
static bool key_of(const struct sockaddr *addr, uint8_t key[17])
{
    memset(key, 0, 17);
    if (addr->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        return true;
    }
    if (addr->sa_family != AF_INET6)
        return false;
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
        key[0] = 4;
        memcpy(key + 1, a6->s6_addr + 12, 4);
        return true;
    }
    unsigned bits = atomic_load(&prefix_v6);
    key[0] = 6;
    memcpy(key + 1, a6->s6_addr, bits / 8);
    if (bits % 8 != 0)
        key[1 + bits / 8] = a6->s6_addr[bits / 8] & (uint8_t)(0xff << (8 - bits % 8));
    return true;
}

static size_t hash(const uint8_t key[17])
{
    /* FNV-1a: addresses are not chosen by an attacker beyond their own,
     * and a bucket collision costs only a short list walk. */
    uint32_t h = 2166136261u;
    for (int i = 0; i < 17; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % BUCKETS;
}

static struct entry **find(const uint8_t key[17])
{
    struct entry **pp = &buckets[hash(key)];
    while (*pp != NULL && memcmp((*pp)->key, key, 17) != 0)
        pp = &(*pp)->next;
    return pp;
}

bool imf_iplimit_acquire(const struct sockaddr *addr, uint32_t max)
{
    uint8_t key[17];
    if (!key_of(addr, key))
        return true;
    bool ok = true;
    pthread_mutex_lock(&lock);
    struct entry **pp = find(key);
    if (*pp == NULL) {
        struct entry *e = calloc(1, sizeof(*e));
        if (e != NULL) {
            memcpy(e->key, key, 17);
            *pp = e;
        }
    }
    if (*pp == NULL)
        ok = true; /* no memory to count with: do not refuse for that */
    else if (max != 0 && (*pp)->count >= max)
        ok = false;
    else
        (*pp)->count++;
    if (!ok && *pp != NULL && (*pp)->count == 0) {
        struct entry *e = *pp;
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&lock);
    return ok;
}

void imf_iplimit_release(const struct sockaddr *addr)
{
    uint8_t key[17];
    if (!key_of(addr, key))
        return;
    pthread_mutex_lock(&lock);
    struct entry **pp = find(key);
    if (*pp != NULL && --(*pp)->count == 0) {
        struct entry *e = *pp;
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&lock);
}

uint32_t imf_iplimit_count(const struct sockaddr *addr)
{
    uint8_t key[17];
    if (!key_of(addr, key))
        return 0;
    pthread_mutex_lock(&lock);
    struct entry **pp = find(key);
    uint32_t n = *pp != NULL ? (*pp)->count : 0;
    pthread_mutex_unlock(&lock);
    return n;
}
